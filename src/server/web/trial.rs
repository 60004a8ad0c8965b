//! `POST /v1/try`: a policy and a few items (texts or conversations), judged
//! on the served model with the reasoning streamed as it is written. The
//! events are server-sent: `reasoning` pieces per item, then each item's
//! `result` (the verdict object of `safeguard classify --json` plus
//! `p_violation`), then `[DONE]`.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::unbounded_channel;

use super::judge;
use crate::classify::input::{json_item, Item};
use crate::classify::policy::Policy;
use crate::classify::run::Judge;
use crate::eval::results::Outcome;
use crate::server::error::{ApiError, Body};
use crate::server::request::{parse_effort, token_limit};
use crate::server::sse::{send, sse};
use crate::server::Shared;

/// Items per request, at most: more is an eval.
const MAX_ITEMS: usize = 32;

#[derive(Debug, Deserialize)]
pub struct TryRequest {
    /// The policy's text, or a shipped policy's name.
    policy: String,
    /// Each `{"id"?, "text"}` or `{"id"?, "messages": [{"role", "content"}]}`,
    /// as a line of `safeguard classify --input FILE.jsonl`.
    input: Vec<Value>,
    effort: Option<String>,
    max_tokens: Option<i64>,
}

fn items(input: Vec<Value>) -> Result<Vec<Item>, ApiError> {
    if input.is_empty() || input.len() > MAX_ITEMS {
        return Err(ApiError::invalid_param(
            "input",
            format!(
                "give 1 to {MAX_ITEMS} items (got {}); run larger sets as an eval",
                input.len()
            ),
        ));
    }
    input
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            json_item(&value, i + 1).map_err(|e| ApiError::invalid_param(&format!("input[{i}]"), e))
        })
        .collect()
}

pub async fn create(
    State(state): State<Shared>,
    Body(request): Body<TryRequest>,
) -> Result<Response, ApiError> {
    let policy = match Policy::named(request.policy.trim()) {
        Some(shipped) => shipped,
        None => {
            Policy::from_text("draft", &request.policy).map_err(|e| ApiError::invalid_param("policy", e))?
        }
    };
    let effort = parse_effort(request.effort.as_deref(), "effort")?;
    let (max_tokens, _) = token_limit(&[("max_tokens", request.max_tokens)])?;
    let items = items(request.input)?;
    let slot = state.admit()?;
    Ok(sse(state, move |state, tx| async move {
        let _slot = slot;
        // The judging runs apart, so a reasoning piece (a sync callback)
        // becomes an event without waiting on the client.
        let (events, mut received) = unbounded_channel::<Value>();
        let judging = tokio::spawn(async move {
            let options = judge::options(&state, &policy, effort, max_tokens);
            let run = async {
                let judge = Judge::new(state.tokenizer(), &policy, options)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let group = state.group();
                let pending = items
                    .iter()
                    .map(|item| judge::submit(&state, &judge, item, group))
                    .collect::<Result<Vec<_>, _>>()?;
                for (index, (item, pending)) in items.iter().zip(pending).enumerate() {
                    let _ = events.send(json!({"type": "start", "index": index, "id": item.id}));
                    let result = pending
                        .finish(&state, &judge, |text| {
                            let _ = events.send(json!({"type": "reasoning", "index": index, "text": text}));
                        })
                        .await?;
                    let mut result = result.to_json();
                    let p = Outcome::from_json(result.clone())
                        .ok()
                        .and_then(|o| o.p_violation());
                    result["p_violation"] = json!(p);
                    let _ = events.send(json!({"type": "result", "index": index, "result": result}));
                }
                Ok::<_, ApiError>(())
            };
            if let Err(e) = run.await {
                let _ = events.send(json!({"type": "error", "error": e.body()["error"].clone()}));
            }
        });
        while let Some(event) = received.recv().await {
            if !send(&tx, event).await {
                judging.abort();
                return false;
            }
        }
        true
    }))
}
