//! OpenAI's harmony chat format for gpt-oss: conversations rendered to
//! prompt tokens, and the model's output parsed back into messages.
//!
//! Rendering is token-for-token the official `openai-harmony` renderer's
//! (`render_conversation_for_completion(conversation, Role.ASSISTANT)`):
//! control tokens are placed by id, and all text — policies, user content —
//! goes through [`Tokenizer::encode_ordinary`], so a `<|end|>` typed into a
//! policy stays text.
//!
//! Parsing is lenient where the official `StreamableParser` throws: a
//! malformed or cut-off header, stray text between messages, a stop token
//! inside a header each leave the messages parsed so far intact and add an
//! [`Issue`] to the result.
//!
//! ```text
//! <|start|>system<|message|>…<|end|><|start|>developer<|message|># Instructions…<|end|>
//! <|start|>user<|message|>…<|end|><|start|>assistant          ← render_for_completion
//! <|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>1<|return|>
//!                                                               ← StreamParser
//! ```

mod parse;
mod render;
mod tools;

use std::fmt;
use std::str::FromStr;

pub use parse::{Completion, Delta, Finish, HeaderProblem, Issue, StreamParser};
pub use render::{render_for_completion, Conversation, SystemContent, DEFAULT_IDENTITY};
pub use tools::{ResponseFormat, Tool};

use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the tokenizer has no {0} token: harmony needs the gpt-oss (o200k_harmony) vocabulary")]
    MissingToken(&'static str),
    #[error("a tool message needs the tool's name")]
    ToolWithoutName,
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long the model reasons before answering (`Reasoning: …` in the system
/// message). Medium is the harmony default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Effort {
    Low,
    #[default]
    Medium,
    High,
}

impl Effort {
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }
}

impl fmt::Display for Effort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`Effort`]: names what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reasoning effort {0:?}: expected low, medium or high")]
pub struct ParseEffortError(pub String);

impl FromStr for Effort {
    type Err = ParseEffortError;

    /// `low`, `medium` or `high`, in any letter case.
    fn from_str(s: &str) -> std::result::Result<Effort, ParseEffortError> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Effort::Low),
            "medium" => Ok(Effort::Medium),
            "high" => Ok(Effort::High),
            _ => Err(ParseEffortError(s.to_string())),
        }
    }
}

/// A `Reasoning: …` line opening a developer's instructions (a policy, a
/// chat's system message): the effort it names, read apart from the text
/// because harmony puts it in the system message.
#[derive(Debug, PartialEq, Eq)]
pub struct ReasoningLine<'t> {
    /// The line as written, trimmed, for error messages.
    pub line: &'t str,
    pub effort: std::result::Result<Effort, ParseEffortError>,
    /// The text after the line.
    pub rest: &'t str,
}

