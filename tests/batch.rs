//! Batched decoding equals decoding alone, bit for bit: greedy and sampled
//! tokens and every log-probability, for sequences of different lengths that
//! start from one shared prefix, join and leave mid-batch (at their token
//! limit, or removed while their next step is already computing) and cross
//! sliding windows.

mod common;

use std::collections::HashMap;

use safeguard_mlx::engine::batch::BatchGeneration;
use safeguard_mlx::engine::cache::{make_caches, LayerCache};
use safeguard_mlx::engine::generate::{GenerateOptions, Generation};
use safeguard_mlx::engine::sampler::SamplerOptions;
use safeguard_mlx::mlx::{self, Array};
use safeguard_mlx::model::{ComputeDtype, GptOss};

/// Token ids in the text range of the vocabulary, from a simple LCG.
fn tokens(len: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % 150_000) as u32 + 100
        })
        .collect()
}

fn prefill(model: &GptOss, prefix: &[u32]) -> Vec<LayerCache> {
    let mut caches = make_caches(model);
    model
        .forward(
            &Array::from_slice(prefix, &[1, prefix.len() as i32]).unwrap(),
            &mut caches,
        )
        .unwrap();
    let state: Vec<&Array> = caches.iter().flat_map(LayerCache::state).collect();
    mlx::eval(&state).unwrap();
    caches
}

type Run = (Vec<u32>, Vec<Vec<f32>>);

/// Decodes `budget` tokens after `prefix` + `suffix` alone.
fn alone(
    model: &GptOss,
    prefix: &[LayerCache],
    suffix: &[u32],
    budget: usize,
    sampler: SamplerOptions,
) -> Run {
    let options = GenerateOptions {
        max_tokens: budget,
        sampler,
        ..Default::default()
    };
    let mut run = (Vec::new(), Vec::new());
    for step in Generation::with_caches(model, prefix.to_vec(), suffix, options).unwrap() {
        let step = step.unwrap();
        run.0.push(step.token);
        run.1.push(step.logprobs.to_vec::<f32>().unwrap());
    }
    run
}

/// Decodes every `(suffix, budget)` in batches of at most `batch_size`, each
/// leaving at its own budget and the next joining in its place. Even items
/// leave by their token limit, odd ones are removed by the caller.
fn batched(
    model: &GptOss,
    prefix: &[LayerCache],
    items: &[(Vec<u32>, usize)],
    batch_size: usize,
    sampler: &dyn Fn(usize) -> SamplerOptions,
) -> Vec<Run> {
    let mut batch = BatchGeneration::new(model);
    let mut runs: HashMap<usize, Run> = HashMap::new();
    let (mut next, mut peak, mut joined_mid_batch) = (0, 0, false);
    loop {
        while batch.len() < batch_size && next < items.len() {
            joined_mid_batch |= !batch.is_empty() && next >= batch_size;
            let options = GenerateOptions {
                max_tokens: items[next].1 + (next % 2) * 5,
                sampler: sampler(next),
                ..Default::default()
            };
            batch
                .insert(next, prefix.to_vec(), &items[next].0, options)
                .unwrap();
            runs.insert(next, (Vec::new(), Vec::new()));
            next += 1;
        }
        peak = peak.max(batch.len());
        if batch.is_empty() {
            break;
        }
        for (id, step) in batch.step().unwrap() {
            let run = runs.get_mut(&id).unwrap();
            run.0.push(step.token);
            run.1.push(step.logprobs.to_vec::<f32>().unwrap());
            if run.0.len() == items[id].1 {
                batch.remove(id);
            }
        }
    }
    assert_eq!(peak, batch_size.min(items.len()));
    assert!(joined_mid_batch || items.len() <= batch_size);
    (0..items.len()).map(|i| runs.remove(&i).unwrap()).collect()
}

fn check(name: &str, prefix_len: usize, suffix_lens: &[usize], budgets: &[usize], batch_size: usize) {
    check_sampled(name, prefix_len, suffix_lens, budgets, batch_size, &|_| {
        SamplerOptions::default()
    });
}

fn check_sampled(
    name: &str,
    prefix_len: usize,
    suffix_lens: &[usize],
    budgets: &[usize],
    batch_size: usize,
    sampler: &dyn Fn(usize) -> SamplerOptions,
) {
    let model = GptOss::load(&common::fixture(name), ComputeDtype::Float32).unwrap();
    let prefix = prefill(&model, &tokens(prefix_len, 1));
    let items: Vec<(Vec<u32>, usize)> = suffix_lens
        .iter()
        .zip(budgets)
        .enumerate()
        .map(|(i, (&len, &budget))| (tokens(len, 100 + i as u64), budget))
        .collect();
    let together = batched(&model, &prefix, &items, batch_size, sampler);
    for (i, ((suffix, budget), run)) in items.iter().zip(&together).enumerate() {
        let single = alone(&model, &prefix, suffix, *budget, sampler(i));
        assert_eq!(run.0, single.0, "{name} item {i}: tokens");
        assert_eq!(run.1.len(), single.1.len());
        for (t, (a, b)) in run.1.iter().zip(&single.1).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} item {i} step {t}: log-probabilities differ"
            );
        }
    }
}

#[test]
fn batched_decoding_equals_decoding_alone_across_window_8() {
    // Window 8: every suffix and most budgets cross it.
    check(
        "a-mxfp4",
        20,
        &[1, 3, 9, 2, 14, 5, 7],
        &[12, 4, 9, 15, 3, 10, 6],
        3,
    );
}

#[test]
fn batched_decoding_equals_decoding_alone_across_window_128() {
    // Window 128: the prefix ends before it, the items cross it while decoding.
    check("b-mxfp4", 110, &[2, 11, 5, 17, 1], &[30, 8, 24, 12, 20], 4);
}

#[test]
fn batches_large_enough_to_sort_experts_change_nothing() {
    // 16 rows × 4 experts reach the model's sorted expert gathering, which
    // one sequence alone never takes.
    let lens: Vec<usize> = (0..20).map(|i| 1 + (i * 7) % 13).collect();
    let budgets: Vec<usize> = (0..20).map(|i| 3 + (i * 5) % 9).collect();
    check("b-mxfp4", 30, &lens, &budgets, 16);
}

#[test]
fn sampled_sequences_draw_in_a_batch_what_they_draw_alone() {
    // Each sequence has its own seed and filters; greedy ones mix in.
    check_sampled("a-mxfp4", 12, &[2, 5, 1, 8, 3], &[9, 6, 11, 4, 7], 3, &|i| {
        SamplerOptions {
            temperature: if i == 2 { 0.0 } else { 0.7 + 0.1 * i as f32 },
            top_p: if i % 2 == 0 { 0.9 } else { 0.0 },
            top_k: if i == 3 { 20 } else { 0 },
            min_p: 0.0,
            seed: 1000 + i as u64,
        }
    });
}
