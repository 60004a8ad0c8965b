//! What holding an answer to a JSON schema costs a decode step (`--constraint`).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::constrain::{Grammar, Guide, Rules, Vocabulary};
use crate::tokenizer::Tokenizer;

/// The mask's host time against a decode step.
#[derive(Debug, Clone, Serialize)]
pub struct ConstraintCost {
    /// Masks computed, along random walks through the grammar.
    pub steps: usize,
    /// Host time per step: the grammar's mask and its expansion to one byte per id.
    pub mask_ms: f64,
    /// A decode step at the first context (from its median decode tok/s).
    pub step_ms: f64,
    pub percent_of_step: f64,
}

/// A verdict object like the JSON policies ask for: enums, ids, a bounded
/// rationale, nested arrays.
fn bench_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "violation": {"enum": [0, 1]},
            "policy_category": {"anyOf": [{"enum": ["PI1", "PI2", "PI3", "PI0.a"]}, {"type": "null"}]},
            "rule_ids": {"type": "array", "items": {"enum": ["PI1", "PI2", "PI3", "PI0.a"]}, "maxItems": 4},
            "confidence": {"enum": ["low", "medium", "high"]},
            "rationale": {"type": "string", "maxLength": 200},
        },
        "required": ["violation", "policy_category", "rationale"],
        "additionalProperties": false,
    })
}

/// Times the constraint's host work over `steps` decode steps: the final
/// answer opened, tokens drawn at random from each mask (a new answer when
/// one ends), only the masks timed. In the driver this work overlaps the
/// forward; timed alone, it is an upper bound on what it adds.
pub fn constraint_cost(
    tokenizer: &Tokenizer,
    vocab: usize,
    steps: usize,
    step_ms: f64,
) -> Result<ConstraintCost> {
    let vocabulary = Vocabulary::new(tokenizer, vocab)?;
    let control = crate::harmony::ControlTokens::of(tokenizer)?;
    let guide = Guide {
        vocabulary,
        rules: Rules {
            answer: Some(Grammar::JsonSchema(bench_schema())),
            tools: Default::default(),
            deadline: None,
        },
    };
    let header = [
        vec![control.start],
        tokenizer.encode_ordinary("assistant")?,
        vec![control.channel],
        tokenizer.encode_ordinary("final")?,
        vec![control.message],
    ]
    .concat();
    let mut constraint = guide.start(&header)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut masked = Duration::ZERO;
    for _ in 0..steps {
        let start = Instant::now();
        let mask = constraint
            .mask()
            .ok_or_else(|| anyhow::anyhow!("the answer's grammar gave no mask"))?;
        std::hint::black_box(mask.bytes(vocab));
        masked += start.elapsed();
        let allowed: Vec<u32> = (0..vocab as u32).filter(|&t| mask.allows(t)).collect();
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let token = allowed[(state >> 33) as usize % allowed.len()];
        if token == control.return_ {
            constraint = guide.start(&header)?;
        } else {
            constraint.observe(token);
        }
    }
    let mask_ms = masked.as_secs_f64() * 1e3 / steps.max(1) as f64;
    Ok(ConstraintCost {
        steps,
        mask_ms,
        step_ms,
        percent_of_step: 100.0 * mask_ms / step_ms,
    })
}
