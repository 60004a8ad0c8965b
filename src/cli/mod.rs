//! The `safeguard` command line: one file per subcommand.

mod bench;
mod classify;
mod eval;
mod generate;
mod ls;
mod policies;
mod pull;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::hub::{self, HubConfig, HubError};
use crate::kernels::CpuKernels;
use crate::mlx;
use crate::model::{ComputeDtype, LoadOptions};

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
    /// Prompt tokens per prefill step (default 2048 as mlx-lm; `serve`: 512,
    /// the most a new prompt delays the streams in flight by per step).
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
    /// `--prefill-step`, else `default`.
    fn prefill_step_or(&self, default: usize) -> usize {
        self.prefill_step.map_or(default, |n| n as usize)
    }

    fn prefill_step(&self) -> usize {
        self.prefill_step_or(PREFILL_STEP)
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            compute: self.dtype,
            cpu_kernels: self.cpu_kernels,
        }
    }
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
