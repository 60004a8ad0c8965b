//! `POST /v1/classify` (a policy, one or many items → the verdict objects of
//! `safeguard classify --json`) and `POST /v1/moderations` (OpenAI's
//! moderation shape, the policy as an extra field, so moderation clients
//! can switch over). Items of a request are decoded together by the engine,
//! and the policy's KV state is cached across requests.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Body};
use super::request::{new_id, parse_effort, token_limit, Content};
use super::web::judge::{options as classify_options, submit_prompt};
use super::{Shared, Usage};
use crate::classify::combine::combine;
use crate::classify::input::Item;
use crate::classify::policy::{shipped_names, Policy};
use crate::classify::run::{Classification, Judge};
use crate::harmony::Finish;

/// Items per request, at most: larger jobs belong to `safeguard classify --input`.
const MAX_ITEMS: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Items {
    One(String),
    Many(Vec<ItemField>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ItemField {
    Text(String),
    Object { id: Option<Value>, content: Content },
    Part { text: String },
}

impl Items {
    fn into_items(self) -> Result<Vec<Item>, ApiError> {
        let fields = match self {
            Items::One(text) => vec![ItemField::Text(text)],
            Items::Many(fields) => fields,
        };
        if fields.is_empty() {
            return Err(ApiError::invalid_param(
                "input",
                "give at least one item to classify",
            ));
        }
        if fields.len() > MAX_ITEMS {
            return Err(ApiError::invalid_param(
                "input",
                format!(
                    "{} items is more than {MAX_ITEMS} per request; split them, or use `safeguard classify --input`",
                    fields.len()
                ),
            ));
        }
        fields
            .into_iter()
            .enumerate()
            .map(|(i, field)| {
                let (id, content) = match field {
                    ItemField::Text(text) => (None, text),
                    ItemField::Part { text } => (None, text),
                    ItemField::Object { id, content } => (id, content.text(&format!("input[{i}].content"))?),
                };
                let id = match id {
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    _ => (i + 1).to_string(),
                };
                Ok(Item { id, content })
            })
            .collect()
    }
}

/// A shipped policy's name, or the policy itself as text (in request field
/// `param`). Never a path: nothing in a request reaches the filesystem.
fn policy(spec: Option<&str>, fallback: Option<&Policy>, param: &str) -> Result<Policy, ApiError> {
    let Some(spec) = spec else {
        return fallback.cloned().ok_or_else(|| {
            ApiError::invalid_param(
                param,
                format!(
                    "give a policy: a shipped name ({}) or the policy text (or start the server with --policy)",
                    shipped_names().join(", ")
                ),
            )
        });
    };
    if let Some(policy) = Policy::named(spec) {
        return Ok(policy);
    }
    // One short word is a name that was mistyped, not a policy.
    if !spec.trim().contains(char::is_whitespace) && spec.len() <= 64 {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "no shipped policy is called {spec:?} (shipped: {}); to use your own, send its full text",
                shipped_names().join(", ")
            ),
        ));
    }
    Policy::from_text("custom", spec).map_err(|e| ApiError::invalid_param(param, e))
}

