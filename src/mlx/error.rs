use std::path::PathBuf;

use super::Dtype;

/// An error from the MLX layer. MLX's own message is kept verbatim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("MLX {op}: {message}")]
    Mlx { op: &'static str, message: String },
    #[error("{op}: expected a {expected} array, found {found}; convert it with astype first")]
    Dtype {
        op: &'static str,
        expected: Dtype,
        found: Dtype,
    },
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) trait Context<T> {
    /// Names the MLX operation an exception came from.
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, cxx::Exception> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::Mlx {
            op,
            message: e.what().to_string(),
        })
    }
}
