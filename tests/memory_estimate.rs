//! The memory guardrail: `safeguard estimate` against the peak memory MLX
//! measures while `generate` runs the same context, and the refusal and
//! `--force` paths under a small budget given by option.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn safeguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .output()
        .unwrap()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The fixture's 413-token prompt, as comma-separated ids.
fn long_prompt(model: &Path) -> (String, usize) {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("reference/reference.json")).unwrap())
            .unwrap();
    let ids: Vec<String> = reference["prompts"]["long"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    (ids.join(","), ids.len())
}

#[test]
fn the_estimate_is_within_ten_percent_of_the_measured_peak() {
    // Every fixture layout: dense, MXFP4, affine 4 and 8 bits, the original
    // release layout (raw and converted), and the three model shapes.
    for fixture in [
        "a-bf16",
        "a-mxfp4",
        "a-q4",
        "a-q8",
        "a-original",
        "a-original-mlx",
        "b-bf16",
        "b-mxfp4",
        "b-q4",
        "b-q8",
        "c-bf16",
    ] {
        let model = common::fixture(fixture);
        let dir = model.to_str().unwrap();
        let (prompt, len) = long_prompt(&model);
        let max_tokens = 16;
        for step in ["2048", "64"] {
            let run = json(&safeguard(&[
                "generate",
                "-m",
                dir,
                "--prompt-tokens",
                &prompt,
                "--max-tokens",
                &max_tokens.to_string(),
                "--prefill-step",
                step,
                "--json",
            ]));
            let measured = run["timings"]["peak_memory_bytes"].as_f64().unwrap();
            let context = (len + max_tokens).to_string();
            let estimate = json(&safeguard(&[
                "estimate",
                "-m",
                dir,
                "--context-length",
                &context,
                "--prefill-step",
                step,
                "--json",
            ]));
            let estimated = estimate["total_bytes"].as_f64().unwrap();
            let error = (estimated - measured) / measured;
            assert!(
                error.abs() <= 0.10,
                "{fixture}, prefill step {step}: estimated {estimated} bytes, measured peak {measured} ({:+.1}%)",
                error * 100.0
            );
        }
    }
}

#[test]
fn a_split_estimate_is_per_rank() {
    let model = common::fixture("a-mxfp4");
    let dir = model.to_str().unwrap();
    let whole = json(&safeguard(&["estimate", "-m", dir, "--json"]));
    let split = json(&safeguard(&[
        "estimate",
        "-m",
        dir,
        "--json",
        "--ranks",
        "2",
        "--parallel",
        "tensor",
    ]));
    assert_eq!(split["ranks"], 2);
    let (w, s) = (
        whole["weights_bytes"].as_f64().unwrap(),
        split["weights_bytes"].as_f64().unwrap(),
    );
    assert!(
        s < w && s > w / 2.0,
        "a rank holds the replicated part and half of the rest: {s} of {w}"
    );
    assert_eq!(
        split["kv_cache_bytes"].as_f64().unwrap() * 2.0,
        whole["kv_cache_bytes"].as_f64().unwrap(),
        "each rank caches half of the kv heads"
    );
    let refused = safeguard(&["estimate", "-m", dir, "--ranks", "3", "--parallel", "tensor"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("it works with 2 ranks"));
}

#[test]
fn a_model_over_budget_is_refused_unless_forced() {
    let model = common::fixture("a-bf16");
    let dir = model.to_str().unwrap();
    let total = |extra: &[&str]| {
        let mut args = vec!["estimate", "-m", dir, "--context-length", "4", "--json"];
        args.extend(extra);
        json(&safeguard(&args))["total_bytes"].as_u64().unwrap()
    };
    // Between what one rank of two needs and what the whole model needs.
    let budget = (total(&[]) + total(&["--ranks", "2", "--parallel", "expert"])) / 2;
    let budget = format!("{budget}B");
    let args = [
        "generate",
        "-m",
        dir,
        "--prompt-tokens",
        "200006,3460",
        "--max-tokens",
        "2",
        "--memory-budget",
        &budget,
    ];
    let refused = safeguard(&args);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    for part in [
        "the model does not fit: it needs about",
        "(weights 217.0 MB + KV cache",
        "(--memory-budget) is free",
        "what would fit: 2 ranks with --parallel expert",
        "a smaller model",
        "--force loads it anyway",
    ] {
        assert!(err.contains(part), "missing {part:?} in: {err}");
    }
    let mut forced = args.to_vec();
    forced.push("--force");
    let output = safeguard(&forced);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A context too long for the budget, with room for a shorter one.
    let out = json(&safeguard(&[
        "estimate",
        "-m",
        dir,
        "--context-length",
        "100000",
        "--memory-budget",
        "300MB",
        "--json",
    ]));
    assert_eq!(out["fits"], false);
    let advice = out["advice"].as_str().unwrap();
    let context: usize = advice
        .split("--context-length ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no shorter context offered: {advice}"));
    let shorter = json(&safeguard(&[
        "estimate",
        "-m",
        dir,
        "--context-length",
        &context.to_string(),
        "--memory-budget",
        "300MB",
        "--json",
    ]));
    assert_eq!(shorter["fits"], true, "the context offered must fit: {context}");
}

