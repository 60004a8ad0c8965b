//! Items to classify: text arguments, stdin, a text file (one item per line)
//! or JSONL (`{"id": .., "text": ..}` or a `messages` conversation), and the
//! output file of an earlier, interrupted run whose items are not redone.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One thing to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    /// The content, as the user message of the classification prompt.
    pub content: String,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

/// Items from a file: `.jsonl` (or `.json` lines) as JSON objects, anything
/// else one item per non-empty line. Ids default to the line number.
pub fn read_file(path: &Path) -> Result<Vec<Item>, Error> {
    let file_error = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| file_error(e.to_string()))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson"));
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let item = if jsonl {
            parse_json_item(line, number).map_err(|message| Error::Line {
                path: path.to_path_buf(),
                line: number,
                message,
            })?
        } else {
            Item {
                id: number.to_string(),
                content: line.to_string(),
            }
        };
        if !seen.insert(item.id.clone()) {
            return Err(Error::Line {
                path: path.to_path_buf(),
                line: number,
                message: format!(
                    "id {:?} appears twice; ids must be unique to resume a batch",
                    item.id
                ),
            });
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(file_error("no items: the file is empty".into()));
    }
    Ok(items)
}

fn parse_json_item(line: &str, number: usize) -> Result<Item, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    json_item(&value, number)
}

/// The item of a JSON line already parsed; `number` is its default id.
pub(crate) fn json_item(value: &Value, number: usize) -> Result<Item, String> {
    let object = value
        .as_object()
        .ok_or("expected a JSON object with \"text\" or \"messages\"")?;
    let id = match object.get("id") {
        None | Some(Value::Null) => number.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("\"id\" must be a string or number, found {other}")),
    };
    let content = match (object.get("text"), object.get("messages")) {
        (Some(Value::String(text)), None) => text.clone(),
        (None, Some(messages)) => {
            let messages: Vec<ChatMessage> = serde_json::from_value(messages.clone())
                .map_err(|e| format!("\"messages\" must be a list of {{\"role\", \"content\"}}: {e}"))?;
            if messages.is_empty() {
                return Err("\"messages\" is empty".into());
            }
            transcript(&messages)
        }
        (Some(_), Some(_)) => return Err("give \"text\" or \"messages\", not both".into()),
        (Some(other), None) => return Err(format!("\"text\" must be a string, found {other}")),
        (None, None) => return Err("expected a \"text\" string or a \"messages\" list".into()),
    };
    Ok(Item { id, content })
}

/// A conversation to judge, written out as one transcript: the classifier
/// judges content in the user message, so the whole exchange goes there.
fn transcript(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Items given on the command line, or read from stdin for `-`.
pub fn from_args(texts: &[String]) -> Result<Vec<Item>, Error> {
    let mut items = Vec::new();
    for text in texts {
        if text == "-" {
            let mut stdin = String::new();
            std::io::stdin()
                .read_to_string(&mut stdin)
                .map_err(|e| Error::File {
                    path: "-".into(),
                    message: e.to_string(),
                })?;
            items.push(stdin.trim_end_matches('\n').to_string());
        } else {
            items.push(text.clone());
        }
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, content)| Item {
            id: (i + 1).to_string(),
            content,
        })
        .collect())
}

/// An output file that results are appended to, one JSON line per finished
/// item, flushed at once, so an interrupted batch restarts where it stopped.
#[derive(Debug)]
pub struct ResultLog {
    file: std::fs::File,
    path: PathBuf,
    done: HashSet<String>,
}

impl ResultLog {
    /// Opens (or creates) `path` and reads the ids already in it. A last line
    /// cut off by a crash is dropped, and its item is done again.
    pub fn open(path: &Path) -> Result<ResultLog, Error> {
        let file_error = |message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| file_error(e.to_string()))?;
        let mut done = HashSet::new();
        let mut complete = 0u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| file_error(e.to_string()))?;
            if read == 0 {
                break;
            }
            number += 1;
            if !line.ends_with('\n') {
                break; // cut off mid-write
            }
            let value: Value = serde_json::from_str(&line).map_err(|e| Error::Line {
                path: path.to_path_buf(),
                line: number,
                message: format!("not a result line ({e}); is this the right --output file?"),
            })?;
            match value.get("id").and_then(Value::as_str) {
                Some(id) => done.insert(id.to_string()),
                None => {
                    return Err(Error::Line {
                        path: path.to_path_buf(),
                        line: number,
                        message: "a result line without an \"id\"".into(),
                    })
                }
            };
            complete += read as u64;
        }
        drop(reader);
        file.set_len(complete).map_err(|e| file_error(e.to_string()))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| file_error(e.to_string()))?;
        Ok(ResultLog {
            file,
            path: path.to_path_buf(),
            done,
        })
    }

    pub fn is_done(&self, id: &str) -> bool {
        self.done.contains(id)
    }

    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Appends one result and flushes it to the file.
    pub fn append(&mut self, id: &str, line: &Value) -> Result<(), Error> {
        let mut text = line.to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::File {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        self.done.insert(id.to_string());
        Ok(())
    }
}