/// Classifies `items`, all submitted at once so the engine decodes them
/// together; results in the order of `items`.
async fn classify_items(
    state: &Shared,
    policy: &Policy,
    effort: Option<crate::harmony::Effort>,
    max_tokens: Option<usize>,
    items: &[Item],
    constrain: bool,
) -> Result<Vec<Classification>, ApiError> {
    let options = classify_options(state, policy, effort, max_tokens);
    let internal = |e: crate::harmony::Error| ApiError::internal(e.to_string());
    for (i, item) in items.iter().enumerate() {
        state.check_text(
            policy.text.len() + item.content.len(),
            &format!("input[{i}] with the policy"),
        )?;
    }
    let prompts = {
        let (policy, options) = (policy.clone(), options.clone());
        let contents: Vec<String> = items.iter().map(|item| item.content.clone()).collect();
        state
            .off_thread(move |state| {
                let judge = Judge::new(state.tokenizer(), &policy, options).map_err(internal)?;
                contents
                    .iter()
                    .map(|content| judge.prompt(content).map_err(internal))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
    };
    let mut judge = Judge::new(state.tokenizer(), policy, options).map_err(internal)?;
    if constrain {
        let vocabulary = state.vocabulary()?.clone();
        judge
            .constrain(vocabulary)
            .map_err(|e| ApiError::invalid_param("constrain", e.to_string()))?;
    }
    let group = state.group();
    let started = items
        .iter()
        .zip(prompts)
        .map(|(item, prompt)| submit_prompt(state, &judge, item, prompt, max_tokens, group))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(items.len());
    for pending in started {
        results.push(pending.finish(state, &judge, |_| {}).await?);
    }
    Ok(results)
}

/// 422 for the `i`th item, which has no verdict: why, and what to change.
fn no_verdict(i: usize, r: &Classification) -> ApiError {
    let why = match r.finish {
        Finish::Length => format!(
            "the model was cut off after {} tokens, before its answer; raise max_tokens or lower the effort",
            r.completion_tokens
        ),
        _ => r
            .error
            .clone()
            .unwrap_or_else(|| "the answer has no label".into()),
    };
    ApiError::no_verdict(format!(
        "no verdict for input[{i}] (id {}): {why}; /v1/classify shows each item's raw answer",
        r.id
    ))
}

/// The response, with the items' tokens for the request log.
fn logged(body: Json<Value>, results: &[Classification]) -> Response {
    let completion_tokens: usize = results.iter().map(|r| r.completion_tokens).sum();
    let slowest = results.iter().map(|r| r.latency).max().unwrap_or_default();
    let mut response = body.into_response();
    response.extensions_mut().insert(Usage {
        prompt_tokens: results.iter().map(|r| r.prompt_tokens).sum(),
        completion_tokens,
        tokens_per_second: if slowest.is_zero() {
            0.0
        } else {
            completion_tokens as f64 / slowest.as_secs_f64()
        },
    });
    response
}

#[derive(Debug, Deserialize)]
pub struct ClassifyRequest {
    model: Option<String>,
    policy: Option<String>,
    /// Several policies, each as `policy` takes it: every item is judged
    /// against each, and the result combines them as `classify` does.
    policies: Option<Vec<String>>,
    input: Items,
    effort: Option<String>,
    reasoning_effort: Option<String>,
    max_tokens: Option<i64>,
    /// Hold every answer to the policy's declared output.
    #[serde(default)]
    constrain: bool,
}

/// The policies of a request: `policies`, else `policy` (or the server's).
fn policies(request: &ClassifyRequest, fallback: Option<&Policy>) -> Result<Vec<Policy>, ApiError> {
    let Some(specs) = &request.policies else {
        return Ok(vec![policy(request.policy.as_deref(), fallback, "policy")?]);
    };
    if request.policy.is_some() {
        return Err(ApiError::invalid_param(
            "policies",
            "give \"policy\" or \"policies\", not both",
        ));
    }
    if specs.is_empty() {
        return Err(ApiError::invalid_param(
            "policies",
            "give at least one policy: a shipped name or a policy's text",
        ));
    }
    let mut out: Vec<Policy> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let mut policy = policy(Some(spec), None, &format!("policies[{i}]"))?;
        if policy.path.is_none() && Policy::named(&policy.name).is_none() {
            // Texts sent inline are told apart by their place in the list.
            policy.name = format!("policies[{i}]");
        }
        if out.iter().any(|p| p.name == policy.name) {
            return Err(ApiError::invalid_param(
                &format!("policies[{i}]"),
                format!("{:?} is already in the list; give each policy once", policy.name),
            ));
        }
        out.push(policy);
    }
    Ok(out)
}

pub async fn classify(State(state): State<Shared>, Body(request): Body<ClassifyRequest>) -> Response {
    let run = async {
        state.check_model(request.model.as_deref())?;
        let policies = policies(&request, state.options().policy.as_ref())?;
        let effort = parse_effort(
            request.effort.as_deref().or(request.reasoning_effort.as_deref()),
            "effort",
        )?;
        let (max_tokens, _) = token_limit(&[("max_tokens", request.max_tokens)])?;
        let items = request.input.into_items()?;
        let _slot = state.admit_items(items.len() * policies.len(), "input")?;
        let mut each = Vec::with_capacity(policies.len());
        for policy in &policies {
            each.push(classify_items(&state, policy, effort, max_tokens, &items, request.constrain).await?);
        }
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        let body = match each.as_slice() {
            [results] => json!({
                "object": "classification",
                "model": state.model().id,
                "policy": names[0],
                "results": results.iter().map(Classification::to_json).collect::<Vec<_>>(),
            }),
            _ => json!({
                "object": "classification",
                "model": state.model().id,
                "policies": names,
                "results": items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let judged: Vec<(&Policy, Value)> =
                            policies.iter().zip(&each).map(|(p, r)| (p, r[i].to_json())).collect();
                        combine(&item.id, &judged)
                    })
                    .collect::<Vec<_>>(),
            }),
        };
        let all: Vec<Classification> = each.into_iter().flatten().collect();
        Ok::<_, ApiError>(logged(Json(body), &all))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
pub struct ModerationRequest {
    model: Option<String>,
    input: Items,
    /// Not in OpenAI's API: the policy to moderate against.
    policy: Option<String>,
    effort: Option<String>,
    /// Not in OpenAI's API: the token budget of each item's reasoning and answer.
    max_tokens: Option<i64>,
}

pub async fn moderations(State(state): State<Shared>, Body(request): Body<ModerationRequest>) -> Response {
    let run = async {
        // Moderation clients send OpenAI's model names; only another local model is refused.
        if let Some(model) = request
            .model
            .as_deref()
            .filter(|m| !m.starts_with("omni-moderation") && !m.starts_with("text-moderation"))
        {
            state.check_model(Some(model))?;
        }
        let policy = policy(
            request.policy.as_deref(),
            state.options().policy.as_ref(),
            "policy",
        )?;
        let effort = parse_effort(request.effort.as_deref(), "effort")?;
        let (max_tokens, _) = token_limit(&[("max_tokens", request.max_tokens)])?;
        let items = request.input.into_items()?;
        let _slot = state.admit_items(items.len(), "input")?;
        let results = classify_items(&state, &policy, effort, max_tokens, &items, false).await?;
        // A moderation client reads `flagged: false` as "safe": an item
        // without a verdict must not look like one, so the request fails.
        let labelled = results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.verdict
                    .label
                    .map(|label| (label, r))
                    .ok_or_else(|| no_verdict(i, r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let category = policy.name.clone();
        let verdicts: Vec<Value> = labelled
            .iter()
            .map(|&(label, r)| {
                let violation = label == 1;
                // P(violates): the model's probability for its label, turned around for 0.
                let score = match (label, r.confidence) {
                    (1, Some(p)) => p,
                    (0, Some(p)) => 1.0 - p,
                    _ => f64::from(violation),
                };
                json!({
                    "flagged": violation,
                    "categories": {&category: violation},
                    "category_scores": {&category: score},
                    "category_applied_input_types": {&category: ["text"]},
                    "safeguard": r.to_json(),
                })
            })
            .collect();
        let body = json!({
            "id": new_id("modr-"),
            "model": state.model().id,
            "policy": policy.name,
            "results": verdicts,
        });
        Ok::<_, ApiError>(logged(Json(body), &results))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
