//! Constrained decoding through the batch driver, on a random-weight model
//! that never writes JSON of its own accord: every answer it is held to —
//! greedy, sampled with 20 seeds, all of them batched together — must parse
//! and validate against its schema as the `jsonschema` package judges it,
//! and what the model writes outside the constrained message (its
//! reasoning) must be token for token what it writes unconstrained.
//! `classify --constrain` on the same model gives every item a verdict.

mod common;

use std::collections::HashMap;

use safeguard_mlx::classify::input::Item;
use safeguard_mlx::classify::policy::Policy;
use safeguard_mlx::classify::run::{Classifier, ClassifyOptions};
use safeguard_mlx::classify::verdict::Keywords;
use safeguard_mlx::constrain::{Grammar, Guide, Rules, Vocabulary};
use safeguard_mlx::engine::driver::{Driver, DriverOptions, Event, Job, JobId, Stop};
use safeguard_mlx::engine::generate::GenerateOptions;
use safeguard_mlx::engine::sampler::SamplerOptions;
use safeguard_mlx::harmony::{
    render_for_completion, ControlTokens, Conversation, Message, ResponseFormat, SystemContent,
};
use safeguard_mlx::model::{ComputeDtype, GptOss};
use safeguard_mlx::tokenizer::Tokenizer;
use serde_json::{json, Value};

const FIXTURE: &str = "a-mxfp4";

struct Setup {
    model: GptOss,
    tokenizer: Tokenizer,
    vocabulary: Vocabulary,
    control: ControlTokens,
}

/// The model is not `Sync`: each test thread loads its own.
fn setup() -> &'static Setup {
    thread_local! {
        static SETUP: &'static Setup = Box::leak(Box::new(load()));
    }
    SETUP.with(|s| *s)
}

fn load() -> Setup {
    let dir = common::fixture(FIXTURE);
    let model = GptOss::load(&dir, ComputeDtype::Float32).unwrap();
    let tokenizer = Tokenizer::load(&dir).unwrap();
    let vocabulary = Vocabulary::new(&tokenizer, model.config.vocab_size as usize).unwrap();
    let control = ControlTokens::of(&tokenizer).unwrap();
    Setup {
        model,
        tokenizer,
        vocabulary,
        control,
    }
}

/// Nested objects, arrays, enums, bounded numbers, `required` and
/// `additionalProperties: false`; strings and arrays are bounded so that a
/// model with no preference still closes the object.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "violation": {"type": "integer", "enum": [0, 1]},
            "category": {"type": "string", "enum": ["spam", "fraud", "none"]},
            "severity": {"type": "integer", "minimum": 1, "maximum": 5},
            "score": {"type": "number", "enum": [0.25, 0.5, 0.75]},
            "evidence": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {
                        "quote": {"type": "string", "maxLength": 12},
                        "offset": {"type": "integer", "minimum": 0, "maximum": 999},
                        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
                    },
                    "required": ["quote", "offset"],
                    "additionalProperties": false,
                },
            },
            "reviewer": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 8}, "level": {"type": "integer", "minimum": -3, "maximum": 3}},
                "required": ["level"],
                "additionalProperties": false,
            },
        },
        "required": ["violation", "category", "evidence", "reviewer"],
        "additionalProperties": false,
    })
}

fn guide() -> Guide {
    Guide {
        vocabulary: setup().vocabulary.clone(),
        rules: Rules {
            answer: Some(Grammar::JsonSchema(schema())),
            tools: HashMap::new(),
            deadline: None,
        },
    }
}

/// The conversation, told of the response format, up to `<|start|>assistant`.
fn prompt() -> Vec<u32> {
    let conversation = Conversation::new(SystemContent::default())
        .with_response_format(ResponseFormat {
            name: "verdict".into(),
            description: Some("The moderation verdict.".into()),
            schema: schema(),
        })
        .with_message(Message::user("Is this spam? BUY CHEAP WATCHES NOW"));
    render_for_completion(&conversation, &setup().tokenizer).unwrap()
}

