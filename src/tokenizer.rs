//! The model folder's `tokenizer.json` through Hugging Face `tokenizers`.
//!
//! Text from users is encoded as ordinary text: a `<|end|>` typed into a
//! policy or a message stays those characters, never the control token.
//! Only the prompt renderer places control tokens, by id.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not found: a model folder needs its tokenizer.json")]
    Missing { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub struct Tokenizer {
    /// With the added (special) tokens: decodes them and finds their ids.
    full: tokenizers::Tokenizer,
    /// Without added tokens, so encoding never produces a control token.
    ordinary: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing { path: path.clone() },
            _ => Error::Invalid {
                path: path.clone(),
                message: e.to_string(),
            },
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.clone(),
            message,
        };
        let full = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut json: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        json["added_tokens"] = Value::Array(Vec::new());
        let ordinary = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Tokenizer { full, ordinary })
    }

    /// Ids of `text` as plain text (no control tokens recognised).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .ordinary
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of a token such as `<|start|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.full.token_to_id(token)
    }

    /// Text of `ids`, control tokens written out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.full
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// A decoder for tokens arriving one at a time.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }
}

/// Turns a token stream into text without ever splitting a UTF-8 character:
/// tokens whose bytes end mid-character are held until it completes.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u32>,
}

impl StreamDecoder<'_> {
    /// The text that `token` completes, possibly empty.
    pub fn push(&mut self, token: u32) -> Result<String> {
        self.pending.push(token);
        let text = self.tokenizer.decode(&self.pending)?;
        // A character spans at most 4 bytes, so at most 4 tokens: past that
        // the bytes are invalid, not incomplete, and are shown as they are.
        if text.ends_with(char::REPLACEMENT_CHARACTER) && self.pending.len() < 4 {
            return Ok(String::new());
        }
        self.pending.clear();
        Ok(text)
    }

    /// Whatever is held back at the end of generation.
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.pending)?;
        self.pending.clear();
        Ok(text)
    }
}
