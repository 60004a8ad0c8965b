//! `safeguard serve`: an HTTP API over one loaded model (axum on tokio).
//!
//! - OpenAI-compatible: `/v1/models`, `/v1/chat/completions`,
//!   `/v1/completions`, `/v1/responses` ([`models`], [`chat`],
//!   [`completions`], [`responses`]), with the request fields they share in
//!   [`request`] and event streams in [`sse`];
//! - LM Studio's REST API: `/api/v0/models`, `/api/v0/chat/completions`,
//!   `/api/v0/completions` ([`lmstudio`]);
//! - classification: `/v1/classify` and `/v1/moderations` ([`classify`]);
//! - the policy playground: the page at `/` and its API, `/v1/policies`,
//!   `/v1/try`, `/v1/evals` ([`web`]).
//!
//! MLX arrays must stay on the thread that made them, so one engine thread
//! owns the model ([`crate::engine::scheduler`]) and handlers talk to it over
//! channels. A request takes an admission place (decoding or queued; one per
//! item of a classification) before it reaches the engine; when none is left
//! it gets 503 with `Retry-After`. Each request is a group of its own in the
//! engine's [`crate::engine::driver`], which shares its slots between groups.

mod chat;
mod classify;
mod completions;
mod conn;
mod error;
mod guard;
mod lmstudio;
mod models;
mod request;
mod responses;
mod sse;
mod store;
mod tools;
mod turn;
mod web;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::watch;

pub use self::error::ApiError;
pub use self::guard::Cors;
use self::turn::Turn;
pub use self::web::default_dir as default_policies_dir;
use crate::classify::policy::Policy;
use crate::constrain::{Guide, Vocabulary};
use crate::engine::driver::{DriverOptions, Event, Job};
use crate::engine::generate::GenerateOptions;
use crate::engine::sampler::SamplerOptions;
use crate::engine::scheduler::{Engine, Loaded, Request as EngineRequest};
use crate::harmony::Effort;
use crate::model::{self, Config, LoadOptions};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct Options {
    pub host: IpAddr,
    pub port: u16,
    pub api_key: Option<String>,
    /// Web pages (origins) allowed to use the server from a browser.
    pub cors: Cors,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests waiting for a slot, beyond those decoding.
    pub queue: usize,
    /// Prompt plus output, at most; the model's own limit when None.
    pub context_length: Option<usize>,
    /// Output tokens when a request does not say.
    pub max_tokens: usize,
    /// Output tokens of any request, at most, whatever it asks for.
    pub max_tokens_cap: Option<usize>,
    pub max_body_bytes: usize,
    pub prefix_cache_bytes: usize,
    pub prefill_step: usize,
    pub load: LoadOptions,
    /// The policy of `/v1/moderations` requests that name none.
    pub policy: Option<Policy>,
    /// Reasoning effort when a request does not say.
    pub effort: Effort,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and then its body.
    pub read_timeout: Duration,
    /// Where the playground saves policies (`--policies-dir`).
    pub policies_dir: PathBuf,
    /// `/v1/responses` kept for `previous_response_id`, at most (count, bytes).
    pub responses_store: (usize, usize),
}

/// The model being served, as the listing endpoints describe it.
#[derive(Debug, Clone)]
pub struct Served {
    /// The id clients send as `model`.
    pub id: String,
    /// Other names accepted for it (what `-m` said, the folder's name).
    pub aliases: Vec<String>,
    pub path: PathBuf,
    pub config: Config,
    pub quantization: String,
    pub stop_tokens: Vec<u32>,
    pub context_length: usize,
    pub created: u64,
}

impl Served {
    pub fn answers_to(&self, name: &str) -> bool {
        name == self.id || self.aliases.iter().any(|a| a == name)
    }
}

/// Requests decoding or waiting, against the most there may be.
struct Admission {
    taken: AtomicUsize,
    limit: usize,
}

/// A request's places; freed when dropped (the response is done or the
/// client left).
pub struct Slot(Arc<Admission>, usize);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(self.1, Ordering::SeqCst);
    }
}

