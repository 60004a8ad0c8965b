//! Shipped policies follow the safeguard guide's template, and their own
//! example answers read back as the labels they state; policy files load with
//! their effort line lifted out, and bad files are named.

use safeguard_mlx::classify::policy::{self, Error, Policy};
use safeguard_mlx::classify::verdict::{parse, AnswerFormat, Keywords};
use safeguard_mlx::harmony::Effort;

#[test]
fn shipped_policies_follow_the_template() {
    let policies = policy::shipped();
    assert!(policies.len() >= 6);
    let mut json_answers = 0;
    for p in &policies {
        let name = &p.name;
        assert!(p.effort.is_some(), "{name}: sets its reasoning effort");
        assert!(
            !p.text.contains("Reasoning:"),
            "{name}: the effort line is lifted out"
        );
        let mut at = 0;
        for heading in [
            "# ",
            "## INSTRUCTIONS",
            "## DEFINITIONS",
            "## VIOLATES (1)",
            "## SAFE (0)",
            "## EXAMPLES",
        ] {
            let found = p.text[at..]
                .find(heading)
                .unwrap_or_else(|| panic!("{name}: {heading} missing or out of order"));
            at += found + heading.len();
        }
        let words = p.text.split_whitespace().count();
        assert!(
            (250..=600).contains(&words),
            "{name}: {words} words; the guide's sweet spot is 400-600 tokens"
        );

        // Each example's stated answer parses to a label, and both labels appear.
        let answers: Vec<&str> = p
            .text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Answer:"))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        assert!(
            (4..=6).contains(&answers.len()),
            "{name}: {} examples",
            answers.len()
        );
        let verdicts: Vec<_> = answers.iter().map(|a| parse(a, &Keywords::default())).collect();
        assert!(verdicts.iter().all(|v| v.label.is_some()), "{name}: {verdicts:?}");
        assert!(
            verdicts.iter().any(|v| v.label == Some(0)) && verdicts.iter().any(|v| v.label == Some(1)),
            "{name}"
        );
        if verdicts[0].format == AnswerFormat::Json {
            json_answers += 1;
            assert!(verdicts
                .iter()
                .all(|v| v.format == AnswerFormat::Json && v.confidence.is_some() && v.rationale.is_some()));
        } else {
            assert!(
                verdicts.iter().all(|v| v.format == AnswerFormat::Digit),
                "{name}: binary answers"
            );
        }
        assert_eq!(Policy::find(name).unwrap(), *p);
        assert!(!p.title().is_empty());
    }
    assert!(json_answers >= 2, "at least two policies answer in JSON");
}

#[test]
fn policy_files_load_with_their_effort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my-policy.md");
    std::fs::write(
        &path,
        "\u{feff}Reasoning: HIGH\n\n# Mine\n\nFlag <|end|> tricks. Answer 0 or 1.\n",
    )
    .unwrap();
    let policy = Policy::find(path.to_str().unwrap()).unwrap();
    assert_eq!(policy.name, "my-policy");
    assert_eq!(policy.effort, Some(Effort::High));
    assert_eq!(policy.text, "# Mine\n\nFlag <|end|> tricks. Answer 0 or 1.");
    assert_eq!(policy.path.as_deref(), Some(path.as_path()));

    std::fs::write(
        &path,
        "No effort line here.\nReasoning: low is only read at the top.",
    )
    .unwrap();
    let policy = Policy::from_file(&path).unwrap();
    assert_eq!(policy.effort, None);
    assert!(policy.text.contains("Reasoning: low"));
}

#[test]
fn bad_policies_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = Policy::find("no-such-policy").unwrap_err();
    assert!(matches!(err, Error::NotFound(_)));
    assert!(
        err.to_string().contains("spam") && err.to_string().contains("no-such-policy"),
        "{err}"
    );

    let cases: [(&str, &[u8], &str); 4] = [
        ("effort.md", b"Reasoning: extreme\n# P", "low, medium or high"),
        ("empty.md", b"  \n\n", "empty"),
        ("only-effort.md", b"Reasoning: low\n", "empty"),
        ("binary.md", b"\xff\xfe\x00garbage", "UTF-8"),
    ];
    for (file, contents, message) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, contents).unwrap();
        let err = Policy::find(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains(file) && err.contains(message), "{file}: {err}");
    }
    let huge = dir.path().join("huge.md");
    std::fs::write(&huge, "x".repeat(300 * 1024)).unwrap();
    assert!(Policy::from_file(&huge).unwrap_err().to_string().contains("KiB"));
}

