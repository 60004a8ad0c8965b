//! `safeguard serve` on fixture models, on 127.0.0.1 only: the official
//! `openai` Python SDK (tests/server_client.py), plain HTTP for the LM Studio
//! and classification endpoints and every error case, greedy output checked
//! against mlx-lm's references, a client leaving mid-stream, 32 concurrent
//! requests, the queue limit, auth, CORS and shutdown.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use safeguard_mlx::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// A server process; killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(fixture: &str, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_safeguard"))
            .args(["serve", "-m"])
            .arg(common::fixture(fixture))
            .args(["--port", "0"])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env(
                "HF_HOME",
                std::env::temp_dir().join("safeguard-server-test-empty-hf-home"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if let Some(rest) = line.split("serving on http://").nth(1) {
                    if let Some(f) = found.take() {
                        let _ = f.send(rest.trim_end_matches("/v1").to_string());
                    }
                }
                eprintln!("[server] {line}");
            }
        });
        let address = address
            .recv_timeout(Duration::from_secs(120))
            .expect("the server announces its address");
        Server { child, address }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn get(&self, path: &str) -> Reply {
        http("GET", &self.url(path), &[], None)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        http("POST", &self.url(path), &[], Some(&body.to_string()))
    }

    /// Waits (bounded) until no request holds a slot and nothing decodes.
    fn wait_idle(&self, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let health = self.get("/health").json();
            if health["requests"] == 0 && health["decoding"] == 0 {
                return health;
            }
            assert!(start.elapsed() < within, "still busy after {within:?}: {health}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An OpenAI-shaped error with this status; its message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let body = self.json();
        let error = &body["error"];
        for field in ["message", "type", "param", "code"] {
            assert!(error.get(field).is_some(), "error without {field}: {body}");
        }
        error["message"].as_str().unwrap().to_string()
    }
}

fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // Every OpenAI client says its body is JSON; the server insists on it.
    if body.is_some()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("Content-Type", "application/json");
    }
    let mut response = agent
        .run(request.body(body.unwrap_or("").as_bytes().to_vec()).unwrap())
        .unwrap();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Reply {
        status: response.status().as_u16(),
        headers,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

/// The `data:` payloads of an event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn expected_scripted() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture("scripted").join("expected.json")).unwrap())
        .unwrap()
}

/// Runs an SDK script (`tests/NAME`) against a server on `fixture`; it
/// prints "ok" last when every check passed.
fn sdk_script(script: &str, fixture: &str) {
    let server = Server::start(fixture, &[]);
    let expected = common::fixture(fixture).join("expected.json");
    common::run_client(script, &[&server.url("/v1"), expected.to_str().unwrap()]);
}

#[test]
fn the_openai_python_sdk_drives_chat_responses_and_models() {
    sdk_script("server_client.py", "scripted");
}

#[test]
fn the_openai_python_sdk_calls_tools_and_sends_their_results_back() {
    sdk_script("tools_client.py", "scripted-tool-call");
}

/// The same greedy request streamed and not gives the same answer, added up
/// by the SDK's own stream accumulator: an answer, reasoning and a tool call
/// from the scripted fixtures, logprobs and stop strings from a random model.
#[test]
fn streamed_answers_add_up_to_the_answers_sent_whole() {
    for fixture in ["scripted", "scripted-reasoning", "scripted-tool-call", "a-mxfp4"] {
        sdk_script("accumulate_client.py", fixture);
    }
}

#[test]
fn the_openai_python_sdk_gets_structured_output_that_validates() {
    sdk_script("format_client.py", "scripted");
}

#[test]
fn the_openai_python_sdk_forces_valid_tool_calls_from_a_random_model() {
    sdk_script("required_client.py", "a-mxfp4");
}

#[test]
fn constrained_classification_gives_a_random_model_verdicts() {
    // The random model never answers of its own accord; held to the spam
    // policy's 0/1 and written in time, every item gets a verdict, through
    // the API and the CLI alike.
    let server = Server::start("a-mxfp4", &[]);
    let request = json!({"policy": "spam", "input": ["Buy now!", "hello"], "max_tokens": 40});
    let free = server.post("/v1/classify", &request).json();
    assert!(
        free["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["label"].is_null()),
        "{free}"
    );
    let mut request = request;
    request["constrain"] = json!(true);
    let held = server.post("/v1/classify", &request).json();
    for result in held["results"].as_array().unwrap() {
        assert!(result["answer"] == "0" || result["answer"] == "1", "{result}");
        assert!(!result["label"].is_null(), "{result}");
    }
    let cli = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args([
            "classify",
            "--json",
            "--constrain",
            "--max-tokens",
            "40",
            "--policy",
            "spam",
            "-m",
        ])
        .arg(common::fixture("a-mxfp4"))
        .arg("Buy now!")
        .output()
        .unwrap();
    let line: Value = serde_json::from_slice(&cli.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&cli.stderr)));
    assert!(!line["label"].is_null(), "{line}");
}

