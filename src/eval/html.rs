//! `eval --report FILE.html`: one self-contained page (no scripts, fonts or
//! network) with the manifest, metric table, confusion matrix, PR and ROC
//! curves and reliability diagram as inline SVG, and every mistake with its
//! reasoning folded away. Every piece of text from data is escaped.

use std::fmt::Write as _;

use super::categories::CategoryMetrics;
use super::compare::Comparison;
use super::metrics::{Estimate, Metrics};
use super::report::{self, Evaluation, MistakeKind};
use crate::classify::lint::{Lint, Severity};

/// Text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}td,th{padding:.25em .7em;border:1px solid #ddd;text-align:right}\
th{background:#f5f5f5}td.l,th.l{text-align:left}.bad{color:#b00}.warn{color:#a60}\
.plots{display:flex;flex-wrap:wrap;gap:1.5em}figure{margin:0}figcaption{text-align:center;font-weight:600}\
details{margin:.2em 0 .8em}pre{white-space:pre-wrap;background:#f7f7f7;padding:.6em;max-height:30em;overflow:auto}\
.mistake{border-left:3px solid #ccc;padding-left:.8em;margin:1em 0}code{font-size:.9em}";

pub fn render(e: &Evaluation) -> String {
    let title = format!(
        "safeguard eval: {} on {}",
        e.manifest.policy.name, e.manifest.dataset.name
    );
    document(&title, &body(e))
}

/// An `--effort` sweep: a table of the runs side by side, then each run.
pub fn render_sweep(all: &[Evaluation]) -> String {
    let Some(first) = all.first() else {
        return document("safeguard eval", "");
    };
    let title = format!(
        "safeguard eval: {} on {}, effort sweep",
        first.manifest.policy.name, first.manifest.dataset.name
    );
    let mut out = String::from(
        "<h2>Effort sweep</h2>\n<table id=\"sweep\"><tr><th class=\"l\">effort</th><th>accuracy</th><th>precision</th><th>recall</th><th>F1</th><th>ROC AUC</th><th>no verdict</th><th>completion tokens per item</th><th>latency p50 (ms)</th><th>items/s</th></tr>\n",
    );
    for e in all {
        let m = &e.metrics;
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.manifest.effort),
            cell(m.accuracy.value),
            cell(m.precision.value),
            cell(m.recall.value),
            cell(m.f1.value),
            cell(m.roc_auc.value),
            m.parse_failures + m.cut_off,
            e.cost.mean_completion_tokens.map_or_else(|| "—".into(), |t| format!("{t:.1}")),
            e.cost.latency_ms.p50.map_or_else(|| "—".into(), |t| format!("{t:.0}")),
            e.cost.items_per_second.map_or_else(|| "—".into(), |t| format!("{t:.2}")),
        );
    }
    out.push_str("</table>\n");
    for e in all {
        let prefix = format!("effort-{}-", escape(&e.manifest.effort));
        let _ = writeln!(
            out,
            "<h1 id=\"{prefix}run\">Effort {}</h1>",
            escape(&e.manifest.effort)
        );
        // Each run's element ids get the run's prefix so they stay unique.
        // Data text is escaped (a quote is &quot;), so ` id="` is only ever ours.
        out.push_str(&body(e).replace(" id=\"", &format!(" id=\"{prefix}")));
    }
    document(&title, &out)
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    )
}

fn body(e: &Evaluation) -> String {
    let m = &e.metrics;
    let mut out = String::new();
    if let Some(lint) = &e.lint {
        lint_section(&mut out, lint);
    }
    if !e.gate.is_empty() {
        out.push_str("<ul class=\"bad\" id=\"gate\">");
        for g in &e.gate {
            let _ = write!(out, "<li>gate failed: {}</li>", escape(&g.message));
        }
        out.push_str("</ul>\n");
    }
    metric_table(&mut out, m);
    confusion_table(&mut out, m);
    if !e.policies.is_empty() {
        policies_table(&mut out, &e.policies);
    }
    if let Some(c) = &e.categories {
        category_tables(&mut out, c);
    }
    plots(&mut out, m);
    if let Some(c) = &e.comparison {
        comparison(&mut out, c);
    }
    mistakes(&mut out, e);
    cost_and_manifest(&mut out, e);
    out
}

