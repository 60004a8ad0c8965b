//! Classifier results as `classify --json`/`--output` writes them: read back
//! from a file (`eval --results`), from the cache, or taken from a live run,
//! so every way of getting results is scored by the same code.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::golden::Error;
use super::metrics::Answer;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Absent in lines written before the split was recorded.
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
    #[serde(default)]
    pub answer_tokens: Option<u64>,
}

/// One result line. Only `id`, `label` and `finish_reason` are needed to
/// score; the rest explains mistakes and costs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Outcome {
    pub id: String,
    pub label: Option<u8>,
    /// "violates", "safe", "escalate"; absent in files written before it existed.
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub policy_category: Option<String>,
    /// P(label) / (P(0) + P(1)) at the verdict digit.
    #[serde(default)]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub rationale: Option<String>,
    #[serde(default)]
    pub reasoning: String,
    #[serde(default)]
    pub answer: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// The policy's name, in a line of `policies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// With several policies: each one's own result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Outcome>,
}

impl Outcome {
    /// A result line's JSON, checked: a label of 0 or 1 (or null) and a
    /// probability in [0, 1].
    pub fn from_json(value: Value) -> Result<Outcome, String> {
        let outcome: Outcome = serde_json::from_value(value).map_err(|e| {
            format!("not a classify result ({e}); give a file written by `classify --output`")
        })?;
        for o in std::iter::once(&outcome).chain(&outcome.policies) {
            if o.label.is_some_and(|l| l > 1) {
                return Err(format!(
                    "\"label\" is {}, expected 0, 1 or null",
                    o.label.unwrap_or(0)
                ));
            }
            if let Some(c) = o.confidence {
                if !(0.0..=1.0).contains(&c) {
                    return Err(format!("\"confidence\" is {c}, expected a probability in [0, 1]"));
                }
            }
        }
        Ok(outcome)
    }

    /// This line's result under the policy called `name`: the line itself
    /// when it is the only policy's, else its entry in `policies`.
    pub fn under(&self, name: &str, only: bool) -> Result<Outcome, String> {
        if only && self.policies.is_empty() {
            return Ok(self.clone());
        }
        self.policies
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "the result for {:?} has no verdict of policy {name:?}; write the file with \
                     `safeguard classify` given the same --policy list",
                    self.id
                )
            })
    }

    pub fn answer(&self) -> Answer {
        if self.outcome.as_deref() == Some("escalate") {
            return Answer::Escalate;
        }
        match (self.label, self.finish_reason.as_deref()) {
            (Some(1), _) => Answer::Violates,
            (Some(_), _) => Answer::Safe,
            (None, Some("length")) => Answer::CutOff,
            (None, _) => Answer::ParseFailure,
        }
    }

    /// The model's probability that the item violates: its confidence in
    /// the label it gave, turned around when that label was 0.
    pub fn p_violation(&self) -> Option<f64> {
        let c = self.confidence?;
        match self.label? {
            1 => Some(c),
            _ => Some(1.0 - c),
        }
    }
}

/// Reads a `classify --output` file (JSON lines); bad lines are all named.
pub fn read(path: &Path) -> Result<Vec<Outcome>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(line)
            .map_err(|e| format!("invalid JSON: {e}"))
            .and_then(Outcome::from_json);
        match parsed {
            Ok(outcome) => outcomes.push(outcome),
            Err(message) => rows.push((index + 1, message)),
        }
    }
    if !rows.is_empty() {
        return Err(Error::Rows {
            path: path.to_path_buf(),
            rows,
        });
    }
    Ok(outcomes)
}
