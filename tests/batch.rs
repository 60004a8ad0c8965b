//! The batch driver equals decoding alone, bit for bit: greedy and sampled
//! tokens and every log-probability, for jobs of different lengths that
//! share one prefix (from the prefix cache), join and leave mid-batch (at
//! their token limit, or cancelled while their next step is already
//! computing), cross sliding windows, and arrive with long prompts that are
//! prefilled in chunks between the decode steps of the others. The order of
//! events shows what chunked admission and slot sharing promise: streams in
//! flight get a token at every step of an admission, a short prompt is not
//! held up by a long one, a cancelled prefill stops, and a new request gets
//! the next free slot ahead of another request's remaining items.

mod common;

use std::collections::HashMap;

use safeguard_mlx::engine::cache::make_caches;
use safeguard_mlx::engine::driver::{Driver, DriverOptions, Event, Job, JobId};
use safeguard_mlx::engine::generate::{prefill, GenerateOptions, Generation};
use safeguard_mlx::engine::sampler::SamplerOptions;
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

/// Generated tokens and each step's whole distribution.
type Run = (Vec<u32>, Vec<Vec<f32>>);

fn model(name: &str) -> GptOss {
    GptOss::load(&common::fixture(name), ComputeDtype::Float32).unwrap()
}

/// Decodes `budget` tokens after `prefix` + `suffix` alone: the prefix
/// prefilled by itself (as a prefix cache holds it), then the suffix.
fn alone(model: &GptOss, prefix: &[u32], suffix: &[u32], budget: usize, options: GenerateOptions) -> Run {
    let mut caches = make_caches(model);
    prefill(model, &mut caches, prefix, options.prefill_step).unwrap();
    let options = GenerateOptions {
        max_tokens: budget,
        ..options
    };
    let mut run = (Vec::new(), Vec::new());
    for step in Generation::with_caches(model, caches, suffix, options).unwrap() {
        let step = step.unwrap();
        run.0.push(step.token);
        run.1.push(step.logprobs.to_vec::<f32>().unwrap());
    }
    run
}

/// A job for `prefix` + `suffix` that reports the whole distribution of
/// every step (every id watched).
fn job(model: &GptOss, prefix: &[u32], suffix: &[u32], options: GenerateOptions, group: u64) -> Job {
    Job {
        prompt: prefix.iter().chain(suffix).copied().collect(),
        cache_prefix: prefix.len(),
        keep_prompt: false,
        options,
        stop_tokens: Vec::new(),
        top_logprobs: None,
        watch: (0..model.config.vocab_size as u32).collect(),
        group,
        guide: None,
    }
}

fn driver(model: &GptOss, slots: usize) -> Driver<'_> {
    Driver::new(
        model,
        DriverOptions {
            max_slots: slots,
            prefix_cache_bytes: 64 << 20,
        },
    )
}

fn assert_same(name: &str, i: usize, got: &Run, want: &Run) {
    assert_eq!(got.0, want.0, "{name} item {i}: tokens");
    assert_eq!(got.1.len(), want.1.len());
    for (t, (a, b)) in got.1.iter().zip(&want.1).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} item {i} step {t}: log-probabilities differ"
        );
    }
}

/// Collects runs from driver events; true for a job's last event.
fn record(runs: &mut HashMap<JobId, Run>, id: JobId, event: Event) -> bool {
    match event {
        Event::Started { .. } => false,
        Event::Token(token) => {
            let run = runs.entry(id).or_default();
            run.0.push(token.id);
            run.1.push(token.watched);
            false
        }
        Event::Finished(_) => true,
        Event::Failed(message) => panic!("job {id:?} failed: {message}"),
    }
}

