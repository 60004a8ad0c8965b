//! A stand-in for huggingface.co on 127.0.0.1, for download tests.
//!
//! It speaks the part of the hub's HTTP protocol that huggingface_hub uses to download:
//! `GET /api/models/{repo}/revision/{rev}` (the commit and file list), and `HEAD`/`GET
//! /{repo}/resolve/{rev}/{path}`: small files answer 200 with their git sha1 as `ETag`;
//! LFS files (safetensors and anything over 10 MB) answer 302 to a second listener, the
//! "CDN", with `X-Linked-Etag` (their sha256) and `X-Linked-Size`, as the real hub does.
//! The CDN honours `Range` (206). Errors carry `X-Error-Code` like the hub's: 401
//! `RepoNotFound` for unknown repos asked without a token, 404 with one, 401/403
//! `GatedRepo` for gated ones. Faults (dropped or stalled connections, wrong sizes,
//! ignored ranges, corrupt bytes, missing files) are injected per file. File hashes come
//! from Python's hashlib, independently of the code under test. Every request is logged.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One file of a fake repo: either a file on disk or bytes in memory.
#[derive(Clone, Debug)]
pub struct RepoFile {
    pub path: String,
    pub source: Source,
    pub size: u64,
    pub sha256: String,
    pub git_sha1: String,
}

#[derive(Clone, Debug)]
pub enum Source {
    Disk(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

impl RepoFile {
    /// Files over 10 MB and safetensors are LFS files on the hub.
    pub fn lfs(&self) -> bool {
        self.path.ends_with(".safetensors") || self.size > 10_000_000
    }

    /// The name huggingface_hub gives its blob: sha256 for LFS files, git sha1 otherwise.
    pub fn etag(&self) -> &str {
        if self.lfs() {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }
}

#[derive(Clone, Debug)]
pub struct Repo {
    pub commit: String,
    pub files: Vec<RepoFile>,
    /// A gated repo: only `Authorization: Bearer <token>` may read it.
    pub token: Option<String>,
}

impl Repo {
    pub fn file(&self, path: &str) -> &RepoFile {
        self.files.iter().find(|f| f.path == path).unwrap()
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// `hub` or `cdn`.
    pub host: &'static str,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

/// Injected misbehaviour, keyed by the file's repo path.
#[derive(Default, Debug)]
pub struct Faults {
    /// Send this many body bytes of a CDN download, then close; `.1` times.
    pub drop_after: HashMap<String, (u64, usize)>,
    /// Send this many body bytes, then hold the connection open until the server stops.
    pub stall_after: HashMap<String, u64>,
    /// Answer range requests with the whole file (200).
    pub ignore_range: bool,
    /// Flip a byte of the body at this offset.
    pub corrupt_at: HashMap<String, u64>,
    /// Claim this size in `X-Linked-Size`.
    pub size: HashMap<String, u64>,
    /// Listed, but `resolve` answers 404 EntryNotFound.
    pub missing: Vec<String>,
}

struct State {
    repos: Mutex<BTreeMap<String, Repo>>,
    log: Mutex<Vec<Logged>>,
    faults: Mutex<Faults>,
    stop: AtomicBool,
    cdn_url: Mutex<String>,
}

pub struct FakeHub {
    pub url: String,
    state: Arc<State>,
    threads: Vec<(JoinHandle<()>, std::net::SocketAddr)>,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let state = Arc::new(State {
            repos: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            stop: AtomicBool::new(false),
            cdn_url: Mutex::new(String::new()),
        });
        let mut threads = Vec::new();
        let mut urls = Vec::new();
        for host in ["hub", "cdn"] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            urls.push(format!("http://{addr}"));
            let state = state.clone();
            let thread = std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if state.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = handle(&state, host, stream);
                    });
                }
            });
            threads.push((thread, addr));
        }
        *state.cdn_url.lock().unwrap() = urls[1].clone();
        FakeHub {
            url: urls[0].clone(),
            state,
            threads,
        }
    }

    /// Serves the model files of a fixture folder (not its `reference/`) as `repo`, plus
    /// files a client must skip: README.md, .gitattributes, original/ and metal/.
    pub fn add_fixture(&self, repo: &str, folder: &Path, commit: &str) -> Repo {
        let mut files: Vec<(String, Source)> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.file_name().unwrap().to_str().unwrap().to_string(),
                    Source::Disk(p),
                )
            })
            .collect();
        let extra: [(&str, &[u8]); 4] = [
            ("README.md", b"# a fake model card\n"),
            (
                ".gitattributes",
                b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
            ),
            (
                "original/model.safetensors",
                b"not needed: the original layout's copy",
            ),
            ("metal/model.bin", b"not needed: the Metal reference's weights"),
        ];
        for (path, bytes) in extra {
            files.push((path.to_string(), Source::Bytes(Arc::new(bytes.to_vec()))));
        }
        self.add_repo(repo, files, commit, None)
    }

    /// Adds a repo with the given files; hashes come from Python's hashlib.
    pub fn add_repo(
        &self,
        repo: &str,
        files: Vec<(String, Source)>,
        commit: &str,
        token: Option<&str>,
    ) -> Repo {
        let hashes = python_hashes(&files);
        let files = files
            .into_iter()
            .zip(hashes)
            .map(|((path, source), (size, sha256, git_sha1))| RepoFile {
                path,
                source,
                size,
                sha256,
                git_sha1,
            })
            .collect();
        let repo_value = Repo {
            commit: commit.to_string(),
            files,
            token: token.map(String::from),
        };
        self.state
            .repos
            .lock()
            .unwrap()
            .insert(repo.to_string(), repo_value.clone());
        repo_value
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.faults.lock().unwrap()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for (thread, addr) in self.threads.drain(..) {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}

/// (size, sha256, git blob sha1) of each file, computed by Python.
fn python_hashes(files: &[(String, Source)]) -> Vec<(u64, String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (_, source))| match source {
            Source::Disk(p) => p.to_str().unwrap().to_string(),
            Source::Bytes(bytes) => {
                let p = dir.path().join(i.to_string());
                std::fs::write(&p, &bytes[..]).unwrap();
                p.to_str().unwrap().to_string()
            }
        })
        .collect();
    let script = "import hashlib, json, sys\n\
        out = []\n\
        for p in json.load(sys.stdin):\n\
        \x20   data = open(p, 'rb').read()\n\
        \x20   git = hashlib.sha1(b'blob %d\\0' % len(data) + data).hexdigest()\n\
        \x20   out.append([len(data), hashlib.sha256(data).hexdigest(), git])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(crate::common::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&paths).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "hashing with Python failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Empty,
    Text(Vec<u8>),
    /// `len` bytes of a file from `start`.
    File {
        file: Box<RepoFile>,
        start: u64,
        len: u64,
    },
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    }
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("X-Error-Code".into(), code.into()),
            ("X-Error-Message".into(), message.into()),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: Body::Text(serde_json::json!({ "error": message }).to_string().into_bytes()),
    }
}

