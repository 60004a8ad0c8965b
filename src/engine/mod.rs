//! Generation on top of the model: caches, sampling and the decode loop.

pub mod batch;
pub mod cache;
pub mod generate;
pub mod prefix;
pub mod sampler;
pub mod scheduler;
