//! What the generation endpoints share: request fields (stops, sampling,
//! content, token limits, effort), ids and timestamps, the chat prompt as
//! harmony, and the usage an answer reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::tools::{harmony_messages, OutputFormat, Turn};
use super::turn::Outcome;
use super::{Shared, Usage};
use crate::engine::sampler::SamplerOptions;
use crate::harmony::{self, Conversation, Effort, SystemContent, Tool};
use crate::tokenizer::Tokenizer;

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stops {
    One(String),
    Many(Vec<String>),
}

impl Stops {
    pub fn into_vec(stops: Option<Stops>) -> Result<Vec<String>, ApiError> {
        let stops = match stops {
            None => Vec::new(),
            Some(Stops::One(s)) => vec![s],
            Some(Stops::Many(v)) => v,
        };
        if stops.len() > 4 {
            return Err(ApiError::invalid_param("stop", "at most 4 stop sequences"));
        }
        Ok(stops)
    }
}

#[derive(Debug, Deserialize)]
pub struct EffortField {
    pub effort: Option<String>,
}

/// Sampling fields as OpenAI (and mlx-lm: top_k, min_p) name them.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub n: Option<u32>,
}

impl Sampling {
    /// Greedy unless a temperature is given: classifications should not
    /// change from one call to the next (mlx-lm's server does the same).
    pub fn options(&self) -> Result<SamplerOptions, ApiError> {
        let temperature = self.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid_param(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(ApiError::invalid_param("top_p", "top_p must be between 0 and 1"));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid_param("min_p", "min_p must be between 0 and 1"));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid_param(
                    name,
                    format!("{name} is not supported; leave it out or 0"),
                ));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                "logit_bias is not supported",
            ));
        }
        Ok(SamplerOptions {
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(0).max(0),
            min_p,
            // Unseeded sampling differs from call to call, as clients expect.
            seed: self.seed.unwrap_or_else(fresh_seed),
        })
    }
}

fn fresh_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ next_serial()
}

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A fresh id such as `chatcmpl-3f2a…` (`prefix` ends with its separator).
pub fn new_id(prefix: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    format!("{prefix}{now:x}{:04x}", next_serial() & 0xffff)
}

/// What every object of one answer repeats: its id, when it was made and
/// the model that made it.
pub struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    /// A new answer's head; `prefix` as for [`new_id`].
    pub fn new(prefix: &str, state: &Shared) -> Head {
        Head {
            id: new_id(prefix),
            created: unix_now(),
            model: state.model().id.clone(),
        }
    }

    /// An `object` of this answer with its `choices`.
    pub fn object(&self, object: &str, choices: Value) -> Value {
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choices,
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `max_tokens` and friends: a count, or -1 / absent for the default.
pub fn token_limit(
    values: &[(&'static str, Option<i64>)],
) -> Result<(Option<usize>, &'static str), ApiError> {
    for &(name, value) in values {
        match value {
            Some(-1) | None => continue,
            Some(n) if n < 0 => {
                return Err(ApiError::invalid_param(name, format!("{name} must be positive")))
            }
            Some(n) => return Ok((Some(n as usize), name)),
        }
    }
    Ok((None, values[0].0))
}

/// A request's reasoning effort. The OpenAI SDK's types also allow `none`,
/// `minimal` and `xhigh`, which harmony lacks: they run at the nearest
/// harmony effort (`low`, `low`, `high`), which responses report.
pub fn parse_effort(value: Option<&str>, param: &str) -> Result<Option<Effort>, ApiError> {
    value
        .map(|v| match v.to_ascii_lowercase().as_str() {
            "none" | "minimal" => Ok(Effort::Low),
            "xhigh" => Ok(Effort::High),
            _ => v.parse::<Effort>().map_err(|e| {
                ApiError::invalid_param(
                    param,
                    format!("{e} (or none, minimal, xhigh: run as low, low, high)"),
                )
            }),
        })
        .transpose()
}

/// A message's `content`: a string, or parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self, param: &str) -> Result<String, ApiError> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text" | "input_text" | "output_text", Some(text)) => Ok(text.as_str()),
                    (kind, _) => Err(ApiError::invalid_param(
                        param,
                        format!(
                            "content parts of type {kind:?} are not supported: the model reads text only"
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| texts.join("")),
        }
    }
}

/// A chat as harmony: `system` and `developer` messages become the
/// developer's instructions (the policy, for the safeguard models), with a
/// `Reasoning: low|medium|high` line lifted into the system message; the
/// offered tools join them in the developer message; user, assistant and
/// tool turns follow; a schema the answer must follow closes the developer
/// message. Also returns how many prompt tokens are shared by every chat
/// with the same instructions, tools and format (for the prefix cache).
pub fn render_chat(
    tokenizer: &Tokenizer,
    turns: &[Turn],
    tools: Vec<Tool>,
    format: Option<&OutputFormat>,
    effort: Option<Effort>,
    default_effort: Effort,
) -> Result<(Vec<u32>, usize), ApiError> {
    let (instructions, lifted) = instructions(turns);
    let system = SystemContent::default().with_effort(effort.or(lifted).unwrap_or(default_effort));
    let mut conversation = Conversation::new(system).with_tools(tools);
    conversation.instructions = instructions;
    conversation.response_format = format.and_then(|f| f.described.clone());
    let head = harmony::render_for_completion(&conversation, tokenizer)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    conversation.messages = harmony_messages(turns);
    let prompt = harmony::render_for_completion(&conversation, tokenizer)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let shared = head.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
    Ok((prompt, shared))
}

/// The developer's instructions of a chat and the effort its first line
/// sets. A chat is not a policy: any text goes, a blank one is no
/// instructions at all, and a first line `Reasoning: …` that names no effort
/// stays part of the text.
fn instructions(turns: &[Turn]) -> (Option<String>, Option<Effort>) {
    let text = turns
        .iter()
        .filter_map(|turn| match turn {
            Turn::Instructions(text) => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    let (lifted, body) = match harmony::reasoning_line(&text) {
        Some(harmony::ReasoningLine {
            effort: Ok(effort),
            rest,
            ..
        }) => (Some(effort), rest),
        _ => (None, text.as_str()),
    };
    let body = body.trim();
    ((!body.is_empty()).then(|| body.to_string()), lifted)
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

pub fn usage_json(outcome: &Outcome) -> Value {
    json!({
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
    })
}

/// A JSON response that tells the request log its tokens and speed.
pub fn with_usage(body: Json<Value>, outcome: &Outcome) -> Response {
    let mut response = body.into_response();
    response.extensions_mut().insert(Usage {
        prompt_tokens: outcome.prompt_tokens,
        completion_tokens: outcome.completion_tokens,
        tokens_per_second: outcome.tokens_per_second(),
    });
    response
}

/// Fields another API adds to a generation's final answer or chunk (LM
/// Studio: `stats`, `model_info`, `runtime`), passed in by its module so the
/// OpenAI endpoints need not know it.
pub type Extras = fn(&Shared, &Outcome) -> Vec<(&'static str, Value)>;

/// OpenAI's own endpoints: nothing beyond OpenAI's fields.
pub fn no_extras(_: &Shared, _: &Outcome) -> Vec<(&'static str, Value)> {
    Vec::new()
}

pub fn add_extras(body: &mut Value, fields: Vec<(&'static str, Value)>) {
    for (key, value) in fields {
        body[key] = value;
    }
}
