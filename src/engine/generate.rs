//! The decode loop, shaped like mlx-lm's `generate_step`: the prompt but its
//! last token is prefilled in chunks, then each step's graph is built once and
//! evaluated asynchronously one step ahead, so the host reads token `n` while
//! MLX computes token `n + 1`. The only host sync per step is reading the id.

use super::cache::{make_caches, LayerCache};
use super::sampler::{Sampler, SamplerOptions};
use super::{Error, Result};
use crate::mlx::memory::WiredLimit;
use crate::mlx::{self, Array};
use crate::model::GptOss;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Prompt tokens per prefill forward; bounds activation memory.
    pub prefill_step: usize,
    pub sampler: SamplerOptions,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            prefill_step: 2048,
            sampler: SamplerOptions::default(),
        }
    }
}

/// One generated token and the distribution it was drawn from.
pub struct Step {
    pub token: u32,
    /// Log-probabilities over the vocabulary `[vocab]`, lazily evaluated.
    pub logprobs: Array,
}

impl Step {
    /// The chosen token's log-probability and the `k` most likely tokens,
    /// best first (OpenAI's `logprobs` / `top_logprobs`).
    pub fn top_logprobs(&self, k: usize) -> Result<TokenLogprobs> {
        let query = self.query_top_logprobs(k)?;
        mlx::eval(&query.arrays())?;
        query.read()
    }

    /// The log-probabilities of `ids`, in float32, lazily evaluated.
    pub fn logprobs_of(&self, ids: &[u32]) -> Result<Array> {
        let ids = Array::from_slice(ids, &[ids.len() as i32])?;
        Ok(self.logprobs.take(&ids, 0)?.astype(mlx::Dtype::Float32)?)
    }

    /// [`Step::top_logprobs`] as a graph not yet evaluated, so that a batch's
    /// queries can share one evaluation.
    pub fn query_top_logprobs(&self, k: usize) -> Result<LogprobsQuery> {
        let logprobs = self.logprobs.astype(mlx::Dtype::Float32)?;
        let vocab = logprobs.dim(-1)?;
        let k = (k as i32).clamp(1, vocab);
        let ids = logprobs
            .negative()?
            .argpartition(k - 1, -1)?
            .slice_axis(-1, 0, k)?;
        let values = logprobs.take_along_axis(&ids, -1)?;
        let chosen = logprobs.take(&Array::scalar_int(self.token.into(), mlx::Dtype::Uint32)?, 0)?;
        Ok(LogprobsQuery {
            token: self.token,
            ids,
            values,
            chosen,
        })
    }
}

/// The arrays behind a [`TokenLogprobs`], lazily evaluated.
pub struct LogprobsQuery {
    token: u32,
    ids: Array,
    values: Array,
    chosen: Array,
}

impl LogprobsQuery {
    pub fn arrays(&self) -> [&Array; 3] {
        [&self.ids, &self.values, &self.chosen]
    }

    /// Reads the answer; evaluates first unless [`Self::arrays`] already were.
    pub fn read(self) -> Result<TokenLogprobs> {
        let mut top: Vec<(u32, f32)> = self
            .ids
            .to_vec::<u32>()?
            .into_iter()
            .zip(self.values.to_vec::<f32>()?)
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(TokenLogprobs {
            token: self.token,
            logprob: self.chosen.item::<f32>()?,
            top,
        })
    }
}

/// What [`Step::top_logprobs`] reads from a step's distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Tokens generated after a prompt, one per `next()`.
pub struct Generation<'m> {
    model: &'m GptOss,
    caches: Vec<LayerCache>,
    sampler: Sampler,
    /// The step computed ahead: (token `[1]`, logprobs `[vocab]`).
    pending: Option<(Array, Array)>,
    produced: usize,
    max_tokens: usize,
    _wired: WiredLimit,
}

impl<'m> Generation<'m> {
    /// Prefills `prompt` (at least one token) and starts computing the first
    /// generated token.
    pub fn new(model: &'m GptOss, prompt: &[u32], options: GenerateOptions) -> Result<Generation<'m>> {
        let caches = make_caches(model);
        Generation::with_caches(model, caches, prompt, options)
    }

    /// Like [`Generation::new`], continuing from caches that already hold a
    /// prefix of the conversation.
    pub fn with_caches(
        model: &'m GptOss,
        mut caches: Vec<LayerCache>,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Generation<'m>> {
        let (last, rest) = prompt.split_last().ok_or(Error::EmptyPrompt)?;
        let wired = WiredLimit::recommended();
        prefill(model, &mut caches, rest, options.prefill_step)?;
        let mut generation = Generation {
            model,
            caches,
            sampler: Sampler::new(options.sampler)?,
            pending: None,
            produced: 0,
            max_tokens: options.max_tokens,
            _wired: wired,
        };
        if options.max_tokens > 0 {
            generation.pending = Some(generation.step(&tokens_array(&[*last])?)?);
        }
        Ok(generation)
    }

    /// Builds the graph for the token after `input [1, n]` and starts it.
    fn step(&mut self, input: &Array) -> Result<(Array, Array)> {
        let logits = self.model.forward(input, &mut self.caches)?;
        let last = logits.dim(1)? - 1;
        let logits = logits.slice_axis(1, last, last + 1)?.squeeze(1)?; // [1, vocab]
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let token = self.sampler.sample(&logprobs)?;
        mlx::async_eval(&[&token, &logprobs])?;
        Ok((token, logprobs.squeeze(0)?))
    }

    /// The caches after everything generated so far (for reuse).
    pub fn into_caches(self) -> Vec<LayerCache> {
        self.caches
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Result<Step>> {
        let (token, logprobs) = self.pending.take()?;
        self.produced += 1;
        // Queue the following step before waiting on this one's id.
        if self.produced < self.max_tokens {
            match token
                .reshape(&[1, 1])
                .map_err(Into::into)
                .and_then(|t| self.step(&t))
            {
                Ok(next) => self.pending = Some(next),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(
            token
                .item::<u32>()
                .map_err(Into::into)
                .map(|token| Step { token, logprobs }),
        )
    }
}

/// Runs `tokens` through the model into `caches`, `step` tokens per forward,
/// evaluating the caches after each so activation memory stays bounded.
pub fn prefill(model: &GptOss, caches: &mut [LayerCache], tokens: &[u32], step: usize) -> Result<()> {
    for chunk in tokens.chunks(step.max(1)) {
        model.forward(&tokens_array(chunk)?, caches)?;
        let state: Vec<&Array> = caches.iter().flat_map(LayerCache::state).collect();
        mlx::eval(&state)?;
        mlx::memory::clear_cache();
    }
    Ok(())
}

fn tokens_array(tokens: &[u32]) -> Result<Array> {
    Ok(Array::from_slice(tokens, &[1, tokens.len() as i32])?)
}