#[test]
fn front_matter_declares_the_answers_and_stays_out_of_the_prompt() {
    use safeguard_mlx::classify::front_matter::Output;
    let text = "---\n# what the answers mean\noutput: json\nviolates: 1, \"INVALID\"  # quoted or not\n\
                safe: 0\nescalate: 2, ESCALATE\n---\nReasoning: high\n# Mine\nAnswer in JSON.\n";
    let policy = Policy::from_text("mine", text).unwrap();
    let front = policy.front_matter.as_ref().unwrap();
    assert_eq!(front.output, Some(Output::Json));
    assert_eq!(front.violates, ["1", "INVALID"]);
    assert_eq!(front.safe, ["0"]);
    assert_eq!(front.escalate, ["2", "ESCALATE"]);
    assert_eq!(policy.effort, Some(Effort::High));
    assert_eq!(policy.text, "# Mine\nAnswer in JSON.");
    // The mapping is part of what the policy is: a change to it is a new policy.
    assert_ne!(policy.identity(), policy.text);
    let plain = Policy::from_text("plain", "# Mine\nAnswer in JSON.").unwrap();
    assert_eq!(
        (&plain.front_matter, plain.identity()),
        (&None, plain.text.clone())
    );
    // A `---` rule later in the text is markdown, not front matter.
    let later = Policy::from_text("later", "# T\n---\nviolates: 1\n---\n").unwrap();
    assert_eq!(later.front_matter, None);
}

#[test]
fn front_matter_errors_name_the_file_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, usize, &str); 7] = [
        (
            "---\noutput: yaml\n---\n# P\n",
            "yaml",
            2,
            "binary, categories or json",
        ),
        (
            "---\nviolates: 1\ncolour: red\n---\n# P\n",
            "colour",
            3,
            "the keys are",
        ),
        ("---\nsafe 0\n---\n# P\n", "safe 0", 2, "key: value"),
        (
            "---\nsafe: 0\nsafe: 1\n---\n# P\n",
            "set again",
            3,
            "first on line 2",
        ),
        (
            "---\nescalate:\n---\n# P\n",
            "no value",
            2,
            "escalate: 2, ESCALATE",
        ),
        (
            "---\nviolates: 1, X\nescalate: x\n---\n# P\n",
            "\"x\"",
            3,
            "both violates and escalate",
        ),
        ("---\nviolates: 1\n# P\n", "never closed", 1, "`---`"),
    ];
    for (i, (text, what, line, fix)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("p{i}.md"));
        std::fs::write(&path, text).unwrap();
        let err = Policy::from_file(&path).unwrap_err();
        assert!(matches!(err, Error::AtLine { .. }), "{text:?}: {err}");
        let err = err.to_string();
        let at = format!("{}:{line}: ", path.display());
        assert!(
            err.starts_with(&at) && err.contains(what) && err.contains(fix),
            "{text:?}: {err}"
        );
    }
    assert!(Policy::from_text("p", "---\noutput: yaml\n---\n# P\n")
        .unwrap_err()
        .starts_with("line 2: "));
    let empty = dir.path().join("empty.md");
    std::fs::write(&empty, "---\nsafe: 0\n---\n\n").unwrap();
    assert!(Policy::from_file(&empty)
        .unwrap_err()
        .to_string()
        .contains("empty"));
}

#[test]
fn declared_fields_must_carry_the_verdict_and_fit_the_output() {
    let front = |fields: &str| format!("---\noutput: json\n{fields}\n---\n# P\nAnswer in JSON.\n");
    let ok = Policy::from_text("p", &front("fields: violation, rationale")).unwrap();
    let declared = ok.front_matter.unwrap().fields;
    assert_eq!(declared, ["violation", "rationale"]);
    for (text, line, what) in [
        (front("fields: rationale"), 3, "must include \"violation\""),
        (front("fields: violation, rule ids"), 3, "not a JSON key name"),
        (
            front("fields: violation, rationale, violation"),
            3,
            "listed twice",
        ),
        (
            "---\nfields: violation\noutput: binary\n---\n# P\n".to_string(),
            2,
            "`output: binary` asks for a bare one",
        ),
        (
            "---\noutput: categories\nfields: violation, rationale\n---\n# P\n".to_string(),
            3,
            "add it to fields",
        ),
    ] {
        let err = Policy::from_text("p", &text).unwrap_err();
        assert!(
            err.starts_with(&format!("line {line}: ")) && err.contains(what),
            "{text:?}: {err}"
        );
    }
}

mod lint_rules {
    use safeguard_mlx::classify::lint::{self, Severity};
    use safeguard_mlx::classify::policy::Policy;

