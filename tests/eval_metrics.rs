//! Every metric of `safeguard eval` against scikit-learn and scipy
//! (tests/eval_metrics_ref.py) on random and adversarial label and score
//! vectors: one class only, all ties, empty, all parse failures, n = 1.

mod common;

use std::process::Command;

use safeguard_mlx::eval::metrics::{score, Answer, Options, Scored};
use serde_json::{json, Value};

/// A deterministic stream in [0, 1) (xorshift64*), independent of the code under test.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A labelled run where the score tracks the label with noise; `step`
/// rounds scores to make ties, `unread` is the share of answers that are not
/// a 0 or a 1 (parse failures, cut-offs and escalations in equal parts).
fn random_case(n: usize, seed: u64, step: Option<f64>, unread: f64) -> Vec<Scored> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..n)
        .map(|_| {
            let gold = rng.unit() < 0.45;
            let mut p = (if gold { 0.65 } else { 0.35 } + (rng.unit() - 0.5) * 0.8).clamp(0.0, 1.0);
            if let Some(step) = step {
                p = (p / step).round() * step;
            }
            let roll = rng.unit();
            let (answer, p) = if roll < unread / 3.0 {
                (Answer::ParseFailure, None)
            } else if roll < unread * 2.0 / 3.0 {
                (Answer::CutOff, None)
            } else if roll < unread {
                (Answer::Escalate, None)
            } else if roll < unread + 0.05 {
                // A verdict without a probability: counted, but not ranked.
                (if p > 0.5 { Answer::Violates } else { Answer::Safe }, None)
            } else {
                (if p > 0.5 { Answer::Violates } else { Answer::Safe }, Some(p))
            };
            Scored {
                gold,
                answer,
                p_violation: p,
            }
        })
        .collect()
}

fn item(gold: bool, answer: Answer, p: Option<f64>) -> Scored {
    Scored {
        gold,
        answer,
        p_violation: p,
    }
}

fn cases() -> Vec<(&'static str, Vec<Scored>)> {
    use Answer::*;
    vec![
        ("random, ties and failures", random_case(150, 1, Some(0.05), 0.1)),
        ("random, continuous", random_case(61, 2, None, 0.0)),
        ("random, small", random_case(9, 3, Some(0.25), 0.2)),
        (
            "one class only (violating)",
            (0..12)
                .map(|i| {
                    item(
                        true,
                        if i % 3 == 0 { Safe } else { Violates },
                        Some(0.2 + 0.05 * i as f64),
                    )
                })
                .collect(),
        ),
        (
            "one class only (safe)",
            (0..7).map(|i| item(false, Safe, Some(0.1 * i as f64))).collect(),
        ),
        (
            "all ties",
            (0..10).map(|i| item(i % 2 == 0, Violates, Some(0.5))).collect(),
        ),
        ("empty", Vec::new()),
        (
            "all parse failures",
            (0..6)
                .map(|i| item(i < 3, if i % 2 == 0 { ParseFailure } else { CutOff }, None))
                .collect(),
        ),
        ("n = 1", vec![item(true, Violates, Some(0.9))]),
        (
            "perfect",
            (0..8)
                .map(|i| {
                    item(
                        i < 4,
                        if i < 4 { Violates } else { Safe },
                        Some(if i < 4 { 0.99 } else { 0.01 }),
                    )
                })
                .collect(),
        ),
        (
            "every example flagged, scores on bin edges",
            (0..11)
                .map(|i| item(i % 3 != 0, Violates, Some(i as f64 / 10.0)))
                .collect(),
        ),
    ]
}

fn answer_json(a: Answer) -> Value {
    match a {
        Answer::Violates => json!(1),
        Answer::Safe => json!(0),
        Answer::ParseFailure => json!("parse"),
        Answer::CutOff => json!("cut"),
        Answer::Escalate => json!("escalate"),
    }
}

/// Equal as JSON, numbers within 1e-9 (relative for large ones).
fn assert_close(ours: &Value, reference: &Value, path: &str) {
    match (ours, reference) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{path}: ours {a}, reference {b}"
            );
        }
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<_> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (x, y) = (a.get(key), b.get(key));
                assert!(
                    x.is_some() && y.is_some(),
                    "{path}.{key}: ours {x:?}, reference {y:?}"
                );
                assert_close(x.unwrap(), y.unwrap(), &format!("{path}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(
                a.len(),
                b.len(),
                "{path}: lengths differ\nours {ours}\nreference {reference}"
            );
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(ours, reference, "{path}"),
    }
}

