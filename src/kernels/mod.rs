//! Quantized matmuls of our own for MLX's CPU backend, as MLX primitives.
//!
//! MLX's CPU `quantized_matmul` and `gather_qmm` run at a few GFLOP/s on one
//! thread; these run on every core with SIMD (AVX-512, AVX2, or portable code
//! the compiler vectorizes, NEON on arm64), decoding MXFP4 and affine 4/8-bit
//! weights in the register file. They sit in the MLX graph like any op, so the
//! model stays one lazy graph evaluated once per step. On Metal and CUDA the
//! model keeps MLX's own kernels.
//!
//! The C++ lives beside this file: `qmm_isa.cc` (the inner loops, compiled
//! once per instruction set), `qmm.cc` (input layout, tasks, dispatch),
//! `pool.cc` (the persistent thread pool) and `primitive.cc` (the MLX glue).
//! C++ rather than Rust `std::arch`: the primitive must be C++ anyway, and one
//! vector-extension source compiles to every instruction set without a
//! callback across the language boundary on each op.

pub(crate) mod ffi;

use std::fmt;
use std::str::FromStr;

use crate::mlx::{Array, Dtype, Error, QuantSpec, Quantized, Result};
use ffi::bridge;

/// How our kernels take activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// float32: equal to MLX's kernels to float32 rounding.
    Exact,
    /// int8 per block of 32 (scale = max|x| / 127) and integer dot products,
    /// as llama.cpp: each product is off by at most half a code step per
    /// input times the weight, Σ_blocks d_b / 2 · Σ_i |w_i|.
    Fast,
}

/// Which kernels quantized matmuls use on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernels {
    #[default]
    Exact,
    Fast,
    /// MLX's own `quantized_matmul` / `gather_qmm`, for comparison.
    Mlx,
}

impl CpuKernels {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuKernels::Exact => "exact",
            CpuKernels::Fast => "fast",
            CpuKernels::Mlx => "mlx",
        }
    }

    /// Our kernels' precision, or `None` for MLX's kernels.
    pub fn precision(self) -> Option<Precision> {
        match self {
            CpuKernels::Exact => Some(Precision::Exact),
            CpuKernels::Fast => Some(Precision::Fast),
            CpuKernels::Mlx => None,
        }
    }
}

impl fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CpuKernels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "exact" => Ok(CpuKernels::Exact),
            "fast" => Ok(CpuKernels::Fast),
            "mlx" => Ok(CpuKernels::Mlx),
            other => Err(format!(
                "unknown CPU kernels {other:?} (expected exact, fast or mlx)"
            )),
        }
    }
}

/// Who computes quantized matmuls under `choice` on the current device, for
/// reports: e.g. "ours (exact, avx512, 2 threads)" or "MLX's".
pub fn describe(choice: CpuKernels) -> String {
    if choice.precision().is_none() || crate::mlx::default_device().is_gpu() {
        "MLX's".to_string()
    } else {
        format!(
            "ours ({choice}, {}, {} threads)",
            default_instruction_set(),
            threads()
        )
    }
}

/// The instruction sets this CPU can run the kernels with, fastest first.
pub fn instruction_sets() -> Vec<String> {
    bridge::available_isas_list()
}

/// The instruction set the kernels use unless told otherwise.
pub fn default_instruction_set() -> String {
    bridge::default_isa_name()
}

/// Threads the kernels run on (`SAFEGUARD_THREADS`, else every hardware thread).
pub fn threads() -> usize {
    bridge::threads()
}

/// Whether the kernels compute matrices of `spec` with `in_dims` inputs, or why not.
pub fn support(spec: QuantSpec, in_dims: i32) -> std::result::Result<(), String> {
    let why = bridge::support_error(spec.mode.as_str(), spec.bits, spec.group_size, in_dims);
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

fn mlx_error(op: &'static str) -> impl FnOnce(cxx::Exception) -> Error {
    move |e| Error::Mlx {
        op,
        message: e.what().to_string(),
    }
}

/// `x [.., in] @ W.T` → `[.., out]` for `W [out, in]`, on instruction set
/// `isa` (`None`: the fastest available).
pub fn quantized_matmul(x: &Array, w: &Quantized, precision: Precision, isa: Option<&str>) -> Result<Array> {
    bridge::quantized_matmul(
        x.raw(),
        w.weight.raw(),
        w.scales.raw(),
        Array::optional(w.biases.as_ref()),
        w.spec.group_size,
        w.spec.bits,
        w.spec.mode.as_str(),
        precision == Precision::Fast,
        isa.unwrap_or(""),
    )
    .map_err(mlx_error("quantized matmul (CPU kernels)"))
    .map(Array::from_raw)
}

/// What [`gather_matmul`] makes of an expert index equal to the number of
/// experts it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignExpert {
    /// An index out of range like any other: the evaluation fails, naming the pair.
    Invalid,
    /// An expert another rank holds (expert parallel): the pair's output rows
    /// are zeros and cost no work, so a rank computes only its own experts'
    /// pairs without reading the routing back to the host.
    Zero,
}

/// The expert matmul: `x [.., M, in]` against `W [experts, out, in]`, each
/// entry of `indices` choosing the expert for the matching entry of `x`'s
/// leading axes (broadcast together, as MLX's `gather_qmm` with
/// `rhs_indices`) → `[broadcast(..), M, out]`.
pub fn gather_matmul(
    x: &Array,
    w: &Quantized,
    indices: &Array,
    foreign: ForeignExpert,
    precision: Precision,
    isa: Option<&str>,
) -> Result<Array> {
    let x_shape = x.shape();
    if x_shape.len() < 2 {
        return Err(Error::Invalid {
            op: "gathered quantized matmul",
            message: format!("inputs must be [.., rows, in], found shape {x_shape:?}"),
        });
    }
    let (x_batch, rows_and_in) = x_shape.split_at(x_shape.len() - 2);
    let batch = broadcast_shapes(x_batch, &indices.shape())?;
    let x_entries: i32 = x_batch.iter().product();
    let lhs = Array::arange(0.0, f64::from(x_entries), 1.0, Dtype::Uint32)?
        .reshape(x_batch)?
        .broadcast_to(&batch)?
        .reshape(&[-1])?;
    let rhs = indices.broadcast_to(&batch)?.reshape(&[-1])?;
    let flat_x = x.reshape(&[x_entries, rows_and_in[0], rows_and_in[1]])?;
    let y = bridge::gather_matmul(
        flat_x.raw(),
        w.weight.raw(),
        w.scales.raw(),
        Array::optional(w.biases.as_ref()),
        lhs.raw(),
        rhs.raw(),
        foreign == ForeignExpert::Zero,
        w.spec.group_size,
        w.spec.bits,
        w.spec.mode.as_str(),
        precision == Precision::Fast,
        isa.unwrap_or(""),
    )
    .map_err(mlx_error("gathered quantized matmul (CPU kernels)"))
    .map(Array::from_raw)?;
    let mut shape = batch;
    shape.extend([rows_and_in[0], y.dim(-1)?]);
    y.reshape(&shape)
}

/// NumPy's broadcasting of two shapes.
fn broadcast_shapes(a: &[i32], b: &[i32]) -> Result<Vec<i32>> {
    let len = a.len().max(b.len());
    let at = |s: &[i32], i: usize| {
        if i + s.len() < len {
            1
        } else {
            s[i + s.len() - len]
        }
    };
    (0..len)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(Error::Invalid {
                op: "gathered quantized matmul",
                message: format!("input batch {a:?} and indices {b:?} do not broadcast ({x} vs {y})"),
            }),
        })
        .collect()
}
