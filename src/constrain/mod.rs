//! Constrained decoding: the grammar (a JSON Schema, any JSON object, a
//! regular expression) holds only the harmony message that must obey it —
//! the final answer, or one tool call's arguments — and nothing else. The
//! reasoning before it and the harmony header that opens it are left to the
//! model; peers that apply the grammar from the first token (so the model
//! cannot reason, or answers blank) are what this avoids.
//!
//! A [`Constraint`] watches a sequence's tokens. While the model reasons it
//! is [`Phase::Watching`]; when a header that opens a constrained message
//! is complete (`<|channel|>final<|message|>`, or
//! `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`) it
//! starts an llguidance matcher, and from then on [`Constraint::mask`] gives
//! the tokens the grammar allows, with the message's stop token only where
//! the grammar is complete.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::harmony::ControlTokens;
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {message}")]
    Grammar { what: String, message: String },
    #[error("the grammar engine could not start: {0}")]
    Setup(String),
    #[error(transparent)]
    Harmony(#[from] crate::harmony::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a message must match.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Grammar {
    /// A JSON Schema (an object schema; `true`/`false` schemas are refused).
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A regular expression over the whole message (Rust `regex` syntax).
    Regex(String),
    /// llguidance's Lark syntax, where `<|name|>` is a control token.
    Lark(String),
}

impl Grammar {
    fn compile(&self) -> Result<TopLevelGrammar> {
        // Compact JSON: no optional whitespace, so a model cannot stall in
        // blank space and every answer ends within its token budget.
        let compact = JsonCompileOptions {
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        };
        let mut schema = match self {
            Grammar::Regex(pattern) => return Ok(TopLevelGrammar::from_regex(pattern)),
            Grammar::Lark(grammar) => return Ok(TopLevelGrammar::from_lark(grammar.clone())),
            Grammar::JsonObject => serde_json::json!({"type": "object"}),
            Grammar::JsonSchema(schema) if schema.is_object() => schema.clone(),
            Grammar::JsonSchema(other) => {
                return Err(Error::Grammar {
                    what: "the JSON schema".into(),
                    message: format!("must be an object (like {{\"type\": \"object\", …}}), got {other}"),
                })
            }
        };
        compact.apply_to(&mut schema);
        Ok(TopLevelGrammar::from_json_schema(schema))
    }
}

/// The model's vocabulary as llguidance sees it; built once per model
/// (a trie of ~200k tokens) and shared by every sequence's matcher.
#[derive(Clone)]
pub struct Vocabulary {
    factory: Arc<ParserFactory>,
    control: ControlTokens,
    size: usize,
}

/// Token bytes for llguidance: control tokens carry its special-token
/// marker so no grammar text can match them.
struct HarmonyEnv {
    trie: TokTrie,
}

impl TokenizerEnv for HarmonyEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    // llguidance tokenizes only for forced-token look-ahead, which we do not
    // use; greedy longest-match over the trie is enough for that.
    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(bytes)
    }
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Vocabulary {
    /// `size` is the model's vocabulary (the logits' width), which may exceed
    /// the tokenizer's: ids it does not know are never allowed.
    pub fn new(tokenizer: &Tokenizer, size: usize) -> Result<Vocabulary> {
        let control = ControlTokens::of(tokenizer)?;
        let words: Vec<Vec<u8>> = (0..size as u32)
            .map(|id| match (tokenizer.token_bytes(id), tokenizer.is_control(id)) {
                (Some(name), true) => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], &name].concat(),
                (Some(bytes), false) => bytes,
                (None, _) => Vec::new(),
            })
            .collect();
        // llguidance's end-of-sequence stands for "the message may end here";
        // which stop token that is depends on the message (see `Constraint`).
        let info = TokRxInfo::new(size as u32, control.return_);
        let env: TokEnv = Arc::new(HarmonyEnv {
            trie: TokTrie::from(&info, &words),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Setup(e.to_string()))?;
        factory.quiet();
        Ok(Vocabulary {
            factory: Arc::new(factory),
            control,
            size,
        })
    }

    /// Checks a grammar (a 400 for a request, before any work) by building
    /// its matcher once.
    pub fn check(&self, grammar: &Grammar, what: &str) -> Result<()> {
        self.matcher(grammar, what).map(drop)
    }

    fn matcher(&self, grammar: &Grammar, what: &str) -> Result<Matcher> {
        let parser = self.factory.create_parser(grammar.compile()?);
        let matcher = Matcher::new(parser);
        match matcher.get_error() {
            Some(message) => Err(Error::Grammar {
                what: what.to_string(),
                message,
            }),
            None => Ok(matcher),
        }
    }
}

