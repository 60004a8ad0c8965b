//! The `safeguard` command line. Each subcommand gets its own file here as it
//! becomes real; none exists yet.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::mlx;

/// Run OpenAI's gpt-oss-safeguard policy classifiers locally on MLX.
#[derive(Debug, Parser)]
#[command(name = "safeguard", arg_required_else_help = true)]
pub struct Cli {}

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
    match Cli::from_arg_matches(&matches) {
        Ok(Cli {}) => ExitCode::SUCCESS,
        Err(e) => e.exit(),
    }
}
