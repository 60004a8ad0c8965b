//! `pull`: fetch the files of a model repo into the huggingface_hub cache.
//!
//! The protocol is the hub's plain HTTP one, as huggingface_hub speaks it:
//! 1. `GET {endpoint}/api/models/{repo}/revision/main` → `sha` (the commit) and
//!    `siblings[].rfilename` (the files);
//! 2. per file `HEAD {endpoint}/{repo}/resolve/{commit}/{path}` without following
//!    absolute redirects → etag (`X-Linked-Etag`, else `ETag`), size (`X-Linked-Size`,
//!    else `Content-Length`), and where to download from (`Location` for LFS files, which
//!    the hub redirects to its CDN);
//! 3. `GET` that URL into `blobs/<etag>.incomplete`, with `Range: bytes=<n>-` to resume,
//!    check the size and, for LFS files (whose etag is their sha256), the sha256, rename to
//!    `blobs/<etag>` and link `snapshots/<commit>/<path>` → `../../blobs/<etag>`;
//! 4. write `refs/main`.
//!
//! The token goes only to the endpoint's own origin, never to the CDN. A blob is
//! downloaded under an exclusive `flock` on `.locks/<repo folder>/<etag>.lock`, the lock
//! huggingface_hub takes, so concurrent pulls (ours or Python's) never write the same file.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

use super::cache::{self, repo_folder};
use super::{valid_repo_id, HubConfig, HubError};

/// The files a model needs, at the top of the repo; everything else (README, LICENSE,
/// `original/`, `metal/`, …) is skipped.
fn wanted(path: &str) -> bool {
    const FILES: [&str; 7] = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ];
    !path.contains('/')
        && (FILES.contains(&path) || (path.starts_with("model") && path.ends_with(".safetensors")))
}

/// Consecutive failed attempts (no new bytes) before a download gives up.
const MAX_RETRIES: u32 = 5;
/// Attempts at one file in all, however they fare: a bound on a misbehaving server.
const MAX_ATTEMPTS: u32 = 100;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub repo: String,
    pub commit: String,
    /// `snapshots/<commit>/`: the model folder.
    pub snapshot: PathBuf,
    /// Files in the snapshot.
    pub files: usize,
    /// Bytes of those files.
    pub total_bytes: u64,
    /// Bytes fetched by this pull (0 when everything was cached).
    pub downloaded_bytes: u64,
}

/// Downloads the model files of `repo` at `main` into the cache (skipping what is
/// already there, resuming partial files) and returns the snapshot folder.
pub fn pull(repo: &str, hub: &HubConfig) -> Result<PullReport, HubError> {
    if !valid_repo_id(repo) {
        return Err(HubError::RepoNotFound {
            repo: repo.to_string(),
            endpoint: hub.endpoint.clone(),
            hint: " (not a valid repo id: expected org/name)".into(),
        });
    }
    if hub.offline {
        return Err(HubError::Offline { repo: repo.into() });
    }
    let client = Client::new(hub, repo);
    let revision = "main";
    let info = client.repo_info(revision)?;
    let commit = info.sha.clone();
    let mut files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    if !files.iter().any(|f| f == "config.json") {
        return Err(not_a_model(repo, "the repo has no config.json"));
    }
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(not_a_model(repo, "the repo has no model*.safetensors weights"));
    }
    // Small files first, config.json first of all: a repo that is not gpt-oss, or
    // whose index names missing shards, fails before gigabytes are fetched.
    files.sort_by_key(|f| (f != "config.json", f.ends_with(".safetensors"), f.clone()));
    let metas = files
        .iter()
        .map(|f| client.file_meta(&commit, f))
        .collect::<Result<Vec<_>, _>>()?;

    let layout = Layout::new(hub, repo, &commit)?;
    let remaining: u64 = metas.iter().map(|m| layout.remaining(m)).sum();
    if let Some(available) = available_space(&layout.blobs) {
        if available < remaining {
            return Err(HubError::DiskFull {
                path: layout.blobs.clone(),
                needed: remaining,
                available,
            });
        }
    }
    let progress = Progress::new(hub.progress, repo, remaining, metas.len());
    let mut report = PullReport {
        repo: repo.into(),
        commit: commit.clone(),
        snapshot: layout.snapshot.clone(),
        files: 0,
        total_bytes: 0,
        downloaded_bytes: 0,
    };
    let mut shards: Option<Vec<String>> = None;
    for meta in &metas {
        if meta.path.ends_with(".safetensors") && shards.as_ref().is_some_and(|s| !s.contains(&meta.path)) {
            // A file the index does not name (a stale shard): not needed.
            progress.skip(layout.remaining(meta));
            continue;
        }
        report.downloaded_bytes += client.ensure_blob(meta, &layout, &progress)?;
        layout.link(meta)?;
        report.files += 1;
        report.total_bytes += meta.size;
        let local = layout.snapshot.join(&meta.path);
        match meta.path.as_str() {
            "config.json" => check_model_type(repo, &local)?,
            "model.safetensors.index.json" => {
                let names = cache::shards(&local)
                    .ok_or_else(|| not_a_model(repo, "model.safetensors.index.json has no weight_map"))?;
                if let Some(absent) = names.iter().find(|s| !files.contains(s)) {
                    return Err(not_a_model(
                        repo,
                        &format!("model.safetensors.index.json names {absent}, which the repo lacks"),
                    ));
                }
                shards = Some(names);
            }
            _ => {}
        }
    }
    progress.finish();
    layout.write_ref(revision, &commit)?;
    Ok(report)
}