/// Which messages a sequence's grammar holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rules {
    /// The final answer's grammar.
    pub answer: Option<Grammar>,
    /// Each offered tool's arguments, by name (`functions.NAME` is the recipient).
    pub tools: HashMap<String, Grammar>,
    /// When a constrained message must come however long the model reasons.
    pub deadline: Option<Deadline>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.answer.is_none() && self.tools.is_empty() && self.deadline.is_none()
    }
}

/// A constrained message the sequence must write: once it has generated
/// `after` tokens without opening one, the message it is in is closed
/// (`<|end|>`) and this header is written for it, so that the answer (or the
/// call) still comes within the token budget. A model that reasons less
/// never meets it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Deadline {
    pub after: usize,
    /// The header from its role on, in Lark (see [`Deadline::answer`]).
    header: String,
}

impl Deadline {
    /// The final answer: `assistant<|channel|>final<|message|>`.
    pub fn answer(after: usize) -> Deadline {
        Deadline {
            after,
            header: r#"start: "assistant" <|channel|> "final" <|message|>"#.to_string(),
        }
    }

    /// A call to one of `names` (each `[A-Za-z0-9_-]`, as tool names are):
    /// `assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`.
    pub fn call(after: usize, names: &[String]) -> Deadline {
        let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        Deadline {
            after,
            header: format!(
                r#"start: "assistant" <|channel|> "commentary to=functions." ({}) " " <|constrain|> "json" <|message|>"#,
                names.join(" | ")
            ),
        }
    }
}

/// What a generation job carries: its rules and the vocabulary they are
/// matched over (shared, so a job is cheap to clone).
#[derive(Debug, Clone)]
pub struct Guide {
    pub vocabulary: Vocabulary,
    pub rules: Rules,
}

impl Guide {
    /// A fresh constraint for the sequence that continues `prompt`.
    pub fn start(&self, prompt: &[u32]) -> Result<Constraint> {
        let mut constraint = Constraint::new(&self.vocabulary, self.rules.clone())?;
        constraint.prime(prompt);
        Ok(constraint)
    }
}

/// Where a sequence is with respect to its grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Outside a constrained message: every token is allowed.
    Watching,
    /// Inside a constrained message: [`Constraint::mask`] applies.
    Constrained,
    /// The grammar rejected a token it had allowed (a bug in the matcher or a
    /// token forced from outside): the sequence runs on unconstrained.
    Failed,
}

/// One sequence's grammar state.
pub struct Constraint {
    vocabulary: Vocabulary,
    rules: Rules,
    header: Vec<u32>,
    in_header: bool,
    active: Option<Active>,
    phase: Phase,
    failure: Option<String>,
    /// Tokens observed since the prompt, and whether a constrained message
    /// has opened among them (see [`Deadline`]).
    generated: usize,
    opened: bool,
    /// Past the deadline: tokens to write next, then the header to match.
    forced: VecDeque<u32>,
    forced_header: Option<Matcher>,
}

struct Active {
    matcher: Matcher,
    /// The token that ends this message: `<|return|>` for an answer, `<|call|>` for a tool call.
    stop: u32,
}

/// The tokens a step may sample: a bitset over the vocabulary, 32 ids a word
/// (bit `id % 32` of word `id / 32`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub words: Vec<u32>,
}

