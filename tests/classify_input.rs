//! Batch inputs and the resumable result log.

use safeguard_mlx::classify::input::{read_file, Error, ResultLog};
use serde_json::json;

#[test]
fn reads_jsonl_text_and_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"id\": \"a\", \"text\": \"hello\"}\n",
            "\n",
            "{\"id\": 7, \"text\": \"line\\nbreak <|end|>\"}\n",
            "{\"text\": \"no id\"}\n",
            "{\"id\": \"c\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"buy now\"}]}\n",
        ),
    )
    .unwrap();
    let items = read_file(&path).unwrap();
    let got: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.id.as_str(), i.content.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", "hello"),
            ("7", "line\nbreak <|end|>"),
            ("4", "no id"),
            ("c", "user: hi\nassistant: buy now"),
        ]
    );

    let txt = dir.path().join("items.txt");
    std::fs::write(&txt, "first\n\nthird {not json}\n").unwrap();
    let items = read_file(&txt).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[1].id.as_str(), items[1].content.as_str()),
        ("3", "third {not json}")
    );
}

#[test]
fn bad_input_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"id\": 1, \"text\": \"ok\"}\n{broken\n", 2, "invalid JSON"),
        (
            "{\"id\": 1, \"text\": \"a\"}\n{\"id\": 1, \"text\": \"b\"}\n",
            2,
            "twice",
        ),
        ("{\"id\": 1}\n", 1, "\"text\""),
        ("{\"id\": 1, \"text\": 5}\n", 1, "string"),
        ("[1, 2]\n", 1, "object"),
        ("{\"messages\": []}\n", 1, "empty"),
        ("{\"id\": [1], \"text\": \"x\"}\n", 1, "\"id\""),
    ];
    for (contents, line, message) in cases {
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, contents).unwrap();
        match read_file(&path) {
            Err(Error::Line {
                line: l, message: m, ..
            }) => {
                assert_eq!(l, line, "{contents:?}");
                assert!(m.contains(message), "{contents:?}: {m}");
            }
            other => panic!("{contents:?}: expected a line error, got {other:?}"),
        }
    }
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(read_file(&empty).unwrap_err().to_string().contains("empty"));
    assert!(read_file(&dir.path().join("missing.jsonl")).is_err());
}

#[test]
fn the_result_log_resumes_after_a_cut_off_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    std::fs::write(
        &path,
        "{\"id\":\"1\",\"label\":1}\n{\"id\":\"2\",\"label\":0}\n{\"id\":\"3\",\"lab",
    )
    .unwrap();
    let mut log = ResultLog::open(&path).unwrap();
    assert_eq!(log.done_count(), 2);
    assert!(log.is_done("1") && log.is_done("2") && !log.is_done("3"));
    log.append("3", &json!({"id": "3", "label": 1})).unwrap();
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, vec!["1", "2", "3"]);

    std::fs::write(&path, "not a result\n").unwrap();
    assert!(ResultLog::open(&path)
        .unwrap_err()
        .to_string()
        .contains("--output"));
}
