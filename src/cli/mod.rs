//! The `safeguard` command line: one file per subcommand.

mod generate;
mod policies;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::mlx;

/// Run OpenAI's gpt-oss-safeguard policy classifiers locally on MLX.
#[derive(Debug, Parser)]
#[command(name = "safeguard", arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Generate(generate::Args),
    Policies(policies::Args),
}

/// An error in what the user asked for (exit code 2), as opposed to a failure
/// while doing it (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(#[from] pub anyhow::Error);

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

pub fn main() -> ExitCode {
    let command = Cli::command().version(version_line());
    let matches = command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Policies(args) => policies::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
