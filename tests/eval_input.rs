//! Labelled sets for `safeguard eval`: JSONL, CSV and TSV, every way of
//! writing a label, and an error naming file and line for every bad row.

use std::path::{Path, PathBuf};

use safeguard_mlx::classify::policy::Policy;
use safeguard_mlx::eval::golden::{read, Columns, Gold, RuleIds};

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn spam_rules() -> RuleIds {
    RuleIds::of(&Policy::find("spam").unwrap())
}

fn gold(violates: bool, category: Option<&str>) -> Gold {
    Gold {
        violates,
        category: category.map(str::to_string),
    }
}

#[test]
fn rule_ids_come_from_the_policys_sections() {
    let rules = spam_rules();
    assert_eq!(rules.violating, ["SP1", "SP2", "SP3", "SP4", "SP5"]);
    assert_eq!(rules.safe, ["SP0.a", "SP0.b", "SP0.c", "SP0.d", "SP0.e"]);
}

#[test]
fn jsonl_sets_take_every_way_of_writing_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "set.jsonl",
        concat!(
            "\u{feff}{\"id\": \"a\", \"text\": \"win a prize\", \"label\": 1}\n",
            "{\"id\": 7, \"text\": \"hello\", \"label\": 0}\n",
            "\n",
            "{\"id\": \"c\", \"text\": \"t\", \"label\": true}\n",
            "{\"id\": \"d\", \"text\": \"t\", \"label\": \"false\"}\n",
            "{\"id\": \"e\", \"text\": \"t\", \"label\": \"Violating\"}\n",
            "{\"id\": \"f\", \"text\": \"t\", \"label\": \"safe\"}\n",
            "{\"id\": \"g\", \"text\": \"t\", \"label\": \"SP2\"}\n",
            "{\"id\": \"h\", \"text\": \"t\", \"label\": \"sp0.b\"}\n",
            "{\"id\": \"i\", \"text\": \"t\", \"label\": \"SP0\"}\n",
            "{\"id\": \"j\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"buy now\"}], \"label\": \"1\"}\n",
        ),
    );
    let set = read(&path, &Columns::default(), &spam_rules()).unwrap();
    let got: Vec<(&str, &str, Gold, usize)> = set
        .iter()
        .map(|e| {
            (
                e.item.id.as_str(),
                e.item.content.as_str(),
                e.gold.clone(),
                e.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", "win a prize", gold(true, None), 1),
            ("7", "hello", gold(false, None), 2),
            ("c", "t", gold(true, None), 4),
            ("d", "t", gold(false, None), 5),
            ("e", "t", gold(true, None), 6),
            ("f", "t", gold(false, None), 7),
            ("g", "t", gold(true, Some("SP2")), 8),
            ("h", "t", gold(false, Some("sp0.b")), 9),
            ("i", "t", gold(false, Some("SP0")), 10),
            ("j", "user: hi\nassistant: buy now", gold(true, None), 11),
        ]
    );
}

#[test]
fn csv_fields_may_be_quoted_span_lines_and_follow_a_bom() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "set.csv",
        "\u{feff}id,text,label,note\n\
         1,plain,0,x\n\
         2,\"with, a comma and \"\"quotes\"\"\",1,y\n\
         3,\"two\nlines\",safe,z\n\
         4,after,violating,w\n",
    );
    let set = read(&path, &Columns::default(), &RuleIds::default()).unwrap();
    let got: Vec<(&str, &str, bool, usize)> = set
        .iter()
        .map(|e| {
            (
                e.item.id.as_str(),
                e.item.content.as_str(),
                e.gold.violates,
                e.line,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("1", "plain", false, 2),
            ("2", "with, a comma and \"quotes\"", true, 3),
            ("3", "two\nlines", false, 4),
            ("4", "after", true, 6),
        ]
    );
}

#[test]
fn tsv_columns_can_be_named_and_ids_default_to_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "set.tsv",
        "message\tgold\nfree money\t1\nsee you\t0\n",
    );
    let columns = Columns {
        text: Some("message".into()),
        label: "gold".into(),
        id: "id".into(),
    };
    let set = read(&path, &columns, &RuleIds::default()).unwrap();
    let got: Vec<(&str, &str, bool)> = set
        .iter()
        .map(|e| (e.item.id.as_str(), e.item.content.as_str(), e.gold.violates))
        .collect();
    assert_eq!(got, [("2", "free money", true), ("3", "see you", false)]);

    // `content` stands in for `text` when there is no `text` column.
    let path = write(dir.path(), "content.csv", "content,label\nhello,0\n");
    let set = read(&path, &Columns::default(), &RuleIds::default()).unwrap();
    assert_eq!(set[0].item.content, "hello");
}

