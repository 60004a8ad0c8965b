//! What a model needs in memory (per rank when split) against what the
//! device gives, before anything is loaded: weights from the safetensors
//! headers in the dtype they will be computed in, the KV cache at the
//! context asked for, and the largest working buffers of a forward.

use std::fmt;
use std::path::Path;

use super::{Error, Parallel, Result, Split};
use crate::bench::read_header;
use crate::hub::human_bytes;
use crate::mlx::{self, Backend};
use crate::model::{Config, LayerType, LoadOptions, Weights};

/// MLX grows full-attention caches in steps of this many positions.
const CACHE_STEP: usize = 256;

/// A memory estimate for one rank, in bytes.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub weights: u64,
    pub kv_cache: u64,
    pub working: u64,
    pub context: usize,
    pub ranks: i32,
    pub parallel: Option<Parallel>,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.working
    }
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (weights {} + KV cache {} at {} tokens + working buffers {}){}",
            human_bytes(self.total()),
            human_bytes(self.weights),
            human_bytes(self.kv_cache),
            self.context,
            human_bytes(self.working),
            match self.parallel {
                Some(p) if self.ranks > 1 => format!(" per rank, {} ranks with --parallel {p}", self.ranks),
                _ => String::new(),
            }
        )
    }
}

/// What a model would run with: the context to hold and how it is split.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub context: usize,
    /// The longest prompt prefilled (in chunks of `prefill_step`); None: one
    /// as long as the context.
    pub prompt: Option<usize>,
    pub prefill_step: usize,
    pub load: LoadOptions,
    pub split: Option<(Parallel, i32)>,
}

/// The estimate for `request` on the model in `dir`. Reads headers only.
pub fn estimate(dir: &Path, config: &Config, request: Request) -> Result<Estimate> {
    Ok(Footprint::read(dir, config, request)?.at(config, request))
}

/// What a model's weights take per rank, and the heads a rank attends with:
/// read from the headers once, then sized for any context.
struct Footprint {
    weights: u64,
    heads: u64,
    kv_heads: u64,
    compute: u64,
    ranks: i32,
    parallel: Option<Parallel>,
}

impl Footprint {
    fn read(dir: &Path, config: &Config, request: Request) -> Result<Footprint> {
        // Opening is lazy: no tensor data is read.
        let mut weights = Weights::open(dir, request.load)?;
        if weights.contains_original_layout() {
            weights.sanitize_original_layout()?;
        }
        let split = match request.split {
            Some((parallel, ranks)) if ranks > 1 => Some(Split::plan(config, &weights, parallel, ranks)?),
            _ => None,
        };
        let compute = weights.compute_dtype().size() as u64;
        let ranks = request.split.map_or(1, |(_, n)| n.max(1));
        let heads_share = |s: &Split| {
            if s.split_heads {
                1.0 / f64::from(s.ranks)
            } else {
                1.0
            }
        };
        let expert_share = |s: &Split| match s.parallel {
            Parallel::Tensor => 1.0 / f64::from(s.ranks),
            // Rank 0 holds the most experts when they do not divide evenly.
            Parallel::Expert => f64::from(s.experts(0).len() as i32) / f64::from(config.num_local_experts),
        };
        let mut total = 0.0;
        for file in crate::model::weight_files(dir)? {
            let header = read_header(&file).map_err(|e| {
                Error::Model(crate::model::Error::WeightFile {
                    path: file.clone(),
                    message: e.to_string(),
                })
            })?;
            for (name, (dtype, shape, bytes)) in header {
                let elements: u64 = shape.iter().product();
                // Floating tensors are cast to the compute dtype at load.
                let loaded = if matches!(dtype.as_str(), "F16" | "BF16" | "F32" | "F64") {
                    elements * compute
                } else {
                    bytes
                };
                let share = match &split {
                    Some(s) if name.contains(".experts.") => expert_share(s),
                    Some(s) if name.contains(".self_attn.") && !name.ends_with("o_proj.bias") => {
                        heads_share(s)
                    }
                    _ => 1.0,
                };
                total += loaded as f64 * share;
            }
        }
        let kv_heads = match &split {
            Some(s) if s.split_heads => config.num_key_value_heads / s.ranks,
            _ => config.num_key_value_heads,
        } as u64;
        let heads = match &split {
            Some(s) if s.split_heads => config.num_attention_heads / s.ranks,
            _ => config.num_attention_heads,
        } as u64;
        Ok(Footprint {
            weights: total as u64,
            heads,
            kv_heads,
            compute,
            ranks,
            parallel: request.split.map(|(p, _)| p),
        })
    }

    /// The estimate for `request`, a request like the one read with but for
    /// its context, prompt and prefill step.
    fn at(&self, config: &Config, request: Request) -> Estimate {
        let step = request.prefill_step.max(1);
        let context = request.context.max(1);
        Estimate {
            weights: self.weights,
            kv_cache: kv_bytes(config, context, step, self.kv_heads, self.compute),
            working: working_bytes(
                config,
                context,
                step.min(request.prompt.unwrap_or(context)),
                self.heads,
                self.compute,
            ),
            context,
            ranks: self.ranks,
            parallel: self.parallel,
        }
    }
}