#[test]
fn metrics_equal_scikit_learn_and_scipy() {
    let cases = cases();
    let options = |n: usize| Options {
        target_recall: Some(0.8),
        // Enough resamples to exercise the intervals, few enough for sklearn to redo quickly.
        resamples: if n > 100 { 60 } else { 150 },
        seed: 17,
        ..Options::default()
    };
    let input: Vec<Value> = cases
        .iter()
        .map(|(_, items)| {
            let o = options(items.len());
            json!({
                "gold": items.iter().map(|s| u8::from(s.gold)).collect::<Vec<_>>(),
                "answer": items.iter().map(|s| answer_json(s.answer)).collect::<Vec<_>>(),
                "p": items.iter().map(|s| s.p_violation).collect::<Vec<_>>(),
                "target_recall": o.target_recall,
                "resamples": o.resamples,
                "seed": o.seed,
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, serde_json::to_string(&input).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/eval_metrics_ref.py");
    let output = Command::new(common::python())
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let references: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    for ((name, items), reference) in cases.iter().zip(&references) {
        let ours = serde_json::to_value(score(items, &options(items.len()))).unwrap();
        assert_close(&ours, reference, name);
    }
}

#[test]
fn unreadable_answers_are_misses_not_safe_verdicts() {
    // Two violating examples, one caught and one whose answer was cut off:
    // recall is 1/2, not 1/1 as it would be if the cut-off one were dropped,
    // and the safe example's parse failure costs specificity.
    let items = [
        item(true, Answer::Violates, Some(0.9)),
        item(true, Answer::CutOff, None),
        item(false, Answer::ParseFailure, None),
        item(false, Answer::Safe, Some(0.2)),
    ];
    let m = score(&items, &Options::default());
    assert_eq!(m.recall.value, Some(0.5));
    assert_eq!(m.specificity.value, Some(0.5));
    assert_eq!(m.accuracy.value, Some(0.5));
    assert_eq!(m.precision.value, Some(1.0));
    assert_eq!((m.parse_failures, m.cut_off, m.unscored), (1, 1, 2));
}

#[test]
fn mcnemars_exact_test_equals_scipys_binomial_test() {
    use safeguard_mlx::eval::compare::mcnemar_exact;
    let pairs: [(u64, u64); 9] = [
        (0, 1),
        (0, 5),
        (3, 3),
        (10, 2),
        (2, 10),
        (7, 8),
        (40, 25),
        (200, 160),
        (1500, 1380),
    ];
    let script = format!(
        "import json\nfrom scipy.stats import binomtest\nprint(json.dumps([binomtest(min(b, c), b + c, 0.5).pvalue for b, c in {pairs:?}]))"
    );
    let output = Command::new(common::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Vec<f64> = serde_json::from_slice(&output.stdout).unwrap();
    for ((b, c), want) in pairs.iter().zip(reference) {
        let ours = mcnemar_exact(*b, *c);
        assert!(
            (ours - want).abs() <= 1e-9 * want.max(1e-300),
            "b={b} c={c}: ours {ours}, scipy {want}"
        );
    }
    // No discordant pairs: no evidence either way.
    assert_eq!(mcnemar_exact(0, 0), 1.0);
}

#[test]
fn category_scores_equal_scikit_learn() {
    use safeguard_mlx::eval::categories::score;
    let classes: Vec<String> = ["PI1", "PI2", "PI3", "safe"].map(String::from).to_vec();
    let answers = ["PI1", "PI2", "PI3", "safe", "other", "no verdict"];
    let mut rng = Rng(99);
    let mut cases: Vec<Vec<(String, String)>> = Vec::new();
    for n in [1, 7, 60] {
        cases.push(
            (0..n)
                .map(|_| {
                    let gold = classes[(rng.unit() * 4.0) as usize].clone();
                    // Right about half the time, so every cell fills.
                    let answer = if rng.unit() < 0.5 {
                        gold.clone()
                    } else {
                        answers[(rng.unit() * 6.0) as usize].to_string()
                    };
                    (gold, answer)
                })
                .collect(),
        );
    }
    // PI3 never the gold class nor said: undefined everywhere, left out of the macro average.
    cases.push(vec![
        ("PI1".into(), "PI1".into()),
        ("safe".into(), "PI1".into()),
        ("PI2".into(), "no verdict".into()),
    ]);
    let script = r#"
import json, sys, warnings
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support as prf
warnings.filterwarnings("ignore")
num = lambda x: None if np.isnan(x) else float(x)
out = []
for case in json.load(open(sys.argv[1])):
    labels, gold, said = case["classes"], [g for g, _ in case["pairs"]], [a for _, a in case["pairs"]]
    p, r, f, s = prf(gold, said, labels=labels, average=None, zero_division=np.nan)
    avg = {k: dict(zip(("precision", "recall", "f1"), map(num, prf(gold, said, labels=labels, average=k, zero_division=np.nan)[:3]))) for k in ("macro", "micro")}
    columns = labels + [x for x in ("other", "no verdict") if x in said]
    matrix = confusion_matrix(gold, said, labels=columns)[: len(labels)]
    out.append({
        "classes": [{"class": c, "support": int(s[i]), "precision": num(p[i]), "recall": num(r[i]), "f1": num(f[i])} for i, c in enumerate(labels)],
        "macro_avg": avg["macro"], "micro_avg": avg["micro"], "columns": columns, "matrix": matrix.tolist(),
        "uncategorised": 0, "undeclared": [],
    })
print(json.dumps(out))
"#;
    let input: Vec<Value> = cases
        .iter()
        .map(|pairs| json!({"classes": classes, "pairs": pairs}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    std::fs::write(&path, serde_json::to_string(&input).unwrap()).unwrap();
    let output = Command::new(common::python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let references: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    for (i, (pairs, reference)) in cases.iter().zip(&references).enumerate() {
        let ours = serde_json::to_value(score(pairs, &classes, 0)).unwrap();
        assert_close(&ours, reference, &format!("case {i}"));
    }
}
