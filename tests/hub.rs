//! Model download and resolution against a fake hub on 127.0.0.1.
//!
//! The `safeguard` binary runs as a child process with its own environment (never the
//! test process's): `HF_ENDPOINT` points at the fake hub, `HF_HUB_CACHE` at a temporary
//! folder. The cache it writes is checked against huggingface_hub itself (the Python
//! package in `.venv`): its cache scanner and offline lookups must find the files, and
//! its own downloader, run against the same fake hub, must produce the same tree.

mod common;
#[path = "common/fake_hub.rs"]
mod fake_hub;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fake_hub::{FakeHub, Repo, Source};
use serde_json::Value;

const REPO: &str = "test-org/tiny-gpt-oss-MXFP4";
const COMMIT: &str = "5a1f0c3e9b2d4f6a8c0e1b3d5f7a9c1e3b5d7f90";
/// The files a model needs, as the fixture has them (no README, original/, metal/).
const MODEL_FILES: [&str; 9] = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
];
const SHARD: &str = "model-00001-of-00002.safetensors";

/// A fake hub serving the a-mxfp4 fixture as [`REPO`], and an empty cache.
struct Setup {
    hub: FakeHub,
    repo: Repo,
    cache: tempfile::TempDir,
    home: tempfile::TempDir,
}

fn setup() -> Setup {
    let hub = FakeHub::start();
    let repo = hub.add_fixture(REPO, &common::fixture("a-mxfp4"), COMMIT);
    Setup {
        hub,
        repo,
        cache: tempfile::tempdir().unwrap(),
        home: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    /// `safeguard args…` with this setup's endpoint and cache, plus `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("HF_ENDPOINT", &self.hub.url)
            .env("HF_HUB_CACHE", self.cache.path());
        for (k, v) in env {
            command.env(k, v);
        }
        bounded(command, Duration::from_secs(120))
    }

    fn pull(&self, env: &[(&str, &str)]) -> Output {
        self.run(&["pull", REPO], env)
    }

    fn repo_dir(&self) -> PathBuf {
        self.cache.path().join("models--test-org--tiny-gpt-oss-MXFP4")
    }

    fn snapshot(&self) -> PathBuf {
        self.repo_dir().join("snapshots").join(COMMIT)
    }

    fn blob(&self, file: &str) -> PathBuf {
        self.repo_dir().join("blobs").join(self.repo.file(file).etag())
    }

    /// Requests the server saw for `file`'s bytes on the CDN.
    fn cdn_gets(&self, file: &str) -> Vec<fake_hub::Logged> {
        let sha = &self.repo.file(file).sha256;
        self.hub
            .log()
            .into_iter()
            .filter(|l| l.host == "cdn" && l.method == "GET" && l.path.contains(sha.as_str()))
            .collect()
    }
}

/// Runs a command to completion, killing it after `limit`.
fn bounded(mut command: Command, limit: Duration) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).unwrap();
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{command:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
}

fn assert_fails(output: &Output, code: i32, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

/// Runs Python from `.venv` with huggingface_hub, in an environment of its own.
fn python(script: &str, args: &[&str], env: &[(&str, &Path)]) -> Value {
    let mut command = Command::new(common::python());
    command
        .arg("-c")
        .arg(script)
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = bounded(command, Duration::from_secs(120));
    assert_ok(&output);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every entry under `root` (files, folders, symlinks with their targets), sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&path).unwrap().display()
                ));
            } else if meta.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn fixture_bytes(file: &str) -> Vec<u8> {
    std::fs::read(common::fixture("a-mxfp4").join(file)).unwrap()
}