/// Runs every `(suffix, budget)` through a driver of `slots` slots, all
/// submitted at once. Even items leave by their token limit, odd ones are
/// cancelled by the caller at their budget.
fn batched(
    model: &GptOss,
    prefix: &[u32],
    items: &[(Vec<u32>, usize)],
    slots: usize,
    options: &dyn Fn(usize) -> GenerateOptions,
) -> Vec<Run> {
    let mut driver = driver(model, slots);
    let ids: Vec<JobId> = items
        .iter()
        .enumerate()
        .map(|(i, (suffix, budget))| {
            let options = GenerateOptions {
                max_tokens: budget + (i % 2) * 5,
                ..options(i)
            };
            driver.submit(job(model, prefix, suffix, options, 0))
        })
        .collect();
    let index = |id: JobId| ids.iter().position(|&j| j == id).unwrap();
    let mut runs = HashMap::new();
    let (mut peak, mut done) = (0, 0);
    while !driver.is_idle() {
        for (id, event) in driver.step() {
            done += usize::from(record(&mut runs, id, event));
            let run = runs.entry(id).or_default();
            if run.0.len() == items[index(id)].1 && index(id) % 2 == 1 {
                driver.cancel(id);
                done += 1;
            }
        }
        peak = peak.max(driver.running());
    }
    assert_eq!(done, items.len());
    assert_eq!(peak, slots.min(items.len()));
    ids.iter().map(|id| runs.remove(id).unwrap()).collect()
}

fn check(name: &str, prefix_len: usize, suffix_lens: &[usize], budgets: &[usize], slots: usize) {
    check_with(name, prefix_len, suffix_lens, budgets, slots, &|_| {
        GenerateOptions::default()
    });
}

