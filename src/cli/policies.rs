//! `safeguard policies`: the shipped policies, or one of them in full.

use anyhow::Result;

use super::UsageError;
use crate::classify::policy::{self, Policy};
use crate::classify::verdict::{parse, AnswerFormat, Keywords};

/// List the shipped policies, or print one to copy and adapt.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shipped policy to print in full (with its effort line).
    name: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(name) = args.name {
        let policy = Policy::find(&name).map_err(|e| UsageError(e.into()))?;
        if let Some(effort) = &policy.effort {
            println!("Reasoning: {effort}\n");
        }
        println!("{}", policy.text);
        return Ok(());
    }
    println!(
        "{:<18} {:<8} {:<7} {:>5}  TITLE",
        "NAME", "EFFORT", "ANSWER", "WORDS"
    );
    for p in policy::shipped() {
        println!(
            "{:<18} {:<8} {:<7} {:>5}  {}",
            p.name,
            p.effort.as_deref().unwrap_or("-"),
            answer_format(&p),
            p.text.split_whitespace().count(),
            p.title()
        );
    }
    println!("\nUse one with `--policy NAME`, or write your own and pass `--policy FILE`.");
    Ok(())
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
