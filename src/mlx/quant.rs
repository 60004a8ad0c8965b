//! Quantized weights and the matmuls over them. The mode travels with every
//! call: MXFP4 has uint8 E8M0 scales and no biases, affine has both.

use std::fmt;
use std::str::FromStr;

use super::array::{arrays_from_list, Array};
use super::error::Context;
use super::ffi::bridge as ffi;
use super::{Dtype, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantMode {
    /// `w ≈ scale * q + bias` per group, 2–8 bits.
    Affine,
    /// OCP microscaling FP4: E2M1 codes, one power-of-two E8M0 scale per 32.
    Mxfp4,
}

impl QuantMode {
    pub fn as_str(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Mxfp4 => "mxfp4",
        }
    }

    /// Whether weights of this mode carry a `biases` tensor beside `scales`.
    pub fn has_biases(self) -> bool {
        self == QuantMode::Affine
    }
}

impl fmt::Display for QuantMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuantMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<QuantMode> {
        match s {
            "affine" => Ok(QuantMode::Affine),
            "mxfp4" => Ok(QuantMode::Mxfp4),
            other => Err(Error::Invalid {
                op: "quantization mode",
                message: format!("unknown mode {other:?} (supported: affine, mxfp4)"),
            }),
        }
    }
}

/// How a matrix was quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantSpec {
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
}

/// A quantized matrix `[..., out, in]`: packed uint32 codes along `in`
/// (lowest bits first), one scale (and for affine one bias) per group.
#[derive(Debug, Clone)]
pub struct Quantized {
    pub weight: Array,
    pub scales: Array,
    pub biases: Option<Array>,
    pub spec: QuantSpec,
}

impl Quantized {
    /// Quantizes `w` along its last axis.
    pub fn quantize(w: &Array, spec: QuantSpec) -> Result<Quantized> {
        let parts = ffi::quantize(w.raw(), spec.group_size, spec.bits, spec.mode.as_str()).op("quantize")?;
        let mut parts = arrays_from_list(&parts).into_iter();
        let (Some(weight), Some(scales)) = (parts.next(), parts.next()) else {
            return Err(Error::Invalid {
                op: "quantize",
                message: "MLX returned fewer than two outputs".into(),
            });
        };
        Ok(Quantized {
            weight,
            scales,
            biases: parts.next(),
            spec,
        })
    }

    /// The float matrix. Without a `dtype`, MLX picks one: the scales' dtype
    /// for affine, bfloat16 for MXFP4 (whose scales are bytes).
    pub fn dequantize(&self, dtype: Option<Dtype>) -> Result<Array> {
        ffi::dequantize(
            self.weight.raw(),
            self.scales.raw(),
            Array::optional(self.biases.as_ref()),
            self.spec.group_size,
            self.spec.bits,
            self.spec.mode.as_str(),
            dtype.is_some(),
            dtype.map_or(0, Dtype::code),
        )
        .op("dequantize")
        .map(Array::from_raw)
    }

    /// `x @ W.T` when `transpose` (the linear-layer layout), else `x @ W`.
    pub fn matmul(&self, x: &Array, transpose: bool) -> Result<Array> {
        ffi::quantized_matmul(
            x.raw(),
            self.weight.raw(),
            self.scales.raw(),
            Array::optional(self.biases.as_ref()),
            transpose,
            self.spec.group_size,
            self.spec.bits,
            self.spec.mode.as_str(),
        )
        .op("quantized_matmul")
        .map(Array::from_raw)
    }

    /// Batched quantized matmul where each output picks its `x` and weight
    /// batch entries by index: the expert matmul of a mixture of experts.
    /// `sorted_indices` promises `rhs_indices` is sorted, which MLX exploits.
    pub fn gather_matmul(
        &self,
        x: &Array,
        lhs_indices: Option<&Array>,
        rhs_indices: Option<&Array>,
        transpose: bool,
        sorted_indices: bool,
    ) -> Result<Array> {
        ffi::gather_qmm(
            x.raw(),
            self.weight.raw(),
            self.scales.raw(),
            Array::optional(self.biases.as_ref()),
            Array::optional(lhs_indices),
            Array::optional(rhs_indices),
            transpose,
            self.spec.group_size,
            self.spec.bits,
            self.spec.mode.as_str(),
            sorted_indices,
        )
        .op("gather_qmm")
        .map(Array::from_raw)
    }
}
