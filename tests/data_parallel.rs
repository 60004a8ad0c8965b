//! `classify` and `eval` with `--parallel data`, 2–3 ranks of the real
//! binary on 127.0.0.1 (ring backend, the environment set here): results
//! equal one process's item for item and in order, with one policy or
//! several; a rank killed mid-run ends the others with an error naming it,
//! never a hang; a rerun with another rank count finishes the output with
//! every item exactly once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::ranks::{self, stderr, stdout};
use serde_json::{json, Value};

fn model() -> PathBuf {
    common::fixture("a-mxfp4")
}

fn safeguard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
    command.env("HF_HUB_OFFLINE", "1");
    command
}

/// `count` items of different lengths (so items finish out of order).
fn items(dir: &Path, count: usize) -> PathBuf {
    let path = dir.join("items.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for i in 0..count {
        let text = format!("message {i}: {}", "buy cheap watches now ".repeat(i % 5));
        writeln!(file, "{}", json!({"id": format!("item-{i}"), "text": text})).unwrap();
    }
    path
}

/// `classify` of `input` against `policies`, writing `output`.
fn classify_by(policies: &[&str], input: &Path, output: &Path, max_tokens: &str, extra: &[&str]) -> Command {
    let mut command = safeguard();
    command.arg("classify");
    for policy in policies {
        command.args(["--policy", policy]);
    }
    command
        .args(["--dtype", "float32", "-m"])
        .arg(model())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--max-tokens", max_tokens])
        .args(extra);
    command
}

fn classify(input: &Path, output: &Path, max_tokens: &str, extra: &[&str]) -> Command {
    let mut command = classify_by(&["spam"], input, output, max_tokens, extra);
    command.arg("--json");
    command
}

/// Result lines without their timing, which differs between runs, and the
/// count of prompt tokens served from the policy prefix cache: each rank
/// fills its own cache with its first item. With several policies, the
/// same goes for each policy's line inside the combined one.
fn lines(text: &str) -> Vec<Value> {
    fn strip(v: &mut Value) {
        v.as_object_mut().unwrap().remove("latency_ms");
        v["usage"].as_object_mut().unwrap().remove("cached_tokens");
    }
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            strip(&mut v);
            if let Some(each) = v.get_mut("policies").and_then(Value::as_array_mut) {
                each.iter_mut().for_each(strip);
            }
            v
        })
        .collect()
}

/// One process's results, the reference for the ranks.
fn alone(input: &Path, dir: &Path, max_tokens: &str) -> Vec<Value> {
    let output = classify(input, &dir.join("alone.jsonl"), max_tokens, &[])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    lines(&stdout(&output))
}

fn data_ranks(n: usize, hostfile: &Path, command: impl Fn() -> Command) -> Vec<Command> {
    (0..n)
        .map(|r| {
            let mut c = command();
            c.args(["--parallel", "data", "--backend", "ring"]);
            ranks::rank_command(c, hostfile, r)
        })
        .collect()
}

#[test]
fn two_and_three_ranks_classify_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let input = items(dir.path(), 11);
    let reference = alone(&input, dir.path(), "24");
    assert_eq!(reference.len(), 11);
    for n in [2, 3] {
        let out = dir.path().join(format!("ranks{n}.jsonl"));
        let hostfile = ranks::hostfile(dir.path(), n);
        let commands = data_ranks(n, &hostfile, || {
            classify(&input, &out, "24", &["--batch-size", "2"])
        });
        let outputs = ranks::run_all(commands, Duration::from_secs(240));
        for (r, output) in outputs.iter().enumerate() {
            assert!(
                output.status.success(),
                "rank {r} of {n} failed:\n{}",
                stderr(output)
            );
            assert!(
                stderr(output).contains(&format!("[rank {r}/{n} (data parallel): the whole model")),
                "{}",
                stderr(output)
            );
            if r > 0 {
                assert_eq!(stdout(output), "", "only rank 0 prints");
            }
        }
        assert_eq!(lines(&stdout(&outputs[0])), reference, "{n} ranks, printed");
        let written = lines(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(written, reference, "{n} ranks, --output in input order");
    }
}

