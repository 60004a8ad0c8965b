//! `safeguard bench`: model sizes and speed on this machine.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::UsageError;
use crate::bench::{self, BenchOptions, ModelResult};
use crate::harmony::Effort;
use crate::kernels;
use crate::mlx;

/// Benchmark models: sizes, prefill/decode tok/s, time to first token, peak memory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model (repeatable): a local folder, a catalog alias or a hub repo id.
    #[arg(short, long, required = true)]
    model: Vec<String>,
    /// Prompt length when --context is not given.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens generated per run (decode tok/s is measured over them).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Timed runs per setting (after one warm-up); median and min–max are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sweep context lengths (prompt tokens), e.g. 512,4096,16384.
    #[arg(long, value_delimiter = ',')]
    context: Option<Vec<usize>>,
    /// Also classify N synthetic items through the classifier (needs --policy).
    #[arg(long, value_name = "N", requires = "policy")]
    classify: Option<usize>,
    /// Policy for --classify: a shipped name or a file.
    #[arg(long)]
    policy: Option<String>,
    /// Token budget per classified item (random models never stop).
    #[arg(long, default_value_t = 32)]
    classify_max_tokens: usize,
    /// Reasoning effort for --classify.
    #[arg(long, default_value_t = Effort::Low)]
    effort: Effort,
    /// Items decoded together for --classify, as `classify --batch-size`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Also time each stage of the forward (embedding, attention, router,
    /// experts, head) at the first context, and the host's share of a decode step.
    #[arg(long)]
    profile: bool,
    /// Also compare the fast CPU kernels' next-token distributions with the
    /// exact ones over this many prompt positions (top-1 agreement, KL).
    #[arg(long, value_name = "POSITIONS")]
    fidelity: Option<usize>,
    /// Also time the constrained decoding mask (a JSON schema) per decode
    /// step, as a share of the step.
    #[arg(long)]
    constraint: bool,
    /// Skip the warm-up run.
    #[arg(long)]
    no_warmup: bool,
    #[command(flatten)]
    engine: super::EngineArgs,
    #[command(flatten)]
    distributed: super::DistributedArgs,
    #[command(flatten)]
    memory: super::MemoryArgs,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw tok/s against context per model into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let contexts = args.context.clone().unwrap_or_else(|| vec![args.prompt_tokens]);
    if contexts.contains(&0) {
        return Err(UsageError(anyhow::anyhow!("context lengths must be at least 1")).into());
    }
    let options = BenchOptions {
        contexts,
        gen_tokens: args.gen_tokens.max(1),
        runs: args.runs.max(1),
        warmup: !args.no_warmup,
        prefill_step: args.engine.prefill_step(),
        load: args.engine.load_options(),
        classify: args.classify.zip(args.policy.clone()),
        classify_max_tokens: args.classify_max_tokens,
        classify_effort: args.effort,
        classify_batch_size: args.batch_size as usize,
        profile: args.profile,
        fidelity: args.fidelity,
        constraint: args.constraint,
    };
    if args.distributed.parallel.is_some() {
        return run_split(&args, &options);
    }
    if let Some((_, policy)) = &options.classify {
        crate::classify::policy::Policy::find(policy).map_err(|e| UsageError(e.into()))?;
    }
    let dirs = args
        .model
        .iter()
        .map(|m| super::resolve_model(m).map(|d| (m.clone(), d)))
        .collect::<Result<Vec<_>>>()?;
    for (_, dir) in &dirs {
        if !dir.join("config.json").is_file() {
            return Err(UsageError(anyhow::anyhow!(
                "{} is not a model folder (no config.json)",
                dir.display()
            ))
            .into());
        }
    }
    let show_progress = std::io::stderr().is_terminal() || !args.json;
    let bandwidth = bench::memcpy_bandwidth();
    let mut results = Vec::new();
    for (name, dir) in &dirs {
        results.push(bench::bench_model(name, dir, &options, bandwidth, |line| {
            if show_progress {
                eprintln!("[{line}]");
            }
        })?);
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let out = json!({
            "machine": {
                "device": mlx::default_device().to_string(),
                "mlx_version": mlx::version(),
                "memory_bandwidth_bytes_per_sec": bandwidth,
                "bandwidth_method": "Rust memcpy of a 256 MiB buffer, best of 5, read + write bytes",
                "quantized_matmuls": kernels::describe(options.load.cpu_kernels),
            },
            "settings": {
                "gen_tokens": options.gen_tokens,
                "runs": options.runs,
                "warmup": options.warmup,
                "contexts": options.contexts,
            },
            "models": results,
        });
        writeln!(stdout, "{out}")?;
    } else {
        print_table(&mut stdout, &results, bandwidth, &options)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, bench::svg_plot(&results))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `bench --parallel`: this rank's part of one model; decode and prefill
