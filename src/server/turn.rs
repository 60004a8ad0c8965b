//! One generation as the HTTP layer sees it: engine events turned into text
//! (reasoning and answer parsed from harmony, or plain text for raw
//! completions), stop strings applied, tokens and timings counted.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use super::error::ApiError;
use crate::engine::driver::{Event, Stop};
use crate::engine::generate::TokenLogprobs;
use crate::harmony::{ControlTokens, Message, Role, StreamParser};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What one token added.
#[derive(Debug, Default)]
pub struct Update {
    pub reasoning: String,
    /// The answer's text (everything, for raw completions).
    pub content: String,
    /// The token and its log-probabilities, when asked for and the token is
    /// part of the content.
    pub logprobs: Option<TokenLogprobs>,
    /// A piece of a tool call (a commentary message to `functions.NAME`).
    pub call: Option<CallDelta>,
}

/// A tool call as it is written: its name once its header is complete, then
/// its arguments in pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDelta {
    /// The call's number in this turn, from 0.
    pub index: usize,
    /// Set on the call's first delta only.
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// A stop token or string, the token limit, or a call to a tool.
    pub finish_reason: Stop,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// Tokens of the chain of thought (reasoning messages' content).
    pub reasoning_tokens: usize,
    pub time_to_first_token: Duration,
    pub elapsed: Duration,
}

impl Outcome {
    /// Decode speed after the first token.
    pub fn tokens_per_second(&self) -> f64 {
        let decode = self
            .elapsed
            .saturating_sub(self.time_to_first_token)
            .as_secs_f64();
        if decode > 0.0 && self.completion_tokens > 1 {
            (self.completion_tokens - 1) as f64 / decode
        } else {
            0.0
        }
    }
}

enum Text<'t> {
    Chat(Box<StreamParser<'t>>),
    Raw(StreamDecoder<'t>),
}

pub struct Turn<'t> {
    events: Option<UnboundedReceiver<Event>>,
    /// True once the shutdown grace has run out.
    deadline: watch::Receiver<bool>,
    tokenizer: &'t Tokenizer,
    text: Text<'t>,
    control: ControlTokens,
    stops: StopStrings,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    reasoning_tokens: usize,
    /// Tool calls begun so far, and the message index of the one being written.
    calls: usize,
    call_message: Option<usize>,
    last_token: Option<u32>,
    /// A chat's output so far, for the answer of last resort (see `flush`).
    generated: Vec<u32>,
    /// Whether any of the answer has been sent.
    content_sent: bool,
    submitted: Instant,
    first_token: Option<Duration>,
    done: bool,
}

