//! Results kept on disk between evals: one JSONL file per run key (model,
//! policy, effort, sampling, token budget, …), one line per item text,
//! appended and flushed as each item finishes. A rerun of an unchanged set
//! classifies nothing, an interrupted one resumes, and changing a key
//! starts a file of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::classify::input::{self, ResultLog};
pub use crate::classify::policy::sha256_hex;

/// Everything besides the item's text that its result depends on.
#[derive(Debug, Clone, Serialize)]
pub struct RunKey {
    /// [`super::manifest::model_fingerprint`] of the model's folder.
    pub model: String,
    pub policy_sha256: String,
    pub effort: String,
    pub temperature: f32,
    pub seed: u64,
    pub max_tokens: usize,
    pub date: Option<String>,
    pub dtype: String,
    /// Our quantized CPU kernels or MLX's: equal only to rounding, which
    /// can flip a greedy token.
    pub cpu_kernels: String,
    pub device: String,
    /// Left out when false, so that caches written before the flag existed
    /// stay valid.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub constrain: bool,
}

pub struct ResultCache {
    log: ResultLog,
    path: PathBuf,
    /// Result lines by the sha256 of the item's text.
    results: HashMap<String, Value>,
}

impl ResultCache {
    pub fn open(dir: &Path, key: &RunKey) -> Result<ResultCache, input::Error> {
        let file_error = |message: String| input::Error::File {
            path: dir.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| file_error(format!("cannot create the cache folder: {e}")))?;
        let key = serde_json::to_vec(key).expect("a run key serializes");
        let path = dir.join(format!("{}.jsonl", &sha256_hex(&key)[..32]));
        // Opening drops a last line cut off by a crash.
        let log = ResultLog::open(&path).map_err(|e| input::Error::File {
            path: path.clone(),
            message: format!("the eval cache is damaged ({e}); delete the file or run with --no-cache"),
        })?;
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
        let results = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|value| Some((value.get("id")?.as_str()?.to_string(), value)))
            .collect();
        Ok(ResultCache { log, path, results })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, text: &str) -> Option<&Value> {
        self.results.get(&sha256_hex(text.as_bytes()))
    }

    /// Stores a result; `result["id"]` must be the text's sha256.
    pub fn put(&mut self, result: Value) -> Result<(), input::Error> {
        let id = result["id"]
            .as_str()
            .expect("a cached result has its text's hash as id")
            .to_string();
        self.log.append(&id, &result)?;
        self.results.insert(id, result);
        Ok(())
    }
}
