//! Classifying items against one policy: the harmony prompt (the policy as
//! developer instructions, the item as the user message), generation that
//! reuses the policy's KV state for every item, and the verdict with the
//! model's probability for it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::front_matter::Output;
use super::input::Item;
use super::policy::{Policy, RuleIds};
use super::verdict::{self, AnswerFormat, Keywords, Verdict};
use crate::constrain::{self, Deadline, Grammar, Guide, Rules, Vocabulary};
use crate::engine::driver::{Driver, DriverOptions, Event, Job, JobId, Token};
use crate::engine::generate::GenerateOptions;
use crate::engine::sampler::SamplerOptions;
use crate::harmony::{
    self, ControlTokens, Conversation, Effort, Finish, Message, StreamParser, SystemContent,
};
use crate::model::GptOss;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Overrides the policy's own `Reasoning:` line; medium when neither says.
    pub effort: Option<Effort>,
    /// `Current date:` in the system message; none by default, as harmony.
    pub date: Option<String>,
    pub max_tokens: usize,
    pub sampler: SamplerOptions,
    pub prefill_step: usize,
    pub keywords: Keywords,
}

/// The outcome for one item.
#[derive(Debug, Clone)]
pub struct Classification {
    pub id: String,
    pub verdict: Verdict,
    /// The model's probability for the label it gave, P(label) / (P(0) + P(1))
    /// at the token that states it.
    pub confidence: Option<f64>,
    pub reasoning: String,
    /// The final answer's text as written.
    pub answer: String,
    /// Everything the model generated, control tokens written out.
    pub raw: String,
    /// Why there is no label, when there is none.
    pub error: Option<String>,
    /// Rule ids the answer cites that the policy does not define.
    pub undeclared_ids: Vec<String>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the policy prefix cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// Of `completion_tokens`, those of the answer: every final-channel
    /// message, header and closing token included. The rest is reasoning.
    pub answer_tokens: usize,
    pub latency: Duration,
}

impl Classification {
    pub fn violates(&self) -> bool {
        self.verdict.label == Some(1)
    }

    /// "violates", "safe", "escalate", or None when the answer said none.
    pub fn outcome(&self) -> Option<&'static str> {
        match (self.verdict.escalate, self.verdict.label) {
            (true, _) => Some("escalate"),
            (false, Some(1)) => Some("violates"),
            (false, Some(_)) => Some("safe"),
            (false, None) => None,
        }
    }

    /// The result line of `--json`/`--jsonl` and `--output`.
    pub fn to_json(&self) -> Value {
        let v = &self.verdict;
        json!({
            "id": self.id,
            "label": v.label,
            "violation": v.label.map(|l| l == 1),
            "outcome": self.outcome(),
            "policy_category": v.policy_category,
            "rule_ids": v.rule_ids,
            "confidence": self.confidence,
            "model_confidence": v.confidence,
            "rationale": v.rationale,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "raw": self.raw,
            "answer_format": v.format,
            "error": self.error,
            "undeclared_ids": self.undeclared_ids,
            "finish_reason": self.finish.reason(),
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "completion_tokens": self.completion_tokens,
                "reasoning_tokens": self.completion_tokens - self.answer_tokens,
                "answer_tokens": self.answer_tokens,
            },
            "latency_ms": (self.latency.as_secs_f64() * 1e3).round(),
        })
    }

    /// A result line of [`Classification::to_json`] read back, for results
    /// classified by another process (`--parallel data`).
    pub fn from_json(value: &Value) -> Result<Classification, String> {
        #[derive(Deserialize)]
        struct Usage {
            prompt_tokens: usize,
            cached_tokens: usize,
            completion_tokens: usize,
            answer_tokens: usize,
        }
        #[derive(Deserialize)]
        struct Line {
            id: String,
            label: Option<u8>,
            outcome: Option<String>,
            policy_category: Option<String>,
            rule_ids: Vec<String>,
            confidence: Option<f64>,
            model_confidence: Option<String>,
            rationale: Option<String>,
            reasoning: String,
            answer: String,
            raw: String,
            answer_format: AnswerFormat,
            error: Option<String>,
            undeclared_ids: Vec<String>,
            finish_reason: String,
            usage: Usage,
            latency_ms: f64,
        }
        let line = Line::deserialize(value).map_err(|e| format!("an unreadable result: {e}"))?;
        let finish = match line.finish_reason.as_str() {
            "stop" => Finish::Return,
            "tool_calls" => Finish::Call,
            "length" => Finish::Length,
            other => return Err(format!("an unknown finish_reason {other:?}")),
        };
        Ok(Classification {
            id: line.id,
            verdict: Verdict {
                label: line.label,
                escalate: line.outcome.as_deref() == Some("escalate"),
                policy_category: line.policy_category,
                rule_ids: line.rule_ids,
                confidence: line.model_confidence,
                rationale: line.rationale,
                format: line.answer_format,
                // Only `error` carries it on the wire.
                parse_error: None,
            },
            confidence: line.confidence,
            reasoning: line.reasoning,
            answer: line.answer,
            raw: line.raw,
            error: line.error,
            undeclared_ids: line.undeclared_ids,
            finish,
            prompt_tokens: line.usage.prompt_tokens,
            cached_tokens: line.usage.cached_tokens,
            completion_tokens: line.usage.completion_tokens,
            answer_tokens: line.usage.answer_tokens,
            latency: Duration::from_secs_f64(line.latency_ms.max(0.0) / 1e3),
        })
    }
}

