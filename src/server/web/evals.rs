//! `/v1/evals`: a labelled set scored against a policy on the served model,
//! with `safeguard eval`'s machinery (the set readers, the metrics, the JSON
//! and HTML reports, the comparison with an earlier run). A run goes on in
//! the background; its progress is a server-sent event stream, `DELETE`
//! cancels it, and the finished run is the JSON of `safeguard eval --json`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::judge;
use crate::classify::input::Item;
use crate::classify::lint;
use crate::classify::policy::Policy;
use crate::classify::run::{self, Judge};
use crate::eval::cache::sha256_hex;
use crate::eval::compare::{self, Baseline};
use crate::eval::golden::{self, Columns, Example, RuleIds};
use crate::eval::html;
use crate::eval::manifest::{self, FileInfo, Manifest, ModelInfo};
use crate::eval::metrics;
use crate::eval::report::{self, Cost, Evaluation, Gate};
use crate::eval::results::Outcome;
use crate::server::error::{ApiError, Body};
use crate::server::request::{new_id, parse_effort, token_limit};
use crate::server::sse::{send, sse_with};
use crate::server::{AppState, Shared};

/// Finished runs kept for `GET`; older ones are forgotten.
const KEPT: usize = 32;
/// Examples in one run, at most: a set this large belongs to `safeguard eval`.
const MAX_EXAMPLES: usize = 10_000;

#[derive(Debug, Clone)]
pub enum Status {
    Running { done: usize, total: usize, seconds: f64 },
    Done(Arc<Finished>),
    Failed(String),
    Cancelled,
}

#[derive(Debug)]
pub struct Finished {
    pub evaluation: Evaluation,
    /// Every example with its answer, for the page's drill-downs.
    pub items: Vec<Value>,
}

impl Status {
    fn name(&self) -> &'static str {
        match self {
            Status::Running { .. } => "running",
            Status::Done(_) => "done",
            Status::Failed(_) => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The progress event: done of total, and an estimate of what is left.
    fn event(&self, id: &str) -> Value {
        let mut event = json!({"id": id, "status": self.name()});
        match self {
            Status::Running { done, total, seconds } => {
                event["done"] = json!(done);
                event["total"] = json!(total);
                event["elapsed_s"] = json!(seconds);
                let eta = (*done > 0).then(|| seconds / *done as f64 * (total - done) as f64);
                event["eta_s"] = json!(eta);
            }
            Status::Failed(message) => event["error"] = json!(message),
            Status::Done(_) | Status::Cancelled => {}
        }
        event
    }
}

struct Job {
    status: watch::Sender<Status>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The runs of this server.
#[derive(Default)]
pub struct Evals {
    jobs: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Arc<Job>>,
    /// Oldest first.
    order: VecDeque<String>,
}

impl Evals {
    fn get(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.by_id.get(id).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "no eval {id:?} on this server (runs are kept in memory, the last {KEPT}, until it stops)"
            ))
        })
    }

    fn add(&self, id: &str, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let Jobs { by_id: map, order } = &mut *jobs;
        map.insert(id.to_string(), job);
        order.push_back(id.to_string());
        while order.len() > KEPT {
            let finished = order.iter().position(|old| {
                map.get(old)
                    .is_some_and(|j| !matches!(*j.status.borrow(), Status::Running { .. }))
            });
            let Some(at) = finished else { break };
            let old = order.remove(at).expect("position is in range");
            map.remove(&old);
        }
    }

    fn remove(&self, id: &str) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.by_id.remove(id);
        jobs.order.retain(|old| old != id);
    }
}

#[derive(Debug, Deserialize)]
pub struct EvalRequest {
    /// The policy's text, or a shipped policy's name.
    policy: String,
    /// What the run calls the policy (its saved name); default "draft".
    policy_name: Option<String>,
    /// The labelled set as text: JSONL, CSV or TSV, as `set_name`'s extension says.
    set: Option<String>,
    /// E.g. `golden.csv`; the extension picks the reader (default `.jsonl`).
    set_name: Option<String>,
    text_col: Option<String>,
    label_col: Option<String>,
    id_col: Option<String>,
    effort: Option<String>,
    max_tokens: Option<i64>,
    target_recall: Option<f64>,
    /// An earlier run on this server, on the same set, to compare with.
    baseline: Option<String>,
}

