//! OpenAI's Responses API (`POST /v1/responses`): `input` as a string or a
//! list of messages, `instructions`, `reasoning.effort`, `max_output_tokens`;
//! output as a reasoning item and a message item, streamed as the full event
//! sequence (`response.created` … `response.completed`, each event with its
//! `sequence_number`). Answered responses are kept ([`super::store`]) unless
//! the request says `store: false`: `previous_response_id` continues one,
//! `GET`/`DELETE /v1/responses/{id}` read and forget one.

use axum::extract::{Path, State};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, Body};
use super::request::{
    new_id, parse_effort, render_chat, token_limit, unix_now, with_usage, Content, EffortField, Sampling,
};
use super::sse;
use super::store::Stored;
use super::tools::{
    call_name, guide, offered, parse_response_format, parse_tool_choice, parse_tools, Structure, ToolCall,
    Turn,
};
use super::turn::{CallDelta, Outcome};
use super::{Generate, Shared};
use crate::constrain::Guide;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    model: Option<String>,
    input: Input,
    instructions: Option<String>,
    reasoning: Option<EffortField>,
    max_output_tokens: Option<i64>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    sampling: Sampling,
    text: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    previous_response_id: Option<String>,
    store: Option<bool>,
}

/// The request fields a response object repeats back.
struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<usize>,
    effort: String,
    temperature: f32,
    top_p: f32,
    previous_response_id: Option<String>,
    /// The conversation up to this response's output, and its prompt, when
    /// the response is to be stored.
    keep: Option<(Vec<Value>, Vec<u32>)>,
}

/// The request's input as items: a string is one user message.
fn input_items(input: Input) -> Vec<Value> {
    match input {
        Input::Text(text) => vec![json!({"type": "message", "role": "user", "content": text})],
        Input::Items(items) => items,
    }
}

/// The conversation as turns: `instructions`, then `earlier` (a stored
/// response's conversation), then `input`.
fn turns(instructions: Option<&str>, earlier: &[Value], input: &[Value]) -> Result<Vec<Turn>, ApiError> {
    let mut turns = Vec::new();
    if let Some(instructions) = instructions {
        turns.push(Turn::Instructions(instructions.to_string()));
    }
    let numbered = earlier
        .iter()
        .enumerate()
        .map(|(i, item)| (format!("previous_response_id's conversation[{i}]"), item));
    let numbered = numbered.chain(
        input
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("input[{i}]"), item)),
    );
    for (param, item) in numbered {
        let field = |name: &str| {
            item.get(name).and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_param(&format!("{param}.{name}"), format!("{name} must be a string"))
            })
        };
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        let turn = match kind {
            "message" => {
                let content: Content = serde_json::from_value(item.get("content").cloned().unwrap_or(Value::Null))
                    .map_err(|_| ApiError::invalid_param(&param, "content must be a string or a list of text parts"))?;
                let text = content.text(&format!("{param}.content"))?;
                match field("role")? {
                    "system" | "developer" => Turn::Instructions(text),
                    "user" => Turn::User(text),
                    "assistant" => Turn::Assistant {
                        reasoning: None,
                        calls: Vec::new(),
                        content: Some(text),
                    },
                    other => {
                        return Err(ApiError::invalid_param(
                            &format!("{param}.role"),
                            format!("unknown role {other:?}: expected system, developer, user or assistant"),
                        ))
                    }
                }
            }
            // Kept while its turn is calling tools; harmony drops it once
            // the turn has its answer.
            "reasoning" => Turn::Assistant {
                reasoning: Some(reasoning_text(item)),
                calls: Vec::new(),
                content: None,
            },
            "function_call" => Turn::Assistant {
                reasoning: None,
                calls: vec![ToolCall {
                    id: field("call_id")?.to_string(),
                    name: field("name")?.to_string(),
                    arguments: field("arguments")?.to_string(),
                }],
                content: None,
            },
            "function_call_output" => {
                let id = field("call_id")?;
                let name = call_name(&turns, id).ok_or_else(|| {
                    ApiError::invalid_param(
                        &format!("{param}.call_id"),
                        format!("no earlier function_call item has call_id {id:?}"),
                    )
                })?;
                Turn::ToolResult {
                    name,
                    content: field("output")?.to_string(),
                }
            }
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.type"),
                    format!(
                        "input items of type {other:?} are not supported: expected message, reasoning, function_call or function_call_output"
                    ),
                ))
            }
        };
        turns.push(turn);
    }
    Ok(turns)
}

