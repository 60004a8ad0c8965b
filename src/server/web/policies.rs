//! `/v1/policies`: the shipped policies and the user's saved ones, each save
//! kept as a version (its text, sha256 and date), and `/v1/policies/lint`
//! with the rules of `safeguard policies lint`.
//!
//! Saved policies live only inside `--policies-dir`, one folder per name:
//! `NAME/v1.md`, `NAME/v2.md`, … and `NAME/versions.jsonl` (one line per
//! version). A name is a short slug, so no request can reach a path
//! outside that folder.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::classify::front_matter::Output;
use crate::classify::lint;
use crate::classify::policy::{self, Policy};
use crate::eval::cache::sha256_hex;
use crate::eval::manifest::utc_now;
use crate::server::error::{ApiError, Body};
use crate::server::Shared;

/// Longest policy name.
const NAME_MAX: usize = 64;

/// One saved version of a policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Version {
    pub version: u32,
    pub sha256: String,
    /// UTC, ISO 8601.
    pub date: String,
    pub bytes: usize,
}

/// The folder of saved policies; writes are serialised so two saves of one
/// name cannot take the same version number.
pub struct Store {
    dir: PathBuf,
    writing: Mutex<()>,
}

/// `NAME` when it is a slug (letters, digits, `-`, `_`; starting with a
/// letter or digit), else why not.
pub fn check_name(name: &str) -> Result<&str, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(ApiError::invalid_param(
            "name",
            format!(
                "{name:?} is not a policy name: use 1-{NAME_MAX} letters, digits, '-' or '_', \
                 starting with a letter or digit (e.g. my-spam-policy)"
            ),
        ))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot {what} {}: {e}", path.display()))
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store {
            dir,
            writing: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn folder(&self, name: &str) -> Result<PathBuf, ApiError> {
        Ok(self.dir.join(check_name(name)?))
    }

    /// The versions of `name`, oldest first; empty when it was never saved.
    pub fn versions(&self, name: &str) -> Result<Vec<Version>, ApiError> {
        let index = self.folder(name)?.join("versions.jsonl");
        let text = match std::fs::read_to_string(&index) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read", &index, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    ApiError::internal(format!(
                        "{}:{}: not a version record ({e}); fix or delete that line",
                        index.display(),
                        i + 1
                    ))
                })
            })
            .collect()
    }

    /// The text of version `version` of `name`.
    pub fn text(&self, name: &str, version: u32) -> Result<String, ApiError> {
        let path = self.folder(name)?.join(format!("v{version}.md"));
        std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ApiError::not_found(format!("policy {name:?} has no version {version}"))
            }
            _ => io_error("read", &path, e),
        })
    }

    /// Saves `text` as the next version of `name`, unless it equals the
    /// latest one; returns the version that holds it and whether it is new.
    pub fn save(&self, name: &str, text: &str) -> Result<(Version, bool), ApiError> {
        let folder = self.folder(name)?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let versions = self.versions(name)?;
        let sha256 = sha256_hex(text.as_bytes());
        if let Some(latest) = versions.last().filter(|v| v.sha256 == sha256) {
            return Ok((latest.clone(), false));
        }
        std::fs::create_dir_all(&folder).map_err(|e| io_error("create", &folder, e))?;
        let version = Version {
            version: versions.last().map_or(1, |v| v.version + 1),
            sha256,
            date: utc_now(),
            bytes: text.len(),
        };
        let file = folder.join(format!("v{}.md", version.version));
        std::fs::write(&file, text).map_err(|e| io_error("write", &file, e))?;
        let index = folder.join("versions.jsonl");
        let line = serde_json::to_string(&version).expect("a version serialises");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| io_error("write", &index, e))?;
        Ok((version, true))
    }

    /// Removes `name` and all its versions; false when there was none.
    pub fn delete(&self, name: &str) -> Result<bool, ApiError> {
        let folder = self.folder(name)?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("delete", &folder, e)),
        }
    }

    /// Names of the saved policies, sorted.
    pub fn names(&self) -> Result<Vec<String>, ApiError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("list", &self.dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("versions.jsonl").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// `$XDG_DATA_HOME/safeguard/policies`, else `~/.local/share/safeguard/policies`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("safeguard").join("policies"))
}

fn store(state: &Shared) -> &Store {
    &state.web().policies
}

