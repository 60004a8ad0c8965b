//! Policies: plain text or markdown that the model reads as its instructions.
//! A `Reasoning: low|medium|high` line at the top sets the effort; it is
//! lifted out of the text into the harmony system message, where the model
//! looks for it. A front matter block above it (see [`super::front_matter`])
//! declares what the answers mean.

use std::path::{Path, PathBuf};

use super::front_matter::{self, FrontMatter};

/// The policies that ship with safeguard, embedded in the binary.
const SHIPPED: &[(&str, &str)] = &[
    ("spam", include_str!("../../policies/spam.md")),
    (
        "hate-harassment",
        include_str!("../../policies/hate-harassment.md"),
    ),
    ("self-harm", include_str!("../../policies/self-harm.md")),
    (
        "violent-threats",
        include_str!("../../policies/violent-threats.md"),
    ),
    ("pii", include_str!("../../policies/pii.md")),
    (
        "prompt-injection",
        include_str!("../../policies/prompt-injection.md"),
    ),
];

/// Policies longer than this are refused: the safeguard guide finds 400–600
/// tokens optimal and quality falling off well before this size.
const MAX_POLICY_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy {0:?} is neither a shipped policy ({shipped}) nor a file", shipped = shipped_names().join(", "))]
    NotFound(String),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    AtLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Why a policy's text was refused, and on which line when one is to blame.
struct ParseError {
    line: Option<usize>,
    message: String,
}

impl From<String> for ParseError {
    fn from(message: String) -> Self {
        ParseError { line: None, message }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The shipped name, or the file's stem.
    pub name: String,
    /// The instructions given to the model (the effort line removed).
    pub text: String,
    /// `low`, `medium` or `high` when the policy's first line sets it.
    pub effort: Option<String>,
    /// The file it came from; None for shipped policies.
    pub path: Option<PathBuf>,
    /// What its answers mean, when it declares it.
    pub front_matter: Option<FrontMatter>,
}

impl Policy {
    /// A shipped policy by name, else a file by path.
    pub fn find(spec: &str) -> Result<Policy, Error> {
        if let Some(policy) = Policy::named(spec) {
            return Ok(policy);
        }
        let path = Path::new(spec);
        if !path.exists() {
            return Err(Error::NotFound(spec.to_string()));
        }
        Policy::from_file(path)
    }

    /// A shipped policy by name; never a file.
    pub fn named(name: &str) -> Option<Policy> {
        SHIPPED
            .iter()
            .find(|(shipped, _)| *shipped == name)
            .map(|(name, text)| {
                Policy::parse(name, text, None)
                    .map_err(|e| e.message)
                    .expect("shipped policies are valid")
            })
    }

    /// A policy given as text (in a request, say), checked as a file's is.
    pub fn from_text(name: &str, text: &str) -> Result<Policy, String> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(too_long(text.len()));
        }
        Policy::parse(name, text, None).map_err(|e| match e.line {
            Some(line) => format!("line {line}: {}", e.message),
            None => e.message,
        })
    }

    pub fn from_file(path: &Path) -> Result<Policy, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(invalid(too_long(bytes.len())));
        }
        let text = String::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8 text: {e}")))?;
        let name = path
            .file_stem()
            .map_or_else(|| "policy".into(), |s| s.to_string_lossy().into_owned());
        Policy::parse(&name, &text, Some(path)).map_err(|e| match e.line {
            Some(line) => Error::AtLine {
                path: path.to_path_buf(),
                line,
                message: e.message,
            },
            None => invalid(e.message),
        })
    }

    fn parse(name: &str, text: &str, path: Option<&Path>) -> Result<Policy, ParseError> {
        let text = text.trim_start_matches('\u{feff}');
        let (front_matter, text, _) = front_matter::split(text).map_err(|e| ParseError {
            line: Some(e.line),
            message: e.message,
        })?;
        let first = text.lines().find(|line| !line.trim().is_empty()).unwrap_or("");
        let effort = match first.trim().strip_prefix("Reasoning:") {
            Some(value) => {
                let value = value.trim().to_ascii_lowercase();
                if !matches!(value.as_str(), "low" | "medium" | "high") {
                    return Err(ParseError::from(format!(
                        "\"{}\": reasoning effort must be low, medium or high",
                        first.trim()
                    )));
                }
                Some(value)
            }
            None => None,
        };
        let body = match effort {
            Some(_) => text.split_once(first).map_or("", |(_, rest)| rest),
            None => text,
        };
        let body = body.trim();
        if body.is_empty() {
            return Err(ParseError::from("the policy is empty".to_string()));
        }
        Ok(Policy {
            name: name.to_string(),
            text: body.to_string(),
            effort,
            path: path.map(Path::to_path_buf),
            front_matter,
        })
    }

    /// What identifies the policy's behaviour: its text and its front
    /// matter (which changes what an answer means). Without front matter,
    /// the text alone, so earlier caches and baselines stay valid.
    pub fn identity(&self) -> String {
        match &self.front_matter {
            Some(front) => format!("{}{}", front.source, self.text),
            None => self.text.clone(),
        }
    }

    /// Its `# Title` line, for listings.
    pub fn title(&self) -> &str {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix("# "))
            .unwrap_or(&self.name)
    }
}

fn too_long(bytes: usize) -> String {
    format!(
        "the policy is {} KiB; keep it under {} KiB (the guide finds 400-600 tokens best)",
        bytes / 1024,
        MAX_POLICY_BYTES / 1024
    )
}

pub fn shipped_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(name, _)| *name).collect()
}

/// Every shipped policy.
pub fn shipped() -> Vec<Policy> {
    SHIPPED
        .iter()
        .filter_map(|(name, _)| Policy::named(name))
        .collect()
}