impl<'t> Turn<'t> {
    /// `chat`: the output is harmony (parsed into reasoning and answer);
    /// otherwise plain text.
    pub fn new(
        tokenizer: &'t Tokenizer,
        events: UnboundedReceiver<Event>,
        deadline: watch::Receiver<bool>,
        prompt_tokens: usize,
        chat: bool,
        stops: Vec<String>,
    ) -> Result<Turn<'t>, ApiError> {
        let text = if chat {
            Text::Chat(Box::new(
                StreamParser::new(tokenizer).map_err(|e| ApiError::internal(e.to_string()))?,
            ))
        } else {
            Text::Raw(tokenizer.stream())
        };
        Ok(Turn {
            events: Some(events),
            deadline,
            tokenizer,
            text,
            control: ControlTokens::of(tokenizer).map_err(|e| ApiError::internal(e.to_string()))?,
            stops: StopStrings::new(stops),
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens: 0,
            reasoning_tokens: 0,
            calls: 0,
            call_message: None,
            last_token: None,
            generated: Vec::new(),
            content_sent: false,
            submitted: Instant::now(),
            first_token: None,
            done: false,
        })
    }

    /// The next token's text, with the outcome when it was the last.
    /// Dropping the turn before then cancels the generation.
    pub async fn next(&mut self) -> Result<(Update, Option<Outcome>), ApiError> {
        loop {
            if self.done {
                return Err(ApiError::internal("the generation is over"));
            }
            let event = tokio::select! {
                event = async {
                    match self.events.as_mut() {
                        Some(events) => events.recv().await,
                        None => None,
                    }
                } => event,
                () = past(&mut self.deadline) => {
                    self.done = true;
                    // Dropping the receiver stops the generation.
                    self.events = None;
                    return Err(ApiError::cut());
                }
            };
            match event {
                Some(Event::Started { cached_tokens }) => self.cached_tokens = cached_tokens,
                Some(Event::Token(token)) => {
                    self.first_token.get_or_insert_with(|| self.submitted.elapsed());
                    self.completion_tokens += 1;
                    let update = self.push(token.id, token.logprobs)?;
                    let outcome = self.stops.matched.then(|| self.finish(Stop::StopToken));
                    return Ok((update, outcome));
                }
                Some(Event::Finished(stop)) => {
                    // The engine stops on <|call|> as on any stop token; a
                    // call is this layer's reading of it.
                    let stop = match stop {
                        Stop::StopToken if self.calls > 0 && self.last_token == Some(self.control.call) => {
                            Stop::ToolCalls
                        }
                        other => other,
                    };
                    let update = self.flush()?;
                    return Ok((update, Some(self.finish(stop))));
                }
                Some(Event::Failed(message)) => {
                    self.done = true;
                    return Err(ApiError::internal(format!("generation failed: {message}")));
                }
                None => {
                    self.done = true;
                    return Err(ApiError::internal(
                        "the engine stopped before the generation ended",
                    ));
                }
            }
        }
    }

    fn push(&mut self, token: u32, logprobs: Option<TokenLogprobs>) -> Result<Update, ApiError> {
        let mut update = Update::default();
        self.last_token = Some(token);
        let decode_error = |e: crate::tokenizer::Error| ApiError::internal(e.to_string());
        match &mut self.text {
            Text::Chat(parser) => {
                self.generated.push(token);
                let in_reasoning = parser.current().is_some_and(|m| m.is_reasoning());
                if in_reasoning && !self.control.ends_message(token) {
                    self.reasoning_tokens += 1;
                }
                let delta = parser.push(token);
                // A call is announced as soon as its header is complete, so
                // a call with empty arguments is reported too.
                let index = parser.messages().len();
                let call_name = parser.current().and_then(tool_name).map(str::to_string);
                if let (Some(name), true) = (call_name, self.call_message != Some(index)) {
                    self.call_message = Some(index);
                    self.calls += 1;
                    update.call = Some(CallDelta {
                        index: self.calls - 1,
                        name: Some(name),
                        arguments: String::new(),
                    });
                }
                if let Some(delta) = delta {
                    let message = parser.message(delta.index);
                    if message.is_some_and(|m| m.is_answer()) {
                        self.content_sent = true;
                        update.content = delta.text;
                        update.logprobs = logprobs;
                    } else if message.is_some_and(|m| m.is_reasoning()) {
                        update.reasoning = delta.text;
                    } else if message.and_then(tool_name).is_some() {
                        let call = update.call.get_or_insert(CallDelta {
                            index: self.calls - 1,
                            name: None,
                            arguments: String::new(),
                        });
                        call.arguments.push_str(&delta.text);
                    }
                }
            }
            Text::Raw(decoder) => {
                update.content = decoder.push(token).map_err(decode_error)?;
                update.logprobs = logprobs;
            }
        }
        update.content = self.stops.push(&update.content);
        Ok(update)
    }

    /// Text held back at the end: an incomplete character, or the start of
    /// a stop string that never completed. For a chat whose answer was
    /// never streamed: the answer the lenient parse found all the same (text
    /// after `<|end|>` with no header, which arrives as a whole, not in
    /// deltas), or, when the output formed no harmony message at all, that
    /// output as it is, control tokens written out — so a client sees what
    /// the model did instead of an empty answer.
    fn flush(&mut self) -> Result<Update, ApiError> {
        let mut update = Update::default();
        match &mut self.text {
            Text::Raw(decoder) => {
                let rest = decoder.finish().map_err(|e| ApiError::internal(e.to_string()))?;
                update.content = self.stops.push(&rest);
            }
            Text::Chat(parser) if !self.content_sent => {
                let messages = parser.messages();
                let answer = messages
                    .iter()
                    .rev()
                    .find(|m| m.is_final())
                    .or_else(|| messages.iter().find(|m| m.is_answer()));
                let text = match answer {
                    Some(message) => message.content.clone(),
                    None if messages.is_empty() && parser.current().is_none() => {
                        let text = self
                            .tokenizer
                            .decode(&self.generated)
                            .map_err(|e| ApiError::internal(e.to_string()))?;
                        if !text.is_empty() {
                            tracing::warn!(output = %text, "the model's output formed no harmony message; it is the answer as it is");
                        }
                        text
                    }
                    None => String::new(),
                };
                update.content = self.stops.push(&text);
            }
            Text::Chat(_) => {}
        }
        update.content.push_str(&self.stops.flush());
        Ok(update)
    }

    fn finish(&mut self, reason: Stop) -> Outcome {
        self.done = true;
        // Dropping the receiver tells the engine to stop (a stop string).
        self.events = None;
        let elapsed = self.submitted.elapsed();
        Outcome {
            finish_reason: reason,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.completion_tokens,
            reasoning_tokens: self.reasoning_tokens,
            time_to_first_token: self.first_token.unwrap_or(elapsed),
            elapsed,
        }
    }

    pub fn tokenizer(&self) -> &'t Tokenizer {
        self.tokenizer
    }
}