pub struct AppState {
    engine: Engine,
    tokenizer: Tokenizer,
    model: Served,
    options: Options,
    admission: Arc<Admission>,
    /// Set when the shutdown grace has run out: requests still running stop.
    deadline: watch::Sender<bool>,
    web: web::Web,
    /// The last engine group handed out (see [`AppState::group`]).
    groups: AtomicU64,
    /// The longest token, in bytes: text longer than the context times this
    /// cannot fit, which is known before tokenizing it.
    max_token_bytes: usize,
    /// The grammar engine's view of the vocabulary, built by the first
    /// request that asks for structured output (it takes a moment).
    vocabulary: OnceLock<Result<Vocabulary, String>>,
    responses: store::Store,
}

pub type Shared = Arc<AppState>;

/// What a handler asks the engine for.
pub struct Generate {
    pub prompt: Vec<u32>,
    pub cache_prefix: usize,
    /// Output tokens; the server's default (within the context) when None.
    pub max_tokens: Option<usize>,
    /// The request field that set `max_tokens`, for error messages.
    pub max_tokens_param: &'static str,
    pub sampler: SamplerOptions,
    pub top_logprobs: Option<usize>,
    pub watch: Vec<u32>,
    /// The engine group of the request ([`AppState::group`]), which the
    /// generations of one request share; a group of its own when None.
    pub group: Option<u64>,
}