/// The classification conversation for a policy: the system message with
/// the effort (the option, else the policy's `Reasoning:` line, else medium)
/// and the policy as the developer's instructions.
pub fn conversation(policy: &Policy, options: &ClassifyOptions) -> Conversation {
    let mut system = SystemContent::default().with_effort(effort(policy, options));
    if let Some(date) = &options.date {
        system = system.with_date(date.clone());
    }
    Conversation::new(system).with_instructions(policy.text.clone())
}

/// The reasoning effort: the option, else the policy's `Reasoning:` line, else medium.
pub fn effort(policy: &Policy, options: &ClassifyOptions) -> Effort {
    options.effort.or(policy.effort).unwrap_or_default()
}

/// The prompt tokens that ask the model to judge `content`.
pub fn render_prompt(
    tokenizer: &Tokenizer,
    policy: &Policy,
    options: &ClassifyOptions,
    content: &str,
) -> Result<Vec<u32>, harmony::Error> {
    with_content(&conversation(policy, options), content, tokenizer)
}

fn with_content(
    conversation: &Conversation,
    content: &str,
    tokenizer: &Tokenizer,
) -> Result<Vec<u32>, harmony::Error> {
    harmony::render_for_completion(
        &conversation.clone().with_message(Message::user(content)),
        tokenizer,
    )
}

/// What classifying against one policy needs besides the model: the
/// prompt, the prefix every item shares, and reading the verdict back from
/// the generated tokens. The server runs the model elsewhere and uses this.
pub struct Judge<'t> {
    tokenizer: &'t Tokenizer,
    control: ControlTokens,
    conversation: Conversation,
    /// The prompt tokens every item shares: system, policy, user header.
    prefix: Vec<u32>,
    options: ClassifyOptions,
    /// Ids of "0" and "1": o200k splits digits from what precedes them, so
    /// every way of writing a verdict ends in one of these tokens.
    digits: [u32; 2],
    /// The policy's rule ids, to flag answers citing others.
    rules: RuleIds,
    /// What the policy declares its answers to be, as a grammar.
    answer: Grammar,
    /// Set by [`Judge::constrain`]: every answer held to `answer`.
    guide: Option<Guide>,
}

/// The longest rationale a constrained JSON answer may give, in characters.
const RATIONALE_CHARS: usize = 200;

/// The policy's declared answer as a grammar: one of its declared words (by
/// default `0` or `1`) for a binary policy; for a JSON one, the object its
/// template describes, with `policy_category` and `rule_ids` among the ids
/// it defines. A policy without front matter is JSON when its text asks for
/// a JSON object.
fn answer_grammar(policy: &Policy) -> Grammar {
    let front = policy.front_matter.as_ref();
    let output = front.and_then(|f| f.output).unwrap_or_else(|| {
        if policy.text.contains("JSON object") {
            Output::Json
        } else {
            Output::Binary
        }
    });
    let declared: Vec<&String> = front
        .map(|f| f.violates.iter().chain(&f.safe).chain(&f.escalate).collect())
        .unwrap_or_default();
    if output == Output::Binary {
        let words: Vec<String> = if declared.is_empty() {
            vec!["0".into(), "1".into()]
        } else {
            declared.iter().map(|w| regex::escape(w)).collect()
        };
        return Grammar::Regex(words.join("|"));
    }
    let ids = RuleIds::of(policy);
    let ids: Vec<&String> = ids.violating.iter().chain(&ids.safe).collect();
    let id = if ids.is_empty() {
        serde_json::json!({"type": "string", "maxLength": 32})
    } else {
        serde_json::json!({"enum": ids})
    };
    let escalates = front.is_some_and(|f| !f.escalate.is_empty());
    let violation: Vec<u8> = if escalates { vec![0, 1, 2] } else { vec![0, 1] };
    let known = serde_json::json!({
        "violation": {"enum": violation},
        "policy_category": {"anyOf": [id, {"type": "null"}]},
        "rule_ids": {"type": "array", "items": id, "maxItems": 8},
        "confidence": {"enum": ["low", "medium", "high"]},
        "rationale": {"type": "string", "maxLength": RATIONALE_CHARS},
    });
    // Declared fields are exactly the answer's (the verdict parser holds it
    // to them); otherwise the usual object, its verdict and category required.
    let (properties, required) = match front.map(|f| &f.fields).filter(|f| !f.is_empty()) {
        Some(fields) => {
            let properties: serde_json::Map<String, Value> = fields
                .iter()
                .map(|field| {
                    let schema = known.get(field).cloned().unwrap_or_else(
                        || serde_json::json!({"type": "string", "maxLength": RATIONALE_CHARS}),
                    );
                    (field.clone(), schema)
                })
                .collect();
            (Value::Object(properties), serde_json::json!(fields))
        }
        None => (known, serde_json::json!(["violation", "policy_category"])),
    };
    Grammar::JsonSchema(serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    }))
}

