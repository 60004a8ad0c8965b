//! `config.json` of a gpt-oss checkpoint, as the hub ships it and as mlx-lm
//! rewrites it (with a `quantization` map). Defaults are mlx-lm's `ModelArgs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::Error;
use crate::mlx::{QuantMode, QuantSpec};

/// The `model_type` this program runs: every place that accepts or lists a model asks this.
pub const MODEL_TYPE: &str = "gpt_oss";

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub model_type: String,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_local_experts")]
    pub num_local_experts: i32,
    #[serde(default = "defaults::num_experts_per_tok")]
    pub num_experts_per_tok: i32,
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: i32,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: i32,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: i32,
    #[serde(default = "defaults::head_dim")]
    pub head_dim: i32,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: i32,
    #[serde(default = "defaults::num_key_value_heads")]
    pub num_key_value_heads: i32,
    #[serde(default = "defaults::sliding_window")]
    pub sliding_window: i32,
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    layer_types: Option<Vec<LayerType>>,
    #[serde(default = "defaults::swiglu_limit")]
    pub swiglu_limit: f32,
    /// The longest sequence (prompt and output) the model was trained for.
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub quantization: Option<Quantization>,
    #[serde(default)]
    pub quantization_config: Option<Value>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

mod defaults {
    pub fn max_position_embeddings() -> usize {
        131_072
    }
    pub fn num_hidden_layers() -> usize {
        36
    }
    pub fn num_local_experts() -> i32 {
        128
    }
    pub fn num_experts_per_tok() -> i32 {
        4
    }
    pub fn vocab_size() -> i32 {
        201_088
    }
    pub fn rms_norm_eps() -> f32 {
        1e-5
    }
    pub fn hidden_size() -> i32 {
        2880
    }
    pub fn intermediate_size() -> i32 {
        2880
    }
    pub fn head_dim() -> i32 {
        64
    }
    pub fn num_attention_heads() -> i32 {
        64
    }
    pub fn num_key_value_heads() -> i32 {
        8
    }
    pub fn sliding_window() -> i32 {
        128
    }
    pub fn rope_theta() -> f64 {
        150_000.0
    }
    pub fn swiglu_limit() -> f32 {
        7.0
    }
    pub fn beta_fast() -> f64 {
        32.0
    }
    pub fn beta_slow() -> f64 {
        1.0
    }
    pub fn original_max_position_embeddings() -> f64 {
        4096.0
    }
    pub fn one() -> f64 {
        1.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    SlidingAttention,
    FullAttention,
}

/// `rope_scaling`; only YaRN is used by gpt-oss.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    #[serde(default = "defaults::beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "defaults::beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "defaults::original_max_position_embeddings")]
    pub original_max_position_embeddings: f64,
    #[serde(default = "defaults::one")]
    pub mscale: f64,
    #[serde(default)]
    pub mscale_all_dim: f64,
    /// Whether the correction range is rounded to whole dimensions. Absent
    /// means true (transformers' semantics); the gpt-oss configs say false.
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// An id or a list of ids (`eos_token_id` comes in both shapes).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// mlx-lm's `quantization` map: defaults plus per-module entries, each an
/// object (`{"group_size": 64, "bits": 8}`, mode affine when absent) or
/// `false` for a module left unquantized.
#[derive(Debug, Clone, Deserialize)]
pub struct Quantization {
    pub group_size: i32,
    pub bits: i32,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(flatten)]
    pub modules: BTreeMap<String, Value>,
}

/// What the map says about one module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModuleQuantization {
    /// An explicit entry.
    Spec(QuantSpec),
    /// `false`: stored unquantized.
    Dense,
    /// No entry: the tensors tell.
    Unlisted,
}

impl Quantization {
    /// The default mode, checked: an unknown mode is an error here, not a
    /// wrong matmul later.
    pub fn default_mode(&self) -> Result<QuantMode, String> {
        parse_mode(self.mode.as_deref())
    }

