//! `safeguard serve`: the HTTP API (OpenAI-compatible, LM Studio-style,
//! classification) over one model.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::UsageError;
use crate::classify::policy::Policy;
use crate::distributed::serve::Lockstep;
use crate::distributed::{self, Mode};
use crate::engine::scheduler::Loaded;
use crate::harmony::Effort;
use crate::model::GptOss;
use crate::server::{self, Cors, Options};
use crate::tokenizer::Tokenizer;

/// Serve a model over HTTP to OpenAI clients, LM Studio-style tools and classification calls.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a local folder, a catalog alias (`safeguard ls`) or a hub repo id.
    #[arg(short, long, default_value = "safeguard-20b")]
    model: String,
    /// Address to listen on; anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (LM Studio's default; 0 picks a free one).
    #[arg(long, default_value_t = 1234)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request (also read from SAFEGUARD_API_KEY).
    #[arg(long, env = "SAFEGUARD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Let web pages of other origins use the server from a browser (CORS): the
    /// origins, comma-separated (`http://localhost:3000`), or none for any origin.
    #[arg(long, value_name = "ORIGINS", num_args = 0..=1, default_missing_value = "*")]
    cors: Option<String>,
    /// Requests decoded together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    max_batch: u32,
    /// Requests that may wait for a place beyond those decoding (each item of
    /// a /v1/classify call counts as one); more get 503.
    #[arg(long, default_value_t = 256)]
    queue: u32,
    /// Tokens of prompt and output together, at most (default: the model's).
    #[arg(long)]
    context_length: Option<usize>,
    /// Output tokens when a request does not say.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Output tokens of any request, at most: larger requests are cut there
    /// (finish_reason `length`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens_cap: Option<u64>,
    /// Reasoning effort when a request (or its policy) does not say.
    #[arg(long, default_value_t = Effort::Medium)]
    effort: Effort,
    /// The policy for /v1/moderations and /v1/classify requests that give none
    /// (a shipped name or a file).
    #[arg(short, long)]
    policy: Option<String>,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 8)]
    max_body_mib: usize,
    /// Memory for cached prompt prefixes (system message and policy), in MiB.
    #[arg(long, default_value_t = 1024)]
    prefix_cache_mib: usize,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a client gets to send a request's headers, and then as many for its body.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout: u64,
    /// Where the policy playground (the page at `/`) saves policies and their versions
    /// (default: $XDG_DATA_HOME/safeguard/policies, ~/.local/share/safeguard/policies).
    #[arg(long, value_name = "DIR")]
    policies_dir: Option<PathBuf>,
    /// /v1/responses kept in memory for `previous_response_id` (least recently
    /// used go first); 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    responses_store: usize,
    /// Memory for kept responses, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    responses_store_mib: usize,
    #[command(flatten)]
    engine: super::EngineArgs,
    #[command(flatten)]
    guard: super::GuardArgs,
    #[command(flatten)]
    distributed: super::DistributedArgs,
}

/// Prompt tokens per chunk while serving: a new prompt goes in one chunk per
/// decode step of the streams in flight, so a chunk's forward is the longest
/// pause they see, while every chunk also costs the newcomer a decode step
/// of the others. Measured on the CPU with the perf fixture (`LOAD=1 make
/// bench`, README): 128 gave the shortest worst pause (2.3 s against 3.9 s
/// at 256, 8.6 s at 512 and 1024), the most tokens/s and the quickest short
/// request behind a long prompt; the CPU kernels lose little at 128 rows. A
/// GPU runs a chunk of 512 in a fraction of a second and loses more to small
/// ones, so it keeps 512 (not measured here: no GPU).
fn serve_prefill_step() -> usize {
    if crate::mlx::default_device().is_gpu() {
        512
    } else {
        128
    }
}

