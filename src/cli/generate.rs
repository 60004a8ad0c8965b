//! `safeguard generate`: run the model on a prompt and print what it writes.
//!
//! `--prompt` is rendered as a harmony chat and the output is shown as
//! reasoning and answer; `--raw` and `--prompt-tokens` feed the prompt as it is
//! and print the output as it is.

mod chat;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use self::chat::ChatStream;
use super::UsageError;
use crate::engine::generate::{GenerateOptions, Generation};
use crate::engine::sampler::SamplerOptions;
use crate::harmony::{self, Completion, ControlTokens, Effort, StreamParser};
use crate::mlx;
use crate::model;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Generate text from a prompt, or from token ids as given.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a local folder, a catalog alias (`safeguard ls`) or a hub repo id (org/name).
    #[arg(short, long)]
    model: String,
    /// Prompt text: the user's message of a harmony chat, or plain text with --raw.
    #[arg(long, conflicts_with = "prompt_tokens")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, fed as they are.
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt")]
    prompt_tokens: Option<Vec<u32>>,
    /// Feed --prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Chat: reasoning effort in the system message (low, medium, high).
    #[arg(long, default_value_t = Effort::Medium, conflicts_with_all = ["raw", "prompt_tokens"])]
    effort: Effort,
    /// Chat: the model identity that opens the system message.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["raw", "prompt_tokens"])]
    system: Option<String>,
    /// Chat: developer instructions (a policy, for the safeguard models).
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["raw", "prompt_tokens"])]
    developer: Option<String>,
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
    logprobs: Option<usize>,
    #[command(flatten)]
    engine: super::EngineArgs,
    #[command(flatten)]
    distributed: super::DistributedArgs,
    #[command(flatten)]
    memory: super::MemoryArgs,
    /// One JSON object instead of streamed text.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Whether --prompt is a chat message (rendered and parsed as harmony).
    fn chat(&self) -> bool {
        self.prompt.is_some() && !self.raw
    }

    fn prompt_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        Ok(match (&self.prompt, &self.prompt_tokens) {
            (Some(text), _) if self.raw => tokenizer.encode_ordinary(text)?,
            (Some(text), _) => {
                let conversation = chat::conversation(
                    text,
                    self.effort,
                    self.system.as_deref(),
                    self.developer.as_deref(),
                );
                // A tokenizer without harmony's control tokens is the wrong model.
                harmony::render_for_completion(&conversation, tokenizer).map_err(|e| UsageError(e.into()))?
            }
            (None, Some(ids)) => ids.clone(),
            (None, None) => unreachable!("clap requires one of them"),
        })
    }
}

/// Where generated tokens go while they are produced.
enum Output<'t> {
    /// Decoded as they are; printed unless `echo` is off (--json).
    Raw { stream: StreamDecoder<'t>, echo: bool },
    /// Parsed as harmony; the answer and reasoning printed unless --json.
    Chat {
        stream: Box<ChatStream<'t>>,
        control: ControlTokens,
    },
}

impl Output<'_> {
    /// `stop`: the token is an end-of-sequence id that ends generation.
    fn push(&mut self, token: u32, stop: bool, out: &mut impl Write) -> Result<()> {
        match self {
            Output::Raw { stream, echo: true } if !stop => {
                write!(out, "{}", stream.push(token)?)?;
                out.flush()?;
            }
            Output::Raw { .. } => {}
            // Harmony's stops end the last message; other ids (<|endoftext|>) are no text.
            Output::Chat { stream, control } if !stop || control.stops_generation(token) => {
                stream.push(token, out)?
            }
            Output::Chat { .. } => {}
        }
        Ok(())
    }

    /// The parsed chat, if this is one.
    fn finish(self, out: &mut impl Write) -> Result<Option<Completion>> {
        match self {
            Output::Raw { mut stream, echo } => {
                if echo {
                    writeln!(out, "{}", stream.finish()?)?;
                }
                Ok(None)
            }
            Output::Chat { stream, .. } => Ok(Some(stream.finish(out)?)),
        }
    }
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
    let tokenizer = Tokenizer::load(&model_dir).map_err(|e| UsageError(e.into()))?;
    let prompt = args.prompt_ids(&tokenizer)?;
    let (model, rank) = super::load_model(
        &model_dir,
        &args.engine,
        &args.distributed,
        &args.memory,
        prompt.len(),
        args.max_tokens,
    )?;
    // Every rank computes the same tokens; one prints them.
    let leader = rank.as_ref().is_none_or(|r| r.is_leader());
    let stops = model::stop_tokens(&model_dir, &model.config).map_err(|e| UsageError(e.into()))?;
    let load_time = load_start.elapsed();

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
        prefill_step: args.engine.prefill_step(),
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
    let watchdog = args.distributed.watchdog(rank.as_ref());
    let generation = Generation::new(&model, &prompt, options)?;
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    let mut first_token_at = None;
    let mut stopped = false;
    let mut stdout: Box<dyn Write> = if leader {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::sink())
    };
    let mut output = if args.chat() {
        Output::Chat {
            stream: Box::new(ChatStream::new(
                StreamParser::new(&tokenizer)?,
                !args.json,
                leader && std::io::stdout().is_terminal(),
            )),
            control: ControlTokens::of(&tokenizer)?,
        }
    } else {
        Output::Raw {
            stream: tokenizer.stream(),
            echo: !args.json,
        }
    };
    for step in generation {
        let step = step?;
        if let Some(watchdog) = &watchdog {
            watchdog.beat();
        }
        first_token_at.get_or_insert_with(|| start.elapsed());
        if let Some(k) = args.logprobs {
            logprobs.push(step.top_logprobs(k)?);
        }
        tokens.push(step.token);
        stopped = stops.contains(&step.token);
        output.push(step.token, stopped, &mut stdout)?;
        if stopped {
            break;
        }
    }
    let total = start.elapsed();
    let chat = output.finish(&mut stdout)?;
    let finish_reason = match &chat {
        Some(chat) => chat::finish_reason(chat, stopped),
        None if stopped => "stop",
        None => "length",
    };

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
        if let Some(chat) = &chat {
            chat::add_json_fields(chat, &mut out);
        }
        if args.logprobs.is_some() {
            out["logprobs"] = Value::Array(
                logprobs
                    .iter()
                    .map(|l| json!({"token": l.token, "logprob": l.logprob, "top": l.top}))
                    .collect(),
            );
        }
        writeln!(stdout, "{out}")?;
    } else if leader {
        if let Some(chat) = &chat {
            chat::report_issues(chat);
        }
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