#[test]
fn greedy_completions_match_mlx_lm_references() {
    // The raw prompt's tokens, greedily continued: what mlx-lm generated for
    // the same ids in float32 (tests/fixtures/references.py).
    let dir = common::fixture("a-mxfp4");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/reference.json")).unwrap())
            .unwrap();
    let tokenizer = Tokenizer::load(&dir).unwrap();
    let server = Server::start("a-mxfp4", &["--dtype", "float32"]);
    let mut compared = 0;
    for run in reference["runs"].as_array().unwrap() {
        if run["dtype"] != "float32"
            || run["prefill_step_size"] != 2048
            || run["yarn_correction_range"] != "unrounded"
        {
            continue;
        }
        let prompt: Vec<u32> =
            serde_json::from_value(reference["prompts"][run["prompt"].as_str().unwrap()].clone()).unwrap();
        let expected: Vec<u32> = serde_json::from_value(run["tokens"].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(run["margins"].clone()).unwrap();
        let tie = reference["near_tie_threshold"].as_f64().unwrap();
        let reply = server.post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": expected.len(), "logprobs": 2, "temperature": 0}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json();
        let tokens: Vec<String> =
            serde_json::from_value(body["choices"][0]["logprobs"]["tokens"].clone()).unwrap();
        let want: Vec<String> = expected
            .iter()
            // Ids past the tokenizer's (reserved, never trained) have no text.
            .map(|&id| String::from_utf8_lossy(&tokenizer.token_bytes(id).unwrap_or_default()).into_owned())
            .collect();
        // Equal up to a near-tie, where float32 rounding may pick either.
        let same = tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
        assert!(
            same == want.len() || margins[same] < tie,
            "{}: token {same} differs: {:?} vs {:?}",
            run["id"],
            tokens.get(same),
            want[same]
        );
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["prompt_tokens"], prompt.len());
        assert_eq!(body["usage"]["completion_tokens"], expected.len());
        // Each chosen token's logprob is the best of the alternatives listed.
        let lp = &body["choices"][0]["logprobs"];
        for (i, top) in lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .take(same)
        {
            let best = top
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            assert!((lp["token_logprobs"][i].as_f64().unwrap() - best).abs() < 1e-6);
        }
        compared += 1;
    }
    assert!(compared > 0, "the a-mxfp4 references have float32 runs");
}

#[test]
fn lm_studio_endpoints_use_its_enum_values_and_add_stats() {
    let server = Server::start("scripted", &[]);
    let models = server.get("/api/v0/models").json();
    let entry = &models["data"][0];
    assert_eq!(entry["id"], "scripted");
    assert_eq!(entry["type"], "llm");
    assert_eq!(entry["state"], "loaded");
    assert_eq!(entry["compatibility_type"], "mlx");
    assert_eq!(entry["arch"], "gpt_oss");
    assert_eq!(entry["quantization"], "BF16");
    assert_eq!(entry["max_context_length"], 131072);
    assert_eq!(entry["capabilities"], json!(["tool_use"]));
    assert_eq!(server.get("/api/v0/models/scripted").json()["state"], "loaded");
    server.get("/api/v0/models/other/model").error(404);

    let reply = server.post(
        "/api/v0/chat/completions",
        &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
    );
    let body = reply.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        expected_scripted()["answer"]
    );
    assert_eq!(body["stats"]["stop_reason"], "eosFound");
    assert!(body["stats"]["tokens_per_second"].as_f64().unwrap() >= 0.0);
    assert!(body["stats"]["time_to_first_token"].as_f64().unwrap() > 0.0);
    assert_eq!(body["model_info"]["format"], "mlx");
    assert_eq!(body["model_info"]["arch"], "gpt_oss");
    let cut = server.post(
        "/api/v0/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    );
    assert_eq!(cut.json()["stats"]["stop_reason"], "maxPredictedTokensReached");
}

/// A chat's system message is the developer's instructions as the user
/// wrote them, not a policy: a blank one is no developer message (as
/// openai-harmony renders a chat without instructions) rather than "the
/// policy is empty", and text a policy file would treat as front matter
/// stays text. Prompt lengths are compared with openai-harmony's render.
#[test]
fn a_chat_system_message_is_instructions_not_a_policy() {
    let server = Server::start("scripted", &[]);
    let system = safeguard_mlx::harmony::SystemContent::default();
    let front_matter = "---\nname: notes\n---\nBe brief.";
    // (system message, the instructions harmony renders, the effort it sets)
    let cases = [
        ("", None, "medium"),
        ("  \n\t ", None, "medium"),
        ("Be brief.", Some("Be brief."), "medium"),
        ("Reasoning: high\n\nBe brief.", Some("Be brief."), "high"),
        (front_matter, Some(front_matter), "medium"),
    ];
    let conversations: Vec<Value> = cases
        .iter()
        .map(|(_, instructions, effort)| {
            json!({
                "system": {"identity": system.identity, "knowledge_cutoff": system.knowledge_cutoff, "effort": effort},
                "instructions": instructions,
                "messages": [{"role": "user", "content": "hi"}],
            })
        })
        .collect();
    let expected = common::harmony(json!({"render": conversations}));
    for ((message, _, _), reference) in cases.iter().zip(expected["render"].as_array().unwrap()) {
        let reply = server.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "system", "content": message}, {"role": "user", "content": "hi"}], "max_tokens": 2}),
        );
        assert_eq!(reply.status, 200, "system message {message:?}: {}", reply.body);
        assert_eq!(
            reply.json()["usage"]["prompt_tokens"],
            reference.as_array().unwrap().len(),
            "system message {message:?}"
        );
    }
}