#[test]
fn pull_writes_the_huggingface_hub_cache_layout() {
    let s = setup();
    let output = s.pull(&[]);
    assert_ok(&output);
    assert_eq!(stdout(&output).trim(), s.snapshot().to_str().unwrap());

    // refs/main holds the commit, without a newline.
    assert_eq!(
        std::fs::read_to_string(s.repo_dir().join("refs/main")).unwrap(),
        COMMIT
    );
    // Exactly the model files, each a relative link to its blob: sha256 for LFS files,
    // git sha1 for small ones; contents equal to the source.
    let mut names: Vec<String> = std::fs::read_dir(s.snapshot())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, MODEL_FILES);
    for file in MODEL_FILES {
        let link = std::fs::read_link(s.snapshot().join(file)).unwrap();
        let etag = s.repo.file(file).etag();
        assert_eq!(link, Path::new("../../blobs").join(etag), "{file}");
        assert!(
            std::fs::read(s.snapshot().join(file)).unwrap() == fixture_bytes(file),
            "{file}"
        );
    }
    assert!(s.repo.file(SHARD).lfs() && s.repo.file("tokenizer.json").lfs());
    assert!(!s.repo.file("config.json").lfs());
    let blobs = tree(&s.repo_dir().join("blobs"));
    assert_eq!(blobs.len(), MODEL_FILES.len(), "no partial files left: {blobs:?}");
    // Skipped files were never asked for.
    for log in s.hub.log() {
        for skipped in ["README.md", ".gitattributes", "original", "metal"] {
            assert!(!log.path.contains(skipped), "requested {}", log.path);
        }
    }

    // huggingface_hub finds everything: its scanner sees one clean revision at main
    // with our files and sizes, and offline lookups land in our snapshot.
    let files = serde_json::to_string(&MODEL_FILES).unwrap();
    let report = python(
        r#"
import json, sys
from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache
repo, files = sys.argv[1], json.loads(sys.argv[2])
info = scan_cache_dir()
[r] = [r for r in info.repos if r.repo_id == repo]
print(json.dumps({
    "warnings": [str(w) for w in info.warnings],
    "repo_type": r.repo_type,
    "size_on_disk": r.size_on_disk,
    "revisions": [{"commit": v.commit_hash, "refs": sorted(v.refs),
                   "files": sorted(f.file_name for f in v.files)} for v in r.revisions],
    "resolved": [try_to_load_from_cache(repo, f) for f in files],
    "snapshot": snapshot_download(repo, local_files_only=True),
}))
"#,
        &[REPO, &files],
        &[
            ("HF_HUB_CACHE", s.cache.path()),
            ("HF_HUB_OFFLINE", Path::new("1")),
        ],
    );
    assert_eq!(report["warnings"], serde_json::json!([]));
    assert_eq!(report["repo_type"], "model");
    let total: u64 = MODEL_FILES.iter().map(|f| s.repo.file(f).size).sum();
    assert_eq!(report["size_on_disk"], total);
    assert_eq!(
        report["revisions"],
        serde_json::json!([{"commit": COMMIT, "refs": ["main"], "files": MODEL_FILES}])
    );
    for (file, resolved) in MODEL_FILES.iter().zip(report["resolved"].as_array().unwrap()) {
        assert_eq!(
            resolved.as_str().unwrap(),
            s.snapshot().join(file).to_str().unwrap()
        );
    }
    assert_eq!(
        report["snapshot"].as_str().unwrap(),
        s.snapshot().to_str().unwrap()
    );

    // A second pull fetches nothing.
    s.hub.clear_log();
    let output = s.pull(&[]);
    assert_ok(&output);
    assert!(s.hub.log().iter().all(|l| l.host == "hub"), "{:?}", s.hub.log());
    assert!(stderr(&output).contains("(0 B fetched)"), "{}", stderr(&output));
}

