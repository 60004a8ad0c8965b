//! A policy's front matter: `key: value` lines between two `---` lines at
//! the very top of the file, declaring what its answers mean to safeguard.
//! The model never sees it. Hand-parsed rather than YAML so that every
//! error names its line and nothing beyond these few keys is accepted:
//!
//! ```text
//! ---
//! output: binary            # binary | categories | json
//! violates: 1, INVALID      # answers that mean "violates"
//! safe: 0, VALID            # answers that mean "safe"
//! escalate: 2, ESCALATE     # answers that mean "a person should decide"
//! fields: violation, rationale   # the JSON answer's fields, no more, no fewer
//! ---
//! ```

use serde::Serialize;

/// How a policy asks the model to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// One bare answer: `0`/`1` or a declared word.
    Binary,
    /// A JSON object whose `policy_category` names the violated rule id.
    Categories,
    /// A JSON object with a `violation` field.
    Json,
}

impl Output {
    pub const NAMES: &'static str = "binary, categories or json";

    pub fn parse(text: &str) -> Option<Output> {
        match text.trim().to_ascii_lowercase().as_str() {
            "binary" => Some(Output::Binary),
            "categories" => Some(Output::Categories),
            "json" => Some(Output::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Output::Binary => "binary",
            Output::Categories => "categories",
            Output::Json => "json",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FrontMatter {
    pub output: Option<Output>,
    pub violates: Vec<String>,
    pub safe: Vec<String>,
    pub escalate: Vec<String>,
    /// The fields a JSON answer must have, and the only ones it may have;
    /// empty when the policy does not say.
    pub fields: Vec<String>,
    /// The block as written, `---` lines included: part of the policy's
    /// identity (a changed mapping changes results) though not of its text.
    pub source: String,
}

/// A front matter error: the 1-based line of the file and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

const KEYS: &str = "output, violates, safe, escalate, fields";

/// Splits `text` into its front matter (None when the file does not start
/// with `---`) and the rest.
pub fn split(text: &str) -> Result<(Option<FrontMatter>, &str), LineError> {
    if text.lines().next().map(str::trim_end) != Some("---") {
        return Ok((None, text));
    }
    let mut front = FrontMatter::default();
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut offset = 0;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        offset += raw.len();
        let line = index + 1;
        if line == 1 {
            continue;
        }
        if raw.trim_end() == "---" {
            front.check_fields(&seen)?;
            front.source = text[..offset].to_string();
            return Ok((Some(front), &text[offset..]));
        }
        let content = raw.split_once(" #").map_or(raw, |(before, _)| before).trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let error = |message: String| LineError { line, message };
        let Some((key, value)) = content.split_once(':') else {
            return Err(error(format!(
                "{content:?} is not `key: value`; the keys are {KEYS}"
            )));
        };
        let key = key.trim().to_ascii_lowercase();
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            return Err(error(format!(
                "{key:?} is set again (first on line {first}); keep one"
            )));
        }
        seen.push((key.clone(), line));
        let values: Vec<String> = value
            .split(',')
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Err(error(format!(
                "{key:?} has no value; write e.g. `{key}: {}`",
                example(&key)
            )));
        }
        match key.as_str() {
            "output" => match values.as_slice() {
                [one] => {
                    front.output = Some(
                        Output::parse(one)
                            .ok_or_else(|| error(format!("output {one:?} is not {}", Output::NAMES)))?,
                    )
                }
                _ => return Err(error(format!("output takes one value: {}", Output::NAMES))),
            },
            "violates" | "safe" | "escalate" => {
                for (other, list) in front.answer_lists() {
                    if let Some(both) = values
                        .iter()
                        .find(|v| list.iter().any(|w| w.eq_ignore_ascii_case(v)))
                    {
                        return Err(error(format!(
                            "answer {both:?} is declared both {other} and {key}; an answer means one thing"
                        )));
                    }
                }
                match key.as_str() {
                    "violates" => front.violates = values,
                    "safe" => front.safe = values,
                    _ => front.escalate = values,
                }
            }
            "fields" => {
                if let Some(bad) = values
                    .iter()
                    .find(|v| !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                {
                    return Err(error(format!(
                        "field {bad:?} is not a JSON key name (letters, digits, _); list them as `fields: violation, rationale`"
                    )));
                }
                if let Some(twice) = values
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| values[..i].contains(v).then_some(v))
                {
                    return Err(error(format!("field {twice:?} is listed twice")));
                }
                front.fields = values;
            }
            _ => return Err(error(format!("unknown key {key:?}; the keys are {KEYS}"))),
        }
    }
    Err(LineError {
        line: 1,
        message: "the front matter opened here is never closed; end it with a `---` line".into(),
    })
}

fn example(key: &str) -> &'static str {
    match key {
        "output" => "binary",
        "violates" => "1",
        "safe" => "0",
        "fields" => "violation, rationale",
        _ => "2, ESCALATE",
    }
}

impl FrontMatter {
    /// Declared fields must carry the verdict and fit the output format.
    fn check_fields(&self, seen: &[(String, usize)]) -> Result<(), LineError> {
        let Some((_, line)) = seen.iter().find(|(k, _)| k == "fields") else {
            return Ok(());
        };
        let error = |message: String| Err(LineError { line: *line, message });
        if self.output == Some(Output::Binary) {
            return error("fields are those of a JSON answer, but `output: binary` asks for a bare one; use `output: json` or drop `fields`".into());
        }
        if !self.fields.iter().any(|f| f == "violation") {
            return error("fields must include \"violation\", the field that carries the verdict".into());
        }
        if self.output == Some(Output::Categories) && !self.fields.iter().any(|f| f == "policy_category") {
            return error("`output: categories` reads \"policy_category\"; add it to fields".into());
        }
        Ok(())
    }

    fn answer_lists(&self) -> [(&'static str, &Vec<String>); 3] {
        [
            ("violates", &self.violates),
            ("safe", &self.safe),
            ("escalate", &self.escalate),
        ]
    }
}

/// What a declared answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Violates,
    Safe,
    Escalate,
}
