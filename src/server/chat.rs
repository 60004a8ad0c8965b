//! OpenAI's `/v1/chat/completions`: a harmony chat, reasoning apart from
//! the answer. Field names and stream chunks follow OpenAI's API; reasoning
//! is in `reasoning` (mlx-lm and other local servers) and `reasoning_content` (DeepSeek
//! style, read by Zed and others).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Body};
use super::request::{
    add_extras, new_id, no_extras, parse_effort, render_chat, token_limit, usage_json, Content, EffortField,
    Extras, Head, Sampling, Stops, StreamOptions,
};
use super::sse::{respond, Accumulator, Job};
use super::tools::{
    call_name, guide, offered, parse_response_format, parse_tool_choice, parse_tools, Structure, ToolCall,
    Turn,
};
use super::turn::{Outcome, Update};
use super::{Generate, Shared};
use crate::engine::generate::TokenLogprobs;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
    /// An earlier assistant turn's reasoning, as we send it
    /// (`reasoning`) or DeepSeek-style clients do (`reasoning_content`).
    pub reasoning: Option<String>,
    pub reasoning_content: Option<String>,
    pub tool_calls: Option<Vec<ChatToolCall>>,
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatToolCall {
    pub id: String,
    pub function: ChatFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct ChatFunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

impl ChatMessage {
    /// The message as a turn; `earlier` are the turns before it (a tool
    /// result names the call it answers by id).
    fn turn(&self, i: usize, earlier: &[Turn]) -> Result<Turn, ApiError> {
        let param = format!("messages[{i}]");
        let text = match &self.content {
            Some(content) => content.text(&format!("{param}.content"))?,
            None => String::new(),
        };
        Ok(match self.role.as_str() {
            "system" | "developer" => Turn::Instructions(text),
            "user" => Turn::User(text),
            "assistant" => Turn::Assistant {
                reasoning: self.reasoning.clone().or_else(|| self.reasoning_content.clone()),
                calls: self
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|call| ToolCall {
                        id: call.id.clone(),
                        name: call.function.name.clone(),
                        arguments: call.function.arguments.clone(),
                    })
                    .collect(),
                content: self.content.is_some().then_some(text),
            },
            "tool" => {
                let id = self.tool_call_id.as_deref().ok_or_else(|| {
                    ApiError::invalid_param(
                        &format!("{param}.tool_call_id"),
                        "a tool message needs the id of the call it answers",
                    )
                })?;
                let name = call_name(earlier, id).ok_or_else(|| {
                    ApiError::invalid_param(
                        &format!("{param}.tool_call_id"),
                        format!("no earlier assistant message has a tool call with id {id:?}"),
                    )
                })?;
                Turn::ToolResult { name, content: text }
            }
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.role"),
                    format!("unknown role {other:?}: expected system, developer, user, assistant or tool"),
                ))
            }
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
    pub stop: Option<Stops>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub reasoning_effort: Option<String>,
    pub reasoning: Option<EffortField>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
}

/// A checked chat request, ready to run.
pub struct Chat {
    pub job: Job,
    pub include_usage: bool,
    pub logprobs: bool,
}

impl ChatRequest {
    pub fn into_chat(self, state: &Shared) -> Result<Chat, ApiError> {
        state.check_model(self.model.as_deref())?;
        let tools = parse_tools(self.tools.as_deref(), true)?;
        let choice = parse_tool_choice(self.tool_choice.as_ref(), &tools)?;
        let (tools, must_call) = offered(tools, choice);
        let format = parse_response_format(self.response_format.as_ref(), "response_format", true)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param("messages", "messages must not be empty"));
        }
        let mut turns = Vec::new();
        for (i, message) in self.messages.iter().enumerate() {
            let turn = message.turn(i, &turns)?;
            turns.push(turn);
        }
        state.check_text(turns.iter().map(Turn::text_len).sum(), "messages")?;
        let effort = parse_effort(
            self.reasoning_effort
                .as_deref()
                .or(self.reasoning.as_ref().and_then(|r| r.effort.as_deref())),
            "reasoning_effort",
        )?;
        let (max_tokens, max_tokens_param) = token_limit(&[
            ("max_completion_tokens", self.max_completion_tokens),
            ("max_tokens", self.max_tokens),
        ])?;
        let guide = guide(
            || state.vocabulary().cloned(),
            Structure {
                format: format.as_ref(),
                param: "response_format",
                tools: &tools,
                nested: true,
                must_call,
                max_tokens,
            },
        )?;
        let (prompt, cache_prefix) = render_chat(
            state.tokenizer(),
            &turns,
            tools,
            format.as_ref(),
            effort,
            state.options().effort,
        )?;
        let logprobs = self.logprobs.unwrap_or(false);
        if self.top_logprobs.is_some_and(|k| k > 20) {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs must be at most 20",
            ));
        }
        Ok(Chat {
            job: Job {
                generate: Generate {
                    prompt,
                    cache_prefix,
                    max_tokens,
                    max_tokens_param,
                    sampler: self.sampling.options()?,
                    top_logprobs: logprobs.then(|| self.top_logprobs.unwrap_or(0)),
                    watch: Vec::new(),
                    group: None,
                },
                guide,
                chat: true,
                stops: Stops::into_vec(self.stop)?,
                stream: self.stream,
            },
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            logprobs,
        })
    }
}