#[test]
fn layout_is_the_one_huggingface_hub_writes() {
    // huggingface_hub downloads the same files from the same fake hub into a second
    // cache; both trees must match entry for entry (links, blobs, refs, locks).
    let s = setup();
    assert_ok(&s.pull(&[]));
    let theirs = tempfile::tempdir().unwrap();
    let files = serde_json::to_string(&MODEL_FILES).unwrap();
    python(
        r#"
import json, sys
from huggingface_hub import hf_hub_download
repo, files = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps([hf_hub_download(repo, f, revision="main") for f in files]))
"#,
        &[REPO, &files],
        &[
            ("HF_HUB_CACHE", theirs.path()),
            ("HF_ENDPOINT", Path::new(&s.hub.url)),
            ("HOME", s.home.path()),
        ],
    );
    assert_eq!(tree(s.cache.path()), tree(theirs.path()));
    let main =
        |cache: &Path| std::fs::read(cache.join("models--test-org--tiny-gpt-oss-MXFP4/refs/main")).unwrap();
    assert_eq!(main(s.cache.path()), main(theirs.path()));
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let s = setup();
    let cut = 3_000_000;
    s.hub.faults().drop_after.insert(SHARD.into(), (cut, 1));
    let output = s.pull(&[]);
    assert_ok(&output);
    let gets = s.cdn_gets(SHARD);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(gets[1].status, 206);
    assert!(std::fs::read(s.blob(SHARD)).unwrap() == fixture_bytes(SHARD));
    assert!(
        stderr(&output).contains("resuming at byte 3000000"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_interrupted_pull_resumes_where_it_stopped() {
    // The first pull is killed mid-file (the server stalls after `cut` bytes); the next
    // one asks only for the rest, and the file ends with the right sha256.
    let s = setup();
    let cut = 5_000_000;
    s.hub.faults().stall_after.insert(SHARD.into(), cut);
    let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
    command
        .args(["pull", REPO])
        .env_clear()
        .env("HOME", s.home.path())
        .env("HF_ENDPOINT", &s.hub.url)
        .env("HF_HUB_CACHE", s.cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let partial = s
        .repo_dir()
        .join("blobs")
        .join(format!("{}.incomplete", s.repo.file(SHARD).sha256));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < cut {
        assert!(
            Instant::now() < deadline,
            "the download never reached {cut} bytes"
        );
        assert!(child.try_wait().unwrap().is_none(), "pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), cut);
    assert!(!s.blob(SHARD).exists());
    assert!(
        !s.repo_dir().join("refs/main").exists(),
        "refs/main marks whole snapshots only"
    );
    // Offline, the half-pulled model is named as such.
    let output = s.run(
        &["generate", "-m", REPO, "--prompt-tokens", "1,2"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_fails(&output, 2, &["incomplete", SHARD, "safeguard pull"]);

    s.hub.faults().stall_after.clear();
    s.hub.clear_log();
    let output = s.pull(&[]);
    assert_ok(&output);
    let gets = s.cdn_gets(SHARD);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert!(!partial.exists());
    let sha = python(
        "import hashlib, json, sys; print(json.dumps(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest()))",
        &[s.blob(SHARD).to_str().unwrap()],
        &[],
    );
    assert_eq!(sha, s.repo.file(SHARD).sha256.as_str());
}

#[test]
fn corrupt_bytes_fail_the_sha256_check() {
    let s = setup();
    // A partial file from an earlier run whose bytes are wrong: resuming it cannot end
    // with the right hash.
    let blobs = s.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!("{}.incomplete", s.repo.file(SHARD).sha256));
    std::fs::write(&partial, vec![0x5a; 1_000_000]).unwrap();
    let output = s.pull(&[]);
    assert_fails(
        &output,
        1,
        &[SHARD, "sha256", "does not match", &s.repo.file(SHARD).sha256],
    );
    assert!(!partial.exists(), "a corrupt partial file is removed");
    assert!(!s.blob(SHARD).exists());
    assert_eq!(s.cdn_gets(SHARD)[0].range.as_deref(), Some("bytes=1000000-"));
    // The next pull starts over and succeeds.
    assert_ok(&s.pull(&[]));
    assert!(std::fs::read(s.blob(SHARD)).unwrap() == fixture_bytes(SHARD));

    // Bytes corrupted in transit are caught the same way.
    let s = setup();
    s.hub.faults().corrupt_at.insert(SHARD.into(), 12_345);
    assert_fails(&s.pull(&[]), 1, &["sha256", "does not match"]);
}

#[test]
fn a_server_ignoring_range_restarts_the_file_cleanly() {
    let s = setup();
    let blobs = s.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!("{}.incomplete", s.repo.file(SHARD).sha256));
    std::fs::write(&partial, &fixture_bytes(SHARD)[..2_000_000]).unwrap();
    s.hub.faults().ignore_range = true;
    assert_ok(&s.pull(&[]));
    let gets = s.cdn_gets(SHARD);
    assert_eq!((gets.len(), gets[0].status), (1, 200), "{gets:?}");
    assert!(std::fs::read(s.blob(SHARD)).unwrap() == fixture_bytes(SHARD));
}

#[test]
fn size_mismatch_is_an_error() {
    let s = setup();
    let real = s.repo.file(SHARD).size;
    s.hub.faults().size.insert(SHARD.into(), real + 10);
    assert_fails(
        &s.pull(&[]),
        1,
        &[
            SHARD,
            &format!("got {real} bytes where the hub announced {}", real + 10),
        ],
    );
}

#[test]
fn missing_disk_space_is_reported_before_downloading() {
    let s = setup();
    s.hub.faults().size.insert(SHARD.into(), 1 << 60);
    assert_fails(&s.pull(&[]), 1, &["disk full", "needs", "free"]);
    assert!(
        s.hub.log().iter().all(|l| l.host == "hub"),
        "nothing was downloaded"
    );
}

#[test]
fn http_errors_are_specific() {
    let s = setup();
    let gated = "test-org/gated-model";
    let files = ["config.json", "tokenizer.json", SHARD]
        .iter()
        .map(|f| (f.to_string(), Source::Disk(common::fixture("a-mxfp4").join(f))))
        .collect();
    s.hub.add_repo(gated, files, COMMIT, Some("hf_secret"));

    // Gated, no token: 401 and what to do.
    let output = s.run(&["pull", gated], &[]);
    assert_fails(
        &output,
        2,
        &["authentication required", "401", "HF_TOKEN", "accept its terms"],
    );
    // A token without access: 403.
    let output = s.run(&["pull", gated], &[("HF_TOKEN", "hf_other")]);
    assert_fails(&output, 2, &["access denied", "403", "gated"]);
    // The right token works, and goes to the hub only, never to the CDN.
    s.hub.clear_log();
    let output = s.run(&["pull", gated], &[("HF_TOKEN", "hf_secret")]);
    assert_ok(&output);
    let log = s.hub.log();
    assert!(log.iter().any(|l| l.host == "cdn"));
    for l in &log {
        let expected = (l.host == "hub").then_some("Bearer hf_secret");
        assert_eq!(l.authorization.as_deref(), expected, "{l:?}");
    }
    // The token file under HF_HOME counts too.
    let hf_home = tempfile::tempdir().unwrap();
    std::fs::write(hf_home.path().join("token"), "hf_secret\n").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let output = s.run(
        &["pull", gated],
        &[
            ("HF_HOME", hf_home.path().to_str().unwrap()),
            ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ],
    );
    assert_ok(&output);

    // No such repo: the hub says 401 without a token (it might be private), 404 with one.
    let output = s.run(&["pull", "test-org/no-such-model"], &[]);
    assert_fails(
        &output,
        2,
        &["no such model repo", "test-org/no-such-model", "HF_TOKEN"],
    );
    let output = s.run(&["pull", "test-org/no-such-model"], &[("HF_TOKEN", "hf_secret")]);
    assert_fails(&output, 2, &["no such model repo", "test-org/no-such-model"]);
    // A listed file that is not there: 404 naming the file.
    s.hub.faults().missing.push("tokenizer.json".into());
    let output = s.pull(&[]);
    assert_fails(&output, 2, &["tokenizer.json not found", "404"]);
}

#[test]
fn no_network_is_a_clear_error() {
    let s = setup();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let output = s.run(&["pull", REPO], &[("HF_ENDPOINT", &endpoint)]);
    assert_fails(&output, 1, &["cannot reach", &endpoint, "HF_HUB_OFFLINE"]);
}

#[test]
fn repos_that_are_not_gpt_oss_are_refused_before_the_weights() {
    let s = setup();
    let config = br#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}"#;
    let files = vec![
        ("config.json".to_string(), Source::Bytes(config.to_vec().into())),
        (
            "model.safetensors".to_string(),
            Source::Disk(common::fixture("a-mxfp4").join(SHARD)),
        ),
        (
            "tokenizer.json".to_string(),
            Source::Disk(common::fixture("a-mxfp4").join("tokenizer.json")),
        ),
    ];
    s.hub.add_repo("test-org/llama", files, COMMIT, None);
    let output = s.run(&["pull", "test-org/llama"], &[]);
    assert_fails(&output, 2, &["not a model safeguard can run", "llama"]);
    assert!(s.cdn_gets(SHARD).is_empty(), "no weights were fetched");
}

#[test]
fn offline_mode_uses_the_cache_and_nothing_else() {
    let s = setup();
    let offline = [("HF_HUB_OFFLINE", "1")];
    // Not cached: a clear error, and no request at all.
    let output = s.run(&["generate", "-m", REPO, "--prompt-tokens", "1,2"], &offline);
    assert_fails(
        &output,
        2,
        &[REPO, "is not in the cache", "HF_HUB_OFFLINE", "safeguard pull"],
    );
    let output = s.pull(&offline);
    assert_fails(&output, 2, &["HF_HUB_OFFLINE is set"]);
    assert!(s.hub.log().is_empty(), "{:?}", s.hub.log());

    // Cached: found without the network.
    assert_ok(&s.pull(&[]));
    s.hub.clear_log();
    let output = s.pull(&offline);
    assert_ok(&output);
    assert_eq!(stdout(&output).trim(), s.snapshot().to_str().unwrap());
    // A partly cached copy is named as such.
    let missing = s.snapshot().join("tokenizer.json");
    std::fs::remove_file(&missing).unwrap();
    let output = s.run(&["generate", "-m", REPO, "--prompt-tokens", "1,2"], &offline);
    assert_fails(&output, 2, &["incomplete", "tokenizer.json"]);
    assert!(s.hub.log().is_empty(), "{:?}", s.hub.log());
    // Online, the next pull repairs it from the blob without downloading.
    assert_ok(&s.pull(&[]));
    assert!(missing.is_file());
    assert!(s.hub.log().iter().all(|l| l.host == "hub"));
}

#[test]
fn generate_pulls_on_first_use_then_runs_offline() {
    let s = setup();
    // The mlx-lm reference's first two greedy tokens for its "short" prompt.
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("a-mxfp4").join("reference/reference.json")).unwrap(),
    )
    .unwrap();
    let run = reference["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "short.float32")
        .unwrap();
    let prompt: Vec<String> = reference["prompts"][run["prompt"].as_str().unwrap()]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let prompt = prompt.join(",");
    let expected = &run["tokens"].as_array().unwrap()[..2];
    let args = [
        "generate",
        "-m",
        REPO,
        "--prompt-tokens",
        &prompt,
        "--max-tokens",
        "2",
        "--dtype",
        "float32",
        "--json",
    ];
    // First use: not cached, so generate pulls it.
    let output = s.run(&args, &[]);
    assert_ok(&output);
    assert!(stderr(&output).contains("pulling"), "{}", stderr(&output));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["tokens"].as_array().unwrap(), expected);
    // Offline afterwards, with the hub gone.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = s.run(
        &args,
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &format!("http://{dead}")),
        ],
    );
    assert_ok(&output);
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["tokens"].as_array().unwrap(), expected);
    // The brief's form: two ids, two tokens.
    let output = s.run(
        &[
            "generate",
            "-m",
            REPO,
            "--prompt-tokens",
            "1,2",
            "--max-tokens",
            "2",
            "--json",
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_ok(&output);
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["tokens"].as_array().unwrap().len(), 2);
}

