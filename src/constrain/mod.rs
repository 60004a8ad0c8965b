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

use std::collections::HashMap;
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
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON Schema (an object schema; `true`/`false` schemas are refused).
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A regular expression over the whole message (Rust `regex` syntax).
    Regex(String),
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
        f.debug_struct("Vocabulary").field("size", &self.size).finish_non_exhaustive()
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
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// The final answer's grammar.
    pub answer: Option<Grammar>,
    /// Each offered tool's arguments, by name (`functions.NAME` is the recipient).
    pub tools: HashMap<String, Grammar>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.answer.is_none() && self.tools.is_empty()
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
        Ok(Constraint {
            vocabulary: vocabulary.clone(),
            rules,
            header: Vec::new(),
            in_header: true,
            active: None,
            phase: Phase::Watching,
            failure: None,
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
        if let Some(active) = &mut self.active {
            if token == active.stop || control.ends_message(token) {
                self.active = None;
                self.phase = Phase::Watching;
                self.in_header = false;
            } else if let Err(e) = active.matcher.consume_token(token) {
                self.failure = Some(e.to_string());
                self.active = None;
                self.phase = Phase::Failed;
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
            }
            Err(e) => {
                self.failure = Some(e.to_string());
                self.phase = Phase::Failed;
            }
        }
    }

    /// The tokens the next step may sample; `None` while unconstrained.
    pub fn mask(&mut self) -> Option<Mask> {
        let size = self.vocabulary.size;
        let return_ = self.vocabulary.control.return_;
        let active = self.active.as_mut()?;
        // A grammar with nothing left to add (`{"a":1}` closed) is stopped:
        // only the end is allowed then.
        let allowed: SimpleVob = match active.matcher.compute_mask_or_eos() {
            Ok(mask) => mask,
            Err(e) => {
                self.failure = Some(e.to_string());
                self.active = None;
                self.phase = Phase::Failed;
                return None;
            }
        };
        let mut words = vec![0u32; size.div_ceil(32)];
        let complete = allowed.is_allowed(return_);
        allowed.iter_set_entries(|id| {
            if id < size && id as u32 != return_ {
                words[id / 32] |= 1 << (id % 32);
            }
        });
        if complete {
            words[active.stop as usize / 32] |= 1 << (active.stop % 32);
        }
        Some(Mask { words })
    }
}
