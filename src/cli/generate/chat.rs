//! `generate --prompt` as a harmony chat: the prompt rendered as a user turn,
//! the output parsed into reasoning and answer as it streams.

use std::io::{self, Write};

use serde_json::Value;

use crate::harmony::{Completion, Conversation, Effort, Finish, Message, StreamParser, SystemContent};

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// The system message (with `identity` if given), the developer's
/// instructions if any, and `prompt` as the user's message.
pub(super) fn conversation(
    prompt: &str,
    effort: Effort,
    identity: Option<&str>,
    instructions: Option<&str>,
) -> Conversation {
    let mut system = SystemContent::default().with_effort(effort);
    if let Some(identity) = identity {
        system = system.with_identity(identity);
    }
    let mut conversation = Conversation::new(system).with_message(Message::user(prompt));
    conversation.instructions = instructions.map(str::to_string);
    conversation
}

/// `finish_reason`: the parser tells `<|return|>` (stop) from `<|call|>`
/// (tool_calls); an end-of-sequence id that is not harmony's (`<|endoftext|>`)
/// is still a stop.
pub(super) fn finish_reason(chat: &Completion, stopped: bool) -> &'static str {
    match chat.finish {
        Finish::Length if stopped => "stop",
        finish => finish.reason(),
    }
}

/// The chat's fields of the `--json` object.
pub(super) fn add_json_fields(chat: &Completion, out: &mut Value) {
    out["reasoning"] = chat.reasoning().into();
    out["content"] = chat.answer().map(|m| m.content.clone()).into();
    out["parse_issues"] = chat.issues.iter().map(ToString::to_string).collect();
}

/// The first few things in the output that broke the format, on stderr.
pub(super) fn report_issues(chat: &Completion) {
    const SHOWN: usize = 3;
    for issue in chat.issues.iter().take(SHOWN) {
        eprintln!("warning: harmony: {issue}");
    }
    if chat.issues.len() > SHOWN {
        eprintln!("warning: harmony: … and {} more", chat.issues.len() - SHOWN);
    }
}

/// Parses generated tokens and, when `echo`, writes each message's text as it
/// arrives: the answer plain, everything else (reasoning, tool calls) dimmed
/// when `dim`, one message per line.
pub(super) struct ChatStream<'t> {
    parser: StreamParser<'t>,
    echo: bool,
    dim: bool,
    /// The message being written and whether it is dimmed.
    writing: Option<(usize, bool)>,
}

impl<'t> ChatStream<'t> {
    pub(super) fn new(parser: StreamParser<'t>, echo: bool, dim: bool) -> ChatStream<'t> {
        ChatStream {
            parser,
            echo,
            dim,
            writing: None,
        }
    }

    pub(super) fn push(&mut self, token: u32, out: &mut impl Write) -> io::Result<()> {
        let Some(delta) = self.parser.push(token) else {
            return Ok(());
        };
        if !self.echo {
            return Ok(());
        }
        if self.writing.map(|(index, _)| index) != Some(delta.index) {
            self.end_message(out)?;
            let dimmed = self.dim && !self.parser.message(delta.index).is_some_and(Message::is_answer);
            if dimmed {
                write!(out, "{DIM}")?;
            }
            self.writing = Some((delta.index, dimmed));
        }
        write!(out, "{}", delta.text)?;
        out.flush()
    }

    pub(super) fn finish(mut self, out: &mut impl Write) -> io::Result<Completion> {
        self.end_message(out)?;
        Ok(self.parser.finish())
    }

    fn end_message(&mut self, out: &mut impl Write) -> io::Result<()> {
        match self.writing.take() {
            Some((_, true)) => writeln!(out, "{RESET}"),
            Some((_, false)) => writeln!(out),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    /// What `generate --prompt` prints for one completion.
    fn printed(tokenizer: &Tokenizer, output: &[(&str, Option<u32>)], dim: bool) -> String {
        let mut stream = ChatStream::new(StreamParser::new(tokenizer).unwrap(), true, dim);
        let mut out = Vec::new();
        for (text, control) in output {
            for id in tokenizer
                .encode_ordinary(text)
                .unwrap()
                .into_iter()
                .chain(*control)
            {
                stream.push(id, &mut out).unwrap();
            }
        }
        stream.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reasoning_is_dimmed_on_a_terminal_and_the_answer_plain() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/tokenizer");
        let tokenizer = Tokenizer::load(&dir).expect("run `make fixtures` for target/fixtures/tokenizer");
        let (channel, message, end, start, ret) = (200005, 200008, 200007, 200006, 200002);
        let output = [
            ("", Some(channel)),
            ("analysis", Some(message)),
            ("Looks like spam.", Some(end)),
            ("", Some(start)),
            ("assistant", Some(channel)),
            ("final", Some(message)),
            ("1", Some(ret)),
        ];
        assert_eq!(
            printed(&tokenizer, &output, true),
            "\x1b[2mLooks like spam.\x1b[0m\n1\n"
        );
        assert_eq!(printed(&tokenizer, &output, false), "Looks like spam.\n1\n");
        // Cut off in the reasoning: the style is still reset.
        let cut = [output[0], output[1], ("Looks like", None)];
        assert_eq!(printed(&tokenizer, &cut, true), "\x1b[2mLooks like\x1b[0m\n");
    }
}
