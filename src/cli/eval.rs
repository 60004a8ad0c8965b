//! `safeguard eval`: a policy measured on labelled examples.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde_json::Value;

use super::classify::{progress_bar, RunArgs};
use super::UsageError;
use crate::classify::combine::combine;
use crate::classify::input::Item;
use crate::classify::lint;
use crate::classify::policy::Policy;
use crate::classify::run::{self, Classifier, ClassifyOptions};
use crate::eval::cache::{sha256_hex, ResultCache, RunKey};
use crate::eval::compare::{self, Baseline};
use crate::eval::golden::{self, Columns, Example, RuleIds};
use crate::eval::html;
use crate::eval::manifest::{self, FileInfo, Manifest, ModelInfo};
use crate::eval::metrics;
use crate::eval::report::{self, Cost, Evaluation, Gate};
use crate::eval::results::{self, Outcome};
use crate::harmony::Effort;
use crate::mlx;
use crate::mlx::distributed::Group;
use crate::tokenizer::Tokenizer;

/// Measure a policy on labelled examples: metrics with intervals, every
/// mistake, cost; with gate flags, fail a CI run that falls short.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A shipped policy (`safeguard policies`) or a policy file. Repeat it to score the
    /// combined verdict (violates when any policy does) and each policy alone.
    #[arg(short, long, required = true)]
    policy: Vec<String>,
    /// The labelled set: `.jsonl` ({"id", "text" | "messages", "label"}), `.csv` or `.tsv` with a
    /// header; default for a shipped policy: the set shipped beside it.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Compare with an earlier run: the `--json` output of `safeguard eval` on the same set.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Score this `classify --output` file instead of running the model.
    #[arg(long, conflicts_with = "parallel")]
    results: Option<PathBuf>,
    /// CSV/TSV column holding the text; default `text`, else `content`.
    #[arg(long)]
    text_col: Option<String>,
    #[arg(long, default_value = "label")]
    label_col: String,
    #[arg(long, default_value = "id")]
    id_col: String,
    /// Reasoning effort; default: the policy's `Reasoning:` line, else medium. Several
    /// (`low,medium,high`) sweep them: one run each, compared in a table.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::ValueParser::new(str::parse::<Effort>))]
    effort: Vec<Effort>,
    #[command(flatten)]
    run: RunArgs,
    /// Print the whole evaluation as one JSON object (schema in the README).
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (curves, mistakes, manifest).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Also report the threshold on P(violation) that reaches this recall.
    #[arg(long, value_parser = unit_interval)]
    target_recall: Option<f64>,
    /// Exit 1 when precision is below this.
    #[arg(long, value_parser = unit_interval)]
    min_precision: Option<f64>,
    /// Exit 1 when recall is below this.
    #[arg(long, value_parser = unit_interval)]
    min_recall: Option<f64>,
    /// Exit 1 when F1 is below this.
    #[arg(long, value_parser = unit_interval)]
    min_f1: Option<f64>,
    /// Exit 1 when more answers than this could not be read (parse failures and cut-offs).
    #[arg(long)]
    max_parse_failures: Option<u64>,
    /// Where results are kept between runs; default $XDG_CACHE_HOME/safeguard/eval
    /// (~/.cache/safeguard/eval).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Classify every item again and keep nothing.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

fn unit_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// Exit status 1: the gate's limits were not met. Not an error, a finding.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|m| format!("gate failed: {m}")).collect::<Vec<_>>().join("\n"))]
pub struct GateFailed(pub Vec<String>);