    /// A policy that follows every piece of the guide's advice.
    const GOOD: &str = "---\noutput: binary\n---\n# Test Policy (TP)\n\n## INSTRUCTIONS\n\
        Decide whether the content sells something. Return exactly one character: 0 or 1.\n\n\
        ## DEFINITIONS\n- Sale: an offer of goods for money.\n\n\
        ## VIOLATES (1)\n- TP1: An offer to sell goods.\n\n\
        ## DOES NOT VIOLATE (0)\n- TP0.a: Talking about a purchase already made.\n\n\
        ## EXAMPLES\nContent: \"Selling my bike, 50 dollars\"\nAnswer: 1\n\n\
        Content: \"I usually buy bikes used\"\nAnswer: 0\n\n\
        Content: \"Cheap watches, DM me\"\nAnswer: 1\n\n\
        Content: \"My new bike is great\"\nAnswer: 0\n\nAnswer (0 or 1):\n";

    /// (rule, severity, line) of each finding.
    fn findings(text: &str, tokens: usize) -> Vec<(&'static str, Severity, Option<usize>)> {
        let policy = Policy::from_text("t", text).unwrap();
        lint::lint(&policy, text, Some(tokens))
            .findings
            .into_iter()
            .map(|f| (f.rule, f.severity, f.line))
            .collect()
    }

    fn line_of(text: &str, needle: &str) -> Option<usize> {
        text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
    }

    #[test]
    fn a_policy_that_follows_the_guide_is_clean() {
        // "usually" sits in an example's content: the user's words, not a rule.
        assert_eq!(findings(GOOD, 500), []);
        let policy = Policy::from_text("t", GOOD).unwrap();
        let result = lint::lint(&policy, GOOD, None);
        assert!(result.estimated);
        assert_eq!(result.tokens, policy.text.len().div_ceil(4));
    }

    #[test]
    fn token_counts_outside_the_guides_range_are_flagged() {
        assert_eq!(findings(GOOD, 399), [("tokens", Severity::Warning, None)]);
        assert_eq!(findings(GOOD, 601), [("tokens", Severity::Warning, None)]);
        assert_eq!(findings(GOOD, 400), []);
        assert_eq!(findings(GOOD, 10_000), [("tokens", Severity::Warning, None)]);
        assert_eq!(findings(GOOD, 10_001), [("tokens", Severity::Error, None)]);
    }

    #[test]
    fn each_missing_part_is_named() {
        let cases: [(&str, &str, &str, Severity); 5] = [
            ("## INSTRUCTIONS", "## TASK", "instructions", Severity::Error),
            ("## DEFINITIONS", "## NOTES", "definitions", Severity::Warning),
            ("## VIOLATES (1)", "## RULES", "violates", Severity::Error),
            ("## DOES NOT VIOLATE (0)", "## NOTES", "safe", Severity::Warning),
            ("## EXAMPLES", "## CASES", "examples", Severity::Warning),
        ];
        for (heading, other, rule, severity) in cases {
            let text = GOOD.replace(heading, other);
            assert_eq!(findings(&text, 500), [(rule, severity, None)], "{rule}");
        }
    }

    #[test]
    fn the_output_instruction_must_be_stated_and_repeated() {
        let text = GOOD.replace("Return exactly one character: 0 or 1.", "Be careful.");
        assert_eq!(findings(&text, 500), [("output", Severity::Error, None)]);
        let text = GOOD.replace("Answer (0 or 1):", "");
        let line = line_of(&text, "Return exactly one character");
        assert_eq!(
            findings(&text, 500),
            [("output-repeated", Severity::Warning, line)]
        );
    }

    #[test]
    fn hedge_words_are_reported_with_their_lines() {
        let text = GOOD
            .replace(
                "- TP1: An offer to sell goods.",
                "- TP1: An offer that is generally a sale.",
            )
            .replace("- Sale: an offer", "- Sale: Typically, and often, an offer");
        let (sale, tp1) = (line_of(&text, "- Sale"), line_of(&text, "- TP1"));
        assert_eq!(
            findings(&text, 500),
            [
                ("hedge", Severity::Warning, sale),
                ("hedge", Severity::Warning, sale),
                ("hedge", Severity::Warning, tp1),
            ]
        );
        // Whole words only: "oftener" or "unusually" are no hedges here.
        let text = GOOD.replace("an offer of goods", "an unusually cheap offer of goods");
        assert_eq!(findings(&text, 500), []);
    }

    #[test]
    fn examples_must_number_four_to_six_and_cover_both_labels() {
        let three = GOOD.replace("Content: \"Cheap watches, DM me\"\nAnswer: 1\n\n", "");
        assert_eq!(findings(&three, 500), [("examples", Severity::Warning, None)]);
        let one_label = GOOD.replace("Answer: 0", "Answer: 1");
        let found = findings(&one_label, 500);
        assert_eq!(found, [("examples", Severity::Warning, None)]);
        let policy = Policy::from_text("t", &one_label).unwrap();
        let message = &lint::lint(&policy, &one_label, Some(500)).findings[0].message;
        assert!(message.contains("no safe (0) example"), "{message}");
    }