/// Each policy of a combined run scored alone.
fn policies_table(out: &mut String, policies: &[Evaluation]) {
    out.push_str("<h2>Each policy alone</h2>\n<table id=\"policies\"><tr>");
    for (i, column) in report::POLICY_COLUMNS.iter().enumerate() {
        let class = if i == 0 { " class=\"l\"" } else { "" };
        let _ = write!(out, "<th{class}>{column}</th>");
    }
    out.push_str("</tr>\n");
    for e in policies {
        out.push_str("<tr>");
        for (i, value) in report::policy_row(e).iter().enumerate() {
            let class = if i == 0 { " class=\"l\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", escape(value));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"))
}

fn metric_table(out: &mut String, m: &Metrics) {
    out.push_str("<h2>Metrics</h2>\n<table id=\"metrics\"><tr><th class=\"l\">metric</th><th>value</th><th>95% interval</th></tr>\n");
    let rows: [(&str, &Estimate); 12] = [
        ("accuracy", &m.accuracy),
        ("precision", &m.precision),
        ("recall", &m.recall),
        ("F1", &m.f1),
        ("specificity", &m.specificity),
        ("balanced accuracy", &m.balanced_accuracy),
        ("MCC", &m.mcc),
        ("Cohen's kappa", &m.kappa),
        ("ROC AUC", &m.roc_auc),
        ("average precision", &m.average_precision),
        ("Brier score", &m.brier),
        ("expected calibration error", &m.ece),
    ];
    for (name, est) in rows {
        let interval = match (est.low, est.high) {
            (Some(l), Some(h)) => format!("{l:.3} – {h:.3}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{interval}</td></tr>",
            escape(name),
            cell(est.value)
        );
    }
    let _ = writeln!(
        out,
        "<tr><td class=\"l\">examples</td><td>{}</td><td></td></tr>\n<tr><td class=\"l\">parse failures</td><td>{}</td><td></td></tr>\n<tr><td class=\"l\">cut off (token limit)</td><td>{}</td><td></td></tr>\n<tr><td class=\"l\">with P(violation)</td><td>{}</td><td></td></tr>\n</table>",
        m.n, m.parse_failures, m.cut_off, m.scored
    );
    if let Some(b) = &m.best_f1 {
        let _ = writeln!(
            out,
            "<p>Best F1 at P(violation) ≥ {:.4}: F1 {:.3}, precision {:.3}, recall {:.3}.</p>",
            b.threshold, b.f1, b.precision, b.recall
        );
    }
    if let (Some(r), Some(a)) = (m.target_recall, &m.at_target_recall) {
        let _ = writeln!(
            out,
            "<p>Recall ≥ {r} from P(violation) ≥ {:.4}: precision {:.3}, recall {:.3}.</p>",
            a.threshold, a.precision, a.recall
        );
    }
}

fn lint_section(out: &mut String, lint: &Lint) {
    let _ = writeln!(
        out,
        "<section id=\"lint\"><p>Policy {}</p>",
        escape(&lint.summary())
    );
    if !lint.findings.is_empty() {
        out.push_str("<ul>");
        for f in &lint.findings {
            let (class, severity) = match f.severity {
                Severity::Error => ("bad", "error"),
                Severity::Warning => ("warn", "warning"),
            };
            let line = f.line.map_or_else(String::new, |l| format!("line {l}: "));
            let _ = write!(
                out,
                "<li class=\"{class}\">{line}{severity}: {} [{}]</li>",
                escape(&f.message),
                f.rule
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>\n");
}

fn confusion_table(out: &mut String, m: &Metrics) {
    let c = &m.confusion;
    let _ = writeln!(
        out,
        "<h2>Confusion matrix</h2>\n<table id=\"confusion\"><tr><th class=\"l\">gold \\ answer</th><th>violates (1)</th><th>safe (0)</th><th>no verdict</th><th>escalated</th></tr>\n\
         <tr><th class=\"l\">violates (1)</th><td id=\"tp\">{}</td><td id=\"fn\">{}</td><td id=\"violating_unread\">{}</td><td id=\"violating_escalated\">{}</td></tr>\n\
         <tr><th class=\"l\">safe (0)</th><td id=\"fp\">{}</td><td id=\"tn\">{}</td><td id=\"safe_unread\">{}</td><td id=\"safe_escalated\">{}</td></tr>\n</table>",
        c.tp, c.fn_, c.violating_unread, c.violating_escalated, c.fp, c.tn, c.safe_unread, c.safe_escalated
    );
}

fn category_tables(out: &mut String, c: &CategoryMetrics) {
    out.push_str("<h2>By category</h2>\n<table id=\"categories\"><tr><th class=\"l\">class</th><th>examples</th><th>precision</th><th>recall</th><th>F1</th></tr>\n");
    for k in &c.classes {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&k.class),
            k.support,
            cell(k.precision),
            cell(k.recall),
            cell(k.f1)
        );
    }
    for (name, a) in [("macro average", &c.macro_avg), ("micro average", &c.micro_avg)] {
        let _ = writeln!(
            out,
            "<tr><th class=\"l\">{name}</th><td></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(a.precision),
            cell(a.recall),
            cell(a.f1)
        );
    }
    out.push_str("</table>\n<p>Category confusion matrix (rows: gold, columns: answer):</p>\n<table id=\"category-confusion\"><tr><th></th>");
    for column in &c.columns {
        let _ = write!(out, "<th>{}</th>", escape(column));
    }
    out.push_str("</tr>\n");
    for (k, row) in c.classes.iter().zip(&c.matrix) {
        let _ = write!(out, "<tr><th class=\"l\">{}</th>", escape(&k.class));
        for count in row {
            let _ = write!(out, "<td>{count}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    if c.uncategorised > 0 {
        let _ = writeln!(
            out,
            "<p>{} violating examples labelled without a rule id are left out here.</p>",
            c.uncategorised
        );
    }
    if !c.undeclared.is_empty() {
        let ids: Vec<String> = c.undeclared.iter().map(|i| escape(i)).collect();
        let _ = writeln!(
            out,
            "<p class=\"warn\">Answers citing a rule the policy does not declare: {}.</p>",
            ids.join(", ")
        );
    }
}

/// A 0–1 by 0–1 plot: `line` joined in order, `dots` marked; the diagonal
/// as a guide when asked.
fn plot(id: &str, caption: &str, x: &str, y: &str, line: &[(f64, f64)], diagonal: bool) -> String {
    const SIZE: f64 = 240.0;
    const PAD: f64 = 40.0;
    let px = |v: f64| PAD + v * SIZE;
    let py = |v: f64| PAD + (1.0 - v) * SIZE;
    let mut svg = format!(
        "<figure><svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{w}\" viewBox=\"0 0 {w} {w}\" role=\"img\" aria-label=\"{caption}\">",
        w = SIZE + 2.0 * PAD,
        caption = escape(caption)
    );
    let _ = write!(
        svg,
        "<rect x=\"{PAD}\" y=\"{PAD}\" width=\"{SIZE}\" height=\"{SIZE}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for t in [0.0, 0.5, 1.0] {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{t}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{t}</text>",
            px(t),
            PAD + SIZE + 14.0,
            PAD - 4.0,
            py(t) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text><text x=\"12\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 12 {})\">{}</text>",
        PAD + SIZE / 2.0,
        PAD + SIZE + 30.0,
        escape(x),
        PAD + SIZE / 2.0,
        PAD + SIZE / 2.0,
        escape(y)
    );
    if diagonal {
        let _ = write!(
            svg,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>",
            px(0.0),
            py(0.0),
            px(1.0),
            py(1.0)
        );
    }
    if !line.is_empty() {
        let points: Vec<String> = line
            .iter()
            .map(|&(a, b)| format!("{:.2},{:.2}", px(a), py(b)))
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\"/>",
            points.join(" ")
        );
        // Dots mark the points of a short curve; on a long one they would hide it.
        for &(a, b) in line.iter().filter(|_| line.len() <= 60) {
            let _ = write!(
                svg,
                "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"3\" fill=\"#1f5fbf\"/>",
                px(a),
                py(b)
            );
        }
    } else {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#888\">not defined on this set</text>",
            px(0.5),
            py(0.5)
        );
    }
    let _ = write!(svg, "</svg><figcaption>{}</figcaption></figure>", escape(caption));
    svg
}

fn plots(out: &mut String, m: &Metrics) {
    let pr: Vec<(f64, f64)> = m
        .curve
        .iter()
        .filter_map(|c| Some((c.recall?, c.precision)))
        .collect();
    let roc: Vec<(f64, f64)> =
        if m.curve.iter().all(|c| c.recall.is_some() && c.fpr.is_some()) && !m.curve.is_empty() {
            std::iter::once((0.0, 0.0))
                .chain(m.curve.iter().filter_map(|c| Some((c.fpr?, c.recall?))))
                .collect()
        } else {
            Vec::new()
        };
    let reliability: Vec<(f64, f64)> = m
        .reliability
        .iter()
        .filter_map(|b| Some((b.mean_p?, b.violating?)))
        .collect();
    let _ = writeln!(
        out,
        "<h2>Curves</h2>\n<p>From the model's probability of a violation, on the {} examples that have one.</p>\n<div class=\"plots\">{}{}{}</div>",
        m.scored,
        plot("pr-curve", "Precision–recall", "recall", "precision", &pr, false),
        plot("roc-curve", "ROC", "false positive rate", "true positive rate", &roc, true),
        plot("reliability", "Reliability", "mean P(violation) in bin", "share violating", &reliability, true),
    );
}

fn comparison(out: &mut String, c: &Comparison) {
    let _ = writeln!(
        out,
        "<h2>Against the baseline</h2>\n<p>Baseline: policy {} (sha256 <code>{}</code>), run {}.</p>\n<table id=\"comparison\"><tr><th class=\"l\">metric</th><th>baseline</th><th>now</th><th>change</th></tr>",
        escape(&c.baseline_policy),
        escape(&c.baseline_policy_sha256),
        escape(&c.baseline_date)
    );
    for d in &c.metrics {
        let change = d.delta.map_or_else(|| "—".to_string(), |v| format!("{v:+.3}"));
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{change}</td></tr>",
            d.metric,
            cell(d.baseline),
            cell(d.current)
        );
    }
    out.push_str("</table>\n");
    if let Some(r) = &c.at_equal_recall {
        let _ = writeln!(
            out,
            "<p>Precision at recall {:.3}: baseline {:.3}, now {:.3}.</p>",
            r.recall, r.baseline_precision, r.current_precision
        );
    }
    let _ = writeln!(
        out,
        "<p id=\"flips\">{} fixed, {} broken; McNemar's exact test p = {:.4}.</p>",
        c.fixed.len(),
        c.broken.len(),
        c.mcnemar_p
    );
    let said = |l: Option<u8>| l.map_or_else(|| "no verdict".to_string(), |l| l.to_string());
    for (name, class, flips) in [("fixed", "", &c.fixed), ("broken", "bad", &c.broken)] {
        for f in flips {
            let _ = writeln!(
                out,
                "<div class=\"mistake\"><code>{}</code> <span class=\"{class}\">{name}</span>: gold {}, baseline said {}, now {}<div>{}</div></div>",
                escape(&f.id),
                f.gold,
                said(f.baseline),
                said(f.current),
                escape(&f.text)
            );
        }
    }
}

fn mistakes(out: &mut String, e: &Evaluation) {
    let _ = writeln!(out, "<h2>Mistakes ({})</h2>", e.mistakes.len());
    if e.mistakes.is_empty() {
        out.push_str("<p>None.</p>\n");
    }
    for x in &e.mistakes {
        let (kind, class) = match x.kind {
            MistakeKind::FalsePositive => ("false positive", "bad"),
            MistakeKind::FalseNegative => ("false negative", "bad"),
            MistakeKind::ParseFailure => ("parse failure", "warn"),
            MistakeKind::CutOff => ("cut off", "warn"),
            MistakeKind::Escalated => ("escalated", "warn"),
        };
        let said = x
            .predicted
            .map_or_else(|| "no verdict".to_string(), |l| l.to_string());
        let gold = match &x.gold_category {
            Some(c) => format!("{} ({})", x.gold, escape(c)),
            None => x.gold.to_string(),
        };
        let p = x
            .p_violation
            .map_or_else(String::new, |p| format!(", P(violation) {p:.3}"));
        let category = x
            .policy_category
            .as_ref()
            .map_or_else(String::new, |c| format!(" ({})", escape(c)));
        let _ = writeln!(
            out,
            "<div class=\"mistake\"><div><code>{}</code> <span class=\"{class}\">{kind}</span>: gold {gold}, said {said}{category}{p}</div><div>{}</div>",
            escape(&x.id),
            escape(&x.text)
        );
        if let Some(r) = &x.rationale {
            let _ = writeln!(out, "<div><em>Rationale:</em> {}</div>", escape(r));
        }
        if let Some(error) = &x.error {
            let _ = writeln!(out, "<div class=\"warn\">{}</div>", escape(error));
        }
        if !x.reasoning.is_empty() {
            let _ = writeln!(
                out,
                "<details><summary>reasoning</summary><pre>{}</pre></details>",
                escape(&x.reasoning)
            );
        }
        out.push_str("</div>\n");
    }
}

fn cost_and_manifest(out: &mut String, e: &Evaluation) {
    let c = &e.cost;
    let ms = |v: Option<f64>| v.map_or_else(|| "—".into(), |v| format!("{v:.0}"));
    let _ = writeln!(
        out,
        "<h2>Cost</h2>\n<p>{} prompt tokens ({} cached), {} completion tokens{}; latency per item mean {} ms, p50 {} ms, p95 {} ms; {} classified by this run{}, {} from the cache.</p>",
        c.prompt_tokens,
        c.cached_tokens,
        c.completion_tokens,
        match (c.reasoning_tokens, c.answer_tokens) {
            (Some(r), Some(a)) => format!(" ({r} reasoning, {a} answer)"),
            _ => String::new(),
        },
        ms(c.latency_ms.mean),
        ms(c.latency_ms.p50),
        ms(c.latency_ms.p95),
        c.classified,
        c.items_per_second.map_or_else(String::new, |r| format!(" at {r:.2} items/s")),
        c.from_cache
    );
    out.push_str("<h2>Manifest</h2>\n<table id=\"manifest\">");
    let manifest = serde_json::to_value(&e.manifest).expect("a manifest serializes");
    let mut rows = Vec::new();
    flatten("", &manifest, &mut rows);
    for (key, value) in rows {
        let _ = write!(
            out,
            "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    out.push_str("</table>\n");
}

fn flatten(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        serde_json::Value::Null => rows.push((prefix.to_string(), "—".into())),
        serde_json::Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}
