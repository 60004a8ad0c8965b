//! A run against an earlier one (`eval --baseline RUN.json`, the `--json`
//! of a run on the same set): metrics side by side, the examples that
//! flipped, McNemar's exact test on them, and precision at equal recall.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::golden::Example;
use super::metrics::{CurvePoint, Estimate, Metrics};
use super::report::{Evaluation, Mistake};

/// What a comparison needs of an earlier run's `--json`.
#[derive(Debug, Deserialize)]
pub struct Baseline {
    manifest: BaselineManifest,
    metrics: Metrics,
    mistakes: Vec<BaselineMistake>,
}

#[derive(Debug, Deserialize)]
struct BaselineManifest {
    policy: Named,
    dataset: Named,
    date: String,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
struct BaselineMistake {
    id: String,
    predicted: Option<u8>,
    p_violation: Option<f64>,
}

impl Baseline {
    pub fn read(path: &Path) -> Result<Baseline, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: not the --json output of `safeguard eval` ({e})",
                path.display()
            )
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub baseline_policy: String,
    pub baseline_policy_sha256: String,
    pub baseline_date: String,
    pub metrics: Vec<Delta>,
    /// Wrong before, right now.
    pub fixed: Vec<Flip>,
    /// Right before, wrong now.
    pub broken: Vec<Flip>,
    /// Two-sided exact p-value of McNemar's test: could the flips go this
    /// way by chance if both runs were equally good?
    pub mcnemar_p: f64,
    pub at_equal_recall: Option<EqualRecall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    pub metric: &'static str,
    pub baseline: Option<f64>,
    pub current: Option<f64>,
    pub delta: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub id: String,
    pub text: String,
    pub gold: u8,
    pub baseline: Option<u8>,
    pub baseline_p_violation: Option<f64>,
    pub current: Option<u8>,
    pub current_p_violation: Option<f64>,
}

/// Each run's precision at the highest threshold on P(violation) where it
/// reaches `recall`, the lower of the two runs' recalls.
#[derive(Debug, Clone, Serialize)]
pub struct EqualRecall {
    pub recall: f64,
    pub baseline_precision: f64,
    pub current_precision: f64,
}

impl Baseline {
    /// Flips are counted per example, so both runs must share the set.
    pub fn check_same_set(&self, sha256: &str) -> Result<(), String> {
        if self.manifest.dataset.sha256 == sha256 {
            return Ok(());
        }
        Err(format!(
            "the baseline ran on another labelled set ({}, sha256 {}…); compare runs on the same set",
            self.manifest.dataset.name,
            self.manifest.dataset.sha256.get(..12).unwrap_or("")
        ))
    }
}

/// Compares `current` with `baseline` (checked with [`Baseline::check_same_set`]).
pub fn compare(baseline: &Baseline, current: &Evaluation, examples: &[Example]) -> Comparison {
    let before: HashMap<&str, &BaselineMistake> =
        baseline.mistakes.iter().map(|m| (m.id.as_str(), m)).collect();
    let now: HashMap<&str, &Mistake> = current.mistakes.iter().map(|m| (m.id.as_str(), m)).collect();
    let (mut fixed, mut broken) = (Vec::new(), Vec::new());
    for example in examples {
        let id = example.item.id.as_str();
        let gold = u8::from(example.gold.violates);
        let flip = |b: Option<&&BaselineMistake>, c: Option<&&Mistake>| Flip {
            id: id.to_string(),
            text: c.map_or_else(|| example.item.content.clone(), |m| m.text.clone()),
            gold,
            baseline: b.map_or(Some(gold), |m| m.predicted),
            baseline_p_violation: b.and_then(|m| m.p_violation),
            current: c.map_or(Some(gold), |m| m.predicted),
            current_p_violation: c.and_then(|m| m.p_violation),
        };
        match (before.get(id), now.get(id)) {
            (Some(b), None) => fixed.push(flip(Some(b), None)),
            (None, Some(c)) => broken.push(flip(None, Some(c))),
            _ => {}
        }
    }
    let (b, c) = (&baseline.metrics, &current.metrics);
    let pick: [(&'static str, Read); 12] = [
        ("accuracy", |m| m.accuracy),
        ("precision", |m| m.precision),
        ("recall", |m| m.recall),
        ("f1", |m| m.f1),
        ("specificity", |m| m.specificity),
        ("balanced_accuracy", |m| m.balanced_accuracy),
        ("mcc", |m| m.mcc),
        ("kappa", |m| m.kappa),
        ("roc_auc", |m| m.roc_auc),
        ("average_precision", |m| m.average_precision),
        ("brier", |m| m.brier),
        ("ece", |m| m.ece),
    ];
    let metrics = pick
        .iter()
        .map(|(metric, get)| {
            let (x, y) = (get(b).value, get(c).value);
            Delta {
                metric,
                baseline: x,
                current: y,
                delta: x.zip(y).map(|(x, y)| y - x),
            }
        })
        .collect();
    let at_equal_recall = b.recall.value.zip(c.recall.value).and_then(|(x, y)| {
        let recall = x.min(y);
        Some(EqualRecall {
            recall,
            baseline_precision: precision_at(&b.curve, recall)?,
            current_precision: precision_at(&c.curve, recall)?,
        })
    });
    Comparison {
        baseline_policy: baseline.manifest.policy.name.clone(),
        baseline_policy_sha256: baseline.manifest.policy.sha256.clone(),
        baseline_date: baseline.manifest.date.clone(),
        mcnemar_p: mcnemar_exact(fixed.len() as u64, broken.len() as u64),
        metrics,
        fixed,
        broken,
        at_equal_recall,
    }
}

/// Reads one metric of a run.
type Read = fn(&Metrics) -> Estimate;

/// Precision at the highest threshold whose recall reaches `recall`.
fn precision_at(curve: &[CurvePoint], recall: f64) -> Option<f64> {
    curve
        .iter()
        .find(|p| p.recall.is_some_and(|r| r >= recall))
        .map(|p| p.precision)
}

/// McNemar's exact test: with `b` and `c` discordant pairs, twice the
/// probability of a split at least as uneven under Binomial(b + c, 1/2),
/// capped at 1. Summed in logs so large counts do not underflow.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    let mut log_pmf = n as f64 * 0.5f64.ln();
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        terms.push(log_pmf);
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * terms.iter().map(|t| (t - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}
