//! What a model is, from its safetensors headers and the loaded matrices:
//! parameters, active parameters per token, bits per weight and bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::model::{Config, GptOss, LayerType};

/// What a model is: its sizes on disk and its parameter counts.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    /// Logical weights: quantized matrices count their unpacked elements;
    /// quantization scales and biases are not parameters.
    pub parameters: u64,
    /// Parameters used per token: everything but the experts, plus top-k of
    /// E experts (the embedding counts whole, as mlx-lm and llama.cpp count it).
    pub active_parameters: u64,
    /// Bytes of the tensors (headers excluded) × 8 ÷ parameters.
    pub bits_per_weight: f64,
    /// Bytes of the weight files on disk.
    pub bytes_on_disk: u64,
    /// Tensor bytes of the experts and of everything else.
    pub expert_bytes: u64,
    pub dense_bytes: u64,
    /// Tensor bytes of the embedding table (one row is read per token).
    pub embedding_bytes: u64,
}

/// One tensor of a safetensors header: (dtype, shape, bytes).
pub type TensorInfo = (String, Vec<u64>, u64);

/// The tensors of one safetensors file by name.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    anyhow::ensure!(
        len < 1 << 30,
        "{}: implausible header length {len}",
        path.display()
    );
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header)?;
    let mut out = BTreeMap::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry["dtype"].as_str().unwrap_or_default().to_string();
        let shape: Vec<u64> = entry["shape"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let offsets: Vec<u64> = entry["data_offsets"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let bytes = match offsets.as_slice() {
            [a, b] => b - a,
            _ => 0,
        };
        out.insert(name, (dtype, shape, bytes));
    }
    Ok(out)
}

/// Bytes from the safetensors headers; parameters from the loaded `model`,
/// so a quantized matrix counts by the spec the loader gave it.
pub fn model_stats(dir: &Path, model: &GptOss) -> Result<ModelStats> {
    let mut bytes_on_disk = 0;
    let (mut expert_bytes, mut dense_bytes, mut embedding_bytes) = (0u64, 0u64, 0u64);
    for file in crate::model::weight_files(dir)? {
        bytes_on_disk += std::fs::metadata(&file)?.len();
        for (name, (_, _, bytes)) in read_header(&file)? {
            if name.contains(".experts.") {
                expert_bytes += bytes;
            } else {
                dense_bytes += bytes;
            }
            if name.starts_with("model.embed_tokens.") {
                embedding_bytes += bytes;
            }
        }
    }
    let (parameters, expert_params) = model.parameter_counts();
    let config = &model.config;
    let e = config.num_local_experts.max(1) as u64;
    let k = (config.num_experts_per_tok.max(0) as u64).min(e);
    Ok(ModelStats {
        parameters,
        active_parameters: parameters - expert_params + expert_params * k / e,
        bits_per_weight: if parameters == 0 {
            0.0
        } else {
            (expert_bytes + dense_bytes) as f64 * 8.0 / parameters as f64
        },
        bytes_on_disk,
        expert_bytes,
        dense_bytes,
        embedding_bytes,
    })
}

/// Bytes of KV state read per decode token at `context` tokens of context:
/// keys and values of every layer, sliding layers capped at their window.
pub fn kv_bytes_per_token(config: &Config, context: usize, dtype_bytes: usize) -> u64 {
    let per_position = 2 * config.num_key_value_heads as u64 * config.head_dim as u64 * dtype_bytes as u64;
    config
        .layer_types()
        .iter()
        .map(|t| {
            let n = match t {
                LayerType::SlidingAttention => context.min(config.sliding_window.max(1) as usize),
                LayerType::FullAttention => context,
            };
            n as u64 * per_position
        })
        .sum()
}
