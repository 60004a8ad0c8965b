//! `safeguard bench --json` on the fixtures: the documented fields, with sizes
//! checked against the safetensors headers read independently here.

mod common;

use std::process::Command;

use serde_json::Value;

/// Logical parameters and the experts' share, from the tensors and config.json:
/// a quantized `X.weight` (u32 codes beside `X.scales`) holds 32 / bits weights
/// per element, bits from the module's quantization entry or the default.
fn parameters_from_headers(dir: &std::path::Path) -> (u64, u64, u64) {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let quant = &config["quantization"];
    let mut shapes = std::collections::BTreeMap::new();
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let data = std::fs::read(&path).unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&data).unwrap();
            for (name, view) in tensors.tensors() {
                bytes += view.data().len() as u64;
                shapes.insert(name, view.shape().iter().map(|&d| d as u64).collect::<Vec<_>>());
            }
        }
    }
    let (mut total, mut experts) = (0u64, 0u64);
    for (name, shape) in &shapes {
        if name.ends_with(".scales") || name.ends_with(".biases") {
            continue;
        }
        let mut n: u64 = shape.iter().product();
        if let Some(module) = name.strip_suffix(".weight") {
            if shapes.contains_key(&format!("{module}.scales")) {
                let bits = quant[module]["bits"].as_u64().or(quant["bits"].as_u64()).unwrap();
                n = n * 32 / bits;
            }
        }
        total += n;
        if name.contains(".experts.") {
            experts += n;
        }
    }
    (total, experts, bytes)
}

#[test]
fn bench_json_reports_sizes_and_timings() {
    let a = common::fixture("a-mxfp4");
    let b = common::fixture("b-q4");
    let plot = tempfile::NamedTempFile::with_suffix(".svg").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["bench", "-m"])
        .arg(&a)
        .arg("-m")
        .arg(&b)
        .args(["--context", "8,24", "--gen-tokens", "4", "--runs", "2", "--json"])
        .args([
            "--classify",
            "2",
            "--policy",
            "spam",
            "--classify-max-tokens",
            "4",
            "--profile",
            "--plot",
        ])
        .arg(plot.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(out["machine"]["memory_bandwidth_bytes_per_sec"].as_f64().unwrap() > 1e8);
    let models = out["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for (model, dir) in models.iter().zip([&a, &b]) {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let (params, expert_params, tensor_bytes) = parameters_from_headers(dir);
        let k = config["num_experts_per_tok"].as_u64().unwrap();
        let e = config["num_local_experts"].as_u64().unwrap();
        assert_eq!(model["parameters"], params, "{}", dir.display());
        assert_eq!(
            model["active_parameters"],
            params - expert_params + expert_params * k / e
        );
        assert!(model["active_parameters"].as_u64().unwrap() < params);
        let bits = model["bits_per_weight"].as_f64().unwrap();
        assert!((bits - tensor_bytes as f64 * 8.0 / params as f64).abs() < 1e-9);
        assert!((4.0..9.0).contains(&bits), "{bits}");
        let disk: u64 = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert_eq!(model["bytes_on_disk"], disk);
        assert_eq!(model["dtype"], "float32");
        let contexts = model["contexts"].as_array().unwrap();
        assert_eq!(contexts.len(), 2);
        for (c, len) in contexts.iter().zip([8, 24]) {
            assert_eq!(c["prompt_tokens"], len);
            assert_eq!(c["gen_tokens"], 4);
            for field in [
                "prefill_tokens_per_sec",
                "decode_tokens_per_sec",
                "time_to_first_token_ms",
                "peak_memory_bytes",
            ] {
                let s = &c[field];
                let (lo, mid, hi) = (
                    s["min"].as_f64().unwrap(),
                    s["median"].as_f64().unwrap(),
                    s["max"].as_f64().unwrap(),
                );
                assert!(lo > 0.0 && lo <= mid && mid <= hi, "{field}: {s}");
            }
            // Peak memory holds at least the weights.
            assert!(c["peak_memory_bytes"]["min"].as_f64().unwrap() > tensor_bytes as f64 / 2.0);
            assert!(c["bytes_per_decode_token"].as_u64().unwrap() > 0);
            assert!(c["decode_ceiling_tokens_per_sec"].as_f64().unwrap() > 0.0);
            assert!(c["achieved_fraction"].as_f64().unwrap() > 0.0);
        }
        let classify = &model["classify"];
        assert_eq!(classify["items"], 2);
        assert_eq!(classify["policy"], "spam");
        assert_eq!(
            classify["completion_tokens"], 8,
            "random models never stop: 2 × 4 tokens"
        );
        // The second item reuses the policy prefix.
        assert!(classify["cached_tokens"].as_u64().unwrap() > 0);
        assert!(classify["items_per_sec"].as_f64().unwrap() > 0.0);
        assert_eq!(classify["batch_size"], 8);
        // Every stage of the forward is timed; the head only when decoding.
        let profile = &model["profile"];
        let stages: Vec<&str> = profile["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_str().unwrap())
            .collect();
        assert_eq!(stages, ["embedding", "attention", "router", "experts", "head"]);
        for stage in profile["stages"].as_array().unwrap() {
            assert!(stage[2].as_f64().unwrap() > 0.0, "{stage}");
            assert_eq!(stage[1].as_f64().unwrap() > 0.0, stage[0] != "head", "{stage}");
        }
        assert!(profile["decode_build_ms"].as_f64().unwrap() > 0.0);
        assert!(profile["decode_eval_ms"].as_f64().unwrap() > 0.0);
    }
    let svg = std::fs::read_to_string(plot.path()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn bench_needs_a_policy_for_classify() {
    let output = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["bench", "-m"])
        .arg(common::fixture("a-mxfp4"))
        .args(["--classify", "2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