impl AppState {
    pub fn model(&self) -> &Served {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    fn web(&self) -> &web::Web {
        &self.web
    }

    fn responses(&self) -> &store::Store {
        &self.responses
    }

    /// 404 unless `model` names the served model (absent or empty is fine:
    /// there is only one).
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(name) if !name.is_empty() && !self.model.answers_to(name) => {
                Err(ApiError::model_not_found(name, &self.model.id))
            }
            _ => Ok(()),
        }
    }

    /// A place for one request, or 503.
    pub fn admit(&self) -> Result<Slot, ApiError> {
        self.admit_items(1, "input")
    }

    /// Places for a request of `items` generations (`param` holds them):
    /// 503 when they are not free now, 400 when they never could be.
    pub fn admit_items(&self, items: usize, param: &str) -> Result<Slot, ApiError> {
        let a = &self.admission;
        if let Some(why) = self.engine.lost() {
            return Err(ApiError::engine_lost(why));
        }
        if items > a.limit {
            return Err(ApiError::invalid_param(
                param,
                format!(
                    "{items} items is more than this server runs or queues at once ({}, \
                     --max-batch plus --queue); send fewer per request, or raise --queue",
                    a.limit
                ),
            ));
        }
        let taken = a.taken.fetch_add(items, Ordering::SeqCst);
        let slot = Slot(a.clone(), items);
        if taken + items > a.limit {
            return Err(ApiError::overloaded(1));
        }
        Ok(slot)
    }

    /// Runs `prepare` (which tokenizes) on the blocking pool, so that a large
    /// request does not hold up the async workers serving everyone else.
    pub async fn off_thread<T: Send + 'static>(
        self: &Arc<Self>,
        prepare: impl FnOnce(&Shared) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || prepare(&state))
            .await
            .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
    }

    /// 400 for `bytes` of text (in `param`) that cannot fit in the context
    /// whatever its tokens, found without tokenizing it.
    pub fn check_text(&self, bytes: usize, param: &str) -> Result<(), ApiError> {
        let limit = self.model.context_length;
        let fewest = bytes.div_ceil(self.max_token_bytes.max(1));
        if fewest >= limit {
            return Err(ApiError::context_length(format!(
                "{param} is {bytes} bytes, at least {fewest} tokens, but the context is {limit} tokens \
                 (prompt and output together); shorten it{}",
                self.context_hint()
            )));
        }
        Ok(())
    }

    /// A new engine group, for one request's generations.
    pub fn group(&self) -> u64 {
        self.groups.fetch_add(1, Ordering::Relaxed)
    }

    pub fn vocabulary(&self) -> Result<&Vocabulary, ApiError> {
        self.vocabulary
            .get_or_init(|| {
                Vocabulary::new(&self.tokenizer, self.model.config.vocab_size as usize)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| ApiError::internal(format!("structured output is unavailable: {e}")))
    }

    /// Checks `request` against the context and starts it, with the answer
    /// or tool calls held to `guide` when there is one.
    pub fn generate_guided(
        &self,
        request: Generate,
        guide: Option<Guide>,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        self.submit(request, guide, false)
    }

    /// As [`AppState::generate_guided`]; `keep_prompt` keeps the prompt's
    /// state in the prefix cache for a follow-up that continues it.
    fn submit(
        &self,
        request: Generate,
        guide: Option<Guide>,
        keep_prompt: bool,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let limit = self.model.context_length;
        let prompt_len = request.prompt.len();
        if prompt_len == 0 {
            return Err(ApiError::invalid("the prompt is empty"));
        }
        let vocab = self.model.config.vocab_size as u32;
        if let Some(bad) = request.prompt.iter().find(|&&id| id >= vocab) {
            return Err(ApiError::invalid_param(
                "prompt",
                format!("token id {bad} is outside the vocabulary (0..{vocab})"),
            ));
        }
        if prompt_len >= limit {
            return Err(ApiError::context_length(format!(
                "the prompt is {prompt_len} tokens, but the context is {limit} tokens \
                 (prompt and output together); shorten the prompt{}",
                self.context_hint()
            )));
        }
        let room = limit - prompt_len;
        let cap = self.options.max_tokens_cap.unwrap_or(usize::MAX);
        let max_tokens = match request.max_tokens.map(|n| n.min(cap)) {
            Some(0) => {
                return Err(ApiError::invalid_param(
                    request.max_tokens_param,
                    format!("{} must be at least 1", request.max_tokens_param),
                ))
            }
            Some(n) if n > room => {
                return Err(ApiError::context_length(format!(
                    "the prompt is {prompt_len} tokens and {} asks for {n} more, but the context is \
                     {limit} tokens; ask for at most {room}{}",
                    request.max_tokens_param,
                    self.context_hint()
                )))
            }
            Some(n) => n,
            None => self.options.max_tokens.min(cap).min(room),
        };
        let (events, receiver) = unbounded_channel();
        self.engine
            .submit(EngineRequest {
                job: Job {
                    prompt: request.prompt,
                    cache_prefix: request.cache_prefix,
                    keep_prompt,
                    options: GenerateOptions {
                        max_tokens,
                        prefill_step: self.options.prefill_step,
                        sampler: request.sampler,
                    },
                    stop_tokens: self.model.stop_tokens.clone(),
                    top_logprobs: request.top_logprobs,
                    watch: request.watch,
                    group: request.group.unwrap_or_else(|| self.group()),
                    guide,
                },
                events,
            })
            .map_err(|e| match self.engine.lost() {
                Some(why) => ApiError::engine_lost(why),
                None => ApiError::internal(e.to_string()),
            })?;
        Ok(receiver)
    }

    /// Tells when the shutdown grace has run out (see [`turn::past`]).
    pub fn deadline(&self) -> watch::Receiver<bool> {
        self.deadline.subscribe()
    }

    fn context_hint(&self) -> &'static str {
        if self.options.context_length.is_some() {
            " or raise --context-length"
        } else {
            ""
        }
    }

    /// Checks `request` and starts it: everything that can be wrong with a
    /// request is found here, before a streamed answer's 200 is sent.
    pub fn start(&self, request: Generate, guide: Option<Guide>) -> Result<Started, ApiError> {
        self.start_kept(request, guide, false)
    }

    /// As [`AppState::start`]; `keep_prompt` as in [`AppState::submit`].
    fn start_kept(
        &self,
        request: Generate,
        guide: Option<Guide>,
        keep_prompt: bool,
    ) -> Result<Started, ApiError> {
        let prompt_tokens = request.prompt.len();
        let events = self.submit(request, guide, keep_prompt)?;
        Ok(Started {
            events,
            prompt_tokens,
        })
    }

    /// Reads a started generation's output as harmony (`chat`) or text.
    pub fn turn(&self, started: Started, chat: bool, stops: Vec<String>) -> Result<Turn<'_>, ApiError> {
        Turn::new(
            &self.tokenizer,
            started.events,
            self.deadline.subscribe(),
            started.prompt_tokens,
            chat,
            stops,
        )
    }
}

