//! One evaluation: the metrics of a labelled set's results, the mistakes
//! behind them, their cost, the CI gate, and the terminal summary.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::categories::{self, CategoryMetrics};
use super::compare::Comparison;
use super::golden::{Example, RuleIds};
use super::manifest::Manifest;
use super::metrics::{self, Answer, Estimate, Metrics, Scored};
use super::results::Outcome;
use crate::classify::lint::{Lint, Severity};

/// Mistakes show this many characters of the text.
const SHOWN_CHARS: usize = 240;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub manifest: Manifest,
    pub metrics: Metrics,
    /// By rule id, when the set's labels and the answers name them.
    pub categories: Option<CategoryMetrics>,
    /// False positives, false negatives and unreadable answers, in set order.
    pub mistakes: Vec<Mistake>,
    /// Ids of the examples with a verdict but no probability of a violation.
    pub unscored: Vec<String>,
    pub cost: Cost,
    pub gate: Vec<GateFailure>,
    /// The policy's lint findings, so a score is read beside what may explain it.
    pub lint: Option<Lint>,
    /// Against `--baseline`, when given.
    pub comparison: Option<Comparison>,
    /// With several policies, this run scores their combined verdict and
    /// these score each policy alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Evaluation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MistakeKind {
    FalsePositive,
    FalseNegative,
    ParseFailure,
    CutOff,
    /// Not a mistake: listed for the person who decides.
    Escalated,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mistake {
    pub kind: MistakeKind,
    pub id: String,
    /// The text, trimmed to its first characters.
    pub text: String,
    pub gold: u8,
    pub gold_category: Option<String>,
    pub predicted: Option<u8>,
    pub policy_category: Option<String>,
    pub p_violation: Option<f64>,
    pub rationale: Option<String>,
    pub reasoning: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Cost {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// The completion tokens outside the answer, and the answer's (see
    /// `Classification::answer_tokens`); None when a result predates the split.
    pub reasoning_tokens: Option<u64>,
    pub answer_tokens: Option<u64>,
    pub mean_completion_tokens: Option<f64>,
    pub latency_ms: Latency,
    /// Items classified by this run (the rest came from the cache or a file).
    pub classified: u64,
    pub from_cache: u64,
    /// Of this run's classifying, model load excluded.
    pub wall_seconds: Option<f64>,
    pub items_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

/// Minimums (and a maximum) a CI run must meet.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub min_precision: Option<f64>,
    pub min_recall: Option<f64>,
    pub min_f1: Option<f64>,
    /// Parse failures and cut-off answers together.
    pub max_parse_failures: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GateFailure {
    pub metric: String,
    pub value: Option<f64>,
    pub limit: f64,
    /// How far past the limit; None when the metric is undefined.
    pub by: Option<f64>,
    pub message: String,
}

impl Gate {
    pub fn check(&self, m: &Metrics) -> Vec<GateFailure> {
        let mut failures = Vec::new();
        for (metric, flag, estimate, limit) in [
            ("precision", "--min-precision", m.precision, self.min_precision),
            ("recall", "--min-recall", m.recall, self.min_recall),
            ("f1", "--min-f1", m.f1, self.min_f1),
        ] {
            let Some(limit) = limit else { continue };
            match estimate.value {
                Some(value) if value >= limit => {}
                Some(value) => failures.push(GateFailure {
                    metric: metric.into(),
                    value: Some(value),
                    limit,
                    by: Some(limit - value),
                    message: format!(
                        "{metric} {value:.3} is below {flag} {limit} by {:.3}",
                        limit - value
                    ),
                }),
                None => failures.push(GateFailure {
                    metric: metric.into(),
                    value: None,
                    limit,
                    by: None,
                    message: format!(
                        "{metric} is undefined on this set ({}), so it cannot meet {flag} {limit}",
                        undefined_because(metric)
                    ),
                }),
            }
        }
        if let Some(limit) = self.max_parse_failures {
            let count = m.parse_failures + m.cut_off;
            if count > limit {
                failures.push(GateFailure {
                    metric: "parse_failures".into(),
                    value: Some(count as f64),
                    limit: limit as f64,
                    by: Some((count - limit) as f64),
                    message: format!(
                        "{count} answers could not be read ({} parse failures, {} cut off), over --max-parse-failures {limit} by {}",
                        m.parse_failures,
                        m.cut_off,
                        count - limit
                    ),
                });
            }
        }
        failures
    }
}

fn undefined_because(metric: &str) -> &'static str {
    match metric {
        "precision" => "nothing was flagged",
        "recall" => "no example violates",
        _ => "no example violates and nothing was flagged",
    }
}

/// Scores `outcomes` (by example id; every example must have one).
pub fn evaluate(
    examples: &[Example],
    outcomes: &HashMap<String, Outcome>,
    rules: &RuleIds,
    options: &metrics::Options,
    manifest: Manifest,
    gate: &Gate,
    mut cost: Cost,
) -> Evaluation {
    let pairs: Vec<(&Example, &Outcome)> = examples.iter().map(|e| (e, &outcomes[&e.item.id])).collect();
    let scored: Vec<Scored> = pairs
        .iter()
        .map(|(e, o)| Scored {
            gold: e.gold.violates,
            answer: o.answer(),
            p_violation: o.p_violation(),
        })
        .collect();
    let metrics = metrics::score(&scored, options);
    let mistakes = pairs
        .iter()
        .filter_map(|(e, o)| {
            let kind = match (e.gold.violates, o.answer()) {
                (false, Answer::Violates) => MistakeKind::FalsePositive,
                (true, Answer::Safe) => MistakeKind::FalseNegative,
                (_, Answer::ParseFailure) => MistakeKind::ParseFailure,
                (_, Answer::CutOff) => MistakeKind::CutOff,
                (_, Answer::Escalate) => MistakeKind::Escalated,
                _ => return None,
            };
            Some(Mistake {
                kind,
                id: e.item.id.clone(),
                text: trim(&e.item.content),
                gold: u8::from(e.gold.violates),
                gold_category: e.gold.category.clone(),
                predicted: o.label,
                policy_category: o.policy_category.clone(),
                p_violation: o.p_violation(),
                rationale: o.rationale.clone(),
                reasoning: o.reasoning.clone(),
                error: o.error.clone(),
            })
        })
        .collect();
    let unscored = pairs
        .iter()
        .filter(|(_, o)| o.label.is_some() && o.p_violation().is_none())
        .map(|(e, _)| e.item.id.clone())
        .collect();
    let all: Vec<&Outcome> = pairs.iter().map(|(_, o)| *o).collect();
    cost.prompt_tokens = all.iter().map(|o| o.usage.prompt_tokens).sum();
    cost.cached_tokens = all.iter().map(|o| o.usage.cached_tokens).sum();
    cost.completion_tokens = all.iter().map(|o| o.usage.completion_tokens).sum();
    cost.reasoning_tokens = all.iter().map(|o| o.usage.reasoning_tokens).sum();
    cost.answer_tokens = all.iter().map(|o| o.usage.answer_tokens).sum();
    cost.mean_completion_tokens = (!all.is_empty()).then(|| cost.completion_tokens as f64 / all.len() as f64);
    let mut latencies: Vec<f64> = all.iter().filter_map(|o| o.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    cost.latency_ms = Latency {
        mean: (!latencies.is_empty()).then(|| latencies.iter().sum::<f64>() / latencies.len() as f64),
        p50: metrics::percentile(&latencies, 0.5),
        p95: metrics::percentile(&latencies, 0.95),
    };
    Evaluation {
        categories: category_metrics(&pairs, rules),
        gate: gate.check(&metrics),
        manifest,
        metrics,
        mistakes,
        unscored,
        cost,
        comparison: None,
        lint: None,
        policies: Vec::new(),
    }
}

/// Category scores, when some violating example is labelled with a rule id
/// and some answer names a category.
fn category_metrics(pairs: &[(&Example, &Outcome)], rules: &RuleIds) -> Option<CategoryMetrics> {
    let labelled = pairs
        .iter()
        .any(|(e, _)| e.gold.violates && e.gold.category.is_some());
    let named = pairs.iter().any(|(_, o)| o.policy_category.is_some());
    if !(labelled && named) {
        return None;
    }
    let mut uncategorised = 0;
    let mut classes = Vec::new();
    let mut undeclared = Vec::new();
    for (e, o) in pairs {
        let answer = categories::answer_class(o.label, o.policy_category.as_deref(), rules);
        if answer == categories::OTHER && o.policy_category.is_some() {
            undeclared.push(e.item.id.clone());
        }
        match categories::gold_class(e.gold.violates, e.gold.category.as_deref(), rules) {
            Some(gold) => classes.push((gold, answer)),
            None => uncategorised += 1,
        }
    }
    let rows: Vec<String> = rules
        .violating
        .iter()
        .filter(|id| classes.iter().any(|(g, a)| g == *id || a == *id))
        .cloned()
        .chain([categories::SAFE.to_string()])
        .collect();
    let mut scores = categories::score(&classes, &rows, uncategorised);
    scores.undeclared = undeclared;
    Some(scores)
}

fn trim(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

/// The terminal summary: metric table, confusion matrix, thresholds,
/// mistakes and cost. `colour` adds ANSI colour for a terminal.
pub fn summary(e: &Evaluation, colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let m = &e.metrics;
    let c = &m.confusion;
    let mut out = String::new();
    let model = e.manifest.model.as_ref().map_or_else(
        || {
            format!(
                "results {}",
                e.manifest.results_file.as_ref().map_or("", |f| f.name.as_str())
            )
        },
        |m| format!("model {}", m.name),
    );
    let _ = writeln!(
        out,
        "{} · policy {} · {} ({} examples: {} violating, {} safe) · effort {}",
        paint("1", "safeguard eval"),
        e.manifest.policy.name,
        e.manifest.dataset.name,
        m.n,
        c.positives(),
        c.negatives(),
        e.manifest.effort,
    );
    let _ = writeln!(out, "{model}");
    if let Some(lint) = &e.lint {
        let _ = writeln!(out, "policy {}", lint.summary());
        for f in &lint.findings {
            let (code, severity) = match f.severity {
                Severity::Error => ("31", "error"),
                Severity::Warning => ("33", "warning"),
            };
            let line = f.line.map_or_else(String::new, |l| format!("line {l}: "));
            let _ = writeln!(
                out,
                "  {line}{}: {} [{}]",
                paint(code, severity),
                f.message,
                f.rule
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<20} {:>7}   95% interval", "metric", "value");
    let row = |out: &mut String, name: &str, est: &Estimate| {
        let value = est.value.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
        let interval = match (est.low, est.high) {
            (Some(l), Some(h)) => format!("[{l:.3}, {h:.3}]"),
            _ => String::new(),
        };
        let _ = writeln!(out, "{name:<20} {value:>7}   {interval}");
    };
    for (name, est) in [
        ("accuracy", &m.accuracy),
        ("precision", &m.precision),
        ("recall", &m.recall),
        ("F1", &m.f1),
        ("specificity", &m.specificity),
        ("balanced accuracy", &m.balanced_accuracy),
        ("MCC", &m.mcc),
        ("Cohen's kappa", &m.kappa),
    ] {
        row(&mut out, name, est);
    }
    let unread = m.parse_failures + m.cut_off;
    let held = if e.manifest.constrain {
        "; answers held to the policy's output (--constrain)"
    } else if m.parse_failures > 0 {
        "; --constrain holds answers to the policy's output"
    } else {
        ""
    };
    let unread_line = format!(
        "{:<20} {:>7}   ({} parse failures, {} cut off{held})",
        "no verdict", unread, m.parse_failures, m.cut_off
    );
    let _ = writeln!(
        out,
        "{}",
        if unread > 0 {
            paint("33", &unread_line)
        } else {
            unread_line
        }
    );
    if m.escalated > 0 {
        let _ = writeln!(out, "{:<20} {:>7}", "escalated", m.escalated);
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>9} {:>11} {:>10}",
        "confusion", "said 1", "said 0", "no verdict", "escalated"
    );
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>8} {:>11} {:>10}",
        "gold 1 (violates)", c.tp, c.fn_, c.violating_unread, c.violating_escalated
    );
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>8} {:>11} {:>10}",
        "gold 0 (safe)", c.fp, c.tn, c.safe_unread, c.safe_escalated
    );
    let _ = writeln!(
        out,
        "\nP(violation) on {} of {} examples{}",
        m.scored,
        m.n,
        if m.unscored > 0 {
            format!(" ({} without one)", m.unscored)
        } else {
            String::new()
        }
    );
    for (name, est) in [
        ("ROC AUC", &m.roc_auc),
        ("average precision", &m.average_precision),
        ("Brier score", &m.brier),
        ("ECE", &m.ece),
    ] {
        row(&mut out, name, est);
    }
    if let Some(b) = &m.best_f1 {
        let _ = writeln!(
            out,
            "best F1 at P(violation) ≥ {:.4}: F1 {:.3}, precision {:.3}, recall {:.3}",
            b.threshold, b.f1, b.precision, b.recall
        );
    }
    match (m.target_recall, &m.at_target_recall) {
        (Some(r), Some(a)) => {
            let _ = writeln!(
                out,
                "recall ≥ {r} from P(violation) ≥ {:.4}: precision {:.3}, recall {:.3}",
                a.threshold, a.precision, a.recall
            );
        }
        (Some(r), None) => {
            let _ = writeln!(
                out,
                "recall ≥ {r}: no threshold reaches it (no scored violating example)"
            );
        }
        _ => {}
    }
    if !e.mistakes.is_empty() {
        let _ = writeln!(out, "\nmistakes ({})", e.mistakes.len());
        for x in &e.mistakes {
            let kind = match x.kind {
                MistakeKind::FalsePositive => paint("31", "false positive"),
                MistakeKind::FalseNegative => paint("31", "false negative"),
                MistakeKind::ParseFailure => paint("33", "parse failure"),
                MistakeKind::CutOff => paint("33", "cut off"),
                MistakeKind::Escalated => paint("35", "escalated"),
            };
            let p = x
                .p_violation
                .map_or_else(String::new, |p| format!("  P(violation)={p:.3}"));
            let said = x.predicted.map_or_else(|| "-".to_string(), |l| l.to_string());
            let _ = writeln!(out, "  [{}] {kind}: gold {} said {said}{p}", x.id, x.gold);
            let _ = writeln!(out, "      {}", x.text);
            if let Some(r) = x.rationale.as_ref().or(x.error.as_ref()) {
                let _ = writeln!(out, "      {}", paint("2", r));
            }
        }
    }
    if let Some(cat) = &e.categories {
        category_summary(&mut out, cat);
    }
    if let Some(cmp) = &e.comparison {
        comparison_summary(&mut out, cmp, &paint);
    }
    if !e.policies.is_empty() {
        policies_summary(&mut out, &e.policies);
    }
    let cost = &e.cost;
    let split = match (cost.reasoning_tokens, cost.answer_tokens) {
        (Some(r), Some(a)) => format!(": {r} reasoning, {a} answer"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "\ncost: {} prompt tokens ({} cached), {} completion tokens{split} ({} per item)",
        cost.prompt_tokens,
        cost.cached_tokens,
        cost.completion_tokens,
        cost.mean_completion_tokens
            .map_or_else(|| "-".into(), |t| format!("{t:.1}"))
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let _ = writeln!(
        out,
        "latency per item (ms): mean {}, p50 {}, p95 {}; {} classified now{}, {} from the cache",
        ms(cost.latency_ms.mean),
        ms(cost.latency_ms.p50),
        ms(cost.latency_ms.p95),
        cost.classified,
        cost.items_per_second
            .map_or_else(String::new, |r| format!(" at {r:.2} items/s")),
        cost.from_cache
    );
    out
}

/// The columns of the per-policy table of a combined run.
pub const POLICY_COLUMNS: [&str; 7] = [
    "policy",
    "accuracy",
    "precision",
    "recall",
    "F1",
    "no verdict",
    "escalated",
];

/// One policy's row of that table, in [`POLICY_COLUMNS`] order.
pub fn policy_row(e: &Evaluation) -> [String; 7] {
    let show = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
    let m = &e.metrics;
    [
        e.manifest.policy.name.clone(),
        show(m.accuracy.value),
        show(m.precision.value),
        show(m.recall.value),
        show(m.f1.value),
        (m.parse_failures + m.cut_off).to_string(),
        m.escalated.to_string(),
    ]
}

/// Each policy of a combined run scored alone, one row each.
fn policies_summary(out: &mut String, policies: &[Evaluation]) {
    let _ = writeln!(out, "\neach policy alone");
    let line = |out: &mut String, [name, cells @ ..]: [&str; 7]| {
        let _ = write!(out, "{name:<20}");
        for (cell, width) in cells.iter().zip([8, 9, 7, 7, 10, 9]) {
            let _ = write!(out, " {cell:>width$}");
        }
        out.push('\n');
    };
    line(out, POLICY_COLUMNS);
    for e in policies {
        line(out, policy_row(e).each_ref().map(String::as_str));
    }
    // Each policy's lint, in short: `policies lint NAME` has the findings.
    for e in policies {
        if let Some(lint) = &e.lint {
            let _ = writeln!(out, "{} {}", e.manifest.policy.name, lint.summary());
        }
    }
}

fn comparison_summary(out: &mut String, c: &Comparison, paint: &dyn Fn(&str, &str) -> String) {
    let _ = writeln!(
        out,
        "\nagainst the baseline (policy {}, run {})",
        c.baseline_policy, c.baseline_date
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>9} {:>9}",
        "metric", "baseline", "now", "change"
    );
    let show = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
    for d in &c.metrics {
        let change = d.delta.map_or_else(|| "—".to_string(), |v| format!("{v:+.3}"));
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9}",
            d.metric,
            show(d.baseline),
            show(d.current),
            change
        );
    }
    if let Some(r) = &c.at_equal_recall {
        let _ = writeln!(
            out,
            "precision at recall {:.3}: baseline {:.3}, now {:.3}",
            r.recall, r.baseline_precision, r.current_precision
        );
    }
    let _ = writeln!(
        out,
        "{} fixed, {} broken; McNemar's exact p = {:.4}",
        c.fixed.len(),
        c.broken.len(),
        c.mcnemar_p
    );
    let said = |l: Option<u8>| l.map_or_else(|| "no verdict".to_string(), |l| l.to_string());
    for (name, code, flips) in [("fixed", "32", &c.fixed), ("broken", "31", &c.broken)] {
        for f in flips {
            let _ = writeln!(
                out,
                "  [{}] {}: gold {}, baseline said {}, now {}",
                f.id,
                paint(code, name),
                f.gold,
                said(f.baseline),
                said(f.current)
            );
            let _ = writeln!(out, "      {}", f.text);
        }
    }
}

