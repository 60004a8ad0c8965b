//! Generation on top of the model: caches, sampling, the decode loop and the
//! batch driver every multi-sequence caller shares.

pub mod cache;
pub mod driver;
pub mod generate;
pub mod prefix;
pub mod sampler;
pub mod scheduler;

use crate::{mlx, model};

/// What can go wrong generating: a request the engine cannot run, or the
/// model failing underneath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the prompt is empty: generation needs at least one prompt token")]
    EmptyPrompt,
    #[error(transparent)]
    Model(#[from] model::Error),
    #[error(transparent)]
    Constraint(#[from] crate::constrain::Error),
}

impl From<mlx::Error> for Error {
    fn from(e: mlx::Error) -> Error {
        Error::Model(e.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