/// What a run needs, checked before it starts.
struct Plan {
    policy: Policy,
    examples: Vec<Example>,
    dataset: FileInfo,
    effort: Option<crate::harmony::Effort>,
    max_tokens: Option<usize>,
    target_recall: Option<f64>,
    baseline: Option<Baseline>,
}

fn plan(state: &AppState, request: EvalRequest) -> Result<Plan, ApiError> {
    let name = request.policy_name.as_deref().unwrap_or("draft");
    let policy = match Policy::named(request.policy.trim()) {
        Some(shipped) => shipped,
        None => Policy::from_text(name, &request.policy).map_err(|e| ApiError::invalid_param("policy", e))?,
    };
    let rules = RuleIds::of(&policy);
    let columns = Columns {
        text: request.text_col,
        label: request.label_col.unwrap_or_else(|| "label".into()),
        id: request.id_col.unwrap_or_else(|| "id".into()),
    };
    let (set_name, set) = match (request.set, golden::shipped(&policy.name)) {
        (Some(set), _) => (request.set_name.unwrap_or_else(|| "set.jsonl".into()), set),
        (None, Some((name, text))) => (name, text.to_string()),
        (None, None) => {
            return Err(ApiError::invalid_param(
                "set",
                "give the labelled set as text in \"set\" (JSONL, CSV or TSV; name it in \"set_name\")",
            ))
        }
    };
    let set_name = Path::new(&set_name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(set_name);
    let examples = golden::parse(Path::new(&set_name), &set, &columns, &rules)
        .map_err(|e| ApiError::invalid_param("set", e.to_string()))?;
    if examples.is_empty() {
        return Err(ApiError::invalid_param(
            "set",
            format!("{set_name} holds no examples"),
        ));
    }
    if examples.len() > MAX_EXAMPLES {
        return Err(ApiError::invalid_param(
            "set",
            format!(
                "{} examples is more than {MAX_EXAMPLES}; run `safeguard eval --input` on a set this large",
                examples.len()
            ),
        ));
    }
    let dataset = FileInfo {
        name: set_name,
        path: None,
        sha256: sha256_hex(set.as_bytes()),
    };
    let baseline = match &request.baseline {
        None => None,
        Some(id) => {
            let job = state.web().evals.get(id)?;
            let Status::Done(finished) = job.status.borrow().clone() else {
                return Err(ApiError::invalid_param(
                    "baseline",
                    format!("eval {id:?} has not finished; compare with a finished run"),
                ));
            };
            let value = serde_json::to_value(&finished.evaluation).expect("an evaluation serialises");
            let baseline: Baseline = serde_json::from_value(value)
                .map_err(|e| ApiError::internal(format!("eval {id:?} cannot serve as a baseline: {e}")))?;
            baseline
                .check_same_set(&dataset.sha256)
                .map_err(|e| ApiError::invalid_param("baseline", e))?;
            Some(baseline)
        }
    };
    let (max_tokens, _) = token_limit(&[("max_tokens", request.max_tokens)])?;
    if let Some(r) = request.target_recall.filter(|r| !(0.0..=1.0).contains(r)) {
        return Err(ApiError::invalid_param(
            "target_recall",
            format!("{r} is not a number from 0 to 1"),
        ));
    }
    Ok(Plan {
        effort: parse_effort(request.effort.as_deref(), "effort")?,
        policy,
        examples,
        dataset,
        max_tokens,
        target_recall: request.target_recall,
        baseline,
    })
}

/// `POST /v1/evals`: checks the request, starts the run, and answers 202
/// with its id and where to follow it.
pub async fn create(
    State(state): State<Shared>,
    Body(request): Body<EvalRequest>,
) -> Result<Response, ApiError> {
    let plan = plan(&state, request)?;
    let slot = state.admit()?;
    let id = new_id("eval-");
    let total = plan.examples.len();
    let (status, _) = watch::channel(Status::Running {
        done: 0,
        total,
        seconds: 0.0,
    });
    let job = Arc::new(Job {
        status,
        task: Mutex::new(None),
    });
    state.web().evals.add(&id, job.clone());
    let task = {
        let (state, job) = (state.clone(), job.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let result = execute(&state, &plan, &job).await;
            job.status.send_replace(match result {
                Ok(finished) => Status::Done(Arc::new(finished)),
                Err(e) => Status::Failed(e.message),
            });
        })
    };
    *job.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    let body = json!({
        "id": id,
        "object": "eval",
        "status": "running",
        "total": total,
        "events": format!("/v1/evals/{id}/events"),
        "result": format!("/v1/evals/{id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Classifies each distinct text once, a window at a time so other
/// requests keep their turn, then scores the run as `safeguard eval` does.
async fn execute(state: &AppState, plan: &Plan, job: &Job) -> Result<Finished, ApiError> {
    let policy = &plan.policy;
    let options = judge::options(state, policy, plan.effort, plan.max_tokens);
    let judge = Judge::new(state.tokenizer(), policy, options.clone())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut todo: Vec<Item> = Vec::new();
    let mut queued = HashSet::new();
    for example in &plan.examples {
        let hash = sha256_hex(example.item.content.as_bytes());
        if queued.insert(hash.clone()) {
            todo.push(Item {
                id: hash,
                content: example.item.content.clone(),
            });
        }
    }
    let total = plan.examples.len();
    let per_text: HashMap<&str, usize> = plan.examples.iter().fold(HashMap::new(), |mut m, e| {
        *m.entry(e.item.content.as_str()).or_default() += 1;
        m
    });
    let start = Instant::now();
    let window = state.options().max_batch.max(1) * 2;
    let mut fresh: HashMap<String, Value> = HashMap::new();
    let mut done = 0;
    let group = state.group();
    for chunk in todo.chunks(window) {
        let pending = chunk
            .iter()
            .map(|item| judge::submit(state, &judge, item, group))
            .collect::<Result<Vec<_>, _>>()?;
        for (item, pending) in chunk.iter().zip(pending) {
            let result = pending.finish(state, &judge, |_| {}).await?;
            done += per_text[item.content.as_str()];
            fresh.insert(item.id.clone(), result.to_json());
            job.status.send_replace(Status::Running {
                done,
                total,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut outcomes = HashMap::new();
    for example in &plan.examples {
        let mut value = fresh[&sha256_hex(example.item.content.as_bytes())].clone();
        value["id"] = Value::String(example.item.id.clone());
        let outcome = Outcome::from_json(value).map_err(ApiError::internal)?;
        outcomes.insert(example.item.id.clone(), outcome);
    }
    let cost = Cost {
        wall_seconds: Some(seconds),
        items_per_second: (seconds > 0.0).then(|| todo.len() as f64 / seconds),
        classified: todo.len() as u64,
        ..Cost::default()
    };
    let served = state.model();
    let load = &state.options().load;
    let manifest = Manifest {
        safeguard_version: env!("CARGO_PKG_VERSION").into(),
        mlx_version: crate::mlx::version(),
        device: crate::mlx::default_device().to_string(),
        model: Some(ModelInfo {
            name: served.id.clone(),
            path: served.path.display().to_string(),
            fingerprint: manifest::model_fingerprint(&served.path).unwrap_or_default(),
        }),
        policy: FileInfo {
            name: policy.name.clone(),
            path: None,
            sha256: sha256_hex(policy.identity().as_bytes()),
        },
        dataset: plan.dataset.clone(),
        results_file: None,
        effort: run::effort(policy, &options).to_string(),
        temperature: options.sampler.temperature,
        seed: options.sampler.seed,
        max_tokens: options.max_tokens,
        dtype: format!("{:?}", load.compute).to_lowercase(),
        cpu_kernels: load.cpu_kernels.to_string(),
        constrain: false,
        cache: None,
        date: manifest::utc_now(),
    };
    let metric_options = metrics::Options {
        target_recall: plan.target_recall,
        ..Default::default()
    };
    let mut evaluation = report::evaluate(
        &plan.examples,
        &outcomes,
        &RuleIds::of(policy),
        &metric_options,
        manifest,
        &Gate::default(),
        cost,
    );
    let tokens = state
        .tokenizer()
        .encode_ordinary(&policy.text)
        .ok()
        .map(|ids| ids.len());
    let source = policy.source().unwrap_or_else(|_| policy.text.clone());
    evaluation.lint = Some(lint::lint(policy, &source, tokens));
    if let Some(baseline) = &plan.baseline {
        evaluation.comparison = Some(compare::compare(baseline, &evaluation, &plan.examples));
    }
    let items = plan
        .examples
        .iter()
        .map(|e| {
            let o = &outcomes[&e.item.id];
            json!({
                "id": e.item.id,
                "text": e.item.content,
                "gold": u8::from(e.gold.violates),
                "gold_category": e.gold.category,
                "label": o.label,
                "outcome": o.outcome,
                "policy_category": o.policy_category,
                "p_violation": o.p_violation(),
                "rationale": o.rationale,
                "reasoning": o.reasoning,
                "error": o.error,
            })
        })
        .collect();
    Ok(Finished { evaluation, items })
}

fn finished(state: &AppState, id: &str) -> Result<Arc<Finished>, ApiError> {
    let job = state.web().evals.get(id)?;
    let status = job.status.borrow().clone();
    match status {
        Status::Done(finished) => Ok(finished),
        Status::Running { done, total, .. } => Err(ApiError::conflict(format!(
            "eval {id:?} is still running ({done} of {total} examples); follow /v1/evals/{id}/events"
        ))),
        Status::Failed(message) => Err(ApiError::invalid(format!("eval {id:?} failed: {message}"))),
        Status::Cancelled => Err(ApiError::not_found(format!("eval {id:?} was cancelled"))),
    }
}

/// `GET /v1/evals/{id}`: the run as `safeguard eval --json` prints it.
pub async fn get(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let finished = finished(&state, &id)?;
    Ok(Json(
        serde_json::to_value(&finished.evaluation).expect("an evaluation serialises"),
    ))
}

/// `GET /v1/evals/{id}/items`: every example with its gold label and answer.
pub async fn items(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let finished = finished(&state, &id)?;
    Ok(Json(json!({"id": id, "items": finished.items})))
}

/// `GET /v1/evals/{id}/report`: the HTML report of `safeguard eval --report`, as a download.
pub async fn report_html(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let finished = finished(&state, &id)?;
    let page = html::render(&finished.evaluation);
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.html\""),
            ),
        ],
        page,
    )
        .into_response())
}

/// `GET /v1/evals/{id}/status`: the progress event, once.
pub async fn status(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.web().evals.get(&id)?;
    let event = job.status.borrow().event(&id);
    Ok(Json(event))
}

/// `GET /v1/evals/{id}/events`: progress as server-sent events, one per
/// finished example, ending with the run's end (`done`, `failed`, `cancelled`).
pub async fn events(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let job = state.web().evals.get(&id)?;
    let mut status = job.status.subscribe();
    Ok(sse_with(
        state,
        move |_, tx| async move {
            loop {
                let current = status.borrow_and_update().clone();
                if !send(&tx, current.event(&id)).await {
                    return false;
                }
                if !matches!(current, Status::Running { .. }) || status.changed().await.is_err() {
                    return true;
                }
            }
        },
        false,
    ))
}

/// `DELETE /v1/evals/{id}`: cancels a running eval (its generations stop)
/// and forgets it.
pub async fn delete(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.web().evals.get(&id)?;
    let was_running = matches!(*job.status.borrow(), Status::Running { .. });
    if let Some(task) = job.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
        task.abort();
    }
    if was_running {
        job.status.send_replace(Status::Cancelled);
    }
    state.web().evals.remove(&id);
    Ok(Json(json!({"id": id, "deleted": true, "cancelled": was_running})))
}