    pub fn module(&self, path: &str) -> Result<ModuleQuantization, String> {
        match self.modules.get(path) {
            None => Ok(ModuleQuantization::Unlisted),
            Some(Value::Bool(false)) => Ok(ModuleQuantization::Dense),
            Some(Value::Object(entry)) => {
                let int = |key: &str| {
                    entry
                        .get(key)
                        .and_then(Value::as_i64)
                        .map(|v| v as i32)
                        .ok_or_else(|| format!("quantization entry for {path} has no integer {key:?}"))
                };
                Ok(ModuleQuantization::Spec(QuantSpec {
                    group_size: int("group_size")?,
                    bits: int("bits")?,
                    mode: parse_mode(entry.get("mode").and_then(Value::as_str))?,
                }))
            }
            Some(other) => Err(format!(
                "quantization entry for {path} is {other}, expected an object or false"
            )),
        }
    }
}

fn parse_mode(mode: Option<&str>) -> Result<QuantMode, String> {
    mode.unwrap_or("affine")
        .parse()
        .map_err(|e: crate::mlx::Error| e.to_string())
}

/// The ids that end generation: `generation_config.json`'s `eos_token_id`
/// (for gpt-oss `<|return|>`, `<|endoftext|>`, `<|call|>`; never `<|end|>`,
/// which separates the analysis and final messages of one answer), else
/// config.json's.
pub fn stop_tokens(dir: &Path, config: &Config) -> Result<Vec<u32>, Error> {
    let path = dir.join("generation_config.json");
    let from_generation_config = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
                path: path.clone(),
                message: format!("invalid JSON: {e}"),
            })?;
            match value.get("eos_token_id") {
                Some(ids) => {
                    Some(
                        serde_json::from_value::<TokenIds>(ids.clone()).map_err(|e| Error::Config {
                            path: path.clone(),
                            message: format!("eos_token_id: {e}"),
                        })?,
                    )
                }
                None => None,
            }
        }
        Err(_) => None,
    };
    Ok(from_generation_config
        .or_else(|| config.eos_token_id.clone())
        .map(|ids| ids.to_vec())
        .unwrap_or_default())
}

impl Config {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Config, Error> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
            path: path.clone(),
            message: match e.kind() {
                std::io::ErrorKind::NotFound => "not found: a model folder needs its config.json".into(),
                _ => e.to_string(),
            },
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: PathBuf) -> Result<Config, Error> {
        let config: Config = serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        if config.model_type != MODEL_TYPE {
            return Err(Error::UnsupportedModel {
                path,
                model_type: config.model_type,
            });
        }
        config
            .validate()
            .map_err(|message| Error::Config { path, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("head_dim", self.head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("sliding_window", self.sliding_window),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{name} must be positive, found {value}"));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return Err(format!(
                "num_experts_per_tok ({}) exceeds num_local_experts ({})",
                self.num_experts_per_tok, self.num_local_experts
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!(
                    "layer_types lists {} layers but num_hidden_layers is {}",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
        }
        if let Some(scaling) = &self.rope_scaling {
            if scaling.rope_type != "yarn" {
                return Err(format!(
                    "rope_scaling type {:?} is not supported (gpt-oss uses \"yarn\")",
                    scaling.rope_type
                ));
            }
        }
        if let Some(q) = &self.quantization {
            q.default_mode().map_err(|e| format!("quantization.mode: {e}"))?;
        }
        Ok(())
    }

    /// Each layer's attention type; mlx-lm's default alternates, sliding first.
    pub fn layer_types(&self) -> Vec<LayerType> {
        self.layer_types.clone().unwrap_or_else(|| {
            [LayerType::SlidingAttention, LayerType::FullAttention]
                .into_iter()
                .cycle()
                .take(self.num_hidden_layers)
                .collect()
        })
    }

    /// The original release marks MXFP4 experts with `quant_method` instead of
    /// a `quantization` map; mlx-lm reads that as MXFP4, group 32.
    pub fn original_mxfp4(&self) -> bool {
        self.quantization.is_none()
            && self
                .quantization_config
                .as_ref()
                .and_then(|q| q.get("quant_method"))
                .and_then(Value::as_str)
                == Some("mxfp4")
    }
}
