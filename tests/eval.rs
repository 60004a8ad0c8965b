//! `safeguard eval` end to end on the scripted fixture, which answers 1 to
//! everything with a probability known from its weights
//! (tests/fixtures/scripted.py): the exact confusion matrix, re-scoring a
//! `classify --output` file, the result cache (rerun, resume, key change),
//! the CI gate and bad input.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `safeguard` with the result cache inside this test's folder.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_safeguard"))
            .env("HF_HUB_OFFLINE", "1")
            .env("XDG_CACHE_HOME", self.path("cache"))
            .args(args)
            .output()
            .unwrap()
    }

    fn eval_json(&self, extra: &[&str]) -> Value {
        self.eval_with(&scripted(), &["spam"], extra)
    }

    /// `classify --output OUT` of `model` on this test's set under each of `policies`.
    fn classify_to(&self, model: &str, policies: &[&str], out: &Path) {
        let set = self.path("set.jsonl");
        let mut args = vec!["classify", "-m", model, "--input", set.to_str().unwrap()];
        for policy in policies {
            args.extend(["--policy", policy]);
        }
        args.extend(["--output", out.to_str().unwrap(), "--json"]);
        let output = self.run(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The error of `eval --results RESULTS` on this test's set, which must exit 2.
    fn refused_results(&self, policies: &[&str], results: &Path) -> String {
        let set = self.path("set.jsonl");
        let mut args = vec!["eval", "--input", set.to_str().unwrap()];
        for policy in policies {
            args.extend(["--policy", policy]);
        }
        args.extend(["--results", results.to_str().unwrap()]);
        let output = self.run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        stderr
    }

    /// `eval` of `model` on this test's set under each of `policies`.
    fn eval_output(&self, model: &str, policies: &[&str], extra: &[&str]) -> Output {
        let set = self.path("set.jsonl");
        let mut args = vec!["eval", "-m", model, "--input", set.to_str().unwrap()];
        for policy in policies {
            args.extend(["--policy", policy]);
        }
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `eval --json` of `model` on this test's set under each of `policies`.
    fn eval_with(&self, model: &str, policies: &[&str], extra: &[&str]) -> Value {
        let output = self.eval_output(model, policies, &[extra, &["--json"]].concat());
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

fn scripted() -> String {
    common::fixture("scripted").to_str().unwrap().to_string()
}

fn expected_confidence() -> f64 {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("scripted").join("expected.json")).unwrap(),
    )
    .unwrap();
    expected["confidence"].as_f64().unwrap()
}

/// Four violating examples (labels written three ways) and three safe ones,
/// one of them a quoted scam: a hard negative the scripted model gets wrong.
fn write_set(path: &Path) {
    let rows = [
        json!({"id": "v1", "text": "WIN a free phone now at example.com", "label": 1}),
        json!({"id": "v2", "text": "Buy 1000 followers cheap, DM me", "label": "SP4"}),
        json!({"id": "v3", "text": "URGENT your account is locked, pay at example.net", "label": "violating"}),
        json!({"id": "v4", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "use my code BONUS5 at example.org"}], "label": true}),
        json!({"id": "s1", "text": "See you at lunch tomorrow", "label": 0}),
        json!({"id": "s2", "text": "Got this: 'You won a prize, click here'. Is it a scam?", "label": "SP0.b"}),
        json!({"id": "s3", "text": "thanks!", "label": "safe"}),
    ];
    let mut file = std::fs::File::create(path).unwrap();
    for row in rows {
        writeln!(file, "{row}").unwrap();
    }
}

fn confusion(report: &Value) -> [u64; 6] {
    let c = &report["metrics"]["confusion"];
    ["tp", "fn", "violating_unread", "fp", "tn", "safe_unread"].map(|k| c[k].as_u64().unwrap())
}

