//! Random numbers from explicit keys: the same key always gives the same draw.

use super::error::Context;
use super::ffi::bridge as ffi;
use super::{Array, Dtype, Result};

/// A PRNG key from a seed.
pub fn key(seed: u64) -> Result<Array> {
    ffi::random_key(seed).op("random::key").map(Array::from_raw)
}

/// `num` independent keys derived from `key`, stacked along axis 0.
pub fn split(key: &Array, num: i32) -> Result<Array> {
    ffi::random_split(key.raw(), num)
        .op("random::split")
        .map(Array::from_raw)
}

/// Uniform in `[0, 1)`.
pub fn uniform(shape: &[i32], dtype: Dtype, key: &Array) -> Result<Array> {
    ffi::random_uniform(shape, dtype.code(), key.raw())
        .op("random::uniform")
        .map(Array::from_raw)
}

/// Standard normal.
pub fn normal(shape: &[i32], dtype: Dtype, key: &Array) -> Result<Array> {
    ffi::random_normal(shape, dtype.code(), key.raw())
        .op("random::normal")
        .map(Array::from_raw)
}

/// One index per row drawn with probabilities `softmax(logits)` along `axis`.
pub fn categorical(logits: &Array, axis: i32, key: &Array) -> Result<Array> {
    ffi::random_categorical(logits.raw(), axis, key.raw())
        .op("random::categorical")
        .map(Array::from_raw)
}
