//! The `safeguard` command line: one file per subcommand.

mod bench;
mod classify;
mod data;
mod estimate;
mod eval;
mod generate;
mod ls;
mod policies;
mod pull;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::distributed::{self, Mode, Rank};
use crate::hub::{self, HubConfig, HubError};
use crate::kernels::CpuKernels;
use crate::mlx;
use crate::mlx::distributed::{Backend, Group};
use crate::model::{ComputeDtype, GptOss, LoadOptions};

/// Run OpenAI's gpt-oss-safeguard policy classifiers locally on MLX.
#[derive(Debug, Parser)]
#[command(name = "safeguard", arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Bench(bench::Args),
    Classify(classify::Args),
    Estimate(estimate::Args),
    Eval(Box<eval::Args>),
    Generate(generate::Args),
    Policies(policies::Args),
    Pull(pull::Args),
    Serve(serve::Args),
    Ls(ls::Args),
}

/// How the engine runs a model; the same options for every command that does.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Compute dtype: auto (float32 on CPU, the model's on GPU), float32, bfloat16, float16.
    #[arg(long, default_value = "auto", value_parser = clap::builder::ValueParser::new(str::parse::<ComputeDtype>))]
    dtype: ComputeDtype,
    /// Prompt tokens per prefill step (default 2048 as mlx-lm; `serve`: 128 on
    /// the CPU, 512 on a GPU, the most a new prompt delays the streams in
    /// flight by per step).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    prefill_step: Option<u64>,
    /// Quantized matmuls on the CPU: exact (ours, float32 activations, equal to
    /// MLX's to rounding), fast (ours, int8 activations as llama.cpp) or mlx
    /// (MLX's own kernels, for comparison).
    #[arg(long, env = "SAFEGUARD_CPU_KERNELS", default_value = "exact", value_parser = clap::builder::ValueParser::new(str::parse::<CpuKernels>))]
    cpu_kernels: CpuKernels,
}

/// mlx-lm's prefill chunk: one-shot commands keep its numerics.
const PREFILL_STEP: usize = 2048;

impl EngineArgs {
    /// `--prefill-step`, else mlx-lm's.
    fn prefill_step(&self) -> usize {
        self.prefill_step.map_or(PREFILL_STEP, |n| n as usize)
    }

    /// These options with `step` as the prefill step unless one was given:
    /// for a command whose own default differs (serve), so that the memory
    /// estimate and the engine use the same step.
    fn with_default_prefill_step(self, step: usize) -> Self {
        EngineArgs {
            prefill_step: self.prefill_step.or(Some(step as u64)),
            ..self
        }
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            compute: self.dtype,
            cpu_kernels: self.cpu_kernels,
        }
    }

    /// What the memory estimate needs to know of a run with these options.
    fn memory_request(
        &self,
        context: usize,
        prompt: Option<usize>,
        split: Option<(distributed::Parallel, i32)>,
    ) -> distributed::memory::Request {
        distributed::memory::Request {
            context,
            prompt,
            prefill_step: self.prefill_step(),
            load: self.load_options(),
            split,
        }
    }
}

/// Running one model split across processes that MLX launched (`mlx.launch`,
/// or `MLX_RANK` + `MLX_HOSTFILE` set per process).
#[derive(Debug, clap::Args)]
pub struct DistributedArgs {
    /// Split the model across the launched ranks: tensor (heads and each
    /// expert's intermediate dimension, as mlx-lm) or expert (whole experts
    /// per rank, attention by heads); or, for classify and eval, data (the
    /// whole model on every rank, the items shared among them).
    #[arg(long, value_parser = clap::builder::ValueParser::new(str::parse::<Mode>))]
    parallel: Option<Mode>,
    /// MLX's communication backend for --parallel: any, ring, mpi, jaccl or nccl.
    #[arg(long, default_value = "any", requires = "parallel", value_parser = clap::builder::ValueParser::new(str::parse::<Backend>))]
    backend: Backend,
    /// Seconds to wait for every rank to join before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "parallel")]
    peer_timeout: u64,
    /// Seconds one generation step (the whole prefill included) may take
    /// before a rank gives up on its peers and exits; under --parallel data,
    /// one item, or the wait for a neighbour's round of them.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "parallel")]
    step_timeout: u64,
}

