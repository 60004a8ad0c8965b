//! One model across several processes (ranks) with MLX's collectives: how
//! the model is split ([`Split`]), and loading this rank's part of it.
//!
//! Ranks are started by MLX's launcher (`mlx.launch`) or by hand with
//! `MLX_RANK` and `MLX_HOSTFILE`; every rank runs the same command. All ranks
//! hold the same replicated state (embedding, router, lm_head) and compute the
//! same logits after each step's sums, so each samples the same tokens without
//! any other exchange; rank 0 prints.

pub mod data;
pub mod memory;
pub mod serve;
mod split;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

pub use split::Split;

use crate::mlx::distributed::{Backend, Group};
use crate::mlx::{self};
use crate::model::{self, Config, GptOss, LoadOptions, Shard, Weights};

/// How a model is divided among ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// mlx-lm's tensor parallel: heads and each expert's intermediate dimension.
    Tensor,
    /// Whole experts per rank, attention split by heads.
    Expert,
}

impl FromStr for Parallel {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Parallel, String> {
        match s {
            "tensor" => Ok(Parallel::Tensor),
            "expert" => Ok(Parallel::Expert),
            other => Err(format!(
                "unknown --parallel {other:?} (expected tensor or expert)"
            )),
        }
    }
}

/// What `--parallel` asks for: the model split across the ranks, or whole
/// models on every rank sharing the items (`classify`, `eval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Split(Parallel),
    Data,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "data" => Ok(Mode::Data),
            other => other
                .parse()
                .map(Mode::Split)
                .map_err(|_| format!("unknown --parallel {other:?} (expected tensor, expert or data)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot split the model across {ranks} ranks with --parallel {parallel}: {tensor}: {why}; \
         {working}"
    )]
    Split {
        parallel: Parallel,
        ranks: i32,
        tensor: String,
        why: String,
        working: String,
    },
    #[error(
        "the model does not fit: it needs about {needed}, and {available} is free; what would fit: \
         {would_fit}; --force loads it anyway"
    )]
    DoesNotFit {
        needed: String,
        available: String,
        would_fit: String,
    },
    #[error(transparent)]
    Model(#[from] model::Error),
    #[error(transparent)]
    Mlx(#[from] mlx::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// This process's place in a split run.
pub struct Rank {
    pub group: Group,
    pub split: Split,
}

impl Rank {
    pub fn index(&self) -> i32 {
        self.group.rank()
    }

    /// Rank 0 speaks for the job (prints results, writes files).
    pub fn is_leader(&self) -> bool {
        self.index() == 0
    }
}

/// Joins the ranks MLX launched and loads this rank's part of the model in
/// `dir`. Every rank checks the split before reading any tensor data, so an
/// impossible split fails everywhere at once with the same message.
/// `guard`: refuse (on every rank) when this rank's part does not fit.
pub fn load(
    dir: &Path,
    options: LoadOptions,
    parallel: Parallel,
    backend: Backend,
    peer_timeout: Duration,
    guard: Option<(memory::Request, memory::Budget)>,
) -> Result<(GptOss, Rank)> {
    let group = Group::init(backend, peer_timeout)?;
    let config = Config::load(dir)?;
    if let Some((request, budget)) = guard {
        let split = Some((parallel, group.size()));
        memory::check(dir, &config, memory::Request { split, ..request }, &budget)?;
    }
    let mut weights = Weights::open(dir, options)?;
    if weights.contains_original_layout() {
        weights.sanitize_original_layout()?;
    }
    let split = Split::plan(&config, &weights, parallel, group.size())?;
    let rank = group.rank();
    split.apply(&mut weights, rank)?;
    let shard = Shard {
        group: group.clone(),
        split_heads: split.split_heads,
        split_intermediate: split.split_intermediate,
        experts: split.experts(rank),
    };
    let model = GptOss::assemble(config, weights, Some(&shard))?;
    Ok((model, Rank { group, split }))
}

/// The element-wise sum of every rank's `values`; with zeros from all but
/// rank 0, its broadcast.
fn sum<T: mlx::Element>(group: &Group, values: &[T]) -> mlx::Result<Vec<T>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let x = mlx::Array::from_slice(values, &[values.len() as i32])?;
    let sum = group.all_sum(&x)?;
    sum.eval()?;
    sum.to_vec()
}

/// The collectives one decode token of `model` runs on this rank, replayed
/// alone `tokens` times: the all-sums of a `[1, 1, hidden]` activation after
/// every split attention and expert block, chained as in the forward.
/// Returns the seconds per token spent in them.
pub fn time_collectives(model: &GptOss, rank: &Rank, tokens: usize) -> Result<f64> {
    let per_layer = i32::from(rank.split.split_heads) + 1;
    let sums = model.config.num_hidden_layers as i32 * per_layer;
    let x = mlx::Array::zeros(&[1, 1, model.config.hidden_size], model.dtype())?;
    // One round first: connections and buffers warm up outside the timing.
    rank.group.all_sum(&x)?.eval()?;
    rank.group.barrier()?;
    let start = std::time::Instant::now();
    for _ in 0..tokens.max(1) {
        let mut y = x.clone();
        for _ in 0..sums {
            y = rank.group.all_sum(&y)?;
        }
        y.eval()?;
    }
    Ok(start.elapsed().as_secs_f64() / tokens.max(1) as f64)
}

/// Ends the process when no step completes within `limit`: a peer that
/// stops answering without closing its connections (paused, or cut off by
/// the network) would otherwise block a collective forever. Dropping it
/// stops it.
pub struct Watchdog {
    start: std::time::Instant,
    last_beat_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Watchdog {
    pub fn start(limit: Duration, rank: i32) -> Watchdog {
        use std::sync::atomic::Ordering;
        let start = std::time::Instant::now();
        let last_beat_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let beats = last_beat_ms.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if std::sync::Arc::strong_count(&beats) == 1 {
                return;
            }
            let idle = start
                .elapsed()
                .saturating_sub(Duration::from_millis(beats.load(Ordering::Relaxed)));
            if idle > limit {
                eprintln!(
                    "error: rank {rank}: no step finished in {} s; a peer stopped answering (paused, or \
                     unreachable); exiting (--step-timeout sets the limit)",
                    limit.as_secs()
                );
                std::process::exit(1);
            }
        });
        Watchdog { start, last_beat_ms }
    }

    /// A step finished.
    pub fn beat(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, std::sync::atomic::Ordering::Relaxed);
    }
}