#[test]
fn classify_and_moderations_give_the_cli_verdicts() {
    let server = Server::start("scripted", &[]);
    let expected = expected_scripted();
    let body = server
        .post(
            "/v1/classify",
            &json!({"policy": "spam", "input": ["Buy now!", {"id": "b", "content": "hello"}], "effort": "low"}),
        )
        .json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["id"], "b");
    for result in results {
        assert_eq!(result["label"], expected["label"]);
        let confidence = result["confidence"].as_f64().unwrap();
        assert!(
            (confidence - expected["confidence"].as_f64().unwrap()).abs() < 1e-5,
            "{result}"
        );
    }
    // Same as `safeguard classify --json` on the same item.
    let cli = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["classify", "--json", "--policy", "spam", "--effort", "low", "-m"])
        .arg(common::fixture("scripted"))
        .arg("Buy now!")
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    for field in [
        "label",
        "answer",
        "raw",
        "reasoning",
        "confidence",
        "finish_reason",
    ] {
        assert_eq!(cli[field], results[0][field], "{field}");
    }
    // The policy prefix is cached across requests.
    let again = server
        .post("/v1/classify", &json!({"policy": "spam", "input": "other"}))
        .json();
    let usage = &again["results"][0]["usage"];
    assert!(usage["cached_tokens"].as_u64().unwrap() > 100, "{usage}");

    let moderation = server
        .post(
            "/v1/moderations",
            &json!({"model": "omni-moderation-latest", "input": "Buy now!", "policy": "spam"}),
        )
        .json();
    let result = &moderation["results"][0];
    assert_eq!(result["flagged"], true);
    assert_eq!(result["categories"]["spam"], true);
    let score = result["category_scores"]["spam"].as_f64().unwrap();
    assert!((score - expected["confidence"].as_f64().unwrap()).abs() < 1e-5);

    // Policies are names or text, never paths.
    let message = server
        .post("/v1/classify", &json!({"policy": "spamm", "input": "x"}))
        .error(400);
    assert!(
        message.contains("spamm") && message.contains("spam,"),
        "{message}"
    );
    server
        .post("/v1/classify", &json!({"policy": "/etc/hostname", "input": "x"}))
        .error(400);
    let custom = server
        .post(
            "/v1/classify",
            &json!({"policy": "# Mine\nAnswer 1 for spam, else 0.", "input": "x"}),
        )
        .json();
    assert_eq!(custom["policy"], "custom");
    server.post("/v1/moderations", &json!({"input": "x"})).error(400);
}

#[test]
fn bad_requests_get_openai_errors() {
    let server = Server::start("scripted", &["--context-length", "80", "--max-body-mib", "1"]);
    let chat = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        server.post("/v1/chat/completions", &body)
    };
    let broken = http(
        "POST",
        &server.url("/v1/chat/completions"),
        &[],
        Some("{not json"),
    );
    assert!(broken.error(400).contains("invalid request body"));
    let message = server
        .post("/v1/chat/completions", &json!({"messages": "hi"}))
        .error(400);
    assert!(message.contains("messages"), "{message}");
    assert!(chat(json!({"max_tokens": "ten"}))
        .error(400)
        .contains("max_tokens"));
    assert!(chat(json!({"model": "gpt-4o"})).error(404).contains("gpt-4o"));
    assert!(chat(json!({"tools": [{"type": "function"}]}))
        .error(400)
        .contains("needs a function object"));
    let tool = json!([{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}}}}]);
    let message = chat(json!({"tools": tool, "tool_choice": "required"})).error(400);
    assert!(message.contains("uniqueItems"), "{message}");
    let message =
        chat(json!({"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "1"}]})).error(400);
    assert!(message.contains("call_9"), "{message}");
    assert!(chat(json!({"n": 2})).error(400).contains("n = 1"));
    assert!(chat(json!({"reasoning_effort": "extreme"}))
        .error(400)
        .contains("extreme"));
    // The SDK's other efforts run at harmony's nearest, which is reported.
    assert_eq!(
        chat(json!({"reasoning_effort": "xhigh", "max_tokens": 8})).status,
        200
    );
    let response = server
        .post(
            "/v1/responses",
            &json!({"input": "hi", "reasoning": {"effort": "minimal"}, "max_output_tokens": 8}),
        )
        .json();
    assert_eq!(response["reasoning"]["effort"], "low");
    let long = "word ".repeat(200);
    let message = server
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long}]}),
        )
        .error(400);
    assert!(
        message.contains("80 tokens") && message.contains("prompt is"),
        "{message}"
    );
    let message = chat(json!({"max_tokens": 79})).error(400);
    assert!(message.contains("at most"), "{message}");
    // The body is sent from another thread: the server may answer (and
    // close) before reading it all.
    let mut over = TcpStream::connect(&server.address).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = over.try_clone().unwrap();
    let size = 2 << 20;
    std::thread::spawn(move || {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {size}\r\n\r\n"
        );
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&vec![b' '; size]);
    });
    let mut head = [0u8; 12];
    over.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // A client that asks before sending is told at once, not invited to send.
    let reply = raw(
        &server,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("--max-body-mib"), "{reply}");
    server.get("/v1/nothing").error(404);
    assert!(server
        .post("/v1/completions", &json!({"prompt": [999999999]}))
        .error(400)
        .contains("vocabulary"));
    // The server is still fine.
    assert_eq!(chat(json!({})).status, 200);
}