fn not_a_model(repo: &str, reason: &str) -> HubError {
    HubError::NotAModel {
        repo: repo.into(),
        reason: reason.into(),
    }
}

fn check_model_type(repo: &str, config: &Path) -> Result<(), HubError> {
    let text = std::fs::read_to_string(config).map_err(|e| HubError::io(config, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| not_a_model(repo, &format!("config.json is not JSON: {e}")))?;
    match value.get("model_type").and_then(|t| t.as_str()) {
        Some("gpt_oss") => Ok(()),
        other => Err(not_a_model(
            repo,
            &format!(
                "config.json says model_type {}; safeguard runs gpt-oss (gpt_oss) models only",
                other.map_or("(none)".to_string(), |t| format!("{t:?}"))
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
}

/// What the `HEAD` of one file says.
#[derive(Debug, Clone)]
struct FileMeta {
    path: String,
    etag: String,
    size: u64,
    url: String,
}

impl FileMeta {
    /// LFS (and xet) files have their sha256 as etag; small git files a 40-hex sha1.
    fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(&self.etag)
    }
}

/// The repo's folders in the cache, for one commit.
struct Layout {
    blobs: PathBuf,
    snapshot: PathBuf,
    refs: PathBuf,
    locks: PathBuf,
}

impl Layout {
    fn new(hub: &HubConfig, repo: &str, commit: &str) -> Result<Self, HubError> {
        let folder = repo_folder(repo);
        let root = hub.cache_dir.join(&folder);
        let layout = Layout {
            blobs: root.join("blobs"),
            snapshot: root.join("snapshots").join(commit),
            refs: root.join("refs"),
            locks: hub.cache_dir.join(".locks").join(&folder),
        };
        for dir in [&layout.blobs, &layout.snapshot, &layout.refs, &layout.locks] {
            std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
        }
        // The Cache Directory Tagging Standard, as huggingface_hub writes it: backup
        // tools skip the cache.
        let tag = hub.cache_dir.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = std::fs::write(
                tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n\
                 # This file is a cache directory tag created by safeguard (Hugging Face hub cache).\n\
                 # For information about cache directory tags see https://bford.info/cachedir/\n",
            );
        }
        Ok(layout)
    }

    fn blob(&self, meta: &FileMeta) -> PathBuf {
        self.blobs.join(&meta.etag)
    }

    fn partial(&self, meta: &FileMeta) -> PathBuf {
        self.blobs.join(format!("{}.incomplete", meta.etag))
    }

    /// Bytes still to fetch for `meta`.
    fn remaining(&self, meta: &FileMeta) -> u64 {
        if self.blob(meta).is_file() {
            return 0;
        }
        let partial = std::fs::metadata(self.partial(meta)).map_or(0, |m| m.len());
        meta.size.saturating_sub(partial.min(meta.size))
    }

    /// `snapshots/<commit>/<path>` → `../../blobs/<etag>` (one more `..` per sub-folder).
    fn link(&self, meta: &FileMeta) -> Result<(), HubError> {
        let link = self.snapshot.join(&meta.path);
        let depth = meta.path.matches('/').count();
        let target = PathBuf::from("../".repeat(2 + depth))
            .join("blobs")
            .join(&meta.etag);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            return Ok(());
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
        }
        // Made aside and renamed over the link, so that concurrent pulls of the same
        // snapshot each succeed instead of racing a remove against a create (EEXIST).
        let name = link
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
        let tmp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| write_error(&tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_error(&link, e)
        })
    }

    /// `refs/<revision>` = commit, written atomically, without a newline.
    fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        let path = self.refs.join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
            return Ok(());
        }
        let tmp = self.refs.join(format!(".{revision}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, commit).map_err(|e| write_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| write_error(&path, e))
    }
}

/// A write failure, told apart when the disk (or quota) is full.
fn write_error(path: &Path, e: std::io::Error) -> HubError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => HubError::DiskFullWhileWriting {
            path: path.to_path_buf(),
        },
        _ => HubError::io(path, e),
    }
}

