//! Constrained decoding (`src/constrain/`) on the real o200k_harmony
//! vocabulary, driven by a random sampler that only ever picks tokens the
//! mask allows: whatever it picks, the constrained message must parse and
//! validate against its schema, as the `jsonschema` package judges it; and
//! the messages before it (reasoning) must be left alone.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use safeguard_mlx::constrain::{Constraint, Deadline, Grammar, Mask, Phase, Rules, Vocabulary};
use safeguard_mlx::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// gpt-oss's vocabulary: the logits are wider than the tokenizer.
const VOCAB: usize = 201_088;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::load(&common::fixture("tokenizer")).unwrap())
}

fn vocabulary() -> &'static Vocabulary {
    static VOCABULARY: OnceLock<Vocabulary> = OnceLock::new();
    VOCABULARY.get_or_init(|| Vocabulary::new(tokenizer(), VOCAB).unwrap())
}

fn id(name: &str) -> u32 {
    tokenizer().token_id(name).unwrap()
}

fn text_ids(text: &str) -> Vec<u32> {
    tokenizer().encode_ordinary(text).unwrap()
}

/// xorshift64*: a seeded stream of choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Samples within the mask like a model that knows nothing: any allowed id,
/// but half the time one of the single-byte ids (quotes, brackets, digits)
/// or the stop token, so outputs close within a few hundred tokens.
fn sample(mask: &Mask, rng: &mut Rng, stop: u32) -> u32 {
    let allowed: Vec<u32> = (0..VOCAB as u32).filter(|&t| mask.allows(t)).collect();
    assert!(!allowed.is_empty(), "the mask allows nothing");
    if mask.allows(stop) && rng.below(3) == 0 {
        return stop;
    }
    let short: Vec<u32> = allowed.iter().copied().filter(|&t| t < 256).collect();
    if !short.is_empty() && rng.below(2) == 0 {
        return short[rng.below(short.len())];
    }
    allowed[rng.below(allowed.len())]
}

/// Feeds `prefix` (what the model wrote before the constrained message),
/// then samples within the mask until `stop`; returns the message's text.
fn run(constraint: &mut Constraint, prefix: &[u32], stop: u32, rng: &mut Rng) -> Result<String, String> {
    for &token in prefix {
        assert_eq!(constraint.mask(), None, "no mask before the constrained message");
        constraint.observe(token);
    }
    let mut produced = Vec::new();
    for _ in 0..400 {
        let mask = constraint
            .mask()
            .ok_or_else(|| format!("no mask in the constrained message ({:?})", constraint.failure()))?;
        let token = sample(&mask, rng, stop);
        constraint.observe(token);
        if token == stop {
            assert_eq!(constraint.phase(), Phase::Watching);
            return Ok(tokenizer().decode(&produced).unwrap());
        }
        produced.push(token);
    }
    Err(format!(
        "no stop after 400 tokens: {}",
        tokenizer().decode(&produced).unwrap()
    ))
}

/// `analysis` reasoning, then the header of the final answer.
fn answer_prefix(reasoning: &str) -> Vec<u32> {
    [
        vec![id("<|channel|>")],
        text_ids("analysis"),
        vec![id("<|message|>")],
        text_ids(reasoning),
        vec![id("<|end|>"), id("<|start|>")],
        text_ids("assistant"),
        vec![id("<|channel|>")],
        text_ids("final"),
        vec![id("<|message|>")],
    ]
    .concat()
}

fn schemas() -> Vec<Value> {
    vec![
        json!({
            "type": "object",
            "properties": {
                "violation": {"type": "integer", "enum": [0, 1]},
                "policy_category": {"type": "string", "enum": ["SP0", "SP1", "SP2.a"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "rule_ids": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
                "rationale": {"type": "string", "maxLength": 40},
            },
            "required": ["violation", "policy_category", "rule_ids"],
            "additionalProperties": false,
        }),
        json!({
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "maxLength": 10},
                            "count": {"type": "integer", "minimum": 1, "maximum": 99},
                            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
                        },
                        "required": ["name", "count"],
                        "additionalProperties": false,
                    },
                },
                "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 8}]},
            },
            "required": ["items"],
            "additionalProperties": false,
        }),
    ]
}