/// Sends `request` (head and body, `Connection: close`) as it is; the whole
/// answer, once the server closes the connection.
fn raw(server: &Server, request: &str) -> String {
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `body` to `path` by hand, on a connection the test can drop.
fn send_raw(server: &Server, path: &str, body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut stream = TcpStream::connect(&server.address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    stream
}

/// Opens a streamed chat by hand and reads until its first event arrives.
fn open_stream(server: &Server, max_tokens: usize) -> TcpStream {
    let body = json!({
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens, "stream": true,
    });
    let mut stream = send_raw(server, "/v1/chat/completions", &body);
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(
            n > 0,
            "the stream closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    stream
}

fn wait_decoding(server: &Server, count: usize) {
    let start = Instant::now();
    while server.get("/health").json()["decoding"] != count {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never {count} decoding"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_leaving_frees_its_slot_and_the_queue_is_bounded() {
    // One decoding slot, no queue: a second request is turned away.
    let server = Server::start("a-mxfp4", &["--max-batch", "1", "--queue", "0"]);
    let stream = open_stream(&server, 100_000);
    let busy = server.post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2}));
    busy.error(503);
    assert_eq!(busy.header("retry-after"), Some("1"));
    wait_decoding(&server, 1);
    // Leaving stops its generation (100,000 tokens would take many minutes),
    // though the random model's chat has written no text to send.
    drop(stream);
    server.wait_idle(Duration::from_secs(10));
    // The same without streaming: nothing is written until the end.
    let waiting = send_raw(
        &server,
        "/v1/completions",
        &json!({"prompt": "hello", "max_tokens": 100_000}),
    );
    wait_decoding(&server, 1);
    drop(waiting);
    server.wait_idle(Duration::from_secs(10));
    assert_eq!(
        server
            .post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2}))
            .status,
        200
    );
}

#[test]
fn thirty_two_concurrent_requests_are_answered_as_if_alone() {
    let server = Server::start("a-mxfp4", &["--max-batch", "8", "--queue", "32"]);
    // Half ask for log-probabilities, which the engine reads for the whole
    // batch in one evaluation.
    let request = |i: usize| {
        let mut body =
            json!({"prompt": format!("Item number {i} says"), "max_tokens": 6 + i % 5, "temperature": 0});
        if i.is_multiple_of(2) {
            body["logprobs"] = json!(1 + i % 4);
        }
        body
    };
    // Each alone first, then all at once: batching changes nothing.
    let alone: Vec<Value> = (0..32)
        .map(|i| server.post("/v1/completions", &request(i)).json()["choices"][0].clone())
        .collect();
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let server = &server;
                scope.spawn(move || server.post("/v1/completions", &request(i)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().json()["choices"][0].clone())
            .collect()
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a["text"], b["text"], "request {i}");
        assert_eq!(a["finish_reason"], b["finish_reason"], "request {i}");
        assert_eq!(a["logprobs"], b["logprobs"], "request {i}");
        assert_eq!(a["logprobs"].is_null(), !i.is_multiple_of(2), "request {i}");
    }
    server.wait_idle(Duration::from_secs(10));
}

