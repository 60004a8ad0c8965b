//! Choosing the next token from log-probabilities, as mlx-lm's
//! `sample_utils.make_sampler` does: greedy at temperature 0, otherwise
//! top-p, min-p and top-k filters, then a categorical draw.

use crate::constrain::Mask;
use crate::mlx::{self, random, where_, Array};
use crate::model::Result;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerOptions {
    /// 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (0 or 1: off).
    pub top_p: f32,
    /// Keep this many most likely tokens (0: off).
    pub top_k: i32,
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            temperature: 0.0,
            top_p: 0.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    options: SamplerOptions,
    /// Split before every draw, so a seed fixes the whole sequence.
    key: Array,
}

impl Sampler {
    pub fn new(options: SamplerOptions) -> Result<Sampler> {
        Ok(Sampler {
            options,
            key: random::key(options.seed)?,
        })
    }

    /// `logprobs [B, vocab]` → token ids `[B]`, lazily.
    pub fn sample(&mut self, logprobs: &Array) -> Result<Array> {
        let o = self.options;
        if o.temperature == 0.0 {
            return Ok(logprobs.argmax(-1, false)?);
        }
        let logprobs = self.filter(logprobs)?;
        let keys = random::split(&self.key, 2)?;
        let first = |i: i64| keys.take(&Array::scalar_int(i, mlx::Dtype::Int32)?, 0);
        self.key = first(0)?;
        let scaled = logprobs.multiply(&logprobs.scalar_like(1.0 / f64::from(o.temperature))?)?;
        Ok(random::categorical(&scaled, -1, &first(1)?)?)
    }
}

impl Sampler {
    /// As [`Sampler::sample`], from the tokens `allowed` lets through only
    /// (a grammar's mask over one row `[1, vocab]`); every filter and the
    /// draw then see the others as impossible.
    pub fn sample_within(&mut self, logprobs: &Array, allowed: Option<&Mask>) -> Result<Array> {
        let Some(mask) = allowed else {
            return self.sample(logprobs);
        };
        let width = logprobs.dim(-1)?;
        let allowed =
            Array::from_slice(&mask.bytes(width as usize), &[1, width])?.astype(mlx::Dtype::Bool)?;
        self.sample(&where_(&allowed, logprobs, &neg_inf_like(logprobs)?)?)
    }

    /// The log-probabilities with the tokens the filters exclude set to -inf,
    /// in mlx-lm's order: top-p, then min-p, then top-k.
    pub fn filter(&self, logprobs: &Array) -> Result<Array> {
        let o = self.options;
        let mut logprobs = logprobs.clone();
        if 0.0 < o.top_p && o.top_p < 1.0 {
            logprobs = top_p(&logprobs, o.top_p)?;
        }
        if o.min_p != 0.0 {
            logprobs = min_p(&logprobs, o.min_p)?;
        }
        if o.top_k > 0 {
            logprobs = top_k(&logprobs, o.top_k)?;
        }
        Ok(logprobs)
    }
}

fn neg_inf_like(x: &Array) -> Result<Array> {
    Ok(x.scalar_like(f64::NEG_INFINITY)?)
}

/// Keeps the most likely tokens whose mass reaches `p` (and always the first).
fn top_p(logprobs: &Array, p: f32) -> Result<Array> {
    let sorted = logprobs.sort(-1)?;
    let probs = sorted.astype(mlx::Dtype::Float32)?.exp()?;
    let mass_above = probs.cumsum(-1, true, false)?;
    let total = mass_above
        .slice_axis(-1, 0, 1)?
        .add(&probs.slice_axis(-1, 0, 1)?)?;
    let dropped = mass_above
        .greater_equal(&total.multiply(&total.scalar_like(f64::from(p))?)?)?
        .astype(mlx::Dtype::Int32)?
        .sum(&[-1], true)?;
    let threshold = sorted.take_along_axis(&dropped, -1)?;
    Ok(where_(
        &logprobs.less(&threshold)?,
        &neg_inf_like(logprobs)?,
        logprobs,
    )?)
}

fn min_p(logprobs: &Array, p: f32) -> Result<Array> {
    let top = logprobs.max(&[-1], true)?;
    let floor = top.add(&top.scalar_like(f64::from(p).ln())?)?;
    Ok(where_(
        &logprobs.less(&floor)?,
        &neg_inf_like(logprobs)?,
        logprobs,
    )?)
}

/// Keeps the `k` most likely tokens.
fn top_k(logprobs: &Array, k: i32) -> Result<Array> {
    let vocab = logprobs.dim(-1)?;
    if k >= vocab {
        return Ok(logprobs.clone());
    }
    let dropped = logprobs
        .negative()?
        .argpartition(k - 1, -1)?
        .slice_axis(-1, k, vocab)?;
    Ok(logprobs.put_along_axis(&dropped, &neg_inf_like(logprobs)?, -1)?)
}
