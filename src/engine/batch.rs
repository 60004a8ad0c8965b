//! Continuous batching: several sequences decoded together, one token each
//! per forward, joining and leaving between steps (mlx-lm's `BatchGenerator`
//! in spirit). Unlike mlx-lm's left-padded `BatchKVCache`, every sequence
//! keeps caches of its own and attends alone ([`GptOss::forward_rows`]);
//! only the position-independent work (embeddings, projections, experts,
//! head) is batched. Padding would add masked keys to each softmax and change
//! its reduction order; this way a sequence's tokens and log-probabilities
//! are bit-for-bit those of decoding it alone.

use super::cache::LayerCache;
use super::generate::{prefill, GenerateOptions, Step};
use super::sampler::Sampler;
use crate::mlx::{self, Array};
use crate::model::{GptOss, Result};

struct Sequence {
    id: usize,
    caches: Vec<LayerCache>,
    /// The token to feed next.
    next: u32,
    produced: usize,
}

pub struct BatchGeneration<'m> {
    model: &'m GptOss,
    sampler: Sampler,
    options: GenerateOptions,
    active: Vec<Sequence>,
}

impl<'m> BatchGeneration<'m> {
    /// Greedy decoding only: a sampled batch would draw every row from one
    /// key, unlike the same sequences decoded alone.
    pub fn new(model: &'m GptOss, options: GenerateOptions) -> Result<BatchGeneration<'m>> {
        if options.sampler.temperature != 0.0 {
            return Err(invalid("batched decoding is greedy only (temperature 0)"));
        }
        Ok(BatchGeneration {
            model,
            sampler: Sampler::new(options.sampler)?,
            options,
            active: Vec::new(),
        })
    }

    /// Sequences still decoding.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Adds a sequence continuing `caches` with `prompt` (at least one
    /// token): all but its last token are prefilled now, alone, as
    /// [`super::generate::Generation`] does; the last joins the next step.
    pub fn insert(&mut self, id: usize, mut caches: Vec<LayerCache>, prompt: &[u32]) -> Result<()> {
        let (last, rest) = prompt
            .split_last()
            .ok_or_else(|| invalid("the prompt is empty"))?;
        prefill(self.model, &mut caches, rest, self.options.prefill_step)?;
        if self.options.max_tokens > 0 {
            self.active.push(Sequence {
                id,
                caches,
                next: *last,
                produced: 0,
            });
        }
        Ok(())
    }

    /// Stops decoding sequence `id` (e.g. at a stop token).
    pub fn remove(&mut self, id: usize) {
        self.active.retain(|s| s.id != id);
    }

    /// One token for every sequence, in one forward: `(id, step)` pairs.
    /// Sequences that reach `max_tokens` leave by themselves.
    pub fn step(&mut self) -> Result<Vec<(usize, Step)>> {
        if self.active.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<u32> = self.active.iter().map(|s| s.next).collect();
        let tokens = Array::from_slice(&inputs, &[inputs.len() as i32, 1])?;
        let mut caches: Vec<&mut [LayerCache]> =
            self.active.iter_mut().map(|s| s.caches.as_mut_slice()).collect();
        let logits = self.model.forward_rows(&tokens, &mut caches)?.squeeze(1)?; // [B, vocab]
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let sampled = self.sampler.sample(&logprobs)?;
        mlx::eval(&[&sampled, &logprobs])?;
        let sampled = sampled.to_vec::<u32>()?;
        let mut steps = Vec::with_capacity(sampled.len());
        for (row, (seq, token)) in self.active.iter_mut().zip(sampled).enumerate() {
            seq.next = token;
            seq.produced += 1;
            let row = row as i32;
            steps.push((
                seq.id,
                Step {
                    token,
                    logprobs: logprobs.slice_axis(0, row, row + 1)?.squeeze(0)?,
                },
            ));
        }
        let max = self.options.max_tokens;
        self.active.retain(|s| s.produced < max);
        Ok(steps)
    }
}

fn invalid(message: &str) -> crate::model::Error {
    crate::model::Error::Mlx(mlx::Error::Invalid {
        op: "batch generate",
        message: message.into(),
    })
}
