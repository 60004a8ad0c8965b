//! Verdict parsing: a table of final-channel answers in every style the
//! safeguard guide and LM Studio's template produce, and a property test that
//! no input makes it panic.

use proptest::prelude::*;
use safeguard_mlx::classify::verdict::{parse, AnswerFormat, Keywords};

use AnswerFormat::*;

#[test]
fn reads_labels_in_every_documented_style() {
    // (final-channel text, label, format)
    let table: &[(&str, Option<u8>, AnswerFormat)] = &[
        ("1", Some(1), Digit),
        ("0", Some(0), Digit),
        ("  1\n", Some(1), Digit),
        ("1.", Some(1), Digit),
        ("I'd say 1.", Some(1), Digit),
        ("The content does not match; 0", Some(0), Digit),
        ("Label: 1", Some(1), LabelText),
        ("label:0", Some(0), LabelText),
        ("**Label**: 1 because it advertises", Some(1), LabelText),
        ("Answer: 0", Some(0), LabelText),
        ("Verdict = 1 (SP2)", Some(1), LabelText),
        ("Label: \"1\"", Some(1), LabelText),
        (r#"{"violation": 1, "policy_category": "H2.f"}"#, Some(1), Json),
        (r#"{"violation": 0, "policy_category": null}"#, Some(0), Json),
        (r#"{"violation": "1"}"#, Some(1), Json),
        (r#"{"violation": "0"}"#, Some(0), Json),
        (r#"{"violation": true}"#, Some(1), Json),
        (r#"{"violation": false}"#, Some(0), Json),
        (r#"{"violation": 1.0}"#, Some(1), Json),
        (
            "```json\n{\"violation\": 1, \"rule_ids\": [\"SP2\"]}\n```",
            Some(1),
            Json,
        ),
        ("```\n{\"violation\": 0}\n```", Some(0), Json),
        (
            r#"Here is my answer: {"violation": 1, "confidence": "high"} Thanks."#,
            Some(1),
            Json,
        ),
        (r#"{"violation": 2}"#, None, Json),
        (r#"{"violation": "maybe"}"#, None, Json),
        (r#"{"policy_category": "SP1"}"#, None, Json),
        ("INVALID", Some(1), Keyword),
        ("VALID", Some(0), Keyword),
        ("This content is INVALID (SP3).", Some(1), Keyword),
        ("The message DOES NOT VIOLATE the policy.", Some(0), Keyword),
        ("It violates the policy", Some(1), Keyword),
        ("VALID or INVALID? Hard to say", None, Unparsed),
        ("0 or 1", None, Unparsed),
        ("", None, Unparsed),
        ("I cannot decide.", None, Unparsed),
        ("10 items were listed", None, Unparsed),
        ("Score 1.5", None, Unparsed),
        (r#"{"violation": 1"#, Some(1), LabelText),
    ];
    assert!(table.len() >= 30);
    for (text, label, format) in table {
        let verdict = parse(text, &Keywords::default());
        assert_eq!(
            (verdict.label, verdict.format),
            (*label, *format),
            "{text:?} -> {verdict:?}"
        );
        assert_eq!(
            verdict.label.is_none(),
            verdict.parse_error.is_some(),
            "{text:?}: an unread label says why"
        );
    }
}

#[test]
fn json_answers_pass_their_fields_through() {
    let verdict = parse(
        r#"{"violation": 1, "policy_category": "H2.f", "rule_ids": ["H2.d", "H2.f"], "confidence": "high", "rationale": "Targets a protected group."}"#,
        &Keywords::default(),
    );
    assert_eq!(verdict.label, Some(1));
    assert_eq!(verdict.policy_category.as_deref(), Some("H2.f"));
    assert_eq!(verdict.rule_ids, vec!["H2.d", "H2.f"]);
    assert_eq!(verdict.confidence.as_deref(), Some("high"));
    assert_eq!(verdict.rationale.as_deref(), Some("Targets a protected group."));

    let safe = parse(
        r#"{"violation": 0, "policy_category": null, "rule_ids": [], "confidence": 0.9}"#,
        &Keywords::default(),
    );
    assert_eq!(
        (safe.label, safe.policy_category, safe.confidence.as_deref()),
        (Some(0), None, Some("0.9"))
    );
}

#[test]
fn custom_keywords_replace_the_defaults() {
    let keywords = Keywords {
        violating: vec!["FLAG".into()],
        safe: vec!["PASS".into()],
        escalate: Vec::new(),
        fields: Vec::new(),
    };
    assert_eq!(parse("PASS", &keywords).label, Some(0));
    assert_eq!(parse("flag it", &keywords).label, Some(1));
    assert_eq!(parse("INVALID", &keywords).label, None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let verdict = parse(&text, &Keywords::default());
        prop_assert_eq!(verdict.label.is_none(), verdict.parse_error.is_some());
    }

    #[test]
    fn never_panics_on_json_like_text(text in r#"[\{\}\[\]":,01a-z \n`]{0,200}"#) {
        let _ = parse(&text, &Keywords::default());
    }
}

#[test]
fn answers_a_front_matter_declares_read_as_its_outcomes() {
    let front = "---\nviolates: 2, FLAG\nsafe: OK\nescalate: 3, ESCALATE\n---\n# P\nAnswer.\n";
    let policy = safeguard_mlx::classify::policy::Policy::from_text("p", front).unwrap();
    let keywords = Keywords::default().with_declared(policy.front_matter.as_ref());
    // (answer, label, escalate, format)
    let table: &[(&str, Option<u8>, bool, AnswerFormat)] = &[
        ("2", Some(1), false, Digit),
        ("flag.", Some(1), false, Keyword),
        ("OK", Some(0), false, Keyword),
        ("3", None, true, Digit),
        ("escalate", None, true, Keyword),
        ("I would ESCALATE this one", None, true, Keyword),
        (
            r#"{"violation": "escalate", "rationale": "unclear"}"#,
            None,
            true,
            Json,
        ),
        (r#"{"violation": 3}"#, None, true, Json),
        // The defaults still read.
        ("1", Some(1), false, Digit),
        ("0", Some(0), false, Digit),
    ];
    for &(answer, label, escalate, format) in table {
        let v = parse(answer, &keywords);
        assert_eq!(
            (v.label, v.escalate, v.format),
            (label, escalate, format),
            "{answer:?}"
        );
        assert_eq!(v.parse_error, None, "{answer:?}");
    }
    let both = parse("FLAG or ESCALATE?", &keywords);
    assert_eq!((both.label, both.escalate), (None, false));
    assert!(both.parse_error.unwrap().contains("both"));
    // Without the declaration, an escalation word is no answer.
    let plain = parse("ESCALATE", &Keywords::default());
    assert_eq!((plain.label, plain.escalate), (None, false));
    assert!(plain.parse_error.is_some());
}

#[test]
fn answers_must_have_exactly_the_fields_a_policy_declares() {
    let front = "---\noutput: json\nfields: violation, rationale\nescalate: 2\n---\n# P\nAnswer in JSON.\n";
    let policy = safeguard_mlx::classify::policy::Policy::from_text("p", front).unwrap();
    let keywords = Keywords::default().with_declared(policy.front_matter.as_ref());
    let good = parse(r#"{"violation": 1, "rationale": "sells followers"}"#, &keywords);
    assert_eq!((good.label, good.parse_error), (Some(1), None));
    assert_eq!(good.rationale.as_deref(), Some("sells followers"));
    let escalated = parse(
        r#"```json
{"rationale": "unclear", "violation": 2}
```"#,
        &keywords,
    );
    assert_eq!(
        (escalated.label, escalated.escalate, escalated.parse_error),
        (None, true, None)
    );
    // (answer, what the error must say): never a label, never an escalation.
    for (answer, says) in [
        (r#"{"violation": 1}"#, "lacks rationale"),
        (
            r#"{"violation": 0, "rationale": "fine", "confidence": "high"}"#,
            "has confidence that the policy does not declare",
        ),
        (r#"{"violation": 2, "score": 3}"#, "lacks rationale and has score"),
        ("1", "the answer is not one"),
        ("", "the answer is not one"),
    ] {
        let v = parse(answer, &keywords);
        assert_eq!((v.label, v.escalate), (None, false), "{answer:?}");
        let error = v.parse_error.unwrap_or_default();
        assert!(
            error.contains(says) && error.contains("violation, rationale"),
            "{answer:?}: {error}"
        );
    }
    // Without a declaration any object with "violation" reads.
    let free = parse(r#"{"violation": 1, "score": 3}"#, &Keywords::default());
    assert_eq!((free.label, free.parse_error), (Some(1), None));
}
