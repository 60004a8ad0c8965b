//! The model folder's `tokenizer.json` through Hugging Face `tokenizers`.
//!
//! Text from users is encoded as ordinary text: a `<|end|>` typed into a
//! policy or a message stays those characters, never the control token.
//! Only the prompt renderer places control tokens, by id.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;

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
    /// Knows the added (special) tokens, to decode them and find their ids,
    /// but encodes their text as plain text: no control token from text.
    inner: tokenizers::Tokenizer,
    /// Ids of the added tokens: the control tokens, which text never encodes to.
    added: HashSet<u32>,
    /// Whether vocabulary entries are byte-level BPE strings (GPT-2's byte
    /// alphabet), as in every gpt-oss tokenizer.json.
    byte_level: bool,
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
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))?;
        // Reading special tokens as text keeps every added token out of encoded
        // text only when all are special, as in every gpt-oss file.
        let decoder = inner.get_added_tokens_decoder();
        if let Some(token) = decoder.values().find(|t| !t.special) {
            return Err(invalid(format!(
                "added token {:?} is not marked special; gpt-oss tokenizers mark every added token \
                 special (user text must never encode to one)",
                token.content
            )));
        }
        let added = decoder.keys().copied().collect();
        inner.set_encode_special_tokens(true);
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        Ok(Tokenizer {
            inner,
            added,
            byte_level,
        })
    }

    /// Ids of `text` as plain text (no control tokens recognised).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of a token such as `<|start|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is an added token (`<|end|>` and the other control tokens),
    /// which ordinary text never encodes to.
    pub fn is_control(&self, id: u32) -> bool {
        self.added.contains(&id)
    }

    /// Text of `ids`, control tokens written out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The bytes of one token, which may end inside a UTF-8 character; a
    /// control token gives its name (`<|end|>`). `None` for an id the
    /// tokenizer does not know.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let piece = self.inner.id_to_token(id)?;
        if self.is_control(id) {
            // An added token: its text as it is.
            return Some(piece.into_bytes());
        }
        if self.byte_level {
            piece.chars().map(byte_level_byte).collect()
        } else {
            self.decode(&[id]).ok().map(String::into_bytes)
        }
    }

    /// A decoder for tokens arriving one at a time.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }
}

/// The bytes that byte-level BPE shows as other characters: controls, space,
/// DEL, NBSP and the soft hyphen, in byte order. The n-th of them is shown as
/// U+0100 + n; every other byte as the Latin-1 character of the same value.
const SHIFTED_BYTES: [u8; 68] = {
    let mut bytes = [0u8; 68];
    let (mut b, mut n) = (0usize, 0usize);
    while b < 256 {
        if !shows_as_itself(b as u8) {
            bytes[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    bytes
};

const fn shows_as_itself(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The byte a character of a byte-level BPE vocabulary entry stands for.
fn byte_level_byte(c: char) -> Option<u8> {
    match u32::from(c) {
        code @ 0..=0xFF => shows_as_itself(code as u8).then_some(code as u8),
        code => SHIFTED_BYTES.get(code as usize - 0x100).copied(),
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