pub fn run(args: Args) -> Result<()> {
    let usage = |e: anyhow::Error| UsageError(e);
    let policies = super::classify::find_policies(&args.policy).map_err(usage)?;
    let columns = Columns {
        text: args.text_col.clone(),
        label: args.label_col.clone(),
        id: args.id_col.clone(),
    };
    let (examples, dataset) = read_set(&args, &policies, &columns).map_err(usage)?;
    let baseline = args
        .baseline
        .as_deref()
        .map(|path| {
            let baseline = Baseline::read(path)?;
            baseline.check_same_set(&dataset.sha256)?;
            Ok::<_, String>(baseline)
        })
        .transpose()
        .map_err(|e| usage(anyhow!(e)))?;
    let efforts: Vec<Option<Effort>> = match args.effort.as_slice() {
        [] => vec![None],
        list => list.iter().copied().map(Some).collect(),
    };
    let sweep = efforts.len() > 1;
    if sweep && (args.results.is_some() || baseline.is_some()) {
        return Err(usage(anyhow!(
            "an --effort sweep runs the model once per effort; --results and --baseline take one run"
        ))
        .into());
    }
    let lints = policies
        .iter()
        .map(|policy| {
            let source = policy.source().map_err(|e| usage(e.into()))?;
            Ok(lint::lint(
                policy,
                &source,
                super::policies::count_tokens(&args.run.model, &policy.text),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let group = args.run.distributed.join_data()?;
    let mut evaluations = Vec::new();
    for effort in efforts {
        // Under --parallel data only rank 0 gets the results to score.
        let Some(mut evaluation) = evaluate(&args, &policies, &examples, &dataset, effort, group.as_ref())?
        else {
            continue;
        };
        match evaluation.policies.as_mut_slice() {
            [] => evaluation.lint = lints.first().cloned(),
            each => {
                for (e, lint) in each.iter_mut().zip(&lints) {
                    e.lint = Some(lint.clone());
                }
            }
        }
        if let Some(baseline) = &baseline {
            evaluation.comparison = Some(compare::compare(baseline, &evaluation, &examples));
        }
        evaluations.push(evaluation);
    }
    if evaluations.is_empty() {
        return Ok(());
    }
    let colour = std::io::stdout().is_terminal();
    let failures: Vec<String> = evaluations
        .iter()
        .flat_map(|e| {
            let prefix = if sweep {
                format!("effort {}: ", e.manifest.effort)
            } else {
                String::new()
            };
            e.gate.iter().map(move |g| format!("{prefix}{}", g.message))
        })
        .collect();
    let (report_page, json, text) = match evaluations.as_slice() {
        [one] => (
            html::render(one),
            serde_json::to_string_pretty(one)?,
            report::summary(one, colour),
        ),
        all => (
            html::render_sweep(all),
            serde_json::to_string_pretty(&serde_json::json!({ "sweep": all }))?,
            all.iter()
                .map(|e| report::summary(e, colour) + "\n")
                .collect::<String>()
                + &report::sweep_summary(all),
        ),
    };
    if let Some(path) = &args.report {
        std::fs::write(path, report_page)
            .map_err(|e| anyhow!("cannot write the report to {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{text}");
    }
    if !failures.is_empty() {
        return Err(GateFailed(failures).into());
    }
    Ok(())
}

/// Results by example id.
type Outcomes = HashMap<String, Outcome>;

/// One run at one effort: results from `--results`, the cache or the model,
/// scored; with several policies, their combined verdict, and each alone.
fn evaluate(
    args: &Args,
    policies: &[Policy],
    examples: &[Example],
    dataset: &FileInfo,
    effort: Option<Effort>,
    group: Option<&Group>,
) -> Result<Option<Evaluation>> {
    let usage = |e: anyhow::Error| UsageError(e);
    let options = args.run.options(effort);
    let mut manifest = Manifest {
        safeguard_version: env!("CARGO_PKG_VERSION").into(),
        mlx_version: mlx::version(),
        device: mlx::default_device().to_string(),
        model: None,
        policy: combined_info(policies),
        dataset: dataset.clone(),
        results_file: None,
        effort: effort_name(policies, &options),
        temperature: args.run.temperature,
        seed: args.run.seed,
        max_tokens: args.run.max_tokens,
        dtype: format!("{:?}", args.run.engine.dtype).to_lowercase(),
        cpu_kernels: args.run.engine.cpu_kernels.to_string(),
        constrain: args.run.constrain,
        cache: None,
        date: manifest::utc_now(),
    };
    // Each policy's outcomes by example id, and the combined ones.
    let (each, combined, cost) = match &args.results {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| usage(anyhow!("{}: {e}", path.display())))?;
            manifest.results_file = Some(FileInfo::of_file(path, &bytes));
            let outcomes = results::read(path).map_err(|e| usage(e.into()))?;
            let combined = by_example(examples, outcomes, path).map_err(usage)?;
            let each = policies
                .iter()
                .map(|policy| {
                    combined
                        .iter()
                        .map(|(id, o)| Ok((id.clone(), o.under(&policy.name, policies.len() == 1)?)))
                        .collect::<Result<HashMap<_, _>, String>>()
                        .map_err(|e| usage(anyhow!("{}: {e}", path.display())))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (each, combined, Cost::default())
        }
        None => match classify(args, policies, examples, options.clone(), &mut manifest, group)? {
            Some(classified) => classified,
            None => return Ok(None),
        },
    };
    let gate = Gate {
        min_precision: args.min_precision,
        min_recall: args.min_recall,
        min_f1: args.min_f1,
        max_parse_failures: args.max_parse_failures,
    };
    let metric_options = metrics::Options {
        target_recall: args.target_recall,
        ..Default::default()
    };
    let alone = |policy: &Policy, outcomes: &Outcomes| {
        let mut manifest = manifest.clone();
        manifest.policy = policy_info(policy);
        manifest.effort = run::effort(policy, &options).to_string();
        report::evaluate(
            examples,
            outcomes,
            &RuleIds::of(policy),
            &metric_options,
            manifest,
            &Gate::default(),
            Cost::default(),
        )
    };
    let per_policy: Vec<Evaluation> = match policies {
        [_] => Vec::new(),
        all => all.iter().zip(&each).map(|(p, o)| alone(p, o)).collect(),
    };
    let mut evaluation = report::evaluate(
        examples,
        &combined,
        &all_rules(policies),
        &metric_options,
        manifest,
        &gate,
        cost,
    );
    evaluation.policies = per_policy;
    Ok(Some(evaluation))
}

fn policy_info(policy: &Policy) -> FileInfo {
    FileInfo {
        name: policy.name.clone(),
        path: policy.path.as_ref().map(|p| p.display().to_string()),
        sha256: policy.sha256(),
    }
}

/// The policy of the manifest: the one given, or for several their names
/// joined and the sha256 of their sha256s, so another list is another run.
fn combined_info(policies: &[Policy]) -> FileInfo {
    match policies {
        [one] => policy_info(one),
        all => FileInfo {
            name: all
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            path: None,
            sha256: sha256_hex(all.iter().map(Policy::sha256).collect::<String>().as_bytes()),
        },
    }
}

/// The effort the policies run at; several when their `Reasoning:` lines differ.
fn effort_name(policies: &[Policy], options: &ClassifyOptions) -> String {
    let mut names: Vec<String> = Vec::new();
    for policy in policies {
        let name = run::effort(policy, options).to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(",")
}

/// The rule ids of all the policies: a label names a rule of any of them.
fn all_rules(policies: &[Policy]) -> RuleIds {
    let mut rules = RuleIds::default();
    for policy in policies {
        let ids = RuleIds::of(policy);
        rules.violating.extend(ids.violating);
        rules.safe.extend(ids.safe);
    }
    rules
}

/// The labelled set: `--input`, else the set shipped with a shipped policy.
fn read_set(args: &Args, policies: &[Policy], columns: &Columns) -> Result<(Vec<Example>, FileInfo)> {
    let rules = all_rules(policies);
    if let Some(path) = &args.input {
        let examples = golden::read(path, columns, &rules)?;
        let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        return Ok((examples, FileInfo::of_file(path, &bytes)));
    }
    let shipped = match policies {
        [policy] if policy.path.is_none() => golden::shipped(&policy.name),
        _ => None,
    };
    let Some((name, text)) = shipped else {
        return Err(anyhow!(
            "no labelled set: give --input FILE (.jsonl, .csv or .tsv); only a shipped policy alone has one built in"
        ));
    };
    let examples = golden::parse(Path::new(&name), text, columns, &rules)?;
    let info = FileInfo {
        name,
        path: None,
        sha256: sha256_hex(text.as_bytes()),
    };
    Ok((examples, info))
}

/// Results matched to examples by id; every example needs one.
fn by_example(examples: &[Example], outcomes: Vec<Outcome>, path: &Path) -> Result<HashMap<String, Outcome>> {
    let mut by_id: HashMap<String, Outcome> = outcomes.into_iter().map(|o| (o.id.clone(), o)).collect();
    let missing: Vec<&str> = examples
        .iter()
        .map(|e| e.item.id.as_str())
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).copied().collect();
        return Err(anyhow!(
            "{}: no result for {} of {} examples ({}{}); write it with `safeguard classify --input SET --output FILE` on the same set",
            path.display(),
            missing.len(),
            examples.len(),
            shown.join(", "),
            if missing.len() > shown.len() { ", …" } else { "" }
        ));
    }
    let ids: HashSet<&str> = examples.iter().map(|e| e.item.id.as_str()).collect();
    by_id.retain(|id, _| ids.contains(id.as_str()));
    Ok(by_id)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("safeguard").join("eval"))
}

/// Results for every example under every policy: from the cache where the
/// same text was judged under the same run key, else from the model
/// (through the same classifier as `safeguard classify`), cached as each
/// finishes; and their combination. Under `--parallel data` the ranks share
/// the texts left and rank 0 alone reads and writes the cache; None on the
/// other ranks.
fn classify(
    args: &Args,
    policies: &[Policy],
    examples: &[Example],
    options: ClassifyOptions,
    manifest: &mut Manifest,
    group: Option<&Group>,
) -> Result<Option<(Vec<Outcomes>, Outcomes, Cost)>> {
    let usage = |e: anyhow::Error| UsageError(e);
    let model_dir = super::resolve_model(&args.run.model)?;
    let fingerprint = manifest::model_fingerprint(&model_dir)
        .map_err(|e| usage(anyhow!("{}: {e}", model_dir.display())))?;
    manifest.model = Some(ModelInfo {
        name: args.run.model.clone(),
        path: model_dir.display().to_string(),
        fingerprint: fingerprint.clone(),
    });
    let leader = group.is_none_or(|g| g.rank() == 0);
    let cache_dir = if args.no_cache || !leader {
        None
    } else {
        args.cache_dir.clone().or_else(default_cache_dir)
    };
    // One cache per policy: a policy's results stay valid whatever it is combined with.
    let mut caches: Vec<Option<ResultCache>> = policies
        .iter()
        .map(|policy| {
            let key = RunKey {
                model: fingerprint.clone(),
                policy_sha256: policy.sha256(),
                effort: run::effort(policy, &options).to_string(),
                temperature: args.run.temperature,
                seed: args.run.seed,
                max_tokens: args.run.max_tokens,
                date: args.run.date.clone(),
                dtype: manifest.dtype.clone(),
                cpu_kernels: manifest.cpu_kernels.clone(),
                constrain: args.run.constrain,
                device: manifest.device.clone(),
            };
            cache_dir
                .as_deref()
                .map(|dir| ResultCache::open(dir, &key))
                .transpose()
                .map_err(|e| usage(e.into()))
        })
        .collect::<Result<_, _>>()?;
    let cache_files: Vec<String> = caches
        .iter()
        .flatten()
        .map(|c| c.path().display().to_string())
        .collect();
    manifest.cache = (!cache_files.is_empty()).then(|| cache_files.join(", "));

    // Each distinct text is judged once per policy, whatever ids it has.
    let mut pairs: Vec<(usize, Item)> = Vec::new();
    let mut queued = HashSet::new();
    for p in 0..policies.len() {
        for example in examples {
            let text = &example.item.content;
            let hash = sha256_hex(text.as_bytes());
            if queued.insert((p, hash.clone())) {
                pairs.push((
                    p,
                    Item {
                        id: hash,
                        content: text.clone(),
                    },
                ));
            }
        }
    }
    let left: Vec<usize> = (0..pairs.len())
        .filter(|&i| {
            let (p, item) = &pairs[i];
            caches[*p].as_ref().is_none_or(|c| c.get(&item.content).is_none())
        })
        .collect();
    // Only rank 0 has the cache: the ranks take its list of what is left.
    let todo = match group {
        Some(group) => {
            let ids: Vec<&str> = pairs.iter().map(|(_, item)| item.id.as_str()).collect();
            crate::distributed::data::agree(group, &ids, &left)?
        }
        None => left,
    };
    let mut fresh: Vec<HashMap<String, Value>> = vec![HashMap::new(); policies.len()];
    let mut cost = Cost::default();
    if !todo.is_empty() {
        let judgements = examples.len() * policies.len();
        if leader && todo.len() < judgements {
            eprintln!(
                "{} of {judgements} judgements cached, {} to make",
                judgements - todo.len(),
                todo.len()
            );
        }
        let tokenizer = Tokenizer::load(&model_dir).map_err(|e| usage(e.into()))?;
        let model = args.run.load(
            &model_dir,
            &tokenizer,
            policies,
            &options,
            todo.iter().map(|&i| &pairs[i].1),
        )?;
        let mut classifier = Classifier::with_policies(&model, &tokenizer, policies, options)?;
        if args.run.constrain {
            classifier.constrain(model.config.vocab_size as usize)?;
        }
        let progress = if leader {
            progress_bar(todo.len())
        } else {
            indicatif::ProgressBar::hidden()
        };
        let start = Instant::now();
        let batch_size = args.run.batch_size as usize;
        let mut keep = |p: usize, json: Value| -> Result<()> {
            if let Some(cache) = &mut caches[p] {
                cache.put(json.clone())?;
            }
            let id = json["id"]
                .as_str()
                .expect("a result has its item's id")
                .to_string();
            fresh[p].insert(id, json);
            progress.inc(1);
            Ok(())
        };
        // The pairs of `indices`, each with its policy's index.
        let share = |indices: &[usize]| -> Vec<(usize, &Item)> {
            indices.iter().map(|&i| (pairs[i].0, &pairs[i].1)).collect()
        };
        match group {
            Some(group) => {
                // The unit of work is the (policy, text) pair: the caches
                // keep each policy's results apart anyway.
                super::data::announce(group);
                let judge = |mine: &[usize], done: &mut dyn FnMut(usize, Value) -> Result<()>| {
                    classifier.classify_pairs(&share(mine), batch_size, |pair, result| {
                        done(pair, result.to_json())
                    })
                };
                super::data::classify(group, &args.run, &todo, judge, |i, json| keep(pairs[i].0, json))?;
            }
            None => {
                let refs = share(&todo);
                classifier.classify_pairs(&refs, batch_size, |pair, result| {
                    keep(refs[pair].0, result.to_json())
                })?;
            }
        }
        progress.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        cost.wall_seconds = Some(seconds);
        cost.items_per_second = (seconds > 0.0).then(|| todo.len() as f64 / seconds);
    }
    if !leader {
        return Ok(None);
    }
    cost.classified = todo.len() as u64;

    let unreadable = |id: &str, message: String| {
        anyhow!(
            "the cached result for {id:?} is unreadable ({message}); run again with --no-cache or delete {}",
            manifest.cache.as_deref().unwrap_or("the cache")
        )
    };
    let mut each: Vec<Outcomes> = vec![HashMap::new(); policies.len()];
    let mut combined = HashMap::new();
    for example in examples {
        let id = &example.item.id;
        let text = &example.item.content;
        let hash = sha256_hex(text.as_bytes());
        let mut values = Vec::with_capacity(policies.len());
        for (p, policy) in policies.iter().enumerate() {
            let cached = !fresh[p].contains_key(&hash);
            let mut value = fresh[p]
                .get(&hash)
                .or_else(|| caches[p].as_ref().and_then(|c| c.get(text)))
                .cloned()
                .expect("every text was classified or cached");
            cost.from_cache += u64::from(cached);
            value["id"] = Value::String(id.clone());
            each[p].insert(
                id.clone(),
                Outcome::from_json(value.clone()).map_err(|m| unreadable(id, m))?,
            );
            values.push((policy, value));
        }
        let outcome = match values.as_slice() {
            [_] => each[0][id].clone(),
            all => Outcome::from_json(combine(id, all)).map_err(|m| unreadable(id, m))?,
        };
        combined.insert(id.clone(), outcome);
    }
    Ok(Some((each, combined, cost)))
}
