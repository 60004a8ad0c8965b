//! Checks a policy the way OpenAI's guide for the safeguard models advises
//! writing one: 400–600 tokens, instructions that state the output format
//! (and repeat it at the end), definitions, violating and safe criteria,
//! 4–6 examples covering both labels, no hedge words, and example answers
//! in the declared format. One place for the rules, so `policies lint`,
//! `eval` and the server say the same thing.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use super::front_matter::Output;
use super::policy::{Policy, RuleIds};
use super::verdict::{self, AnswerFormat, Keywords};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A short name for the rule, for filtering and the docs.
    pub rule: &'static str,
    /// The 1-based line of the policy file, when one line is to blame.
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lint {
    pub tokens: usize,
    /// True when no tokenizer was at hand and `tokens` is a byte-based estimate.
    pub estimated: bool,
    pub findings: Vec<Finding>,
}

impl Lint {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }

    /// One line: the size and the counts.
    pub fn summary(&self) -> String {
        format!(
            "lint: {}{} tokens, {} error(s), {} warning(s)",
            if self.estimated { "~" } else { "" },
            self.tokens,
            self.errors(),
            self.warnings()
        )
    }
}

/// The guide's range for a policy's length, in tokens.
pub const TOKENS_BEST: (usize, usize) = (400, 600);
/// Past this the guide finds quality falling off sharply.
pub const TOKENS_MAX: usize = 10_000;
/// How many examples the guide recommends.
pub const EXAMPLES: (usize, usize) = (4, 6);

/// Words that make a rule vague: the model has to guess where the line is.
const HEDGES: &[&str] = &[
    "generally",
    "usually",
    "typically",
    "often",
    "sometimes",
    "mostly",
    "normally",
    "probably",
    "possibly",
    "perhaps",
    "likely",
    "somewhat",
    "arguably",
    "in most cases",
    "tends to",
];

static HEDGE: LazyLock<Regex> = LazyLock::new(|| {
    let words: Vec<String> = HEDGES.iter().map(|w| regex::escape(w)).collect();
    Regex::new(&format!(r"(?i)\b(?:{})\b", words.join("|"))).expect("valid regex")
});
/// A sentence that tells the model how to answer.
static OUTPUT_INSTRUCTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:return|answer|output|respond|reply)\b.*(?:\b0\b|\b1\b|json|\blabel\b)")
        .expect("valid regex")
});

/// Which part of the template a heading opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Instructions,
    Definitions,
    Violates,
    Safe,
    Examples,
    Other,
}

fn part_of(heading: &str) -> Part {
    let h = heading.to_ascii_uppercase();
    if h.contains("INSTRUCTION") {
        Part::Instructions
    } else if h.contains("DEFINITION") || h.contains("KEY TERM") {
        Part::Definitions
    } else if h.contains("NOT VIOLATE") || h.contains("SAFE") {
        Part::Safe
    } else if h.contains("VIOLATE") {
        Part::Violates
    } else if h.contains("EXAMPLE") {
        Part::Examples
    } else {
        Part::Other
    }
}

