//! Models by name: local folders, catalog aliases and Hugging Face hub repos.
//!
//! [`resolve`] turns what the user passed to `-m` into a model folder: an existing
//! directory as it is; a catalog alias ([`catalog`]) or an `org/name` repo id through the
//! huggingface_hub cache, downloading it first ([`pull`]) unless `HF_HUB_OFFLINE` is set.
//! The cache is the one huggingface_hub, mlx-lm and transformers share
//! (`models--org--name/{blobs,snapshots,refs}`), so models fetched by either side are
//! found by the other. Every setting comes from the same environment variables as
//! huggingface_hub's ([`HubConfig::from_env`]).

pub mod cache;
pub mod catalog;
mod download;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use download::{human_bytes, pull, PullReport};

/// Where the cache is, which hub to talk to, and how.
#[derive(Clone)]
pub struct HubConfig {
    /// The huggingface_hub cache root (holds `models--org--name/`).
    pub cache_dir: PathBuf,
    /// The hub's base URL, without a trailing slash.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` to the endpoint (never to other hosts).
    pub token: Option<String>,
    /// No network at all: models must be in the cache.
    pub offline: bool,
    /// Connect and metadata request timeout.
    pub metadata_timeout: Duration,
    /// The longest a download may wait for the next bytes.
    pub read_timeout: Duration,
    /// Show download progress on stderr (a bar on a terminal, one line per file otherwise).
    pub progress: bool,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("metadata_timeout", &self.metadata_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("progress", &self.progress)
            .finish()
    }
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubConfig {
    /// Settings from the process environment, as huggingface_hub reads them.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Settings from `var` (a stand-in for the environment):
    /// cache `HF_HUB_CACHE` > `HUGGINGFACE_HUB_CACHE` > `HF_HOME/hub` >
    /// `XDG_CACHE_HOME/huggingface/hub` > `~/.cache/huggingface/hub`; endpoint
    /// `HF_ENDPOINT`; token `HF_TOKEN` > the file `HF_TOKEN_PATH` (default
    /// `HF_HOME/token`); `HF_HUB_OFFLINE` (1/ON/YES/TRUE); timeouts
    /// `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT` in seconds (10 each).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = get("HOME").map(PathBuf::from);
        let expand = |v: String| match (v.strip_prefix("~/"), &home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ if v == "~" => home.clone().unwrap_or_else(|| PathBuf::from(&v)),
            _ => PathBuf::from(v),
        };
        let hf_home = get("HF_HOME").map(expand).unwrap_or_else(|| {
            let cache = get("XDG_CACHE_HOME")
                .map(expand)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = get("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
            let path = get("HF_TOKEN_PATH")
                .map(expand)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let seconds = |name: &str| {
            get(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_secs(10))
        };
        HubConfig {
            cache_dir,
            endpoint: get("HF_ENDPOINT")
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            offline: get("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            metadata_timeout: seconds("HF_HUB_ETAG_TIMEOUT"),
            read_timeout: seconds("HF_HUB_DOWNLOAD_TIMEOUT"),
            progress: true,
        }
    }
}

/// huggingface_hub's reading of boolean variables.
fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// What can go wrong finding or fetching a model. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "unknown model `{name}`: not a local folder, a catalog alias or a hub repo id (org/name). \
         Aliases: {aliases} (see `safeguard ls`)"
    )]
    UnknownModel { name: String, aliases: String },
    #[error(
        "{path} is not a model folder ({reason}); -m takes a local folder, a catalog alias or a hub \
         repo id (org/name)"
    )]
    NotAFolder { path: PathBuf, reason: &'static str },
    #[error(
        "{repo} is not in the cache ({cache}) and HF_HUB_OFFLINE is set; run `safeguard pull {name}` \
         with network access (and HF_HUB_OFFLINE unset), then retry"
    )]
    NotCached {
        name: String,
        repo: String,
        cache: PathBuf,
    },
    #[error(
        "{repo}: the cached copy at {snapshot} is incomplete (missing {missing}) and HF_HUB_OFFLINE is \
         set; run `safeguard pull {repo}` with network access to finish it"
    )]
    IncompleteCache {
        repo: String,
        snapshot: PathBuf,
        missing: String,
    },
    #[error("{repo}: HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it to pull")]
    Offline { repo: String },
    #[error("{repo}: authentication required ({url} answered 401{message}). {hint}")]
    Unauthorized {
        repo: String,
        url: String,
        message: String,
        hint: String,
    },
    #[error(
        "{repo}: access denied ({url} answered 403{message}). The repo is gated or private: accept its \
         terms at {page} with the account of your token, and check the token can read it"
    )]
    Forbidden {
        repo: String,
        url: String,
        page: String,
        message: String,
    },
    #[error("{repo}: no such model repo on {endpoint}{hint}")]
    RepoNotFound {
        repo: String,
        endpoint: String,
        hint: String,
    },
    #[error("{repo}: revision `{revision}` does not exist on {endpoint}")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    #[error("{repo}: file {file} not found ({url} answered 404)")]
    FileNotFound { repo: String, file: String, url: String },
    #[error("{repo} is not a model safeguard can run: {reason}")]
    NotAModel { repo: String, reason: String },
    #[error(
        "cannot reach {url}: {detail}. Check the network connection and HF_ENDPOINT, or set \
         HF_HUB_OFFLINE=1 to use cached models only"
    )]
    Network { url: String, detail: String },
    #[error("{url} answered HTTP {status}{message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: unexpected answer from the hub: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("disk full: {path} needs {needed} more bytes but {available} are free; free some space (or point HF_HUB_CACHE elsewhere) and run `safeguard pull` again to resume")]
    DiskFull {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("disk full while writing {path}; free some space and run `safeguard pull` again to resume")]
    DiskFullWhileWriting { path: PathBuf },
    #[error("{file}: got {actual} bytes where the hub announced {expected}; run `safeguard pull` again")]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{file}: sha256 {actual} does not match the hub's {expected}; the partial file was removed, \
         run `safeguard pull` again"
    )]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// Whether the request itself was at fault (a name, access, offline use), which the
    /// CLI reports with exit code 2, rather than a failure while serving it.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            HubError::UnknownModel { .. }
                | HubError::NotAFolder { .. }
                | HubError::NotCached { .. }
                | HubError::IncompleteCache { .. }
                | HubError::Offline { .. }
                | HubError::Unauthorized { .. }
                | HubError::Forbidden { .. }
                | HubError::RepoNotFound { .. }
                | HubError::RevisionNotFound { .. }
                | HubError::FileNotFound { .. }
                | HubError::NotAModel { .. }
        )
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a `-m` value points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// An existing folder, used as it is.
    Local(PathBuf),
    /// A hub repo; `alias` is the catalog name it was given by, if any.
    Hub { repo: String, alias: Option<String> },
}

