//! The building blocks, each dense or quantized as the checkpoint stores it:
//! linear layers, the embedding, expert (switch) linears and RMSNorm. They
//! mirror mlx's `nn.Linear`/`nn.QuantizedLinear`, `nn.Embedding`/
//! `nn.QuantizedEmbedding` and mlx-lm's `SwitchLinear`/`QuantizedSwitchLinear`
//! op for op, so results match mlx-lm's bit for bit — or, where our CPU
//! kernels compute the quantized products, to float32 rounding.

use super::config::ModuleQuantization;
use super::load::{QuantKernel, Scope};
use super::{Error, Result, Weights};
use crate::kernels::{self, ForeignExpert};
use crate::mlx::distributed::Group;
use crate::mlx::{fast, Array, Dtype, QuantMode, QuantSpec, Quantized};

/// Reads a module's weight as stored: dense `[..lead, out, in]`, or quantized
/// with the spec the quantization map (or the tensors themselves) give.
pub(crate) enum Matrix {
    Dense(Array),
    Quantized(Quantized, QuantKernel),
}

impl Matrix {
    /// `lead` are leading axes (the experts), `[out, in]` the matrix.
    pub(crate) fn load(scope: &mut Scope, lead: &[i32], out_dims: i32, in_dims: i32) -> Result<Matrix> {
        let (weights, map, path) = (&mut *scope.weights, scope.quantization, scope.path.as_str());
        let weight_name = format!("{path}.weight");
        let scales_name = format!("{path}.scales");
        let mut shape = lead.to_vec();
        shape.push(out_dims);
        let entry = match map {
            Some(map) => map.module(path).map_err(|message| Error::Quantization {
                tensor: weight_name.clone(),
                file: weights.file_of(&weight_name),
                message,
            })?,
            None => ModuleQuantization::Unlisted,
        };
        if !weights.contains(&scales_name) {
            if let ModuleQuantization::Spec(_) = entry {
                // The map promises a quantized module the shards don't hold.
                weights.peek_shape(&scales_name)?;
            }
            shape.push(in_dims);
            return Ok(Matrix::Dense(weights.take_float(&weight_name, &shape)?));
        }
        let spec = match entry {
            ModuleQuantization::Spec(spec) => spec,
            ModuleQuantization::Unlisted => infer_spec(weights, path, in_dims)?,
            ModuleQuantization::Dense => {
                return Err(Error::UnexpectedTensor {
                    file: weights.file_of(&scales_name),
                    tensor: scales_name,
                })
            }
        };
        let quant_error = |message: String| Error::Quantization {
            tensor: weight_name.clone(),
            file: weights.file_of(&weight_name),
            message,
        };
        if spec.mode == QuantMode::Mxfp4 && (spec.group_size, spec.bits) != (32, 4) {
            return Err(quant_error(format!(
                "mxfp4 needs group_size 32 and bits 4, the config says {} and {}",
                spec.group_size, spec.bits
            )));
        }
        if !(2..=8).contains(&spec.bits) || spec.group_size <= 0 || in_dims % spec.group_size != 0 {
            return Err(quant_error(format!(
                "{} bits with group size {} cannot pack {in_dims} inputs",
                spec.bits, spec.group_size
            )));
        }
        let mut packed = shape.clone();
        packed.push(in_dims * spec.bits / 32);
        let mut grouped = shape;
        grouped.push(in_dims / spec.group_size);
        let weight = weights.take_typed(&weight_name, &packed, Dtype::Uint32)?;
        let (scales, biases) = match spec.mode {
            QuantMode::Mxfp4 => (weights.take_typed(&scales_name, &grouped, Dtype::Uint8)?, None),
            QuantMode::Affine => (
                weights.take_float(&scales_name, &grouped)?,
                Some(weights.take_float(&format!("{path}.biases"), &grouped)?),
            ),
        };
        let kernel = weights.quant_kernel(&weight_name, spec, in_dims);
        Ok(Matrix::Quantized(
            Quantized {
                weight,
                scales,
                biases,
                spec,
            },
            kernel,
        ))
    }
}

/// One array a module holds, with what it counts for in parameter counts.
pub(crate) struct Param<'a> {
    pub array: &'a Array,
    /// Logical weights: a quantized matrix counts its unpacked codes, its
    /// scales and biases count nothing (mlx-lm's and llama.cpp's convention).
    pub logical: u64,
    /// Held by an expert (a token uses only k of E of these).
    pub expert: bool,
}