#[test]
fn the_scripted_model_gives_the_known_confusion_matrix_and_probabilities() {
    let env = Env::new();
    write_set(&env.path("set.jsonl"));
    let report = env.eval_json(&["--target-recall", "0.75"]);
    // It flags everything: every violating example caught, every safe one a false positive.
    assert_eq!(confusion(&report), [4, 0, 0, 3, 0, 0]);
    let m = &report["metrics"];
    assert_eq!(m["n"], 7);
    assert_eq!(m["precision"]["value"].as_f64().unwrap(), 4.0 / 7.0);
    assert_eq!(m["recall"]["value"].as_f64().unwrap(), 1.0);
    assert_eq!(m["specificity"]["value"].as_f64().unwrap(), 0.0);
    // One probability for every example: a single point on the curves, AUC one half.
    let p = expected_confidence();
    let curve = m["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 1);
    assert!((curve[0]["threshold"].as_f64().unwrap() - p).abs() < 1e-6);
    assert_eq!(m["roc_auc"]["value"].as_f64().unwrap(), 0.5);
    let brier = (4.0 * (1.0 - p).powi(2) + 3.0 * p.powi(2)) / 7.0;
    assert!((m["brier"]["value"].as_f64().unwrap() - brier).abs() < 1e-6);
    assert_eq!(m["at_target_recall"]["recall"].as_f64().unwrap(), 1.0);

    let mistakes = report["mistakes"].as_array().unwrap();
    let ids: Vec<&str> = mistakes.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["s1", "s2", "s3"]);
    for x in mistakes {
        assert_eq!(x["kind"], "false_positive");
        assert_eq!((x["gold"].as_u64(), x["predicted"].as_u64()), (Some(0), Some(1)));
        assert!((x["p_violation"].as_f64().unwrap() - p).abs() < 1e-6);
    }
    assert_eq!(mistakes[1]["gold_category"], "SP0.b");

    let manifest = &report["manifest"];
    assert_eq!(manifest["policy"]["name"], "spam");
    assert_eq!(manifest["effort"], "low");
    assert_eq!(manifest["max_tokens"], 4096);
    let set_bytes = std::fs::read(env.path("set.jsonl")).unwrap();
    assert_eq!(
        manifest["dataset"]["sha256"],
        common::sha256_by_python(&set_bytes)
    );
    assert_eq!(report["cost"]["classified"], 7);
    assert_eq!(report["cost"]["completion_tokens"], 7 * 5);
}

