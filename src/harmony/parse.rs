//! The model's output, token by token, back into harmony messages.
//!
//! Where the output follows the format this reads it exactly as the official
//! `StreamableParser` does (header words, the channel ending at whitespace or
//! `<`, bytes of a character split across tokens). Where the official parser
//! throws and loses what it had, this one keeps every message so far, takes
//! the best reading of the rest and records an [`Issue`]:
//!
//! | output | official | here |
//! | --- | --- | --- |
//! | cut off inside a header | error | messages so far, [`Issue::TruncatedHeader`] |
//! | cut off inside content | the partial message | the same, marked partial, [`Issue::TruncatedContent`] |
//! | stop token inside a header | error (strict) | the header's leftover words as content, [`Issue::StopInHeader`] |
//! | text after `<\|end\|>` without `<\|start\|>` | error | read as a new assistant header, [`Issue::MissingStart`] |
//! | `<\|start\|>` or `<\|channel\|>` inside content | kept as text | ends the message there, [`Issue::MissingEnd`] |
//! | `final <\|constrain\|>json` | recipient `<\|constrain\|>json` | content type `<\|constrain\|>json` |
//! | a header it cannot read | error | the parts it can read, [`Issue::MalformedHeader`] |

use std::fmt;

use super::{ControlTokens, Message, Result, Role};
use crate::tokenizer::Tokenizer;

const CHANNEL: &str = "<|channel|>";
const CONSTRAIN: &str = "<|constrain|>";

/// Something in the output that did not follow the format, and how it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Issue {
    /// A token between messages where `<|start|>` belongs: it was read as
    /// the start of an assistant message's header.
    MissingStart { token: u32 },
    /// A stop token between messages (as in `<|end|><|return|>`): nothing to end.
    StrayStop { token: u32 },
    /// `<|start|>` or `<|channel|>` inside a message's content: the message
    /// was ended there and a new one begun.
    MissingEnd { token: u32 },
    /// A stop token inside a header (no `<|message|>`): the header's words
    /// after the role and channel became the content, as the official parser
    /// does when not strict.
    StopInHeader { token: u32 },
    /// Part of a header could not be read; the rest was kept.
    MalformedHeader { header: String, problem: HeaderProblem },
    /// `<|constrain|>…` with no recipient, which the official parser takes
    /// for the recipient: taken as the content type instead (not a tool call).
    ConstrainWithoutRecipient { content_type: String },
    /// Generation ended inside a header: that message has no content yet and
    /// is not among the messages.
    TruncatedHeader { header: String },
    /// Generation ended inside content: the last message is partial.
    TruncatedContent,
    /// An id the tokenizer does not know; skipped.
    UnknownToken { token: u32 },
}

/// What was wrong with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// `<|channel|>` with no name after it: no channel.
    EmptyChannel,
    /// No role after `<|start|>`: taken as the assistant.
    MissingRole,
    /// A single word that is no role: taken as the assistant.
    UnknownRole(String),
    /// Words besides role, recipient, channel and content type: dropped.
    ExtraWords(String),
    /// Bytes that are not UTF-8: read as U+FFFD.
    InvalidUtf8,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Issue::MissingStart { token } => {
                write!(f, "token {token} between messages where <|start|> belongs")
            }
            Issue::StrayStop { token } => write!(f, "stop token {token} between messages"),
            Issue::MissingEnd { token } => {
                write!(
                    f,
                    "control token {token} inside a message; the message was ended there"
                )
            }
            Issue::StopInHeader { token } => write!(f, "stop token {token} inside a message header"),
            Issue::MalformedHeader { header, problem } => {
                write!(f, "malformed header \"{}\": ", shorten(header))?;
                match problem {
                    HeaderProblem::EmptyChannel => write!(f, "<|channel|> without a name"),
                    HeaderProblem::MissingRole => write!(f, "no role"),
                    HeaderProblem::UnknownRole(role) => write!(f, "unknown role {role:?}"),
                    HeaderProblem::ExtraWords(words) => write!(f, "unexpected words {words:?}"),
                    HeaderProblem::InvalidUtf8 => write!(f, "invalid UTF-8"),
                }
            }
            Issue::ConstrainWithoutRecipient { content_type } => {
                write!(f, "{content_type} without a recipient, taken as the content type")
            }
            Issue::TruncatedHeader { header } => {
                write!(f, "output ends inside header \"{}\"", shorten(header))
            }
            Issue::TruncatedContent => write!(f, "output ends inside the last message"),
            Issue::UnknownToken { token } => write!(f, "unknown token id {token}"),
        }
    }
}

