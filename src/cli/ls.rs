//! `safeguard ls`: the models in the Hugging Face cache, and the catalog's others.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::hub_error;
use crate::distributed::memory;
use crate::hub::{cache, catalog, human_bytes, HubConfig};
use crate::model::{Config, LoadOptions};

/// List downloaded models and the catalog's models not downloaded yet.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

struct Row {
    name: String,
    alias: Option<String>,
    repo: String,
    /// `ready`, `partial` (an interrupted pull) or `absent`.
    status: &'static str,
    path: Option<PathBuf>,
    commit: Option<String>,
    size_on_disk: Option<u64>,
    estimated_size: Option<u64>,
    quantization: Option<String>,
    missing: Vec<String>,
    default: bool,
    description: Option<String>,
    /// Whether it fits this machine at [`FIT_CONTEXT`] tokens, and the estimate.
    fits: Option<(bool, u64)>,
}

/// The context `ls` checks each model at (`safeguard estimate` takes any).
const FIT_CONTEXT: usize = 4096;

/// A downloaded model: its estimate from the headers; one not downloaded
/// yet: the catalog's size (its weights) alone.
fn fits(path: Option<&PathBuf>, catalog_size: Option<u64>, budget: &memory::Budget) -> Option<(bool, u64)> {
    let needed = match path {
        Some(dir) => {
            let config = Config::load(dir).ok()?;
            let request = memory::Request {
                context: FIT_CONTEXT,
                prompt: None,
                prefill_step: 2048,
                load: LoadOptions::default(),
                split: None,
            };
            memory::estimate(dir, &config, request).ok()?.total()
        }
        None => catalog_size?,
    };
    Some((needed <= budget.bytes, needed))
}

pub fn run(args: Args) -> Result<()> {
    let hub = HubConfig::from_env();
    let mut cached = cache::scan(&hub.cache_dir).map_err(hub_error)?;
    let mut rows = Vec::new();
    // The catalog first, in its order, whether downloaded or not.
    for entry in catalog::entries() {
        let found = cached
            .iter()
            .position(|m| m.repo.eq_ignore_ascii_case(&entry.repo))
            .map(|i| cached.remove(i));
        rows.push(Row {
            name: entry.alias.clone(),
            alias: Some(entry.alias.clone()),
            repo: entry.repo.clone(),
            status: found.as_ref().map_or("absent", status),
            path: found.as_ref().map(|m| m.snapshot.clone()),
            commit: found.as_ref().map(|m| m.commit.clone()),
            size_on_disk: found.as_ref().map(|m| m.size_on_disk),
            estimated_size: Some((entry.size_gb * 1e9) as u64),
            quantization: found
                .as_ref()
                .and_then(|m| m.quantization.clone())
                .or_else(|| Some(entry.quantization.clone())),
            missing: found.map(|m| m.missing).unwrap_or_default(),
            default: entry.default,
            description: Some(entry.description.clone()),
            fits: None,
        });
    }
    // Then any other gpt-oss model in the cache; other architectures are not ours to run.
    for model in cached.into_iter().filter(|m| m.is_gpt_oss()) {
        rows.push(Row {
            name: model.repo.clone(),
            alias: None,
            status: status(&model),
            repo: model.repo,
            path: Some(model.snapshot),
            commit: Some(model.commit),
            size_on_disk: Some(model.size_on_disk),
            estimated_size: None,
            quantization: model.quantization,
            missing: model.missing,
            default: false,
            description: None,
            fits: None,
        });
    }
    let budget = memory::device_budget();
    for row in &mut rows {
        let usable = row.status == "ready";
        row.fits = fits(
            row.path.as_ref().filter(|_| usable),
            row.estimated_size.filter(|_| !usable),
            &budget,
        );
    }
    if args.json {
        let models: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "alias": r.alias,
                    "repo": r.repo,
                    "status": r.status,
                    "path": r.path,
                    "commit": r.commit,
                    "size_bytes": r.size_on_disk,
                    "estimated_size_bytes": r.estimated_size,
                    "quantization": r.quantization,
                    "missing": r.missing,
                    "default": r.default,
                    "description": r.description,
                    "fits": r.fits.map(|(fits, _)| fits),
                    "needed_bytes": r.fits.map(|(_, bytes)| bytes),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"cache_dir": hub.cache_dir, "available_bytes": budget.bytes, "available_source": budget.source, "models": models})
        );
        return Ok(());
    }
    print_table(&rows);
    println!("\n* default model. Cache: {}", hub.cache_dir.display());
    println!(
        "FITS: at {FIT_CONTEXT} tokens of context in {} of {} (`safeguard estimate` for other contexts and splits)",
        human_bytes(budget.bytes),
        budget.source
    );
    Ok(())
}

fn status(model: &cache::CachedModel) -> &'static str {
    if model.missing.is_empty() {
        "ready"
    } else {
        "partial"
    }
}

fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                format!("{}{}", r.name, if r.default { " *" } else { "" }),
                r.status.to_string(),
                r.quantization.clone().unwrap_or_else(|| "?".into()),
                match (r.size_on_disk, r.estimated_size) {
                    (Some(size), _) => human_bytes(size),
                    (None, Some(estimate)) => format!("~{}", human_bytes(estimate)),
                    (None, None) => "?".into(),
                },
                match (r.fits, r.status) {
                    (Some((true, _)), "ready") => "yes".into(),
                    (Some((false, needed)), "ready") => format!("no ({})", human_bytes(needed)),
                    (Some((fits, _)), _) => if fits { "~yes" } else { "~no" }.into(),
                    (None, _) => "?".into(),
                },
                r.repo.clone(),
                match (&r.path, r.status) {
                    (Some(path), "partial") => {
                        format!("{} (run `safeguard pull {}`)", path.display(), r.name)
                    }
                    (Some(path), _) => path.display().to_string(),
                    (None, _) => "-".into(),
                },
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "QUANTIZATION", "SIZE", "FITS", "REPO", "PATH"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        println!("{}", line.join("  "));
    }
}