/// tok/s as every rank sees them (rank 0 prints), and the time per token the
/// collectives take when replayed alone.
fn run_split(args: &Args, options: &BenchOptions) -> Result<()> {
    let [model] = args.model.as_slice() else {
        return Err(UsageError(anyhow::anyhow!("--parallel benchmarks one model at a time")).into());
    };
    if options.classify.is_some() || args.profile || args.fidelity.is_some() || args.plot.is_some() {
        return Err(UsageError(anyhow::anyhow!(
            "--classify, --profile, --fidelity and --plot run on one process; drop them with --parallel"
        ))
        .into());
    }
    let dir = super::resolve_model(model)?;
    let longest = options.contexts.iter().max().copied().unwrap_or(1);
    let (model, rank) = super::load_model(
        &dir,
        &args.engine,
        &args.distributed,
        &args.memory,
        longest,
        options.gen_tokens,
    )?;
    let rank = rank.expect("--parallel loads a split model");
    let vocab = model.config.vocab_size as u32;
    let mut rows = Vec::new();
    for &context in &options.contexts {
        let prompt = bench::synthetic_prompt(context.max(1), vocab, context as u64);
        if options.warmup {
            bench::time_generation(&model, &prompt, options.gen_tokens.min(8), options.prefill_step)?;
        }
        let runs = (0..options.runs)
            .map(|_| bench::time_generation(&model, &prompt, options.gen_tokens, options.prefill_step))
            .collect::<Result<Vec<_>>>()?;
        let decode = bench::Spread::of(&runs.iter().map(|r| r.decode_tps).collect::<Vec<_>>());
        let prefill = bench::Spread::of(&runs.iter().map(|r| r.prefill_tps).collect::<Vec<_>>());
        let collective = crate::distributed::time_collectives(&model, &rank, options.gen_tokens)?;
        rows.push((context, prefill, decode, collective));
    }
    if !rank.is_leader() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let contexts: Vec<_> = rows
            .iter()
            .map(|(context, prefill, decode, collective)| {
                json!({
                    "prompt_tokens": context,
                    "prefill_tokens_per_sec": prefill,
                    "decode_tokens_per_sec": decode,
                    "collectives_ms_per_token": collective * 1e3,
                    "collectives_share_of_decode": collective * decode.median,
                })
            })
            .collect();
        let out = json!({
            "model": model_name(&dir),
            "ranks": rank.group.size(),
            "parallel": rank.split.parallel.to_string(),
            "device": mlx::default_device().to_string(),
            "gen_tokens": options.gen_tokens,
            "runs": options.runs,
            "contexts": contexts,
        });
        writeln!(stdout, "{out}")?;
        return Ok(());
    }
    writeln!(
        stdout,
        "{} across {} ranks (--parallel {}), {} on each; {} run(s), {} generated tokens; median [min–max]",
        model_name(&dir),
        rank.group.size(),
        rank.split.parallel,
        mlx::default_device(),
        options.runs,
        options.gen_tokens
    )?;
    writeln!(
        stdout,
        "  {:>8} {:>24} {:>24} {:>18} {:>8}",
        "context", "prefill tok/s", "decode tok/s", "collectives ms/tok", "of decode"
    )?;
    for (context, prefill, decode, collective) in rows {
        let f = |s: bench::Spread| format!("{:.1} [{:.1}–{:.1}]", s.median, s.min, s.max);
        writeln!(
            stdout,
            "  {context:>8} {:>24} {:>24} {:>18.3} {:>7.1}%",
            f(prefill),
            f(decode),
            collective * 1e3,
            collective * decode.median * 100.0
        )?;
    }
    writeln!(
        stdout,
        "collectives: the all-sums of one decode token replayed alone (one [1, hidden] sum after each split \
         attention and expert block)"
    )?;
    Ok(())
}