#[test]
fn two_policies_under_ranks_classify_as_one_process_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let policies = ["spam", "pii"];
    let input = items(dir.path(), 8);
    // --constrain: every judgement gets a verdict and its probability (the
    // random fixture writes none in time), so the combination has work to do.
    let classify_by = |input: &Path, output: &Path, extra: &[&str]| {
        let mut command = classify_by(&policies, input, output, "16", extra);
        command.arg("--constrain");
        command
    };
    // One process, in words on stdout, its records in --output.
    let reference_file = dir.path().join("alone.jsonl");
    let output = classify_by(&input, &reference_file, &[]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let words = stdout(&output);
    assert!(words.contains("(2 policies)"), "{words}");
    assert!(
        words.contains("VIOLATES (1)") && words.contains("SAFE (0)"),
        "{words}"
    );
    let reference_text = std::fs::read_to_string(&reference_file).unwrap();
    let reference = lines(&reference_text);
    assert_eq!(reference.len(), 8);
    for record in &reference {
        let names: Vec<&Value> = record["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["name"])
            .collect();
        assert_eq!(names, [&json!("spam"), &json!("pii")], "{record}");
    }

    // Two ranks: the same words and the same records, in input order.
    let out = dir.path().join("ranks2.jsonl");
    let hostfile = ranks::hostfile(dir.path(), 2);
    let commands = data_ranks(2, &hostfile, || classify_by(&input, &out, &["--batch-size", "2"]));
    let outputs = ranks::run_all(commands, Duration::from_secs(240));
    for (r, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "rank {r}: {}", stderr(output));
    }
    assert_eq!(stdout(&outputs[1]), "", "only rank 0 prints");
    assert_eq!(stdout(&outputs[0]), words, "2 ranks, printed");
    let written = lines(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(written, reference, "2 ranks, --output");

    // Three ranks finish an output that has items 1, 4 and 5 done already.
    let out = dir.path().join("resumed.jsonl");
    let done = [1, 4, 5];
    let kept: String = reference_text
        .lines()
        .enumerate()
        .filter(|(i, _)| done.contains(i))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&out, kept).unwrap();
    let hostfile = ranks::hostfile(dir.path(), 3);
    let commands = data_ranks(3, &hostfile, || {
        classify_by(&input, &out, &["--batch-size", "1", "--json"])
    });
    let outputs = ranks::run_all(commands, Duration::from_secs(240));
    for (r, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "rank {r}: {}", stderr(output));
    }
    assert!(
        stderr(&outputs[0]).contains("3 items already done, 5 to go"),
        "{}",
        stderr(&outputs[0])
    );
    let left: Vec<Value> = (0..8)
        .filter(|i| !done.contains(i))
        .map(|i| reference[i].clone())
        .collect();
    assert_eq!(
        lines(&stdout(&outputs[0])),
        left,
        "3 ranks print what was left, in order"
    );
    let mut written = lines(&std::fs::read_to_string(&out).unwrap());
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    written.sort_by_key(id);
    let mut reference = reference;
    reference.sort_by_key(id);
    assert_eq!(
        written, reference,
        "every item exactly once, as one process wrote it"
    );
}

