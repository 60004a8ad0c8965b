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

    let group = args.run.distributed.join_data()?;
    // Under --parallel data only rank 0 reads and writes --output: the
    // others may run on machines without it.
    let leader = group.as_ref().is_none_or(|g| g.rank() == 0);
    let log = match &args.output {
        Some(path) if leader => Some(ResultLog::open(path).map_err(|e| usage(e.into()))?),
        _ => None,
    };
    let left: Vec<usize> = (0..items.len())
        .filter(|&i| log.as_ref().is_none_or(|l| !l.is_done(&items[i].id)))
        .collect();
    let todo = match &group {
        Some(group) => {
            let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
            distributed::data::agree(group, &ids, &left)?
        }
        None => left,
    };
    say_resumed(&args, log.as_ref(), items.len(), todo.len());
    if todo.is_empty() {
        return Ok(());
    }
    let model = args.run.load(
        &model_dir,
        &tokenizer,
        &policies,
        &options,
        todo.iter().map(|&i| &items[i]),
    )?;
    if let Some(group) = &group {
        super::data::announce(group);
    }
    let mut classifier = Classifier::with_policies(&model, &tokenizer, &policies, options)?;
    if args.run.constrain {
        classifier.constrain(model.config.vocab_size as usize)?;
    }
    let batch_size = args.run.batch_size as usize;
    let mut report = Report::new(&args, &policies, log, if leader { todo.len() } else { 0 });
    match &group {
        Some(group) => {
            // The unit of work stays the item, so --output resumes by id with any rank count.
            let judge = |mine: &[usize], done: &mut dyn FnMut(usize, Value) -> Result<()>| {
                let mine: Vec<&Item> = mine.iter().map(|&i| &items[i]).collect();
                judge_items(&mut classifier, &policies, &mine, batch_size, done)
            };
            super::data::classify(group, &args.run, &todo, judge, |i, record| {
                report.log(&items[i].id, &record)?;
                report.print(&record)
            })?;
        }
        None => {
            let todo: Vec<&Item> = todo.iter().map(|&i| &items[i]).collect();
            // Records are logged as items finish and printed in input order.
            let mut finished: Vec<Option<Value>> = vec![None; todo.len()];
            let mut printed = 0;
            judge_items(&mut classifier, &policies, &todo, batch_size, |i, record| {
                report.log(&todo[i].id, &record)?;
                finished[i] = Some(record);
                while let Some(record) = finished.get_mut(printed).and_then(Option::take) {
                    printed += 1;
                    report.print(&record)?;
                }
                Ok(())
            })?;
        }
    }
    report.finish()
}

/// Judges each item against every policy, an item's policies one after
/// another so each item finishes soon after it starts; `done` gets the
/// item's index and its record: the policy's result line, or with several
/// policies their combination. One process and every rank of `--parallel
/// data` make their records here, so both write the same.
fn judge_items(
    classifier: &mut Classifier<'_>,
    policies: &[Policy],
    items: &[&Item],
    batch_size: usize,
    mut done: impl FnMut(usize, Value) -> Result<()>,
) -> Result<()> {
    let pairs: Vec<(usize, &Item)> = items
        .iter()
        .flat_map(|item| (0..policies.len()).map(move |p| (p, *item)))
        .collect();
    let mut judged: Vec<Vec<Option<Value>>> = vec![vec![None; policies.len()]; items.len()];
    classifier.classify_pairs(&pairs, batch_size, |pair, result| {
        let (i, p) = (pair / policies.len(), pair % policies.len());
        judged[i][p] = Some(result.to_json());
        if judged[i].iter().any(Option::is_none) {
            return Ok(());
        }
        let mut lines: Vec<(&Policy, Value)> = policies
            .iter()
            .zip(judged[i].iter_mut().filter_map(Option::take))
            .collect();
        let record = match lines.len() {
            1 => lines.remove(0).1,
            _ => combine(&items[i].id, &lines),
        };
        done(i, record)
    })
}

/// Where each item's record goes: `--output`, the progress bar, stdout.
struct Report<'a> {
    args: &'a Args,
    policies: &'a [Policy],
    log: Option<ResultLog>,
    progress: indicatif::ProgressBar,
    stdout: std::io::StdoutLock<'static>,
    colour: bool,
    violations: usize,
}

impl<'a> Report<'a> {
    /// `items`: how many records the progress bar counts to.
    fn new(args: &'a Args, policies: &'a [Policy], log: Option<ResultLog>, items: usize) -> Report<'a> {
        let stdout = std::io::stdout().lock();
        Report {
            args,
            policies,
            log,
            progress: progress_bar(items),
            colour: stdout.is_terminal(),
            stdout,
            violations: 0,
        }
    }

    /// Counts a finished item and appends its record to `--output` at once,
    /// so a killed run keeps it.
    fn log(&mut self, id: &str, record: &Value) -> Result<()> {
        self.violations += usize::from(record["label"] == 1);
        if let Some(log) = &mut self.log {
            log.append(id, record)?;
        }
        self.progress.inc(1);
        Ok(())
    }

    fn print(&mut self, record: &Value) -> Result<()> {
        let Report {
            args,
            policies,
            progress,
            stdout,
            colour,
            ..
        } = self;
        let read = |line: &Value| Classification::from_json(line).map_err(|e| anyhow::anyhow!(e));
        progress.suspend(|| -> Result<()> {
            if args.json {
                writeln!(stdout, "{record}")?;
            } else if let [_] = policies {
                let result = read(record)?;
                let head = format!("[{}]", result.id);
                print_human(stdout, &head, &result, *colour, args.show_reasoning, "")?;
            } else {
                let results = record["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(read)
                    .collect::<Result<Vec<_>>>()?;
                print_combined(stdout, record, policies, &results, *colour, args.show_reasoning)?;
            }
            Ok(stdout.flush()?)
        })
    }

    fn finish(self) -> Result<()> {
        self.progress.finish_and_clear();
        if self.args.fail_on_violation && self.violations > 0 {
            return Err(ViolationFound(self.violations).into());
        }
        Ok(())
    }
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