fn handle(state: &State, host: &'static str, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let Some(request) = read_request(&stream) else {
        return Ok(());
    };
    let reply = match host {
        "hub" => route_hub(state, &request),
        _ => route_cdn(state, &request),
    };
    state.log.lock().unwrap().push(Logged {
        host,
        method: request.method.clone(),
        path: request.path.clone(),
        range: request.headers.get("range").cloned(),
        authorization: request.headers.get("authorization").cloned(),
        status: reply.status,
    });
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    let body_len = match &reply.body {
        Body::Empty => 0,
        Body::Text(t) => t.len() as u64,
        Body::File { len, .. } => *len,
    };
    let has_length = reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        head.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    if request.method == "HEAD" {
        return finish(stream);
    }
    match reply.body {
        Body::Empty => {}
        Body::Text(t) => stream.write_all(&t)?,
        Body::File { file, start, len } => {
            let (drop_after, stall_after, corrupt_at) = {
                let mut faults = state.faults.lock().unwrap();
                let drop_after = match faults.drop_after.get_mut(&file.path) {
                    Some((bytes, times)) if *times > 0 => {
                        *times -= 1;
                        Some(*bytes)
                    }
                    _ => None,
                };
                (
                    drop_after,
                    faults.stall_after.get(&file.path).copied(),
                    faults.corrupt_at.get(&file.path).copied(),
                )
            };
            let limit = drop_after.or(stall_after).map_or(len, |n| n.min(len));
            let mut data = read_range(&file, start, limit)?;
            if let Some(at) = corrupt_at {
                if at >= start && at < start + limit {
                    data[(at - start) as usize] ^= 0xff;
                }
            }
            stream.write_all(&data)?;
            stream.flush()?;
            if stall_after.is_some() && limit < len {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !state.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    finish(stream)
}

fn finish(stream: TcpStream) -> std::io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    // Drain what the client may still send so the close is a FIN, not a reset.
    let mut sink = [0u8; 1024];
    let mut stream = stream;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn read_range(file: &RepoFile, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    match &file.source {
        Source::Bytes(bytes) => Ok(bytes[start as usize..(start + len) as usize].to_vec()),
        Source::Disk(path) => {
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(start))?;
            let mut data = vec![0u8; len as usize];
            f.read_exact(&mut data)?;
            Ok(data)
        }
    }
}

fn route_hub(state: &State, request: &Request) -> Reply {
    let path = request.path.split('?').next().unwrap_or("");
    let auth = request.headers.get("authorization");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let repos = state.repos.lock().unwrap();
    // /api/models/{org}/{name}[/revision/{rev}]
    if segments.len() >= 4 && segments[0] == "api" && segments[1] == "models" {
        let repo_id = format!("{}/{}", segments[2], segments[3]);
        let revision = match segments.get(4..) {
            Some(["revision", rev]) => Some(*rev),
            Some([]) => None,
            _ => return error(404, "", "no such route"),
        };
        let repo = match access(&repos, &repo_id, auth) {
            Ok(repo) => repo,
            Err(reply) => return reply,
        };
        if revision.is_some_and(|r| r != "main" && r != repo.commit) {
            return error(404, "RevisionNotFound", "Invalid rev id");
        }
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|f| serde_json::json!({ "rfilename": f.path }))
            .collect();
        let body = serde_json::json!({
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.commit,
            "private": false,
            "gated": repo.token.is_some(),
            "siblings": siblings,
        });
        return Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Text(body.to_string().into_bytes()),
        };
    }
    // /{org}/{name}/resolve/{rev}/{path...}
    if segments.len() >= 5 && segments[2] == "resolve" && matches!(request.method.as_str(), "GET" | "HEAD") {
        let repo_id = format!("{}/{}", segments[0], segments[1]);
        let repo = match access(&repos, &repo_id, auth) {
            Ok(repo) => repo,
            Err(reply) => return reply,
        };
        if segments[3] != "main" && segments[3] != repo.commit {
            return error(404, "RevisionNotFound", "Invalid rev id");
        }
        let file_path = segments[4..].join("/");
        let faults = state.faults.lock().unwrap();
        let Some(file) = repo.files.iter().find(|f| f.path == file_path) else {
            return error(404, "EntryNotFound", "Entry not found");
        };
        if faults.missing.contains(&file_path) {
            return error(404, "EntryNotFound", "Entry not found");
        }
        let mut headers = vec![("X-Repo-Commit".into(), repo.commit.clone())];
        if file.lfs() {
            let size = faults.size.get(&file.path).copied().unwrap_or(file.size);
            let cdn = state.cdn_url.lock().unwrap().clone();
            headers.extend([
                ("X-Linked-Etag".into(), format!("\"{}\"", file.sha256)),
                ("X-Linked-Size".into(), size.to_string()),
                ("ETag".into(), format!("\"{}\"", file.git_sha1)),
                (
                    "Location".into(),
                    format!(
                        "{cdn}/repos/{}?name={}",
                        file.sha256,
                        file.path.replace('/', "%2F")
                    ),
                ),
            ]);
            return Reply {
                status: 302,
                headers,
                body: Body::Empty,
            };
        }
        headers.push(("ETag".into(), format!("\"{}\"", file.git_sha1)));
        return Reply {
            status: 200,
            headers,
            body: Body::File {
                file: Box::new(file.clone()),
                start: 0,
                len: file.size,
            },
        };
    }
    error(404, "", "no such route")
}