/// The `Reasoning:` line of `text`, when its first non-blank line is one.
/// Whether a value that names no effort is an error is the caller's call.
pub fn reasoning_line(text: &str) -> Option<ReasoningLine<'_>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        offset += line.len();
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value = line.strip_prefix("Reasoning:")?;
        return Some(ReasoningLine {
            line,
            effort: value.trim().parse(),
            rest: &text[offset..],
        });
    }
    None
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    /// A tool's output; the message's `name` is the tool (`functions.lookup`).
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// The role a header names, as harmony spells it (lower case only).
    pub fn from_name(name: &str) -> Option<Role> {
        [
            Role::System,
            Role::Developer,
            Role::User,
            Role::Assistant,
            Role::Tool,
        ]
        .into_iter()
        .find(|role| role.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One harmony message: the header fields and the text.
///
/// Rendered as `<|start|>{role}[:{name}][ to={recipient}][<|channel|>{channel}][ {content_type}]<|message|>{content}<|end|>`
/// (`<|call|>` instead of `<|end|>` for an assistant message with a recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    /// The author's name; for a tool message, the tool (rendered instead of the role).
    pub name: Option<String>,
    /// Whom the message is for, e.g. a tool (`functions.lookup`); `None` and
    /// `all` both mean everyone.
    pub recipient: Option<String>,
    /// `analysis`, `commentary` or `final` for the assistant.
    pub channel: Option<String>,
    /// E.g. `json` or `<|constrain|>json`.
    pub content_type: Option<String>,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            name: None,
            recipient: None,
            channel: None,
            content_type: None,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new(Role::User, content)
    }

    /// An assistant message on `channel` (`final` for an earlier answer).
    pub fn assistant(channel: &str, content: impl Into<String>) -> Message {
        Message::new(Role::Assistant, content).with_channel(channel)
    }

    pub fn with_channel(mut self, channel: impl Into<String>) -> Message {
        self.channel = Some(channel.into());
        self
    }

    pub fn with_recipient(mut self, recipient: impl Into<String>) -> Message {
        self.recipient = Some(recipient.into());
        self
    }

    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Message {
        self.content_type = Some(content_type.into());
        self
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Message {
        self.name = Some(name.into());
        self
    }

    /// Addressed to someone in particular (a tool call when from the assistant).
    pub fn has_recipient(&self) -> bool {
        self.recipient.as_deref().is_some_and(|r| r != "all")
    }

    /// The assistant's answer channel.
    pub fn is_final(&self) -> bool {
        self.channel.as_deref() == Some("final")
    }

    /// The answer: the `final` channel, or an assistant message with neither
    /// channel nor recipient (as [`Completion::answer`] takes it).
    pub fn is_answer(&self) -> bool {
        self.is_final() || (self.role == Role::Assistant && self.channel.is_none() && !self.has_recipient())
    }

    /// Chain of thought: the `analysis` channel, and `commentary` not
    /// addressed to a tool (preambles).
    pub fn is_reasoning(&self) -> bool {
        match self.channel.as_deref() {
            Some("analysis") => true,
            Some("commentary") => !self.has_recipient(),
            _ => false,
        }
    }
}

/// The ids of harmony's control tokens in a tokenizer's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlTokens {
    /// `<|start|>`: a message begins; its header follows.
    pub start: u32,
    /// `<|message|>`: the header ends, the content follows.
    pub message: u32,
    /// `<|end|>`: a message ends (not the generation).
    pub end: u32,
    /// `<|channel|>`: the channel name follows, inside a header.
    pub channel: u32,
    /// `<|constrain|>`: precedes a content type such as `json`.
    pub constrain: u32,
    /// `<|return|>`: the final answer is done; generation stops.
    pub return_: u32,
    /// `<|call|>`: a tool call is done; generation stops.
    pub call: u32,
}

impl ControlTokens {
    /// Looks the tokens up by name (`<|start|>` is 200006 in o200k_harmony).
    pub fn of(tokenizer: &Tokenizer) -> Result<ControlTokens> {
        let id = |name: &'static str| tokenizer.token_id(name).ok_or(Error::MissingToken(name));
        Ok(ControlTokens {
            start: id("<|start|>")?,
            message: id("<|message|>")?,
            end: id("<|end|>")?,
            channel: id("<|channel|>")?,
            constrain: id("<|constrain|>")?,
            return_: id("<|return|>")?,
            call: id("<|call|>")?,
        })
    }

    /// Tokens that end a message: `<|end|>`, `<|return|>`, `<|call|>`.
    pub fn ends_message(&self, token: u32) -> bool {
        token == self.end || self.stops_generation(token)
    }

    /// Tokens on which sampling stops: `<|return|>` and `<|call|>`. `<|end|>`
    /// does not stop it, since the model writes its reasoning, `<|end|>`, then
    /// the answer in one completion.
    pub fn stops_generation(&self, token: u32) -> bool {
        self.generation_stops().contains(&token)
    }

    /// The ids of [`ControlTokens::stops_generation`].
    pub fn generation_stops(&self) -> [u32; 2] {
        [self.return_, self.call]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reasoning_line_is_read_only_at_the_top() {
        let line = reasoning_line("\n  \r\n Reasoning: HIGH \r\n# Policy\nbody").unwrap();
        assert_eq!(line.line, "Reasoning: HIGH");
        assert_eq!(line.effort, Ok(Effort::High));
        assert_eq!(line.rest, "# Policy\nbody");
        let line = reasoning_line("Reasoning: extreme").unwrap();
        assert_eq!(line.effort, Err(ParseEffortError("extreme".into())));
        assert_eq!(line.rest, "");
        assert_eq!(reasoning_line("# Policy\nReasoning: low"), None);
        assert_eq!(reasoning_line(" \n "), None);
    }
}