impl<'t> Judge<'t> {
    pub fn new(
        tokenizer: &'t Tokenizer,
        policy: &Policy,
        mut options: ClassifyOptions,
    ) -> Result<Judge<'t>, harmony::Error> {
        // The answers the policy declares read as the outcomes it gives them.
        options.keywords = options.keywords.with_declared(policy.front_matter.as_ref());
        let conversation = conversation(policy, &options);
        // Two items that differ from their first token on share exactly the
        // prefix up to the item's content.
        let (a, b) = (
            with_content(&conversation, "0", tokenizer)?,
            with_content(&conversation, "1", tokenizer)?,
        );
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let digit = |text: &str| -> Result<u32, harmony::Error> {
            match tokenizer.encode_ordinary(text)?.as_slice() {
                [id] => Ok(*id),
                _ => Err(harmony::Error::MissingToken("single-token digits")),
            }
        };
        Ok(Judge {
            tokenizer,
            control: ControlTokens::of(tokenizer)?,
            prefix: a[..shared].to_vec(),
            conversation,
            digits: [digit("0")?, digit("1")?],
            rules: RuleIds::of(policy),
            answer: answer_grammar(policy),
            guide: None,
            options,
        })
    }

    /// Holds every answer to the policy's declared output, and has it
    /// written once the model has reasoned for all the token budget but the
    /// answer's room, so that every item gets a verdict.
    pub fn constrain(&mut self, vocabulary: Vocabulary) -> Result<(), constrain::Error> {
        // Room for the longest answer: a rationale at a token a character,
        // ids and punctuation; a word is a few tokens.
        let room = match self.answer {
            Grammar::JsonSchema(_) => RATIONALE_CHARS + 120,
            _ => 8,
        };
        let rules = Rules {
            answer: Some(self.answer.clone()),
            tools: HashMap::new(),
            deadline: Some(Deadline::answer(self.options.max_tokens.saturating_sub(room))),
        };
        vocabulary.check(&self.answer, "the policy's answer")?;
        self.guide = Some(Guide { vocabulary, rules });
        Ok(())
    }

    /// The prompt for `content`, and how many of its first tokens are the
    /// prefix every item shares (0 if, unusually, it does not start with it).
    pub fn prompt(&self, content: &str) -> Result<(Vec<u32>, usize), harmony::Error> {
        let prompt = with_content(&self.conversation, content, self.tokenizer)?;
        let shared = if prompt.starts_with(&self.prefix) {
            self.prefix.len()
        } else {
            0
        };
        Ok((prompt, shared))
    }

    /// The grammar every job's answer is held to, once constrained.
    pub fn guide(&self) -> Option<Guide> {
        self.guide.clone()
    }

    /// The tokens whose probabilities state the verdict ("0", "1").
    pub fn digits(&self) -> [u32; 2] {
        self.digits
    }

    pub fn options(&self) -> &ClassifyOptions {
        &self.options
    }

    pub fn generate_options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.options.max_tokens,
            prefill_step: self.options.prefill_step,
            sampler: self.options.sampler,
        }
    }

    /// The engine job classifying an item whose prompt is `prompt`, of
    /// which the first `shared` tokens are the shared prefix.
    pub fn job(&self, prompt: Vec<u32>, shared: usize, group: u64) -> Job {
        Job {
            prompt,
            cache_prefix: shared,
            keep_prompt: false,
            options: self.generate_options(),
            stop_tokens: self.control.generation_stops().to_vec(),
            top_logprobs: None,
            watch: self.digits.to_vec(),
            group,
            guide: self.guide(),
        }
    }

    /// Starts reading the output for `item`, whose prompt has
    /// `prompt_tokens` tokens of which `cached_tokens` came from a cache.
    pub fn start(
        &self,
        item: &Item,
        prompt_tokens: usize,
        cached_tokens: usize,
    ) -> anyhow::Result<ItemRun<'t>> {
        Ok(ItemRun {
            id: item.id.clone(),
            start: Instant::now(),
            prompt_tokens,
            cached_tokens,
            parser: StreamParser::new(self.tokenizer)?,
            verdict_probabilities: None,
            generated: Vec::new(),
            answer_tokens: 0,
            unplaced: 0,
        })
    }
}