/// The first 40 characters of `text`, for messages.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// How generation ended, as far as the output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// On `<|return|>`: the answer is done.
    Return,
    /// On `<|call|>`: the assistant called a tool.
    Call,
    /// On anything else: the token limit.
    Length,
}

impl Finish {
    /// OpenAI's `finish_reason`: `stop`, `tool_calls` or `length`.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Return => "stop",
            Finish::Call => "tool_calls",
            Finish::Length => "length",
        }
    }
}

/// Text added to a message's content by one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The message's position, for [`StreamParser::message`].
    pub index: usize,
    pub text: String,
}

/// Everything parsed from one completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub messages: Vec<Message>,
    /// The last message was cut off (generation ended inside its content).
    pub partial: bool,
    pub issues: Vec<Issue>,
    pub finish: Finish,
}

impl Completion {
    /// The answer: the last `final` message, else the first assistant message
    /// with neither channel nor recipient.
    pub fn answer(&self) -> Option<&Message> {
        self.answer_index().map(|i| &self.messages[i])
    }

    /// Whether there is an answer and it ended with a stop or end token.
    pub fn answer_complete(&self) -> bool {
        self.answer_index()
            .is_some_and(|i| !(self.partial && i + 1 == self.messages.len()))
    }

    /// The chain of thought: `analysis` and `commentary` without recipient.
    pub fn reasoning_messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(|m| m.is_reasoning())
    }

    /// The reasoning messages' text, one message per line.
    pub fn reasoning(&self) -> String {
        self.reasoning_messages()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn answer_index(&self) -> Option<usize> {
        self.messages.iter().rposition(Message::is_final).or_else(|| {
            self.messages
                .iter()
                .position(|m| m.role == Role::Assistant && m.channel.is_none() && !m.has_recipient())
        })
    }
}

enum State {
    /// Between messages, waiting for `<|start|>`.
    ExpectStart,
    /// Reading a header. `role` is known for the first message (the prompt
    /// ended with `<|start|>assistant`) and after a missing `<|start|>`.
    Header { bytes: Vec<u8>, role: Option<Role> },
    /// Reading content; `pending` holds the bytes of a character not yet complete.
    Content { message: Message, pending: Vec<u8> },
}

/// Parses generated tokens one at a time, after a prompt that ended with
/// `<|start|>assistant`.
pub struct StreamParser<'t> {
    tokenizer: &'t Tokenizer,
    control: ControlTokens,
    messages: Vec<Message>,
    state: State,
    issues: Vec<Issue>,
    /// The last token, if it stopped generation (`<|return|>`, `<|call|>`).
    stopped_on: Option<u32>,
    /// Whether any token was pushed.
    started: bool,
}