fn model_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn print_table(
    out: &mut impl Write,
    results: &[ModelResult],
    bandwidth: f64,
    options: &BenchOptions,
) -> Result<()> {
    writeln!(
        out,
        "machine: {} (MLX {}); memory bandwidth {:.1} GB/s (Rust memcpy, 256 MiB, read+write); quantized matmuls: {}",
        mlx::default_device(),
        mlx::version(),
        bandwidth / 1e9,
        kernels::describe(options.load.cpu_kernels)
    )?;
    writeln!(
        out,
        "{} run(s) per setting{}, {} generated tokens; median [min–max]",
        options.runs,
        if options.warmup { " after a warm-up" } else { "" },
        options.gen_tokens
    )?;
    for r in results {
        let s = &r.stats;
        writeln!(out)?;
        writeln!(
            out,
            "{} ({}, {})\n  parameters {:.3} M, active/token {:.3} M, {:.2} bits/weight, {:.1} MB on disk, loaded in {:.1} s",
            r.model,
            r.path,
            r.dtype,
            s.parameters as f64 / 1e6,
            s.active_parameters as f64 / 1e6,
            s.bits_per_weight,
            s.bytes_on_disk as f64 / 1e6,
            r.load_seconds
        )?;
        writeln!(
            out,
            "  {:>8} {:>24} {:>24} {:>24} {:>22} {:>9} {:>7}",
            "context", "prefill tok/s", "decode tok/s", "TTFT ms", "peak MB", "ceiling", "of it"
        )?;
        for c in &r.contexts {
            let f = |s: bench::Spread, scale: f64| {
                format!(
                    "{:.1} [{:.1}–{:.1}]",
                    s.median / scale,
                    s.min / scale,
                    s.max / scale
                )
            };
            writeln!(
                out,
                "  {:>8} {:>24} {:>24} {:>24} {:>22} {:>9.1} {:>6.0}%",
                c.prompt_tokens,
                f(c.prefill_tokens_per_sec, 1.0),
                f(c.decode_tokens_per_sec, 1.0),
                f(c.time_to_first_token_ms, 1.0),
                f(c.peak_memory_bytes, 1e6),
                c.decode_ceiling_tokens_per_sec,
                c.achieved_fraction * 100.0
            )?;
        }
        if let Some(c) = &r.classify {
            writeln!(
                out,
                "  classify: {} items ({} policy, effort {}, ≤{} tokens each, batches of {}) in {:.1} s: {:.2} items/s, \
                 {:.1} tokens/s ({} prompt tokens, {} from the policy cache, {} generated)",
                c.items,
                c.policy,
                c.effort,
                c.max_tokens,
                c.batch_size,
                c.seconds,
                c.items_per_sec,
                c.tokens_per_sec,
                c.prompt_tokens,
                c.cached_tokens,
                c.completion_tokens
            )?;
        }
        if let Some(p) = &r.profile {
            write_profile(out, p)?;
        }
        if let Some(f) = &r.fidelity {
            writeln!(
                out,
                "  fast vs exact CPU kernels over {} positions: top-1 agreement {:.1}%, KL mean {:.2e} max {:.2e} nats",
                f.positions,
                f.top1_agreement * 100.0,
                f.mean_kl,
                f.max_kl
            )?;
        }
        if let Some(c) = &r.constraint {
            writeln!(
                out,
                "  constraint (JSON schema): mask {:.3} ms per decode step = {:.1}% of a {:.1} ms step \
                 ({} steps; in the driver it runs while the forward computes)",
                c.mask_ms, c.percent_of_step, c.step_ms, c.steps
            )?;
        }
    }
    writeln!(
        out,
        "\nceiling: bandwidth ÷ bytes read per decode token (weights of the dense layers and top-k experts, \
         KV at the context); \"of it\": measured decode ÷ ceiling"
    )?;
    Ok(())
}

fn write_profile(out: &mut impl Write, p: &crate::bench::Profile) -> std::io::Result<()> {
    let (prefill_total, decode_total) = p.stages.iter().fold((0.0, 0.0), |(a, b), (_, prefill, decode)| {
        (a + prefill, b + decode)
    });
    writeln!(
        out,
        "  profile (each stage evaluated alone): prefill of {} tokens, decode over {} steps",
        p.prompt_tokens, p.decode_steps
    )?;
    writeln!(
        out,
        "    {:<10} {:>12} {:>7} {:>14} {:>7}",
        "stage", "prefill ms", "share", "decode ms/tok", "share"
    )?;
    let share = |x: f64, total: f64| if total > 0.0 { 100.0 * x / total } else { 0.0 };
    for (stage, prefill, decode) in &p.stages {
        writeln!(
            out,
            "    {stage:<10} {prefill:>12.1} {:>6.1}% {decode:>14.2} {:>6.1}%",
            share(*prefill, prefill_total),
            share(*decode, decode_total)
        )?;
    }
    writeln!(
        out,
        "    a plain decode step: {:.2} ms building the graph on the host, {:.2} ms evaluating ({:.1}% host)",
        p.decode_build_ms,
        p.decode_eval_ms,
        share(p.decode_build_ms, p.decode_build_ms + p.decode_eval_ms)
    )
}