pub fn run(args: Args) -> Result<()> {
    let args = Args {
        engine: args.engine.with_default_prefill_step(serve_prefill_step()),
        ..args
    };
    let usage = |e: anyhow::Error| anyhow::Error::from(UsageError(e));
    let policy = args
        .policy
        .as_deref()
        .map(Policy::find)
        .transpose()
        .map_err(|e| usage(e.into()))?;
    if args.context_length == Some(0) {
        return Err(usage(anyhow::anyhow!("--context-length must be at least 1")));
    }
    let cors = match &args.cors {
        Some(spec) => Cors::parse(spec).map_err(|e| usage(anyhow::anyhow!(e)))?,
        None => Cors::Off,
    };
    let policies_dir = args
        .policies_dir
        .clone()
        .or_else(server::default_policies_dir)
        .ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no home folder to keep saved policies in; give --policies-dir DIR"
            ))
        })?;
    let dir: PathBuf = super::resolve_model(&args.model)?;
    if !dir.join("config.json").is_file() {
        return Err(usage(anyhow::anyhow!(
            "{} is not a model folder (no config.json)",
            dir.display()
        )));
    }
    // Budgeted for one request filling the context, the most one can hold.
    let config = crate::model::Config::load(&dir).map_err(|e| usage(e.into()))?;
    let prefill_step = args.engine.prefill_step();
    let context = match args.context_length {
        Some(context) => context,
        None => default_context(&args, &dir, &config, prefill_step)?,
    };
    let load = split_load(&args, &dir, context, prefill_step).map_err(usage)?;
    if load.is_none() {
        super::check_memory(&dir, &args.engine, &args.guard, context, Some(prefill_step), None)?;
    }
    let options = Options {
        host: args.host,
        port: args.port,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        cors,
        max_batch: args.max_batch as usize,
        queue: args.queue as usize,
        context_length: Some(context),
        max_tokens: args.max_tokens,
        max_tokens_cap: args.max_tokens_cap.map(|n| n as usize),
        max_body_bytes: args.max_body_mib << 20,
        prefix_cache_bytes: args.prefix_cache_mib << 20,
        prefill_step,
        load: args.engine.load_options(),
        policy,
        effort: args.effort,
        shutdown_grace: Duration::from_secs(args.shutdown_timeout),
        max_connections: args.max_connections as usize,
        read_timeout: Duration::from_secs(args.read_timeout),
        policies_dir,
        responses_store: (args.responses_store, args.responses_store_mib << 20),
    };
    let whole = (dir.clone(), args.engine.load_options());
    server::run(&args.model, &dir, options, move || match load {
        Some(load) => load(),
        None => Ok(Loaded {
            model: GptOss::load(&whole.0, whole.1)?,
            lockstep: None,
        }),
    })
}

/// The context served when --context-length is not given: the model's, or,
/// where a request filling it would not fit this machine, the longest that
/// does (as Ollama sizes its default to the memory), said on stderr. A
/// split model, --force, or a machine where nothing fits keeps the model's,
/// and the guardrail then speaks.
fn default_context(
    args: &Args,
    dir: &std::path::Path,
    config: &crate::model::Config,
    prefill_step: usize,
) -> Result<usize> {
    let full = config.max_position_embeddings;
    if args.guard.force || args.distributed.parallel.is_some() {
        return Ok(full);
    }
    let request = args.engine.memory_request(full, Some(prefill_step), None);
    let budget = args.guard.budget();
    let usage = |e: distributed::Error| anyhow::Error::from(UsageError(e.into()));
    let fits = distributed::memory::estimate(dir, config, request)
        .map_err(usage)?
        .total()
        <= budget.bytes;
    if fits {
        return Ok(full);
    }
    match distributed::memory::longest_context(dir, config, request, &budget).map_err(usage)? {
        Some(context) => {
            eprintln!(
                "safeguard: serving a context of {context} tokens, the most that fits {} ({}); the model \
                 allows {full}: --context-length N to choose, --force to budget for {full} anyway",
                crate::hub::human_bytes(budget.bytes),
                budget.source
            );
            Ok(context)
        }
        None => Ok(full),
    }
}

/// Under `--parallel tensor|expert`: what loads this rank's part of the
/// model on the engine thread (MLX's group lives there), after checking
/// that a request filling `context` fits this rank; every rank prints its
/// share. Rank 0 then serves; the others follow its plans
/// ([`crate::distributed::serve`]).
fn split_load(
    args: &Args,
    dir: &std::path::Path,
    context: usize,
    prefill_step: usize,
) -> Result<Option<impl FnOnce() -> Result<Loaded> + Send + 'static>> {
    let parallel = match args.distributed.parallel {
        None => return Ok(None),
        Some(Mode::Split(parallel)) => parallel,
        Some(Mode::Data) => anyhow::bail!(
            "--parallel data shares the items of classify and eval among the ranks; serve splits one \
             model: use --parallel tensor or expert"
        ),
    };
    let memory = args
        .engine
        .memory_request(context.max(1), Some(prefill_step), None);
    let guard = (!args.guard.force).then(|| (memory, args.guard.budget()));
    let (dir, load) = (dir.to_path_buf(), args.engine.load_options());
    let (backend, peers) = (
        args.distributed.backend,
        Duration::from_secs(args.distributed.peer_timeout),
    );
    let step_timeout = Duration::from_secs(args.distributed.step_timeout);
    Ok(Some(move || {
        let (model, rank) = distributed::load(&dir, load, parallel, backend, peers, guard)
            .map_err(|e| UsageError(e.into()))?;
        super::announce(&rank, &model);
        let tokenizer = if rank.is_leader() {
            None
        } else {
            Some((Tokenizer::load(&dir)?, model.config.vocab_size as usize))
        };
        Ok(Loaded {
            lockstep: Some(Lockstep::new(rank.group, step_timeout, tokenizer)),
            model,
        })
    }))
}
