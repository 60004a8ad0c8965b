//! The huggingface_hub cache, read side: where a repo's snapshot is, whether it holds
//! a whole model, and what is cached.
//!
//! Layout (huggingface_hub's, shared with mlx-lm and transformers):
//! ```text
//! <cache>/models--{org}--{name}/
//!     blobs/<etag>                       file contents (sha256 for LFS files, git sha1 otherwise)
//!     blobs/<etag>.incomplete            a download in progress (ours; resumable)
//!     refs/main                          the commit `main` pointed to, 40 hex, no newline
//!     snapshots/<commit>/<path>          relative symlink ../../blobs/<etag>
//! <cache>/.locks/models--{org}--{name}/<etag>.lock
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::HubError;

/// `models--org--name`: the repo's folder in the cache.
pub fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `revision` names in the cache: the revision itself when it is a
/// full commit hash, otherwise the content of `refs/<revision>`.
pub fn commit(cache_dir: &Path, repo: &str, revision: &str) -> Option<String> {
    if is_commit_hash(revision) {
        return Some(revision.to_string());
    }
    let reference = cache_dir.join(repo_folder(repo)).join("refs").join(revision);
    let commit = std::fs::read_to_string(reference).ok()?;
    let commit = commit.trim();
    is_commit_hash(commit).then(|| commit.to_string())
}

/// The cached snapshot folder of `repo` at `revision`, if there is one (whole or not).
pub fn snapshot(cache_dir: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let commit = commit(cache_dir, repo, revision)?;
    let dir = cache_dir.join(repo_folder(repo)).join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// The files a model folder lacks to be loaded: config.json, tokenizer.json, and the
/// weights (every shard the index names, or model.safetensors). Empty when whole.
pub fn missing_files(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(String::from)
        .collect();
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        match shards(&index) {
            Some(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
            None => missing.push("model.safetensors.index.json (unreadable)".into()),
        }
    } else if !dir.join("model.safetensors").is_file() {
        missing.push("model.safetensors or model.safetensors.index.json".into());
    }
    missing
}

/// The shard files a `model.safetensors.index.json` names, sorted.
pub(crate) fn shards(index: &Path) -> Option<Vec<String>> {
    let index: Value = serde_json::from_str(&std::fs::read_to_string(index).ok()?).ok()?;
    let mut shards: Vec<String> = index
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    Some(shards)
}

/// One model repo in the cache.
#[derive(Debug, Clone)]
pub struct CachedModel {
    pub repo: String,
    /// The commit of the snapshot below (`refs/main`'s, else the newest snapshot's).
    pub commit: String,
    pub snapshot: PathBuf,
    /// Bytes under `blobs/`, partial downloads included: what deleting the repo frees.
    pub size_on_disk: u64,
    /// What the snapshot lacks to be loadable ([`missing_files`]); empty when whole.
    pub missing: Vec<String>,
    /// `model_type` from config.json.
    pub model_type: Option<String>,
    /// See [`quantization`].
    pub quantization: Option<String>,
}

impl CachedModel {
    /// Whether this is a model `safeguard` runs (other architectures share the cache).
    pub fn is_gpt_oss(&self) -> bool {
        self.model_type.as_deref() == Some(crate::model::MODEL_TYPE)
    }
}

/// Every model repo in the cache that has a snapshot, sorted by repo id. A cache folder
/// that does not exist holds nothing.
pub fn scan(cache_dir: &Path) -> Result<Vec<CachedModel>, HubError> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HubError::io(cache_dir, e)),
    };
    let mut models = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HubError::io(cache_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("models--") else {
            continue;
        };
        let repo = rest.replace("--", "/");
        let repo_dir = entry.path();
        let Some((commit, snapshot)) = main_or_newest_snapshot(&repo_dir) else {
            continue;
        };
        let config: Option<Value> = std::fs::read_to_string(snapshot.join("config.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        models.push(CachedModel {
            repo,
            commit,
            size_on_disk: folder_size(&repo_dir.join("blobs")),
            missing: missing_files(&snapshot),
            model_type: config
                .as_ref()
                .and_then(|c| c.get("model_type")?.as_str().map(String::from)),
            quantization: quantization(&snapshot),
            snapshot,
        });
    }
    models.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(models)
}