#[test]
fn aliases_pull_their_catalog_repo() {
    let s = setup();
    let repo = "lmstudio-community/gpt-oss-safeguard-20b-MLX-MXFP4";
    s.hub.add_fixture(repo, &common::fixture("a-mxfp4"), COMMIT);
    let output = s.run(&["pull", "safeguard-20b"], &[]);
    assert_ok(&output);
    let snapshot = s
        .cache
        .path()
        .join("models--lmstudio-community--gpt-oss-safeguard-20b-MLX-MXFP4/snapshots")
        .join(COMMIT);
    assert_eq!(stdout(&output).trim(), snapshot.to_str().unwrap());
    let output = s.run(&["pull", "safeguard-70b"], &[]);
    assert_fails(
        &output,
        2,
        &["unknown model `safeguard-70b`", "safeguard-20b", "safeguard-120b"],
    );
}

#[test]
fn ls_lists_pulled_and_catalog_models() {
    let s = setup();
    // Before any pull: the catalog, all absent.
    let output = s.run(&["ls", "--json"], &[]);
    assert_ok(&output);
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listing["cache_dir"], s.cache.path().to_str().unwrap());
    let models = listing["models"].as_array().unwrap();
    assert!(models.iter().all(|m| m["status"] == "absent"), "{models:?}");
    let default = models.iter().find(|m| m["default"] == true).unwrap();
    assert_eq!(default["name"], "safeguard-20b");
    assert_eq!(
        default["repo"],
        "lmstudio-community/gpt-oss-safeguard-20b-MLX-MXFP4"
    );

    assert_ok(&s.pull(&[]));
    let output = s.run(&["ls", "--json"], &[]);
    assert_ok(&output);
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    let models = listing["models"].as_array().unwrap();
    let pulled = models.iter().find(|m| m["repo"] == REPO).unwrap();
    let total: u64 = MODEL_FILES.iter().map(|f| s.repo.file(f).size).sum();
    assert_eq!(pulled["status"], "ready");
    assert_eq!(pulled["name"], REPO);
    assert_eq!(pulled["path"], s.snapshot().to_str().unwrap());
    assert_eq!(pulled["commit"], COMMIT);
    assert_eq!(pulled["quantization"], "MXFP4");
    assert_eq!(pulled["size_bytes"], total);
    assert_eq!(
        models.iter().filter(|m| m["status"] == "absent").count(),
        models.len() - 1
    );

    // The table says the same.
    let output = s.run(&["ls"], &[]);
    assert_ok(&output);
    let table = stdout(&output);
    let row = table.lines().find(|l| l.starts_with(REPO)).unwrap();
    for cell in ["ready", "MXFP4", s.snapshot().to_str().unwrap()] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("safeguard-20b *") && l.contains("absent")),
        "{table}"
    );

    // An interrupted pull shows as partial.
    std::fs::remove_file(s.snapshot().join(SHARD)).unwrap();
    let output = s.run(&["ls", "--json"], &[]);
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    let pulled = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["repo"] == REPO)
        .unwrap()
        .clone();
    assert_eq!(pulled["status"], "partial");
    assert_eq!(pulled["missing"], serde_json::json!([SHARD]));
}