fn check_with(
    name: &str,
    prefix_len: usize,
    suffix_lens: &[usize],
    budgets: &[usize],
    slots: usize,
    options: &dyn Fn(usize) -> GenerateOptions,
) {
    let model = model(name);
    let prefix = tokens(prefix_len, 1);
    let items: Vec<(Vec<u32>, usize)> = suffix_lens
        .iter()
        .zip(budgets)
        .enumerate()
        .map(|(i, (&len, &budget))| (tokens(len, 100 + i as u64), budget))
        .collect();
    let together = batched(&model, &prefix, &items, slots, options);
    for (i, ((suffix, budget), run)) in items.iter().zip(&together).enumerate() {
        assert_same(name, i, run, &alone(&model, &prefix, suffix, *budget, options(i)));
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
    check_with("a-mxfp4", 12, &[2, 5, 1, 8, 3], &[9, 6, 11, 4, 7], 3, &|i| {
        GenerateOptions {
            sampler: SamplerOptions {
                temperature: if i == 2 { 0.0 } else { 0.7 + 0.1 * i as f32 },
                top_p: if i % 2 == 0 { 0.9 } else { 0.0 },
                top_k: if i == 3 { 20 } else { 0 },
                min_p: 0.0,
                seed: 1000 + i as u64,
            },
            ..Default::default()
        }
    });
}

#[test]
fn prompts_prefilled_in_chunks_between_steps_equal_prefilling_alone() {
    // Chunks of 3 cut the prefix and the suffixes (up to 40 tokens) across
    // window 8 many times, while the other slots decode.
    check_with(
        "a-mxfp4",
        17,
        &[40, 2, 25, 1, 33, 9],
        &[6, 14, 9, 12, 5, 8],
        3,
        &|i| GenerateOptions {
            prefill_step: 3,
            sampler: SamplerOptions {
                temperature: if i % 3 == 0 { 0.0 } else { 0.8 },
                seed: 7 + i as u64,
                ..Default::default()
            },
            ..Default::default()
        },
    );
}

/// What happened at each step: the jobs that got a token, and the jobs
/// whose prompt went in.
#[derive(Default)]
struct Step {
    tokens: Vec<JobId>,
    started: Vec<JobId>,
    ended: Vec<JobId>,
}

fn step(driver: &mut Driver<'_>, runs: &mut HashMap<JobId, Run>) -> Step {
    let mut seen = Step::default();
    for (id, event) in driver.step() {
        match &event {
            Event::Started { .. } => seen.started.push(id),
            Event::Token(_) => seen.tokens.push(id),
            Event::Finished(_) | Event::Failed(_) => seen.ended.push(id),
        }
        record(runs, id, event);
    }
    seen
}

#[test]
fn streams_keep_decoding_while_long_prompts_arrive_and_short_ones_pass_them() {
    let model = model("a-mxfp4");
    let step_tokens = 4;
    let options = |max_tokens| GenerateOptions {
        max_tokens,
        prefill_step: step_tokens,
        ..Default::default()
    };
    let prefix = tokens(6, 1);
    let streams = [tokens(3, 10), tokens(5, 11)];
    let long = [tokens(60, 12), tokens(45, 13)];
    let short = tokens(2, 14);
    let mut driver = driver(&model, 6);
    let mut runs = HashMap::new();
    let running: Vec<JobId> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| driver.submit(job(&model, &prefix, s, options(60), i as u64)))
        .collect();
    while running
        .iter()
        .any(|id| runs.get(id).is_none_or(|r: &Run| r.0.len() < 3))
    {
        step(&mut driver, &mut runs);
    }
    // Two long prompts arrive mid-stream, then a short one behind them.
    let arrivals: Vec<JobId> = long
        .iter()
        .enumerate()
        .map(|(i, l)| driver.submit(job(&model, &prefix, l, options(5), 10 + i as u64)))
        .collect();
    let late = driver.submit(job(&model, &prefix, &short, options(5), 20));
    let mut admission = Vec::new();
    loop {
        let seen = step(&mut driver, &mut runs);
        let all_in = arrivals
            .iter()
            .all(|a| seen.started.contains(a) || admission.iter().any(|s: &Step| s.started.contains(a)));
        admission.push(seen);
        if all_in {
            break;
        }
    }
    // 60 and 45 prompt tokens in chunks of 4: at least 26 steps, every one
    // of which gave each running stream its next token.
    assert!(
        admission.len() >= (59 + 44) / step_tokens,
        "{} steps",
        admission.len()
    );
    for (n, seen) in admission.iter().enumerate() {
        for id in &running {
            assert!(
                seen.tokens.contains(id),
                "stream {id:?} got no token at step {n} of the admission"
            );
        }
    }
    let started_at = |id: JobId| admission.iter().position(|s| s.started.contains(&id)).unwrap();
    assert!(
        started_at(late) < 4,
        "the short prompt waited for the long ones ({} steps)",
        started_at(late)
    );
    while !driver.is_idle() {
        step(&mut driver, &mut runs);
    }
    for (i, (suffix, id)) in streams.iter().zip(&running).enumerate() {
        assert_same(
            "stream",
            i,
            &runs[id],
            &alone(&model, &prefix, suffix, 60, options(60)),
        );
    }
    for (i, (suffix, id)) in long
        .iter()
        .chain([&short])
        .zip(arrivals.iter().chain([&late]))
        .enumerate()
    {
        assert_same(
            "arrival",
            i,
            &runs[id],
            &alone(&model, &prefix, suffix, 5, options(5)),
        );
    }
    // One prefix, prefilled once: the first job stored it, the others hit it.
    assert_eq!(driver.prefix_cache().stats(), (4, 1));
}

#[test]
fn a_cancelled_prompt_stops_prefilling_at_the_next_chunk() {
    let model = model("a-mxfp4");
    let mut driver = driver(&model, 2);
    let options = GenerateOptions {
        max_tokens: 4,
        prefill_step: 2,
        ..Default::default()
    };
    let mut runs = HashMap::new();
    let long = driver.submit(job(&model, &[], &tokens(200, 3), options, 0));
    let seen = step(&mut driver, &mut runs);
    assert!(seen.started.is_empty() && seen.tokens.is_empty());
    assert_eq!(driver.prefilling(), 1);
    driver.cancel(long);
    assert_eq!((driver.prefilling(), driver.running()), (0, 0));
    assert!(driver.is_idle());
    let seen = step(&mut driver, &mut runs);
    assert!(seen.started.is_empty() && seen.tokens.is_empty() && seen.ended.is_empty());
}