fn category_summary(out: &mut String, c: &CategoryMetrics) {
    let show = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
    let _ = writeln!(
        out,
        "\nby category{}",
        if c.uncategorised > 0 {
            format!(
                " ({} violating examples without a rule id left out)",
                c.uncategorised
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>9} {:>7} {:>7}",
        "class", "examples", "precision", "recall", "F1"
    );
    for k in &c.classes {
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>9} {:>7} {:>7}",
            k.class,
            k.support,
            show(k.precision),
            show(k.recall),
            show(k.f1)
        );
    }
    for (name, a) in [("macro average", &c.macro_avg), ("micro average", &c.micro_avg)] {
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>9} {:>7} {:>7}",
            name,
            "",
            show(a.precision),
            show(a.recall),
            show(a.f1)
        );
    }
    if !c.undeclared.is_empty() {
        let _ = writeln!(
            out,
            "answers citing a rule the policy does not declare: {}",
            c.undeclared.join(", ")
        );
    }
}

/// An `--effort` sweep side by side: quality against tokens and time.
pub fn sweep_summary(all: &[Evaluation]) -> String {
    let show = |v: Option<f64>, digits: usize| v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"));
    let mut out = String::from("effort sweep\n");
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>9} {:>7} {:>7} {:>7} {:>10} {:>11} {:>9} {:>7}",
        "effort",
        "accuracy",
        "precision",
        "recall",
        "F1",
        "AUC",
        "no verdict",
        "tokens/item",
        "p50 (ms)",
        "items/s"
    );
    for e in all {
        let m = &e.metrics;
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>9} {:>7} {:>7} {:>7} {:>10} {:>11} {:>9} {:>7}",
            e.manifest.effort,
            show(m.accuracy.value, 3),
            show(m.precision.value, 3),
            show(m.recall.value, 3),
            show(m.f1.value, 3),
            show(m.roc_auc.value, 3),
            m.parse_failures + m.cut_off,
            show(e.cost.mean_completion_tokens, 1),
            show(e.cost.latency_ms.p50, 0),
            show(e.cost.items_per_second, 2),
        );
    }
    out
}