/// Classifies items against one policy or several, through one driver:
/// each policy's prefix stays in its prefix cache.
pub struct Classifier<'a> {
    judges: Vec<Judge<'a>>,
    /// Kept across calls, with the policy prefixes in its cache.
    driver: Driver<'a>,
}

/// Room for a handful of policies' KV state.
const PREFIX_CACHE_BYTES: usize = 1 << 30;

impl<'a> Classifier<'a> {
    pub fn new(
        model: &'a GptOss,
        tokenizer: &'a Tokenizer,
        policy: &Policy,
        options: ClassifyOptions,
    ) -> Result<Classifier<'a>, harmony::Error> {
        Classifier::with_policies(model, tokenizer, std::slice::from_ref(policy), options)
    }

    /// A classifier for several policies; [`Classifier::classify_pairs`]
    /// names them by their index in `policies`.
    pub fn with_policies(
        model: &'a GptOss,
        tokenizer: &'a Tokenizer,
        policies: &[Policy],
        options: ClassifyOptions,
    ) -> Result<Classifier<'a>, harmony::Error> {
        Ok(Classifier {
            judges: policies
                .iter()
                .map(|policy| Judge::new(tokenizer, policy, options.clone()))
                .collect::<Result<_, _>>()?,
            driver: Driver::new(
                model,
                DriverOptions {
                    max_slots: 1,
                    prefix_cache_bytes: PREFIX_CACHE_BYTES,
                },
            ),
        })
    }

    /// Holds every answer to its policy's declared output (see
    /// [`Judge::constrain`]); `vocab_size` is the model's.
    pub fn constrain(&mut self, vocab_size: usize) -> Result<(), constrain::Error> {
        let Some(first) = self.judges.first() else {
            return Ok(());
        };
        let vocabulary = Vocabulary::new(first.tokenizer, vocab_size)?;
        for judge in &mut self.judges {
            judge.constrain(vocabulary.clone())?;
        }
        Ok(())
    }

    pub fn classify(&mut self, item: &Item) -> anyhow::Result<Classification> {
        let mut result = None;
        self.classify_batched(&[item], 1, |_, c| {
            result = Some(c);
            Ok(())
        })?;
        Ok(result.expect("every item gets a result"))
    }

    /// Classifies `items` against the first policy, decoding up to
    /// `batch_size` of them together (continuous batching: an item that
    /// finishes makes room for the next). Results come to `done` as items
    /// finish, with their index in `items`; each equals
    /// [`Classifier::classify`] of the item alone.
    pub fn classify_batched(
        &mut self,
        items: &[&Item],
        batch_size: usize,
        done: impl FnMut(usize, Classification) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let pairs: Vec<(usize, &Item)> = items.iter().map(|item| (0, *item)).collect();
        self.classify_pairs(&pairs, batch_size, done)
    }

    /// Classifies each `(policy index, item)` pair as
    /// [`Classifier::classify_batched`] does; `done` gets the pair's index.
    pub fn classify_pairs(
        &mut self,
        pairs: &[(usize, &Item)],
        batch_size: usize,
        mut done: impl FnMut(usize, Classification) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.driver.set_max_slots(batch_size);
        let mut runs: HashMap<JobId, (usize, ItemRun<'a>)> = HashMap::new();
        let result = self.drive(pairs, batch_size.max(1), &mut runs, &mut done);
        // After a failure, the items still running have no one to report to.
        for id in runs.keys() {
            self.driver.cancel(*id);
        }
        result
    }

    /// Submits pairs as slots free up (so an item's latency starts when it
    /// is admitted) and steps the driver until every pair is done.
    fn drive(
        &mut self,
        pairs: &[(usize, &Item)],
        in_flight: usize,
        runs: &mut HashMap<JobId, (usize, ItemRun<'a>)>,
        done: &mut impl FnMut(usize, Classification) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut next = 0;
        loop {
            while runs.len() < in_flight && next < pairs.len() {
                let (policy, item) = pairs[next];
                let judge = &self.judges[policy];
                let (prompt, shared) = judge.prompt(&item.content)?;
                let run = judge.start(item, prompt.len(), 0)?;
                let id = self.driver.submit(judge.job(prompt, shared, 0));
                runs.insert(id, (next, run));
                next += 1;
            }
            if runs.is_empty() {
                return Ok(());
            }
            for (id, event) in self.driver.step() {
                let (index, run) = runs.get_mut(&id).expect("every job is a pair's");
                let judge = &self.judges[pairs[*index].0];
                match event {
                    Event::Started { cached_tokens } => run.set_cached_tokens(cached_tokens),
                    Event::Token(token) => run.push(judge, &token),
                    Event::Finished(_) => {
                        let (index, run) = runs.remove(&id).expect("present");
                        done(index, run.finish(judge)?)?;
                    }
                    Event::Failed(message) => {
                        anyhow::bail!("item {} ({}): generation failed: {message}", *index + 1, run.id)
                    }
                }
            }
        }
    }
}

/// One item's generation as it goes: the parsed harmony stream and the
/// verdict digit's probabilities.
pub struct ItemRun<'t> {
    id: String,
    start: Instant,
    prompt_tokens: usize,
    cached_tokens: usize,
    parser: StreamParser<'t>,
    verdict_probabilities: Option<(f32, f32)>,
    generated: Vec<u32>,
    answer_tokens: usize,
    /// Tokens not yet known to belong to a message: a header being read,
    /// or tokens between messages.
    unplaced: usize,
}

