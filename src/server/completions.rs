//! OpenAI's legacy `/v1/completions`: raw text or token ids, no template.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Body};
use super::request::{
    add_extras, no_extras, token_limit, usage_json, Extras, Head, Sampling, Stops, StreamOptions,
};
use super::sse::{respond, Accumulator, Job};
use super::turn::{Outcome, Update};
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
    run_completion(state, request, no_extras).await
}

pub async fn run_completion(state: Shared, request: CompletionRequest, extras: Extras) -> Response {
    match prepare(&state, request).await {
        Ok((job, answer)) => respond(state, job, answer, extras).await,
        Err(e) => e.into_response(),
    }
}

/// Checks `request` and tokenizes its prompt (off the async workers).
async fn prepare(
    state: &Shared,
    mut request: CompletionRequest,
) -> Result<(Job, CompletionAnswer), ApiError> {
    state.check_model(request.model.as_deref())?;
    if request.echo || request.suffix.is_some() || request.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("echo, suffix and best_of are not supported"));
    }
    if request.logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::invalid_param("logprobs", "logprobs must be at most 20"));
    }
    let text = match std::mem::replace(&mut request.prompt, Prompt::Tokens(Vec::new())) {
        Prompt::Tokens(ids) => Err(ids),
        Prompt::Text(text) => Ok(text),
        Prompt::Texts(mut texts) if texts.len() == 1 => Ok(texts.remove(0)),
        Prompt::Texts(_) => return Err(ApiError::invalid_param("prompt", "send one prompt per request")),
    };
    let prompt = match text {
        Err(ids) => ids,
        Ok(text) => {
            state.check_text(text.len(), "prompt")?;
            state
                .off_thread(move |state| {
                    state
                        .tokenizer()
                        .encode_ordinary(&text)
                        .map_err(|e| ApiError::internal(e.to_string()))
                })
                .await?
        }
    };
    let (max_tokens, max_tokens_param) = token_limit(&[("max_tokens", request.max_tokens)])?;
    let job = Job {
        generate: Generate {
            prompt,
            cache_prefix: 0,
            max_tokens,
            max_tokens_param,
            sampler: request.sampling.options()?,
            top_logprobs: request.logprobs,
            watch: Vec::new(),
            group: None,
        },
        guide: None,
        chat: false,
        stops: Stops::into_vec(request.stop)?,
        stream: request.stream,
    };
    let answer = CompletionAnswer {
        head: Head::new("cmpl-", state),
        logprobs: request.logprobs.is_some(),
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
        text: String::new(),
        tokens: CompletionLogprobs::default(),
    };
    Ok((job, answer))
}

/// A text completion as it grows: its text and, when asked, its tokens'
/// logprobs.
struct CompletionAnswer {
    head: Head,
    logprobs: bool,
    include_usage: bool,
    text: String,
    tokens: CompletionLogprobs,
}

impl CompletionAnswer {
    fn choice(&self, text: &str, logprobs: Option<Value>, finish: Option<&str>) -> Value {
        self.head.object(
            "text_completion",
            json!([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]),
        )
    }
}

impl Accumulator for CompletionAnswer {
    fn opening(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn update(&mut self, update: Update, tokenizer: &Tokenizer) -> Vec<Value> {
        let from = self.tokens.len();
        if let (true, Some(l)) = (self.logprobs, &update.logprobs) {
            self.tokens.push(tokenizer, l);
        }
        self.text.push_str(&update.content);
        if update.content.is_empty() && self.tokens.len() == from {
            return Vec::new();
        }
        let logprobs = self.logprobs.then(|| self.tokens.to_json(from));
        vec![self.choice(&update.content, logprobs, None)]
    }

    fn close(&mut self, outcome: &Outcome, extras: Vec<(&'static str, Value)>) -> Vec<Value> {
        let mut last = self.choice("", None, Some(outcome.finish_reason.reason()));
        add_extras(&mut last, extras);
        if self.include_usage {
            last["usage"] = usage_json(outcome);
        }
        vec![last]
    }

    fn body(self, outcome: &Outcome, extras: Vec<(&'static str, Value)>) -> Value {
        let logprobs = self.logprobs.then(|| self.tokens.to_json(0));
        let mut body = self.choice(&self.text, logprobs, Some(outcome.finish_reason.reason()));
        body["usage"] = usage_json(outcome);
        add_extras(&mut body, extras);
        body
    }
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
    fn len(&self) -> usize {
        self.tokens.len()
    }

    fn push(&mut self, tokenizer: &Tokenizer, l: &TokenLogprobs) {
        let text =
            |id: u32| String::from_utf8_lossy(&tokenizer.token_bytes(id).unwrap_or_default()).into_owned();
        let token = text(l.token);
        let offset = self
            .tokens
            .last()
            .map_or(0, |last| self.text_offset[self.len() - 1] + last.len());
        self.text_offset.push(offset);
        self.tokens.push(token);
        self.token_logprobs.push(l.logprob);
        self.top_logprobs
            .push(l.top.iter().map(|&(id, lp)| (text(id), json!(lp))).collect());
    }

    /// The tokens from `from` on.
    fn to_json(&self, from: usize) -> Value {
        json!({
            "tokens": self.tokens[from..],
            "token_logprobs": self.token_logprobs[from..],
            "top_logprobs": self.top_logprobs[from..],
            "text_offset": self.text_offset[from..],
        })
    }
}