/// The function a message calls: an assistant message to `functions.NAME`.
fn tool_name(message: &Message) -> Option<&str> {
    (message.role == Role::Assistant)
        .then(|| message.recipient.as_deref()?.strip_prefix("functions."))
        .flatten()
}

/// Resolves once `deadline` is set; never while the server runs on (or
/// when it is gone, in tests without one).
pub async fn past(deadline: &mut watch::Receiver<bool>) {
    if deadline.wait_for(|&cut| cut).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// OpenAI's `stop`: text ends before the first occurrence of any of the
/// strings. Text that might be the start of one is held back until it
/// is clear either way, so a stop string is never streamed in part.
struct StopStrings {
    stops: Vec<String>,
    held: String,
    matched: bool,
}

impl StopStrings {
    fn new(stops: Vec<String>) -> StopStrings {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            matched: false,
        }
    }

    /// The part of `text` that can be sent now.
    fn push(&mut self, text: &str) -> String {
        if self.matched {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.matched = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        // Keep the longest tail that begins some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        out
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::driver::Token;
    use tokio::sync::mpsc::unbounded_channel;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/tokenizer");
        Tokenizer::load(&dir).expect("run `make fixtures` for target/fixtures/tokenizer")
    }

    /// Feeds `output` (text, then an optional control token) through a
    /// chat turn: (reasoning, content, outcome).
    fn chat(output: &[(&str, Option<u32>)], stops: &[&str], end: Stop) -> (String, String, Outcome) {
        let (reasoning, content, _, outcome) = chat_with_calls(output, stops, end);
        (reasoning, content, outcome)
    }

    /// [`chat`], with the tool-call deltas too.
    fn chat_with_calls(
        output: &[(&str, Option<u32>)],
        stops: &[&str],
        end: Stop,
    ) -> (String, String, Vec<CallDelta>, Outcome) {
        let tokenizer = tokenizer();
        let (events, receiver) = unbounded_channel();
        events.send(Event::Started { cached_tokens: 3 }).unwrap();
        for (text, control) in output {
            for id in tokenizer
                .encode_ordinary(text)
                .unwrap()
                .into_iter()
                .chain(*control)
            {
                let token = Token {
                    id,
                    logprobs: None,
                    watched: Vec::new(),
                };
                events.send(Event::Token(token)).unwrap();
            }
        }
        events.send(Event::Finished(end)).unwrap();
        let stops = stops.iter().map(|s| s.to_string()).collect();
        let deadline = watch::channel(false).1;
        let mut turn = Turn::new(&tokenizer, receiver, deadline, 10, true, stops).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
        runtime.block_on(async {
            loop {
                let (update, outcome) = turn.next().await.unwrap();
                reasoning.push_str(&update.reasoning);
                content.push_str(&update.content);
                calls.extend(update.call);
                if let Some(outcome) = outcome {
                    return (reasoning, content, calls, outcome);
                }
            }
        })
    }

    #[test]
    fn an_answer_outside_the_format_is_still_the_answer() {
        // Text after `<|end|>` with no header: the lenient parse's answer.
        let output = [
            ("", Some(CHANNEL)),
            ("analysis", Some(MESSAGE)),
            ("Spam.", Some(END)),
            ("The content is spam.\n\nAnswer: 1", Some(RETURN)),
        ];
        let (reasoning, content, outcome) = chat(&output, &[], Stop::StopToken);
        assert_eq!(
            (reasoning.as_str(), content.as_str()),
            ("Spam.", "The content is spam.\n\nAnswer: 1")
        );
        assert_eq!(outcome.finish_reason, Stop::StopToken);
        // No harmony message at all: the output as it is.
        let (reasoning, content, _) = chat(&[("", Some(END)), ("", Some(RETURN))], &[], Stop::StopToken);
        assert_eq!((reasoning.as_str(), content.as_str()), ("", "<|end|><|return|>"));
        // Output that did form a message keeps to it.
        let output = [("", Some(CHANNEL)), ("analysis", Some(MESSAGE)), ("hm", None)];
        let (reasoning, content, _) = chat(&output, &[], Stop::Length);
        assert_eq!((reasoning.as_str(), content.as_str()), ("hm", ""));
    }

    #[test]
    fn tool_calls_are_announced_by_name_then_their_arguments_stream() {
        const CONSTRAIN: u32 = 200003;
        const CALL: u32 = 200012;
        let output = [
            ("", Some(CHANNEL)),
            ("analysis", Some(MESSAGE)),
            ("Two lookups.", Some(END)),
            ("", Some(START)),
            ("assistant", Some(CHANNEL)),
            ("commentary to=functions.get_weather ", Some(CONSTRAIN)),
            ("json", Some(MESSAGE)),
            ("{\"city\":\"Paris\"}", Some(END)),
            ("", Some(START)),
            ("assistant to=functions.now", Some(CHANNEL)),
            ("commentary", Some(MESSAGE)),
            ("", Some(CALL)),
        ];
        let (reasoning, content, calls, outcome) = chat_with_calls(&output, &[], Stop::StopToken);
        assert_eq!((reasoning.as_str(), content.as_str()), ("Two lookups.", ""));
        assert_eq!(outcome.finish_reason, Stop::ToolCalls);
        let named: Vec<(usize, Option<&str>)> = calls.iter().map(|c| (c.index, c.name.as_deref())).collect();
        assert_eq!(named[0], (0, Some("get_weather")));
        assert_eq!(
            named.last(),
            Some(&(1, Some("now"))),
            "a call with no arguments is announced"
        );
        assert!(named[1..named.len() - 1]
            .iter()
            .all(|&(i, name)| i == 0 && name.is_none()));
        let arguments: String = calls
            .iter()
            .filter(|c| c.index == 0)
            .map(|c| c.arguments.as_str())
            .collect();
        assert_eq!(arguments, "{\"city\":\"Paris\"}");
        assert!(calls.len() > 3, "the arguments arrive in pieces: {calls:?}");

        // A call cut off by the token limit is a length stop, not a call.
        let (_, _, calls, outcome) = chat_with_calls(&output[..8], &[], Stop::Length);
        assert_eq!(outcome.finish_reason, Stop::Length);
        assert_eq!(calls[0].name.as_deref(), Some("get_weather"));
    }

    const CHANNEL: u32 = 200005;
    const MESSAGE: u32 = 200008;
    const END: u32 = 200007;
    const START: u32 = 200006;
    const RETURN: u32 = 200002;

    #[test]
    fn harmony_output_splits_into_reasoning_and_answer() {
        let thought = "The text sells watches; that is spam.";
        let output = [
            ("", Some(CHANNEL)),
            ("analysis", Some(MESSAGE)),
            (thought, Some(END)),
            ("", Some(START)),
            ("assistant", Some(CHANNEL)),
            ("final", Some(MESSAGE)),
            ("1 (spam)", Some(RETURN)),
        ];
        let (reasoning, content, outcome) = chat(&output, &[], Stop::StopToken);
        assert_eq!(reasoning, thought);
        assert_eq!(content, "1 (spam)");
        assert_eq!(outcome.finish_reason, Stop::StopToken);
        assert_eq!(outcome.cached_tokens, 3);
        let thought_tokens = tokenizer().encode_ordinary(thought).unwrap().len();
        assert_eq!(outcome.reasoning_tokens, thought_tokens);
        let total: usize = output
            .iter()
            .map(|(t, c)| tokenizer().encode_ordinary(t).unwrap().len() + usize::from(c.is_some()))
            .sum();
        assert_eq!(outcome.completion_tokens, total);

        // A stop string ends the answer (and only the answer) before it.
        let (reasoning, content, outcome) = chat(&output, &[" (sp"], Stop::StopToken);
        assert_eq!((reasoning.as_str(), content.as_str()), (thought, "1"));
        assert_eq!(outcome.finish_reason, Stop::StopToken);

        // Cut off while reasoning: no answer, and the limit is the reason.
        let (reasoning, content, outcome) = chat(&output[..3], &[], Stop::Length);
        assert_eq!((reasoning.as_str(), content.as_str()), (thought, ""));
        assert_eq!(outcome.finish_reason, Stop::Length);
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: String = pieces.iter().map(|p| s.push(p)).collect();
        if !s.matched {
            out.push_str(&s.flush());
        }
        (out, s.matched)
    }

    #[test]
    fn text_ends_before_a_stop_string_split_across_tokens() {
        assert_eq!(run(&["END"], &["abc E", "N", "D more"]), ("abc ".into(), true));
        assert_eq!(run(&["xyz", "b"], &["aaab"]), ("aaa".into(), true));
    }

    #[test]
    fn a_near_miss_is_released_in_full() {
        assert_eq!(run(&["END"], &["abc E", "N", "x"]), ("abc ENx".into(), false));
        assert_eq!(run(&["END"], &["abc EN"]), ("abc EN".into(), false));
        assert_eq!(run(&[], &["é", "à"]), ("éà".into(), false));
    }
}