#[test]
fn rescoring_a_classify_output_equals_the_full_run() {
    let env = Env::new();
    let set = env.path("set.jsonl");
    write_set(&set);
    let full = env.eval_json(&[]);
    let out = env.path("out.jsonl");
    let model = scripted();
    env.classify_to(&model, &["spam"], &out);
    // No model: a -m that does not exist is never looked at.
    let output = env.run(&[
        "eval",
        "-m",
        "/no/such/model",
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--results",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rescored: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rescored["metrics"], full["metrics"]);
    let strip = |v: &Value| v["mistakes"].clone();
    assert_eq!(strip(&rescored), strip(&full));
    assert_eq!(rescored["manifest"]["model"], Value::Null);
    assert_eq!(rescored["manifest"]["results_file"]["name"], "out.jsonl");

    // A results file that misses examples is refused, naming them.
    let lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let partial = env.path("partial.jsonl");
    std::fs::write(&partial, lines[..5].join("\n") + "\n").unwrap();
    let stderr = env.refused_results(&["spam"], &partial);
    assert!(
        stderr.contains("no result for 2 of 7 examples (s2, s3)"),
        "{stderr}"
    );
}

#[test]
fn the_cache_makes_a_rerun_free_and_an_interrupted_run_resume() {
    let env = Env::new();
    write_set(&env.path("set.jsonl"));
    let first = env.eval_json(&[]);
    assert_eq!(
        (
            first["cost"]["classified"].as_u64(),
            first["cost"]["from_cache"].as_u64()
        ),
        (Some(7), Some(0))
    );
    let cache = PathBuf::from(first["manifest"]["cache"].as_str().unwrap());
    assert!(cache.starts_with(env.path("cache")), "{}", cache.display());

    let again = env.eval_json(&[]);
    assert_eq!(
        (
            again["cost"]["classified"].as_u64(),
            again["cost"]["from_cache"].as_u64()
        ),
        (Some(0), Some(7))
    );
    assert_eq!(again["metrics"], first["metrics"]);
    assert_eq!(again["mistakes"], first["mistakes"]);

    // An eval killed mid-write: three results kept, a fourth cut off mid-line.
    let lines: Vec<String> = std::fs::read_to_string(&cache)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 7);
    std::fs::write(&cache, format!("{}\n{}", lines[..3].join("\n"), &lines[3][..20])).unwrap();
    let resumed = env.eval_json(&[]);
    assert_eq!(
        (
            resumed["cost"]["classified"].as_u64(),
            resumed["cost"]["from_cache"].as_u64()
        ),
        (Some(4), Some(3))
    );
    assert_eq!(resumed["metrics"], first["metrics"]);
    assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 7);

    // A damaged cache is named, with the way out, instead of being trusted.
    let text = std::fs::read_to_string(&cache).unwrap();
    std::fs::write(&cache, format!("not json\n{text}")).unwrap();
    let model = scripted();
    let set = env.path("set.jsonl");
    let output = env.run(&[
        "eval",
        "-m",
        &model,
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the eval cache is damaged") && stderr.contains("--no-cache"),
        "{stderr}"
    );
    std::fs::write(&cache, text).unwrap();

    // Another key (here the token budget) is another run: nothing reused.
    let other = env.eval_json(&["--max-tokens", "64"]);
    assert_eq!(other["cost"]["classified"], 7);
    assert_ne!(other["manifest"]["cache"], first["manifest"]["cache"]);
}

#[test]
fn cut_off_answers_are_their_own_row_and_fail_the_gate() {
    let env = Env::new();
    let set = env.path("set.jsonl");
    write_set(&set);
    let model = scripted();
    // Two tokens stop the scripted answer before its verdict.
    let args = [
        "eval",
        "-m",
        &model,
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--max-tokens",
        "2",
        "--json",
        "--max-parse-failures",
        "1",
    ];
    let output = env.run(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "gate failed: 7 answers could not be read (0 parse failures, 7 cut off), over --max-parse-failures 1 by 6"
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(confusion(&report), [0, 0, 4, 0, 0, 3]);
    let m = &report["metrics"];
    assert_eq!(
        (m["cut_off"].as_u64(), m["parse_failures"].as_u64()),
        (Some(7), Some(0))
    );
    // Never counted as safe: recall and specificity are both zero, not undefined.
    assert_eq!(m["recall"]["value"].as_f64(), Some(0.0));
    assert_eq!(m["specificity"]["value"].as_f64(), Some(0.0));
    assert_eq!(m["precision"]["value"], Value::Null);
    assert!(report["mistakes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["kind"] == "cut_off"));
}

#[test]
fn the_gate_names_each_metric_that_failed_and_by_how_much() {
    let env = Env::new();
    let set = env.path("set.jsonl");
    write_set(&set);
    let model = scripted();
    let output = env.run(&[
        "eval",
        "-m",
        &model,
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--min-precision",
        "0.9",
        "--min-recall",
        "1",
        "--min-f1",
        "0.8",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // precision 4/7, F1 8/11; recall 1 passes.
    assert_eq!(
        stderr.trim().lines().collect::<Vec<_>>(),
        [
            "gate failed: precision 0.571 is below --min-precision 0.9 by 0.329",
            "gate failed: f1 0.727 is below --min-f1 0.8 by 0.073",
        ]
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[s2] false positive: gold 0 said 1"), "{stdout}");

    let output = env.run(&[
        "eval",
        "-m",
        &model,
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--min-recall",
        "1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_bad_set_stops_before_the_model_loads() {
    let env = Env::new();
    let set = env.path("set.csv");
    std::fs::write(&set, "id,text,label\na,fine,1\nb,bad label,SP9\nc,,0\n").unwrap();
    // The model does not exist: the set's errors must come first.
    let output = env.run(&[
        "eval",
        "-m",
        "/no/such/model",
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = set.display().to_string();
    assert!(stderr.contains(&format!("{file}:3: label \"SP9\"")), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:4: the text is empty")),
        "{stderr}"
    );
    assert!(!stderr.contains("no/such/model"), "{stderr}");

    for (flag, value) in [("--min-recall", "1.5"), ("--target-recall", "x")] {
        let output = env.run(&[
            "eval",
            "--policy",
            "spam",
            "--input",
            set.to_str().unwrap(),
            flag,
            value,
        ]);
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains("is not a number from 0 to 1"));
    }
}

/// What Python's own HTML parser finds in a report: the text of every
/// element with an id, the ids of `svg` elements, and any `script` or
/// element loading something (src, href) from elsewhere.
const REPORT_PARSER: &str = r#"
import json, sys
from html.parser import HTMLParser

class Report(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.text, self.svgs, self.loads, self.scripts = [], {}, [], [], 0
    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("meta", "br", "hr", "img", "link", "input"):
            return
        if tag == "svg":
            self.svgs.append(attrs.get("id"))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if key in attrs:
                self.loads.append(attrs[key])
        self.stack.append(attrs.get("id"))
    def handle_endtag(self, tag):
        self.stack.pop()
    def handle_data(self, data):
        for i in self.stack:
            if i:
                self.text[i] = self.text.get(i, "") + data

r = Report()
r.feed(open(sys.argv[1], encoding="utf-8").read())
print(json.dumps({"text": r.text, "svgs": r.svgs, "loads": r.loads, "scripts": r.scripts, "open": r.stack}))
"#;

#[test]
fn the_html_report_holds_the_runs_numbers_curves_and_escaped_text() {
    let env = Env::new();
    let set = env.path("set.jsonl");
    write_set(&set);
    let hostile = "<script>alert('owned')</script> & \"more\"";
    let mut file = std::fs::OpenOptions::new().append(true).open(&set).unwrap();
    writeln!(
        file,
        "{}",
        json!({"id": "<img src=x>", "text": hostile, "label": 0})
    )
    .unwrap();
    drop(file);
    let html = env.path("report.html");
    let report = env.eval_json(&["--report", html.to_str().unwrap()]);

    let output = Command::new(common::python())
        .args(["-c", REPORT_PARSER, html.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed["open"], json!([]), "every element is closed");
    assert_eq!(parsed["scripts"], 0);
    assert_eq!(parsed["loads"], json!([]), "the report loads nothing");
    assert_eq!(parsed["svgs"], json!(["pr-curve", "roc-curve", "reliability"]));
    let c = &report["metrics"]["confusion"];
    for cell in ["tp", "fn", "violating_unread", "fp", "tn", "safe_unread"] {
        assert_eq!(
            parsed["text"][cell].as_str().unwrap(),
            c[cell].to_string(),
            "{cell}"
        );
    }
    // The hostile text and id come back as text, not markup.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("<img"),
        "unescaped markup in the report"
    );
    assert!(page.contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt; &amp; &quot;more&quot;"));
    let mistakes = report["mistakes"].as_array().unwrap().len();
    assert!(page.contains(&format!("<h2>Mistakes ({mistakes})</h2>")));
}

#[test]
fn a_mistakes_reasoning_folds_out_in_the_report() {
    // Results written by hand in classify's format: no model needed.
    let env = Env::new();
    let set = env.path("set.csv");
    std::fs::write(&set, "id,text,label\na,send me your password,1\nb,hello,0\n").unwrap();
    let results = env.path("results.jsonl");
    let lines = [
        json!({"id": "a", "label": 0, "confidence": 0.8, "rationale": "No rule <SP1> applies",
               "reasoning": "The user asks for <b>credentials</b> & more", "finish_reason": "stop",
               "usage": {"prompt_tokens": 10, "cached_tokens": 4, "completion_tokens": 3}, "latency_ms": 12.0}),
        json!({"id": "b", "label": 0, "confidence": 0.9, "finish_reason": "stop"}),
    ];
    std::fs::write(
        &results,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let html = env.path("r.html");
    let output = env.run(&[
        "eval",
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<details><summary>reasoning</summary><pre>The user asks for &lt;b&gt;credentials&lt;/b&gt; &amp; more</pre></details>"),
        "{page}"
    );
    assert!(page.contains("No rule &lt;SP1&gt; applies"));
    // P(violation) of a 0 said with 0.8 is 0.2.
    assert!(
        page.contains("false negative</span>: gold 1, said 0, P(violation) 0.200"),
        "{page}"
    );
}

#[test]
fn a_shipped_policy_is_evaluated_on_its_own_set_by_default() {
    let env = Env::new();
    let model = scripted();
    let output = env.run(&["eval", "-m", &model, "--policy", "spam", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(confusion(&report), [20, 0, 0, 20, 0, 0]);
    assert_eq!(report["manifest"]["dataset"]["name"], "spam.eval.jsonl");
    let shipped = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/spam.eval.jsonl")).unwrap();
    assert_eq!(
        report["manifest"]["dataset"]["sha256"],
        common::sha256_by_python(&shipped)
    );

    // A policy file has no built-in set.
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/spam.md");
    let output = env.run(&["eval", "-m", &model, "--policy", policy]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no labelled set: give --input FILE"));
}

#[test]
fn a_baseline_run_is_compared_example_by_example() {
    // Two hand-written result files for one set, so the flips are known.
    let env = Env::new();
    let set = env.path("set.csv");
    std::fs::write(
        &set,
        "id,text,label\na,one,1\nb,two,1\nc,three,0\nd,four,0\ne,five,1\nf,six,0\n",
    )
    .unwrap();
    let write = |name: &str, answers: [(Option<u8>, &str); 6]| {
        let path = env.path(name);
        let lines: String = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(answers)
            .map(|(id, (label, finish))| {
                format!("{}\n", json!({"id": id, "label": label, "confidence": label.map(|_| 0.9), "finish_reason": finish}))
            })
            .collect();
        std::fs::write(&path, lines).unwrap();
        path
    };
    // Baseline: a missed, c a false alarm, f cut off. Now: a and f right, b missed, c still wrong.
    let base = write(
        "base.jsonl",
        [
            (Some(0), "stop"),
            (Some(1), "stop"),
            (Some(1), "stop"),
            (Some(0), "stop"),
            (Some(1), "stop"),
            (None, "length"),
        ],
    );
    let now = write(
        "now.jsonl",
        [
            (Some(1), "stop"),
            (Some(0), "stop"),
            (Some(1), "stop"),
            (Some(0), "stop"),
            (Some(1), "stop"),
            (Some(0), "stop"),
        ],
    );
    let set_arg = set.to_str().unwrap();
    let output = env.run(&[
        "eval",
        "--policy",
        "spam",
        "--input",
        set_arg,
        "--results",
        base.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let baseline = env.path("baseline.json");
    std::fs::write(&baseline, &output.stdout).unwrap();

    let html = env.path("cmp.html");
    let output = env.run(&[
        "eval",
        "--policy",
        "spam",
        "--input",
        set_arg,
        "--results",
        now.to_str().unwrap(),
        "--baseline",
        baseline.to_str().unwrap(),
        "--json",
        "--report",
        html.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let c = &report["comparison"];
    let ids = |key: &str| {
        c[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("fixed"), ["a", "f"]);
    assert_eq!(ids("broken"), ["b"]);
    assert_eq!(
        c["fixed"][1]["baseline"],
        Value::Null,
        "the cut-off answer had no verdict"
    );
    assert_eq!(
        (
            c["broken"][0]["baseline"].as_u64(),
            c["broken"][0]["current"].as_u64()
        ),
        (Some(1), Some(0))
    );
    // Two fixed against one broken: binomtest(1, 3) gives p = 1.
    assert_eq!(c["mcnemar_p"].as_f64(), Some(1.0));
    let accuracy = c["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["metric"] == "accuracy")
        .unwrap();
    assert_eq!(
        (accuracy["baseline"].as_f64(), accuracy["current"].as_f64()),
        (Some(3.0 / 6.0), Some(4.0 / 6.0))
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("2 fixed, 1 broken; McNemar"), "{page}");

    // Another set cannot be compared: flips are counted per example.
    let other = env.path("other.csv");
    std::fs::write(&other, "id,text,label\na,one,1\n").unwrap();
    let output = env.run(&[
        "eval",
        "--policy",
        "spam",
        "--input",
        other.to_str().unwrap(),
        "--results",
        now.to_str().unwrap(),
        "--baseline",
        baseline.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the baseline ran on another labelled set (set.csv"),
        "{stderr}"
    );
}

#[test]
fn escalations_are_their_own_column_never_a_label() {
    // The scripted model answers "1", which this policy declares as escalate.
    let env = Env::new();
    let rows: String = (0..7)
        .map(|i| {
            format!(
                "{}\n",
                json!({"id": format!("e{i}"), "text": format!("item {i}"), "label": u8::from(i < 4)})
            )
        })
        .collect();
    std::fs::write(env.path("set.jsonl"), rows).unwrap();
    let policy = env.path("escalating.md");
    std::fs::write(
        &policy,
        "---\nescalate: 1\nviolates: VIOLATES\n---\nReasoning: low\n# Escalating\nAnswer VIOLATES, 0, or 1 to escalate.\n",
    )
    .unwrap();
    let model = scripted();
    let set = env.path("set.jsonl");
    let report_file = env.path("report.html");
    let args = [
        "eval",
        "-m",
        &model,
        "--policy",
        policy.to_str().unwrap(),
        "--input",
        set.to_str().unwrap(),
        "--report",
        report_file.to_str().unwrap(),
    ];
    let output = env.run(&[&args[..], &["--json"]].concat());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let m = &report["metrics"];
    assert_eq!(confusion(&report), [0, 0, 0, 0, 0, 0]);
    assert_eq!(m["confusion"]["violating_escalated"], 4);
    assert_eq!(m["confusion"]["safe_escalated"], 3);
    assert_eq!((m["n"].as_u64(), m["escalated"].as_u64()), (Some(7), Some(7)));
    assert_eq!(m["parse_failures"], 0);
    // Not caught, and not cleared: recall and specificity are both 0.
    assert_eq!(m["recall"]["value"].as_f64(), Some(0.0));
    assert_eq!(m["specificity"]["value"].as_f64(), Some(0.0));
    let kinds: Vec<&str> = report["mistakes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["escalated"; 7]);
    let html = std::fs::read_to_string(&report_file).unwrap();
    assert!(html.contains("<td id=\"violating_escalated\">4</td>"), "{html}");

    // The policy's lint comes first: this one has no VIOLATES section.
    let rules: Vec<&str> = report["lint"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"violates") && rules.contains(&"examples"),
        "{rules:?}"
    );
    let lint_at = html.find("<section id=\"lint\">").expect("a lint section");
    assert!(lint_at < html.find("id=\"confusion\"").unwrap());
    assert!(html[lint_at..].contains("no violates section"));

    // The terminal summary gives escalations a column of their own.
    let text = String::from_utf8(env.run(&args).stdout).unwrap();
    let lint_line = text.lines().position(|l| l.starts_with("policy lint: ")).unwrap();
    let metrics_line = text.lines().position(|l| l.starts_with("metric ")).unwrap();
    assert!(lint_line == 2 && lint_line < metrics_line, "{text}");
    assert!(text.contains("error: no violates section"), "{text}");
    let row = text.lines().find(|l| l.starts_with("gold 1 (violates)")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().skip(3).collect();
    assert_eq!(cells, ["0", "0", "0", "4"], "{text}");
}

#[test]
fn category_labels_are_scored_per_rule() {
    // The pii policy answers with "policy_category"; results written by hand.
    let env = Env::new();
    let set = env.path("set.jsonl");
    let rows = [
        json!({"id": "a", "text": "t1", "label": "PI1"}),
        json!({"id": "b", "text": "t2", "label": "PI1"}),
        json!({"id": "c", "text": "t3", "label": "PI2"}),
        json!({"id": "d", "text": "t4", "label": "PI0.c"}),
        json!({"id": "e", "text": "t5", "label": 0}),
        json!({"id": "f", "text": "t6", "label": 1}),
    ];
    std::fs::write(&set, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let results = env.path("results.jsonl");
    let answers = [
        json!({"id": "a", "label": 1, "policy_category": "PI1", "finish_reason": "stop"}),
        json!({"id": "b", "label": 1, "policy_category": "PI2", "finish_reason": "stop"}),
        json!({"id": "c", "label": 1, "policy_category": "pi2", "finish_reason": "stop"}),
        json!({"id": "d", "label": 1, "policy_category": "PI9", "finish_reason": "stop"}),
        json!({"id": "e", "label": 0, "policy_category": null, "finish_reason": "stop"}),
        json!({"id": "f", "label": 1, "policy_category": "PI1", "finish_reason": "stop"}),
    ];
    std::fs::write(
        &results,
        answers.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let output = env.run(&[
        "eval",
        "--policy",
        "pii",
        "--input",
        set.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let c = &report["categories"];
    // f (labelled 1, no rule) is left out; d's "PI9" is no rule of the policy.
    assert_eq!(c["uncategorised"], 1);
    assert_eq!(c["undeclared"], json!(["d"]));
    assert_eq!(c["columns"], json!(["PI1", "PI2", "safe", "other"]));
    assert_eq!(c["matrix"], json!([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]));
    let class = |name: &str| {
        c["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["class"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            class("PI1")["precision"].as_f64(),
            class("PI1")["recall"].as_f64()
        ),
        (Some(1.0), Some(0.5))
    );
    assert_eq!(
        (
            class("PI2")["precision"].as_f64(),
            class("PI2")["recall"].as_f64()
        ),
        (Some(0.5), Some(1.0))
    );
    assert_eq!(
        (
            class("safe")["precision"].as_f64(),
            class("safe")["recall"].as_f64()
        ),
        (Some(1.0), Some(0.5))
    );
    assert_eq!(c["micro_avg"]["recall"].as_f64(), Some(3.0 / 5.0));

    // A policy answering 0/1 names no categories: no category table.
    let plain = env.path("plain.jsonl");
    std::fs::write(
        &plain,
        "{\"id\": \"a\", \"label\": 1, \"finish_reason\": \"stop\"}\n",
    )
    .unwrap();
    let one = env.path("one.jsonl");
    std::fs::write(&one, "{\"id\": \"a\", \"text\": \"t\", \"label\": \"SP1\"}\n").unwrap();
    let output = env.run(&[
        "eval",
        "--policy",
        "spam",
        "--input",
        one.to_str().unwrap(),
        "--results",
        plain.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["categories"], Value::Null);
}

#[test]
fn an_effort_sweep_runs_and_reports_each_effort() {
    let env = Env::new();
    let set = env.path("set.jsonl");
    write_set(&set);
    let model = scripted();
    let html = env.path("sweep.html");
    let output = env.run(&[
        "eval",
        "-m",
        &model,
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--effort",
        "low,high",
        "--json",
        "--report",
        html.to_str().unwrap(),
        "--min-precision",
        "0.6",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim().lines().collect::<Vec<_>>(),
        [
            "gate failed: effort low: precision 0.571 is below --min-precision 0.6 by 0.029",
            "gate failed: effort high: precision 0.571 is below --min-precision 0.6 by 0.029",
        ]
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let runs = report["sweep"].as_array().unwrap();
    let efforts: Vec<&str> = runs
        .iter()
        .map(|r| r["manifest"]["effort"].as_str().unwrap())
        .collect();
    assert_eq!(efforts, ["low", "high"]);
    // Each effort is its own run: its own cache file, every item classified.
    assert_ne!(runs[0]["manifest"]["cache"], runs[1]["manifest"]["cache"]);
    for run in runs {
        assert_eq!(confusion(run), [4, 0, 0, 3, 0, 0]);
        assert_eq!(run["cost"]["classified"], 7);
    }

    let output = Command::new(common::python())
        .args(["-c", REPORT_PARSER, html.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed["open"], json!([]));
    assert_eq!(parsed["svgs"].as_array().unwrap().len(), 6);
    for effort in ["low", "high"] {
        assert_eq!(parsed["text"][format!("effort-{effort}-tp")], "4");
        assert_eq!(parsed["text"][format!("effort-{effort}-fp")], "3");
    }

    // A results file is one run.
    let output = env.run(&[
        "eval",
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--effort",
        "low,high",
        "--results",
        set.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("an --effort sweep runs the model once per effort")
    );
}

/// A policy under which the scripted fixture's answer, "1", means safe.
fn clearing_policy(env: &Env) -> String {
    let path = env.path("clears.md");
    std::fs::write(
        &path,
        "---\nsafe: 1\nviolates: V\n---\nReasoning: low\n\n# Clears\nAnswer V or 1.\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn several_policies_are_scored_together_and_each_alone() {
    let env = Env::new();
    write_set(&env.path("set.jsonl"));
    // Labels the clearing policy reads alone too: it declares no rule ids.
    let text = std::fs::read_to_string(env.path("set.jsonl")).unwrap();
    std::fs::write(
        env.path("set.jsonl"),
        text.replace("\"SP4\"", "1").replace("\"SP0.b\"", "0"),
    )
    .unwrap();
    let clears = clearing_policy(&env);
    let model = scripted();
    let report = env.eval_with(&model, &["spam", &clears], &[]);
    // Spam flags everything and violates any: the whole flags everything too.
    assert_eq!(confusion(&report), [4, 0, 0, 3, 0, 0]);
    assert_eq!(report["manifest"]["policy"]["name"], "spam + clears");
    let each = report["policies"].as_array().unwrap();
    assert_eq!(each.len(), 2);
    assert_eq!(each[0]["manifest"]["policy"]["name"], "spam");
    assert_eq!(confusion(&each[0]), [4, 0, 0, 3, 0, 0]);
    // Under the clearing policy every violating example is missed.
    assert_eq!(each[1]["manifest"]["policy"]["name"], "clears");
    assert_eq!(confusion(&each[1]), [0, 4, 0, 0, 3, 0]);
    assert_eq!(each[1]["metrics"]["recall"]["value"].as_f64(), Some(0.0));
    // Each policy alone scores as a run of that policy alone.
    let alone = env.eval_with(&model, &[&clears], &[]);
    assert_eq!(alone["metrics"], each[1]["metrics"]);
    assert_eq!(
        alone["cost"]["classified"], 0,
        "its results came from the two-policy run's cache"
    );
    assert_eq!(report["cost"]["classified"], 14);
    assert_eq!(report["cost"]["completion_tokens"], 14 * 5);

    // The summary and the report list each policy under the whole.
    let page = env.path("report.html");
    let output = env.eval_output(&model, &["spam", &clears], &["--report", page.to_str().unwrap()]);
    let text = String::from_utf8(output.stdout).unwrap();
    let page = std::fs::read_to_string(page).unwrap();
    let table = page
        .split("<table id=\"policies\">")
        .nth(1)
        .expect("a per-policy table");
    let table = table.split("</table>").next().unwrap();
    assert!(
        table.contains("<td class=\"l\">clears</td><td>0.429</td><td>—</td><td>0.000</td>"),
        "{table}"
    );
    let table = text
        .split("each policy alone\n")
        .nth(1)
        .expect("a per-policy table");
    let rows: Vec<&str> = table.lines().skip(1).take(2).collect();
    assert!(
        rows[0].starts_with("spam ") && rows[1].starts_with("clears "),
        "{text}"
    );
    assert!(
        text.contains("\nclears lint: "),
        "each policy's lint in short: {text}"
    );

    // A classify --output file of the same policies scores to the same numbers.
    let out = env.path("out.jsonl");
    env.classify_to(&model, &["spam", &clears], &out);
    let rescored = env.eval_with(
        "/no/such/model",
        &["spam", &clears],
        &["--results", out.to_str().unwrap()],
    );
    assert_eq!(rescored["metrics"], report["metrics"]);
    for (a, b) in rescored["policies"].as_array().unwrap().iter().zip(each) {
        assert_eq!(a["metrics"], b["metrics"]);
    }
    // One written for spam alone has no verdict of the other policy: named, not guessed.
    let single = env.path("single.jsonl");
    env.classify_to(&model, &["spam"], &single);
    let stderr = env.refused_results(&["spam", &clears], &single);
    assert!(stderr.contains("has no verdict of policy \"spam\""), "{stderr}");
}

#[test]
fn the_cost_splits_reasoning_from_answer_tokens() {
    let env = Env::new();
    write_set(&env.path("set.jsonl"));
    // The scripted fixture writes `<|channel|>final<|message|>1<|return|>`: all answer.
    let answering = expected("scripted");
    let report = env.eval_json(&[]);
    let per_item = answering["completion"].as_array().unwrap().len() as u64;
    let cost = &report["cost"];
    assert_eq!(
        (
            cost["completion_tokens"].as_u64(),
            cost["reasoning_tokens"].as_u64(),
            cost["answer_tokens"].as_u64()
        ),
        (Some(7 * per_item), Some(0), Some(7 * per_item))
    );
    // Its twin writes an analysis message and stops without answering: all reasoning.
    let reasoning = expected("scripted-reasoning");
    let model = common::fixture("scripted-reasoning");
    let report = env.eval_with(model.to_str().unwrap(), &["spam"], &[]);
    let per_item = reasoning["completion"].as_array().unwrap().len() as u64;
    assert!(
        per_item > reasoning["reasoning_tokens"].as_u64().unwrap(),
        "headers count as reasoning too"
    );
    let cost = &report["cost"];
    assert_eq!(
        (
            cost["completion_tokens"].as_u64(),
            cost["reasoning_tokens"].as_u64(),
            cost["answer_tokens"].as_u64()
        ),
        (Some(7 * per_item), Some(7 * per_item), Some(0))
    );
    assert_eq!(report["metrics"]["parse_failures"], 7);
    let text = String::from_utf8(
        env.run(&[
            "eval",
            "-m",
            model.to_str().unwrap(),
            "--policy",
            "spam",
            "--input",
            env.path("set.jsonl").to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        text.contains(&format!("{} reasoning, 0 answer", 7 * per_item)),
        "{text}"
    );
}

fn expected(fixture: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture(fixture).join("expected.json")).unwrap())
        .unwrap()
}

#[test]
fn an_eval_killed_mid_run_resumes_without_redoing_or_losing_anything() {
    // Enough items on a random fixture to take a while, each answer short.
    let env = Env::new();
    let set = env.path("set.jsonl");
    let mut file = std::fs::File::create(&set).unwrap();
    for i in 0..160 {
        writeln!(
            file,
            "{}",
            json!({"id": format!("e{i}"), "text": format!("message number {i}"), "label": i % 2})
        )
        .unwrap();
    }
    let model = common::fixture("a-mxfp4");
    let model = model.to_str().unwrap();
    let flags = ["--max-tokens", "3", "--batch-size", "4"];
    let args: Vec<&str> = [
        "eval",
        "-m",
        model,
        "--policy",
        "spam",
        "--input",
        set.to_str().unwrap(),
        "--json",
    ]
    .into_iter()
    .chain(flags)
    .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .env("HF_HUB_OFFLINE", "1")
        .env("XDG_CACHE_HOME", env.path("cache"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cache_dir = env.path("cache").join("safeguard").join("eval");
    let cached_lines = || -> usize {
        std::fs::read_dir(&cache_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .map(|t| t.lines().count())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while cached_lines() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the eval cached only {} results",
            cached_lines()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the eval ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to tidy up
    child.wait().unwrap();
    let kept = cached_lines();
    assert!(kept < 160, "killed too late to test anything");

    let resumed = env.run(&args);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let resumed: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    // Only what was not cached is classified: a line cut off by the kill is done again.
    let classified = resumed["cost"]["classified"].as_u64().unwrap() as usize;
    assert!(
        (160 - kept..=160 - kept + 1).contains(&classified),
        "{kept} cached before the kill, {classified} classified after"
    );
    assert_eq!(
        resumed["cost"]["from_cache"].as_u64().unwrap() as usize,
        160 - classified
    );
    assert_eq!(cached_lines(), 160, "every result cached exactly once");

    // The same as a run never interrupted.
    let whole = env.eval_with(model, &["spam"], &[&flags[..], &["--no-cache"]].concat());
    assert_eq!(whole["cost"]["classified"], 160);
    assert_eq!(resumed["metrics"], whole["metrics"]);
    assert_eq!(resumed["mistakes"], whole["mistakes"]);
}

#[test]
fn constrain_turns_every_unreadable_answer_into_a_verdict_and_the_report_says_so() {
    let env = Env::new();
    let set = env.path("set.jsonl");
    write_set(&set);
    // A policy that wants JSON: the scripted model's bare "1" is a parse failure.
    let spam =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/spam.md")).unwrap();
    let policy = env.path("spam-json.md");
    std::fs::write(
        &policy,
        format!("---\noutput: json\nfields: violation, rationale\n---\n{spam}"),
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let unread = |report: &Value| {
        let m = &report["metrics"];
        (
            m["parse_failures"].as_u64().unwrap(),
            m["cut_off"].as_u64().unwrap(),
        )
    };
    let plain = env.eval_with(&scripted(), &[policy], &[]);
    assert_eq!(
        (unread(&plain), &plain["manifest"]["constrain"]),
        ((7, 0), &json!(false))
    );
    let text = env.eval_output(&scripted(), &[policy], &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("(7 parse failures, 0 cut off; --constrain holds answers to the policy's output)"),
        "{text}"
    );
    // Same cache folder: a constrained run is a run of its own, not the cached plain one.
    let held = env.eval_with(&scripted(), &[policy], &["--constrain"]);
    assert_eq!(
        (unread(&held), &held["manifest"]["constrain"]),
        ((0, 0), &json!(true))
    );
    assert_eq!(held["cost"]["from_cache"], 0, "{}", held["cost"]);

    // A random model never finishes an answer of its own accord.
    let random = common::fixture("a-mxfp4");
    let random = random.to_str().unwrap();
    let budget = ["--max-tokens", "40"];
    let free = env.eval_with(random, &["spam"], &budget);
    let (parse_failures, cut_off) = unread(&free);
    assert_eq!(parse_failures + cut_off, 7, "{}", free["metrics"]);
    let held = env.eval_with(random, &["spam"], &[&budget[..], &["--constrain"]].concat());
    assert_eq!(unread(&held), (0, 0), "{}", held["metrics"]);
}