/// Whether `id` is a well-formed `org/name` model repo id (huggingface_hub's rules: letters,
/// digits, `-`, `_`, `.`; no `--` or `..`; neither part starts or ends with `-` or `.`).
pub fn valid_repo_id(id: &str) -> bool {
    let Some((org, name)) = id.split_once('/') else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    id.len() <= 96 && part_ok(org) && part_ok(name) && !id.contains("--") && !id.contains("..")
}

/// Classifies a `-m` value: an existing folder, then a catalog alias, then a repo id.
pub fn lookup(model: &str) -> Result<ModelSource, HubError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(ModelSource::Local(path.to_path_buf()));
    }
    if let Some(entry) = catalog::find(model) {
        return Ok(ModelSource::Hub {
            repo: entry.repo.clone(),
            alias: Some(entry.alias.clone()),
        });
    }
    if valid_repo_id(model) {
        return Ok(ModelSource::Hub {
            repo: model.to_string(),
            alias: catalog::find_repo(model).map(|e| e.alias.clone()),
        });
    }
    if path.exists() || model.starts_with(['/', '.', '~']) || model.contains('/') {
        return Err(HubError::NotAFolder {
            path: path.to_path_buf(),
            reason: if path.exists() {
                "it is a file"
            } else {
                "it does not exist"
            },
        });
    }
    Err(HubError::UnknownModel {
        name: model.to_string(),
        aliases: catalog::alias_list(),
    })
}

