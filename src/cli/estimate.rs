//! `safeguard estimate`: the memory a model needs here (per rank when split),
//! from its headers alone, against what the device gives.

use anyhow::Result;
use serde_json::json;

use super::UsageError;
use crate::distributed::memory;
use crate::distributed::Parallel;
use crate::hub::human_bytes;
use crate::model::Config;

/// Estimate a model's memory: weights, KV cache at a context, working buffers.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a local folder, a catalog alias or a hub repo id.
    #[arg(short, long)]
    model: String,
    /// Tokens of context to budget the KV cache for.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    context_length: usize,
    /// Ranks the model would be split across (with --parallel).
    #[arg(long, default_value_t = 1, requires = "parallel", value_parser = clap::value_parser!(i32).range(1..))]
    ranks: i32,
    /// How it would be split: tensor or expert.
    #[arg(long, value_parser = clap::builder::ValueParser::new(str::parse::<Parallel>))]
    parallel: Option<Parallel>,
    #[command(flatten)]
    engine: super::EngineArgs,
    /// The memory to fit in, instead of what this device reports (e.g. 64GB).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    memory_budget: Option<u64>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = super::resolve_model(&args.model)?;
    let config = Config::load(&dir).map_err(|e| UsageError(e.into()))?;
    let request = args.engine.memory_request(
        args.context_length.max(1),
        None,
        args.parallel.map(|p| (p, args.ranks)),
    );
    let estimate = memory::estimate(&dir, &config, request).map_err(|e| UsageError(e.into()))?;
    let budget = super::GuardArgs {
        force: false,
        memory_budget: args.memory_budget,
    }
    .budget();
    let verdict = memory::check(&dir, &config, request, &budget);
    if args.json {
        println!(
            "{}",
            json!({
                "model": dir,
                "context_length": estimate.context,
                "ranks": estimate.ranks,
                "parallel": args.parallel.map(|p| p.to_string()),
                "weights_bytes": estimate.weights,
                "kv_cache_bytes": estimate.kv_cache,
                "working_bytes": estimate.working,
                "total_bytes": estimate.total(),
                "available_bytes": budget.bytes,
                "available_source": budget.source,
                "fits": verdict.is_ok(),
                "advice": verdict.as_ref().err().map(|e| e.to_string()),
            })
        );
        return Ok(());
    }
    println!("{}: {estimate}", dir.display());
    println!("available: {} ({})", human_bytes(budget.bytes), budget.source);
    match verdict {
        Ok(_) => println!("fits"),
        Err(e) => println!("{e}"),
    }
    Ok(())
}
