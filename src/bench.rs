//! `safeguard bench`: what a model is (parameters, active parameters per
//! token, bits per weight, bytes on disk) and how fast it runs here — prefill
//! and decode tokens/s, time to first token and peak memory, as median and
//! min–max over runs after a warm-up (mlx-lm's `benchmark.py` metrics plus
//! TTFT), optionally swept over context lengths, plus classification
//! throughput through the [`Classifier`] and the machine's decode ceiling.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::classify::input::Item;
use crate::classify::policy::Policy;
use crate::classify::run::{Classifier, ClassifyOptions};
use crate::classify::verdict::Keywords;
use crate::constrain::{Grammar, Guide, Rules, Vocabulary};
use crate::engine::cache::{make_caches, LayerCache};
use crate::engine::generate::{GenerateOptions, Generation};
use crate::engine::sampler::SamplerOptions;
use crate::harmony::Effort;
use crate::kernels::CpuKernels;
use crate::mlx::{self, Array};
use crate::model::{Config, GptOss, LayerType, LoadOptions, Stage};
use crate::tokenizer::Tokenizer;

/// Sizes read off the safetensors headers and config.json, no tensor data.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    /// Logical weights: quantized matrices count their unpacked elements;
    /// quantization scales and biases are not parameters.
    pub parameters: u64,
    /// Parameters used per token: everything but the experts, plus top-k of
    /// E experts (the embedding counts whole, as mlx-lm and llama.cpp count it).
    pub active_parameters: u64,
    /// Bytes of the tensors (headers excluded) × 8 ÷ parameters.
    pub bits_per_weight: f64,
    /// Bytes of the weight files on disk.
    pub bytes_on_disk: u64,
    /// Tensor bytes of the experts and of everything else.
    pub expert_bytes: u64,
    pub dense_bytes: u64,
    /// Tensor bytes of the embedding table (one row is read per token).
    pub embedding_bytes: u64,
}

/// One tensor of a safetensors header: (dtype, shape, bytes).
pub type TensorInfo = (String, Vec<u64>, u64);

/// The tensors of one safetensors file by name.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    anyhow::ensure!(
        len < 1 << 30,
        "{}: implausible header length {len}",
        path.display()
    );
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header)?;
    let mut out = BTreeMap::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry["dtype"].as_str().unwrap_or_default().to_string();
        let shape: Vec<u64> = entry["shape"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let offsets: Vec<u64> = entry["data_offsets"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let bytes = match offsets.as_slice() {
            [a, b] => b - a,
            _ => 0,
        };
        out.insert(name, (dtype, shape, bytes));
    }
    Ok(out)
}