/// A generation the engine has accepted; dropping it cancels it.
pub struct Started {
    events: UnboundedReceiver<Event>,
    prompt_tokens: usize,
}

/// How long a server whose engine is lost keeps answering 503 (and
/// `/health` says why) before it exits: clients and load balancers learn
/// the reason rather than meeting a closed port.
const LOST_LINGER: Duration = Duration::from_secs(5);

/// Loads the model at `dir` with `load` (the whole model, or under a split
/// model this rank's part) and serves it until SIGINT or SIGTERM, or until a
/// rank is lost (an error). A rank other than 0 serves nothing: it follows
/// rank 0 until rank 0 closes.
pub fn run(
    model_arg: &str,
    dir: &Path,
    options: Options,
    load: impl FnOnce() -> anyhow::Result<Loaded> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(model_arg, dir, options, load))
}

async fn serve(
    model_arg: &str,
    dir: &Path,
    options: Options,
    load: impl FnOnce() -> anyhow::Result<Loaded> + Send + 'static,
) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::load(dir)?;
    let config = Config::load(dir)?;
    let stop_tokens = model::stop_tokens(dir, &config)?;
    let load_start = Instant::now();
    let driver = DriverOptions {
        max_slots: options.max_batch,
        prefix_cache_bytes: options.prefix_cache_bytes,
    };
    let Some(engine) = Engine::start(load, driver)? else {
        return Ok(());
    };
    let max_token_bytes = (0..config.vocab_size as u32)
        .filter_map(|id| tokenizer.token_bytes(id))
        .map(|bytes| bytes.len())
        .max()
        .unwrap_or(1);
    let served = describe(model_arg, dir, config, stop_tokens, &options);
    tracing::info!(
        model = %served.id,
        path = %dir.display(),
        seconds = format_args!("{:.1}", load_start.elapsed().as_secs_f64()),
        "model loaded"
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(options.host, options.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", options.host, options.port))?;
    let address = listener.local_addr()?;
    if !options.host.is_loopback() {
        tracing::warn!(
            "listening on {} exposes the model to the network{}",
            options.host,
            if options.api_key.is_none() {
                " without --api-key"
            } else {
                ""
            }
        );
    }
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        admission: Arc::new(Admission {
            taken: AtomicUsize::new(0),
            limit: options.max_batch.max(1) + options.queue,
        }),
        model: served,
        web: web::Web::new(options.policies_dir.clone()),
        responses: store::Store::new(options.responses_store.0, options.responses_store.1),
        options,
        deadline: watch::channel(false).0,
        groups: AtomicU64::new(0),
        max_token_bytes,
        vocabulary: OnceLock::new(),
    });
    let grace = state.options.shutdown_grace;
    let limits = conn::Limits {
        max_connections: state.options.max_connections,
        read_timeout: state.options.read_timeout,
    };
    let connections = conn::Connections::new(&limits);
    // Scripts (and the tests) read the address from this line.
    eprintln!("safeguard: serving on http://{address}/v1");
    eprintln!("safeguard: policy playground at http://{address}/");
    let lost = {
        let state = state.clone();
        async move {
            let why = state.engine.until_lost().await;
            tracing::error!("{why}; refusing requests for {LOST_LINGER:?}, then exiting");
            tokio::time::sleep(LOST_LINGER).await;
        }
    };
    // One listener for the whole run, so that a second signal sent right
    // after the first (before a new listener would be in place) is not lost.
    let (first_signal, first_signal_seen) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        signals.next().await;
        let _ = first_signal.send(());
        signals.next().await;
        eprintln!("safeguard: second signal, exiting now");
        // Without atexit handlers: MLX's static destructors would run while the
        // engine thread still uses MLX, and abort. 128 + SIGINT, as a shell
        // reports a process ended by Ctrl-C.
        unsafe { libc::_exit(130) };
    });
    connections
        .serve(listener, router(state.clone()), &limits, async {
            tokio::select! {
                _ = first_signal_seen => {}
                () = lost => {}
            }
        })
        .await;
    if let Some(why) = state.engine.lost() {
        let _ = tokio::time::timeout(Duration::from_secs(5), connections.closed()).await;
        anyhow::bail!("{why}");
    }
    tracing::info!(
        "shutting down: finishing in-flight requests (at most {grace:?}); a second signal ends them now"
    );
    if tokio::time::timeout(grace, connections.closed()).await.is_ok() {
        return Ok(());
    }
    let cut = state.admission.taken.load(Ordering::SeqCst);
    state.deadline.send_replace(true);
    // Cut requests send their error (and `[DONE]`) and close; a connection
    // that still does not is dropped with the process.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.closed()).await;
    if cut > 0 {
        anyhow::bail!(
            "shutdown: {cut} request(s) still running after {grace:?} (--shutdown-timeout) were cut"
        );
    }
    Ok(())
}