/// The prompt with a reasoning message written and the final answer's
/// header open, so the answer is the first thing generated.
fn answer_prompt() -> Vec<u32> {
    let s = setup();
    let text = |t: &str| s.tokenizer.encode_ordinary(t).unwrap();
    let c = &s.control;
    [
        prompt(),
        vec![c.channel],
        text("analysis"),
        vec![c.message],
        text("The user sells watches in capitals; that is spam."),
        vec![c.end, c.start],
        text("assistant"),
        vec![c.channel],
        text("final"),
        vec![c.message],
    ]
    .concat()
}

fn job(prompt: Vec<u32>, sampler: SamplerOptions, max_tokens: usize, guide: Option<Guide>) -> Job {
    Job {
        prompt,
        cache_prefix: 0,
        keep_prompt: false,
        options: GenerateOptions {
            max_tokens,
            sampler,
            ..GenerateOptions::default()
        },
        stop_tokens: setup().control.generation_stops().to_vec(),
        top_logprobs: None,
        watch: Vec::new(),
        group: 0,
        guide,
    }
}

/// Runs `jobs` together in a driver of `slots` slots; each one's tokens and
/// why it stopped.
fn run(jobs: Vec<Job>, slots: usize) -> Vec<(Vec<u32>, Stop)> {
    let mut driver = Driver::new(
        &setup().model,
        DriverOptions {
            max_slots: slots,
            prefix_cache_bytes: 0,
        },
    );
    let ids: Vec<JobId> = jobs.into_iter().map(|j| driver.submit(j)).collect();
    let mut tokens: HashMap<JobId, Vec<u32>> = HashMap::new();
    let mut stops: HashMap<JobId, Stop> = HashMap::new();
    while !driver.is_idle() {
        for (id, event) in driver.step() {
            match event {
                Event::Token(token) => tokens.entry(id).or_default().push(token.id),
                Event::Finished(stop) => {
                    stops.insert(id, stop);
                }
                Event::Failed(message) => panic!("job {id:?} failed: {message}"),
                Event::Started { .. } => {}
            }
        }
    }
    ids.iter()
        .map(|id| (tokens.remove(id).unwrap_or_default(), stops[id]))
        .collect()
}

fn sampled(seed: u64) -> SamplerOptions {
    SamplerOptions {
        temperature: 1.0,
        top_p: if seed.is_multiple_of(2) { 0.9 } else { 0.0 },
        seed,
        ..SamplerOptions::default()
    }
}

/// The answer's text: every token but the closing `<|return|>`, which each
/// answer must end with (the grammar completed, not the token budget).
fn answer_text(i: usize, (tokens, stop): &(Vec<u32>, Stop)) -> String {
    let s = setup();
    assert_eq!(*stop, Stop::StopToken, "answer {i} did not finish: {tokens:?}");
    let (last, body) = tokens.split_last().unwrap();
    assert_eq!(*last, s.control.return_, "answer {i} ends with <|return|>");
    s.tokenizer.decode(body).unwrap()
}

#[test]
fn greedy_sampled_and_batched_answers_all_validate() {
    let guided = |sampler| job(answer_prompt(), sampler, 400, Some(guide()));
    let greedy_alone = run(vec![guided(SamplerOptions::default())], 1);
    let mut jobs = vec![guided(SamplerOptions::default())];
    jobs.extend((1..=20).map(|seed| guided(sampled(seed))));
    let batched = run(jobs, 8);
    assert_eq!(
        batched[0], greedy_alone[0],
        "a greedy answer batched with 20 sampled ones equals the answer decoded alone"
    );
    let outputs: Vec<String> = batched
        .iter()
        .enumerate()
        .map(|(i, r)| answer_text(i, r))
        .collect();
    let distinct: std::collections::HashSet<&String> = outputs.iter().collect();
    assert!(distinct.len() > 10, "seeds draw different answers: {outputs:#?}");
    let verdicts = common::jsonschema(json!({"cases": [{"schema": schema(), "outputs": outputs}]}));
    assert_eq!(verdicts[0]["schema_ok"], true);
    for (output, result) in outputs.iter().zip(verdicts[0]["results"].as_array().unwrap()) {
        assert_eq!(result, &Value::Null, "{output}");
    }
}

