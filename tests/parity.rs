//! Parity with mlx-lm on the generated fixtures: for every model and prompt,
//! greedy tokens equal mlx-lm's `generate_step` and the last-position
//! log-softmax is within 1e-3 (float32 compute on both sides).

mod common;

use std::path::{Path, PathBuf};

use safeguard_mlx::engine::cache::{make_caches, trim_caches};
use safeguard_mlx::engine::generate::{GenerateOptions, Generation};
use safeguard_mlx::mlx::{safetensors, Array, Dtype};
use safeguard_mlx::model::{ComputeDtype, GptOss};
use serde_json::Value;

const LOGPROB_TOLERANCE: f32 = 1e-3;

struct Reference {
    json: Value,
    logprobs: std::collections::HashMap<String, Array>,
}

fn reference(dir: &Path) -> Reference {
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference/reference.json")).unwrap())
        .unwrap();
    let logprobs = safetensors::load(&dir.join("reference/reference.safetensors"))
        .unwrap()
        .tensors;
    Reference { json, logprobs }
}

/// Every fixture model that has mlx-lm references.
fn fixture_models() -> Vec<PathBuf> {
    let root = common::fixture("");
    let mut models: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference/reference.json").is_file())
        .collect();
    models.sort();
    assert!(
        models.len() >= 9,
        "expected the fixture models in {}",
        root.display()
    );
    models
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The YaRN variant this model's config asks for, in the reference's words.
fn yarn_range(dir: &Path) -> &'static str {
    let truncate = common::config(dir)["rope_scaling"]["truncate"]
        .as_bool()
        .unwrap_or(true);
    if truncate {
        "rounded"
    } else {
        "unrounded"
    }
}

struct Outcome {
    tokens: Vec<u32>,
    first_logprobs: Array,
}

fn generate(model: &GptOss, prompt: &[u32], max_tokens: usize, prefill_step: usize) -> Outcome {
    let options = GenerateOptions {
        max_tokens,
        prefill_step,
        ..Default::default()
    };
    let mut tokens = Vec::new();
    let mut first_logprobs = None;
    for step in Generation::new(model, prompt, options).unwrap() {
        let step = step.unwrap();
        first_logprobs.get_or_insert(step.logprobs);
        tokens.push(step.token);
    }
    Outcome {
        tokens,
        first_logprobs: first_logprobs.unwrap(),
    }
}

