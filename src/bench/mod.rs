//! `safeguard bench`: what a model is (parameters, active parameters per
//! token, bits per weight, bytes on disk) and how fast it runs here — prefill
//! and decode tokens/s, time to first token and peak memory, as median and
//! min–max over runs after a warm-up (mlx-lm's `benchmark.py` metrics plus
//! TTFT), optionally swept over context lengths, plus classification
//! throughput through the [`Classifier`] and the machine's decode ceiling.

mod constraint;
mod plot;
mod profile;
mod size;
mod stats;
mod timing;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::classify::policy::Policy;
use crate::harmony::Effort;
use crate::model::GptOss;
use crate::tokenizer::Tokenizer;

pub use constraint::{constraint_cost, ConstraintCost};
pub use plot::svg_plot;
pub use profile::{kernel_fidelity, profile, Fidelity, Profile};
pub use size::{kv_bytes_per_token, model_stats, read_header, ModelStats, TensorInfo};
pub use stats::Spread;
pub use timing::{
    classify_throughput, memcpy_bandwidth, synthetic_items, synthetic_prompt, time_generation,
    ClassifyResult, RunTimings,
};

/// The measurements at one context length.
#[derive(Debug, Clone, Serialize)]
pub struct ContextResult {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prefill_tokens_per_sec: Spread,
    pub decode_tokens_per_sec: Spread,
    pub time_to_first_token_ms: Spread,
    pub peak_memory_bytes: Spread,
    /// Bytes read per decode token: active weights + KV at this context.
    pub bytes_per_decode_token: u64,
    /// Bandwidth ÷ bytes per decode token.
    pub decode_ceiling_tokens_per_sec: f64,
    /// Median decode tok/s ÷ the ceiling.
    pub achieved_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub model: String,
    pub path: String,
    pub dtype: String,
    #[serde(flatten)]
    pub stats: ModelStats,
    pub load_seconds: f64,
    pub contexts: Vec<ContextResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classify: Option<ClassifyResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<Fidelity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraint: Option<ConstraintCost>,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub contexts: Vec<usize>,
    pub gen_tokens: usize,
    pub runs: usize,
    pub warmup: bool,
    pub prefill_step: usize,
    pub load: crate::model::LoadOptions,
    pub classify: Option<(usize, String)>,
    pub classify_max_tokens: usize,
    pub classify_effort: Effort,
    pub classify_batch_size: usize,
    /// Time the stages of a prefill and of decode steps.
    pub profile: bool,
    /// Positions over which to compare fast with exact CPU kernels.
    pub fidelity: Option<usize>,
    /// Time the constraint's mask per decode step.
    pub constraint: bool,
}

/// Benchmarks one loaded model.
pub fn bench_model(
    name: &str,
    dir: &Path,
    options: &BenchOptions,
    bandwidth: f64,
    mut progress: impl FnMut(&str),
) -> Result<ModelResult> {
    let load_start = Instant::now();
    let model = GptOss::load(dir, options.load)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let stats = model_stats(dir, &model)?;
    let vocab = model.config.vocab_size as u32;
    let dtype_bytes = model.dtype().size();
    // Weights read per decode token: all dense tensors but the embedding
    // table (one row), and k of E experts.
    let e = model.config.num_local_experts.max(1) as u64;
    let k = (model.config.num_experts_per_tok.max(0) as u64).min(e);
    let active_weight_bytes = stats.dense_bytes - stats.embedding_bytes + stats.expert_bytes * k / e;

    let mut contexts = Vec::new();
    for &context in &options.contexts {
        let prompt = synthetic_prompt(context.max(1), vocab, context as u64);
        if options.warmup {
            progress(&format!("{name}: warm-up at {context} tokens"));
            time_generation(&model, &prompt, options.gen_tokens.min(8), options.prefill_step)?;
        }
        let mut runs = Vec::new();
        for run in 0..options.runs.max(1) {
            progress(&format!(
                "{name}: context {context}, run {}/{}",
                run + 1,
                options.runs.max(1)
            ));
            runs.push(time_generation(
                &model,
                &prompt,
                options.gen_tokens,
                options.prefill_step,
            )?);
        }
        let spread = |f: fn(&RunTimings) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        // Decode reads the KV of the prompt plus half the generated tokens on average.
        let kv = kv_bytes_per_token(&model.config, context + options.gen_tokens / 2, dtype_bytes);
        let bytes_per_token = active_weight_bytes + kv;
        let ceiling = bandwidth / bytes_per_token as f64;
        let decode = spread(|r| r.decode_tps);
        contexts.push(ContextResult {
            prompt_tokens: prompt.len(),
            gen_tokens: options.gen_tokens,
            prefill_tokens_per_sec: spread(|r| r.prefill_tps),
            decode_tokens_per_sec: decode,
            time_to_first_token_ms: spread(|r| r.ttft_ms),
            peak_memory_bytes: spread(|r| r.peak_memory),
            bytes_per_decode_token: bytes_per_token,
            decode_ceiling_tokens_per_sec: ceiling,
            achieved_fraction: decode.median / ceiling,
        });
    }

    let classify = match &options.classify {
        Some((n, policy)) => {
            progress(&format!("{name}: classifying {n} items"));
            let policy = Policy::find(policy)?;
            let tokenizer = Tokenizer::load(dir)?;
            Some(classify_throughput(
                &model,
                &tokenizer,
                &policy,
                &synthetic_items(*n),
                options,
            )?)
        }
        None => None,
    };
    let profile = if options.profile {
        progress(&format!("{name}: profiling"));
        let prompt = synthetic_prompt(options.contexts[0].max(1), vocab, 7);
        Some(profile(&model, &prompt, options.gen_tokens.clamp(1, 16))?)
    } else {
        None
    };
    let fidelity = match options.fidelity {
        Some(positions) => {
            progress(&format!(
                "{name}: fast vs exact kernels over {positions} positions"
            ));
            Some(kernel_fidelity(dir, options.load, positions)?)
        }
        None => None,
    };
    let constraint = if options.constraint {
        progress(&format!("{name}: timing the constraint's masks"));
        let step_ms = 1e3 / contexts[0].decode_tokens_per_sec.median;
        Some(constraint_cost(
            &Tokenizer::load(dir)?,
            vocab as usize,
            256,
            step_ms,
        )?)
    } else {
        None
    };
    Ok(ModelResult {
        model: name.to_string(),
        path: dir.display().to_string(),
        dtype: model.dtype().name().to_string(),
        stats,
        load_seconds,
        contexts,
        classify,
        profile,
        fidelity,
        constraint,
    })
}
