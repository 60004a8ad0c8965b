use std::process::ExitCode;

fn main() -> ExitCode {
    safeguard_mlx::cli::main()
}
