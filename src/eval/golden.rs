//! Labelled sets: JSONL (`{"id", "text" | "messages", "label"}`), CSV or TSV
//! with a header row. Every bad row is reported, not just the first, so a
//! set can be fixed in one pass.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::classify::input::{self, Item};
// Rule ids live with policies: lint and classify read them too.
pub use crate::classify::policy::RuleIds;

/// What a labelled example says the right answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gold {
    pub violates: bool,
    /// The rule id the label named (`SP2`), when it named one.
    pub category: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub item: Item,
    pub gold: Gold,
    /// Where it is in the file (the first line of a CSV record), for messages.
    pub line: usize,
}

/// Which CSV/TSV columns hold what. The text column defaults to `text`,
/// else `content`.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: Option<String>,
    pub label: String,
    pub id: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            text: None,
            label: "label".into(),
            id: "id".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{}", rows.iter().map(|(line, m)| format!("{}:{line}: {m}", path.display())).collect::<Vec<_>>().join("\n"))]
    Rows {
        path: PathBuf,
        rows: Vec<(usize, String)>,
    },
}

/// The labelled sets that ship beside the shipped policies, by policy name.
const SHIPPED: &[(&str, &str)] = &[
    ("spam", include_str!("../../policies/spam.eval.jsonl")),
    (
        "hate-harassment",
        include_str!("../../policies/hate-harassment.eval.jsonl"),
    ),
    ("self-harm", include_str!("../../policies/self-harm.eval.jsonl")),
    (
        "violent-threats",
        include_str!("../../policies/violent-threats.eval.jsonl"),
    ),
    ("pii", include_str!("../../policies/pii.eval.jsonl")),
    (
        "prompt-injection",
        include_str!("../../policies/prompt-injection.eval.jsonl"),
    ),
];

/// The labelled set shipped for a shipped policy: its file name and text.
pub fn shipped(policy: &str) -> Option<(String, &'static str)> {
    SHIPPED
        .iter()
        .find(|(name, _)| *name == policy)
        .map(|(name, text)| (format!("{name}.eval.jsonl"), *text))
}

/// Reads a labelled set: `.jsonl`/`.ndjson`, `.csv` or `.tsv`.
pub fn read(path: &Path, columns: &Columns, rules: &RuleIds) -> Result<Vec<Example>, Error> {
    let file_error = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        file_error(format!(
            "not UTF-8 text (byte {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(path, &text, columns, rules)
}

/// A labelled set's text; `path` names its kind (by extension) and is
/// used in messages.
pub fn parse(path: &Path, text: &str, columns: &Columns, rules: &RuleIds) -> Result<Vec<Example>, Error> {
    let file_error = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let rows = match extension.as_str() {
        "jsonl" | "ndjson" => jsonl_rows(text, rules),
        "csv" => delimited_rows(text, b',', columns, rules).map_err(file_error)?,
        "tsv" | "tab" => delimited_rows(text, b'\t', columns, rules).map_err(file_error)?,
        _ => {
            return Err(file_error(
                "unknown kind of labelled set: name it .jsonl, .csv or .tsv".into(),
            ))
        }
    };
    let mut problems = Vec::new();
    let mut examples = Vec::new();
    let mut seen = HashSet::new();
    for (line, row) in rows {
        match row {
            Ok(example) if !seen.insert(example.item.id.clone()) => problems.push((
                line,
                format!(
                    "id {:?} appears twice; give every example its own id",
                    example.item.id
                ),
            )),
            Ok(example) => examples.push(example),
            Err(message) => problems.push((line, message)),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Rows {
            path: path.to_path_buf(),
            rows: problems,
        });
    }
    if examples.is_empty() {
        return Err(file_error("no labelled examples: the file is empty".into()));
    }
    Ok(examples)
}

type Row = (usize, Result<Example, String>);

fn jsonl_rows(text: &str, rules: &RuleIds) -> Vec<Row> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        rows.push((number, json_example(line, number, rules)));
    }
    rows
}

