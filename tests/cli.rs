//! The `safeguard` binary as a user runs it.

mod common;

use std::process::Command;

fn safeguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_names_crate_mlx_and_device() {
    let output = safeguard(&["--version"]);
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    // MLX's version and device as MLX's own Python package reports them.
    let reference = Command::new(common::python())
        .args([
            "-c",
            "import mlx.core as mx; d = mx.default_device().type; \
             gpu = 'Metal' if mx.metal.is_available() else 'CUDA'; \
             print(mx.__version__, gpu if d == mx.gpu else 'CPU')",
        ])
        .output()
        .unwrap();
    let reference = String::from_utf8(reference.stdout).unwrap();
    let (mlx_version, backend) = reference.trim().split_once(' ').unwrap();
    let expected_start = format!(
        "safeguard {} (MLX {mlx_version}, device: {backend}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        line.starts_with(&expected_start),
        "{line:?} should start with {expected_start:?}"
    );
    assert!(line.trim_end().ends_with(')'), "{line:?}");
}

#[test]
fn no_arguments_prints_usage_and_fails() {
    let output = safeguard(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Usage: safeguard"));
}

#[test]
fn unknown_options_are_usage_errors() {
    let output = safeguard(&["--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));
}