impl<'a> Param<'a> {
    pub(crate) fn plain(array: &'a Array) -> Param<'a> {
        Param {
            array,
            logical: array.size() as u64,
            expert: false,
        }
    }
}

impl Matrix {
    fn collect<'a>(&'a self, out: &mut Vec<Param<'a>>) {
        match self {
            Matrix::Dense(w) => out.push(Param::plain(w)),
            Matrix::Quantized(q, _) => {
                out.push(Param {
                    logical: q.weight.size() as u64 * 32 / q.spec.bits as u64,
                    ..Param::plain(&q.weight)
                });
                for extra in std::iter::once(&q.scales).chain(q.biases.as_ref()) {
                    out.push(Param {
                        logical: 0,
                        ..Param::plain(extra)
                    });
                }
            }
        }
    }
}

/// mlx-lm's `infer_quant_config`: a module the map does not name was packed
/// with whatever its tensors imply. Byte scales mean a microscaling format.
fn infer_spec(weights: &Weights, path: &str, in_dims: i32) -> Result<QuantSpec> {
    let weight_name = format!("{path}.weight");
    let scales_name = format!("{path}.scales");
    let packed_cols = *weights.peek_shape(&weight_name)?.last().unwrap_or(&0);
    let scale_cols = *weights.peek_shape(&scales_name)?.last().unwrap_or(&0);
    let error = |message: String| Error::Quantization {
        tensor: weight_name.clone(),
        file: weights.file_of(&weight_name),
        message,
    };
    if scale_cols == 0 || in_dims % scale_cols != 0 || (packed_cols * 32) % in_dims != 0 {
        return Err(error(format!(
            "cannot infer its quantization: {packed_cols} packed columns and {scale_cols} scale columns \
             for {in_dims} inputs"
        )));
    }
    let (group_size, bits) = (in_dims / scale_cols, packed_cols * 32 / in_dims);
    if weights.peek_dtype(&scales_name)? != Dtype::Uint8 {
        return Ok(QuantSpec {
            group_size,
            bits,
            mode: QuantMode::Affine,
        });
    }
    match (bits, group_size) {
        (4, 32) => Ok(QuantSpec {
            group_size,
            bits,
            mode: QuantMode::Mxfp4,
        }),
        _ => Err(error(format!(
            "unknown quantization mode: byte scales with {bits} bits and group size {group_size} \
             (supported: mxfp4 = 4 bits, group 32; affine)"
        ))),
    }
}

/// A linear layer, `x @ W.T + b`.
pub(crate) struct Linear {
    weight: Matrix,
    bias: Option<Array>,
}

impl Linear {
    pub(crate) fn load(mut scope: Scope, in_dims: i32, out_dims: i32, bias: bool) -> Result<Linear> {
        let weight = Matrix::load(&mut scope, &[], out_dims, in_dims)?;
        let bias = bias.then(|| scope.take_float("bias", &[out_dims])).transpose()?;
        Ok(Linear { weight, bias })
    }

    pub(crate) fn collect<'a>(&'a self, out: &mut Vec<Param<'a>>) {
        self.weight.collect(out);
        out.extend(self.bias.as_ref().map(Param::plain));
    }

    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        match (&self.weight, &self.bias) {
            (Matrix::Dense(w), Some(b)) => Ok(b.addmm(x, &w.transpose(&[1, 0])?, 1.0, 1.0)?),
            _ => self.add_bias(self.project(x)?),
        }
    }

    /// The layer when its inputs are split across `group` (each rank holds
    /// some input columns): the partial products are summed, then the bias
    /// is added, once.
    pub(crate) fn forward_all_sum(&self, x: &Array, group: &Group) -> Result<Array> {
        self.add_bias(group.all_sum(&self.project(x)?)?)
    }

    /// `x @ W.T`, without the bias.
    fn project(&self, x: &Array) -> Result<Array> {
        Ok(match &self.weight {
            Matrix::Dense(w) => x.matmul(&w.transpose(&[1, 0])?)?,
            Matrix::Quantized(q, QuantKernel::Cpu(precision)) => {
                kernels::quantized_matmul(x, q, *precision, None)?
            }
            Matrix::Quantized(q, QuantKernel::Mlx) => q.matmul(x, true)?,
        })
    }

    fn add_bias(&self, y: Array) -> Result<Array> {
        Ok(match &self.bias {
            Some(b) => y.add(b)?,
            None => y,
        })
    }
}