fn json_example(line: &str, number: usize, rules: &RuleIds) -> Result<Example, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let item = input::json_item(&value, number)?;
    let gold = match value.get("label") {
        None | Some(Value::Null) => {
            return Err("no \"label\": give 0/1, true/false, safe/violating or a rule id".into())
        }
        Some(Value::Bool(b)) => Gold {
            violates: *b,
            category: None,
        },
        Some(Value::Number(n)) => parse_label(&n.to_string(), rules)?,
        Some(Value::String(s)) => parse_label(s, rules)?,
        Some(other) => {
            return Err(format!(
                "\"label\" is {other}; give 0/1, true/false, safe/violating or a rule id"
            ))
        }
    };
    Ok(Example {
        item,
        gold,
        line: number,
    })
}

fn delimited_rows(text: &str, delimiter: u8, columns: &Columns, rules: &RuleIds) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| format!("cannot read the header row: {e}"))?
        .clone();
    let find = |name: &str| header.iter().position(|h| h.trim() == name);
    let missing = |what: &str, name: &str, flag: &str| {
        format!(
            "no {what} column {name:?} in the header ({}); name it with {flag}",
            header.iter().collect::<Vec<_>>().join(", ")
        )
    };
    let text_col = match &columns.text {
        Some(name) => find(name).ok_or_else(|| missing("text", name, "--text-col"))?,
        None => find("text")
            .or_else(|| find("content"))
            .ok_or_else(|| missing("text", "text", "--text-col"))?,
    };
    let label_col = find(&columns.label).ok_or_else(|| missing("label", &columns.label, "--label-col"))?;
    let id_col = find(&columns.id);
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line() as usize);
                rows.push((line, Err(format!("cannot read this row: {e}"))));
                break;
            }
        }
        // A fully blank line is not a row.
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let line = record.position().map_or(line, |p| p.line() as usize);
        let row = (|| {
            if record.len() != header.len() {
                return Err(format!(
                    "{} fields where the header has {}; quote fields that hold the delimiter",
                    record.len(),
                    header.len()
                ));
            }
            let text = record.get(text_col).unwrap_or("");
            if text.trim().is_empty() {
                return Err("the text is empty".to_string());
            }
            let label = record.get(label_col).unwrap_or("");
            let id = match id_col.and_then(|c| record.get(c)) {
                Some(id) if !id.trim().is_empty() => id.trim().to_string(),
                _ => line.to_string(),
            };
            Ok(Example {
                item: Item {
                    id,
                    content: text.to_string(),
                },
                gold: parse_label(label, rules)?,
                line,
            })
        })();
        rows.push((line, row));
    }
    Ok(rows)
}

/// A label as written: 0/1, true/false, safe/violating, or a rule id of the policy.
fn parse_label(label: &str, rules: &RuleIds) -> Result<Gold, String> {
    let text = label.trim();
    let plain = |violates| {
        Ok(Gold {
            violates,
            category: None,
        })
    };
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "violating" | "violates" | "violation" => return plain(true),
        "0" | "false" | "safe" => return plain(false),
        "" => return Err("the label is empty; give 0/1, true/false, safe/violating or a rule id".into()),
        _ => {}
    }
    match rules.side(text) {
        Some(violates) => Ok(Gold {
            violates,
            category: Some(text.to_string()),
        }),
        None => Err(format!("label {text:?} is {}", UnknownLabel(rules))),
    }
}

struct UnknownLabel<'a>(&'a RuleIds);

impl fmt::Display for UnknownLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not 0/1, true/false, safe/violating")?;
        let ids = self.0;
        if ids.violating.is_empty() && ids.safe.is_empty() {
            f.write_str(", and the policy declares no rule ids")
        } else {
            write!(
                f,
                ", nor a rule id of the policy (violating: {}; safe: {})",
                ids.violating.join(", "),
                ids.safe.join(", ")
            )
        }
    }
}