#[test]
fn a_new_request_gets_the_next_free_slot_ahead_of_another_requests_items() {
    let model = model("a-mxfp4");
    let options = |max_tokens| GenerateOptions {
        max_tokens,
        ..Default::default()
    };
    let prefix = tokens(5, 1);
    let mut driver = driver(&model, 2);
    let mut runs = HashMap::new();
    // One request of eight items fills both slots, and alone keeps them full.
    let items: Vec<JobId> = (0..8)
        .map(|i| {
            driver.submit(job(
                &model,
                &prefix,
                &tokens(2, 30 + i),
                options(3 + i as usize % 2),
                1,
            ))
        })
        .collect();
    // (The second waits one step for the first to store the shared prefix.)
    while driver.running() < 2 {
        step(&mut driver, &mut runs);
    }
    assert_eq!(driver.waiting(), 6);
    let chat = driver.submit(job(&model, &prefix, &tokens(3, 99), options(4), 2));
    let mut started = Vec::new();
    let mut ended = Vec::new();
    while !driver.is_idle() {
        let seen = step(&mut driver, &mut runs);
        started.extend(seen.started);
        ended.extend(seen.ended);
    }
    // The chat starts before any item that was still waiting when it came.
    let position = |id: &JobId| started.iter().position(|s| s == id).unwrap();
    for id in &items[2..] {
        assert!(
            position(&chat) < position(id),
            "item {id:?} started before the chat: {started:?}"
        );
    }
    assert_eq!(ended.len(), 9);
    assert!(runs.values().all(|r| !r.0.is_empty()));
}

/// Runs `job` alone through `driver`: the tokens cached when it started, and its run.
fn run_one(driver: &mut Driver<'_>, job: Job) -> (usize, Run) {
    let id = driver.submit(job);
    let (mut cached, mut runs) = (None, HashMap::new());
    while !driver.is_idle() {
        for (at, event) in driver.step() {
            assert_eq!(at, id);
            if let Event::Started { cached_tokens } = event {
                cached = Some(cached_tokens);
            } else {
                record(&mut runs, id, event);
            }
        }
    }
    (
        cached.expect("the job started"),
        runs.remove(&id).unwrap_or_default(),
    )
}

#[test]
fn a_kept_prompt_is_where_the_conversation_continuing_it_starts() {
    let model = model("a-mxfp4");
    let (head, turn, next) = (tokens(20, 11), tokens(30, 12), tokens(25, 13));
    let options = GenerateOptions {
        max_tokens: 6,
        ..Default::default()
    };
    let mut driver = driver(&model, 2);
    let mut first = job(&model, &head, &turn, options, 0);
    first.keep_prompt = true;
    assert_eq!(run_one(&mut driver, first).0, 0);

    // The follow-up starts with the whole earlier prompt: all of it but its
    // last token comes from the cache, the longest stored beginning.
    let rest: Vec<u32> = turn.iter().chain(&next).copied().collect();
    let mut second = job(&model, &head, &rest, options, 0);
    second.keep_prompt = true;
    let (cached, got) = run_one(&mut driver, second);
    assert_eq!(cached, head.len() + turn.len() - 1);
    // The same, computed without the driver: the head, the earlier prompt's
    // remainder, then the new tokens, in the chunks the driver cut.
    let mut caches = make_caches(&model);
    prefill(&model, &mut caches, &head, options.prefill_step).unwrap();
    prefill(&model, &mut caches, &turn[..turn.len() - 1], options.prefill_step).unwrap();
    let mut want = (Vec::new(), Vec::new());
    for step in Generation::with_caches(&model, caches, &rest[turn.len() - 1..], options).unwrap() {
        let step = step.unwrap();
        want.0.push(step.token);
        want.1.push(step.logprobs.to_vec::<f32>().unwrap());
    }
    assert_same("follow-up", 0, &got, &want);

    // The head was kept on its own as well, for requests that only share it.
    let other = job(&model, &head, &tokens(9, 14), options, 0);
    assert_eq!(run_one(&mut driver, other).0, head.len());
}
