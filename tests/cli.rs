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

fn reference_run(model: &str, id: &str) -> (Vec<u64>, Vec<u64>) {
    let dir = common::fixture(model);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/reference.json")).unwrap())
            .unwrap();
    let run = reference["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap();
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    };
    (
        ids(&reference["prompts"][run["prompt"].as_str().unwrap()]),
        ids(&run["tokens"]),
    )
}

fn join(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn generate_json_returns_mlx_lm_greedy_tokens() {
    let (prompt, expected) = reference_run("a-mxfp4", "short.float32");
    let dir = common::fixture("a-mxfp4");
    let output = safeguard(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--prompt-tokens",
        &join(&prompt),
        "--temp",
        "0",
        "--max-tokens",
        "128",
        "--dtype",
        "float32",
        "--logprobs",
        "3",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tokens: Vec<u64> = out["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(tokens, expected);
    assert_eq!(out["finish_reason"], "length");
    assert_eq!(out["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(out["usage"]["completion_tokens"], 128);
    for key in [
        "prefill_tokens_per_sec",
        "decode_tokens_per_sec",
        "time_to_first_token_ms",
        "peak_memory_bytes",
    ] {
        assert!(out["timings"][key].as_f64().unwrap() > 0.0, "timings.{key}");
    }
    let logprobs = out["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 128);
    for (step, token) in logprobs.iter().zip(&tokens) {
        let top = step["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely, with that logprob.
        assert_eq!(step["token"].as_u64().unwrap(), *token);
        assert_eq!(top[0][0].as_u64().unwrap(), *token);
        assert_eq!(top[0][1], step["logprob"]);
        let values: Vec<f64> = top.iter().map(|t| t[1].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "best first: {values:?}");
    }
}

#[test]
fn generation_stops_on_the_configured_eos_ids() {
    let (prompt, expected) = reference_run("a-mxfp4", "short.float32");
    let dir = common::model_copy("a-mxfp4");
    // Declare the fifth greedy token an end-of-sequence id.
    common::edit_json(dir.path(), "generation_config.json", |g| {
        g["eos_token_id"] = expected[4].into()
    });
    let output = safeguard(&[
        "generate",
        "-m",
        dir.path().to_str().unwrap(),
        "--prompt-tokens",
        &join(&prompt),
        "--max-tokens",
        "64",
        "--dtype",
        "float32",
        "--json",
    ]);
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tokens: Vec<u64> = out["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let first_stop = expected.iter().position(|&t| t == expected[4]).unwrap();
    assert_eq!(tokens, expected[..=first_stop]);
    assert_eq!(out["finish_reason"], "stop");
}

#[test]
fn raw_text_prompts_are_tokenized_as_plain_text() {
    let dir = common::fixture("a-mxfp4");
    let text = "Is this <|end|> spam?";
    let output = safeguard(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--prompt",
        text,
        "--raw",
        "--max-tokens",
        "3",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = tiktoken_rs::o200k_harmony_singleton().encode_ordinary(text).len();
    assert_eq!(out["usage"]["prompt_tokens"], expected);

    // Streaming text mode prints to stdout and statistics to stderr.
    let output = safeguard(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--prompt",
        text,
        "--raw",
        "--max-tokens",
        "5",
    ]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("5 generated"));
}

#[test]
fn bad_prompts_are_usage_errors() {
    let dir = common::fixture("a-mxfp4");
    let model = dir.to_str().unwrap();
    for args in [
        vec!["generate", "-m", model, "--prompt-tokens", "1,999999"],
        vec!["generate", "-m", model, "--prompt-tokens", "1,x"],
        vec!["generate", "-m", model, "--prompt", "hi", "--effort", "extreme"],
        vec![
            "generate", "-m", model, "--prompt", "hi", "--raw", "--effort", "low",
        ],
        vec![
            "generate",
            "-m",
            model,
            "--prompt-tokens",
            "1",
            "--developer",
            "policy",
        ],
        vec!["generate", "-m", model],
        vec!["generate", "-m", model, "--prompt-tokens", "1", "--dtype", "int8"],
    ] {
        let output = safeguard(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn policies_lists_and_prints_the_shipped_policies() {
    let output = safeguard(&["policies"]);
    assert!(output.status.success());
    let listing = String::from_utf8(output.stdout).unwrap();
    for name in [
        "spam",
        "hate-harassment",
        "self-harm",
        "violent-threats",
        "pii",
        "prompt-injection",
    ] {
        assert!(listing.lines().any(|l| l.starts_with(name)), "{name} listed");
    }
    let output = safeguard(&["policies", "spam"]);
    assert!(output.status.success());
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/spam.md")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), file.trim());
    assert_eq!(safeguard(&["policies", "no-such"]).status.code(), Some(2));
}

/// The harmony prompt openai-harmony renders for a chat of one user message.
fn harmony_prompt(identity: &str, effort: &str, instructions: &str, prompt: &str) -> Vec<u64> {
    let conversation = serde_json::json!({
        "system": {"identity": identity, "knowledge_cutoff": "2024-06", "date": null, "effort": effort},
        "instructions": instructions,
        "messages": [{"role": "user", "content": prompt}],
    });
    let answer = common::harmony(serde_json::json!({ "render": [conversation] }));
    serde_json::from_value(answer["render"][0].clone()).unwrap()
}

#[test]
fn chat_prompts_are_rendered_as_harmony_and_parsed() {
    let dir = common::fixture("a-mxfp4");
    let model = dir.to_str().unwrap();
    let identity = "You are a strict content moderator.";
    let policy = "# Spam\n\nAnswer 1 for spam, else 0. <|end|> stays text.";
    let prompt = "Win a free phone! Click here.";
    for effort in ["low", "medium", "high"] {
        let output = safeguard(&[
            "generate",
            "-m",
            model,
            "--prompt",
            prompt,
            "--system",
            identity,
            "--developer",
            policy,
            "--effort",
            effort,
            "--max-tokens",
            "12",
            "--json",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let expected = harmony_prompt(identity, effort, policy, prompt);
        assert_eq!(out["usage"]["prompt_tokens"], expected.len(), "--effort {effort}");
        // Random weights write gibberish: check the shape, not the words.
        assert!(out["reasoning"].is_string(), "{out}");
        assert!(out["content"].is_string() || out["content"].is_null(), "{out}");
        assert!(out["parse_issues"].is_array(), "{out}");
        let finish = out["finish_reason"].as_str().unwrap();
        assert!(["stop", "tool_calls", "length"].contains(&finish), "{finish}");
        let tokens = out["tokens"].as_array().unwrap();
        assert_eq!(out["usage"]["completion_tokens"], tokens.len());
        assert!(tokens.len() <= 12);
        if effort == "high" {
            // Greedy decoding of harmony's ids gives the same tokens: the
            // prompt is id for id the reference's, not just as long.
            let raw = safeguard(&[
                "generate",
                "-m",
                model,
                "--prompt-tokens",
                &join(&expected),
                "--max-tokens",
                "12",
                "--json",
            ]);
            let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
            assert_eq!(raw["tokens"], out["tokens"]);
        }
    }

    // The default chat: medium effort, harmony's identity, no developer message.
    let output = safeguard(&[
        "generate",
        "-m",
        model,
        "--prompt",
        prompt,
        "--max-tokens",
        "4",
        "--json",
    ]);
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let default_identity = "You are ChatGPT, a large language model trained by OpenAI.";
    let expected = {
        let conversation = serde_json::json!({
            "system": {"identity": default_identity, "knowledge_cutoff": "2024-06", "date": null, "effort": "medium"},
            "instructions": null,
            "messages": [{"role": "user", "content": prompt}],
        });
        common::harmony(serde_json::json!({ "render": [conversation] }))["render"][0].clone()
    };
    assert_eq!(out["usage"]["prompt_tokens"], expected.as_array().unwrap().len());

    // --raw keeps plain text: no chat fields.
    let output = safeguard(&[
        "generate",
        "-m",
        model,
        "--prompt",
        prompt,
        "--raw",
        "--max-tokens",
        "2",
        "--json",
    ]);
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        out.get("reasoning").is_none() && out.get("content").is_none(),
        "{out}"
    );
}

#[test]
fn chat_output_is_plain_when_not_a_terminal() {
    let dir = common::fixture("a-mxfp4");
    let output = safeguard(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--prompt",
        "hello",
        "--effort",
        "low",
        "--temp",
        "1",
        "--seed",
        "7",
        "--max-tokens",
        "24",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.stdout.contains(&0x1b), "no ANSI escapes into a pipe");
    assert!(String::from_utf8_lossy(&output.stderr).contains("24 generated"));
}

#[test]
fn generate_shows_the_answer_of_a_harmony_chat() {
    // The scripted fixture always answers `<|channel|>final<|message|>1<|return|>`.
    let dir = common::fixture("scripted");
    let output = safeguard(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--prompt",
        "Is this spam?",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["content"], "1");
    assert_eq!(out["reasoning"], "");
    assert_eq!(out["finish_reason"], "stop");
    let human = safeguard(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--prompt",
        "Is this spam?",
    ]);
    assert_eq!(String::from_utf8_lossy(&human.stdout).trim(), "1");
}

fn safeguard_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn policies_new_writes_a_template_that_loads_and_lints_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["binary", "categories", "json"] {
        let name = format!("my-{format}");
        let output = safeguard_in(dir.path(), &["policies", "new", &name, "--format", format]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let path = dir.path().join(format!("{name}.md"));
        let policy = safeguard_mlx::classify::policy::Policy::from_file(&path).unwrap();
        let front = policy.front_matter.as_ref().unwrap();
        assert_eq!(front.output.unwrap().name(), format);
        assert_eq!(front.escalate, ["2"]);
        for part in [
            "## INSTRUCTIONS",
            "## DEFINITIONS",
            "## VIOLATES (1)",
            "## DOES NOT VIOLATE (0)",
            "## EXAMPLES",
        ] {
            assert!(policy.text.contains(part), "{format}: {part}");
        }
        // Placeholders make it short: a warning, but no error.
        let output = safeguard_in(dir.path(), &["policies", "lint", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{format}: {stdout}");
        assert!(
            stdout.contains("0 error(s)") && stdout.contains("[tokens]"),
            "{stdout}"
        );
        let strict = safeguard_in(
            dir.path(),
            &["policies", "lint", "--strict", path.to_str().unwrap()],
        );
        assert_eq!(strict.status.code(), Some(1), "--strict fails on the warning");
    }
    // An existing file is kept unless --force.
    let again = safeguard_in(dir.path(), &["policies", "new", "my-binary"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let bad = safeguard_in(dir.path(), &["policies", "new", "x", "--format", "yaml"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn policies_show_prints_a_shipped_policy_as_it_ships() {
    let output = safeguard(&["policies", "show", "spam"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/spam.md")).unwrap()
    );
    let output = safeguard(&["policies", "show", "nope"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("spam"));
}

#[test]
fn policies_lint_counts_real_tokens_and_fails_on_errors() {
    // The fixture's tokenizer is o200k_harmony; policy text holds no special
    // tokens, so tiktoken-rs counts the same independently.
    let model = common::fixture("a-mxfp4");
    let policy = safeguard_mlx::classify::policy::Policy::find("pii").unwrap();
    let expected = tiktoken_rs::o200k_harmony_singleton()
        .encode_ordinary(&policy.text)
        .len();
    let output = safeguard(&["policies", "lint", "pii", "-m", model.to_str().unwrap(), "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lint: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(lint["tokens"], expected);
    assert_eq!(lint["estimated"], false);
    assert_eq!(lint["findings"], serde_json::json!([]));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vague.md");
    std::fs::write(&path, "# Vague\n\n## INSTRUCTIONS\nFlag what is often bad.\n").unwrap();
    let output = safeguard(&["policies", "lint", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let file = path.display().to_string();
    assert!(
        stdout.contains(&format!("{file}:4: warning: \"often\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{file}: error: the instructions never say how to answer"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("(tokens estimated"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("error(s)"));
}