impl<'t> StreamParser<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Result<StreamParser<'t>> {
        Ok(StreamParser {
            tokenizer,
            control: ControlTokens::of(tokenizer)?,
            messages: Vec::new(),
            state: State::Header {
                bytes: Vec::new(),
                role: Some(Role::Assistant),
            },
            issues: Vec::new(),
            stopped_on: None,
            started: false,
        })
    }

    /// Reads one token; returns the text it adds to a message, if any.
    pub fn push(&mut self, token: u32) -> Option<Delta> {
        let control = self.control;
        self.started = true;
        self.stopped_on = control.stops_generation(token).then_some(token);
        match &mut self.state {
            State::ExpectStart if token == control.start => {
                self.state = State::Header {
                    bytes: Vec::new(),
                    role: None,
                };
                None
            }
            State::ExpectStart if control.ends_message(token) => {
                self.issues.push(Issue::StrayStop { token });
                None
            }
            State::ExpectStart => {
                self.issues.push(Issue::MissingStart { token });
                self.state = State::Header {
                    bytes: Vec::new(),
                    role: Some(Role::Assistant),
                };
                self.push_header_token(token);
                None
            }
            State::Header { bytes, role } if token == control.message => {
                let (bytes, role) = (std::mem::take(bytes), *role);
                let (message, _) = self.read_header(&bytes, role, false);
                self.state = State::Content {
                    message,
                    pending: Vec::new(),
                };
                None
            }
            State::Header { bytes, role } if control.ends_message(token) => {
                let (bytes, role) = (std::mem::take(bytes), *role);
                self.state = State::ExpectStart;
                self.issues.push(Issue::StopInHeader { token });
                if !bytes.is_empty() {
                    let (mut message, words) = self.read_header(&bytes, role, true);
                    message.content = words;
                    self.messages.push(message);
                }
                None
            }
            State::Header { .. } => {
                self.push_header_token(token);
                None
            }
            State::Content { .. } if control.ends_message(token) => {
                self.end_message();
                None
            }
            State::Content { .. } if token == control.start || token == control.channel => {
                self.end_message();
                self.issues.push(Issue::MissingEnd { token });
                let role = (token == control.channel).then_some(Role::Assistant);
                self.state = State::Header {
                    bytes: Vec::new(),
                    role,
                };
                if token == control.channel {
                    self.push_header_token(token);
                }
                None
            }
            State::Content { message, pending } => {
                let Some(bytes) = self.tokenizer.token_bytes(token) else {
                    self.issues.push(Issue::UnknownToken { token });
                    return None;
                };
                pending.extend(bytes);
                let text = take_utf8(pending);
                message.content.push_str(&text);
                let index = self.messages.len();
                (!text.is_empty()).then_some(Delta { index, text })
            }
        }
    }

    /// The messages ended so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The message whose content is being read, if any.
    pub fn current(&self) -> Option<&Message> {
        match &self.state {
            State::Content { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Message `index` (see [`Delta::index`]), ended or current.
    pub fn message(&self, index: usize) -> Option<&Message> {
        self.messages
            .get(index)
            .or_else(|| self.current().filter(|_| index == self.messages.len()))
    }

    pub fn issues(&self) -> &[Issue] {
        &self.issues
    }

    /// Ends the parse where generation ended.
    pub fn finish(mut self) -> Completion {
        let mut partial = false;
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::ExpectStart => {}
            State::Header { bytes, role } => {
                // Nothing generated yet is no header; a bare `<|start|>` is one.
                if self.started && (!bytes.is_empty() || role.is_none()) {
                    let header = String::from_utf8_lossy(&bytes).into_owned();
                    self.issues.push(Issue::TruncatedHeader { header });
                }
            }
            state @ State::Content { .. } => {
                self.state = state;
                self.end_message();
                self.issues.push(Issue::TruncatedContent);
                partial = true;
            }
        }
        let finish = match self.stopped_on {
            Some(token) if token == self.control.call => Finish::Call,
            Some(_) => Finish::Return,
            None => Finish::Length,
        };
        Completion {
            messages: self.messages,
            partial,
            issues: self.issues,
            finish,
        }
    }

    fn push_header_token(&mut self, token: u32) {
        let bytes = self.tokenizer.token_bytes(token);
        match (&mut self.state, bytes) {
            (State::Header { bytes, .. }, Some(more)) => bytes.extend(more),
            (_, None) => self.issues.push(Issue::UnknownToken { token }),
            _ => unreachable!("only called while reading a header"),
        }
    }

    /// Moves the message being read, with any unfinished character as
    /// U+FFFD, to the ended messages.
    fn end_message(&mut self) {
        if let State::Content { mut message, pending } =
            std::mem::replace(&mut self.state, State::ExpectStart)
        {
            message.content.push_str(&String::from_utf8_lossy(&pending));
            self.messages.push(message);
        }
    }

    /// Reads a header as the official parser does: `<|channel|>` and the name
    /// after it (up to whitespace or `<`), then whitespace-separated words —
    /// the role (unless known), then `[to=]recipient` and/or a content type.
    /// With `words_are_content` (a stop token ended the header) the text after
    /// the role is returned as content instead, its whitespace kept (it is
    /// the answer when the model wrote `<|end|>TEXT<|return|>`).
    fn read_header(
        &mut self,
        bytes: &[u8],
        role: Option<Role>,
        words_are_content: bool,
    ) -> (Message, String) {
        let header = String::from_utf8_lossy(bytes).into_owned();
        let mut problems = Vec::new();
        if std::str::from_utf8(bytes).is_err() {
            problems.push(HeaderProblem::InvalidUtf8);
        }

        let mut channel = None;
        let mut rest = header.clone();
        if let Some(at) = header.find(CHANNEL) {
            let after = &header[at + CHANNEL.len()..];
            let end = after
                .find(|c: char| c.is_whitespace() || c == '<')
                .unwrap_or(after.len());
            if end == 0 {
                problems.push(HeaderProblem::EmptyChannel);
            } else {
                channel = Some(after[..end].to_string());
            }
            rest = format!("{}{}", &header[..at], &after[end..]);
        }
        let verbatim = rest.trim().to_string();
        // `to=x<|constrain|>json` is two words.
        let rest = verbatim.replace(CONSTRAIN, &format!(" {CONSTRAIN}"));
        let mut words: Vec<&str> = rest.split_ascii_whitespace().collect();
        let word_count = words.len();

        let mut name = None;
        let role = match role {
            Some(role) => role,
            None => match words.first().copied() {
                None => {
                    problems.push(HeaderProblem::MissingRole);
                    Role::Assistant
                }
                Some(word) => match Role::from_name(word) {
                    // Also named "tool" by the official parser.
                    Some(Role::Tool) => {
                        name = Some(word.to_string());
                        Role::Tool
                    }
                    Some(role) => role,
                    // A tool's output names the tool: `functions.x to=assistant`.
                    None if words.len() > 1 || word.starts_with("to=") => {
                        name = Some(words.remove(0).to_string());
                        Role::Tool
                    }
                    None => {
                        problems.push(HeaderProblem::UnknownRole(words.remove(0).to_string()));
                        Role::Assistant
                    }
                },
            },
        };
        if words.first() == Some(&role.as_str()) {
            words.remove(0);
        }

        let content = if words_are_content {
            after_words(&verbatim, word_count - words.len()).to_string()
        } else {
            String::new()
        };
        let mut recipient = None;
        let mut content_type = None;
        if !words_are_content {
            let count = words.len();
            if let Some(last) = words.pop() {
                if let Some(to) = last.strip_prefix("to=") {
                    recipient = Some(to.to_string());
                } else if count == 1 {
                    // A lone word is the recipient, for the official parser.
                    recipient = Some(last.to_string());
                } else {
                    content_type = Some(last.to_string());
                    recipient = words
                        .pop()
                        .map(|r| r.strip_prefix("to=").unwrap_or(r).to_string());
                }
            }
            if !words.is_empty() {
                problems.push(HeaderProblem::ExtraWords(words.join(" ")));
                words.clear();
            }
        }
        if content_type.is_none() && recipient.as_deref().is_some_and(|r| r.starts_with(CONSTRAIN)) {
            content_type = recipient.take();
            self.issues.push(Issue::ConstrainWithoutRecipient {
                content_type: content_type.clone().unwrap_or_default(),
            });
        }
        self.issues
            .extend(problems.into_iter().map(|problem| Issue::MalformedHeader {
                header: header.clone(),
                problem,
            }));
        let message = Message {
            role,
            name,
            recipient,
            channel,
            content_type,
            content: String::new(),
        };
        (message, content)
    }
}

/// `text` after its first `count` whitespace-separated words, verbatim.
fn after_words(text: &str, count: usize) -> &str {
    let mut rest = text.trim_start_matches(|c: char| c.is_ascii_whitespace());
    for _ in 0..count {
        let end = rest.find(|c: char| c.is_ascii_whitespace()).unwrap_or(rest.len());
        rest = rest[end..].trim_start_matches(|c: char| c.is_ascii_whitespace());
    }
    rest
}

/// Takes the text from the front of `bytes`: complete characters, U+FFFD for
/// each invalid sequence; the start of a character still incomplete stays.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut rest: &[u8] = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let consumed = bytes.len() - rest.len();
    bytes.drain(..consumed);
    text
}