/// Lints `source`, the policy file as written, which parsed as `policy`.
/// `tokens` is the policy text's length by the model's tokenizer, when one
/// is at hand; otherwise it is estimated.
pub fn lint(policy: &Policy, source: &str, tokens: Option<usize>) -> Lint {
    let mut findings = Vec::new();
    let mut add = |severity, rule, line, message: String| {
        findings.push(Finding {
            severity,
            rule,
            line,
            message,
        })
    };
    let (tokens, estimated) = match tokens {
        Some(n) => (n, false),
        // o200k averages about four bytes of English per token.
        None => (policy.text.len().div_ceil(4), true),
    };
    if tokens > TOKENS_MAX {
        add(
            Severity::Error,
            "tokens",
            None,
            format!(
                "{tokens} tokens: past {TOKENS_MAX} the model follows a policy poorly; cut it to 400-600"
            ),
        );
    } else if !(TOKENS_BEST.0..=TOKENS_BEST.1).contains(&tokens) {
        add(
            Severity::Warning,
            "tokens",
            None,
            format!(
                "{tokens} tokens: the guide finds {}-{} best; {}",
                TOKENS_BEST.0,
                TOKENS_BEST.1,
                if tokens < TOKENS_BEST.0 {
                    "add definitions and boundary examples"
                } else {
                    "tighten the wording"
                }
            ),
        );
    }

    // The file's lines after the front matter, with their numbers.
    let skip = policy
        .front_matter
        .as_ref()
        .map_or(0, |f| f.source.lines().count());
    let lines: Vec<(usize, &str)> = source
        .lines()
        .enumerate()
        .skip(skip)
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}')))
        .collect();

    let mut part = Part::Other;
    let mut seen = Vec::new();
    let mut stated: Option<usize> = None;
    let mut repeated = false;
    let mut answers: Vec<(usize, &str)> = Vec::new();
    for &(number, line) in &lines {
        let trimmed = line.trim();
        if let Some(heading) = trimmed.strip_prefix('#') {
            part = part_of(heading.trim_start_matches('#'));
            seen.push(part);
            continue;
        }
        if let Some(answer) = trimmed.strip_prefix("Answer:").map(str::trim) {
            if !answer.is_empty() {
                answers.push((number, answer));
                continue;
            }
        }
        // Example content is the user's text, not the policy's wording.
        if trimmed.starts_with("Content:") {
            continue;
        }
        if OUTPUT_INSTRUCTION.is_match(trimmed) {
            match stated {
                None if part == Part::Instructions => stated = Some(number),
                Some(_) if part != Part::Instructions => repeated = true,
                _ => {}
            }
        }
        for hedge in HEDGE.find_iter(trimmed) {
            add(
                Severity::Warning,
                "hedge",
                Some(number),
                format!(
                    "{:?} leaves the line to the model's guess; state when the rule applies",
                    hedge.as_str()
                ),
            );
        }
    }

    let parts = [
        (
            Part::Instructions,
            "instructions",
            "## INSTRUCTIONS: what to decide and the answer format",
            Severity::Error,
        ),
        (
            Part::Definitions,
            "definitions",
            "## DEFINITIONS: the key terms the rules use",
            Severity::Warning,
        ),
        (
            Part::Violates,
            "violates",
            "## VIOLATES (1): the rules that make content violate",
            Severity::Error,
        ),
        (
            Part::Safe,
            "safe",
            "## DOES NOT VIOLATE (0): what stays safe, especially near the line",
            Severity::Warning,
        ),
        (
            Part::Examples,
            "examples",
            "## EXAMPLES: 4-6 short cases with their answers",
            Severity::Warning,
        ),
    ];
    for (wanted, rule, fix, severity) in parts {
        if !seen.contains(&wanted) {
            add(severity, rule, None, format!("no {rule} section; add {fix}"));
        }
    }
    if seen.contains(&Part::Instructions) {
        match stated {
            None => add(
                Severity::Error,
                "output",
                None,
                "the instructions never say how to answer; state the format (e.g. \"Return exactly one character: 0 or 1\")".into(),
            ),
            Some(line) if !repeated => add(
                Severity::Warning,
                "output-repeated",
                Some(line),
                "the output format is stated once; repeat it at the end (e.g. \"Answer (0 or 1):\")".into(),
            ),
            Some(_) => {}
        }
    }

    let format = declared_format(policy);
    let keywords = Keywords::default().with_declared(policy.front_matter.as_ref());
    let rules = RuleIds::of(policy);
    let mut labels = [false; 2];
    for &(line, answer) in &answers {
        let verdict = verdict::parse(answer, &keywords);
        if let Some(label) = verdict.label {
            labels[usize::from(label)] = true;
        }
        let wrong = match (format, verdict.format) {
            _ if verdict.label.is_none() && !verdict.escalate => Some(format!(
                "the answer {answer:?} cannot be read: {}",
                verdict.parse_error.as_deref().unwrap_or("no label")
            )),
            (Output::Binary, AnswerFormat::Json) => Some(format!(
                "the answer {answer:?} is JSON but the policy asks for a bare answer"
            )),
            (Output::Json | Output::Categories, f) if f != AnswerFormat::Json => Some(format!(
                "the answer {answer:?} is not the JSON object the policy asks for"
            )),
            (Output::Categories, _) if verdict.label == Some(1) => match &verdict.policy_category {
                None => Some(format!("the answer {answer:?} names no \"policy_category\"")),
                Some(id) if rules.side(id) != Some(true) => Some(format!(
                    "the answer cites {id:?}, which no VIOLATES rule defines ({})",
                    rules.violating.join(", ")
                )),
                Some(_) => None,
            },
            _ => None,
        };
        if let Some(message) = wrong {
            add(Severity::Error, "example-format", Some(line), message);
        }
    }
    if seen.contains(&Part::Examples) || !answers.is_empty() {
        if !(EXAMPLES.0..=EXAMPLES.1).contains(&answers.len()) {
            add(
                Severity::Warning,
                "examples",
                None,
                format!(
                    "{} example answers (`Answer:` lines); the guide advises {}-{}",
                    answers.len(),
                    EXAMPLES.0,
                    EXAMPLES.1
                ),
            );
        }
        for (label, name) in [(1, "violating (1)"), (0, "safe (0)")] {
            if !labels[label] {
                add(
                    Severity::Warning,
                    "examples",
                    None,
                    format!("no {name} example; cover both labels"),
                );
            }
        }
    }
    findings.sort_by_key(|f| (f.line.is_some(), f.line));
    Lint {
        tokens,
        estimated,
        findings,
    }
}

/// The output format: the front matter's, else what the instructions ask
/// for (JSON when they mention it, a bare answer otherwise).
pub fn declared_format(policy: &Policy) -> Output {
    if let Some(output) = policy.front_matter.as_ref().and_then(|f| f.output) {
        return output;
    }
    let mut in_instructions = false;
    for line in policy.text.lines() {
        if let Some(heading) = line.trim().strip_prefix('#') {
            in_instructions = part_of(heading) == Part::Instructions;
        } else if in_instructions && line.to_ascii_lowercase().contains("json") {
            return if line.contains("policy_category") {
                Output::Categories
            } else {
                Output::Json
            };
        }
    }
    Output::Binary
}