/// Keys and values of every layer: full layers grow in [`CACHE_STEP`]s to
/// the context; sliding layers hold their window, plus one prefill chunk
/// while it is appended.
fn kv_bytes(config: &Config, context: usize, step: usize, kv_heads: u64, dtype: u64) -> u64 {
    let per_position = 2 * kv_heads * config.head_dim as u64 * dtype;
    let window = config.sliding_window.max(1) as usize;
    config
        .layer_types()
        .iter()
        .map(|t| {
            let positions = match t {
                LayerType::FullAttention => context.div_ceil(CACHE_STEP) * CACHE_STEP,
                LayerType::SlidingAttention => context.min(window - 1 + step.min(context)),
            };
            positions as u64 * per_position
        })
        .sum()
}

/// The largest transient arrays of a prefill chunk of `step` tokens at the
/// end of the context: attention scores over every key (MLX's CPU attention
/// makes four such arrays: the scores, masked, with the sinks' column, and
/// their softmax; three to four are alive at the peak, depending on when
/// MLX's stream thread frees the first, so the estimate counts three and a
/// half — measured on the fixtures, where the peak varies by ±3% from run to
/// run and machine to machine), the experts' inputs
/// and activations per routed pair, the hidden states, and the last
/// position's logits and log-probabilities.
fn working_bytes(config: &Config, context: usize, step: usize, heads: u64, dtype: u64) -> u64 {
    let l = step.min(context) as u64;
    let keys = context as u64;
    let k = config.num_experts_per_tok.max(1) as u64;
    let hidden = config.hidden_size as u64;
    let scores = 7 * heads * l * keys * dtype / 2;
    let experts = l * k * (hidden + 3 * config.intermediate_size as u64) * dtype;
    let states = 6 * l * hidden * dtype;
    let logits = 2 * config.vocab_size as u64 * dtype;
    scores + experts + states + logits
}

/// What the device can give a model, and where that figure comes from.
#[derive(Debug, Clone)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

/// Metal: the GPU's recommended working set; CUDA: the device's memory as
/// MLX reports it; CPU: the memory the OS says is available now.
pub fn device_budget() -> Budget {
    let device = mlx::default_device();
    match device.backend {
        Backend::Metal => match mlx::device_info_number("max_recommended_working_set_size") {
            Some(bytes) => Budget {
                bytes: bytes as u64,
                source: "Metal's recommended working set".into(),
            },
            None => total_budget(&device),
        },
        Backend::Cuda => total_budget(&device),
        Backend::Cpu => match available_ram() {
            Some(bytes) => Budget {
                bytes,
                source: "available RAM".into(),
            },
            None => total_budget(&device),
        },
    }
}

fn total_budget(device: &mlx::Device) -> Budget {
    Budget {
        bytes: device.memory_bytes.unwrap_or(0) as u64,
        source: format!("{device} memory"),
    }
}

/// `MemAvailable` of /proc/meminfo (Linux); None elsewhere.
fn available_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a run that does not fit `budget`, saying what would: a shorter
/// context, more ranks, or a smaller model.
pub fn check(dir: &Path, config: &Config, request: Request, budget: &Budget) -> Result<Estimate> {
    let estimate = estimate(dir, config, request)?;
    if estimate.total() <= budget.bytes {
        return Ok(estimate);
    }
    let mut options = Vec::new();
    if let Some(context) = longest_context(dir, config, request, budget)? {
        options.push(format!("--context-length {context}"));
    }
    if let Some((parallel, ranks, per_rank)) = fewest_ranks(dir, config, request, budget) {
        options.push(format!(
            "{ranks} ranks with --parallel {parallel} ({} each)",
            human_bytes(per_rank)
        ));
    }
    options.push("a smaller model".into());
    Err(Error::DoesNotFit {
        needed: estimate.to_string(),
        available: format!("{} ({})", human_bytes(budget.bytes), budget.source),
        would_fit: options.join(", or "),
    })
}

/// The longest context that fits, when even a short one does.
pub fn longest_context(
    dir: &Path,
    config: &Config,
    request: Request,
    budget: &Budget,
) -> Result<Option<usize>> {
    let footprint = Footprint::read(dir, config, request)?;
    let fits = |context| footprint.at(config, Request { context, ..request }).total() <= budget.bytes;
    let (mut lo, mut hi) = (1usize, request.context);
    if !fits(lo) {
        return Ok(None);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}

/// The fewest ranks (up to 16) over which a split fits, expert parallel first.
fn fewest_ranks(
    dir: &Path,
    config: &Config,
    request: Request,
    budget: &Budget,
) -> Option<(Parallel, i32, u64)> {
    (2..=16).find_map(|ranks| {
        [Parallel::Expert, Parallel::Tensor]
            .into_iter()
            .find_map(|parallel| {
                let split = Some((parallel, ranks));
                let total = estimate(dir, config, Request { split, ..request }).ok()?.total();
                (total <= budget.bytes).then_some((parallel, ranks, total))
            })
    })
}
