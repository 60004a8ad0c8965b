//! The policy playground of `safeguard serve` (issue 16) and the HTML report
//! of `safeguard eval --report` (issue 13), checked by tests/web_playground.py:
//! its API over HTTP, and the page and the report in Debian's chromium
//! driven by Playwright, on the scripted fixtures whose answers are known.
//! Screenshots of every view land in target/web-artifacts.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The browser: Debian's chromium unless SAFEGUARD_CHROMIUM names another.
fn chromium() -> PathBuf {
    std::env::var_os("SAFEGUARD_CHROMIUM")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn run(group: &str) {
    // Both fixtures must be there; `fixture` says how to make them.
    common::fixture("scripted");
    common::fixture("scripted-reasoning");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(common::python())
        .arg(root.join("tests/web_playground.py"))
        .arg(group)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_safeguard"))
        .arg("--fixtures")
        .arg(root.join("target/fixtures"))
        .arg("--out")
        .arg(root.join("target/web-artifacts"))
        .arg("--chromium")
        .arg(chromium())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tests/web_playground.py {group} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("all checks passed"),
        "tests/web_playground.py {group} ended without its last check:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_playground_api_matches_eval_and_lint() {
    run("api");
}

#[test]
fn the_page_and_the_eval_report_work_in_chromium() {
    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "{} is missing: the browser tests need chromium; run `make setup` (on Linux it \
         installs Debian's with apt-get), or set SAFEGUARD_CHROMIUM to a Chromium binary",
        chromium.display()
    );
    run("browser");
}
