//! Classification: policies, the classification prompt, verdicts.

pub mod policy;
pub mod verdict;