impl DistributedArgs {
    /// Under --parallel, a watchdog for `rank` that [`distributed::Watchdog::beat`]s reset.
    pub(crate) fn watchdog(&self, rank: Option<&Rank>) -> Option<distributed::Watchdog> {
        rank.map(|r| distributed::Watchdog::start(self.step_timeout(), r.index()))
    }

    /// `--step-timeout`.
    pub(crate) fn step_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.step_timeout)
    }

    /// Under --parallel data, joins the launched ranks; commands that share
    /// items (classify, eval) call this instead of splitting the model.
    pub(crate) fn join_data(&self) -> anyhow::Result<Option<Group>> {
        match self.parallel {
            None => Ok(None),
            Some(Mode::Data) => {
                let timeout = std::time::Duration::from_secs(self.peer_timeout);
                let group = Group::init(self.backend, timeout).map_err(|e| UsageError(e.into()))?;
                Ok(Some(group))
            }
            Some(Mode::Split(parallel)) => Err(UsageError(anyhow::anyhow!(
                "--parallel {parallel} splits one model for generate, bench and serve; classify and eval \
                 share their items among whole models instead: use --parallel data"
            ))
            .into()),
        }
    }
}

/// The memory guardrail: checked before a model is loaded.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Tokens of context to budget the KV cache for (default: what the
    /// command needs, e.g. the prompt plus --max-tokens).
    #[arg(long, value_name = "N")]
    context_length: Option<usize>,
    #[command(flatten)]
    guard: GuardArgs,
}

/// Whether and against what the memory estimate is checked (`serve` has a
/// `--context-length` of its own, so it takes these alone).
#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// Load even when the estimate exceeds the memory the device gives.
    #[arg(long)]
    force: bool,
    /// The memory to fit in, instead of what the device reports (e.g. 16GB,
    /// 800MB): to plan for another machine, or keep headroom.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_budget: Option<u64>,
}

impl GuardArgs {
    fn budget(&self) -> distributed::memory::Budget {
        match self.memory_budget {
            Some(bytes) => distributed::memory::Budget {
                bytes,
                source: "--memory-budget".into(),
            },
            None => distributed::memory::device_budget(),
        }
    }
}

/// `800MB`, `16GB`, `1.5G`, `2TiB` or plain bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 800MB, 16GB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, kB, MB, GB, TB or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    Ok((value * scale) as u64)
}

/// The memory a run of the model in `dir` needs, checked against the
/// budget unless --force: the one guardrail of every command that loads a
/// model. `split`: this rank's part only.
pub(crate) fn check_memory(
    dir: &std::path::Path,
    engine: &EngineArgs,
    guard: &GuardArgs,
    context: usize,
    prompt: Option<usize>,
    split: Option<(distributed::Parallel, i32)>,
) -> anyhow::Result<()> {
    if guard.force {
        return Ok(());
    }
    let request = engine.memory_request(context.max(1), prompt, split);
    let config = crate::model::Config::load(dir).map_err(|e| UsageError(e.into()))?;
    distributed::memory::check(dir, &config, request, &guard.budget()).map_err(|e| UsageError(e.into()))?;
    Ok(())
}

/// Loads the whole model in `dir` after the guardrail: a `prompt` and
/// `generated` tokens must fit (or --context-length, when given).
pub(crate) fn load_whole(
    dir: &std::path::Path,
    engine: &EngineArgs,
    memory: &MemoryArgs,
    prompt: usize,
    generated: usize,
) -> anyhow::Result<GptOss> {
    let context = memory.context_length.unwrap_or(prompt + generated);
    check_memory(dir, engine, &memory.guard, context, Some(prompt), None)?;
    Ok(GptOss::load(dir, engine.load_options()).map_err(|e| UsageError(e.into()))?)
}

