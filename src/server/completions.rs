//! OpenAI's legacy `/v1/completions`: raw text or token ids, no template.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Body};
use super::request::{
    add_extras, new_id, no_extras, token_limit, unix_now, usage_json, with_usage, Extras, Sampling, Stops,
    StreamOptions,
};
use super::sse::{log_stream, next_or_gone, send, sse};
use super::{Generate, Shared};
use crate::engine::generate::TokenLogprobs;
use crate::tokenizer::Tokenizer;

/// `prompt`: text, or token ids fed as they are.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
    pub stop: Option<Stops>,
    /// The number of alternatives to report per token (OpenAI: 0–5).
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<u32>,
}

pub async fn completions(State(state): State<Shared>, Body(request): Body<CompletionRequest>) -> Response {
    match run_completion(state, request, no_extras).await {
        Ok(response) | Err(response) => response,
    }
}

pub async fn run_completion(
    state: Shared,
    mut request: CompletionRequest,
    extras: Extras,
) -> Result<Response, Response> {
    let bad = |e: ApiError| e.into_response();
    state.check_model(request.model.as_deref()).map_err(bad)?;
    if request.echo || request.suffix.is_some() || request.best_of.is_some_and(|b| b != 1) {
        return Err(bad(ApiError::invalid(
            "echo, suffix and best_of are not supported",
        )));
    }
    if request.logprobs.is_some_and(|k| k > 20) {
        return Err(bad(ApiError::invalid_param(
            "logprobs",
            "logprobs must be at most 20",
        )));
    }
    let text = match std::mem::replace(&mut request.prompt, Prompt::Tokens(Vec::new())) {
        Prompt::Tokens(ids) => Err(ids),
        Prompt::Text(text) => Ok(text),
        Prompt::Texts(mut texts) if texts.len() == 1 => Ok(texts.remove(0)),
        Prompt::Texts(_) => {
            return Err(bad(ApiError::invalid_param(
                "prompt",
                "send one prompt per request",
            )))
        }
    };
    let prompt = match text {
        Err(ids) => ids,
        Ok(text) => {
            state.check_text(text.len(), "prompt").map_err(bad)?;
            state
                .off_thread(move |state| {
                    state
                        .tokenizer()
                        .encode_ordinary(&text)
                        .map_err(|e| ApiError::internal(e.to_string()))
                })
                .await
                .map_err(bad)?
        }
    };
    let (max_tokens, max_tokens_param) = token_limit(&[("max_tokens", request.max_tokens)]).map_err(bad)?;
    let generate = Generate {
        prompt,
        cache_prefix: 0,
        max_tokens,
        max_tokens_param,
        sampler: request.sampling.options().map_err(bad)?,
        top_logprobs: request.logprobs,
        watch: Vec::new(),
        group: None,
    };
    let stops = Stops::into_vec(request.stop).map_err(bad)?;
    let slot = state.admit().map_err(bad)?;
    let started = state.start(generate, None).map_err(bad)?;
    let id = new_id("cmpl-");
    let created = unix_now();
    let with_logprobs = request.logprobs.is_some();
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    if request.stream {
        return Ok(sse(state, move |state, tx| async move {
            let _slot = slot;
            let mut turn = match state.turn(started, false, stops) {
                Ok(turn) => turn,
                Err(e) => return send(&tx, e.body()).await,
            };
            let mut offset = 0;
            loop {
                let (update, outcome) = match next_or_gone(&mut turn, &tx).await {
                    None => return false,
                    Some(Ok(next)) => next,
                    Some(Err(e)) => return send(&tx, e.body()).await,
                };
                let mut logprobs = CompletionLogprobs::default();
                if with_logprobs {
                    if let Some(l) = &update.logprobs {
                        logprobs.push(turn.tokenizer(), l, &mut offset);
                    }
                }
                let choice = |text: &str, finish: Option<&str>| {
                    json!({
                        "id": id, "object": "text_completion", "created": created, "model": state.model().id,
                        "choices": [{"index": 0, "text": text, "logprobs": with_logprobs.then(|| logprobs.to_json()), "finish_reason": finish}],
                    })
                };
                if (!update.content.is_empty() || with_logprobs && update.logprobs.is_some())
                    && !send(&tx, choice(&update.content, None)).await
                {
                    return false;
                }
                if let Some(outcome) = outcome {
                    let mut last = json!({
                        "id": id, "object": "text_completion", "created": created, "model": state.model().id,
                        "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": outcome.finish_reason.reason()}],
                    });
                    add_extras(&mut last, extras(&state, &outcome));
                    if include_usage {
                        last["usage"] = usage_json(&outcome);
                    }
                    log_stream(&outcome);
                    return send(&tx, last).await;
                }
            }
        }));
    }
    let _slot = slot;
    let mut turn = state.turn(started, false, stops).map_err(bad)?;
    let (mut text, mut logprobs, mut offset) = (String::new(), CompletionLogprobs::default(), 0);
    let outcome = loop {
        let (update, outcome) = match turn.next().await {
            Ok(next) => next,
            Err(e) => return Err(bad(e)),
        };
        if let Some(l) = update.logprobs.as_ref().filter(|_| with_logprobs) {
            logprobs.push(turn.tokenizer(), l, &mut offset);
        }
        text.push_str(&update.content);
        if let Some(outcome) = outcome {
            break outcome;
        }
    };
    let mut body = json!({
        "id": id, "object": "text_completion", "created": created, "model": state.model().id,
        "choices": [{
            "index": 0, "text": text,
            "logprobs": with_logprobs.then(|| logprobs.to_json()),
            "finish_reason": outcome.finish_reason.reason(),
        }],
        "usage": usage_json(&outcome),
    });
    add_extras(&mut body, extras(&state, &outcome));
    Ok(with_usage(Json(body), &outcome))
}

/// The legacy completions `logprobs` object: parallel lists per token.
#[derive(Default)]
struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<serde_json::Map<String, Value>>,
    text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    fn push(&mut self, tokenizer: &Tokenizer, l: &TokenLogprobs, offset: &mut usize) {
        let text =
            |id: u32| String::from_utf8_lossy(&tokenizer.token_bytes(id).unwrap_or_default()).into_owned();
        let token = text(l.token);
        self.text_offset.push(*offset);
        *offset += token.len();
        self.tokens.push(token);
        self.token_logprobs.push(l.logprob);
        self.top_logprobs
            .push(l.top.iter().map(|&(id, lp)| (text(id), json!(lp))).collect());
    }

    fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}
