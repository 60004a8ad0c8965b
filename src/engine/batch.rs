//! Continuous batching: several sequences decoded together, one token each
//! per forward, joining and leaving between steps (mlx-lm's `BatchGenerator`
//! in spirit). Unlike mlx-lm's left-padded `BatchKVCache`, every sequence
//! keeps caches of its own and attends alone ([`GptOss::forward_rows`]);
//! only the position-independent work (embeddings, projections, experts,
//! head) is batched. Padding would add masked keys to each softmax and change
//! its reduction order; this way a sequence's tokens and log-probabilities
//! are bit-for-bit those of decoding it alone, sampled ones included (each
//! sequence draws from its own sampler).
//!
//! Steps are pipelined as in [`super::generate::Generation`]: the forward for
//! token `n + 1` is built from token `n` while that is still being computed,
//! so the host reads one step while MLX computes the next. A sequence removed
//! in between has one step computed for nothing.

use super::cache::LayerCache;
use super::generate::{prefill, GenerateOptions, Step};
use super::sampler::Sampler;
use crate::mlx::{self, Array};
use crate::model::{GptOss, Result};

struct Sequence {
    id: usize,
    caches: Vec<LayerCache>,
    sampler: Sampler,
    /// The token to feed next `[1]`: the prompt's last, or one sampled but
    /// perhaps not yet computed.
    next: Array,
    /// Steps queued so far, and the most this sequence may have.
    queued: usize,
    max_tokens: usize,
}

/// A forward in flight: which sequence each row is, what it drew, and the
/// distributions it drew from.
struct Pending {
    ids: Vec<usize>,
    sampled: Array,
    logprobs: Array,
}

pub struct BatchGeneration<'m> {
    model: &'m GptOss,
    active: Vec<Sequence>,
    pending: Option<Pending>,
}

impl<'m> BatchGeneration<'m> {
    pub fn new(model: &'m GptOss) -> BatchGeneration<'m> {
        BatchGeneration {
            model,
            active: Vec::new(),
            pending: None,
        }
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
    /// [`super::generate::Generation`] does; the last joins the next forward.
    pub fn insert(
        &mut self,
        id: usize,
        mut caches: Vec<LayerCache>,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<()> {
        let (last, rest) = prompt
            .split_last()
            .ok_or_else(|| invalid("the prompt is empty"))?;
        prefill(self.model, &mut caches, rest, options.prefill_step)?;
        if options.max_tokens > 0 {
            self.active.push(Sequence {
                id,
                caches,
                sampler: Sampler::new(options.sampler)?,
                next: Array::from_slice(&[*last], &[1])?,
                queued: 0,
                max_tokens: options.max_tokens,
            });
        }
        Ok(())
    }

    /// Stops decoding sequence `id` (e.g. at a stop token).
    pub fn remove(&mut self, id: usize) {
        self.active.retain(|s| s.id != id);
    }

    /// The next token of every sequence that was active when the forward was
    /// queued and still is: `(id, step)` pairs. Sequences that reach their
    /// `max_tokens` leave by themselves.
    pub fn step(&mut self) -> Result<Vec<(usize, Step)>> {
        let ready = match self.pending.take() {
            Some(pending) => pending,
            None => match self.queue()? {
                Some(pending) => pending,
                None => return Ok(Vec::new()),
            },
        };
        self.pending = self.queue()?;
        let sampled = ready.sampled.to_vec::<u32>()?;
        let mut steps = Vec::with_capacity(sampled.len());
        for (row, (&id, token)) in ready.ids.iter().zip(sampled).enumerate() {
            if self.active.iter().any(|s| s.id == id) {
                let row = row as i32;
                let logprobs = ready.logprobs.slice_axis(0, row, row + 1)?.squeeze(0)?;
                steps.push((id, Step { token, logprobs }));
            }
        }
        let finished: Vec<usize> = self
            .active
            .iter()
            .filter(|s| {
                s.queued == s.max_tokens && !self.pending.as_ref().is_some_and(|p| p.ids.contains(&s.id))
            })
            .map(|s| s.id)
            .collect();
        self.active.retain(|s| !finished.contains(&s.id));
        Ok(steps)
    }

    /// Builds and starts the forward for every sequence with steps left.
    fn queue(&mut self) -> Result<Option<Pending>> {
        let mut rows: Vec<&mut Sequence> = self
            .active
            .iter_mut()
            .filter(|s| s.queued < s.max_tokens)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let inputs: Vec<&Array> = rows.iter().map(|s| &s.next).collect();
        let tokens = mlx::concatenate(&inputs, 0)?.reshape(&[rows.len() as i32, 1])?;
        let mut caches: Vec<&mut [LayerCache]> = rows.iter_mut().map(|s| s.caches.as_mut_slice()).collect();
        let logits = self.model.forward_rows(&tokens, &mut caches)?.squeeze(1)?; // [B, vocab]
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let mut drawn = Vec::with_capacity(rows.len());
        for (row, seq) in rows.iter_mut().enumerate() {
            let row = row as i32;
            seq.next = seq.sampler.sample(&logprobs.slice_axis(0, row, row + 1)?)?;
            seq.queued += 1;
            drawn.push(seq.next.clone());
        }
        let drawn: Vec<&Array> = drawn.iter().collect();
        let sampled = mlx::concatenate(&drawn, 0)?;
        mlx::async_eval(&[&sampled, &logprobs])?;
        Ok(Some(Pending {
            ids: rows.iter().map(|s| s.id).collect(),
            sampled,
            logprobs,
        }))
    }
}

fn invalid(message: &str) -> crate::model::Error {
    crate::model::Error::Mlx(mlx::Error::Invalid {
        op: "batch generate",
        message: message.into(),
    })
}