#[test]
fn api_key_and_cors() {
    let server = Server::start("scripted", &["--api-key", "sekret", "--cors"]);
    let url = server.url("/v1/models");
    let missing = http("GET", &url, &[], None);
    assert!(missing.error(401).contains("Bearer"));
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = http("GET", &url, &[("Authorization", "Bearer wrong")], None);
    wrong.error(401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    // A key that only starts right is as wrong as any other.
    http("GET", &url, &[("Authorization", "Bearer sekre")], None).error(401);
    http("GET", &url, &[("Authorization", "Bearer sekrets")], None).error(401);
    http("GET", &url, &[("Authorization", "Basic sekret")], None).error(401);
    // RFC 7235: the scheme's case does not matter.
    assert_eq!(
        http("GET", &url, &[("Authorization", "bearer sekret")], None).status,
        200
    );
    let ok = http(
        "GET",
        &url,
        &[("Authorization", "Bearer sekret"), ("Origin", "http://app.local")],
        None,
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some("*"));
    assert_eq!(http("GET", &server.url("/health"), &[], None).status, 200);
    let preflight = http(
        "OPTIONS",
        &server.url("/v1/chat/completions"),
        &[
            ("Origin", "http://app.local"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization,content-type"),
        ],
        None,
    );
    assert_eq!(preflight.status, 200, "{}", preflight.body);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(preflight
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    // With a key, any host name will do: a rebound page has no key.
    let named = raw(
        &server,
        "GET /v1/models HTTP/1.1\r\nHost: my-box.lan:1234\r\nAuthorization: Bearer sekret\r\nConnection: close\r\n\r\n",
    );
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");

    // --cors with a list: those origins and no others.
    let listed = Server::start("scripted", &["--cors", "http://app.local,https://tool.example"]);
    let reply = http(
        "GET",
        &listed.url("/v1/models"),
        &[("Origin", "http://app.local")],
        None,
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://app.local")
    );
    let message = http(
        "GET",
        &listed.url("/v1/models"),
        &[("Origin", "http://other.example")],
        None,
    )
    .error(403);
    assert!(message.contains("--cors http://other.example"), "{message}");
}

#[test]
fn web_pages_cannot_drive_a_server_without_a_key() {
    let server = Server::start("scripted", &[]);
    let body = json!({"prompt": "hello", "max_tokens": 1}).to_string();
    let post = |headers: &[(&str, &str)]| http("POST", &server.url("/v1/completions"), headers, Some(&body));
    // A page's "simple" request (text/plain, no preflight) is refused...
    let message = post(&[("Content-Type", "text/plain;charset=UTF-8")]).error(415);
    assert!(
        message.contains("application/json") && message.contains("text/plain"),
        "{message}"
    );
    let form = post(&[("Content-Type", "application/x-www-form-urlencoded")]);
    form.error(415);
    let bare = raw(
        &server,
        &format!(
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        bare.starts_with("HTTP/1.1 415") && bare.contains("no Content-Type"),
        "{bare}"
    );
    // ...and so is any request from another origin, JSON or not.
    let message = post(&[("Origin", "http://evil.example")]).error(403);
    assert!(message.contains("--cors http://evil.example"), "{message}");
    let message = http(
        "GET",
        &server.url("/v1/models"),
        &[("Origin", "http://evil.example")],
        None,
    )
    .error(403);
    assert!(message.contains("evil.example"), "{message}");
    let preflight = http(
        "OPTIONS",
        &server.url("/v1/completions"),
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    );
    preflight.error(403);
    assert_eq!(preflight.header("access-control-allow-origin"), None);
    // DNS rebinding: the page's own name in Host.
    let rebound = raw(
        &server,
        "GET /v1/models HTTP/1.1\r\nHost: attacker.example:1234\r\nConnection: close\r\n\r\n",
    );
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(
        rebound.contains("attacker.example") && rebound.contains("--api-key"),
        "{rebound}"
    );
    // The server's own pages, local names and JSON clients are served.
    let own = format!("http://{}", server.address);
    assert_eq!(post(&[("Origin", own.as_str())]).status, 200);
    for host in ["localhost:1234", "127.0.0.1", "[::1]:80"] {
        let reply = raw(
            &server,
            &format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert!(reply.starts_with("HTTP/1.1 200"), "{host}: {reply}");
    }
    assert_eq!(
        post(&[("Content-Type", "application/json; charset=utf-8")]).status,
        200
    );
}

#[test]
fn sigterm_lets_a_stream_in_flight_finish() {
    let mut server = Server::start("a-mxfp4", &[]);
    let mut stream = open_stream(&server, 40);
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let finish: Vec<Value> = sse_data(&rest)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["choices"][0]["finish_reason"].is_string())
        .collect();
    assert_eq!(finish.len(), 1);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn streamed_requests_are_checked_before_the_stream_starts() {
    let server = Server::start("scripted", &["--context-length", "80"]);
    let long = "word ".repeat(200);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0, "stream": true}),
            "at least 1",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long}], "stream": true}),
            "80 tokens",
        ),
        (
            "/api/v0/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 79, "stream": true}),
            "at most",
        ),
        (
            "/v1/completions",
            json!({"prompt": [999999999], "stream": true}),
            "vocabulary",
        ),
        ("/v1/completions", json!({"prompt": "", "stream": true}), "empty"),
        // Too long to fit whatever its tokens: refused before tokenizing.
        (
            "/v1/completions",
            json!({"prompt": "word ".repeat(100_000), "stream": true}),
            "500000 bytes",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "word ".repeat(100_000)}], "stream": true}),
            "bytes",
        ),
        ("/v1/completions", json!({"prompt": [], "stream": true}), "empty"),
        (
            "/v1/responses",
            json!({"input": long, "stream": true}),
            "80 tokens",
        ),
        (
            "/v1/responses",
            json!({"input": "hi", "max_output_tokens": 0, "stream": true}),
            "at least 1",
        ),
    ];
    for (path, body, says) in cases {
        let reply = server.post(path, &body);
        // A 400 with the error as JSON, as without `stream`: no 200 and event stream.
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{path} {body}"
        );
        let message = reply.error(400);
        assert!(message.contains(says), "{path} {body}: {message}");
    }
    server.wait_idle(Duration::from_secs(10));
    // A good streamed request still streams.
    let reply = server.post(
        "/v1/completions",
        &json!({"prompt": "hello", "max_tokens": 2, "stream": true}),
    );
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("data: [DONE]"), "{}", reply.body);
}

#[test]
fn moderations_never_report_safe_without_a_verdict() {
    let server = Server::start("scripted", &[]);
    let moderate = |extra: Value| {
        let mut body = json!({"input": ["Buy now!", "hello"], "policy": "spam"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        server.post("/v1/moderations", &body)
    };
    // Cut off before the answer: an error naming the item and the way out,
    // never `flagged: false`.
    let cut = moderate(json!({"max_tokens": 1}));
    assert!(!cut.body.contains("flagged"), "{}", cut.body);
    let message = cut.error(422);
    assert!(
        message.contains("input[0]")
            && message.contains("cut off after 1 tokens")
            && message.contains("max_tokens"),
        "{message}"
    );
    assert_eq!(cut.json()["error"]["code"], "no_verdict");
    assert!(moderate(json!({"max_tokens": "many"}))
        .error(400)
        .contains("max_tokens"));
    // With room to answer, the same request is judged.
    let judged = moderate(json!({"max_tokens": 4096})).json();
    for result in judged["results"].as_array().unwrap() {
        assert_eq!(result["flagged"], true, "{result}");
    }
}

#[test]
fn max_tokens_cap_bounds_every_request() {
    let server = Server::start("a-mxfp4", &["--max-tokens-cap", "3"]);
    for body in [
        json!({"prompt": "hello", "max_tokens": 50}),
        json!({"prompt": "hello"}),
    ] {
        let reply = server.post("/v1/completions", &body).json();
        assert_eq!(reply["usage"]["completion_tokens"], 3, "{body}: {reply}");
        assert_eq!(reply["choices"][0]["finish_reason"], "length", "{body}: {reply}");
    }
    // Under the cap, a request gets what it asks for.
    let reply = server
        .post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2}))
        .json();
    assert_eq!(reply["usage"]["completion_tokens"], 2, "{reply}");
}

