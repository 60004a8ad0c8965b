//! `safeguard serve --parallel tensor|expert` with 2 ranks of the real binary
//! on 127.0.0.1 (ring backend, the environment set here): the official
//! `openai` SDK against rank 0 gets the answers a single-process server
//! gives (tests/distributed_serve_client.py); a rank killed mid-stream ends
//! the stream with an error, turns new requests away with 503 naming it and
//! makes rank 0 exit; a peer that never starts is a clear error; SIGTERM to
//! every rank closes them through rank 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::ranks;
use serde_json::{json, Value};

/// Every server here computes in float32, as the single-process reference does.
const SERVE: [&str; 4] = ["--port", "0", "--dtype", "float32"];

/// Few tokens for every request: the random fixture never stops by itself,
/// a classification included.
const CAP: [&str; 2] = ["--max-tokens-cap", "16"];

fn serve(extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
    command
        .args(["serve", "-m"])
        .arg(common::fixture("a-mxfp4"))
        .args(SERVE)
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("safeguard-distributed-serve-test-empty-hf-home"),
        );
    command
}

/// A process's stderr, echoed with `tag` and kept; the address it announces
/// ("serving on http://…") goes to `address`.
fn watch(stderr: ChildStderr, tag: String, address: mpsc::Sender<String>) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if let Some(rest) = line.split("serving on http://").nth(1) {
                let _ = address.send(rest.trim_end_matches("/v1").to_string());
            }
            eprintln!("[{tag}] {line}");
            let mut log = kept.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// The processes of one server (one, or one per rank); killed when dropped.
struct Server {
    ranks: Vec<Child>,
    logs: Vec<Arc<Mutex<String>>>,
    address: String,
    _hostfile: Option<tempfile::TempDir>,
}

impl Server {
    fn single() -> Server {
        Server::start(vec![serve(&CAP)], None)
    }

    /// `n` ranks of one split model; rank 0 serves.
    fn split(parallel: &str, n: usize, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let hostfile = ranks::hostfile(dir.path(), n);
        let mut args = vec!["--parallel", parallel, "--backend", "ring"];
        args.extend(extra);
        let commands = (0..n)
            .map(|r| ranks::rank_command(serve(&args), &hostfile, r))
            .collect();
        Server::start(commands, Some(dir))
    }