pub fn model_stats(dir: &Path, config: &Config) -> Result<ModelStats> {
    let mut tensors = BTreeMap::new();
    let mut bytes_on_disk = 0;
    for file in crate::model::weight_files(dir)? {
        bytes_on_disk += std::fs::metadata(&file)?.len();
        tensors.extend(read_header(&file)?);
    }
    let (mut parameters, mut expert_params, mut expert_bytes, mut dense_bytes, mut embedding_bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (name, (dtype, shape, bytes)) in &tensors {
        let is_expert = name.contains(".experts.");
        if is_expert {
            expert_bytes += bytes;
        } else {
            dense_bytes += bytes;
        }
        if name.starts_with("model.embed_tokens.") {
            embedding_bytes += bytes;
        }
        let Some(module) = name.strip_suffix(".weight") else {
            // `.scales`/`.biases` of a quantized module are not parameters.
            if name.ends_with(".scales") || name.ends_with(".biases") {
                continue;
            }
            let n: u64 = shape.iter().product();
            parameters += n;
            expert_params += if is_expert { n } else { 0 };
            continue;
        };
        let mut n: u64 = shape.iter().product();
        if let Some((scale_dtype, scale_shape, _)) = tensors.get(&format!("{module}.scales")) {
            anyhow::ensure!(dtype == "U32", "{name}: quantized weight of dtype {dtype}");
            let bits = quantized_bits(config, module, scale_dtype, shape, scale_shape)?;
            n = n * 32 / bits;
        }
        parameters += n;
        if is_expert {
            expert_params += n;
        }
    }
    let e = config.num_local_experts.max(1) as u64;
    let k = (config.num_experts_per_tok.max(0) as u64).min(e);
    Ok(ModelStats {
        parameters,
        active_parameters: parameters - expert_params + expert_params * k / e,
        bits_per_weight: if parameters == 0 {
            0.0
        } else {
            (expert_bytes + dense_bytes) as f64 * 8.0 / parameters as f64
        },
        bytes_on_disk,
        expert_bytes,
        dense_bytes,
        embedding_bytes,
    })
}

/// Bits per code of a quantized module: its quantization entry when listed,
/// else inferred from the tensors as mlx-lm does (u8 scales ⇒ mxfp4 with
/// groups of 32; otherwise the top-level group size).
fn quantized_bits(
    config: &Config,
    module: &str,
    scale_dtype: &str,
    shape: &[u64],
    scale_shape: &[u64],
) -> Result<u64> {
    use crate::model::Quantization;
    let quant: Option<&Quantization> = config.quantization.as_ref();
    if let Some(q) = quant {
        if let Ok(crate::model::ModuleQuantization::Spec(spec)) = q.module(module) {
            return Ok(spec.bits as u64);
        }
    }
    let group = if scale_dtype == "U8" {
        32
    } else {
        quant.map(|q| q.group_size as u64).unwrap_or(64)
    };
    let packed = *shape.last().unwrap_or(&0);
    let in_dims = scale_shape.last().unwrap_or(&0) * group;
    anyhow::ensure!(in_dims > 0, "{module}: empty quantized tensor");
    Ok(32 * packed / in_dims)
}

/// Bytes of KV state read per decode token at `context` tokens of context:
/// keys and values of every layer, sliding layers capped at their window.
pub fn kv_bytes_per_token(config: &Config, context: usize, dtype_bytes: usize) -> u64 {
    let per_position = 2 * config.num_key_value_heads as u64 * config.head_dim as u64 * dtype_bytes as u64;
    config
        .layer_types()
        .iter()
        .map(|t| {
            let n = match t {
                LayerType::SlidingAttention => context.min(config.sliding_window.max(1) as usize),
                LayerType::FullAttention => context,
            };
            n as u64 * per_position
        })
        .sum()
}

/// Median, min and max of some samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Spread {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Spread {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }
}

/// One run: `prompt` tokens in, `gen` tokens out.
#[derive(Debug, Clone, Copy)]
pub struct RunTimings {
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub ttft_ms: f64,
    pub peak_memory: f64,
}

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

/// What holding an answer to a JSON schema costs a decode step (`--constraint`).
#[derive(Debug, Clone, Serialize)]
pub struct ConstraintCost {
    /// Masks computed, along random walks through the grammar.
    pub steps: usize,
    /// Host time per step: the grammar's mask and its expansion to one byte per id.
    pub mask_ms: f64,
    /// A decode step at the first context (from its median decode tok/s).
    pub step_ms: f64,
    pub percent_of_step: f64,
}

/// A verdict object like the JSON policies ask for: enums, ids, a bounded
/// rationale, nested arrays.
fn bench_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "violation": {"enum": [0, 1]},
            "policy_category": {"anyOf": [{"enum": ["PI1", "PI2", "PI3", "PI0.a"]}, {"type": "null"}]},
            "rule_ids": {"type": "array", "items": {"enum": ["PI1", "PI2", "PI3", "PI0.a"]}, "maxItems": 4},
            "confidence": {"enum": ["low", "medium", "high"]},
            "rationale": {"type": "string", "maxLength": 200},
        },
        "required": ["violation", "policy_category", "rationale"],
        "additionalProperties": false,
    })
}

