//! Every kind of broken model folder gets an error naming the file, the tensor
//! and what was expected against what was found — never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{edit_json, model_copy, write};

use safeguard_mlx::mlx::{safetensors, Array, Dtype};
use safeguard_mlx::model::{ComputeDtype, Error, GptOss};

/// The shard holding `tensor`, per the index.
fn shard_of(dir: &Path, tensor: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    index["weight_map"][tensor].as_str().unwrap().to_string()
}

/// Rewrites one shard with `edit` applied to its tensors.
fn edit_shard(dir: &Path, shard: &str, edit: impl FnOnce(&mut HashMap<String, Array>)) -> PathBuf {
    let path = dir.join(shard);
    let mut file = safetensors::load(&path).unwrap();
    edit(&mut file.tensors);
    for array in file.tensors.values() {
        array.eval().unwrap(); // read everything before the link is replaced
    }
    std::fs::remove_file(&path).unwrap();
    safetensors::save(&path, &file.tensors, &file.metadata).unwrap();
    path
}

fn load(dir: &Path) -> Error {
    match GptOss::load(dir, ComputeDtype::Float32) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e,
    }
}

const SINKS: &str = "model.layers.1.self_attn.sinks";

#[test]
fn missing_and_invalid_config() {
    let dir = model_copy("a-mxfp4");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load(dir.path());
    assert!(
        matches!(&err, Error::Config { path, .. } if path == &dir.path().join("config.json")),
        "{err}"
    );
    assert!(err.to_string().contains("not found"), "{err}");

    write(
        dir.path(),
        "config.json",
        b"{\"model_type\": \"gpt_oss\", \"hidden_size\": ",
    );
    let err = load(dir.path()).to_string();
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );

    write(
        dir.path(),
        "config.json",
        b"{\"model_type\": \"gpt_oss\", \"hidden_size\": \"wide\"}",
    );
    let err = load(dir.path()).to_string();
    assert!(
        err.contains("hidden_size") || err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn another_architecture_is_refused_by_name() {
    let dir = model_copy("a-mxfp4");
    edit_json(dir.path(), "config.json", |c| c["model_type"] = "llama".into());
    let err = load(dir.path());
    assert!(
        matches!(&err, Error::UnsupportedModel { model_type, .. } if model_type == "llama"),
        "{err}"
    );
}

#[test]
fn unknown_quantization_mode_is_named() {
    let dir = model_copy("a-mxfp4");
    edit_json(dir.path(), "config.json", |c| {
        c["quantization"]["mode"] = "nvfp8".into()
    });
    let err = load(dir.path()).to_string();
    assert!(
        err.contains("config.json") && err.contains("nvfp8") && err.contains("mxfp4"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_shards_name_the_file() {
    let dir = model_copy("a-mxfp4");
    let shard = shard_of(dir.path(), SINKS);
    let bytes = std::fs::read(dir.path().join(&shard)).unwrap();
    write(dir.path(), &shard, &bytes[..bytes.len() * 2 / 3]);
    let err = load(dir.path());
    assert!(
        matches!(&err, Error::WeightFile { path, .. } if path.ends_with(&shard)),
        "{err}"
    );
    assert!(
        err.to_string().contains("exceeding the size of the file"),
        "{err}"
    );

    write(dir.path(), &shard, b"\x08\x00\x00\x00\x00\x00\x00\x00not json");
    let err = load(dir.path());
    assert!(
        matches!(&err, Error::WeightFile { path, .. } if path.ends_with(&shard)),
        "{err}"
    );

    std::fs::remove_file(dir.path().join(&shard)).unwrap();
    let err = load(dir.path()).to_string();
    assert!(err.contains(&shard) && err.contains("missing"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = model_copy("a-mxfp4");
    let shard = shard_of(dir.path(), SINKS);
    edit_shard(dir.path(), &shard, |t| {
        t.remove(SINKS);
    });
    let err = load(dir.path());
    assert!(
        matches!(&err, Error::MissingTensor { tensor, .. } if tensor == SINKS),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named_with_its_file() {
    let dir = model_copy("a-mxfp4");
    let shard = shard_of(dir.path(), SINKS);
    let path = edit_shard(dir.path(), &shard, |t| {
        t.insert(
            "model.layers.0.mlp.shared_expert.weight".into(),
            Array::zeros(&[4], Dtype::Float32).unwrap(),
        );
    });
    let err = load(dir.path());
    assert!(
        matches!(&err, Error::UnexpectedTensor { tensor, file }
            if tensor == "model.layers.0.mlp.shared_expert.weight" && file == &path),
        "{err}"
    );
}

#[test]
fn shape_and_dtype_mismatches_say_expected_and_found() {
    let dir = model_copy("a-mxfp4");
    let shard = shard_of(dir.path(), SINKS);
    let path = edit_shard(dir.path(), &shard, |t| {
        t.insert(SINKS.into(), Array::zeros(&[15], Dtype::Float32).unwrap());
    });
    let heads = common::config(&common::fixture("a-mxfp4"))["num_attention_heads"]
        .as_i64()
        .unwrap() as i32;
    match load(dir.path()) {
        Error::Shape {
            tensor,
            file,
            expected,
            found,
        } => {
            assert_eq!(
                (tensor.as_str(), file, expected, found),
                (SINKS, path, vec![heads], vec![15])
            );
        }
        other => panic!("expected a shape error, got {other}"),
    }

    // Packed MXFP4 codes stored as floats.
    let dir = model_copy("a-mxfp4");
    let weight = "model.layers.0.mlp.experts.down_proj.weight";
    let shard = shard_of(dir.path(), weight);
    edit_shard(dir.path(), &shard, |t| {
        let w = t.remove(weight).unwrap();
        t.insert(weight.into(), w.astype(Dtype::Float32).unwrap());
    });
    let err = load(dir.path()).to_string();
    assert!(
        err.contains(weight) && err.contains("uint32") && err.contains("float32"),
        "{err}"
    );
}

#[test]
fn the_cli_reports_bad_models_with_exit_code_2() {
    let dir = model_copy("a-mxfp4");
    edit_json(dir.path(), "config.json", |c| c["model_type"] = "llama".into());
    let run = |model: &Path| {
        Command::new(env!("CARGO_BIN_EXE_safeguard"))
            .args([
                "generate",
                "-m",
                model.to_str().unwrap(),
                "--prompt-tokens",
                "1,2",
            ])
            .output()
            .unwrap()
    };
    let output = run(dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("llama"));

    let dir = model_copy("a-mxfp4");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let output = run(dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("tokenizer.json"));

    let output = run(Path::new("/nonexistent/model"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a model folder"));
}