impl ItemRun<'_> {
    /// Takes one generated token of the job [`Judge::job`] made, whose
    /// watched log-probabilities are those of "0" and "1".
    pub fn push(&mut self, judge: &Judge<'_>, token: &Token) {
        self.generated.push(token.id);
        let before = self.parser.current().map(Message::is_final);
        let in_answer = before == Some(true);
        self.parser.push(token.id);
        // A header's tokens go with the message it opens, a closing token
        // with the message it closes; tokens outside any message are not
        // the answer.
        self.unplaced += 1;
        if let Some(is_final) = self.parser.current().map(Message::is_final).or(before) {
            if is_final {
                self.answer_tokens += self.unplaced;
            }
            self.unplaced = 0;
        }
        // The first digit written in the answer states the verdict.
        if in_answer && self.verdict_probabilities.is_none() && judge.digits.contains(&token.id) {
            if let [p0, p1] = token.watched[..] {
                self.verdict_probabilities = Some((p0.exp(), p1.exp()));
            }
        }
    }

    /// Prompt tokens that turned out to come from a prefix cache.
    pub fn set_cached_tokens(&mut self, tokens: usize) {
        self.cached_tokens = tokens;
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated.len()
    }

    pub fn finish(self, c: &Judge<'_>) -> anyhow::Result<Classification> {
        let completion = self.parser.finish();
        let answer = completion.answer().map(|m| m.content.clone()).unwrap_or_default();
        let verdict = verdict::parse(&answer, &c.options.keywords);
        let error = match (&verdict.parse_error, completion.answer(), completion.finish) {
            (_, None, Finish::Length) => Some(format!(
                "the token limit ({}) ended generation before an answer; raise --max-tokens or lower --effort",
                c.options.max_tokens
            )),
            (_, None, _) => Some("the model gave no final answer".to_string()),
            (Some(e), Some(_), _) => Some(e.clone()),
            (None, Some(_), _) => None,
        };
        let confidence = match (verdict.label, self.verdict_probabilities) {
            (Some(label), Some((p0, p1))) if p0 + p1 > 0.0 => {
                let p = if label == 1 { p1 } else { p0 };
                Some(f64::from(p) / f64::from(p0 + p1))
            }
            _ => None,
        };
        let undeclared_ids = c
            .rules
            .undeclared(verdict.policy_category.as_deref(), &verdict.rule_ids);
        Ok(Classification {
            id: self.id,
            undeclared_ids,
            reasoning: completion.reasoning(),
            finish: completion.finish,
            raw: c.tokenizer.decode(&self.generated)?,
            answer,
            error,
            confidence,
            verdict,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.generated.len(),
            answer_tokens: self.answer_tokens,
            latency: self.start.elapsed(),
        })
    }
}