#[test]
fn every_constrained_answer_validates_against_its_schema() {
    let return_ = id("<|return|>");
    let cases: Vec<Value> = schemas()
        .into_iter()
        .map(|schema| {
            let outputs: Vec<String> = (1..=20u64)
                .map(|seed| {
                    let rules = Rules {
                        answer: Some(Grammar::JsonSchema(schema.clone())),
                        tools: HashMap::new(),
                        deadline: None,
                    };
                    let mut constraint = Constraint::new(vocabulary(), rules).unwrap();
                    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    run(
                        &mut constraint,
                        &answer_prefix("Let me think { \"not\": json"),
                        return_,
                        &mut rng,
                    )
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"))
                })
                .collect();
            json!({"schema": schema, "outputs": outputs})
        })
        .collect();
    let verdicts = common::jsonschema(json!({"cases": cases}));
    for (case, verdict) in cases.iter().zip(verdicts.as_array().unwrap()) {
        assert_eq!(verdict["schema_ok"], true);
        for (output, result) in case["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(verdict["results"].as_array().unwrap())
        {
            assert_eq!(result, &Value::Null, "{output}");
        }
    }
}

#[test]
fn a_tool_call_is_held_to_its_own_parameters() {
    let call = id("<|call|>");
    let tools = HashMap::from([
        (
            "get_weather".to_string(),
            Grammar::JsonSchema(json!({
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["city", "days"],
                "additionalProperties": false,
            })),
        ),
        ("anything".to_string(), Grammar::JsonObject),
    ]);
    let header = |recipient: &str| {
        [
            vec![id("<|channel|>")],
            text_ids("commentary"),
            text_ids(&format!(" to=functions.{recipient} ")),
            vec![id("<|constrain|>")],
            text_ids("json"),
            vec![id("<|message|>")],
        ]
        .concat()
    };
    let mut outputs = Vec::new();
    for seed in 1..=10u64 {
        let rules = Rules {
            answer: None,
            tools: tools.clone(),
            deadline: None,
        };
        let mut constraint = Constraint::new(vocabulary(), rules).unwrap();
        let mut rng = Rng(seed * 0x2545_f491);
        outputs.push(run(&mut constraint, &header("get_weather"), call, &mut rng).unwrap());
    }
    let schema = match &tools["get_weather"] {
        Grammar::JsonSchema(schema) => schema.clone(),
        _ => unreachable!(),
    };
    let verdicts = common::jsonschema(json!({"cases": [{"schema": schema, "outputs": outputs}]}));
    for (output, result) in outputs.iter().zip(verdicts[0]["results"].as_array().unwrap()) {
        assert_eq!(result, &Value::Null, "{output}");
    }

    // A call to a tool that was not offered, and an unconstrained final
    // answer, are not held: no mask at all.
    let rules = Rules {
        answer: None,
        tools,
        deadline: None,
    };
    let mut constraint = Constraint::new(vocabulary(), rules).unwrap();
    for token in header("not_offered").into_iter().chain(answer_prefix("ok")) {
        assert_eq!(constraint.mask(), None);
        constraint.observe(token);
    }
    assert_eq!(constraint.mask(), None);
}

#[test]
fn the_stop_token_is_allowed_only_where_the_grammar_is_complete() {
    let rules = Rules {
        answer: Some(Grammar::Regex("[01]".into())),
        tools: HashMap::new(),
        deadline: None,
    };
    let mut constraint = Constraint::new(vocabulary(), rules).unwrap();
    for token in answer_prefix("The content is spam.") {
        constraint.observe(token);
    }
    let mask = constraint.mask().unwrap();
    let allowed: Vec<u32> = (0..VOCAB as u32).filter(|&t| mask.allows(t)).collect();
    assert_eq!(allowed, [text_ids("0")[0], text_ids("1")[0]]);
    constraint.observe(text_ids("1")[0]);
    let mask = constraint.mask().unwrap();
    let allowed: Vec<u32> = (0..VOCAB as u32).filter(|&t| mask.allows(t)).collect();
    assert_eq!(allowed, [id("<|return|>")], "after the digit only the stop");
}

#[test]
fn bad_grammars_are_refused_up_front_naming_the_problem() {
    let refuse = |grammar: Grammar| {
        let rules = Rules {
            answer: Some(grammar),
            tools: HashMap::new(),
            deadline: None,
        };
        Constraint::new(vocabulary(), rules)
            .err()
            .expect("refused")
            .to_string()
    };
    let message = refuse(Grammar::JsonSchema(json!(true)));
    assert!(message.contains("must be an object"), "{message}");
    let message = refuse(Grammar::JsonSchema(
        json!({"type": "object", "properties": {"a": {"type": "strin"}}}),
    ));
    assert!(
        message.contains("response format") && message.contains("strin"),
        "{message}"
    );
    let message = refuse(Grammar::Regex("(unclosed".into()));
    assert!(message.contains("response format"), "{message}");
}

#[test]
fn a_required_call_is_written_once_the_reasoning_budget_is_spent() {
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": false,
    });
    let header = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>";
    let mut outputs = Vec::new();
    // 0: the deadline falls inside the turn's first header; 6: inside the
    // reasoning, which is closed first.
    for (seed, after, opening) in [
        (1u64, 0usize, header.to_string()),
        (2, 6, format!("<|end|><|start|>assistant{header}")),
        (3, 6, format!("<|end|><|start|>assistant{header}")),
    ] {
        let names = ["get_weather".to_string(), "get_time".to_string()];
        let rules = Rules {
            answer: None,
            tools: HashMap::from([
                (names[0].clone(), Grammar::JsonSchema(schema.clone())),
                (names[1].clone(), Grammar::JsonObject),
            ]),
            deadline: Some(Deadline::call(after, &names[..1])),
        };
        let mut constraint = Constraint::new(vocabulary(), rules).unwrap();
        constraint.prime(&[vec![id("<|start|>")], text_ids("assistant")].concat());
        let reasoning = [
            vec![id("<|channel|>")],
            text_ids("analysis"),
            vec![id("<|message|>")],
            text_ids("I should answer directly without any tool at all."),
        ]
        .concat();
        for &token in reasoning.iter().take(after) {
            let mask = constraint.mask().expect("the turn may not end before the call");
            assert!(mask.allows(token), "the reasoning is free");
            assert!(!mask.allows(id("<|return|>")) && !mask.allows(id("<|call|>")));
            constraint.observe(token);
        }
        let mut rng = Rng(seed * 0x9e37_79b9);
        let written = run(&mut constraint, &[], id("<|call|>"), &mut rng).unwrap();
        let arguments = written
            .strip_prefix(&opening)
            .unwrap_or_else(|| panic!("seed {seed}: {written:?} opens with {opening:?}"));
        outputs.push(arguments.to_string());
    }
    let verdicts = common::jsonschema(json!({"cases": [{"schema": schema, "outputs": outputs}]}));
    for (output, result) in outputs.iter().zip(verdicts[0]["results"].as_array().unwrap()) {
        assert_eq!(result, &Value::Null, "{output}");
    }
}
