//! Classification: policies, the classification prompt, verdicts.

pub mod combine;
pub mod front_matter;
pub mod input;
pub mod lint;
pub mod policy;
pub mod run;
pub mod verdict;