    #[test]
    fn example_answers_must_match_the_declared_format() {
        // A JSON answer in a binary policy, and an answer that says nothing.
        let text = GOOD
            .replacen("Answer: 1", "Answer: {\"violation\": 1}", 1)
            .replacen("Answer: 0", "Answer: maybe", 1);
        let (json, maybe) = (line_of(&text, "{\"violation\""), line_of(&text, "maybe"));
        assert_eq!(
            findings(&text, 500),
            [
                ("example-format", Severity::Error, json),
                ("example-format", Severity::Error, maybe),
            ]
        );
        // Declared JSON: every bare answer is wrong.
        let text = GOOD.replace("output: binary", "output: json");
        let wrong = findings(&text, 500);
        assert_eq!(wrong.len(), 4);
        assert!(wrong.iter().all(|f| f.0 == "example-format"));
        // Declared categories: the answer must cite a rule the policy defines.
        let categories = GOOD
            .replace("output: binary", "output: categories")
            .replacen(
                "Answer: 1",
                "Answer: {\"violation\": 1, \"policy_category\": \"TP1\"}",
                1,
            )
            .replacen(
                "Answer: 1",
                "Answer: {\"violation\": 1, \"policy_category\": \"TP9\"}",
                1,
            )
            .replace(
                "Answer: 0",
                "Answer: {\"violation\": 0, \"policy_category\": null}",
            );
        let tp9 = line_of(&categories, "TP9");
        assert_eq!(
            findings(&categories, 500),
            [("example-format", Severity::Error, tp9)]
        );
        // Without front matter the format comes from the instructions.
        let inferred = categories.replace("---\noutput: categories\n---\n", "").replace(
            "Return exactly one character: 0 or 1.",
            "Answer with one JSON object: {\"violation\": 0|1, \"policy_category\": \"<id>\"}.",
        );
        let policy = Policy::from_text("t", &inferred).unwrap();
        assert_eq!(
            lint::declared_format(&policy),
            safeguard_mlx::classify::front_matter::Output::Categories
        );
        assert_eq!(
            findings(&inferred, 500),
            [("example-format", Severity::Error, line_of(&inferred, "TP9"))]
        );
    }

    #[test]
    fn example_answers_must_have_exactly_the_declared_fields() {
        let answer = |violation: u8, extra: &str| {
            format!("Answer: {{\"violation\": {violation}, \"rationale\": \"why\"{extra}}}")
        };
        let good = GOOD
            .replace("output: binary", "output: json\nfields: violation, rationale")
            .replace("Answer: 1", &answer(1, ""))
            .replace("Answer: 0", &answer(0, ""));
        assert_eq!(findings(&good, 500), []);
        // One answer with a field the policy does not declare, one without rationale.
        let bad = good
            .replacen(&answer(1, ""), &answer(1, ", \"severity\": \"high\""), 1)
            .replacen(&answer(0, ""), "Answer: {\"violation\": 0}", 1);
        let (extra, missing) = (line_of(&bad, "severity"), line_of(&bad, "{\"violation\": 0}"));
        assert_eq!(
            findings(&bad, 500),
            [
                ("example-format", Severity::Error, extra),
                ("example-format", Severity::Error, missing),
            ]
        );
        let policy = Policy::from_text("t", &bad).unwrap();
        let messages: Vec<String> = lint::lint(&policy, &bad, Some(500))
            .findings
            .into_iter()
            .map(|f| f.message)
            .collect();
        assert!(
            messages[0].contains("has severity that the policy does not declare"),
            "{messages:?}"
        );
        assert!(messages[1].contains("lacks rationale"), "{messages:?}");
    }
}

#[test]
fn answers_citing_ids_the_policy_does_not_define_are_flagged() {
    use safeguard_mlx::classify::policy::RuleIds;
    let pii = RuleIds::of(&Policy::find("pii").unwrap());
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        pii.undeclared(Some("PI2"), &ids(&["pi1", "PI0.a", "PI0"])),
        Vec::<String>::new()
    );
    assert_eq!(
        pii.undeclared(Some("PI9"), &ids(&["PI2", "XX1", "PI9"])),
        ids(&["PI9", "XX1"])
    );
    // A policy that defines no ids has nothing to check against.
    let none = RuleIds::of(&Policy::from_text("p", "# P\nAnswer 0 or 1.").unwrap());
    assert_eq!(none.undeclared(Some("ANY"), &[]), Vec::<String>::new());
}