/// `GET /v1/policies`: shipped and saved policies.
pub async fn list(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let store = store(&state);
    let saved = store
        .names()?
        .into_iter()
        .map(|name| {
            let versions = store.versions(&name)?;
            Ok(json!({"name": name, "latest": versions.last()}))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let shipped: Vec<Value> = policy::shipped()
        .iter()
        .map(|p| json!({"name": p.name, "title": p.title()}))
        .collect();
    let template = policy::template("My", Output::Binary);
    Ok(Json(
        json!({"shipped": shipped, "saved": saved, "template": template}),
    ))
}

/// `GET /v1/policies/{name}`: the latest saved version, else the shipped policy.
pub async fn get(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&state);
    let versions = store.versions(&name)?;
    if let Some(latest) = versions.last() {
        let text = store.text(&name, latest.version)?;
        return Ok(Json(json!({
            "name": name, "kind": "saved", "text": text, "version": latest, "versions": versions,
        })));
    }
    match policy::shipped_source(&name) {
        Some(text) => Ok(Json(json!({
            "name": name, "kind": "shipped", "text": text, "version": null, "versions": [],
        }))),
        None => Err(ApiError::not_found(format!(
            "no policy {name:?}: none saved under {} and none shipped ({})",
            store.dir().display(),
            policy::shipped_names().join(", ")
        ))),
    }
}

/// `GET /v1/policies/{name}/versions`.
pub async fn versions(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = store(&state).versions(&name)?;
    Ok(Json(json!({"name": name, "versions": versions})))
}

/// `GET /v1/policies/{name}/versions/{version}`.
pub async fn version(
    State(state): State<Shared>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let number: u32 = version.trim_start_matches('v').parse().map_err(|_| {
        ApiError::invalid_param(
            "version",
            format!("{version:?} is not a version number such as 3"),
        )
    })?;
    let store = store(&state);
    let record = store
        .versions(&name)?
        .into_iter()
        .find(|v| v.version == number)
        .ok_or_else(|| ApiError::not_found(format!("policy {name:?} has no version {number}")))?;
    let text = store.text(&name, number)?;
    Ok(Json(json!({"name": name, "version": record, "text": text})))
}

#[derive(Debug, Deserialize)]
pub struct SaveRequest {
    text: String,
}

/// `PUT /v1/policies/{name}` with `{"text"}`: a new version, 201, or the
/// latest when the text is unchanged, 200.
pub async fn put(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Body(request): Body<SaveRequest>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    // Only what `--policy FILE` would accept is saved.
    Policy::from_text(&name, &request.text).map_err(|e| ApiError::invalid_param("text", e))?;
    let (version, created) = store(&state).save(&name, &request.text)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"name": name, "version": version, "created": created})),
    )
        .into_response())
}

/// `DELETE /v1/policies/{name}`: the policy and all its versions.
pub async fn delete(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !store(&state).delete(&name)? {
        return Err(ApiError::not_found(format!("no saved policy {name:?}")));
    }
    Ok(Json(json!({"name": name, "deleted": true})))
}

#[derive(Debug, Deserialize)]
pub struct LintRequest {
    text: String,
}

/// `POST /v1/policies/lint` with `{"text"}`: the findings of `safeguard
/// policies lint --json`, tokens counted with the served model's tokenizer,
/// and `declared`, the answers the policy's front matter declares (or null).
pub async fn lint(
    State(state): State<Shared>,
    Body(request): Body<LintRequest>,
) -> Result<Json<Value>, ApiError> {
    let policy = Policy::from_text("draft", &request.text).map_err(|e| ApiError::invalid_param("text", e))?;
    let tokens = state
        .tokenizer()
        .encode_ordinary(&policy.text)
        .ok()
        .map(|ids| ids.len());
    let mut result =
        serde_json::to_value(lint::lint(&policy, &request.text, tokens)).expect("lint results serialise");
    result["declared"] = json!(policy.front_matter);
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_slugs_that_cannot_leave_the_folder() {
        for good in ["spam", "my-policy_2", "A1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "-x",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_changed_save_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("policies"));
        assert!(store.versions("p").unwrap().is_empty());
        let (v1, new1) = store.save("p", "one").unwrap();
        let (same, new_same) = store.save("p", "one").unwrap();
        let (v2, new2) = store.save("p", "two").unwrap();
        assert!(new1 && !new_same && new2);
        assert_eq!((v1.version, same.version, v2.version), (1, 1, 2));
        assert_eq!(v2.sha256, sha256_hex(b"two"));
        assert_eq!(store.text("p", 1).unwrap(), "one");
        assert_eq!(store.versions("p").unwrap(), vec![v1, v2]);
        assert_eq!(store.names().unwrap(), vec!["p".to_string()]);
        assert!(store.delete("p").unwrap());
        assert!(!store.delete("p").unwrap());
        assert!(store.names().unwrap().is_empty());
    }
}