#[test]
fn the_model_reasons_exactly_as_it_would_unconstrained() {
    // The random model never opens a final answer, so everything it writes
    // here is outside the constrained message; the rows drawn after the
    // host's mask check must still be the rows drawn without it, greedy and
    // sampled, next to an unconstrained job in the same batch.
    let free = |sampler| job(prompt(), sampler, 48, None);
    let guided = |sampler| job(prompt(), sampler, 48, Some(guide()));
    let want = run(vec![free(SamplerOptions::default()), free(sampled(7))], 2);
    let got = run(
        vec![
            guided(SamplerOptions::default()),
            guided(sampled(7)),
            free(SamplerOptions::default()),
        ],
        3,
    );
    assert!(
        want[0].0.len() > 8,
        "the model reasons for a while: {:?}",
        want[0]
    );
    assert_eq!(got[0], want[0], "greedy");
    assert_eq!(got[1], want[1], "sampled");
    assert_eq!(got[2], want[0], "an unconstrained neighbour");
}

#[test]
fn a_constrained_classification_gives_every_item_a_verdict() {
    let s = setup();
    let items: Vec<Item> = ["BUY CHEAP WATCHES NOW", "My SSN is 078-05-1120", "hello"]
        .iter()
        .enumerate()
        .map(|(i, text)| Item {
            id: i.to_string(),
            content: text.to_string(),
        })
        .collect();
    let items: Vec<&Item> = items.iter().collect();
    // A binary policy, and one that asks for a JSON object with its rule ids;
    // budgets with room for a few dozen tokens of reasoning before the answer.
    let pii_answer = json!({
        "type": "object",
        "properties": {
            "violation": {"enum": [0, 1]},
            "policy_category": {"enum": ["PI0.a", "PI0.b", "PI0.c", "PI0.d", "PI1", "PI2", "PI3", "PI4", null]},
            "rule_ids": {"type": "array", "items": {"enum": ["PI0.a", "PI0.b", "PI0.c", "PI0.d", "PI1", "PI2", "PI3", "PI4"]}},
            "confidence": {"enum": ["low", "medium", "high"]},
            "rationale": {"type": "string"},
        },
        "required": ["violation", "policy_category"],
        "additionalProperties": false,
    });
    // A JSON policy whose front matter declares its fields: the answer must
    // have exactly those, or the verdict parser refuses it.
    let declared = Policy::from_text(
        "pii-fields",
        &format!(
            "---\noutput: json\nfields: violation, rationale\n---\n{}",
            Policy::find("pii").unwrap().text
        ),
    )
    .unwrap();
    let declared_answer = json!({
        "type": "object",
        "properties": {"violation": {"enum": [0, 1]}, "rationale": {"type": "string"}},
        "required": ["violation", "rationale"],
        "additionalProperties": false,
    });
    let policies = [
        (Policy::find("spam").unwrap(), 40),
        (Policy::find("pii").unwrap(), 360),
        (declared, 360),
    ];
    for (policy, max_tokens) in policies {
        let options = ClassifyOptions {
            effort: None,
            date: None,
            max_tokens,
            sampler: SamplerOptions::default(),
            prefill_step: 2048,
            keywords: Keywords::default(),
        };
        let mut classifier = Classifier::new(&s.model, &s.tokenizer, &policy, options).unwrap();
        let unconstrained = classifier.classify(items[0]).unwrap();
        assert_eq!(
            unconstrained.verdict.label, None,
            "the random model answers nothing of its own accord"
        );
        classifier.constrain(s.model.config.vocab_size as usize).unwrap();
        let mut answers = Vec::new();
        classifier
            .classify_batched(&items, 3, |_, c| {
                assert!(
                    c.verdict.label.is_some(),
                    "{}: no verdict from {:?}",
                    policy.name,
                    c.raw
                );
                answers.push(c.answer);
                Ok(())
            })
            .unwrap();
        assert_eq!(answers.len(), items.len());
        let schema = match policy.name.as_str() {
            "pii" => &pii_answer,
            "pii-fields" => &declared_answer,
            _ => {
                assert!(answers.iter().all(|a| a == "0" || a == "1"), "{answers:?}");
                continue;
            }
        };
        let verdicts = common::jsonschema(json!({"cases": [{"schema": schema, "outputs": answers}]}));
        for (answer, result) in answers.iter().zip(verdicts[0]["results"].as_array().unwrap()) {
            assert_eq!(result, &Value::Null, "{answer}");
        }
    }
}