#[test]
fn a_killed_rank_is_named_and_a_rerun_with_other_ranks_finishes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let count = 150;
    let input = items(dir.path(), count);
    let out = dir.path().join("results.jsonl");
    let hostfile = ranks::hostfile(dir.path(), 3);
    let mut children: Vec<std::process::Child> = data_ranks(3, &hostfile, || {
        classify(&input, &out, "3", &["--batch-size", "1"])
    })
    .into_iter()
    .map(|mut c| c.spawn().unwrap())
    .collect();
    // Rank 1 is killed once some rounds are written, well before the end.
    let mut rank1_err = BufReader::new(children[1].stderr.take().unwrap()).lines();
    assert!(
        rank1_err.any(|l| l.unwrap().contains("rank 1/3")),
        "rank 1 never loaded"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let written = std::fs::read_to_string(&out).map_or(0, |t| t.lines().count());
        if written >= 12 {
            break;
        }
        assert!(Instant::now() < deadline, "only {written} results were written");
        for child in &mut children {
            assert!(
                child.try_wait().unwrap().is_none(),
                "a rank ended before the kill"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = children.remove(1);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (rank, child) in [0, 2].into_iter().zip(children) {
        let output = ranks::wait(child, deadline, &format!("rank {rank} after rank 1 was killed"));
        assert_eq!(output.status.code(), Some(1), "rank {rank}: {}", stderr(&output));
        let err = stderr(&output);
        assert!(
            err.contains("lost rank 1"),
            "rank {rank} should name rank 1: {err}"
        );
        assert!(err.contains("rerun the same command"), "{err}");
    }
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(before < count, "the kill came after the end");

    // Two ranks now, then the same results as one process, each item once.
    let hostfile = ranks::hostfile(dir.path(), 2);
    let commands = data_ranks(2, &hostfile, || {
        classify(&input, &out, "3", &["--batch-size", "4"])
    });
    let outputs = ranks::run_all(commands, Duration::from_secs(400));
    for output in &outputs {
        assert!(output.status.success(), "{}", stderr(output));
    }
    assert!(
        stderr(&outputs[0]).contains(&format!("{before} items already done, {} to go", count - before)),
        "{}",
        stderr(&outputs[0])
    );
    let mut written = lines(&std::fs::read_to_string(&out).unwrap());
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    written.sort_by_key(id);
    let mut reference = alone(&input, dir.path(), "3");
    reference.sort_by_key(id);
    assert_eq!(written.len(), count, "every item exactly once");
    assert_eq!(written, reference);
}

#[test]
fn eval_under_ranks_scores_as_one_process_and_shares_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let eval = |extra: &[&str]| {
        let mut command = safeguard();
        command
            .args(["eval", "--policy", "spam", "--json", "--max-tokens", "12", "-m"])
            .arg(model())
            .args(extra);
        command
    };
    let single = eval(&["--no-cache"]).output().unwrap();
    assert!(single.status.success(), "{}", stderr(&single));
    let single: Value = serde_json::from_str(&stdout(&single)).unwrap();

    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let all = single["cost"]["classified"].as_u64().unwrap();
    assert!(all > 0);
    for (n, classified) in [(2, all), (3, 0)] {
        let hostfile = ranks::hostfile(dir.path(), n);
        let commands = data_ranks(n, &hostfile, || eval(&["--cache-dir", cache]));
        let outputs = ranks::run_all(commands, Duration::from_secs(240));
        for (r, output) in outputs.iter().enumerate() {
            assert!(output.status.success(), "rank {r}: {}", stderr(output));
            if r > 0 {
                assert_eq!(stdout(output), "", "only rank 0 reports");
            }
        }
        let run: Value = serde_json::from_str(&stdout(&outputs[0])).unwrap();
        assert_eq!(run["metrics"], single["metrics"], "{n} ranks");
        assert_eq!(run["mistakes"], single["mistakes"], "{n} ranks");
        assert_eq!(
            run["cost"]["classified"], classified,
            "{n} ranks: {}",
            run["cost"]
        );
    }
}

#[test]
fn eval_of_two_policies_and_two_efforts_under_ranks_scores_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    // The first three examples of each shipped set, labelled with its rule ids.
    let set = dir.path().join("set.jsonl");
    let shipped = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("policies/{name}.eval.jsonl"));
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().take(3).map(|l| format!("{l}\n")).collect::<String>()
    };
    std::fs::write(&set, shipped("spam") + &shipped("pii")).unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let mut command = safeguard();
        command
            .args([
                "eval", "--policy", "spam", "--policy", "pii", "--effort", "low,high",
            ])
            // --constrain: a verdict and its probability for every judgement
            // (the random fixture writes none in time), so the scores differ
            // by item and policy.
            .args(["--json", "--constrain", "--max-tokens", "12", "-m"])
            .arg(model())
            .arg("--input")
            .arg(&set)
            .args(extra);
        command
    };
    let run_alone = |extra: &[&str]| -> Vec<Value> {
        let output = eval(extra).output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
        report["sweep"].as_array().expect("one run per effort").clone()
    };
    // What a run's scores are: the combined verdict's, and each policy's alone.
    let scores = |run: &Value| {
        let each: Vec<Value> = run["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| json!([p["manifest"]["policy"]["name"], p["metrics"], p["mistakes"]]))
            .collect();
        json!([run["manifest"]["effort"], run["metrics"], run["mistakes"], each])
    };
    let single = run_alone(&["--no-cache"]);
    assert_eq!(single.len(), 2);

    let hostfile = ranks::hostfile(dir.path(), 2);
    let commands = data_ranks(2, &hostfile, || eval(&["--cache-dir", cache]));
    let outputs = ranks::run_all(commands, Duration::from_secs(240));
    for (r, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "rank {r}: {}", stderr(output));
    }
    assert_eq!(stdout(&outputs[1]), "", "only rank 0 reports");
    let report: Value = serde_json::from_str(&stdout(&outputs[0])).unwrap();
    let ranked = report["sweep"].as_array().expect("one run per effort");
    assert_eq!(ranked.len(), 2);
    for (run, alone) in ranked.iter().zip(&single) {
        assert_eq!(scores(run), scores(alone), "2 ranks");
        assert_eq!(
            run["cost"]["classified"], 12,
            "6 texts under 2 policies: {}",
            run["cost"]
        );
    }
    // Rank 0 kept each policy's results at each effort: one process finds them all.
    for (run, alone) in run_alone(&["--cache-dir", cache]).iter().zip(&single) {
        assert_eq!(scores(run), scores(alone), "from the ranks' cache");
        assert_eq!(run["cost"]["classified"], 0, "{}", run["cost"]);
    }
}

