//! `safeguard classify`: judge text against a policy.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::UsageError;
use serde_json::Value;

use crate::classify::combine::combine;
use crate::classify::input::{self, Item, ResultLog};
use crate::classify::policy::Policy;
use crate::classify::run::{render_prompt, Classification, Classifier, ClassifyOptions};
use crate::classify::verdict::Keywords;
use crate::distributed;
use crate::engine::sampler::SamplerOptions;
use crate::harmony::Effort;
use crate::mlx::distributed::Group;
use crate::model::GptOss;
use crate::tokenizer::Tokenizer;

/// Classify text against a policy (or several): one text, a file, a JSONL batch or stdin.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Texts to classify; `-` reads one from stdin.
    texts: Vec<String>,
    /// A shipped policy (`safeguard policies`) or a policy file. Repeat it to judge each
    /// item against each policy; the combined verdict violates when any policy does.
    #[arg(short, long, required = true)]
    policy: Vec<String>,
    /// Items from a file: `.jsonl` ({"id", "text"} or {"id", "messages"}) or one per line.
    #[arg(short, long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Reasoning effort; default: the policy's `Reasoning:` line, else medium.
    #[arg(long, value_parser = clap::builder::ValueParser::new(str::parse::<Effort>))]
    effort: Option<Effort>,
    #[command(flatten)]
    run: RunArgs,
    /// One JSON object per item, one per line (with --dry-run: {"id", "prompt", "prompt_tokens"}).
    #[arg(long, alias = "jsonl")]
    json: bool,
    /// Append each finished item's JSON line here; a rerun skips ids already in it.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the rendered prompt and its token ids; do not run the model.
    #[arg(long)]
    dry_run: bool,
    /// Also print the model's reasoning.
    #[arg(long)]
    show_reasoning: bool,
    /// Exit with 1 when any item violates the policy.
    #[arg(long)]
    fail_on_violation: bool,
}

/// How items are classified: the model and its options, the same for every
/// command that classifies (`classify`, `eval`); each takes its own
/// `--effort` (`eval` may sweep several).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Model: a local folder, a catalog alias (`safeguard ls`) or a hub repo id.
    #[arg(short, long, default_value = "safeguard-20b")]
    pub model: String,
    /// Token budget for reasoning and answer; an answer cut off is reported, not guessed.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy and repeatable.
    #[arg(long = "temp", default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `Current date:` for the system message (YYYY-MM-DD); none by default.
    #[arg(long)]
    pub date: Option<String>,
    #[command(flatten)]
    pub engine: super::EngineArgs,
    /// Items decoded together (continuous batching; results identical to
    /// one at a time). 1 decodes one item at a time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    #[command(flatten)]
    pub distributed: super::DistributedArgs,
    #[command(flatten)]
    pub memory: super::MemoryArgs,
    /// Hold the answer to the policy's declared output (a 0/1 digit, its
    /// words, or its JSON object), written in time, so every item gets a verdict.
    #[arg(long)]
    pub constrain: bool,
}

impl RunArgs {
    /// Loads the model in `dir` to classify `items`, after the memory
    /// guardrail: budgeted for the prompt of the longest item (by bytes)
    /// and --max-tokens.
    pub(super) fn load<'i>(
        &self,
        dir: &Path,
        tokenizer: &Tokenizer,
        policies: &[Policy],
        options: &ClassifyOptions,
        items: impl Iterator<Item = &'i Item>,
    ) -> Result<GptOss> {
        let mut longest = 0;
        if let Some(item) = items.max_by_key(|item| item.content.len()) {
            for policy in policies {
                longest = longest.max(render_prompt(tokenizer, policy, options, &item.content)?.len());
            }
        }
        super::load_whole(dir, &self.engine, &self.memory, longest, self.max_tokens)
    }

    pub fn options(&self, effort: Option<Effort>) -> ClassifyOptions {
        ClassifyOptions {
            effort,
            date: self.date.clone(),
            max_tokens: self.max_tokens,
            sampler: SamplerOptions {
                temperature: self.temperature,
                seed: self.seed,
                ..Default::default()
            },
            prefill_step: self.engine.prefill_step(),
            keywords: Keywords::default(),
        }
    }
}

