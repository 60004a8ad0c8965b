//! Classification: policies, the classification prompt, verdicts.

pub mod verdict;