#[test]
fn ls_says_whether_each_catalog_model_fits() {
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["ls", "--json"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let listing = json(&output);
    let available = listing["available_bytes"].as_u64().unwrap();
    assert!(available > 0);
    for model in listing["models"].as_array().unwrap() {
        // Not downloaded: judged by the catalog's size.
        let size = model["estimated_size_bytes"].as_u64().unwrap();
        assert_eq!(model["fits"], size <= available, "{model}");
        assert_eq!(model["needed_bytes"], size);
    }
}

/// Every command that loads a model goes through the guardrail: under a
/// budget far below the model, classify, eval and serve refuse before
/// loading, saying what is needed and what is free; `--force` loads anyway.
#[test]
fn classify_eval_and_serve_refuse_over_budget_unless_forced() {
    let model = common::fixture("a-bf16");
    let dir = model.to_str().unwrap();
    let small = ["--memory-budget", "1MB"];
    let run = |command| vec![command, "-m", dir, "--policy", "spam", "--max-tokens", "2"];
    let mut commands = [
        run("classify"),
        run("eval"),
        vec!["serve", "-m", dir, "--port", "0"],
    ];
    commands[0].push("hello");
    commands[1].push("--no-cache");
    commands[2].extend(["--context-length", "64"]);
    for command in &commands {
        let mut args = command.clone();
        args.extend(small);
        // A serve that skipped the guardrail would run until killed.
        let child = Command::new(env!("CARGO_BIN_EXE_safeguard"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let refused = common::ranks::wait(child, deadline, command[0]);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{}: {}",
            command[0],
            String::from_utf8_lossy(&refused.stderr)
        );
        let err = String::from_utf8_lossy(&refused.stderr);
        for part in [
            "the model does not fit: it needs about",
            "(weights 217.0 MB + KV cache",
            "1.0 MB (--memory-budget) is free",
            "--force loads it anyway",
        ] {
            assert!(err.contains(part), "{}: missing {part:?} in: {err}", command[0]);
        }
    }
    for command in &commands[..2] {
        let mut args = command.clone();
        args.extend(small);
        args.push("--force");
        let output = safeguard(&args);
        assert!(
            output.status.success(),
            "{} --force: {}",
            command[0],
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut args = commands[2].clone();
    args.extend(small);
    args.push("--force");
    let (mut server, seen, address) = start_serve(&args);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        address.is_some(),
        "serve --force did not come up: {}",
        seen.join("\n")
    );
}

/// `safeguard serve ARGS`: the process, its stderr lines up to the one that
/// says where it serves, and that address (None if it ended first).
fn start_serve(args: &[&str]) -> (std::process::Child, Vec<String>, Option<String>) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stderr.take().unwrap()));
    let mut seen = Vec::new();
    while let Some(line) = lines.next() {
        let line = line.unwrap();
        if let Some(rest) = line.split("serving on http://").nth(1) {
            let address = rest.split('/').next().unwrap().to_string();
            // Read on: a server whose stderr is closed fails its next log line.
            std::thread::spawn(move || lines.for_each(drop));
            return (server, seen, Some(address));
        }
        seen.push(line);
    }
    (server, seen, None)
}

/// Without --context-length, serve budgets for the model's whole context
/// where it fits; where it does not, it serves the longest context that
/// does (the one `estimate` calls the limit), says so, and reports it.
#[test]
fn serve_without_a_context_length_serves_the_longest_that_fits() {
    let model = common::fixture("a-bf16");
    let dir = model.to_str().unwrap();
    let budget = ["--memory-budget", "300MB"];
    let (mut server, seen, address) =
        start_serve(&[&["serve", "-m", dir, "--port", "0"][..], &budget].concat());
    let Some(address) = address else {
        panic!("serve did not come up: {}", seen.join("\n"));
    };
    let body = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET /api/v0/models HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.split("\r\n\r\n").nth(1).unwrap().to_string()
    };
    server.kill().unwrap();
    server.wait().unwrap();
    let said = seen
        .iter()
        .find_map(|line| line.split("serving a context of ").nth(1))
        .unwrap_or_else(|| panic!("no context announced: {}", seen.join("\n")));
    let context: usize = said.split(' ').next().unwrap().parse().unwrap();
    assert!(said.contains("300.0 MB (--memory-budget)"), "{said}");
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["loaded_context_length"], context, "{models}");
    let fits = |context: usize| {
        let context = context.to_string();
        json(&safeguard(
            &[
                &["estimate", "-m", dir, "--context-length", &context][..],
                // serve prefills in steps of 128 on the CPU, which sizes its buffers.
                &["--prefill-step", "128", "--json"],
                &budget,
            ]
            .concat(),
        ))["fits"]
            .as_bool()
            .unwrap()
    };
    let full = common::config(&model)["max_position_embeddings"]
        .as_u64()
        .unwrap() as usize;
    assert!(context < full);
    assert!(fits(context), "{context} tokens should fit");
    assert!(!fits(context + 1), "{} tokens should not fit", context + 1);
}
