//! Timed runs: generation at one context, classification throughput, and
//! the machine's copy bandwidth that bounds decode.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::BenchOptions;
use crate::classify::input::Item;
use crate::classify::policy::Policy;
use crate::classify::run::{Classifier, ClassifyOptions};
use crate::classify::verdict::Keywords;
use crate::engine::generate::{GenerateOptions, Generation};
use crate::engine::sampler::SamplerOptions;
use crate::mlx;
use crate::model::GptOss;
use crate::tokenizer::Tokenizer;

/// One run: `prompt` tokens in, `gen` tokens out.
#[derive(Debug, Clone, Copy)]
pub struct RunTimings {
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub ttft_ms: f64,
    pub peak_memory: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifyResult {
    pub items: usize,
    /// Items decoded together (continuous batching).
    pub batch_size: usize,
    pub policy: String,
    pub effort: String,
    pub max_tokens: usize,
    pub seconds: f64,
    pub items_per_sec: f64,
    /// Prompt + generated tokens per second.
    pub tokens_per_sec: f64,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// Deterministic pseudo-random prompt ids below `vocab` (xorshift).
pub fn synthetic_prompt(len: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // Ordinary text tokens only: stay below the special tokens (≥ 199998).
    let top = vocab.clamp(2, 199_998);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % top as u64) as u32
        })
        .collect()
}

/// One timed generation of exactly `gen` tokens (stop tokens ignored).
pub fn time_generation(
    model: &GptOss,
    prompt: &[u32],
    gen: usize,
    prefill_step: usize,
) -> Result<RunTimings> {
    mlx::memory::clear_cache();
    mlx::memory::reset_peak();
    let options = GenerateOptions {
        max_tokens: gen.max(1),
        prefill_step,
        sampler: SamplerOptions::default(),
    };
    let start = Instant::now();
    let mut first = None;
    let mut count = 0usize;
    for step in Generation::new(model, prompt, options)? {
        step?;
        first.get_or_insert_with(|| start.elapsed());
        count += 1;
    }
    let total = start.elapsed();
    let ttft = first.unwrap_or(total);
    Ok(RunTimings {
        prefill_tps: rate(prompt.len(), ttft),
        decode_tps: rate(count.saturating_sub(1), total.saturating_sub(ttft)),
        ttft_ms: ttft.as_secs_f64() * 1e3,
        peak_memory: mlx::memory::peak() as f64,
    })
}

fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// Memory bandwidth from a Rust memcpy benchmark: a 256 MiB buffer copied
/// a few times, best of them; counts bytes read + bytes written per second.
pub fn memcpy_bandwidth() -> f64 {
    const LEN: usize = 256 << 20;
    let src = vec![1u8; LEN];
    let mut dst = vec![0u8; LEN];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * LEN as f64 / best
}

/// Synthetic classification items (distinct from their first word on).
pub fn synthetic_items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            id: format!("item-{i}"),
            content: format!(
                "Message {i}: hello, I wanted to ask whether the meeting on day {} still stands, \
                 and whether I should bring the report with the numbers for week {}.",
                i % 28 + 1,
                i % 52 + 1
            ),
        })
        .collect()
}

pub fn classify_throughput(
    model: &GptOss,
    tokenizer: &Tokenizer,
    policy: &Policy,
    items: &[Item],
    options: &BenchOptions,
) -> Result<ClassifyResult> {
    let classify_options = ClassifyOptions {
        effort: Some(options.classify_effort),
        date: None,
        max_tokens: options.classify_max_tokens,
        sampler: SamplerOptions::default(),
        prefill_step: options.prefill_step,
        keywords: Keywords::default(),
    };
    if options.warmup {
        let mut warm = Classifier::new(model, tokenizer, policy, classify_options.clone())?;
        warm.classify(&Item {
            id: "warm-up".into(),
            content: "warm-up".into(),
        })?;
    }
    // A fresh classifier: the policy prefix is prefilled once inside the timing.
    let mut classifier = Classifier::new(model, tokenizer, policy, classify_options)?;
    let start = Instant::now();
    let (mut prompt_tokens, mut cached_tokens, mut completion_tokens) = (0, 0, 0);
    let refs: Vec<&Item> = items.iter().collect();
    classifier.classify_batched(&refs, options.classify_batch_size, |_, c| {
        prompt_tokens += c.prompt_tokens;
        cached_tokens += c.cached_tokens;
        completion_tokens += c.completion_tokens;
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(ClassifyResult {
        items: items.len(),
        batch_size: options.classify_batch_size,
        policy: policy.name.clone(),
        effort: options.classify_effort.to_string(),
        max_tokens: options.classify_max_tokens,
        seconds,
        items_per_sec: items.len() as f64 / seconds,
        tokens_per_sec: (prompt_tokens + completion_tokens) as f64 / seconds,
        prompt_tokens,
        cached_tokens,
        completion_tokens,
    })
}