/// The folder of the model `-m model` names: a local folder as it is, otherwise the
/// hub cache's snapshot of its repo (`refs/main` → `snapshots/<commit>/`), without any
/// network request when that snapshot is whole. A model that is not cached (or only
/// partly) is pulled first, unless `hub.offline`. `safeguard pull` updates a cached model.
pub fn resolve(model: &str, hub: &HubConfig) -> Result<PathBuf, HubError> {
    let repo = match lookup(model)? {
        ModelSource::Local(dir) => return Ok(dir),
        ModelSource::Hub { repo, .. } => repo,
    };
    // refs/main's snapshot, else the newest: a pull interrupted before it wrote the
    // ref, or a download by commit hash.
    let repo_dir = hub.cache_dir.join(cache::repo_folder(&repo));
    match cache::main_or_newest_snapshot(&repo_dir) {
        Some((_, snapshot)) => {
            let missing = cache::missing_files(&snapshot);
            if missing.is_empty() {
                return Ok(snapshot);
            }
            if hub.offline {
                return Err(HubError::IncompleteCache {
                    repo,
                    snapshot,
                    missing: missing.join(", "),
                });
            }
        }
        None if hub.offline => {
            return Err(HubError::NotCached {
                name: model.to_string(),
                repo,
                cache: hub.cache_dir.clone(),
            })
        }
        None => {}
    }
    if hub.progress {
        eprintln!(
            "{repo} is not (wholly) in the cache; pulling it into {}",
            hub.cache_dir.display()
        );
    }
    Ok(pull(&repo, hub)?.snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> HubConfig {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let home = [("HOME", "/home/u")];
        assert_eq!(
            config(&home).cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            config(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]).cache_dir,
            PathBuf::from("/xdg/huggingface/hub")
        );
        assert_eq!(
            config(&[
                ("HOME", "/home/u"),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HF_HOME", "~/hf")
            ])
            .cache_dir,
            PathBuf::from("/home/u/hf/hub")
        );
        assert_eq!(
            config(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]).cache_dir,
            PathBuf::from("/legacy")
        );
        assert_eq!(
            config(&[
                ("HF_HOME", "/hf"),
                ("HUGGINGFACE_HUB_CACHE", "/legacy"),
                ("HF_HUB_CACHE", "/c")
            ])
            .cache_dir,
            PathBuf::from("/c")
        );
        // An empty variable counts as unset, as in huggingface_hub.
        assert_eq!(
            config(&[("HOME", "/home/u"), ("HF_HUB_CACHE", "")]).cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
    }

    #[test]
    fn endpoint_offline_token_and_timeouts() {
        let c = config(&[]);
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert!(!c.offline);
        assert_eq!(c.metadata_timeout, Duration::from_secs(10));
        let c = config(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_TOKEN", "hf_abc"),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "2.5"),
        ]);
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert!(c.offline);
        assert_eq!(c.token.as_deref(), Some("hf_abc"));
        assert_eq!(c.read_timeout, Duration::from_millis(2500));
        assert!(!format!("{c:?}").contains("hf_abc"), "Debug hides the token");
        for off in ["0", "false", "no", ""] {
            assert!(!config(&[("HF_HUB_OFFLINE", off)]).offline, "{off}");
        }
        for on in ["1", "ON", "true", "Yes"] {
            assert!(config(&[("HF_HUB_OFFLINE", on)]).offline, "{on}");
        }
    }

    #[test]
    fn token_file_is_read_when_hf_token_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_fromfile\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(config(&[("HF_HOME", home)]).token.as_deref(), Some("hf_fromfile"));
        assert_eq!(
            config(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
    }

    #[test]
    fn repo_ids() {
        for ok in [
            "openai/gpt-oss-safeguard-20b",
            "lmstudio-community/x-MLX-MXFP4",
            "a/b",
            "A_1/b.c",
        ] {
            assert!(valid_repo_id(ok), "{ok}");
        }
        for bad in [
            "gpt-oss", "a/b/c", "/b", "a/", "a--b/c", "a/b..c", "-a/b", "a/b.", "a b/c", "",
        ] {
            assert!(!valid_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn lookup_order_folder_alias_repo() {
        assert_eq!(
            lookup("safeguard-20b").unwrap(),
            ModelSource::Hub {
                repo: "lmstudio-community/gpt-oss-safeguard-20b-MLX-MXFP4".into(),
                alias: Some("safeguard-20b".into())
            }
        );
        assert_eq!(
            lookup("openai/gpt-oss-safeguard-20b").unwrap(),
            ModelSource::Hub {
                repo: "openai/gpt-oss-safeguard-20b".into(),
                alias: Some("safeguard-20b-original".into())
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        assert_eq!(
            lookup(path).unwrap(),
            ModelSource::Local(dir.path().to_path_buf())
        );
        match lookup("safeguard-7b").unwrap_err() {
            e @ HubError::UnknownModel { .. } => {
                let message = e.to_string();
                assert!(message.contains("safeguard-20b, safeguard-120b"), "{message}");
                assert!(e.is_usage());
            }
            e => panic!("{e}"),
        }
        assert!(matches!(
            lookup("./missing-folder"),
            Err(HubError::NotAFolder { .. })
        ));
        assert!(matches!(lookup("a/b/c"), Err(HubError::NotAFolder { .. })));
        let file = dir.path().join("config.json");
        std::fs::write(&file, "{}").unwrap();
        let e = lookup(file.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a model folder (it is a file)"), "{e}");
    }
}