/// Exit status 1 with `--fail-on-violation`: not an error, a finding.
#[derive(Debug, thiserror::Error)]
#[error("policy violated by {0} item(s)")]
pub struct ViolationFound(pub usize);

/// The policies named by `--policy`, each once.
pub(super) fn find_policies(specs: &[String]) -> Result<Vec<Policy>> {
    let mut policies: Vec<Policy> = Vec::new();
    for spec in specs {
        let policy = Policy::find(spec)?;
        if let Some(twin) = policies.iter().find(|p| p.name == policy.name) {
            let same = if twin.identity() == policy.identity() {
                "is given twice"
            } else {
                "names two different policies"
            };
            anyhow::bail!(
                "--policy {spec:?}: the name {:?} {same}; results are told apart by name, so rename one file",
                policy.name
            );
        }
        policies.push(policy);
    }
    Ok(policies)
}

pub fn run(args: Args) -> Result<()> {
    let usage = |e: anyhow::Error| UsageError(e);
    let policies = find_policies(&args.policy).map_err(usage)?;
    let items = match &args.input {
        Some(path) => input::read_file(path),
        None if args.texts.is_empty() => {
            return Err(usage(anyhow::anyhow!(
                "nothing to classify: give texts, `-` for stdin, or --input FILE"
            ))
            .into())
        }
        None => input::from_args(&args.texts),
    }
    .map_err(|e| usage(e.into()))?;
    let model_dir = super::resolve_model(&args.run.model)?;
    let tokenizer = Tokenizer::load(&model_dir).map_err(|e| usage(e.into()))?;
    let options = args.run.options(args.effort);

    if args.dry_run {
        // Rendering needs the tokenizer only; the weights are not read.
        let named = policies.len() > 1;
        for policy in &policies {
            print_prompts(&tokenizer, policy, named, &options, &items, args.json)?;
        }
        return Ok(());
    }

    if let Some(group) = args.run.distributed.join_data()? {
        let [policy] = policies.as_slice() else {
            return Err(usage(anyhow::anyhow!(
                "--parallel data takes one --policy; run each policy on its own, or several without --parallel"
            ))
            .into());
        };
        return run_data(&args, &items, &model_dir, &tokenizer, policy, options, &group);
    }
    let model = args
        .run
        .load(&model_dir, &tokenizer, &policies, &options, items.iter())?;
    let mut classifier = Classifier::with_policies(&model, &tokenizer, &policies, options)?;
    if args.run.constrain {
        classifier.constrain(model.config.vocab_size as usize)?;
    }
    let mut log = args
        .output
        .as_deref()
        .map(ResultLog::open)
        .transpose()
        .map_err(|e| usage(e.into()))?;
    let todo: Vec<&Item> = items
        .iter()
        .filter(|item| log.as_ref().is_none_or(|l| !l.is_done(&item.id)))
        .collect();
    say_resumed(&args, log.as_ref(), items.len(), todo.len());

    let progress = progress_bar(todo.len());
    let mut stdout = std::io::stdout().lock();
    let colour = stdout.is_terminal();
    let mut violations = 0;
    // An item's policies are judged one after another, so each finishes soon after it starts.
    let pairs: Vec<(usize, &Item)> = todo
        .iter()
        .flat_map(|item| (0..policies.len()).map(move |p| (p, *item)))
        .collect();
    // Results are logged as items finish and printed in input order.
    let mut judged: Vec<Vec<Option<Classification>>> = vec![vec![None; policies.len()]; todo.len()];
    let mut finished: Vec<Option<(Value, Vec<Classification>)>> = vec![None; todo.len()];
    let mut printed = 0;
    classifier.classify_pairs(&pairs, args.run.batch_size as usize, |pair, result| {
        let (i, p) = (pair / policies.len(), pair % policies.len());
        judged[i][p] = Some(result);
        if judged[i].iter().any(Option::is_none) {
            return Ok(());
        }
        let results: Vec<Classification> = judged[i].iter_mut().filter_map(Option::take).collect();
        let json = match results.as_slice() {
            [one] => one.to_json(),
            all => combine(
                &todo[i].id,
                &policies
                    .iter()
                    .zip(all)
                    .map(|(p, r)| (p, r.to_json()))
                    .collect::<Vec<_>>(),
            ),
        };
        violations += usize::from(json["label"] == 1);
        if let Some(log) = &mut log {
            log.append(&todo[i].id, &json)?;
        }
        progress.inc(1);
        finished[i] = Some((json, results));
        while let Some((json, results)) = finished.get_mut(printed).and_then(Option::take) {
            printed += 1;
            progress.suspend(|| -> Result<()> {
                match results.as_slice() {
                    [one] => return print_result(&mut stdout, one, &args, colour),
                    _ if args.json => writeln!(stdout, "{json}")?,
                    all => print_combined(&mut stdout, &json, &policies, all, colour, args.show_reasoning)?,
                }
                Ok(stdout.flush()?)
            })?;
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    if args.fail_on_violation && violations > 0 {
        return Err(ViolationFound(violations).into());
    }
    Ok(())
}

/// On resuming an `--output` file, how much is left.
fn say_resumed(args: &Args, log: Option<&ResultLog>, items: usize, todo: usize) {
    if let (Some(path), Some(log)) = (&args.output, log) {
        if log.done_count() > 0 {
            eprintln!(
                "{}: {} items already done, {todo} to go",
                path.display(),
                items - todo
            );
        }
    }
}

fn print_result(out: &mut impl Write, result: &Classification, args: &Args, colour: bool) -> Result<()> {
    if args.json {
        writeln!(out, "{}", result.to_json())?;
    } else {
        print_human(
            out,
            &format!("[{}]", result.id),
            result,
            colour,
            args.show_reasoning,
            "",
        )?;
    }
    Ok(out.flush()?)
}

/// `--parallel data`: this rank classifies its share of the items; rank 0
/// alone reads and writes `--output` (the others may run on machines
/// without it) and prints every result in input order.
fn run_data(
    args: &Args,
    items: &[Item],
    model_dir: &Path,
    tokenizer: &Tokenizer,
    policy: &Policy,
    options: ClassifyOptions,
    group: &Group,
) -> Result<()> {
    let leader = group.rank() == 0;
    let mut log = match &args.output {
        Some(path) if leader => Some(ResultLog::open(path).map_err(|e| UsageError(e.into()))?),
        _ => None,
    };
    let left: Vec<usize> = (0..items.len())
        .filter(|&i| log.as_ref().is_none_or(|l| !l.is_done(&items[i].id)))
        .collect();
    let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
    let todo = distributed::data::agree(group, &ids, &left)?;
    say_resumed(args, log.as_ref(), items.len(), todo.len());
    if todo.is_empty() {
        return Ok(());
    }
    let model = args.run.load(
        model_dir,
        tokenizer,
        std::slice::from_ref(policy),
        &options,
        todo.iter().map(|&i| &items[i]),
    )?;
    super::data::announce(group);
    let mut classifier = Classifier::new(&model, tokenizer, policy, options)?;
    if args.run.constrain {
        classifier.constrain(model.config.vocab_size as usize)?;
    }
    let progress = if leader {
        progress_bar(todo.len())
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut stdout = std::io::stdout().lock();
    let colour = stdout.is_terminal();
    let mut violations = 0;
    let refs: Vec<&Item> = items.iter().collect();
    super::data::classify(group, &args.run, &mut classifier, &refs, &todo, |_, json| {
        let result = Classification::from_json(&json).map_err(|e| anyhow::anyhow!(e))?;
        violations += usize::from(result.violates());
        if let Some(log) = &mut log {
            log.append(&result.id, &json)?;
        }
        progress.inc(1);
        progress.suspend(|| print_result(&mut stdout, &result, args, colour))
    })?;
    progress.finish_and_clear();
    if args.fail_on_violation && violations > 0 {
        return Err(ViolationFound(violations).into());
    }
    Ok(())
}

pub(super) fn progress_bar(len: usize) -> indicatif::ProgressBar {
    if len < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} items  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    bar
}

fn painter(colour: bool) -> impl Fn(&str, &str) -> String {
    move |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

fn outcome_text(outcome: Option<&str>, paint: &impl Fn(&str, &str) -> String) -> String {
    match outcome {
        Some("escalate") => paint("1;35", "ESCALATE"),
        Some("violates") => paint("1;31", "VIOLATES (1)"),
        Some(_) => paint("1;32", "SAFE (0)"),
        None => paint("1;33", "NO VERDICT"),
    }
}

/// The combined verdict's line, then each policy's verdict under it.
fn print_combined(
    out: &mut impl Write,
    combined: &Value,
    policies: &[Policy],
    results: &[Classification],
    colour: bool,
    show_reasoning: bool,
) -> Result<()> {
    let paint = painter(colour);
    let mut line = format!(
        "[{}] {}",
        combined["id"].as_str().unwrap_or_default(),
        outcome_text(combined["outcome"].as_str(), &paint)
    );
    if let Some(p) = combined["confidence"].as_f64() {
        line.push_str(&format!("  p={p:.2}"));
    }
    writeln!(out, "{line}  ({} policies)", policies.len())?;
    for (policy, result) in policies.iter().zip(results) {
        print_human(
            out,
            &format!("  {}:", policy.name),
            result,
            colour,
            show_reasoning,
            "  ",
        )?;
    }
    Ok(())
}

/// One verdict: `head` (the item's id, or a policy's name) and the outcome
/// on a line, details under it indented by `indent` more.
fn print_human(
    out: &mut impl Write,
    head: &str,
    r: &Classification,
    colour: bool,
    show_reasoning: bool,
    indent: &str,
) -> Result<()> {
    let paint = painter(colour);
    let mut line = format!("{head} {}", outcome_text(r.outcome(), &paint));
    if let Some(category) = &r.verdict.policy_category {
        line.push_str(&format!("  {category}"));
    }
    if let Some(p) = r.confidence {
        line.push_str(&format!("  p={p:.2}"));
    }
    if let Some(stated) = &r.verdict.confidence {
        line.push_str(&format!("  stated={stated}"));
    }
    writeln!(out, "{line}")?;
    if !r.undeclared_ids.is_empty() {
        let ids = r.undeclared_ids.join(", ");
        writeln!(
            out,
            "{indent}    {}",
            paint("33", &format!("cites {ids}, which the policy does not define"))
        )?;
    }
    if let Some(rationale) = &r.verdict.rationale {
        writeln!(out, "{indent}    {rationale}")?;
    }
    if let Some(error) = &r.error {
        writeln!(out, "{indent}    {}", paint("33", error))?;
        if r.verdict.label.is_none() && !r.answer.is_empty() {
            writeln!(out, "{indent}    answer: {:?}", r.answer)?;
        }
    }
    if show_reasoning && !r.reasoning.is_empty() {
        for line in r.reasoning.lines() {
            writeln!(out, "{indent}    {}", paint("2", line))?;
        }
    }
    Ok(())
}

/// Each item's prompt under `policy`; `named` says which policy in each.
fn print_prompts(
    tokenizer: &Tokenizer,
    policy: &Policy,
    named: bool,
    options: &ClassifyOptions,
    items: &[Item],
    json: bool,
) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    for item in items {
        let prompt = render_prompt(tokenizer, policy, options, &item.content)?;
        let text = tokenizer.decode(&prompt)?;
        if json {
            let mut line = serde_json::json!({"id": item.id, "prompt": text, "prompt_tokens": prompt});
            if named {
                line["policy"] = policy.name.clone().into();
            }
            writeln!(stdout, "{line}")?;
            continue;
        }
        let which = if named {
            format!(" policy {}", policy.name)
        } else {
            String::new()
        };
        writeln!(stdout, "[{}]{which} {} tokens", item.id, prompt.len())?;
        writeln!(stdout, "{text}")?;
        let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    }
    Ok(())
}