#[test]
fn slow_clients_are_timed_out_and_connections_capped() {
    let server = Server::start("scripted", &["--max-connections", "1", "--read-timeout", "1"]);
    // A holds the only place with headers it never finishes...
    let mut held = TcpStream::connect(&server.address).unwrap();
    held.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // ...so B is answered only once the header timeout has closed A.
    let reply = raw(
        &server,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    match held.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "A is still open: {e}"
        ),
    }
    // A body shorter than its Content-Length gets 408, not a wait forever.
    let reply = raw(
        &server,
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\nConnection: close\r\n\r\n{\"prompt\":",
    );
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("--read-timeout"), "{reply}");
    assert_eq!(server.get("/health").status, 200);
}

/// Waits (bounded) for the server to exit.
fn exit_status(server: &mut Server, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn streams_cut_at_the_shutdown_deadline_end_with_an_error_and_done() {
    let mut server = Server::start("a-mxfp4", &["--shutdown-timeout", "1"]);
    let mut stream = open_stream(&server, 100_000);
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    let events = sse_data(&rest);
    let error = events
        .iter()
        .position(|e| e.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event: {rest}"));
    assert!(events[error].contains("--shutdown-timeout"), "{}", events[error]);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{rest}");
    assert_eq!(
        error + 2,
        events.len(),
        "the error is the last event before [DONE]"
    );
    let status = exit_status(&mut server, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{status}");
}

#[test]
fn a_second_signal_ends_the_server_at_once() {
    // A grace far longer than the test waits: only the second signal can end it.
    let mut server = Server::start("a-mxfp4", &["--shutdown-timeout", "3600"]);
    let mut stream = open_stream(&server, 100_000);
    unsafe { libc::kill(server.child.id() as i32, libc::SIGINT) };
    // The first signal has been taken once new connections are refused.
    let start = Instant::now();
    while TcpStream::connect(&server.address).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(server.child.id() as i32, libc::SIGINT) };
    let status = exit_status(&mut server, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{status}");
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    assert!(
        !rest.contains("[DONE]"),
        "the stream was not meant to finish: {rest}"
    );
}

/// Events as the test saw them, in order, from several threads.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    fn note(&self, what: &str) {
        self.0.lock().unwrap().push(what.to_string());
    }

    fn count(&self, what: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| *e == what).count()
    }

    fn position(&self, what: &str) -> usize {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .position(|e| e == what)
            .unwrap_or_else(|| panic!("no {what} in {events:?}"))
    }

    /// How many `what` came between `from` and `to`.
    fn between(&self, what: &str, from: &str, to: &str) -> usize {
        let (from, to) = (self.position(from), self.position(to));
        self.0.lock().unwrap()[from..to]
            .iter()
            .filter(|e| *e == what)
            .count()
    }
}

/// Waits (bounded) until `/health` shows `field` at least `count`.
fn wait_health(server: &Server, field: &str, count: u64) {
    let start = Instant::now();
    loop {
        let health = server.get("/health").json();
        if health[field].as_u64().unwrap() >= count {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never {count} {field}: {health}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Token ids of the text range, `n` of them.
fn token_ids(n: usize, seed: usize) -> Vec<usize> {
    (0..n)
        .map(|i| 1000 + (i * 7919 + seed * 104_729) % 100_000)
        .collect()
}

#[test]
fn long_prompts_arriving_mid_stream_neither_pause_streams_nor_hold_up_short_requests() {
    let server = Server::start("a-mxfp4", &["--max-batch", "4", "--prefill-step", "8"]);
    let log = Log::default();
    // A greedy stream whose every token is an event (log-probabilities asked).
    let stream_body = |max_tokens: usize, stream: bool| json!({"prompt": "Once upon a time", "max_tokens": max_tokens, "stream": stream, "logprobs": 0, "temperature": 0});
    let stream = send_raw(&server, "/v1/completions", &stream_body(100_000, true));
    let closer = stream.try_clone().unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut tokens = Vec::new();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(data) = line.strip_prefix("data: {") {
                    let event: Value = serde_json::from_str(&format!("{{{data}")).unwrap();
                    let logprobs = &event["choices"][0]["logprobs"];
                    tokens.extend(logprobs["tokens"].as_array().unwrap().iter().cloned());
                    tokens.extend(logprobs["token_logprobs"].as_array().unwrap().iter().cloned());
                    log.note("stream token");
                }
            }
            tokens
        })
    };
    while log.count("stream token") < 3 {
        std::thread::sleep(Duration::from_millis(2));
    }
    // 3,000 prompt tokens: 375 chunks of 8.
    let long_body = json!({"prompt": token_ids(3000, 1), "max_tokens": 3, "temperature": 0, "logprobs": 2});
    let short_body = json!({"prompt": "Hi there", "max_tokens": 3, "temperature": 0, "logprobs": 2});
    let long = std::thread::scope(|scope| {
        log.note("long sent");
        let long = scope.spawn(|| {
            let reply = server.post("/v1/completions", &long_body).json();
            log.note("long done");
            reply
        });
        wait_health(&server, "prefilling", 1);
        log.note("short sent");
        let short = server.post("/v1/completions", &short_body).json();
        log.note("short done");
        let long = long.join().unwrap();
        (long, short)
    });
    closer.shutdown(std::net::Shutdown::Both).unwrap();
    let streamed = reader.join().unwrap();
    // The stream kept going while the long prompt went in, a token per chunk.
    let during = log.between("stream token", "long sent", "long done");
    assert!(
        during >= 50,
        "the stream gave {during} tokens during the long admission"
    );
    // The short request did not wait for the long prompt.
    assert!(log.position("short done") < log.position("long done"));
    // Each answer is the one it gets alone.
    server.wait_idle(Duration::from_secs(10));
    let (long, short) = long;
    assert_eq!(
        server.post("/v1/completions", &long_body).json()["choices"],
        long["choices"]
    );
    assert_eq!(
        server.post("/v1/completions", &short_body).json()["choices"],
        short["choices"]
    );
    let n = streamed.len() / 2;
    let alone = server.post("/v1/completions", &stream_body(n, false)).json();
    let alone = &alone["choices"][0]["logprobs"];
    // The stream's events carry a token each; the answer alone has them all.
    let mut expected = Vec::new();
    let (tokens, logprobs) = (
        alone["tokens"].as_array().unwrap(),
        alone["token_logprobs"].as_array().unwrap(),
    );
    for (t, l) in tokens.iter().zip(logprobs) {
        expected.extend([t.clone(), l.clone()]);
    }
    assert_eq!(streamed, expected);
}

