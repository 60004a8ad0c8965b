//! LM Studio's REST API (`/api/v0`): model listings with the enum values its
//! clients check (`type` llm, `state` loaded / not-loaded,
//! `compatibility_type` mlx), and completions with `stats`, `model_info` and
//! `runtime` added.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::chat::{run_chat, ChatRequest};
use super::completions::{run_completion, CompletionRequest};
use super::error::{ApiError, Body};
use super::turn::Outcome;
use super::Shared;
use crate::hub::{cache, HubConfig};
use crate::model::Config;

pub async fn models(State(state): State<Shared>) -> Json<Value> {
    let mut data = vec![loaded(&state)];
    data.extend(downloaded(&state).into_iter().map(|(_, entry)| entry));
    Json(json!({"object": "list", "data": data}))
}

pub async fn model(State(state): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if state.model().answers_to(&id) {
        return Ok(Json(loaded(&state)));
    }
    downloaded(&state)
        .into_iter()
        .find(|(repo, _)| repo.eq_ignore_ascii_case(&id))
        .map(|(_, entry)| Json(entry))
        .ok_or_else(|| ApiError::not_found(format!("no model `{id}` here: see GET /api/v0/models")))
}

fn publisher(id: &str) -> &str {
    id.split_once('/').map_or("local", |(org, _)| org)
}

fn loaded(state: &Shared) -> Value {
    let m = state.model();
    json!({
        "id": m.id,
        "object": "model",
        "type": "llm",
        "publisher": publisher(&m.id),
        "arch": m.config.model_type,
        "compatibility_type": "mlx",
        "quantization": m.quantization,
        "state": "loaded",
        "max_context_length": m.config.max_position_embeddings,
        "loaded_context_length": m.context_length,
        "capabilities": ["tool_use"],
    })
}

/// gpt-oss models in the hub cache that are complete, other than the one
/// loaded: listed as `not-loaded` (this server never loads them itself).
fn downloaded(state: &Shared) -> Vec<(String, Value)> {
    let hub = HubConfig::from_env();
    let Ok(models) = cache::scan(&hub.cache_dir) else {
        return Vec::new();
    };
    models
        .into_iter()
        .filter(|m| m.missing.is_empty() && m.is_gpt_oss())
        .filter(|m| !state.model().answers_to(&m.repo) && m.snapshot != state.model().path)
        .filter_map(|m| {
            let config = Config::load(&m.snapshot).ok()?;
            let entry = json!({
                "id": m.repo,
                "object": "model",
                "type": "llm",
                "publisher": publisher(&m.repo),
                "arch": config.model_type,
                "compatibility_type": "mlx",
                "quantization": m.quantization.unwrap_or_else(|| "unknown".into()),
                "state": "not-loaded",
                "max_context_length": config.max_position_embeddings,
                "capabilities": ["tool_use"],
            });
            Some((m.repo, entry))
        })
        .collect()
}

pub async fn chat_completions(State(state): State<Shared>, Body(request): Body<ChatRequest>) -> Response {
    match state.off_thread(|state| request.into_chat(state)).await {
        Ok(chat) => run_chat(state, chat, extras).await,
        Err(e) => e.into_response(),
    }
}

pub async fn completions(State(state): State<Shared>, Body(request): Body<CompletionRequest>) -> Response {
    run_completion(state, request, extras).await
}

/// `stats`, `model_info` and `runtime` of an `/api/v0` completion.
fn extras(state: &Shared, outcome: &Outcome) -> Vec<(&'static str, Value)> {
    let m = state.model();
    let stop_reason = outcome.finish_reason.lm_studio_reason();
    vec![
        (
            "stats",
            json!({
                "tokens_per_second": outcome.tokens_per_second(),
                "time_to_first_token": outcome.time_to_first_token.as_secs_f64(),
                "generation_time": outcome.elapsed.as_secs_f64(),
                "stop_reason": stop_reason,
            }),
        ),
        (
            "model_info",
            json!({
                "arch": m.config.model_type,
                "quant": m.quantization,
                "format": "mlx",
                "context_length": m.context_length,
            }),
        ),
        (
            "runtime",
            json!({
                "name": "safeguard-mlx",
                "version": env!("CARGO_PKG_VERSION"),
                "supported_formats": ["mlx"],
            }),
        ),
    ]
}
