//! Seeded randomness, memory accounting, the device and the library version.

mod common;

use std::process::Command;

use common::*;
use safeguard_mlx::mlx::{self, random, Array, Dtype};

#[test]
fn same_key_same_draws_different_keys_differ() {
    let draw = |seed| {
        random::uniform(&[64], Dtype::Float32, &random::key(seed).unwrap())
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let keys = random::split(&random::key(7).unwrap(), 2).unwrap();
    assert_eq!(keys.shape()[0], 2);
    let k0 = keys
        .take(&Array::scalar_int(0, Dtype::Int32).unwrap(), 0)
        .unwrap();
    let k1 = keys
        .take(&Array::scalar_int(1, Dtype::Int32).unwrap(), 0)
        .unwrap();
    let u0 = random::uniform(&[8], Dtype::Float32, &k0)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let u1 = random::uniform(&[8], Dtype::Float32, &k1)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_ne!(u0, u1);
}

#[test]
fn distributions_have_the_right_moments() {
    let key = random::key(11).unwrap();
    let u = random::uniform(&[20_000], Dtype::Float32, &key)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    let mean = u.iter().sum::<f32>() / u.len() as f32;
    assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");

    let n = random::normal(&[20_000], Dtype::Float32, &key)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mean = n.iter().sum::<f32>() / n.len() as f32;
    let var = n.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n.len() as f32;
    assert!(
        mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
        "normal mean {mean} var {var}"
    );
}

#[test]
fn categorical_samples_follow_softmax() {
    let logits_values = [0.0f32, 1.0, 2.0, f32::NEG_INFINITY];
    let rows = 20_000;
    let logits = Array::from_slice(&logits_values, &[1, 4])
        .unwrap()
        .broadcast_to(&[rows, 4])
        .unwrap();
    let draws = random::categorical(&logits, -1, &random::key(3).unwrap())
        .unwrap()
        .astype(Dtype::Int32)
        .unwrap()
        .to_vec::<i32>()
        .unwrap();
    let mut counts = [0usize; 4];
    for d in draws {
        counts[d as usize] += 1;
    }
    let expected = numpy1(
        "e = np.exp(l[:3] - l[:3].max()); out = np.append(e / e.sum(), 0.0)",
        &[f32_input("l", &logits_values, &[4])],
    );
    for (count, p) in counts.iter().zip(&expected.data) {
        let freq = *count as f64 / f64::from(rows);
        assert!((freq - p).abs() < 0.015, "frequency {freq} vs probability {p}");
    }
    assert_eq!(counts[3], 0, "a -inf logit is never drawn");
}

#[test]
fn reports_the_linked_mlx_version_and_a_device() {
    let output = Command::new(python())
        .args([
            "-c",
            "import mlx.core as mx; print(mx.__version__); print(mx.default_device().type)",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        mlx::version(),
        lines.next().unwrap(),
        "the binding links the MLX of .venv"
    );
    let python_device = lines.next().unwrap();
    let device = mlx::default_device();
    assert_eq!(
        device.is_gpu(),
        python_device.contains("gpu"),
        "{device} vs python's {python_device}"
    );
}