#[test]
fn a_prompt_whose_client_left_stops_prefilling() {
    let server = Server::start("a-mxfp4", &["--prefill-step", "16"]);
    // 100,000 prompt tokens in chunks of 16: minutes of prefill if it went on.
    let client = send_raw(
        &server,
        "/v1/completions",
        &json!({"prompt": token_ids(100_000, 2), "max_tokens": 1}),
    );
    wait_health(&server, "prefilling", 1);
    drop(client);
    server.wait_idle(Duration::from_secs(10));
    assert_eq!(server.get("/health").json()["prefilling"], 0);
    let reply = server.post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2}));
    assert_eq!(reply.status, 200);
}

#[test]
fn a_classify_call_shares_slots_and_counts_its_items() {
    let server = Server::start("a-mxfp4", &["--max-batch", "2", "--queue", "30"]);
    // Items count against the places (2 decoding + 30 queued).
    let items = |n: usize| (0..n).map(|i| format!("item {i}")).collect::<Vec<_>>();
    let message = server
        .post("/v1/classify", &json!({"policy": "spam", "input": items(33)}))
        .error(400);
    assert!(
        message.contains("33 items") && message.contains("--queue"),
        "{message}"
    );
    let log = Log::default();
    std::thread::scope(|scope| {
        let classify = scope.spawn(|| {
            // The random model never answers: each item runs to max_tokens.
            let reply = server.post(
                "/v1/classify",
                &json!({"policy": "spam", "input": items(32), "max_tokens": 40, "effort": "low"}),
            );
            log.note("classify done");
            reply
        });
        wait_health(&server, "waiting", 20);
        // Every place is taken now.
        server
            .post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2}))
            .error(503);
        assert_eq!(classify.join().unwrap().status, 200);
    });
    std::thread::scope(|scope| {
        let classify = scope.spawn(|| {
            let reply = server.post(
                "/v1/classify",
                &json!({"policy": "spam", "input": items(20), "max_tokens": 40, "effort": "low"}),
            );
            log.note("classify done");
            reply
        });
        wait_health(&server, "waiting", 10);
        let chat = server.post("/v1/completions", &json!({"prompt": "hello", "max_tokens": 2}));
        let waiting = server.get("/health").json()["waiting"].as_u64().unwrap();
        log.note("chat done");
        assert_eq!(chat.status, 200);
        // The chat took the next free slot, ahead of the call's other items.
        assert!(
            waiting >= 5,
            "{waiting} items still waiting when the chat was answered"
        );
        assert_eq!(classify.join().unwrap().status, 200);
    });
    assert!(
        log.position("chat done")
            < log
                .0
                .lock()
                .unwrap()
                .iter()
                .rposition(|e| e == "classify done")
                .unwrap()
    );
}

/// A result line without what differs from run to run: times, and how
/// much of the prompt a cache happened to hold.
fn without_timing(mut value: Value) -> Value {
    if let Value::Object(fields) = &mut value {
        fields.remove("latency_ms");
        if let Some(Value::Object(usage)) = fields.get_mut("usage") {
            usage.remove("cached_tokens");
        }
        for (_, field) in fields.iter_mut() {
            if let Value::Array(entries) = field {
                for entry in entries.iter_mut() {
                    *entry = without_timing(entry.take());
                }
            }
        }
    }
    value
}

