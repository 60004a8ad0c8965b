//! Conversations to prompt tokens, as `openai-harmony` renders them.
//!
//! Each piece of text is encoded on its own, at the same boundaries as the
//! official renderer (role, `:name`, ` to=recipient`, channel, content type,
//! content), because BPE merges differ across boundaries.

use super::tools::{response_format_section, tools_section, ResponseFormat, Tool};
use super::{ControlTokens, Effort, Error, Message, Result, Role};
use crate::tokenizer::Tokenizer;

/// The identity harmony's system message starts with unless told otherwise.
pub const DEFAULT_IDENTITY: &str = "You are ChatGPT, a large language model trained by OpenAI.";

/// The contents of the system message:
///
/// ```text
/// {identity}
/// Knowledge cutoff: {knowledge_cutoff}
/// Current date: {date}                  (only with a date)
///
/// Reasoning: {effort}
///
/// # Valid channels: analysis, commentary, final. Channel must be included for every message.
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemContent {
    pub identity: String,
    pub knowledge_cutoff: String,
    /// `YYYY-MM-DD`, written as given.
    pub date: Option<String>,
    pub effort: Effort,
}

impl Default for SystemContent {
    fn default() -> SystemContent {
        SystemContent {
            identity: DEFAULT_IDENTITY.to_string(),
            knowledge_cutoff: "2024-06".to_string(),
            date: None,
            effort: Effort::default(),
        }
    }
}

impl SystemContent {
    pub fn with_identity(mut self, identity: impl Into<String>) -> SystemContent {
        self.identity = identity.into();
        self
    }

    pub fn with_date(mut self, date: impl Into<String>) -> SystemContent {
        self.date = Some(date.into());
        self
    }

    pub fn with_effort(mut self, effort: Effort) -> SystemContent {
        self.effort = effort;
        self
    }

    /// The message text, sections joined by blank lines. With function
    /// tools offered, the channels line says where their calls go.
    pub fn text(&self, has_function_tools: bool) -> String {
        let mut top = vec![
            self.identity.clone(),
            format!("Knowledge cutoff: {}", self.knowledge_cutoff),
        ];
        if let Some(date) = &self.date {
            top.push(format!("Current date: {date}"));
        }
        let mut channels =
            "# Valid channels: analysis, commentary, final. Channel must be included for every message."
                .to_string();
        if has_function_tools {
            channels.push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
        }
        [top.join("\n"), format!("Reasoning: {}", self.effort), channels].join("\n\n")
    }
}

/// A chat to render: the system message, the developer's instructions (a
/// policy, for the classifiers), tools and answer format, and the turns after them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub system: SystemContent,
    /// The developer message's `# Instructions`.
    pub instructions: Option<String>,
    /// The developer message's `# Tools` (the `functions` namespace).
    pub tools: Vec<Tool>,
    /// The developer message's `# Response Formats`.
    pub response_format: Option<ResponseFormat>,
    /// User turns, earlier assistant turns, tool results, in order.
    pub messages: Vec<Message>,
}

impl Conversation {
    pub fn new(system: SystemContent) -> Conversation {
        Conversation {
            system,
            ..Conversation::default()
        }
    }

    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Conversation {
        self.instructions = Some(instructions.into());
        self
    }

    pub fn with_tools(mut self, tools: Vec<Tool>) -> Conversation {
        self.tools = tools;
        self
    }

    pub fn with_response_format(mut self, format: ResponseFormat) -> Conversation {
        self.response_format = Some(format);
        self
    }

    /// The developer message: instructions, tools, response format, in that
    /// order; `None` when there is none of them.
    fn developer_text(&self) -> Option<String> {
        let mut sections = Vec::new();
        if let Some(instructions) = &self.instructions {
            sections.push(format!("# Instructions\n\n{instructions}"));
        }
        if !self.tools.is_empty() {
            sections.push(tools_section(&self.tools));
        }
        if let Some(format) = &self.response_format {
            sections.push(response_format_section(format));
        }
        (!sections.is_empty()).then(|| sections.join("\n\n"))
    }

    pub fn with_message(mut self, message: Message) -> Conversation {
        self.messages.push(message);
        self
    }

    /// The messages that are rendered: harmony drops the chain of thought of
    /// finished turns. When the last assistant message is a `final` answer,
    /// `analysis` messages before the first `final` one are left out (later
    /// ones stay); while a turn is ongoing (tool use), nothing is dropped.
    fn rendered_messages(&self) -> impl Iterator<Item = &Message> {
        let last_assistant_is_final = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .is_some_and(Message::is_final);
        let first_final = self.messages.iter().position(Message::is_final);
        self.messages.iter().enumerate().filter_map(move |(i, m)| {
            let dropped = last_assistant_is_final
                && first_final.is_some_and(|first| i < first)
                && m.channel.as_deref() == Some("analysis");
            (!dropped).then_some(m)
        })
    }
}

/// The prompt for the assistant's next turn: the conversation, then
/// `<|start|>assistant`, after which the model writes `<|channel|>…`.
pub fn render_for_completion(conversation: &Conversation, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let renderer = Renderer {
        tokenizer,
        control: ControlTokens::of(tokenizer)?,
    };
    let mut ids = Vec::new();
    let has_function_tools = !conversation.tools.is_empty();
    let system = Message::new(Role::System, conversation.system.text(has_function_tools));
    renderer.message(&system, &mut ids)?;
    if let Some(developer) = conversation.developer_text() {
        renderer.message(&Message::new(Role::Developer, developer), &mut ids)?;
    }
    for message in conversation.rendered_messages() {
        renderer.message(message, &mut ids)?;
    }
    ids.push(renderer.control.start);
    renderer.text(Role::Assistant.as_str(), &mut ids)?;
    Ok(ids)
}

struct Renderer<'t> {
    tokenizer: &'t Tokenizer,
    control: ControlTokens,
}

impl Renderer<'_> {
    fn text(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        ids.extend(self.tokenizer.encode_ordinary(text)?);
        Ok(())
    }

    fn message(&self, message: &Message, ids: &mut Vec<u32>) -> Result<()> {
        const CONSTRAIN: &str = "<|constrain|>";
        ids.push(self.control.start);
        match (message.role, &message.name) {
            (Role::Tool, Some(name)) => self.text(name, ids)?,
            (Role::Tool, None) => return Err(Error::ToolWithoutName),
            (role, name) => {
                self.text(role.as_str(), ids)?;
                if let Some(name) = name {
                    self.text(&format!(":{name}"), ids)?;
                }
            }
        }
        if message.has_recipient() {
            let recipient = message.recipient.as_deref().unwrap_or_default();
            self.text(&format!(" to={recipient}"), ids)?;
        }
        if let Some(channel) = &message.channel {
            ids.push(self.control.channel);
            self.text(channel, ids)?;
        }
        match message.content_type.as_deref() {
            // `<|constrain|>` is the control token even inside a content type.
            Some(content_type) if content_type.starts_with(CONSTRAIN) => {
                self.text(" ", ids)?;
                ids.push(self.control.constrain);
                self.text(&content_type[CONSTRAIN.len()..], ids)?;
            }
            Some(content_type) => self.text(&format!(" {content_type}"), ids)?,
            None => {}
        }
        ids.push(self.control.message);
        self.text(&message.content, ids)?;
        let tool_call = message.role == Role::Assistant && message.recipient.is_some();
        ids.push(if tool_call {
            self.control.call
        } else {
            self.control.end
        });
        Ok(())
    }
}