/// `refs/main`'s snapshot, else the newest one (an interrupted pull has no ref yet).
pub(crate) fn main_or_newest_snapshot(repo_dir: &Path) -> Option<(String, PathBuf)> {
    let snapshots = repo_dir.join("snapshots");
    if let Some(commit) = std::fs::read_to_string(repo_dir.join("refs/main"))
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| snapshots.join(c).is_dir())
    {
        return Some((commit.clone(), snapshots.join(commit)));
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
}

fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// How a model folder's weights are stored, in words: `MXFP4`, `4-bit`, `8-bit` (MLX
/// conversions, from config.json's `quantization`), `MXFP4 experts, BF16 rest` (OpenAI's
/// original release, `quantization_config.quant_method`), or the float dtype of an
/// unquantized model (config.json's `torch_dtype`, else the first shard's tensors).
pub fn quantization(dir: &Path) -> Option<String> {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()?;
    if let Some(q) = config.get("quantization").filter(|q| q.is_object()) {
        let mode = q.get("mode").and_then(Value::as_str).unwrap_or("affine");
        return Some(match (mode, q.get("bits").and_then(Value::as_u64)) {
            ("affine", Some(bits)) => format!("{bits}-bit"),
            (mode, _) => mode.to_ascii_uppercase(),
        });
    }
    let dtype = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .and_then(Value::as_str)
        .map(|d| {
            match d {
                "bfloat16" => "BF16",
                "float16" => "F16",
                "float32" => "F32",
                other => other,
            }
            .to_string()
        })
        .or_else(|| weights_dtype(dir));
    let method = config
        .get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(Value::as_str);
    match method {
        Some(method) => Some(format!(
            "{} experts, {} rest",
            method.to_ascii_uppercase(),
            dtype.as_deref().unwrap_or("unknown")
        )),
        None => dtype,
    }
}

/// The most common float dtype among the tensors of the folder's first shard, read
/// from its safetensors header (8-byte little-endian length, then JSON).
fn weights_dtype(dir: &Path) -> Option<String> {
    let first = shards(&dir.join("model.safetensors.index.json"))
        .and_then(|s| s.into_iter().next())
        .unwrap_or_else(|| "model.safetensors".into());
    let mut file = std::fs::File::open(dir.join(first)).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header).ok()?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for dtype in header.values().filter_map(|t| t.get("dtype")?.as_str()) {
        if matches!(dtype, "BF16" | "F16" | "F32" | "F64") {
            *counts.entry(dtype).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(d, _)| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_and_refs() {
        assert_eq!(
            repo_folder("lmstudio-community/gpt-oss-safeguard-20b-MLX-MXFP4"),
            "models--lmstudio-community--gpt-oss-safeguard-20b-MLX-MXFP4"
        );
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--a--b");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        assert_eq!(snapshot(cache.path(), "a/b", "main"), None);
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        assert_eq!(
            snapshot(cache.path(), "a/b", "main"),
            Some(repo.join("snapshots").join(commit))
        );
        assert_eq!(commit_of(cache.path(), commit), Some(commit.to_string()));
        let models = scan(cache.path()).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].repo, "a/b");
        assert!(models[0].missing.contains(&"config.json".to_string()));
        assert!(scan(&cache.path().join("absent")).unwrap().is_empty());
    }

    fn commit_of(cache: &Path, commit: &str) -> Option<String> {
        super::commit(cache, "a/b", commit)
    }

    #[test]
    fn quantization_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let write = |config: &str| std::fs::write(dir.path().join("config.json"), config).unwrap();
        write(r#"{"quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"}}"#);
        assert_eq!(quantization(dir.path()).as_deref(), Some("MXFP4"));
        write(r#"{"quantization": {"group_size": 64, "bits": 8}}"#);
        assert_eq!(quantization(dir.path()).as_deref(), Some("8-bit"));
        write(r#"{"quantization_config": {"quant_method": "mxfp4"}, "torch_dtype": "bfloat16"}"#);
        assert_eq!(
            quantization(dir.path()).as_deref(),
            Some("MXFP4 experts, BF16 rest")
        );
        write(r#"{"model_type": "gpt_oss"}"#);
        assert_eq!(quantization(dir.path()), None);
        // The dtype of an unquantized model without torch_dtype comes from the weights.
        let header = br#"{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}"#;
        let mut shard = (header.len() as u64).to_le_bytes().to_vec();
        shard.extend_from_slice(header);
        shard.extend_from_slice(&[0, 0]);
        std::fs::write(dir.path().join("model.safetensors"), shard).unwrap();
        assert_eq!(quantization(dir.path()).as_deref(), Some("BF16"));
    }
}
