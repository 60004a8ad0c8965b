//! `safeguard generate`: run the model on a prompt and print what it writes.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::UsageError;
use crate::engine::generate::{GenerateOptions, Generation};
use crate::engine::sampler::SamplerOptions;
use crate::mlx::{self, Array, Dtype};
use crate::model::{self, ComputeDtype, GptOss};
use crate::tokenizer::Tokenizer;

/// Generate text from a prompt, or from token ids as given.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a local folder, a catalog alias (`safeguard ls`) or a hub repo id (org/name).
    #[arg(short, long)]
    model: String,
    /// Prompt text, tokenized as plain text (chat rendering arrives with harmony).
    #[arg(long, conflicts_with = "prompt_tokens", requires = "raw")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, fed as they are.
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt")]
    prompt_tokens: Option<Vec<u32>>,
    /// Feed --prompt without a chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: i32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report the K most likely tokens at each step.
    #[arg(long, value_name = "K")]
    logprobs: Option<i32>,
    /// Compute dtype: auto (float32 on CPU, the model's on GPU), float32, bfloat16, float16.
    #[arg(long, default_value = "auto", value_parser = clap::builder::ValueParser::new(str::parse::<ComputeDtype>))]
    dtype: ComputeDtype,
    /// Prompt tokens per prefill step.
    #[arg(long, default_value_t = 2048)]
    prefill_step: usize,
    /// One JSON object instead of streamed text.
    #[arg(long)]
    json: bool,
}

struct TokenLogprobs {
    token: u32,
    logprob: f32,
    top: Vec<(u32, f32)>,
}

pub fn run(args: Args) -> Result<()> {
    let model_dir = super::resolve_model(&args.model)?;
    if !model_dir.join("config.json").is_file() {
        return Err(UsageError(anyhow::anyhow!(
            "{} is not a model folder (no config.json); pass a local folder with config.json, \
             safetensors shards and tokenizer.json",
            model_dir.display()
        ))
        .into());
    }
    let load_start = Instant::now();
    let model = GptOss::load(&model_dir, args.dtype).map_err(|e| UsageError(e.into()))?;
    let stops = model::stop_tokens(&model_dir, &model.config).map_err(|e| UsageError(e.into()))?;
    let tokenizer = Tokenizer::load(&model_dir).map_err(|e| UsageError(e.into()))?;
    let load_time = load_start.elapsed();

    let prompt = match (&args.prompt, &args.prompt_tokens) {
        (Some(text), _) => tokenizer.encode_ordinary(text)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let vocab = model.config.vocab_size as u32;
    if prompt.is_empty() {
        return Err(UsageError(anyhow::anyhow!("the prompt is empty")).into());
    }
    if let Some(bad) = prompt.iter().find(|&&id| id >= vocab) {
        return Err(UsageError(anyhow::anyhow!(
            "token id {bad} is outside the vocabulary (0..{vocab})"
        ))
        .into());
    }

    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        prefill_step: args.prefill_step,
        sampler: SamplerOptions {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: args.min_p,
            seed: args.seed,
        },
    };
    mlx::memory::reset_peak();
    let start = Instant::now();
    let generation = Generation::new(&model, &prompt, options)?;
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    let mut first_token_at = None;
    let mut finish_reason = "length";
    let mut stream = tokenizer.stream();
    let mut stdout = std::io::stdout().lock();
    for step in generation {
        let step = step?;
        first_token_at.get_or_insert_with(|| start.elapsed());
        if let Some(k) = args.logprobs {
            logprobs.push(top_logprobs(&step.logprobs, step.token, k)?);
        }
        tokens.push(step.token);
        if stops.contains(&step.token) {
            finish_reason = "stop";
            break;
        }
        if !args.json {
            write!(stdout, "{}", stream.push(step.token)?)?;
            stdout.flush()?;
        }
    }
    let total = start.elapsed();
    if !args.json {
        writeln!(stdout, "{}", stream.finish()?)?;
    }

    let ttft = first_token_at.unwrap_or(total);
    let decode_time = total.saturating_sub(ttft);
    let timings = json!({
        "load_seconds": load_time.as_secs_f64(),
        "prefill_tokens_per_sec": rate(prompt.len(), ttft),
        "decode_tokens_per_sec": rate(tokens.len().saturating_sub(1), decode_time),
        "time_to_first_token_ms": ttft.as_secs_f64() * 1e3,
        "peak_memory_bytes": mlx::memory::peak(),
    });
    if args.json {
        let mut out = json!({
            "tokens": tokens,
            "text": tokenizer.decode(&tokens)?,
            "finish_reason": finish_reason,
            "usage": {"prompt_tokens": prompt.len(), "completion_tokens": tokens.len()},
            "timings": timings,
            "dtype": model.dtype().name(),
        });
        if args.logprobs.is_some() {
            out["logprobs"] = Value::Array(
                logprobs
                    .iter()
                    .map(|l| json!({"token": l.token, "logprob": l.logprob, "top": l.top}))
                    .collect(),
            );
        }
        writeln!(stdout, "{out}")?;
    } else {
        eprintln!(
            "[{} prompt tokens, {} generated ({finish_reason}); prefill {:.1} tok/s, decode {:.1} tok/s, \
             first token {:.0} ms, peak memory {:.1} MB]",
            prompt.len(),
            tokens.len(),
            rate(prompt.len(), ttft),
            rate(tokens.len().saturating_sub(1), decode_time),
            ttft.as_secs_f64() * 1e3,
            mlx::memory::peak() as f64 / 1e6,
        );
    }
    Ok(())
}

fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// The chosen token's log-probability and the `k` most likely, best first.
fn top_logprobs(logprobs: &Array, token: u32, k: i32) -> Result<TokenLogprobs> {
    let logprobs = logprobs.astype(Dtype::Float32)?;
    let vocab = logprobs.dim(-1)?;
    let k = k.clamp(1, vocab);
    let ids = logprobs
        .negative()?
        .argpartition(k - 1, -1)?
        .slice_axis(-1, 0, k)?;
    let values = logprobs.take_along_axis(&ids, -1)?;
    let chosen = logprobs.take(&Array::scalar_int(token.into(), Dtype::Uint32)?, 0)?;
    let mut top: Vec<(u32, f32)> = ids
        .to_vec::<u32>()?
        .into_iter()
        .zip(values.to_vec::<f32>()?)
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(TokenLogprobs {
        token,
        logprob: chosen
            .item::<f32>()
            .context("reading the chosen token's logprob")?,
        top,
    })
}