pub async fn chat_completions(State(state): State<Shared>, Body(request): Body<ChatRequest>) -> Response {
    match state.off_thread(|state| request.into_chat(state)).await {
        Ok(chat) => run_chat(state, chat, no_extras).await,
        Err(e) => e.into_response(),
    }
}

pub async fn run_chat(state: Shared, chat: Chat, extras: Extras) -> Response {
    let answer = ChatAnswer {
        head: Head::new("chatcmpl-", &state),
        logprobs: chat.logprobs,
        include_usage: chat.include_usage,
        reasoning: String::new(),
        content: String::new(),
        calls: Vec::new(),
        entries: Vec::new(),
        entries_sent: 0,
    };
    respond(state, chat.job, answer, extras).await
}

/// A chat completion as it grows: reasoning and answer text, tool calls
/// (OpenAI's pieces: id, type and name first, then the arguments), and the
/// answer's token logprobs.
struct ChatAnswer {
    head: Head,
    logprobs: bool,
    include_usage: bool,
    reasoning: String,
    content: String,
    /// `{"id", "type", "function": {"name", "arguments"}}`, arguments growing.
    calls: Vec<Value>,
    entries: Vec<Value>,
    /// Entries already streamed: a token whose text is held back (a stop
    /// string's possible start) has its entry sent with the next text.
    entries_sent: usize,
}

impl ChatAnswer {
    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Option<Value>) -> Value {
        self.head.object(
            "chat.completion.chunk",
            json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]),
        )
    }

    /// The entries not streamed yet, or None when there are none.
    fn unsent_logprobs(&mut self) -> Option<Value> {
        let unsent = &self.entries[self.entries_sent..];
        if unsent.is_empty() {
            return None;
        }
        self.entries_sent = self.entries.len();
        Some(json!({"content": unsent}))
    }
}

impl Accumulator for ChatAnswer {
    fn opening(&mut self) -> Vec<Value> {
        vec![self.chunk(json!({"role": "assistant", "content": ""}), None, None)]
    }

    fn update(&mut self, update: Update, tokenizer: &Tokenizer) -> Vec<Value> {
        let mut chunks = Vec::new();
        if let (true, Some(l)) = (self.logprobs, &update.logprobs) {
            self.entries.push(content_logprob(tokenizer, l));
        }
        if !update.reasoning.is_empty() {
            self.reasoning.push_str(&update.reasoning);
            chunks.push(self.chunk(
                json!({"reasoning": update.reasoning, "reasoning_content": update.reasoning}),
                None,
                None,
            ));
        }
        if !update.content.is_empty() {
            self.content.push_str(&update.content);
            let logprobs = self.unsent_logprobs();
            chunks.push(self.chunk(json!({"content": update.content}), None, logprobs));
        }
        if let Some(call) = update.call {
            let mut piece = json!({"index": call.index, "function": {"arguments": call.arguments}});
            if let Some(name) = call.name {
                let id = new_id("call_");
                piece["id"] = json!(id);
                piece["type"] = json!("function");
                piece["function"]["name"] = json!(name);
                self.calls
                    .push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": ""}}));
            }
            let arguments = &mut self.calls[call.index]["function"]["arguments"];
            *arguments = json!(format!(
                "{}{}",
                arguments.as_str().unwrap_or_default(),
                call.arguments
            ));
            chunks.push(self.chunk(json!({"tool_calls": [piece]}), None, None));
        }
        chunks
    }

    fn close(&mut self, outcome: &Outcome, extras: Vec<(&'static str, Value)>) -> Vec<Value> {
        let logprobs = self.unsent_logprobs();
        let mut last = self.chunk(json!({}), Some(outcome.finish_reason.reason()), logprobs);
        add_extras(&mut last, extras);
        let mut chunks = vec![last];
        if self.include_usage {
            let mut usage = self.head.object("chat.completion.chunk", json!([]));
            usage["usage"] = usage_json(outcome);
            chunks.push(usage);
        }
        chunks
    }

    fn body(self, outcome: &Outcome, extras: Vec<(&'static str, Value)>) -> Value {
        let mut message = json!({
            "role": "assistant", "content": self.content,
            "reasoning": self.reasoning, "reasoning_content": self.reasoning,
        });
        if !self.calls.is_empty() {
            // OpenAI's shape: no text answer beside the calls is `null`, not "".
            if self.content.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = Value::Array(self.calls);
        }
        let mut body = self.head.object(
            "chat.completion",
            json!([{
                "index": 0,
                "message": message,
                "logprobs": self.logprobs.then(|| json!({"content": self.entries})),
                "finish_reason": outcome.finish_reason.reason(),
            }]),
        );
        body["usage"] = usage_json(outcome);
        add_extras(&mut body, extras);
        body
    }
}

/// One entry of a chat completion's `logprobs.content`.
fn content_logprob(tokenizer: &Tokenizer, l: &TokenLogprobs) -> Value {
    let entry = |id: u32, logprob: f32| {
        let bytes = tokenizer.token_bytes(id).unwrap_or_default();
        json!({"token": String::from_utf8_lossy(&bytes), "logprob": logprob, "bytes": bytes})
    };
    let mut value = entry(l.token, l.logprob);
    value["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
    value
}