/// A reasoning item's text: its `content` parts (ours), else its `summary`.
fn reasoning_text(item: &Value) -> String {
    let texts = |key: &str| -> Vec<String> {
        item.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|part| part.get("text").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let content = texts("content");
    if content.is_empty() {
        texts("summary")
    } else {
        content
    }
    .join("\n")
}

pub async fn create(State(state): State<Shared>, Body(request): Body<ResponsesRequest>) -> Response {
    match state.off_thread(|state| start(state, request)).await {
        Ok((generate, guide, echo, stream)) => run(state, generate, guide, echo, stream).await,
        Err(e) => e.into_response(),
    }
}

/// A request ready to run: what to generate under which grammar, what the
/// response echoes, whether it streams.
type Prepared = (Generate, Option<Guide>, Echo, bool);

fn start(state: &Shared, request: ResponsesRequest) -> Result<Prepared, ApiError> {
    state.check_model(request.model.as_deref())?;
    let tools = parse_tools(request.tools.as_deref(), false)?;
    let choice = parse_tool_choice(request.tool_choice.as_ref(), &tools)?;
    let (tools, must_call) = offered(tools, choice);
    let previous = request
        .previous_response_id
        .as_deref()
        .map(|id| {
            state
                .responses()
                .get(id)
                .ok_or_else(|| ApiError::response_not_found(id, Some("previous_response_id")))
        })
        .transpose()?;
    let format = parse_response_format(
        request.text.as_ref().and_then(|t| t.get("format")),
        "text.format",
        false,
    )?;
    let (max_tokens, max_tokens_param) = token_limit(&[("max_output_tokens", request.max_output_tokens)])?;
    let guide = guide(
        || state.vocabulary().cloned(),
        Structure {
            format: format.as_ref(),
            param: "text.format",
            tools: &tools,
            nested: false,
            must_call,
            max_tokens,
        },
    )?;
    let effort = parse_effort(
        request.reasoning.as_ref().and_then(|r| r.effort.as_deref()),
        "reasoning.effort",
    )?;
    let earlier = previous.as_ref().map_or(&[][..], |p| &p.conversation[..]);
    let input = input_items(request.input);
    let (prompt, mut cache_prefix) = render_chat(
        state.tokenizer(),
        &turns(request.instructions.as_deref(), earlier, &input)?,
        tools,
        format.as_ref(),
        effort,
        state.options().effort,
    )?;
    // The earlier prompt's state is in the prefix cache when it was stored
    // (all but its last token: see `Job::keep_prompt`).
    if let Some(earlier_prompt) = previous
        .as_ref()
        .and_then(|p| p.prompt.split_last().map(|(_, rest)| rest))
    {
        if prompt.starts_with(earlier_prompt) {
            cache_prefix = cache_prefix.max(earlier_prompt.len());
        }
    }
    let sampler = request.sampling.options()?;
    let keep = request.store.unwrap_or(true).then(|| {
        let mut conversation = earlier.to_vec();
        conversation.extend(input);
        (conversation, prompt.clone())
    });
    let echo = Echo {
        instructions: request.instructions,
        max_output_tokens: max_tokens,
        effort: effort.unwrap_or(state.options().effort).to_string(),
        temperature: sampler.temperature,
        top_p: sampler.top_p,
        previous_response_id: request.previous_response_id,
        keep,
    };
    let generate = Generate {
        prompt,
        cache_prefix,
        max_tokens,
        max_tokens_param,
        sampler,
        top_logprobs: None,
        watch: Vec::new(),
        group: None,
    };
    Ok((generate, guide, echo, request.stream))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
}

/// The output items as they grow, and the stream events that say so.
struct Output {
    items: Vec<Value>,
    open: Option<(Kind, String, String)>,
    /// The function call being written: its item, arguments growing.
    call: Option<Value>,
}

type Events = Vec<(&'static str, Value)>;

impl Output {
    fn new() -> Output {
        Output {
            items: Vec::new(),
            open: None,
            call: None,
        }
    }

    /// A piece of a tool call: a `function_call` item, its arguments
    /// streamed as `response.function_call_arguments.delta` events.
    fn call(&mut self, delta: &CallDelta, events: &mut Events) {
        if let Some(name) = &delta.name {
            self.close("completed", events);
            let item = json!({
                "id": new_id("fc_"), "type": "function_call", "status": "in_progress",
                "arguments": "", "call_id": new_id("call_"), "name": name,
            });
            events.push((
                "response.output_item.added",
                json!({"output_index": self.items.len(), "item": item}),
            ));
            self.call = Some(item);
        }
        let Some(item) = self.call.as_mut() else {
            return;
        };
        if delta.arguments.is_empty() {
            return;
        }
        let arguments = format!(
            "{}{}",
            item["arguments"].as_str().unwrap_or_default(),
            delta.arguments
        );
        item["arguments"] = json!(arguments);
        events.push((
            "response.function_call_arguments.delta",
            json!({"item_id": item["id"], "output_index": self.items.len(), "delta": delta.arguments}),
        ));
    }

    fn push(&mut self, kind: Kind, text: &str, events: &mut Events) {
        if text.is_empty() {
            return;
        }
        if self.call.is_some() || self.open.as_ref().is_some_and(|(open, _, _)| *open != kind) {
            self.close("completed", events);
        }
        let output_index = self.items.len();
        let (_, id, buffer) = self.open.get_or_insert_with(|| {
            let id = new_id(if kind == Kind::Reasoning { "rs_" } else { "msg_" });
            let (item, part) = match kind {
                Kind::Reasoning => (
                    json!({"id": id, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}),
                    json!({"type": "reasoning_text", "text": ""}),
                ),
                Kind::Message => (
                    json!({"id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}),
                    json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
                ),
            };
            events.push(("response.output_item.added", json!({"output_index": output_index, "item": item})));
            events.push((
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
            ));
            (kind, id, String::new())
        });
        buffer.push_str(text);
        let (name, mut payload) = match kind {
            Kind::Reasoning => ("response.reasoning_text.delta", json!({})),
            Kind::Message => ("response.output_text.delta", json!({"logprobs": []})),
        };
        payload["item_id"] = json!(id);
        payload["output_index"] = json!(output_index);
        payload["content_index"] = json!(0);
        payload["delta"] = json!(text);
        events.push((name, payload));
    }

    /// Ends the open item; `status` is `incomplete` when the token limit cut it.
    fn close(&mut self, status: &str, events: &mut Events) {
        if let Some(mut item) = self.call.take() {
            let output_index = self.items.len();
            item["status"] = json!(status);
            events.push((
                "response.function_call_arguments.done",
                json!({"item_id": item["id"], "output_index": output_index, "arguments": item["arguments"]}),
            ));
            events.push((
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            ));
            self.items.push(item);
        }
        let Some((kind, id, text)) = self.open.take() else {
            return;
        };
        let output_index = self.items.len();
        let (done, part, item) = match kind {
            Kind::Reasoning => {
                let part = json!({"type": "reasoning_text", "text": text});
                (
                    "response.reasoning_text.done",
                    part.clone(),
                    json!({"id": id, "type": "reasoning", "summary": [], "content": [part], "status": status}),
                )
            }
            Kind::Message => {
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                (
                    "response.output_text.done",
                    part.clone(),
                    json!({"id": id, "type": "message", "role": "assistant", "status": status, "content": [part]}),
                )
            }
        };
        let mut done_payload =
            json!({"item_id": id, "output_index": output_index, "content_index": 0, "text": text});
        if kind == Kind::Message {
            done_payload["logprobs"] = json!([]);
        }
        events.push((done, done_payload));
        events.push((
            "response.content_part.done",
            json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
        ));
        events.push((
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        ));
        self.items.push(item);
    }
}

fn response_object(
    state: &Shared,
    id: &str,
    created: u64,
    echo: &Echo,
    status: &str,
    output: &[Value],
    outcome: Option<&Outcome>,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": (status == "incomplete").then(|| json!({"reason": "max_output_tokens"})),
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": state.model().id,
        "output": output,
        "parallel_tool_calls": false,
        "previous_response_id": echo.previous_response_id,
        "reasoning": {"effort": echo.effort, "summary": null},
        "store": echo.keep.is_some(),
        "temperature": echo.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": outcome.map(|o| json!({
            "input_tokens": o.prompt_tokens,
            "input_tokens_details": {"cached_tokens": o.cached_tokens},
            "output_tokens": o.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": o.reasoning_tokens},
            "total_tokens": o.prompt_tokens + o.completion_tokens,
        })),
        "metadata": {},
    })
}

