//! Reading a checkpoint's tensors: sharded safetensors, the original release's
//! MXFP4 layout mapped onto mlx-lm's names, and the compute dtype cast.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::config::Quantization;
use super::{Error, Result};
use crate::kernels::{self, CpuKernels, Precision};
use crate::mlx::{self, Array, Dtype, QuantSpec};

/// The dtype activations and floating weights are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    /// float32 on MLX's CPU backend, where quantized matmuls run ~10× faster
    /// with float32 activations and unquantized expert `gather_mm` exists only
    /// in float32; the checkpoint's own dtype on a GPU.
    #[default]
    Auto,
    Float32,
    Bfloat16,
    Float16,
}

impl ComputeDtype {
    pub fn resolve(self, model_dtype: Dtype) -> Dtype {
        match self {
            ComputeDtype::Auto if mlx::default_device().is_gpu() => model_dtype,
            ComputeDtype::Auto | ComputeDtype::Float32 => Dtype::Float32,
            ComputeDtype::Bfloat16 => Dtype::Bfloat16,
            ComputeDtype::Float16 => Dtype::Float16,
        }
    }
}

impl FromStr for ComputeDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(ComputeDtype::Auto),
            "float32" | "f32" => Ok(ComputeDtype::Float32),
            "bfloat16" | "bf16" => Ok(ComputeDtype::Bfloat16),
            "float16" | "f16" => Ok(ComputeDtype::Float16),
            other => Err(format!(
                "unknown dtype {other:?} (expected auto, float32, bfloat16 or float16)"
            )),
        }
    }
}

/// How a checkpoint becomes a model: the compute dtype and, on the CPU, whose
/// kernels run its quantized matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    pub compute: ComputeDtype,
    pub cpu_kernels: CpuKernels,
}

impl From<ComputeDtype> for LoadOptions {
    fn from(compute: ComputeDtype) -> LoadOptions {
        LoadOptions {
            compute,
            ..LoadOptions::default()
        }
    }
}

/// Who computes one quantized matrix's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuantKernel {
    Mlx,
    Cpu(Precision),
}

struct Tensor {
    array: Array,
    file: usize,
}

/// A module's place in the checkpoint's name tree (candle's `VarBuilder::pp`
/// idea): each module loads from the scope its parent hands it, so the model
/// builds one line per submodule and only this type joins tensor names.
pub(crate) struct Scope<'a> {
    pub(super) weights: &'a mut Weights,
    pub(super) quantization: Option<&'a Quantization>,
    pub(super) path: String,
}

impl<'a> Scope<'a> {
    pub(crate) fn root(weights: &'a mut Weights, quantization: Option<&'a Quantization>) -> Scope<'a> {
        Scope {
            weights,
            quantization,
            path: String::new(),
        }
    }

    /// The scope of the submodule `name`.
    pub(crate) fn pp(&mut self, name: impl std::fmt::Display) -> Scope<'_> {
        Scope {
            path: self.name(&name.to_string()),
            weights: self.weights,
            quantization: self.quantization,
        }
    }

    /// The checkpoint name of this module's tensor `leaf`.
    pub(crate) fn name(&self, leaf: &str) -> String {
        match self.path.as_str() {
            "" => leaf.to_string(),
            path => format!("{path}.{leaf}"),
        }
    }

    pub(crate) fn take_float(&mut self, leaf: &str, shape: &[i32]) -> Result<Array> {
        let name = self.name(leaf);
        self.weights.take_float(&name, shape)
    }
}

/// The tensors of one checkpoint, handed out by name exactly once.
pub struct Weights {
    dir: PathBuf,
    files: Vec<PathBuf>,
    tensors: HashMap<String, Tensor>,
    compute: Dtype,
    cpu_kernels: CpuKernels,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Opens every shard of `dir` lazily: no tensor data is read until used.
    pub fn open(dir: &Path, options: impl Into<LoadOptions>) -> Result<Weights> {
        let options = options.into();
        let files = weight_files(dir)?;
        let mut tensors = HashMap::new();
        for (index, path) in files.iter().enumerate() {
            let file = mlx::safetensors::load(path).map_err(|e| Error::WeightFile {
                path: path.clone(),
                message: match e {
                    mlx::Error::File { message, .. } => message,
                    other => other.to_string(),
                },
            })?;
            for (name, array) in file.tensors {
                if let Some(previous) = tensors.insert(name.clone(), Tensor { array, file: index }) {
                    return Err(Error::WeightFile {
                        path: path.clone(),
                        message: format!("tensor {name} is also in {}", files[previous.file].display()),
                    });
                }
            }
        }
        let mut weights = Weights {
            dir: dir.to_path_buf(),
            files,
            tensors,
            compute: Dtype::Float32,
            cpu_kernels: options.cpu_kernels,
        };
        weights.compute = options.compute.resolve(weights.model_dtype()?);
        Ok(weights)
    }