#[test]
fn concurrent_pulls_share_the_work_safely() {
    let s = setup();
    let spawn = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
        command
            .args(["pull", REPO])
            .env_clear()
            .env("HOME", s.home.path())
            .env("HF_ENDPOINT", &s.hub.url)
            .env("HF_HUB_CACHE", s.cache.path());
        std::thread::spawn(move || bounded(command, Duration::from_secs(120)))
    };
    let (a, b) = (spawn(), spawn());
    assert_ok(&a.join().unwrap());
    assert_ok(&b.join().unwrap());
    for file in MODEL_FILES {
        assert!(
            std::fs::read(s.snapshot().join(file)).unwrap() == fixture_bytes(file),
            "{file}"
        );
    }
    // Each blob was fetched whole once: the lock made the second pull wait and reuse it.
    assert_eq!(s.cdn_gets(SHARD).len(), 1, "{:?}", s.cdn_gets(SHARD));
}

#[test]
fn classify_pulls_the_default_model_on_first_use_then_runs_offline() {
    let s = setup();
    s.hub.add_fixture(
        "lmstudio-community/gpt-oss-safeguard-20b-MLX-MXFP4",
        &common::fixture("a-mxfp4"),
        COMMIT,
    );
    // The README's main job, without -m: the default alias, pulled when first needed.
    let args = [
        "classify",
        "--policy",
        "spam",
        "Win a free phone!",
        "--max-tokens",
        "2",
        "--json",
    ];
    let output = s.run(&args, &[]);
    assert_ok(&output);
    assert!(stderr(&output).contains("pulling"), "{}", stderr(&output));
    let first: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(first["id"], "1");

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = s.run(
        &args,
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", &format!("http://{dead}")),
        ],
    );
    assert_ok(&output);
    let again: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        again["raw"], first["raw"],
        "the same model, the same greedy output"
    );
    let listing = stdout(&s.run(&["ls"], &[("HF_HUB_OFFLINE", "1")]));
    assert!(listing.contains("safeguard-20b"), "{listing}");
}
