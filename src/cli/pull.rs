//! `safeguard pull`: download a model into the Hugging Face cache.

use anyhow::Result;

use super::{hub_error, UsageError};
use crate::hub::{self, cache, human_bytes, HubConfig, HubError, ModelSource};

/// Download a model (only the files it needs) into the Hugging Face hub cache.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A catalog alias (see `safeguard ls`) or a hub repo id (org/name).
    model: String,
}

pub fn run(args: Args) -> Result<()> {
    let hub = HubConfig::from_env();
    let repo = match hub::lookup(&args.model).map_err(hub_error)? {
        ModelSource::Local(dir) => {
            return Err(UsageError(anyhow::anyhow!(
                "{} is a local folder: there is nothing to pull (use it with -m as it is)",
                dir.display()
            ))
            .into())
        }
        ModelSource::Hub { repo, .. } => repo,
    };
    if hub.offline {
        // Nothing can be fetched; a whole cached copy is still an answer.
        return match cache::snapshot(&hub.cache_dir, &repo, "main") {
            Some(snapshot) if cache::missing_files(&snapshot).is_empty() => {
                eprintln!("HF_HUB_OFFLINE is set; {repo} is already in the cache");
                println!("{}", snapshot.display());
                Ok(())
            }
            _ => Err(hub_error(HubError::Offline { repo })),
        };
    }
    let report = hub::pull(&repo, &hub).map_err(hub_error)?;
    eprintln!(
        "{}: {} files, {} ({} fetched), commit {}",
        report.repo,
        report.files,
        human_bytes(report.total_bytes),
        human_bytes(report.downloaded_bytes),
        &report.commit[..12.min(report.commit.len())],
    );
    println!("{}", report.snapshot.display());
    Ok(())
}