    /// The checkpoint's floating dtype, read off the final norm (never quantized).
    fn model_dtype(&self) -> Result<Dtype> {
        let norm = self
            .tensors
            .get("model.norm.weight")
            .ok_or_else(|| self.missing("model.norm.weight"))?;
        Ok(norm.array.dtype())
    }

    /// The dtype floating weights are cast to and activations computed in.
    pub fn compute_dtype(&self) -> Dtype {
        self.compute
    }

    /// Our CPU kernels where they apply (CPU device, float32 activations, a
    /// quantization they support); MLX's own otherwise. A matrix the chosen
    /// kernels cannot compute falls back to MLX's with a warning naming it.
    pub(crate) fn quant_kernel(&self, tensor: &str, spec: QuantSpec, in_dims: i32) -> QuantKernel {
        let Some(precision) = self.cpu_kernels.precision() else {
            return QuantKernel::Mlx;
        };
        if mlx::default_device().is_gpu() || self.compute != Dtype::Float32 {
            return QuantKernel::Mlx;
        }
        match kernels::support(spec, in_dims) {
            Ok(()) => QuantKernel::Cpu(precision),
            Err(why) => {
                tracing::warn!(
                    "{tensor}: no {} CPU kernel ({why}); using MLX's",
                    self.cpu_kernels
                );
                QuantKernel::Mlx
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            tensor: name.to_string(),
            dir: self.dir.clone(),
        }
    }

    /// The file a tensor was read from, for error messages.
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.tensors
            .get(name)
            .map_or_else(|| self.dir.clone(), |t| self.files[t.file].clone())
    }

    /// Removes a tensor, checking its shape. Floating tensors come back in the
    /// compute dtype; packed codes and E8M0 scales keep their integer dtype.
    pub fn take(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let found = self.peek_shape(name)?;
        if found != shape {
            return Err(Error::Shape {
                tensor: name.to_string(),
                file: self.file_of(name),
                expected: shape.to_vec(),
                found,
            });
        }
        let tensor = self.tensors.remove(name).expect("peek_shape found it");
        let dtype = tensor.array.dtype();
        if dtype.is_floating() && dtype != self.compute {
            Ok(tensor.array.astype(self.compute)?)
        } else {
            Ok(tensor.array)
        }
    }

    /// Like [`Weights::take`], and also checks the stored dtype.
    pub fn take_typed(&mut self, name: &str, shape: &[i32], dtype: Dtype) -> Result<Array> {
        let found = self.peek_dtype(name)?;
        if found != dtype {
            return Err(Error::Dtype {
                tensor: name.to_string(),
                file: self.file_of(name),
                expected: dtype.to_string(),
                found,
            });
        }
        self.take(name, shape)
    }

    /// Like [`Weights::take`] for a floating tensor.
    pub fn take_float(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        let found = self.peek_dtype(name)?;
        if !found.is_floating() {
            return Err(Error::Dtype {
                tensor: name.to_string(),
                file: self.file_of(name),
                expected: "a floating dtype".into(),
                found,
            });
        }
        self.take(name, shape)
    }

    /// Replaces a tensor by `f` of it, keeping the file it came from (a rank
    /// keeps its slice of a split model's tensors).
    pub fn replace(&mut self, name: &str, f: impl FnOnce(&Array) -> Result<Array>) -> Result<()> {
        let tensor = self.tensors.get_mut(name).ok_or_else(|| Error::MissingTensor {
            tensor: name.to_string(),
            dir: self.dir.clone(),
        })?;
        tensor.array = f(&tensor.array)?;
        Ok(())
    }

