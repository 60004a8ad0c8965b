//! Measuring a policy on labelled examples: reading the labelled set,
//! scoring classifier results against it (metrics with intervals,
//! thresholds, calibration), the CI gate and the reports. The model is
//! reached only through `classify`.

pub mod cache;
pub mod categories;
pub mod compare;
pub mod golden;
pub mod html;
pub mod manifest;
pub mod metrics;
pub mod report;
pub mod results;