impl Mask {
    pub fn allows(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 32)
            .is_some_and(|word| word >> (id % 32) & 1 == 1)
    }

    /// One byte per id of `width` (1: allowed), as an array op wants it.
    pub fn bytes(&self, width: usize) -> Vec<u8> {
        (0..width as u32).map(|id| u8::from(self.allows(id))).collect()
    }
}

impl Constraint {
    /// A sequence's constraint; its prompt ended with `<|start|>assistant`,
    /// so the first tokens are the rest of a header.
    pub fn new(vocabulary: &Vocabulary, rules: Rules) -> Result<Constraint> {
        if let Some(grammar) = &rules.answer {
            vocabulary.check(grammar, "the response format")?;
        }
        for (name, grammar) in &rules.tools {
            vocabulary.check(grammar, &format!("the parameters of tool {name:?}"))?;
        }
        if let Some(deadline) = &rules.deadline {
            vocabulary.check(&Grammar::Lark(deadline.header.clone()), "the forced header")?;
        }
        Ok(Constraint {
            vocabulary: vocabulary.clone(),
            rules,
            header: Vec::new(),
            in_header: true,
            active: None,
            phase: Phase::Watching,
            failure: None,
            generated: 0,
            opened: false,
            forced: VecDeque::new(),
            forced_header: None,
        })
    }