/// Token embeddings `[vocab, hidden]`.
pub(crate) struct Embedding {
    weight: Matrix,
}

impl Embedding {
    pub(crate) fn load(mut scope: Scope, vocab: i32, hidden: i32) -> Result<Embedding> {
        Ok(Embedding {
            weight: Matrix::load(&mut scope, &[], vocab, hidden)?,
        })
    }

    pub(crate) fn collect<'a>(&'a self, out: &mut Vec<Param<'a>>) {
        self.weight.collect(out);
    }

    /// `ids [..]` → `[.., hidden]`. A quantized table dequantizes just the
    /// rows looked up, in MLX's default dtype for it (bfloat16 for MXFP4).
    pub(crate) fn forward(&self, ids: &Array) -> Result<Array> {
        Ok(match &self.weight {
            Matrix::Dense(w) => w.take(ids, 0)?,
            Matrix::Quantized(q, _) => Quantized {
                weight: q.weight.take(ids, 0)?,
                scales: q.scales.take(ids, 0)?,
                biases: q.biases.as_ref().map(|b| b.take(ids, 0)).transpose()?,
                spec: q.spec,
            }
            .dequantize(None)?,
        })
    }
}

/// One linear layer per expert `[experts, out, in]`, applied to the experts
/// each token was routed to.
pub(crate) struct SwitchLinear {
    weight: Matrix,
    bias: Array,
}

impl SwitchLinear {
    pub(crate) fn load(mut scope: Scope, experts: i32, in_dims: i32, out_dims: i32) -> Result<SwitchLinear> {
        Ok(SwitchLinear {
            weight: Matrix::load(&mut scope, &[experts], out_dims, in_dims)?,
            bias: scope.take_float("bias", &[experts, out_dims])?,
        })
    }

    pub(crate) fn collect<'a>(&'a self, out: &mut Vec<Param<'a>>) {
        let start = out.len();
        self.weight.collect(out);
        out.push(Param::plain(&self.bias));
        for param in &mut out[start..] {
            param.expert = true;
        }
    }

    /// What the matmul can make of an index naming another rank's expert:
    /// our CPU kernels skip its pairs; MLX's kernels have no data-dependent
    /// skip.
    pub(crate) fn foreign_expert(&self) -> ForeignExpert {
        match &self.weight {
            Matrix::Quantized(_, QuantKernel::Cpu(_)) => ForeignExpert::Zero,
            _ => ForeignExpert::Invalid,
        }
    }

    /// `x [.., 1, in]` with `indices` naming each row's expert → `[.., 1, out]`.
    /// `sorted` promises the indices are sorted, which MLX exploits.
    /// `foreign`: [`ForeignExpert::Zero`] (only where [`Self::foreign_expert`]
    /// allows it) makes an index one past the last expert another rank's.
    pub(crate) fn forward(
        &self,
        x: &Array,
        indices: &Array,
        sorted: bool,
        foreign: ForeignExpert,
    ) -> Result<Array> {
        let y = match &self.weight {
            Matrix::Dense(w) => x.gather_mm(&w.swapaxes(-1, -2)?, None, Some(indices), sorted)?,
            Matrix::Quantized(q, QuantKernel::Cpu(precision)) => {
                kernels::gather_matmul(x, q, indices, foreign, *precision, None)?
            }
            Matrix::Quantized(q, QuantKernel::Mlx) => {
                q.gather_matmul(x, None, Some(indices), true, sorted)?
            }
        };
        // Another rank's expert has no bias row here, and `take` does not
        // check bounds; its pair weighs zero, so any finite row will do.
        let bias_rows = match foreign {
            ForeignExpert::Zero => {
                indices.minimum(&indices.scalar_like(f64::from(self.bias.dim(0)? - 1))?)?
            }
            ForeignExpert::Invalid => indices.clone(),
        };
        Ok(y.add(&self.bias.take(&bias_rows, 0)?.expand_dims(-2)?)?)
    }
}

pub(crate) struct RmsNorm {
    weight: Array,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn load(mut scope: Scope, dims: i32, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: scope.take_float("weight", &[dims])?,
            eps,
        })
    }

    pub(crate) fn collect<'a>(&'a self, out: &mut Vec<Param<'a>>) {
        out.push(Param::plain(&self.weight));
    }

    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        Ok(fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }
}