#[test]
fn ranks_that_read_different_items_refuse_together() {
    let dir = tempfile::tempdir().unwrap();
    let a = items(dir.path(), 5);
    let b = dir.path().join("other.jsonl");
    std::fs::copy(&a, &b).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&b)
        .unwrap()
        .write_all(b"{\"id\": \"extra\", \"text\": \"one more\"}\n")
        .unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let out = dir.path().join("out.jsonl");
    let commands = [a, b]
        .iter()
        .enumerate()
        .map(|(r, input)| {
            let c = classify(input, &out, "2", &["--parallel", "data", "--backend", "ring"]);
            ranks::rank_command(c, &hostfile, r)
        })
        .collect();
    for output in ranks::run_all(commands, Duration::from_secs(120)) {
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output)
                .contains("the items differ between ranks (1 rank(s) read other items than rank 0's 5)"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn a_split_model_is_refused_for_classify() {
    let dir = tempfile::tempdir().unwrap();
    let input = items(dir.path(), 2);
    let output = classify(
        &input,
        &dir.path().join("o.jsonl"),
        "2",
        &["--parallel", "tensor"],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output)
            .contains("classify and eval share their items among whole models instead: use --parallel data"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_paused_rank_ends_the_run_at_the_step_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let input = items(dir.path(), 150);
    let out = dir.path().join("results.jsonl");
    let hostfile = ranks::hostfile(dir.path(), 2);
    let mut children: Vec<std::process::Child> = data_ranks(2, &hostfile, || {
        // Long enough for the first item's policy prefill on a loaded debug build.
        classify(&input, &out, "3", &["--batch-size", "1", "--step-timeout", "30"])
    })
    .into_iter()
    .map(|mut c| c.spawn().unwrap())
    .collect();
    // Paused once results flow.
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 4 {
        assert!(Instant::now() < deadline, "no results were written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let paused = children.remove(1);
    ranks::assert_pause_ends_rank_0(children.remove(0), paused, 30, Duration::from_secs(90));
}