    fn start(commands: Vec<Command>, hostfile: Option<tempfile::TempDir>) -> Server {
        let (found, address) = mpsc::channel();
        let mut ranks = Vec::new();
        let mut logs = Vec::new();
        for (r, mut command) in commands.into_iter().enumerate() {
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            logs.push(watch(
                child.stderr.take().unwrap(),
                format!("rank {r}"),
                found.clone(),
            ));
            ranks.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let address = loop {
            if let Ok(address) = address.recv_timeout(Duration::from_millis(100)) {
                break address;
            }
            for (r, child) in ranks.iter_mut().enumerate() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("rank {r} ended ({status}) before rank 0 served");
                }
            }
            assert!(Instant::now() < deadline, "rank 0 never announced its address");
        };
        Server {
            ranks,
            logs,
            address,
            _hostfile: hostfile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn log(&self, rank: usize) -> String {
        self.logs[rank].lock().unwrap().clone()
    }

    /// Rank `rank`'s exit status, failing the test if it still runs at `within`.
    fn exit(&mut self, rank: usize, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.ranks[rank].try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rank {rank} still runs after {within:?}:\n{}",
                self.log(rank)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.ranks {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (status, body) of a plain HTTP call.
fn http(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", "application/json");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut response = agent.run(request.body(body.into_bytes()).unwrap()).unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (response.status().as_u16(), json)
}

fn sdk_client_agrees(parallel: &str) {
    let split = Server::split(parallel, 2, &CAP);
    let single = Server::single();
    let share = split.log(1);
    assert!(
        share.contains(&format!("rank 1/2 ({parallel} parallel)")) && share.contains("MB of weights"),
        "rank 1 prints its share: {share}"
    );
    common::run_client(
        "distributed_serve_client.py",
        &[&split.url("/v1"), &single.url("/v1")],
    );
    assert!(
        !split.log(1).contains("serving on"),
        "only rank 0 serves HTTP: {}",
        split.log(1)
    );
}

#[test]
fn tensor_parallel_answers_the_openai_sdk_as_one_process() {
    sdk_client_agrees("tensor");
}

#[test]
fn expert_parallel_answers_the_openai_sdk_as_one_process() {
    sdk_client_agrees("expert");
}

/// Reads `stream` on to the first `marker` (bounded by its read timeout).
fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, marker: &str) {
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(marker) {
        let n = stream.read(&mut buffer).unwrap();
        assert!(
            n > 0,
            "the stream closed before {marker}: {}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
}

/// Opens a long streamed completion by hand and reads until its first token.
fn open_stream(server: &Server) -> (TcpStream, Vec<u8>) {
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 100_000, "stream": true}).to_string();
    let mut stream = TcpStream::connect(&server.address).unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "\"text\"");
    (stream, seen)
}

#[test]
fn a_killed_rank_fails_the_stream_and_new_requests_and_rank_0_exits() {
    // No cap here: the stream must still be running when its peer dies.
    let mut server = Server::split("tensor", 2, &[]);
    let (mut stream, mut seen) = open_stream(&server);
    server.ranks[1].kill().unwrap();
    server.ranks[1].wait().unwrap();
    let killed = Instant::now();
    // The stream ends rather than hanging.
    read_until(&mut stream, &mut seen, "data: [DONE]");
    let seen = String::from_utf8_lossy(&seen);
    let events: Vec<&str> = seen.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{seen}");
    let error: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    let message = error["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(message.contains("lost rank 1 of the 2"), "{message}");
    let (status, health) = http("GET", &server.url("/health"), None);
    assert_eq!((status, &health["status"]), (503, &json!("lost")), "{health}");
    assert!(
        health["error"].as_str().unwrap().contains("lost rank 1"),
        "{health}"
    );
    let (status, body) = http(
        "POST",
        &server.url("/v1/completions"),
        Some(&json!({"prompt": "hello", "max_tokens": 2})),
    );
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("lost rank 1") && message.contains("restart every rank"),
        "{message}"
    );
    let status = server.exit(0, Duration::from_secs(30));
    assert!(!status.success(), "rank 0 exits with an error");
    assert!(killed.elapsed() < Duration::from_secs(30));
    assert!(server.log(0).contains("error: lost rank 1"), "{}", server.log(0));
}

#[test]
fn sigterm_closes_every_rank_through_rank_0() {
    let mut server = Server::split("expert", 2, &[]);
    let (status, _) = http(
        "POST",
        &server.url("/v1/completions"),
        Some(&json!({"prompt": "hello", "max_tokens": 3})),
    );
    assert_eq!(status, 200);
    // As a launcher's Ctrl-C does: every rank gets the signal, and rank 1
    // waits for rank 0 to close.
    for rank in [1, 0] {
        ranks::signal(&server.ranks[rank], "TERM");
    }
    for rank in 0..2 {
        let status = server.exit(rank, Duration::from_secs(30));
        assert!(status.success(), "rank {rank}: {status}\n{}", server.log(rank));
    }
}

#[test]
fn a_peer_that_never_starts_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let start = Instant::now();
    let args = ["--parallel", "tensor", "--peer-timeout", "5"];
    let child = ranks::rank_command(serve(&args), &hostfile, 0).spawn().unwrap();
    let output = ranks::wait(child, start + Duration::from_secs(120), "rank 0 without its peer");
    assert_eq!(output.status.code(), Some(2));
    let err = ranks::stderr(&output);
    assert!(
        err.contains("distributed init: any backend: not every rank answered within 5 s")
            && err.contains("mlx.launch"),
        "{err}"
    );
    assert!(!err.contains("serving on"), "{err}");
}