/// The response's status, which is also its last item's.
fn status_of(outcome: &Outcome) -> &'static str {
    outcome.finish_reason.responses_status()
}

async fn run(
    state: Shared,
    generate: Generate,
    guide: Option<Guide>,
    mut echo: Echo,
    stream: bool,
) -> Response {
    let slot = match state.admit() {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let started = match state.start_kept(generate, guide, echo.keep.is_some()) {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    let id = new_id("resp_");
    let created = unix_now();
    if stream {
        return sse::sse_with(
            state,
            move |state, tx| async move {
                let _slot = slot;
                let mut sequence = 0u64;
                let mut emit = async |events: Events| -> bool {
                    for (name, mut payload) in events {
                        payload["type"] = json!(name);
                        payload["sequence_number"] = json!(sequence);
                        sequence += 1;
                        let event = SseEvent::default().event(name).data(payload.to_string());
                        if tx.send(event).await.is_err() {
                            return false;
                        }
                    }
                    true
                };
                let initial = response_object(&state, &id, created, &echo, "in_progress", &[], None);
                if !emit(vec![
                    ("response.created", json!({"response": initial})),
                    ("response.in_progress", json!({"response": initial})),
                ])
                .await
                {
                    return false;
                }
                let mut turn = match state.turn(started, true, Vec::new()) {
                    Ok(turn) => turn,
                    Err(e) => return emit(vec![("error", error_event(&e))]).await,
                };
                let mut output = Output::new();
                loop {
                    let mut events = Vec::new();
                    let (update, outcome) = match sse::next_or_gone(&mut turn, &tx).await {
                        None => return false,
                        Some(Ok(next)) => next,
                        Some(Err(e)) => {
                            let failed =
                                response_object(&state, &id, created, &echo, "failed", &output.items, None);
                            let mut failed = failed;
                            failed["error"] = json!({"code": "server_error", "message": e.message});
                            return emit(vec![
                                ("error", error_event(&e)),
                                ("response.failed", json!({"response": failed})),
                            ])
                            .await;
                        }
                    };
                    output.push(Kind::Reasoning, &update.reasoning, &mut events);
                    output.push(Kind::Message, &update.content, &mut events);
                    if let Some(call) = &update.call {
                        output.call(call, &mut events);
                    }
                    if let Some(outcome) = outcome {
                        let status = status_of(&outcome);
                        output.close(status, &mut events);
                        let last = response_object(
                            &state,
                            &id,
                            created,
                            &echo,
                            status,
                            &output.items,
                            Some(&outcome),
                        );
                        keep(&state, &id, &mut echo, &output.items, &last);
                        let name = if status == "incomplete" {
                            "response.incomplete"
                        } else {
                            "response.completed"
                        };
                        events.push((name, json!({"response": last})));
                        sse::log_stream(&outcome);
                        return emit(events).await;
                    }
                    if !emit(events).await {
                        return false;
                    }
                }
            },
            false,
        );
    }
    let _slot = slot;
    let mut turn = match state.turn(started, true, Vec::new()) {
        Ok(turn) => turn,
        Err(e) => return e.into_response(),
    };
    let mut output = Output::new();
    let mut ignored = Vec::new();
    let outcome = loop {
        let (update, outcome) = match turn.next().await {
            Ok(next) => next,
            Err(e) => return e.into_response(),
        };
        output.push(Kind::Reasoning, &update.reasoning, &mut ignored);
        output.push(Kind::Message, &update.content, &mut ignored);
        if let Some(call) = &update.call {
            output.call(call, &mut ignored);
        }
        if let Some(outcome) = outcome {
            break outcome;
        }
    };
    let status = status_of(&outcome);
    output.close(status, &mut ignored);
    let body = response_object(&state, &id, created, &echo, status, &output.items, Some(&outcome));
    keep(&state, &id, &mut echo, &output.items, &body);
    with_usage(Json(body), &outcome)
}

/// Stores an answered response, unless its request said `store: false`.
fn keep(state: &Shared, id: &str, echo: &mut Echo, output: &[Value], response: &Value) {
    let Some((mut conversation, prompt)) = echo.keep.take() else {
        return;
    };
    conversation.extend_from_slice(output);
    let stored = Stored {
        conversation,
        prompt,
        response: response.clone(),
    };
    if !state.responses().insert(id, stored) {
        tracing::warn!(
            id,
            "the response alone is over --responses-store-mib (or --responses-store is 0): not stored"
        );
    }
}

/// `GET /v1/responses/{id}`: a stored response as it was answered.
pub async fn retrieve(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.responses().get(&id) {
        Some(stored) => Json(stored.response.clone()).into_response(),
        None => ApiError::response_not_found(&id, None).into_response(),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a stored response.
pub async fn delete(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    if state.responses().remove(&id) {
        Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        ApiError::response_not_found(&id, None).into_response()
    }
}

fn error_event(e: &ApiError) -> Value {
    let body = e.body();
    json!({"code": body["error"]["code"], "message": e.message, "param": body["error"]["param"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_stream_in_the_documented_event_order() {
        let mut output = Output::new();
        let mut events = Vec::new();
        output.push(Kind::Reasoning, "Looks like ", &mut events);
        output.push(Kind::Reasoning, "spam.", &mut events);
        output.push(Kind::Message, "1", &mut events);
        output.close("completed", &mut events);
        // OpenAI's sequence for a reasoning item followed by a message.
        let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
            ]
        );
        let indexes: Vec<u64> = events
            .iter()
            .map(|(_, p)| p["output_index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(events[4].1["text"], "Looks like spam.");
        assert_eq!(output.items[0]["content"][0]["text"], "Looks like spam.");
        assert_eq!(output.items[1]["content"][0]["text"], "1");
        assert_eq!(output.items[1]["role"], "assistant");
        assert!(output.items[0]["id"].as_str().unwrap().starts_with("rs_"));
    }

    #[test]
    fn a_function_call_is_an_item_with_its_arguments_streamed() {
        let mut output = Output::new();
        let mut events = Vec::new();
        let piece = |index, name: Option<&str>, arguments: &str| CallDelta {
            index,
            name: name.map(str::to_string),
            arguments: arguments.to_string(),
        };
        output.push(Kind::Reasoning, "Need the weather.", &mut events);
        output.call(&piece(0, Some("get_weather"), ""), &mut events);
        output.call(&piece(0, None, "{\"city\":"), &mut events);
        output.call(&piece(0, None, "\"Paris\"}"), &mut events);
        output.call(&piece(1, Some("now"), ""), &mut events);
        output.close("completed", &mut events);
        let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names[6..],
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]
        );
        let call = &output.items[1];
        assert_eq!(
            (
                call["type"].as_str(),
                call["name"].as_str(),
                call["arguments"].as_str(),
                call["status"].as_str()
            ),
            (
                Some("function_call"),
                Some("get_weather"),
                Some("{\"city\":\"Paris\"}"),
                Some("completed")
            )
        );
        assert!(call["call_id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(events[9].1["arguments"], call["arguments"]);
        assert_eq!(events[9].1["output_index"], 1);
        assert_eq!(
            (
                output.items[2]["name"].as_str(),
                output.items[2]["arguments"].as_str()
            ),
            (Some("now"), Some(""))
        );
    }
}
