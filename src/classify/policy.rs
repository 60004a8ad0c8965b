//! Policies: plain text or markdown that the model reads as its instructions.
//! A `Reasoning: low|medium|high` line at the top sets the effort; it is
//! lifted out of the text into the harmony system message, where the model
//! looks for it. A front matter block above it (see [`super::front_matter`])
//! declares what the answers mean.

use std::path::{Path, PathBuf};

use super::front_matter::{self, FrontMatter, Output};
use crate::harmony;

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
    /// The effort when the policy's first line sets it.
    pub effort: Option<harmony::Effort>,
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
        let (front_matter, text) = front_matter::split(text).map_err(|e| ParseError {
            line: Some(e.line),
            message: e.message,
        })?;
        let (effort, body) = match harmony::reasoning_line(text) {
            Some(line) => {
                let effort = line.effort.map_err(|_| {
                    ParseError::from(format!(
                        "\"{}\": reasoning effort must be low, medium or high",
                        line.line
                    ))
                })?;
                (Some(effort), line.rest)
            }
            None => (None, text),
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

    /// The sha256 of [`Policy::identity`]: what results and caches name it by.
    pub fn sha256(&self) -> String {
        sha256_hex(self.identity().as_bytes())
    }

    /// The file as written (front matter and effort line included), for
    /// linting: read again from its path, or the shipped text.
    pub fn source(&self) -> Result<String, Error> {
        match &self.path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| Error::Invalid {
                path: path.clone(),
                message: e.to_string(),
            }),
            None => shipped_source(&self.name)
                .map(str::to_string)
                .ok_or_else(|| Error::NotFound(self.name.clone())),
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

/// The rule ids a policy declares, by the section they sit in: `- SP2: …`
/// under a VIOLATES heading violates, `- SP0.a: …` under SAFE or DOES NOT
/// VIOLATE does not. Category labels in a set are read through these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleIds {
    pub violating: Vec<String>,
    pub safe: Vec<String>,
}

impl RuleIds {
    pub fn of(policy: &Policy) -> RuleIds {
        let mut ids = RuleIds::default();
        let mut section: Option<bool> = None;
        for line in policy.text.lines() {
            let line = line.trim();
            if let Some(heading) = line.strip_prefix('#') {
                let heading = heading.trim_start_matches('#').to_ascii_uppercase();
                section = if heading.contains("NOT VIOLATE") || heading.contains("SAFE") {
                    Some(false)
                } else if heading.contains("VIOLATE") {
                    Some(true)
                } else {
                    None
                };
                continue;
            }
            let (Some(violates), Some(rest)) = (section, line.strip_prefix("- ")) else {
                continue;
            };
            let Some((id, _)) = rest.split_once(':') else {
                continue;
            };
            let id = id.trim();
            let looks_like_id = !id.is_empty()
                && id.chars().any(|c| c.is_ascii_digit())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if looks_like_id {
                if violates {
                    ids.violating.push(id.to_string());
                } else {
                    ids.safe.push(id.to_string());
                }
            }
        }
        ids
    }

    /// The ids an answer cites (its `policy_category` and `rule_ids`) that
    /// the policy does not define; none when the policy defines no ids.
    pub fn undeclared(&self, category: Option<&str>, rule_ids: &[String]) -> Vec<String> {
        if self.violating.is_empty() && self.safe.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for id in category.into_iter().chain(rule_ids.iter().map(String::as_str)) {
            let id = id.trim();
            if !id.is_empty() && self.side(id).is_none() && !out.iter().any(|o| o == id) {
                out.push(id.to_string());
            }
        }
        out
    }

    /// Whether `id` violates: an id the policy declares, or a stem of ids
    /// that all sit on one side (`SP0` for `SP0.a` … `SP0.e`).
    pub(crate) fn side(&self, id: &str) -> Option<bool> {
        let matches = |ids: &[String]| {
            ids.iter().any(|d| {
                d.eq_ignore_ascii_case(id)
                    || d.get(..id.len())
                        .is_some_and(|stem| stem.eq_ignore_ascii_case(id))
                        && d[id.len()..].starts_with('.')
            })
        };
        match (matches(&self.violating), matches(&self.safe)) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn too_long(bytes: usize) -> String {
    format!(
        "the policy is {} KiB; keep it under {} KiB (the guide finds 400-600 tokens best)",
        bytes / 1024,
        MAX_POLICY_BYTES / 1024
    )
}

/// A shipped policy's file as it ships: effort line and all.
pub fn shipped_source(name: &str) -> Option<&'static str> {
    SHIPPED
        .iter()
        .find(|(shipped, _)| *shipped == name)
        .map(|(_, text)| *text)
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

/// A new policy in the guide's template, for `policies new`: every part the
/// linter looks for, with placeholders to replace and examples answered in
/// `output`'s format.
pub fn template(title: &str, output: Output) -> String {
    let (instruction, repeat, answers) = match output {
        Output::Binary => (
            "Return exactly one character: 0 or 1, or 2 when a person must decide. \
             Do not include any explanation or punctuation.",
            "Answer (0, 1 or 2):",
            ["1".to_string(), "1".to_string(), "0".to_string(), "0".to_string()],
        ),
        Output::Json | Output::Categories => (
            "Answer with one single-line JSON object with exactly these keys: \
             {\"violation\": 0|1|2, \"policy_category\": \"<rule id or null>\", \
             \"confidence\": \"low\"|\"medium\"|\"high\", \"rationale\": \"<one sentence>\"}. \
             Use 2 when a person must decide. No other text may surround it.",
            "Answer (one JSON object):",
            [
                json_answer(1, Some("XX1")),
                json_answer(1, Some("XX2")),
                json_answer(0, None),
                json_answer(0, None),
            ],
        ),
    };
    let examples: String = [
        "<violating content>",
        "<another violating content>",
        "<safe content near the line>",
        "<safe content quoting or reporting a violation>",
    ]
    .iter()
    .zip(&answers)
    .map(|(content, answer)| format!("Content: \"{content}\"\nAnswer: {answer}\n\n"))
    .collect();
    format!(
        "---\n\
         # What the answers mean to safeguard (not shown to the model).\n\
         output: {output}\n\
         violates: 1\n\
         safe: 0\n\
         escalate: 2\n\
         ---\n\
         Reasoning: medium\n\
         \n\
         # {title} Policy (XX)\n\
         \n\
         ## INSTRUCTIONS\n\
         Decide whether the content <what this policy judges>. {instruction}\n\
         Return 1 if any VIOLATES rule applies; otherwise return 0. \
         Precedence: <which rule wins when two apply>.\n\
         \n\
         ## DEFINITIONS\n\
         - <Key term>: <what it means here, concretely>.\n\
         - <Key term>: <what it means here, concretely>.\n\
         \n\
         ## VIOLATES (1)\n\
         - XX1: <a behaviour that violates, stated so it can be checked>.\n\
         - XX2: <another>.\n\
         \n\
         ## DOES NOT VIOLATE (0)\n\
         - XX0.a: <a look-alike that is safe, e.g. quoting, reporting or discussing a violation>.\n\
         - XX0.b: <another>.\n\
         \n\
         ## EXAMPLES\n\
         {examples}\
         {repeat}\n",
        output = output.name(),
    )
}

fn json_answer(violation: u8, category: Option<&str>) -> String {
    serde_json::json!({
        "violation": violation,
        "policy_category": category,
        "confidence": "high",
        "rationale": "<why, in one sentence>",
    })
    .to_string()
}