/// SIGINT and SIGTERM. The streams are made once: a signal delivered while
/// nobody awaits `next` is still seen by the next call.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                interrupt: signal(SignalKind::interrupt()).expect("a SIGINT handler can be installed"),
                terminate: signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn describe(model_arg: &str, dir: &Path, config: Config, stop_tokens: Vec<u32>, options: &Options) -> Served {
    let folder = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let looks_like_path =
        model_arg.starts_with('.') || model_arg.starts_with('/') || Path::new(model_arg).is_dir();
    // A hub repo or alias is its own id; a folder goes by its name.
    let id = if looks_like_path {
        folder.clone()
    } else {
        model_arg.to_string()
    };
    let mut aliases = vec![model_arg.to_string(), folder];
    if let Some(entry) = crate::hub::catalog::find(model_arg) {
        aliases.push(entry.repo.clone());
    }
    aliases.retain(|a| !a.is_empty() && *a != id);
    let context_length = options
        .context_length
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    Served {
        id,
        aliases,
        path: dir.to_path_buf(),
        quantization: crate::hub::cache::quantization(dir).unwrap_or_else(|| "unknown".into()),
        config,
        stop_tokens,
        context_length,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

fn router(state: Shared) -> Router {
    let max_body = state.options.max_body_bytes;
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models::models))
        .route("/v1/models/{*id}", get(models::model))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/classify", post(classify::classify))
        .route("/v1/moderations", post(classify::moderations))
        .route("/api/v0/models", get(lmstudio::models))
        .route("/api/v0/models/{*id}", get(lmstudio::model))
        .route("/api/v0/chat/completions", post(lmstudio::chat_completions))
        .route("/api/v0/completions", post(lmstudio::completions))
        .merge(web::routes())
        .fallback(unknown_endpoint)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard::authorize));
    if let Some(cors) = state.options.cors.layer() {
        app = app.layer(cors);
    }
    // The guard comes before CORS, so a preflight from a refused origin is
    // refused too; the log sees every request, refused or not.
    app.layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::from_fn(web::headers))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn health(State(state): State<Shared>) -> Response {
    if let Some(why) = state.engine.lost() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "lost", "model": state.model.id, "error": why})),
        )
            .into_response();
    }
    let a = &state.admission;
    Json(json!({
        "status": "ok",
        "model": state.model.id,
        "requests": a.taken.load(Ordering::SeqCst),
        "decoding": state.engine.decoding(),
        "prefilling": state.engine.prefilling(),
        "waiting": state.engine.waiting(),
        "capacity": a.limit,
    }))
    .into_response()
}

async fn unknown_endpoint(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {method} {}", uri.path()))
}

/// Tokens and speed of a finished generation, for the request log.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub tokens_per_second: f64,
}

async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    // Every answer carries an id (the OpenAI SDK's `request_id`), also in the log.
    let request_id = request::new_id("req_");
    let start = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    match response.extensions_mut().remove::<Usage>() {
        Some(u) => tracing::info!(
            %method, %path, status, prompt_tokens = u.prompt_tokens, completion_tokens = u.completion_tokens,
            tok_s = format_args!("{:.1}", u.tokens_per_second), latency_ms = format_args!("{latency_ms:.0}"), %request_id, "request"
        ),
        None if streamed => tracing::info!(%method, %path, status, %request_id, "stream started"),
        None => {
            tracing::info!(%method, %path, status, latency_ms = format_args!("{latency_ms:.0}"), %request_id, "request")
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