#[test]
fn every_bad_row_is_named_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.jsonl",
        concat!(
            "{\"id\": \"a\", \"text\": \"ok\", \"label\": 1}\n",
            "{\"id\": \"b\", \"text\": \"no label\"}\n",
            "not json\n",
            "{\"id\": \"c\", \"text\": \"t\", \"label\": \"maybe\"}\n",
            "{\"id\": \"a\", \"text\": \"again\", \"label\": 0}\n",
            "{\"id\": \"d\", \"text\": \"t\", \"label\": \"SP9\"}\n",
            "{\"id\": \"e\", \"label\": 0}\n",
            "{\"id\": \"f\", \"text\": \"t\", \"label\": [1]}\n",
        ),
    );
    let message = read(&path, &Columns::default(), &spam_rules())
        .unwrap_err()
        .to_string();
    let file = path.display().to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 7, "{message}");
    let expect = [
        (2, "no \"label\""),
        (3, "invalid JSON"),
        (4, "label \"maybe\" is not 0/1, true/false, safe/violating, nor a rule id of the policy (violating: SP1, SP2, SP3, SP4, SP5; safe: SP0.a"),
        (5, "id \"a\" appears twice"),
        (6, "label \"SP9\""),
        (7, "\"text\""),
        (8, "\"label\" is [1]"),
    ];
    for (line, (number, text)) in lines.iter().zip(expect) {
        let prefix = format!("{file}:{number}: ");
        assert!(
            line.starts_with(&prefix) && line.contains(text),
            "{line:?} should start {prefix:?} and say {text:?}"
        );
    }

    let path = write(
        dir.path(),
        "bad.csv",
        "id,text,label\n1,fine,0\n2,,1\n3,\"quoted\nacross lines\",2\n4,too,many,fields\n",
    );
    let message = read(&path, &Columns::default(), &RuleIds::default())
        .unwrap_err()
        .to_string();
    let file = path.display().to_string();
    let expect = [
        (3, "the text is empty"),
        (
            4,
            "label \"2\" is not 0/1, true/false, safe/violating, and the policy declares no rule ids",
        ),
        (6, "4 fields where the header has 3"),
    ];
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), expect.len(), "{message}");
    for (line, (number, text)) in lines.iter().zip(expect) {
        let prefix = format!("{file}:{number}: ");
        assert!(
            line.starts_with(&prefix) && line.contains(text),
            "{line:?} should start {prefix:?} and say {text:?}"
        );
    }
}

#[test]
fn whole_file_problems_say_how_to_fix_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("set.txt", "x\n".as_bytes(), "name it .jsonl, .csv or .tsv"),
        ("empty.jsonl", b"\n\n", "no labelled examples"),
        ("latin1.csv", b"text,label\ncaf\xe9,0\n", "not UTF-8"),
        (
            "nolabel.csv",
            b"text,gold\nhi,0\n",
            "no label column \"label\" in the header (text, gold); name it with --label-col",
        ),
        (
            "notext.csv",
            b"body,label\nhi,0\n",
            "no text column \"text\" in the header (body, label); name it with --text-col",
        ),
    ];
    for (name, contents, message) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let error = read(&path, &Columns::default(), &RuleIds::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&path.display().to_string()) && error.contains(message),
            "{name}: {error}"
        );
    }
    let missing = dir.path().join("missing.jsonl");
    let error = read(&missing, &Columns::default(), &RuleIds::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing.jsonl"), "{error}");
}

#[test]
fn every_shipped_policy_has_a_balanced_set_covering_each_of_its_rules() {
    for policy in safeguard_mlx::classify::policy::shipped() {
        let (name, text) = safeguard_mlx::eval::golden::shipped(&policy.name)
            .unwrap_or_else(|| panic!("{} has no labelled set", policy.name));
        assert_eq!(name, format!("{}.eval.jsonl", policy.name));
        let rules = RuleIds::of(&policy);
        let set =
            safeguard_mlx::eval::golden::parse(Path::new(&name), text, &Columns::default(), &rules).unwrap();
        assert!(set.len() >= 40, "{name}: {} examples", set.len());
        let violating = set.iter().filter(|e| e.gold.violates).count();
        assert_eq!(
            violating * 2,
            set.len(),
            "{name}: {violating} of {} violate",
            set.len()
        );
        let mut texts: Vec<&str> = set.iter().map(|e| e.item.content.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), set.len(), "{name}: a text appears twice");
        // Each rule, violating or safe (quoted and reported violations among
        // them), labels at least one example.
        for id in rules.violating.iter().chain(&rules.safe) {
            assert!(
                set.iter()
                    .any(|e| e.gold.category.as_deref() == Some(id.as_str())),
                "{name}: no example of {id}"
            );
        }
    }
}