fn max_abs_diff(a: &Array, b: &Array) -> f32 {
    a.astype(Dtype::Float32)
        .unwrap()
        .subtract(&b.astype(Dtype::Float32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max(&[0], false)
        .unwrap()
        .item::<f32>()
        .unwrap()
}

/// Asserts `ours` equals mlx-lm's tokens, except a divergence where mlx-lm's
/// own top-2 margin shows a near-tie (then the rest cannot be compared).
fn assert_same_tokens(label: &str, ours: &[u32], run: &Value, tie: f64) {
    let theirs = ids(&run["tokens"]);
    let margins: Vec<f64> = run["margins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    assert_eq!(ours.len(), theirs.len(), "{label}: token count");
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        assert!(
            margins[i] < tie,
            "{label}: token {i} is {} but mlx-lm chose {} with a top-2 margin of {} (not a near-tie)",
            ours[i],
            theirs[i],
            margins[i]
        );
        eprintln!(
            "{label}: diverged at token {i} on a near-tie (margin {})",
            margins[i]
        );
    }
}

#[test]
fn greedy_tokens_and_logprobs_match_mlx_lm_in_float32() {
    for dir in fixture_models() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let reference = reference(&dir);
        let tie = reference.json["near_tie_threshold"].as_f64().unwrap();
        let model = GptOss::load(&dir, ComputeDtype::Float32).unwrap();
        let range = yarn_range(&dir);
        for run in reference.json["runs"].as_array().unwrap() {
            let id = run["id"].as_str().unwrap();
            if run["dtype"] != "float32" || run["yarn_correction_range"] != range {
                continue;
            }
            let prompt = ids(&reference.json["prompts"][run["prompt"].as_str().unwrap()]);
            let max_tokens = run["max_tokens"].as_u64().unwrap() as usize;
            let prefill_step = run["prefill_step_size"].as_u64().unwrap() as usize;
            let ours = generate(&model, &prompt, max_tokens, prefill_step);
            let label = format!("{name} {id}");
            assert_same_tokens(&label, &ours.tokens, run, tie);
            let diff = max_abs_diff(&ours.first_logprobs, &reference.logprobs[id]);
            assert!(
                diff <= LOGPROB_TOLERANCE,
                "{label}: last-position logprobs differ by {diff}"
            );
            eprintln!("{label}: {max_tokens} tokens equal, logprobs max-abs diff {diff:.2e}");
        }
    }
}

#[test]
fn stock_mlx_lm_yarn_deviates_where_the_config_says_not_to_round() {
    // mlx-lm 0.32.2 rounds the YaRN correction range whatever `truncate` says;
    // report how far that moves the logprobs of models with `truncate: false`.
    let mut compared = 0;
    for dir in fixture_models() {
        if yarn_range(&dir) != "unrounded" {
            continue;
        }
        let reference = reference(&dir);
        let model = GptOss::load(&dir, ComputeDtype::Float32).unwrap();
        for run in reference.json["runs"].as_array().unwrap() {
            if run["yarn_correction_range"] != "rounded" || run["dtype"] != "float32" {
                continue;
            }
            let id = run["id"].as_str().unwrap();
            let prompt = ids(&reference.json["prompts"][run["prompt"].as_str().unwrap()]);
            let ours = generate(&model, &prompt, 1, 2048);
            let stock = max_abs_diff(&ours.first_logprobs, &reference.logprobs[id]);
            eprintln!(
                "{} {id}: stock mlx-lm differs from the config's YaRN by {stock:.2e}",
                dir.display()
            );
            compared += 1;
        }
    }
    assert!(
        compared > 0,
        "the fixtures include truncate: false models with stock references"
    );
}

#[test]
fn native_dtype_runs_match_mlx_lm_bit_for_bit() {
    let mut compared = 0;
    for dir in fixture_models() {
        let reference = reference(&dir);
        let range = yarn_range(&dir);
        let native: Vec<&Value> = reference.json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dtype"] != "float32" && r["yarn_correction_range"] == range)
            .collect();
        if native.is_empty() {
            continue;
        }
        let dtype: ComputeDtype = native[0]["dtype"].as_str().unwrap().parse().unwrap();
        let model = GptOss::load(&dir, dtype).unwrap();
        for run in native {
            let prompt = ids(&reference.json["prompts"][run["prompt"].as_str().unwrap()]);
            let max_tokens = run["max_tokens"].as_u64().unwrap() as usize;
            let prefill_step = run["prefill_step_size"].as_u64().unwrap() as usize;
            let ours = generate(&model, &prompt, max_tokens, prefill_step);
            let label = format!("{} {}", dir.display(), run["id"]);
            assert_eq!(ours.tokens, ids(&run["tokens"]), "{label}");
            compared += 1;
        }
    }
    assert!(compared > 0, "the fixtures include native-dtype references");
}

#[test]
fn original_layout_loads_like_its_converted_twin() {
    let original = GptOss::load(&common::fixture("a-original"), ComputeDtype::Float32).unwrap();
    let converted = GptOss::load(&common::fixture("a-original-mlx"), ComputeDtype::Float32).unwrap();
    let prompt = Array::from_slice(
        &[200006u32, 17360, 200008, 1000, 2000, 3000, 4000, 5000, 6000, 7000],
        &[1, 10],
    )
    .unwrap();
    let a = original.forward(&prompt, &mut make_caches(&original)).unwrap();
    let b = converted.forward(&prompt, &mut make_caches(&converted)).unwrap();
    assert_eq!(a.shape(), b.shape());
    let diff = max_abs_diff(&a.reshape(&[-1]).unwrap(), &b.reshape(&[-1]).unwrap());
    assert_eq!(diff, 0.0, "same weights, same graph: identical logits");
}

#[test]
fn a_batch_gives_each_sequence_what_it_gets_alone() {
    let dir = common::fixture("a-mxfp4");
    let model = GptOss::load(&dir, ComputeDtype::Float32).unwrap();
    let rows: [[u32; 12]; 2] = [
        [200006, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [200006, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 1],
    ];
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let batch = model
        .forward(
            &Array::from_slice(&flat, &[2, 12]).unwrap(),
            &mut make_caches(&model),
        )
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let alone = model
            .forward(
                &Array::from_slice(row, &[1, 12]).unwrap(),
                &mut make_caches(&model),
            )
            .unwrap();
        let from_batch = batch.slice_axis(0, i as i32, i as i32 + 1).unwrap();
        let diff = max_abs_diff(
            &from_batch.reshape(&[-1]).unwrap(),
            &alone.reshape(&[-1]).unwrap(),
        );
        assert!(diff < 1e-4, "row {i} differs by {diff}");
    }
}

#[test]
fn continuing_from_copied_caches_equals_one_pass() {
    let dir = common::fixture("a-mxfp4");
    let model = GptOss::load(&dir, ComputeDtype::Float32).unwrap();
    let prefix: Vec<u32> = (0..21).map(|i| 1000 + i * 37).collect();
    let suffix = [200006u32, 42, 4242, 424];
    let whole: Vec<u32> = prefix.iter().chain(&suffix).copied().collect();
    let one_pass = generate(&model, &whole, 24, 2048);

    // Prefill the shared prefix once, then continue two copies of it.
    let mut caches = make_caches(&model);
    model
        .forward(
            &Array::from_slice(&prefix, &[1, prefix.len() as i32]).unwrap(),
            &mut caches,
        )
        .unwrap();
    for _ in 0..2 {
        let options = GenerateOptions {
            max_tokens: 24,
            ..Default::default()
        };
        let tokens: Vec<u32> = Generation::with_caches(&model, caches.clone(), &suffix, options)
            .unwrap()
            .map(|s| s.unwrap().token)
            .collect();
        assert_eq!(tokens, one_pass.tokens);
    }
}

#[test]
fn trimmed_caches_continue_like_fresh_ones() {
    // Window 128: the sliding layers' rings have not wrapped, so they trim.
    let model = GptOss::load(&common::fixture("b-mxfp4"), ComputeDtype::Float32).unwrap();
    let tokens = |ids: &[u32]| Array::from_slice(ids, &[1, ids.len() as i32]).unwrap();
    let prefix: Vec<u32> = (0..30).map(|i| 500 + i * 11).collect();
    let mut caches = make_caches(&model);
    model.forward(&tokens(&prefix), &mut caches).unwrap();
    let mut fresh = caches.clone();

    // A detour of 5 tokens (one multi-token step, then single steps), then trim it away.
    model.forward(&tokens(&[7, 8, 9]), &mut caches).unwrap();
    model.forward(&tokens(&[10]), &mut caches).unwrap();
    model.forward(&tokens(&[11]), &mut caches).unwrap();
    assert_eq!(trim_caches(&mut caches, 5), 5);

    let next = [200006u32, 300, 301];
    let a = model.forward(&tokens(&next), &mut caches).unwrap();
    let b = model.forward(&tokens(&next), &mut fresh).unwrap();
    let diff = max_abs_diff(&a.reshape(&[-1]).unwrap(), &b.reshape(&[-1]).unwrap());
    assert!(diff < 1e-5, "logits differ by {diff} after trimming");

    // Once a sliding ring wraps, trimming would lose context: it refuses.
    let small = GptOss::load(&common::fixture("a-mxfp4"), ComputeDtype::Float32).unwrap();
    let mut wrapped = make_caches(&small);
    small.forward(&tokens(&prefix), &mut wrapped).unwrap();
    assert_eq!(trim_caches(&mut wrapped, 2), 0);
}

#[test]
fn prefix_cache_gives_the_tokens_a_full_prefill_gives() {
    use safeguard_mlx::engine::prefix::PrefixCache;
    let model = GptOss::load(&common::fixture("a-mxfp4"), ComputeDtype::Float32).unwrap();
    let policy: Vec<u32> = (0..45).map(|i| 2000 + i * 13).collect(); // crosses window 8 many times
    let mut prefixes = PrefixCache::new(64 << 20);
    for item in [
        [200006u32, 1428, 200008, 9, 99, 999],
        [200006, 1428, 200008, 5, 55, 555],
    ] {
        let whole: Vec<u32> = policy.iter().chain(&item).copied().collect();
        let reference = generate(&model, &whole, 16, 2048).tokens;
        let (caches, _) = prefixes.caches_for(&model, &policy, 2048).unwrap();
        let options = GenerateOptions {
            max_tokens: 16,
            ..Default::default()
        };
        let tokens: Vec<u32> = Generation::with_caches(&model, caches, &item, options)
            .unwrap()
            .map(|s| s.unwrap().token)
            .collect();
        assert_eq!(tokens, reference);
    }
    assert_eq!(
        prefixes.stats(),
        (1, 1),
        "the second item reuses the first one's prefix"
    );
    assert!(prefixes.bytes() > 0);

    // A capacity too small to hold a prefix stores nothing and still works.
    let mut tiny = PrefixCache::new(1);
    tiny.caches_for(&model, &policy, 2048).unwrap();
    assert_eq!(tiny.bytes(), 0);
}
