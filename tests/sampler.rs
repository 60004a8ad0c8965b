//! Sampling filters against mlx-lm's own `sample_utils`, and seeded draws.

mod common;

use common::*;
use safeguard_mlx::engine::sampler::{Sampler, SamplerOptions};
use safeguard_mlx::mlx::{Array, Dtype};

/// Log-softmax of a seeded random row, `[1, n]`.
fn logprobs(n: usize, seed: u64) -> (Array, Vec<f32>) {
    let logits = Array::from_slice(&rand_vec(n, seed, 4.0), &[1, n as i32]).unwrap();
    let lp = logits.log_softmax(-1).unwrap();
    let values = lp.to_vec::<f32>().unwrap();
    (lp, values)
}

fn kept(filtered: &Array) -> Vec<f64> {
    let finite = filtered
        .greater(&filtered.scalar_like(f64::NEG_INFINITY).unwrap())
        .unwrap();
    values(&finite)
}

#[test]
fn filters_keep_what_mlx_lm_keeps() {
    let (lp, data) = logprobs(257, 300);
    let cases = [
        (
            "apply_top_p(x, 0.9)",
            SamplerOptions {
                temperature: 1.0,
                top_p: 0.9,
                ..Default::default()
            },
        ),
        (
            "apply_top_p(x, 0.3)",
            SamplerOptions {
                temperature: 1.0,
                top_p: 0.3,
                ..Default::default()
            },
        ),
        (
            "apply_min_p(x, 0.05)",
            SamplerOptions {
                temperature: 1.0,
                min_p: 0.05,
                ..Default::default()
            },
        ),
        (
            "apply_top_k(x, 7)",
            SamplerOptions {
                temperature: 1.0,
                top_k: 7,
                ..Default::default()
            },
        ),
        (
            "apply_top_k(apply_min_p(apply_top_p(x, 0.95), 0.01), 20)",
            SamplerOptions {
                temperature: 1.0,
                top_p: 0.95,
                min_p: 0.01,
                top_k: 20,
                ..Default::default()
            },
        ),
    ];
    for (expr, options) in cases {
        let ours = kept(&Sampler::new(options).unwrap().filter(&lp).unwrap());
        let reference = numpy1(
            &format!(
                "import mlx.core as mx\nfrom mlx_lm.sample_utils import apply_top_p, apply_min_p, apply_top_k\n\
                 x = mx.array(lp)\nout = np.isfinite(np.array({expr})).astype(np.float64)"
            ),
            &[f32_input("lp", &data, &[1, 257])],
        );
        assert_eq!(ours, reference.data, "{expr}");
        assert!(ours.contains(&1.0), "{expr} keeps something");
    }
}

#[test]
fn greedy_is_argmax_and_seeds_fix_the_draws() {
    let (lp, data) = logprobs(64, 301);
    let greedy = Sampler::new(SamplerOptions::default())
        .unwrap()
        .sample(&lp)
        .unwrap();
    let best = data
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(greedy.to_vec::<u32>().unwrap(), vec![best as u32]);

    let draws = |seed| {
        let mut sampler = Sampler::new(SamplerOptions {
            temperature: 1.0,
            seed,
            ..Default::default()
        })
        .unwrap();
        (0..32)
            .map(|_| sampler.sample(&lp).unwrap().item::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(5), draws(5), "same seed, same tokens");
    assert_ne!(draws(5), draws(6), "another seed, other tokens");
    let distinct: std::collections::BTreeSet<u32> = draws(5).into_iter().collect();
    assert!(distinct.len() > 1, "successive draws use fresh keys");
}

#[test]
fn sampling_never_draws_a_filtered_token() {
    let (lp, _) = logprobs(50, 302);
    let options = SamplerOptions {
        temperature: 2.0,
        top_k: 3,
        seed: 9,
        ..Default::default()
    };
    let allowed = kept(&Sampler::new(options).unwrap().filter(&lp).unwrap());
    let mut sampler = Sampler::new(options).unwrap();
    let batch = lp.broadcast_to(&[256, 50]).unwrap();
    let tokens = sampler
        .sample(&batch)
        .unwrap()
        .astype(Dtype::Int32)
        .unwrap()
        .to_vec::<i32>()
        .unwrap();
    assert!(tokens.iter().all(|&t| allowed[t as usize] == 1.0));
    let distinct: std::collections::BTreeSet<i32> = tokens.into_iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "at temperature 2 all three survivors appear in 256 draws"
    );
}
