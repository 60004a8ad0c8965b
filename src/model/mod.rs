//! The gpt-oss architecture on MLX: configuration, weight loading, layers and
//! the forward pass. The model maps token ids and caches to logits and nothing
//! else; sampling, generation and prompts live elsewhere.

mod config;
mod gpt_oss;
mod layers;
mod load;
mod rope;

use std::ops::Range;
use std::path::PathBuf;

pub use config::{stop_tokens, Config, LayerType, ModuleQuantization, Quantization, RopeScaling, MODEL_TYPE};
pub use gpt_oss::{AttentionCache, GptOss, Mask, Probe, Stage};
pub(crate) use load::weight_files;
pub use load::{ComputeDtype, LoadOptions, Weights};

use crate::mlx::distributed::Group;
use crate::mlx::{self, Dtype};

/// This process's part of a model split across the ranks of `group`
/// (`src/distributed/` decides the split and slices the weights to it; the
/// model sizes its layers by it and sums the partial results).
#[derive(Debug, Clone)]
pub struct Shard {
    pub group: Group,
    /// Attention heads (and kv heads, whole) are divided evenly among the
    /// ranks; otherwise every rank runs all of attention.
    pub split_heads: bool,
    /// Every expert's intermediate dimension is divided evenly (tensor parallel).
    pub split_intermediate: bool,
    /// The experts this rank holds: all of them unless expert parallel.
    pub experts: Range<i32>,
}

impl Shard {
    fn ranks(&self) -> i32 {
        self.group.size()
    }

    /// Heads per rank.
    fn heads(&self, heads: i32) -> i32 {
        if self.split_heads {
            heads / self.ranks()
        } else {
            heads
        }
    }

    fn intermediate(&self, size: i32) -> i32 {
        if self.split_intermediate {
            size / self.ranks()
        } else {
            size
        }
    }

    /// Whether a rank holds only some of the experts.
    fn splits_experts(&self, experts: i32) -> bool {
        self.experts != (0..experts)
    }
}

/// What can go wrong loading or running a model. Loading errors name the file,
/// the tensor, and what was expected against what was found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: model_type {model_type:?} is not supported; safeguard runs gpt_oss models")]
    UnsupportedModel { path: PathBuf, model_type: String },
    #[error("{dir}: no weights found: expected model*.safetensors (and model.safetensors.index.json when sharded)")]
    NoWeights { dir: PathBuf },
    #[error("{path}: {message}")]
    WeightFile { path: PathBuf, message: String },
    #[error("tensor {tensor} is missing from {dir}")]
    MissingTensor { tensor: String, dir: PathBuf },
    #[error("{file}: unexpected tensor {tensor} (not part of a gpt_oss model with this config)")]
    UnexpectedTensor { tensor: String, file: PathBuf },
    #[error("{file}: tensor {tensor} has shape {found:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        file: PathBuf,
        expected: Vec<i32>,
        found: Vec<i32>,
    },
    #[error("{file}: tensor {tensor} has dtype {found}, expected {expected}")]
    Dtype {
        tensor: String,
        file: PathBuf,
        expected: String,
        found: Dtype,
    },
    #[error("{file}: tensor {tensor}: {message}")]
    Quantization {
        tensor: String,
        file: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Mlx(#[from] mlx::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