    /// Reads the header the prompt leaves open, if it does: a prompt that
    /// already holds `<|start|>assistant<|channel|>final<|message|>` (an
    /// answer the caller began) is constrained from the first token.
    pub fn prime(&mut self, prompt: &[u32]) {
        let start = self.vocabulary.control.start;
        if let Some(last) = prompt.iter().rposition(|&t| t == start) {
            for &token in &prompt[last..] {
                self.observe(token);
            }
        }
        self.generated = 0;
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the constraint gave up, when it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Follows the sampled token.
    pub fn observe(&mut self, token: u32) {
        let control = self.vocabulary.control;
        self.generated += 1;
        if self.forced.front() == Some(&token) {
            self.forced.pop_front();
        } else if let Some(header) = &mut self.forced_header {
            if let Err(e) = header.consume_token(token) {
                self.give_up(e.to_string());
            } else if token == control.message {
                self.forced_header = None;
            }
        }
        if let Some(active) = &mut self.active {
            if token == active.stop || control.ends_message(token) {
                self.active = None;
                self.phase = Phase::Watching;
                self.in_header = false;
            } else if let Err(e) = active.matcher.consume_token(token) {
                self.give_up(e.to_string());
            }
            return;
        }
        if self.phase == Phase::Failed {
            return;
        }
        if token == control.start {
            self.header.clear();
            self.in_header = true;
        } else if token == control.message && self.in_header {
            self.in_header = false;
            let header = std::mem::take(&mut self.header);
            self.open(&header);
        } else if self.in_header {
            self.header.push(token);
        }
    }

    /// Starts the matcher if the header just read opens a constrained message.
    fn open(&mut self, header: &[u32]) {
        let control = self.vocabulary.control;
        // The trie spells control tokens by name, as the tokenizer would.
        let text = self.vocabulary.factory.tok_env().tok_trie().decode_str(header);
        let channel = text
            .split("<|channel|>")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '<').next())
            .unwrap_or_default();
        let recipient = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix("to="))
            .map(|to| to.split("<|").next().unwrap_or(to));
        let target = match (channel, recipient) {
            ("final", None) => self.rules.answer.as_ref().map(|g| (g, control.return_)),
            (_, Some(to)) => to
                .strip_prefix("functions.")
                .and_then(|name| self.rules.tools.get(name))
                .map(|g| (g, control.call)),
            _ => None,
        };
        let Some((grammar, stop)) = target else {
            return;
        };
        match self.vocabulary.matcher(grammar, "the grammar") {
            Ok(matcher) => {
                self.active = Some(Active { matcher, stop });
                self.phase = Phase::Constrained;
                self.opened = true;
            }
            Err(e) => {
                self.failure = Some(e.to_string());
                self.phase = Phase::Failed;
            }
        }
    }

    fn give_up(&mut self, why: String) {
        self.failure = Some(why);
        self.active = None;
        self.forced.clear();
        self.forced_header = None;
        self.phase = Phase::Failed;
    }

    /// At the deadline: what closes the current message and opens the
    /// required one. A header being written that the required one can still
    /// become is finished as that; any other is closed as it stands.
    fn close(&mut self) {
        let Some(deadline) = &self.rules.deadline else {
            return;
        };
        let grammar = Grammar::Lark(deadline.header.clone());
        let control = self.vocabulary.control;
        let fresh = || self.vocabulary.matcher(&grammar, "the forced header");
        let result = fresh().and_then(|mut matcher| {
            if self.in_header && matcher.consume_tokens(&self.header).is_ok() {
                return Ok(matcher);
            }
            if self.in_header {
                self.forced.push_back(control.message);
            }
            self.forced.extend([control.end, control.start]);
            fresh()
        });
        match result {
            Ok(matcher) => self.forced_header = Some(matcher),
            Err(e) => self.give_up(e.to_string()),
        }
    }

    /// Whether a required message has yet to open (so the turn may not end).
    fn awaits_deadline(&self) -> bool {
        self.phase == Phase::Watching && !self.opened && self.rules.deadline.is_some()
    }

    fn due(&self) -> bool {
        self.awaits_deadline()
            && self.forced.is_empty()
            && self.forced_header.is_none()
            && self
                .rules
                .deadline
                .as_ref()
                .is_some_and(|d| self.generated >= d.after)
    }

    /// The tokens the next step may sample; `None` while unconstrained.
    pub fn mask(&mut self) -> Option<Mask> {
        if self.due() {
            self.close();
        }
        if let Some(&token) = self.forced.front() {
            return Some(self.only(token));
        }
        if let Some(header) = &mut self.forced_header {
            return match header.compute_mask() {
                Ok(allowed) => Some(self.words(&allowed, None)),
                Err(e) => {
                    self.give_up(e.to_string());
                    None
                }
            };
        }
        let return_ = self.vocabulary.control.return_;
        if self.active.is_none() && self.awaits_deadline() {
            return Some(self.all_but(&self.vocabulary.control.generation_stops()));
        }
        let active = self.active.as_mut()?;
        // A grammar with nothing left to add (`{"a":1}` closed) is stopped:
        // only the end is allowed then.
        let stop = active.stop;
        let allowed: SimpleVob = match active.matcher.compute_mask_or_eos() {
            Ok(mask) => mask,
            Err(e) => {
                self.give_up(e.to_string());
                return None;
            }
        };
        let complete = allowed.is_allowed(return_);
        Some(self.words(&allowed, complete.then_some(stop)))
    }

    /// `allowed` as a mask, llguidance's end-of-sequence left out, and `stop`
    /// let in where given.
    fn words(&self, allowed: &SimpleVob, stop: Option<u32>) -> Mask {
        let size = self.vocabulary.size;
        let return_ = self.vocabulary.control.return_;
        let mut words = vec![0u32; size.div_ceil(32)];
        allowed.iter_set_entries(|id| {
            if id < size && id as u32 != return_ {
                words[id / 32] |= 1 << (id % 32);
            }
        });
        if let Some(stop) = stop {
            words[stop as usize / 32] |= 1 << (stop % 32);
        }
        Mask { words }
    }

    /// A mask allowing every token but `banned`.
    fn all_but(&self, banned: &[u32]) -> Mask {
        let size = self.vocabulary.size;
        let mut words = vec![u32::MAX; size.div_ceil(32)];
        if !size.is_multiple_of(32) {
            *words.last_mut().expect("a vocabulary") = (1u32 << (size % 32)) - 1;
        }
        for &token in banned {
            words[token as usize / 32] &= !(1 << (token % 32));
        }
        Mask { words }
    }

    /// A mask allowing `token` alone.
    fn only(&self, token: u32) -> Mask {
        let mut words = vec![0u32; self.vocabulary.size.div_ceil(32)];
        words[token as usize / 32] |= 1 << (token % 32);
        Mask { words }
    }
}
