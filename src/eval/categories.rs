//! Scores by category, for sets labelled with a policy's rule ids and
//! policies whose answers name one (`"policy_category": "PI2"`): per-class
//! precision, recall and F1, their macro and micro averages, and the
//! category confusion matrix. Safe answers carry no category, so every safe
//! rule is one class, `safe`.

use serde::{Deserialize, Serialize};

use super::golden::RuleIds;

pub const SAFE: &str = "safe";
/// An answer that names no category, or one the policy does not declare.
pub const OTHER: &str = "other";
pub const NO_VERDICT: &str = "no verdict";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub class: String,
    /// Examples whose gold label is this class.
    pub support: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryMetrics {
    pub classes: Vec<ClassScores>,
    /// The mean over classes of each score, leaving out undefined ones.
    pub macro_avg: Averages,
    /// The scores of all classes' counts pooled.
    pub micro_avg: Averages,
    /// Rows: gold classes (the order of `classes`); columns: `columns`.
    pub columns: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
    /// Violating examples labelled 1 without a rule id, left out here.
    pub uncategorised: u64,
    /// Examples whose answer cites a rule id the policy does not declare.
    pub undeclared: Vec<String>,
}

/// A violating example's class: the policy's spelling of its rule id
/// (`sp2` → `SP2`), or None when the label named no violating rule.
pub fn gold_class(violates: bool, category: Option<&str>, rules: &RuleIds) -> Option<String> {
    if !violates {
        return Some(SAFE.into());
    }
    declared(category?, rules)
}

/// The class of an answer: its category when it violates, `safe`, `other`
/// (no category, or one the policy does not declare) or `no verdict`.
pub fn answer_class(label: Option<u8>, category: Option<&str>, rules: &RuleIds) -> String {
    match label {
        None => NO_VERDICT.into(),
        Some(0) => SAFE.into(),
        Some(_) => category
            .and_then(|c| declared(c, rules))
            .unwrap_or_else(|| OTHER.into()),
    }
}

fn declared(id: &str, rules: &RuleIds) -> Option<String> {
    rules
        .violating
        .iter()
        .find(|r| r.eq_ignore_ascii_case(id.trim()))
        .cloned()
}

/// Scores (gold class, answer class) pairs; `classes` are the rows, in order.
pub fn score(pairs: &[(String, String)], classes: &[String], uncategorised: u64) -> CategoryMetrics {
    let mut columns: Vec<String> = classes.to_vec();
    for extra in [OTHER, NO_VERDICT] {
        if pairs.iter().any(|(_, a)| a == extra) {
            columns.push(extra.into());
        }
    }
    let matrix: Vec<Vec<u64>> = classes
        .iter()
        .map(|g| {
            columns
                .iter()
                .map(|a| pairs.iter().filter(|(x, y)| x == g && y == a).count() as u64)
                .collect()
        })
        .collect();
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let (mut tp_all, mut said_all, mut gold_all) = (0, 0, 0);
    let scores: Vec<ClassScores> = classes
        .iter()
        .map(|k| {
            let tp = pairs.iter().filter(|(g, a)| g == k && a == k).count() as u64;
            let said = pairs.iter().filter(|(_, a)| a == k).count() as u64;
            let gold = pairs.iter().filter(|(g, _)| g == k).count() as u64;
            tp_all += tp;
            said_all += said;
            gold_all += gold;
            ClassScores {
                class: k.clone(),
                support: gold,
                precision: ratio(tp, said),
                recall: ratio(tp, gold),
                f1: ratio(2 * tp, said + gold),
            }
        })
        .collect();
    let mean = |pick: fn(&ClassScores) -> Option<f64>| {
        let values: Vec<f64> = scores.iter().filter_map(pick).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    CategoryMetrics {
        macro_avg: Averages {
            precision: mean(|c| c.precision),
            recall: mean(|c| c.recall),
            f1: mean(|c| c.f1),
        },
        micro_avg: Averages {
            precision: ratio(tp_all, said_all),
            recall: ratio(tp_all, gold_all),
            f1: ratio(2 * tp_all, said_all + gold_all),
        },
        classes: scores,
        columns,
        matrix,
        uncategorised,
        undeclared: Vec::new(),
    }
}
