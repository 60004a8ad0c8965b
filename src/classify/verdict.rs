//! Reading the model's answer (the final channel, never the reasoning) into a
//! verdict. Policies ask for a bare 0/1, a JSON object, `Label: 1`-style
//! text or keywords; the parser accepts each and reports what it could not.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::front_matter::{Declared, FrontMatter};

/// How the answer was written, as far as the parser could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerFormat {
    Json,
    Digit,
    LabelText,
    Keyword,
    Unparsed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// 1: violates the policy; 0: does not; None: the answer did not say,
    /// or it escalated.
    pub label: Option<u8>,
    /// The answer is one the policy declares as "escalate": a person should
    /// decide. Never a 0 or a 1.
    pub escalate: bool,
    pub policy_category: Option<String>,
    pub rule_ids: Vec<String>,
    /// The confidence the model stated (e.g. "high"), when it stated one.
    pub confidence: Option<String>,
    pub rationale: Option<String>,
    pub format: AnswerFormat,
    /// Why no label could be read, with enough detail to fix the policy.
    pub parse_error: Option<String>,
}

/// Words that carry a label, matched as whole words, case-insensitively;
/// an answer that is exactly one of them (`2`, `ESCALATE`) means it too.
#[derive(Debug, Clone)]
pub struct Keywords {
    pub violating: Vec<String>,
    pub safe: Vec<String>,
    pub escalate: Vec<String>,
    /// The fields a JSON answer must have, exactly (a front matter's
    /// `fields`); empty: any object with "violation".
    pub fields: Vec<String>,
}

impl Keywords {
    /// The defaults plus the answers a policy's front matter declares.
    pub fn with_declared(mut self, front: Option<&FrontMatter>) -> Keywords {
        if let Some(front) = front {
            self.violating.extend(front.violates.iter().cloned());
            self.safe.extend(front.safe.iter().cloned());
            self.escalate.extend(front.escalate.iter().cloned());
            self.fields.clone_from(&front.fields);
        }
        self
    }

    /// What an answer written as exactly one of the words means.
    fn exact(&self, answer: &str) -> Option<Declared> {
        let has = |list: &[String]| list.iter().any(|w| w.eq_ignore_ascii_case(answer));
        if has(&self.escalate) {
            Some(Declared::Escalate)
        } else if has(&self.violating) {
            Some(Declared::Violates)
        } else if has(&self.safe) {
            Some(Declared::Safe)
        } else {
            None
        }
    }
}

impl Default for Keywords {
    /// The vocabularies of published safeguard policies: INVALID/VALID (the
    /// spam example) and the template's VIOLATES / DOES NOT VIOLATE.
    fn default() -> Self {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        Keywords {
            violating: words(&["INVALID", "VIOLATES", "VIOLATION"]),
            safe: words(&["VALID", "DOES NOT VIOLATE", "NO VIOLATION"]),
            escalate: Vec::new(),
            fields: Vec::new(),
        }
    }
}