/// The hub's answers for repos one may not see: unknown repos are 401 without a
/// token (they might be private) and 404 with one; gated repos 401 without a token
/// and 403 with the wrong one.
fn access<'a>(
    repos: &'a BTreeMap<String, Repo>,
    repo_id: &str,
    auth: Option<&String>,
) -> Result<&'a Repo, Reply> {
    let Some(repo) = repos.get(repo_id) else {
        return Err(match auth {
            None => error(401, "RepoNotFound", "Repository not found"),
            Some(_) => error(404, "RepoNotFound", "Repository not found"),
        });
    };
    match (&repo.token, auth) {
        (None, _) => Ok(repo),
        (Some(token), Some(auth)) if *auth == format!("Bearer {token}") => Ok(repo),
        (Some(_), None) => Err(error(
            401,
            "GatedRepo",
            &format!("Access to model {repo_id} is restricted. You must be authenticated to access it."),
        )),
        (Some(_), Some(_)) => Err(error(
            403,
            "GatedRepo",
            &format!("Access to model {repo_id} is restricted and you are not in the authorized list."),
        )),
    }
}

fn route_cdn(state: &State, request: &Request) -> Reply {
    let path = request.path.split('?').next().unwrap_or("");
    let Some(sha) = path.strip_prefix("/repos/") else {
        return error(404, "", "no such object");
    };
    let file = state
        .repos
        .lock()
        .unwrap()
        .values()
        .flat_map(|r| r.files.iter())
        .find(|f| f.sha256 == sha)
        .cloned();
    let Some(file) = file else {
        return error(404, "", "no such object");
    };
    let ignore_range = state.faults.lock().unwrap().ignore_range;
    let range = request
        .headers
        .get("range")
        .filter(|_| !ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse::<u64>().ok(), b.parse::<u64>().ok()));
    let mut headers = vec![("Accept-Ranges".into(), "bytes".into())];
    match range {
        Some((Some(start), end)) => {
            let end = end
                .unwrap_or(file.size.saturating_sub(1))
                .min(file.size.saturating_sub(1));
            if start >= file.size {
                headers.push(("Content-Range".into(), format!("bytes */{}", file.size)));
                return Reply {
                    status: 416,
                    headers,
                    body: Body::Empty,
                };
            }
            headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{end}/{}", file.size),
            ));
            Reply {
                status: 206,
                headers,
                body: Body::File {
                    len: end + 1 - start,
                    file: Box::new(file),
                    start,
                },
            }
        }
        _ => Reply {
            status: 200,
            headers,
            body: Body::File {
                len: file.size,
                file: Box::new(file),
                start: 0,
            },
        },
    }
}