#[test]
fn classify_with_several_policies_gives_the_cli_results() {
    let server = Server::start("scripted", &[]);
    let body = server
        .post(
            "/v1/classify",
            &json!({"policies": ["spam", "pii"], "input": ["Buy now!", {"id": "b", "content": "hello"}], "effort": "low"}),
        )
        .json();
    assert_eq!(body["policies"], json!(["spam", "pii"]));
    let results = body["results"].as_array().unwrap();
    let mut items = std::env::temp_dir().join(format!("safeguard-server-policies-{}", std::process::id()));
    items.set_extension("jsonl");
    std::fs::write(
        &items,
        "{\"id\": \"1\", \"text\": \"Buy now!\"}\n{\"id\": \"b\", \"text\": \"hello\"}\n",
    )
    .unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args([
            "classify", "--json", "--policy", "spam", "--policy", "pii", "--effort", "low", "--input",
        ])
        .arg(&items)
        .arg("-m")
        .arg(common::fixture("scripted"))
        .output()
        .unwrap();
    std::fs::remove_file(&items).unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli: Vec<Value> = String::from_utf8(cli.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), cli.len());
    for (served, printed) in results.iter().zip(cli) {
        assert_eq!(without_timing(served.clone()), without_timing(printed));
        assert_eq!(served["policies"].as_array().unwrap().len(), 2);
    }

    // A policy sent as text is named by its place in the list.
    let clears = "---\nsafe: 1\nviolates: V\n---\n# Clears everything\nAnswer V or 1.";
    let body = server
        .post(
            "/v1/classify",
            &json!({"policies": ["spam", clears], "input": "x"}),
        )
        .json();
    let result = &body["results"][0];
    assert_eq!(result["policies"][1]["name"], "policies[1]");
    assert_eq!(result["policies"][1]["outcome"], "safe");
    assert_eq!(result["outcome"], "violates", "spam flags it, so the whole does");

    // Bad lists are named.
    for (request, param, says) in [
        (
            json!({"policy": "spam", "policies": ["pii"], "input": "x"}),
            "policies",
            "not both",
        ),
        (json!({"policies": [], "input": "x"}), "policies", "at least one"),
        (
            json!({"policies": ["spam", "spamm"], "input": "x"}),
            "policies[1]",
            "spamm",
        ),
        (
            json!({"policies": ["spam", "spam"], "input": "x"}),
            "policies[1]",
            "already in the list",
        ),
    ] {
        let reply = server.post("/v1/classify", &request);
        let message = reply.error(400);
        assert_eq!(reply.json()["error"]["param"], param, "{request}");
        assert!(message.contains(says), "{request}: {message}");
    }
}

#[test]
fn previous_response_id_continues_a_conversation_as_if_sent_whole() {
    let server = Server::start("a-mxfp4", &[]);
    // Caches no prefix: it computes a whole conversation from scratch.
    let fresh = Server::start("a-mxfp4", &["--prefix-cache-mib", "0"]);
    common::run_client(
        "responses_client.py",
        &["chain", &server.url("/v1"), &fresh.url("/v1")],
    );
}

#[test]
fn previous_response_id_carries_reasoning_and_tool_calls_to_the_tool_result() {
    let server = Server::start("scripted-tool-call", &[]);
    common::run_client("responses_client.py", &["tools", &server.url("/v1")]);
}

#[test]
fn stored_responses_are_evicted_deleted_or_never_kept_and_then_404() {
    let server = Server::start("a-mxfp4", &["--responses-store", "2"]);
    common::run_client("responses_client.py", &["store", &server.url("/v1")]);
}

/// Runs tests/libraries_client.py in `mode` against a server on `fixture`.
fn libraries_script(mode: &str, fixture: &str) {
    let server = Server::start(fixture, &[]);
    let expected = common::fixture(fixture).join("expected.json");
    common::run_client(
        "libraries_client.py",
        &[mode, &server.url("/v1"), expected.to_str().unwrap()],
    );
}

#[test]
fn langchain_and_the_agents_sdk_call_tools_and_send_results_back() {
    libraries_script("tools", "scripted-tool-call");
}

#[test]
fn langchain_and_the_agents_sdk_get_structured_output_that_validates() {
    libraries_script("format", "scripted");
}

#[test]
fn langchain_and_the_agents_sdk_get_valid_required_calls_from_a_random_model() {
    libraries_script("required", "a-mxfp4");
}

#[test]
fn bad_tools_schemas_and_tool_results_are_400s_naming_the_field() {
    let server = Server::start("a-mxfp4", &[]);
    let user = json!({"role": "user", "content": "Weather?"});
    let chat_tool = |function: Value| json!([{"type": "function", "function": function}]);
    let not_a_schema = json!({"type": "object", "properties": {"city": {"type": "strin"}}});
    let unsupported =
        json!({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": true}}});
    let long = "d".repeat(64 * 1024);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": [user], "tools": chat_tool(json!({"name": "w", "parameters": not_a_schema}))}),
            "tools[0].function.parameters",
            "strin",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [user], "tools": chat_tool(json!({"name": "w", "parameters": unsupported}))}),
            "tools[0].function.parameters",
            "uniqueItems",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [user], "tools": chat_tool(json!({"parameters": {"type": "object"}}))}),
            "tools[0].function.name",
            "name",
        ),
        (
            "/v1/responses",
            json!({"input": "Weather?", "tools": [{"type": "function", "parameters": {"type": "object"}}]}),
            "tools[0].name",
            "name",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [user, {"role": "tool", "tool_call_id": "call_nothing", "content": "18"}]}),
            "messages[1].tool_call_id",
            "call_nothing",
        ),
        (
            "/v1/responses",
            json!({"input": [user, {"type": "function_call_output", "call_id": "call_nothing", "output": "18"}]}),
            "input[1].call_id",
            "call_nothing",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [user], "tools": chat_tool(json!({"name": "w", "description": long}))}),
            "tools",
            "bytes; at most",
        ),
        (
            "/v1/responses",
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "v", "schema": not_a_schema}}}),
            "text.format",
            "strin",
        ),
    ];
    for (path, body, param, words) in cases {
        let reply = server.post(path, &body);
        let message = reply.error(400);
        assert_eq!(reply.json()["error"]["param"], param, "{path}: {message}");
        assert!(message.contains(words), "{path} {param}: {message}");
    }
}
