//! MLX's fused kernels (`mlx::core::fast`).

use super::error::Context;
use super::ffi::bridge as ffi;
use super::{Array, Result};

/// RMS normalisation over the last axis, then an optional per-feature scale.
pub fn rms_norm(x: &Array, weight: Option<&Array>, eps: f32) -> Result<Array> {
    ffi::rms_norm(x.raw(), Array::optional(weight), eps)
        .op("fast::rms_norm")
        .map(Array::from_raw)
}

/// Where rotary frequencies come from.
#[derive(Debug, Clone, Copy)]
pub enum RopeFrequencies<'a> {
    /// `base^(-2i/dims)`, the classic schedule.
    Base(f32),
    /// Explicit per-pair wavelengths (as YaRN computes them), `dims / 2` of them.
    Explicit(&'a Array),
}

/// Rotary position embedding of the first `dims` features of the last axis,
/// positions starting at `offset` along axis -2 (times `scale`).
/// `traditional` rotates adjacent pairs; otherwise the two halves.
pub fn rope(
    x: &Array,
    dims: i32,
    traditional: bool,
    frequencies: RopeFrequencies<'_>,
    scale: f32,
    offset: i32,
) -> Result<Array> {
    match frequencies {
        RopeFrequencies::Base(base) => ffi::rope(x.raw(), dims, traditional, base, scale, offset),
        RopeFrequencies::Explicit(freqs) => {
            ffi::rope_with_freqs(x.raw(), dims, traditional, scale, offset, freqs.raw())
        }
    }
    .op("fast::rope")
    .map(Array::from_raw)
}

/// Which key positions each query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    None,
    /// Query `i` (aligned to the end of the keys) sees keys `..= i`.
    Causal,
    /// Boolean (true = attend) or additive mask broadcastable to
    /// `[batch, heads, queries, keys]`.
    Array(&'a Array),
}

/// `softmax(q·kᵀ·scale + mask) · v` for `[batch, heads, seq, head_dim]` inputs,
/// with grouped-query attention when `k`/`v` have fewer heads than `q`.
/// `sinks` (one logit per head) join each row's softmax and are then dropped.
pub fn scaled_dot_product_attention(
    queries: &Array,
    keys: &Array,
    values: &Array,
    scale: f32,
    mask: AttentionMask<'_>,
    sinks: Option<&Array>,
) -> Result<Array> {
    let (mode, mask) = match mask {
        AttentionMask::None => ("", None),
        AttentionMask::Causal => ("causal", None),
        AttentionMask::Array(mask) => ("array", Some(mask)),
    };
    ffi::scaled_dot_product_attention(
        queries.raw(),
        keys.raw(),
        values.raw(),
        scale,
        mode,
        Array::optional(mask),
        Array::optional(sinks),
    )
    .op("fast::scaled_dot_product_attention")
    .map(Array::from_raw)
}