/// Times the constraint's host work over `steps` decode steps: the final
/// answer opened, tokens drawn at random from each mask (a new answer when
/// one ends), only the masks timed. In the driver this work overlaps the
/// forward; timed alone, it is an upper bound on what it adds.
pub fn constraint_cost(
    tokenizer: &Tokenizer,
    vocab: usize,
    steps: usize,
    step_ms: f64,
) -> Result<ConstraintCost> {
    let vocabulary = Vocabulary::new(tokenizer, vocab)?;
    let control = crate::harmony::ControlTokens::of(tokenizer)?;
    let guide = Guide {
        vocabulary,
        rules: Rules {
            answer: Some(Grammar::JsonSchema(bench_schema())),
            tools: Default::default(),
            deadline: None,
        },
    };
    let header = [
        vec![control.start],
        tokenizer.encode_ordinary("assistant")?,
        vec![control.channel],
        tokenizer.encode_ordinary("final")?,
        vec![control.message],
    ]
    .concat();
    let mut constraint = guide.start(&header)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut masked = Duration::ZERO;
    for _ in 0..steps {
        let start = Instant::now();
        let mask = constraint
            .mask()
            .ok_or_else(|| anyhow::anyhow!("the answer's grammar gave no mask"))?;
        std::hint::black_box(mask.bytes(vocab));
        masked += start.elapsed();
        let allowed: Vec<u32> = (0..vocab as u32).filter(|&t| mask.allows(t)).collect();
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let token = allowed[(state >> 33) as usize % allowed.len()];
        if token == control.return_ {
            constraint = guide.start(&header)?;
        } else {
            constraint.observe(token);
        }
    }
    let mask_ms = masked.as_secs_f64() * 1e3 / steps.max(1) as f64;
    Ok(ConstraintCost {
        steps,
        mask_ms,
        step_ms,
        percent_of_step: 100.0 * mask_ms / step_ms,
    })
}

/// Where a forward's time goes (`--profile`).
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub prompt_tokens: usize,
    pub decode_steps: usize,
    /// Per stage: (name, prefill ms, decode ms per token), the stage
    /// evaluated on its own, so MLX cannot overlap it with the next.
    pub stages: Vec<(String, f64, f64)>,
    /// A plain decode step (no probes): building its graph on the host, and
    /// waiting for MLX to evaluate it, ms per token.
    pub decode_build_ms: f64,
    pub decode_eval_ms: f64,
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
    let stats = model_stats(dir, &model.config)?;
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

/// Times each stage of a prefill of `prompt` and of `steps` decode steps by
/// evaluating after it (the head only when decoding: a prefill keeps just the
/// caches), then times plain decode steps split into graph building (host)
/// and evaluation.
pub fn profile(model: &GptOss, prompt: &[u32], steps: usize) -> Result<Profile> {
    let mut stages: Vec<(Stage, f64, f64)> = Vec::new();
    let mut timed_forward = |tokens: &[u32], caches: &mut Vec<LayerCache>, decode: bool| -> Result<u32> {
        let input = Array::from_slice(tokens, &[1, tokens.len() as i32])?;
        let mut last = Instant::now();
        let mut probe = |stage: Stage, output: &Array| -> crate::model::Result<()> {
            // Prefill never evaluates the head: only the caches are kept.
            if stage == Stage::Head && !decode {
                return Ok(());
            }
            output.eval()?;
            let ms = last.elapsed().as_secs_f64() * 1e3;
            match stages.iter_mut().find(|(s, _, _)| *s == stage) {
                Some(entry) if decode => entry.2 += ms,
                Some(entry) => entry.1 += ms,
                None => stages.push((
                    stage,
                    if decode { 0.0 } else { ms },
                    if decode { ms } else { 0.0 },
                )),
            }
            last = Instant::now();
            Ok(())
        };
        let logits = model.forward_probed(&input, &mut [caches.as_mut_slice()], &mut probe)?;
        let last = logits.dim(1)? - 1;
        Ok(logits
            .slice_axis(1, last, last + 1)?
            .argmax(-1, false)?
            .reshape(&[1])?
            .item::<u32>()?)
        // (After a prefill this evaluates the last position's head, untimed.)
    };
    let mut caches = make_caches(model);
    let mut token = timed_forward(prompt, &mut caches, false)?;
    for _ in 0..steps {
        token = timed_forward(&[token], &mut caches, true)?;
    }
    let (mut build, mut eval) = (0.0, 0.0);
    for _ in 0..steps {
        let start = Instant::now();
        let logits = model.forward(&Array::from_slice(&[token], &[1, 1])?, &mut caches)?;
        let next = logits.argmax(-1, false)?.reshape(&[1])?;
        let built = Instant::now();
        token = next.item::<u32>()?;
        build += (built - start).as_secs_f64() * 1e3;
        eval += built.elapsed().as_secs_f64() * 1e3;
    }
    let per_step = steps.max(1) as f64;
    Ok(Profile {
        prompt_tokens: prompt.len(),
        decode_steps: steps,
        stages: stages
            .into_iter()
            .map(|(stage, prefill, decode)| (format!("{stage:?}").to_lowercase(), prefill, decode / per_step))
            .collect(),
        decode_build_ms: build / per_step,
        decode_eval_ms: eval / per_step,
    })
}