/// Loads the model in `dir` whole, or this rank's part of it under
/// --parallel (each rank then prints its share on stderr), after checking
/// that a `prompt` and `generated` tokens fit unless --force.
pub(crate) fn load_model(
    dir: &std::path::Path,
    engine: &EngineArgs,
    dist: &DistributedArgs,
    memory: &MemoryArgs,
    prompt: usize,
    generated: usize,
) -> anyhow::Result<(GptOss, Option<Rank>)> {
    let parallel = match dist.parallel {
        None => {
            if std::env::var_os("MLX_RANK").is_some() {
                tracing::warn!(
                    "MLX_RANK is set but --parallel is not: this process runs the whole model on its own \
                     (add --parallel tensor or expert to split it across the ranks)"
                );
            }
            return Ok((load_whole(dir, engine, memory, prompt, generated)?, None));
        }
        Some(Mode::Data) => {
            return Err(UsageError(anyhow::anyhow!(
                "--parallel data shares the items of classify and eval among the ranks; this command runs \
                 one prompt: split the model with --parallel tensor or expert"
            ))
            .into())
        }
        Some(Mode::Split(parallel)) => parallel,
    };
    let context = memory.context_length.unwrap_or(prompt + generated);
    let request = engine.memory_request(context, Some(prompt), None);
    let guard = (!memory.guard.force).then(|| (request, memory.guard.budget()));
    let (model, rank) = distributed::load(
        dir,
        engine.load_options(),
        parallel,
        dist.backend,
        std::time::Duration::from_secs(dist.peer_timeout),
        guard,
    )
    .map_err(|e| UsageError(e.into()))?;
    announce(&rank, &model);
    Ok((model, Some(rank)))
}

/// Prints this rank's share of a split model, once it is loaded.
fn announce(rank: &Rank, model: &GptOss) {
    eprintln!(
        "[{}; {:.1} MB of weights]",
        rank.split
            .describe(rank.index(), model.computes_only_own_experts()),
        mlx::memory::active() as f64 / 1e6
    );
}

/// An error in what the user asked for (exit code 2), as opposed to a failure
/// while doing it (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(#[from] pub anyhow::Error);

/// A hub error for the CLI: a bad name, missing access or offline use is the
/// user's to fix (exit code 2); network, disk and integrity failures are not.
pub(crate) fn hub_error(e: HubError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.into()).into()
    } else {
        e.into()
    }
}

/// The folder of the model `-m` names: a local folder, a catalog alias or a hub
/// repo id (pulled into the cache first unless HF_HUB_OFFLINE is set).
pub(crate) fn resolve_model(model: &str) -> anyhow::Result<PathBuf> {
    hub::resolve(model, &HubConfig::from_env()).map_err(hub_error)
}

/// What `--version` prints after the program name: the crate, the MLX library
/// it is linked against, and the device MLX will run on.
fn version_line() -> String {
    format!(
        "{} (MLX {}, device: {})",
        env!("CARGO_PKG_VERSION"),
        mlx::version(),
        mlx::default_device()
    )
}

/// Logs on stderr; `RUST_LOG` filters them (default: `level`).
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

pub fn main() -> ExitCode {
    let command = Cli::command().version(version_line());
    let matches = command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The server logs its requests; other commands only what needs a look.
    init_logging(if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Estimate(args) => estimate::run(args),
        Command::Eval(args) => eval::run(*args),
        Command::Generate(args) => generate::run(args),
        Command::Policies(args) => policies::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Ls(args) => ls::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<classify::ViolationFound>().is_some()
                || e.downcast_ref::<eval::GateFailed>().is_some()
                || e.downcast_ref::<policies::LintFailed>().is_some() =>
        {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
