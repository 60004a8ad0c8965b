//! `safeguard policies`: the shipped policies; `new`, `show` and `lint`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::UsageError;
use crate::classify::front_matter::Output;
use crate::classify::lint::{self, Lint, Severity};
use crate::classify::policy::{self, Policy};
use crate::classify::verdict::{parse, AnswerFormat, Keywords};
use crate::hub::{self, HubConfig};
use crate::tokenizer::Tokenizer;

/// List the shipped policies, start a new one, print one, or check one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// A shipped policy to print in full (as `show NAME`).
    name: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write NAME.md from the template, ready to fill.
    New {
        /// The policy's name; the file is NAME.md unless NAME has an extension.
        name: String,
        /// How the model answers: a bare 0/1, JSON, or JSON naming the rule id.
        #[arg(long, default_value = "binary", value_parser = clap::builder::ValueParser::new(parse_output))]
        format: Output,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a shipped policy as it ships, to copy and adapt.
    Show { name: String },
    /// Check a policy file (or a shipped name) against the guide's advice.
    Lint {
        file: String,
        /// Exit 1 on warnings too, not only on errors.
        #[arg(long)]
        strict: bool,
        /// Count tokens with this model's tokenizer (taken from the local
        /// cache, never downloaded); default: the default model if cached,
        /// else an estimate.
        #[arg(short, long, default_value = "safeguard-20b")]
        model: String,
        /// Print the findings as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn parse_output(text: &str) -> Result<Output, String> {
    Output::parse(text).ok_or_else(|| format!("{text:?} is not {}", Output::NAMES))
}

/// Exit status 1: the policy has errors (or, with --strict, warnings).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LintFailed(pub String);

pub fn run(args: Args) -> Result<()> {
    match (args.command, args.name) {
        (Some(Command::New { name, format, force }), _) => new(&name, format, force),
        (Some(Command::Show { name }), _) | (None, Some(name)) => show(&name),
        (
            Some(Command::Lint {
                file,
                strict,
                model,
                json,
            }),
            _,
        ) => run_lint(&file, strict, &model, json),
        (None, None) => list(),
    }
}

fn list() -> Result<()> {
    println!(
        "{:<18} {:<8} {:<7} {:>5}  TITLE",
        "NAME", "EFFORT", "ANSWER", "WORDS"
    );
    for p in policy::shipped() {
        println!(
            "{:<18} {:<8} {:<7} {:>5}  {}",
            p.name,
            p.effort.map_or("-", |e| e.as_str()),
            answer_format(&p),
            p.text.split_whitespace().count(),
            p.title()
        );
    }
    println!(
        "\nUse one with `--policy NAME`, or start your own with `safeguard policies new NAME` and pass `--policy FILE`."
    );
    Ok(())
}

fn show(name: &str) -> Result<()> {
    let source = policy::shipped_source(name).ok_or_else(|| {
        UsageError(anyhow!(
            "{name:?} is not a shipped policy ({})",
            policy::shipped_names().join(", ")
        ))
    })?;
    print!("{source}");
    Ok(())
}

fn new(name: &str, format: Output, force: bool) -> Result<()> {
    let path = if Path::new(name).extension().is_some() {
        PathBuf::from(name)
    } else {
        PathBuf::from(format!("{name}.md"))
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            UsageError(anyhow!(
                "{name:?} is no file name; give a name such as `my-policy`"
            ))
        })?;
    if path.exists() && !force {
        return Err(UsageError(anyhow!(
            "{} exists; pick another name or pass --force to overwrite it",
            path.display()
        ))
        .into());
    }
    let title = title_case(&stem);
    std::fs::write(&path, policy::template(&title, format))
        .map_err(|e| UsageError(anyhow!("cannot write {}: {e}", path.display())))?;
    println!(
        "wrote {}: fill in the <...> parts, then `safeguard policies lint {}`",
        path.display(),
        path.display()
    );
    Ok(())
}

/// `my-policy` → `My Policy`.
fn title_case(name: &str) -> String {
    name.split(['-', '_', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_lint(spec: &str, strict: bool, model: &str, json: bool) -> Result<()> {
    let policy = Policy::find(spec).map_err(|e| UsageError(e.into()))?;
    let source = policy.source().map_err(|e| UsageError(e.into()))?;
    let shown = policy
        .path
        .as_ref()
        .map_or_else(|| policy.name.clone(), |p| p.display().to_string());
    let result = lint::lint(&policy, &source, count_tokens(model, &policy.text));
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
    } else {
        print_findings(&mut out, &shown, &result)?;
    }
    let failing = result.errors() + if strict { result.warnings() } else { 0 };
    if failing > 0 {
        return Err(LintFailed(format!(
            "{shown}: {} error(s), {} warning(s){}",
            result.errors(),
            result.warnings(),
            if strict { " (--strict)" } else { "" }
        ))
        .into());
    }
    Ok(())
}

/// `FILE:LINE: severity: message [rule]`, then the summary line.
pub(super) fn print_findings(out: &mut impl Write, file: &str, lint: &Lint) -> Result<()> {
    for f in &lint.findings {
        let place = f.line.map_or_else(|| file.to_string(), |l| format!("{file}:{l}"));
        let severity = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(out, "{place}: {severity}: {} [{}]", f.message, f.rule)?;
    }
    writeln!(
        out,
        "{}{}",
        lint.summary(),
        if lint.estimated {
            " (tokens estimated: no tokenizer in the local cache; pass -m MODEL)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// The policy text's length in the model's tokens, when the model's
/// tokenizer is already on this machine; linting never downloads.
pub(super) fn count_tokens(model: &str, text: &str) -> Option<usize> {
    let hub = HubConfig {
        offline: true,
        ..HubConfig::from_env()
    };
    let dir = hub::resolve(model, &hub).ok()?;
    let tokenizer = Tokenizer::load(&dir).ok()?;
    tokenizer.encode_ordinary(text).ok().map(|ids| ids.len())
}

/// How the policy's own examples answer: "json" or "0/1".
fn answer_format(policy: &Policy) -> &'static str {
    let example = policy
        .text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Answer:"))
        .unwrap_or("");
    match parse(example, &Keywords::default()).format {
        AnswerFormat::Json => "json",
        _ => "0/1",
    }
}