/// A line chart of decode (solid) and prefill (dashed) tok/s against context
/// length, one colour per model, log-scaled context axis.
pub fn svg_plot(results: &[ModelResult]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 200.0, 30.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let points: Vec<(f64, f64)> = results
        .iter()
        .flat_map(|r| {
            r.contexts.iter().flat_map(|c| {
                [
                    (c.prompt_tokens as f64, c.decode_tokens_per_sec.median),
                    (c.prompt_tokens as f64, c.prefill_tokens_per_sec.median),
                ]
            })
        })
        .collect();
    let xmin = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min).max(1.0);
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max).max(xmin * 2.0);
    let ymax = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| left + (v.ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">tokens/s vs context (solid: decode, dashed: prefill)</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
    }
    let mut ticks: Vec<usize> = results
        .iter()
        .flat_map(|r| r.contexts.iter().map(|c| c.prompt_tokens))
        .collect();
    ticks.sort_unstable();
    ticks.dedup();
    for t in ticks {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>\n",
            x(t as f64),
            top + ph + 16.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">context (tokens)</text>\n",
        left + pw / 2.0,
        h - 10.0
    );
    for (i, r) in results.iter().enumerate() {
        let colour = colours[i % colours.len()];
        for (dash, get) in [
            (
                "",
                (|c: &ContextResult| c.decode_tokens_per_sec.median) as fn(&ContextResult) -> f64,
            ),
            (" stroke-dasharray=\"5,4\"", |c: &ContextResult| {
                c.prefill_tokens_per_sec.median
            }),
        ] {
            let pts: Vec<String> = r
                .contexts
                .iter()
                .map(|c| format!("{:.1},{:.1}", x(c.prompt_tokens as f64), y(get(c))))
                .collect();
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
                pts.join(" ")
            );
            for p in &pts {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                s += &format!("<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>\n");
            }
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>\n",
            left + pw + 10.0,
            top + 16.0 * (i as f64 + 1.0),
            xml_escape(&r.model)
        );
    }
    s + "</svg>\n"
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How far the `fast` CPU kernels (int8 activations) move a model's
/// next-token distributions from the `exact` ones, over the positions of one
/// synthetic prompt: reported, not assumed (`--fidelity`).
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    pub positions: usize,
    /// Share of positions whose most likely token is the same.
    pub top1_agreement: f64,
    /// KL(exact ‖ fast) in nats, mean and worst over the positions.
    pub mean_kl: f64,
    pub max_kl: f64,
}

pub fn kernel_fidelity(dir: &Path, load: LoadOptions, positions: usize) -> Result<Fidelity> {
    let log_probs = |cpu_kernels| -> Result<Array> {
        let model = GptOss::load(dir, LoadOptions { cpu_kernels, ..load })?;
        let prompt = synthetic_prompt(positions.max(1), model.config.vocab_size as u32, 17);
        let tokens = Array::from_slice(&prompt, &[1, prompt.len() as i32])?;
        let logits = model.forward(&tokens, &mut make_caches(&model))?;
        let out = logits.reshape(&[prompt.len() as i32, -1])?.log_softmax(-1)?;
        mlx::eval(&[&out])?;
        Ok(out)
    };
    let exact = log_probs(CpuKernels::Exact)?;
    let fast = log_probs(CpuKernels::Fast)?;
    let kl = exact
        .exp()?
        .multiply(&exact.subtract(&fast)?)?
        .sum(&[-1], false)?;
    let top1 = |a: &Array| -> Result<Vec<u32>> { Ok(a.argmax(-1, false)?.to_vec::<u32>()?) };
    let agree = top1(&exact)?
        .iter()
        .zip(top1(&fast)?)
        .filter(|(a, b)| **a == *b)
        .count();
    let kl = kl.to_vec::<f32>()?;
    Ok(Fidelity {
        positions: kl.len(),
        top1_agreement: agree as f64 / kl.len() as f64,
        mean_kl: kl.iter().map(|&v| f64::from(v)).sum::<f64>() / kl.len() as f64,
        max_kl: kl.iter().fold(0.0f64, |m, &v| m.max(f64::from(v))),
    })
}