    pub fn peek_shape(&self, name: &str) -> Result<Vec<i32>> {
        Ok(self
            .tensors
            .get(name)
            .ok_or_else(|| self.missing(name))?
            .array
            .shape())
    }

    pub fn peek_dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self
            .tensors
            .get(name)
            .ok_or_else(|| self.missing(name))?
            .array
            .dtype())
    }

    /// Fails on the first tensor nothing took: a checkpoint that does not
    /// match the config must not load half-way.
    pub fn finish(self) -> Result<()> {
        let leftover: BTreeSet<&String> = self.tensors.keys().collect();
        match leftover.first() {
            None => Ok(()),
            Some(name) => Err(Error::UnexpectedTensor {
                tensor: name.to_string(),
                file: self.files[self.tensors[*name].file].clone(),
            }),
        }
    }

    /// Whether the experts are stored as in OpenAI's release (`gate_up_proj`).
    pub fn contains_original_layout(&self) -> bool {
        self.tensors.keys().any(|name| name.contains("gate_up_proj"))
    }

    /// Maps the original release layout onto mlx-lm's names, as mlx-lm's
    /// `sanitize` does: MXFP4 `*_blocks` (uint8 `[.., in/32, 16]`) become packed
    /// uint32 weights, and the interleaved `gate_up_proj` rows split into
    /// `gate_proj` (even rows) and `up_proj` (odd rows).
    pub fn sanitize_original_layout(&mut self) -> Result<()> {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| n.contains("_proj_"))
            .cloned()
            .collect();
        for name in names {
            let Tensor { array, file } = self.tensors.remove(&name).expect("listed above");
            let (base, suffix) = name.rsplit_once('_').expect("the filter saw an underscore");
            let (array, suffix) = match suffix {
                "blocks" => {
                    let shape = array.shape();
                    if array.dtype() != Dtype::Uint8 || shape.len() < 2 || shape[shape.len() - 1] != 16 {
                        return Err(Error::Quantization {
                            tensor: name,
                            file: self.files[file].clone(),
                            message: format!(
                                "MXFP4 blocks must be uint8 [.., 16], found {} {shape:?}",
                                array.dtype()
                            ),
                        });
                    }
                    let words = array.view(Dtype::Uint32)?;
                    let mut flat = shape[..shape.len() - 2].to_vec();
                    flat.push(shape[shape.len() - 2] * 4);
                    (words.reshape(&flat)?, "weight")
                }
                "scales" => (array, "scales"),
                "bias" => (array, "bias"),
                _ => {
                    self.tensors.insert(name, Tensor { array, file });
                    continue;
                }
            };
            if let Some(prefix) = base.strip_suffix("gate_up_proj") {
                // Rows interleave gate and up: split along the output axis.
                let axis = if suffix == "bias" { -1 } else { -2 };
                for (part, start) in [("gate_proj", 0), ("up_proj", 1)] {
                    let rows = strided_rows(&array, axis, start)?;
                    self.tensors
                        .insert(format!("{prefix}{part}.{suffix}"), Tensor { array: rows, file });
                }
            } else {
                self.tensors
                    .insert(format!("{base}.{suffix}"), Tensor { array, file });
            }
        }
        Ok(())
    }
}

/// Every other entry along `axis`, starting at `start`, made contiguous.
fn strided_rows(array: &Array, axis: i32, start: i32) -> Result<Array> {
    let shape = array.shape();
    let axis = (axis + shape.len() as i32) as usize;
    let mut starts = vec![0; shape.len()];
    let mut strides = vec![1; shape.len()];
    starts[axis] = start;
    strides[axis] = 2;
    Ok(array.slice(&starts, &shape, &strides)?.contiguous()?)
}

/// The shards of a checkpoint: those named by the index when there is one,
/// otherwise every `model*.safetensors`.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::WeightFile {
            path: index_path.clone(),
            message: e.to_string(),
        })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| Error::WeightFile {
            path: index_path.clone(),
            message: format!("invalid shard index: {e}"),
        })?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        return shards
            .into_iter()
            .map(|shard| {
                let path = dir.join(shard);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(Error::WeightFile {
                        path,
                        message: format!("listed in {} but missing", index_path.display()),
                    })
                }
            })
            .collect();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::WeightFile {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model") && n.ends_with(".safetensors"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}