static CODE_FENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```$").expect("valid regex"));
static LABEL_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b(?:label|answer|verdict|violation|output|result)\b[*"']*\s*[:=]\s*["'(\[*]*\s*([01])\b"#,
    )
    .expect("valid regex")
});

/// Parses the final-channel text of one answer.
pub fn parse(answer: &str, keywords: &Keywords) -> Verdict {
    let mut verdict = parse_any(answer, keywords);
    if let Some(problem) = fields_problem(answer, &keywords.fields) {
        verdict.label = None;
        verdict.escalate = false;
        verdict.parse_error = Some(problem);
    }
    verdict
}

/// How an answer departs from the JSON fields the policy declares, if it does.
fn fields_problem(answer: &str, fields: &[String]) -> Option<String> {
    if fields.is_empty() {
        return None;
    }
    let declared = fields.join(", ");
    let Some(object) = json_object(strip_fences(answer.trim())) else {
        return Some(format!(
            "the policy asks for a JSON object with the fields {declared}; the answer is not one"
        ));
    };
    let missing: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !object.contains_key(*f))
        .collect();
    let extra: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !fields.iter().any(|f| f == k))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("lacks {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "has {} that the policy does not declare",
            extra.join(", ")
        ));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "the JSON answer {} (the policy's front matter declares the fields {declared})",
            problems.join(" and ")
        )
    })
}

fn parse_any(answer: &str, keywords: &Keywords) -> Verdict {
    let text = strip_fences(answer.trim());
    if let Some(object) = json_object(text) {
        let mut verdict = from_json(&object);
        let declared = match object.get("violation") {
            Some(Value::String(s)) => keywords.exact(s.trim()),
            Some(other) => keywords.exact(&other.to_string()),
            None => None,
        };
        if declared == Some(Declared::Escalate) {
            verdict.label = None;
            verdict.escalate = true;
            verdict.parse_error = None;
        }
        return verdict;
    }
    let mut verdict = Verdict {
        label: None,
        escalate: false,
        policy_category: None,
        rule_ids: Vec::new(),
        confidence: None,
        rationale: None,
        format: AnswerFormat::Unparsed,
        parse_error: None,
    };
    let digit = text.trim_end_matches(['.', '!']).trim();
    if let Some(declared) = keywords.exact(digit) {
        verdict.format = if digit.chars().all(|c| c.is_ascii_digit()) {
            AnswerFormat::Digit
        } else {
            AnswerFormat::Keyword
        };
        match declared {
            Declared::Escalate => verdict.escalate = true,
            Declared::Violates => verdict.label = Some(1),
            Declared::Safe => verdict.label = Some(0),
        }
    } else if digit == "0" || digit == "1" {
        verdict.label = Some(u8::from(digit == "1"));
        verdict.format = AnswerFormat::Digit;
    } else if let Some(captures) = LABEL_TEXT.captures(text) {
        verdict.label = Some(u8::from(&captures[1] == "1"));
        verdict.format = AnswerFormat::LabelText;
    } else if let Some(label) = lone_digit(text) {
        verdict.label = Some(label);
        verdict.format = AnswerFormat::Digit;
    } else {
        match keyword_label(text, keywords) {
            Ok(Some(declared)) => {
                match declared {
                    Declared::Escalate => verdict.escalate = true,
                    Declared::Violates => verdict.label = Some(1),
                    Declared::Safe => verdict.label = Some(0),
                }
                verdict.format = AnswerFormat::Keyword;
            }
            Ok(None) => {
                verdict.parse_error = Some(if text.is_empty() {
                    "the answer is empty".into()
                } else {
                    "no label found: expected 0 or 1, a JSON object with \"violation\", \"Label: 0|1\", \
                     or a policy keyword"
                        .into()
                })
            }
            Err(message) => verdict.parse_error = Some(message),
        }
    }
    verdict
}

fn strip_fences(text: &str) -> &str {
    CODE_FENCE
        .captures(text)
        .and_then(|c| c.get(1))
        .map_or(text, |m| m.as_str().trim())
}

/// The answer as a JSON object: all of it, or the outermost `{...}` in it.
fn json_object(text: &str) -> Option<Map<String, Value>> {
    let parse = |s: &str| match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    parse(text).or_else(|| {
        let (start, end) = (text.find('{')?, text.rfind('}')?);
        (start < end).then(|| parse(&text[start..=end])).flatten()
    })
}

fn from_json(object: &Map<String, Value>) -> Verdict {
    let string = |key: &str| match object.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let (label, parse_error) = match object.get("violation") {
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => (Some(0), None),
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => (Some(1), None),
        Some(Value::Bool(b)) => (Some(u8::from(*b)), None),
        Some(Value::String(s)) if matches!(s.trim(), "0" | "1") => (Some(u8::from(s.trim() == "1")), None),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => (Some(1), None),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => (Some(0), None),
        Some(other) => (None, Some(format!("\"violation\" is {other}, expected 0 or 1"))),
        None => (
            None,
            Some("the JSON answer has no \"violation\" field".to_string()),
        ),
    };
    let rule_ids = match object.get("rule_ids") {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        Some(Value::String(id)) => vec![id.clone()],
        _ => Vec::new(),
    };
    Verdict {
        label,
        escalate: false,
        policy_category: string("policy_category"),
        rule_ids,
        confidence: string("confidence"),
        rationale: string("rationale"),
        format: AnswerFormat::Json,
        parse_error,
    }
}

/// A label written as a lone 0 or 1 ("I'd say 1."), if the text has exactly
/// one such value. Numbers like 10 or 1.5 are not labels.
fn lone_digit(text: &str) -> Option<u8> {
    let mut labels = text
        .split(|c: char| !(c.is_alphanumeric() || c == '.'))
        .map(|word| word.trim_end_matches('.'))
        .filter(|word| *word == "0" || *word == "1");
    let first = labels.next()?;
    labels
        .all(|other| other == first)
        .then_some(u8::from(first == "1"))
}

fn word_pattern(word: &str) -> Regex {
    Regex::new(&format!(r"(?i)\b{}\b", regex::escape(word))).expect("an escaped word is a valid pattern")
}

/// The longest of `words` that occurs in `text` as whole words.
fn find_word<'w>(text: &str, words: &'w [String]) -> Option<&'w str> {
    let mut by_length: Vec<&String> = words.iter().collect();
    by_length.sort_by_key(|w| std::cmp::Reverse(w.len()));
    by_length
        .into_iter()
        .find(|w| word_pattern(w).is_match(text))
        .map(String::as_str)
}

fn keyword_label(text: &str, keywords: &Keywords) -> Result<Option<Declared>, String> {
    // A safe phrase may contain a violating word ("DOES NOT VIOLATE"): find
    // it first and blank it out before looking for the other sides.
    let safe = find_word(text, &keywords.safe);
    let rest = match safe {
        Some(word) => word_pattern(word).replace_all(text, " "),
        None => text.into(),
    };
    let found: Vec<(&str, Declared)> = [
        (safe, Declared::Safe),
        (find_word(&rest, &keywords.violating), Declared::Violates),
        (find_word(&rest, &keywords.escalate), Declared::Escalate),
    ]
    .into_iter()
    .filter_map(|(word, declared)| Some((word?, declared)))
    .collect();
    match found.as_slice() {
        [] => Ok(None),
        [(_, declared)] => Ok(Some(*declared)),
        [(a, _), (b, _), ..] => Err(format!("the answer names both {a:?} and {b:?}")),
    }
}
