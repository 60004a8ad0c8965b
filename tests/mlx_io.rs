//! Safetensors through MLX, cross-checked with the independent `safetensors` crate.

mod common;

use std::collections::HashMap;

use common::*;
use half::{bf16, f16};
use safeguard_mlx::mlx::{safetensors, Array, Dtype, Error};

fn sample_tensors() -> HashMap<String, Array> {
    let mut tensors = HashMap::new();
    let f = rand_vec(12, 100, 3.0);
    tensors.insert("f32".into(), Array::from_slice(&f, &[3, 4]).unwrap());
    let b: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
    tensors.insert(
        "model.layers.0.bf16".into(),
        Array::from_slice(&b, &[2, 6]).unwrap(),
    );
    let h: Vec<f16> = f.iter().map(|&v| f16::from_f32(v)).collect();
    tensors.insert("f16".into(), Array::from_slice(&h, &[12]).unwrap());
    tensors.insert(
        "scales_u8".into(),
        Array::from_slice(&[0u8, 1, 127, 128, 255, 254], &[2, 3]).unwrap(),
    );
    tensors.insert(
        "packed_u32".into(),
        Array::from_slice(&[0xDEAD_BEEFu32, 0, u32::MAX, 7], &[2, 2]).unwrap(),
    );
    tensors.insert(
        "ids_i32".into(),
        Array::from_slice(&[-5i32, 200_018], &[2]).unwrap(),
    );
    tensors
}

fn bytes_of(a: &Array) -> Vec<u8> {
    match a.dtype() {
        Dtype::Float32 => bytemuck::cast_slice(&a.to_vec::<f32>().unwrap()).to_vec(),
        Dtype::Bfloat16 => bytemuck::cast_slice(&a.to_vec::<bf16>().unwrap()).to_vec(),
        Dtype::Float16 => bytemuck::cast_slice(&a.to_vec::<f16>().unwrap()).to_vec(),
        Dtype::Uint8 => a.to_vec::<u8>().unwrap(),
        Dtype::Uint32 => bytemuck::cast_slice(&a.to_vec::<u32>().unwrap()).to_vec(),
        Dtype::Int32 => bytemuck::cast_slice(&a.to_vec::<i32>().unwrap()).to_vec(),
        other => panic!("no sample of {other}"),
    }
}

fn crate_dtype(d: Dtype) -> ::safetensors::Dtype {
    match d {
        Dtype::Float32 => ::safetensors::Dtype::F32,
        Dtype::Bfloat16 => ::safetensors::Dtype::BF16,
        Dtype::Float16 => ::safetensors::Dtype::F16,
        Dtype::Uint8 => ::safetensors::Dtype::U8,
        Dtype::Uint32 => ::safetensors::Dtype::U32,
        Dtype::Int32 => ::safetensors::Dtype::I32,
        other => panic!("no sample of {other}"),
    }
}

#[test]
fn save_then_load_round_trips_every_dtype_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors = sample_tensors();
    let metadata = HashMap::from([("format".to_string(), "mlx".to_string())]);
    safetensors::save(&path, &tensors, &metadata).unwrap();

    // What the independent reader finds in the file.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        header
            .metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("mlx")
    );
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), tensors.len());
    for (name, ours) in &tensors {
        let view = file.tensor(name).unwrap();
        assert_eq!(view.dtype(), crate_dtype(ours.dtype()), "{name}");
        let shape: Vec<i32> = view.shape().iter().map(|&d| d as i32).collect();
        assert_eq!(shape, ours.shape(), "{name}");
        assert_eq!(view.data(), bytes_of(ours).as_slice(), "{name}");
    }

    // And what MLX loads back.
    let loaded = safetensors::load(&path).unwrap();
    assert_eq!(loaded.metadata, metadata);
    assert_eq!(loaded.tensors.len(), tensors.len());
    for (name, ours) in &tensors {
        let back = &loaded.tensors[name];
        assert_eq!(
            (back.dtype(), back.shape()),
            (ours.dtype(), ours.shape()),
            "{name}"
        );
        assert_eq!(bytes_of(back), bytes_of(ours), "{name}");
    }
}

#[test]
fn loads_files_written_by_the_safetensors_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.safetensors");
    let values: Vec<bf16> = rand_vec(8, 101, 2.0).into_iter().map(bf16::from_f32).collect();
    let bf_bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
    let packed: Vec<u8> = bytemuck::cast_slice(&[1u32, 0x8000_0000, 42]).to_vec();
    let views = vec![
        (
            "w".to_string(),
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::BF16, vec![2, 4], &bf_bytes)
                .unwrap(),
        ),
        (
            "q".to_string(),
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::U32, vec![3], &packed).unwrap(),
        ),
    ];
    let metadata = Some(HashMap::from([("source".to_string(), "crate".to_string())]));
    ::safetensors::serialize_to_file(views, metadata, &path).unwrap();

    let loaded = safetensors::load(&path).unwrap();
    assert_eq!(loaded.metadata["source"], "crate");
    assert_eq!(loaded.tensors["w"].shape(), vec![2, 4]);
    assert_eq!(loaded.tensors["w"].to_vec::<bf16>().unwrap(), values);
    assert_eq!(
        loaded.tensors["q"].to_vec::<u32>().unwrap(),
        vec![1, 0x8000_0000, 42]
    );
}

#[test]
fn bad_files_give_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    match safetensors::load(&missing) {
        Err(Error::File { path, message }) => {
            assert_eq!(path, missing);
            assert!(message.contains("Failed to open"), "{message}");
        }
        other => panic!("expected a file error, got {other:?}"),
    }

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    let err = safetensors::load(&garbage).unwrap_err();
    assert!(
        err.to_string().starts_with(&garbage.display().to_string()),
        "{err}"
    );

    // A download cut in half: the header promises more data than the file has.
    let whole = dir.path().join("whole.safetensors");
    let tensors = HashMap::from([("a".to_string(), Array::ones(&[256, 256], Dtype::Float32).unwrap())]);
    safetensors::save(&whole, &tensors, &HashMap::new()).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = safetensors::load(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("exceeding the size of the file"),
        "{err}"
    );
}