/// Free bytes for an unprivileged user on the file system holding `dir`.
#[allow(clippy::unnecessary_cast)] // the statvfs field types differ between Linux and macOS
fn available_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// An exclusive `flock` on a lock file, released on drop.
struct Lock(File);

impl Lock {
    fn acquire(path: &Path, progress: &Progress, what: &str) -> Result<Lock, HubError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o664)
            .open(path)
            .map_err(|e| write_error(path, e))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            progress.note(&format!("{what}: waiting for another download of it to finish"));
            // SAFETY: as above; this call blocks until the other holder releases it.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(HubError::io(path, std::io::Error::last_os_error()));
            }
        }
        Ok(Lock(file))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking a descriptor this value owns; closing it would unlock too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A `blobs/<etag>.incomplete` being written, with the sha256 of what it holds so far.
struct Partial {
    path: PathBuf,
    file: File,
    pos: u64,
    sha256: Option<Sha256>,
}

impl Partial {
    fn open(path: PathBuf, meta: &FileMeta) -> Result<Self, HubError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| write_error(&path, e))?;
        let mut pos = file.metadata().map_err(|e| HubError::io(&path, e))?.len();
        if pos > meta.size {
            file.set_len(0).map_err(|e| HubError::io(&path, e))?;
            pos = 0;
        }
        let mut sha256 = meta.sha256().map(|_| Sha256::new());
        if let (Some(hasher), true) = (&mut sha256, pos > 0) {
            // Resuming: hash what an earlier run wrote.
            let mut buf = vec![0u8; 1 << 20];
            let mut left = pos;
            while left > 0 {
                let n = file
                    .read(&mut buf[..left.min(1 << 20) as usize])
                    .map_err(|e| HubError::io(&path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
        }
        file.seek(SeekFrom::Start(pos))
            .map_err(|e| HubError::io(&path, e))?;
        Ok(Partial {
            path,
            file,
            pos,
            sha256,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), HubError> {
        self.file
            .write_all(bytes)
            .map_err(|e| write_error(&self.path, e))?;
        if let Some(hasher) = &mut self.sha256 {
            hasher.update(bytes);
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Starts over from byte 0.
    fn reset(&mut self) -> Result<(), HubError> {
        self.file.set_len(0).map_err(|e| HubError::io(&self.path, e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| HubError::io(&self.path, e))?;
        self.pos = 0;
        if let Some(hasher) = &mut self.sha256 {
            *hasher = Sha256::new();
        }
        Ok(())
    }
}

/// How one download attempt ended, short of a fatal error.
enum Attempt {
    /// The body ended where the server said it would.
    Complete,
    /// Worth another try (connection dropped, 5xx, a range answered wrongly).
    Retry(String),
}

struct Client<'a> {
    hub: &'a HubConfig,
    repo: &'a str,
    agent: ureq::Agent,
    /// `scheme://host[:port]` of the endpoint: the only place the token goes.
    origin: String,
}

impl<'a> Client<'a> {
    fn new(hub: &'a HubConfig, repo: &'a str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(format!("safeguard-mlx/{}", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(hub.metadata_timeout))
            .timeout_per_read(Some(hub.read_timeout))
            .build()
            .into();
        let origin = match hub.endpoint.find("://") {
            Some(i) => match hub.endpoint[i + 3..].find('/') {
                Some(j) => hub.endpoint[..i + 3 + j].to_string(),
                None => hub.endpoint.clone(),
            },
            None => hub.endpoint.clone(),
        };
        Client {
            hub,
            repo,
            agent,
            origin,
        }
    }

    fn token_for(&self, url: &str) -> Option<String> {
        let same_origin = url
            .strip_prefix(&self.origin)
            .is_some_and(|rest| rest.starts_with('/'));
        self.hub
            .token
            .as_ref()
            .filter(|_| same_origin)
            .map(|t| format!("Bearer {t}"))
    }

    fn network_error(&self, url: &str, e: ureq::Error) -> HubError {
        HubError::Network {
            url: url.to_string(),
            detail: e.to_string(),
        }
    }

    fn repo_info(&self, revision: &str) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.hub.endpoint,
            self.repo,
            encode(revision, false)
        );
        let mut request = self.agent.get(&url).header("Accept", "application/json");
        if let Some(auth) = self.token_for(&url) {
            request = request.header("Authorization", auth);
        }
        let response = request
            .config()
            .timeout_per_call(Some(self.hub.metadata_timeout))
            .build()
            .call()
            .map_err(|e| self.network_error(&url, e))?;
        let mut response = self.check(response, &url, None)?;
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.network_error(&url, e))?;
        let info: RepoInfo = serde_json::from_str(&text).map_err(|e| HubError::BadResponse {
            url: url.clone(),
            detail: format!("repo info is not the expected JSON ({e})"),
        })?;
        if !(info.sha.len() == 40 && info.sha.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(HubError::BadResponse {
                url,
                detail: format!("`sha` {:?} is not a commit hash", info.sha),
            });
        }
        Ok(info)
    }

    /// `HEAD` of a file at a commit, following only relative redirects (renamed repos).
    fn file_meta(&self, commit: &str, path: &str) -> Result<FileMeta, HubError> {
        let mut url = format!(
            "{}/{}/resolve/{commit}/{}",
            self.hub.endpoint,
            self.repo,
            encode(path, true)
        );
        for _ in 0..5 {
            let mut request = self.agent.head(&url).header("Accept-Encoding", "identity");
            if let Some(auth) = self.token_for(&url) {
                request = request.header("Authorization", auth);
            }
            let response = request
                .config()
                .max_redirects(0)
                .timeout_per_call(Some(self.hub.metadata_timeout))
                .build()
                .call()
                .map_err(|e| self.network_error(&url, e))?;
            let status = response.status().as_u16();
            let location = header(&response, "location");
            let redirect = (300..400).contains(&status);
            if let (true, Some(location)) = (redirect, &location) {
                if location.starts_with('/') {
                    url = format!("{}{location}", self.origin);
                    continue;
                }
            }
            let etag = header(&response, "x-linked-etag").or_else(|| header(&response, "etag"));
            let size = header(&response, "x-linked-size")
                .or_else(|| (!redirect).then(|| header(&response, "content-length")).flatten());
            let download_url = if redirect { location } else { Some(url.clone()) };
            self.check(response, &url, Some(path))?;
            let bad = |detail: &str| HubError::BadResponse {
                url: url.clone(),
                detail: detail.to_string(),
            };
            let etag = etag
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
                .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
                .ok_or_else(|| bad("no usable ETag / X-Linked-Etag header"))?;
            let size = size
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("no X-Linked-Size / Content-Length header"))?;
            return Ok(FileMeta {
                path: path.to_string(),
                etag,
                size,
                url: download_url.ok_or_else(|| bad("a redirect without Location"))?,
            });
        }
        Err(HubError::BadResponse {
            url,
            detail: "too many redirects".into(),
        })
    }

    /// Turns an error status into the matching [`HubError`]; `file` is set for
    /// file requests, unset for the repo listing.
    fn check(
        &self,
        mut response: Response<Body>,
        url: &str,
        file: Option<&str>,
    ) -> Result<Response<Body>, HubError> {
        let status = response.status().as_u16();
        if status < 400 {
            return Ok(response);
        }
        let code = header(&response, "x-error-code").unwrap_or_default();
        let mut message = header(&response, "x-error-message").unwrap_or_default();
        if message.is_empty() {
            if let Ok(body) = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
            {
                message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error")?.as_str().map(String::from))
                    .unwrap_or(body);
            }
        }
        let message: String = message.trim().chars().take(300).collect();
        let message = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        let repo = self.repo.to_string();
        let endpoint = self.hub.endpoint.clone();
        let page = format!("{endpoint}/{repo}");
        let has_token = self.hub.token.is_some();
        Err(match (status, code.as_str()) {
            (401 | 404, "RepoNotFound") | (404, "") if file.is_none() || code == "RepoNotFound" => {
                HubError::RepoNotFound {
                    repo,
                    endpoint,
                    hint: if has_token {
                        String::new()
                    } else {
                        " (if it is private, set HF_TOKEN to a token that can read it)".into()
                    },
                }
            }
            (404, "RevisionNotFound") => HubError::RevisionNotFound {
                repo,
                revision: "main".into(),
                endpoint,
            },
            (404, _) => HubError::FileNotFound {
                repo,
                file: file.unwrap_or("?").to_string(),
                url: url.to_string(),
            },
            (401, _) => HubError::Unauthorized {
                repo,
                url: url.to_string(),
                message,
                hint: if has_token {
                    format!(
                        "The token (HF_TOKEN, or the token file under HF_HOME) was rejected: check it at \
                         {}/settings/tokens",
                        self.origin
                    )
                } else {
                    format!(
                        "The repo is gated or private: accept its terms at {page}, then set HF_TOKEN to a \
                         read token from {}/settings/tokens",
                        self.origin
                    )
                },
            },
            (403, _) => HubError::Forbidden {
                repo,
                url: url.to_string(),
                page,
                message,
            },
            _ => HubError::Http {
                url: url.to_string(),
                status,
                message,
            },
        })
    }

    /// Makes `blobs/<etag>` hold the file, fetching what is missing; returns the bytes fetched.
    fn ensure_blob(&self, meta: &FileMeta, layout: &Layout, progress: &Progress) -> Result<u64, HubError> {
        let blob = layout.blob(meta);
        if blob.is_file() {
            return Ok(0);
        }
        let planned = layout.remaining(meta);
        let _lock = Lock::acquire(
            &layout.locks.join(format!("{}.lock", meta.etag)),
            progress,
            &meta.path,
        )?;
        if blob.is_file() {
            // Another process finished it while we waited.
            progress.skip(planned);
            return Ok(0);
        }
        let mut part = Partial::open(layout.partial(meta), meta)?;
        let start = part.pos;
        if start > 0 {
            progress.note(&format!(
                "{}: resuming at byte {start} of {}",
                meta.path, meta.size
            ));
        }
        progress.file(&meta.path);
        let mut failures = 0;
        let mut attempts = 0;
        while part.pos < meta.size || meta.size == 0 {
            attempts += 1;
            let before = part.pos;
            let why = match self.fetch(meta, &mut part, progress)? {
                Attempt::Complete if part.pos >= meta.size => break,
                Attempt::Complete => "the connection closed early".to_string(),
                Attempt::Retry(why) => why,
            };
            failures = if part.pos > before { 1 } else { failures + 1 };
            if failures > MAX_RETRIES || attempts >= MAX_ATTEMPTS {
                return Err(HubError::Network {
                    url: meta.url.clone(),
                    detail: format!(
                        "{why} (gave up after {attempts} attempts; {} of {} bytes \
                         kept in {}, `safeguard pull` resumes from there)",
                        part.pos,
                        meta.size,
                        part.path.display()
                    ),
                });
            }
            progress.note(&format!("{}: {why}; resuming at byte {}", meta.path, part.pos));
            if part.pos == before {
                std::thread::sleep(Duration::from_millis(250 << failures.min(5)));
            }
        }
        let fetched = part.pos.saturating_sub(start);
        if part.pos != meta.size {
            let actual = part.pos;
            drop(part.file);
            let _ = std::fs::remove_file(&part.path);
            return Err(HubError::SizeMismatch {
                file: meta.path.clone(),
                expected: meta.size,
                actual,
            });
        }
        if let (Some(expected), Some(hasher)) = (meta.sha256(), part.sha256.take()) {
            let actual = hex(&hasher.finalize());
            if !actual.eq_ignore_ascii_case(expected) {
                drop(part.file);
                let _ = std::fs::remove_file(&part.path);
                return Err(HubError::Checksum {
                    file: meta.path.clone(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        part.file.sync_all().map_err(|e| write_error(&part.path, e))?;
        drop(part.file);
        std::fs::rename(&part.path, &blob).map_err(|e| write_error(&blob, e))?;
        progress.done(&meta.path, meta.size);
        Ok(fetched)
    }

    /// One `GET` of the rest of a file into `part`.
    fn fetch(&self, meta: &FileMeta, part: &mut Partial, progress: &Progress) -> Result<Attempt, HubError> {
        let url = &meta.url;
        let mut request = self.agent.get(url).header("Accept-Encoding", "identity");
        if let Some(auth) = self.token_for(url) {
            request = request.header("Authorization", auth);
        }
        if part.pos > 0 {
            request = request.header("Range", format!("bytes={}-", part.pos));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(e @ (ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed)) => {
                return Ok(Attempt::Retry(e.to_string()))
            }
            Err(e) => return Err(self.network_error(url, e)),
        };
        // `Content-Range: bytes <start>-<end>/<total>` (or `bytes */<total>` with 416).
        let content_range = header(&response, "content-range");
        let range_start = content_range
            .as_deref()
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let range_total = content_range
            .as_deref()
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let status = response.status().as_u16();
        let whole = match status {
            200 => header(&response, "content-length").and_then(|v| v.parse::<u64>().ok()),
            206 | 416 => range_total,
            _ => None,
        };
        if let Some(whole) = whole.filter(|&w| w != meta.size) {
            // The server's file is not the one the hub announced; fetching it is futile.
            return Err(HubError::SizeMismatch {
                file: meta.path.clone(),
                expected: meta.size,
                actual: whole,
            });
        }
        match status {
            206 if range_start != Some(part.pos) => {
                progress.restart(part.pos);
                part.reset()?;
                return Ok(Attempt::Retry(format!(
                    "the server resumed at {range_start:?} instead of the requested byte"
                )));
            }
            200 if part.pos > 0 => {
                // The server ignored the range: the body is the whole file.
                progress.restart(part.pos);
                part.reset()?;
            }
            416 => {
                progress.restart(part.pos);
                part.reset()?;
                return Ok(Attempt::Retry("the server refused the resume range".into()));
            }
            429 | 500..=599 => return Ok(Attempt::Retry(format!("HTTP {status}"))),
            _ => {}
        }
        let response = self.check(response, url, Some(&meta.path))?;
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return Ok(Attempt::Complete),
                Ok(n) => {
                    part.write(&buf[..n])?;
                    progress.inc(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Attempt::Retry(format!("connection lost: {e}"))),
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes a URL path segment (keeping `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Download progress on stderr: a bar on a terminal, a line per file otherwise,
/// nothing when disabled.
struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
}

impl Progress {
    fn new(show: bool, repo: &str, bytes: u64, files: usize) -> Self {
        if !show {
            return Progress {
                bar: None,
                lines: false,
            };
        }
        if bytes == 0 {
            eprintln!("{repo}: all {files} files are already in the cache");
        }
        if !std::io::stderr().is_terminal() {
            if bytes > 0 {
                eprintln!("pulling {repo}: {} to fetch", human_bytes(bytes));
            }
            return Progress {
                bar: None,
                lines: true,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta} {wide_msg}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("pulling {repo}"));
        Progress {
            bar: Some(bar),
            lines: false,
        }
    }

    fn file(&self, path: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(path.to_string());
        }
    }

    fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Bytes that no longer need fetching.
    fn skip(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(bar.length().unwrap_or(0).saturating_sub(n));
        }
    }

    /// A file starts over: the `n` bytes it had are to be fetched again.
    fn restart(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(n);
        }
    }

    fn done(&self, path: &str, size: u64) {
        if self.lines {
            eprintln!("  {path} ({})", human_bytes(size));
        }
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None if self.lines => eprintln!("  {message}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `12.3 GB`, `512 kB`: decimal units, as the hub shows sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A response header's value, trimmed; None when absent or not text.
fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_files_at_the_top_are_wanted() {
        for yes in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00003.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "chat_template.jinja",
        ] {
            assert!(wanted(yes), "{yes}");
        }
        for no in [
            "README.md",
            ".gitattributes",
            "LICENSE",
            "USAGE_POLICY",
            "original/model.safetensors",
            "original/config.json",
            "metal/model.bin",
            "consolidated.safetensors",
        ] {
            assert!(!wanted(no), "{no}");
        }
    }

    #[test]
    fn sizes_and_encoding() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345_678_901), "12.3 GB");
        assert_eq!(encode("a b/c.json", true), "a%20b/c.json");
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
    }
}
