//! Data parallel: every rank holds the whole model and classifies a share of
//! the items; rank 0 collects the results and alone writes them.
//!
//! Rank 0 decides what is left to do (only it reads the output or cache of
//! an earlier run, which may live on its machine alone) and tells the
//! others, so a run resumes with any number of ranks. The work goes in
//! rounds, each rank taking every N-th item of a round, so rank 0 can write
//! a round in input order as soon as it has it and a killed run loses at
//! most the round under way.
//!
//! Results travel down the ring, rank N-1 → … → 1 → 0, each rank adding its
//! own: MLX's ring backend sends only between neighbours, and a hop that
//! fails tells which neighbour is gone. A rank that loses the one behind it
//! passes that news on instead of results, so rank 0 names the lost rank
//! even when it is not its neighbour.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::mlx::distributed::Group;
use crate::mlx::{Array, Dtype};

/// What one rank passes to the next one down.
#[derive(Serialize, Deserialize)]
enum Hop {
    /// (position in the round's list, result) of the ranks so far.
    Results(Vec<(usize, Value)>),
    /// Why the ranks above could not deliver.
    Failed(String),
}

/// Rank 0's list of items left to do (indices into `ids`), as every rank
/// gets it. Every rank passes the same `ids` (its view of the input); a rank
/// whose list differs from rank 0's makes every rank fail with the same
/// message rather than classify the wrong items. `todo` is read on rank 0
/// only.
pub fn agree(group: &Group, ids: &[&str], todo: &[usize]) -> anyhow::Result<Vec<usize>> {
    let leader = group.rank() == 0;
    let mut digest = Sha256::new();
    for id in ids {
        digest.update(id.as_bytes());
        digest.update([0]);
    }
    let fingerprint: Vec<i32> = digest.finalize()[..8]
        .chunks(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut mine = vec![
        ids.len() as i32,
        fingerprint[0],
        fingerprint[1],
        todo.len() as i32,
    ];
    if !leader {
        mine = vec![0; 4];
    }
    let head = super::sum(group, &mine)?;
    let same = head[0] == ids.len() as i32 && head[1..3] == fingerprint[..];
    let differing = super::sum(group, &[i32::from(!same)])?[0];
    if differing > 0 {
        anyhow::bail!(
            "the items differ between ranks ({differing} rank(s) read other items than rank 0's {}); every \
             rank must read the same input file",
            head[0]
        );
    }
    let todo: Vec<i32> = if leader {
        todo.iter().map(|&i| i as i32).collect()
    } else {
        vec![0; head[3] as usize]
    };
    Ok(super::sum(group, &todo)?
        .into_iter()
        .map(|i| i as usize)
        .collect())
}

/// Classifies the items `todo` (the same list on every rank, from [`agree`])
/// in rounds of `per_rank` items per rank: `work` classifies this rank's
/// items of a round and returns their results in the order given; on rank 0,
/// `collect` then gets every result of the round, in `todo` order, with its
/// index. A lost rank ends the run on every rank with an error naming it.
pub fn run(
    group: &Group,
    todo: &[usize],
    per_rank: usize,
    mut work: impl FnMut(&[usize]) -> anyhow::Result<Vec<Value>>,
    mut collect: impl FnMut(usize, Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (rank, size) = (group.rank(), group.size());
    let stride = size as usize;
    for round in todo.chunks(per_rank.max(1) * stride) {
        let mine: Vec<usize> = round
            .iter()
            .skip(rank as usize)
            .step_by(stride)
            .copied()
            .collect();
        let own = work(&mine).and_then(|results| {
            anyhow::ensure!(results.len() == mine.len(), "a result for every item");
            Ok(results)
        });
        let above = if rank + 1 < size {
            receive(group, rank + 1)
        } else {
            Hop::Results(Vec::new())
        };
        let hop = match (above, own) {
            (Hop::Failed(why), _) => Hop::Failed(why),
            (_, Err(e)) => Hop::Failed(format!("rank {rank} failed: {e:#}; {RERUN}")),
            (Hop::Results(mut results), Ok(own)) => {
                let positions = (rank as usize..round.len()).step_by(stride);
                results.extend(positions.zip(own));
                Hop::Results(results)
            }
        };
        if rank > 0 {
            // The news of a failure goes down before this rank stops too.
            let sent = send(group, &hop, rank - 1);
            if let Hop::Failed(why) = hop {
                anyhow::bail!("{why}");
            }
            sent?;
            continue;
        }
        let mut results = match hop {
            Hop::Failed(why) => anyhow::bail!("{why}"),
            Hop::Results(results) => results,
        };
        results.sort_by_key(|(position, _)| *position);
        for (position, result) in results {
            collect(round[position], result)?;
        }
    }
    Ok(())
}

/// Advice for every error that ends a data-parallel run early.
const RERUN: &str = "results finished so far are written; rerun the same command (with any number of \
                     ranks) to do the rest";

fn lost(peer: i32, e: impl std::fmt::Display) -> String {
    format!(
        "lost rank {peer} (its connection closed: {e}): it stopped, crashed or became unreachable; {RERUN}"
    )
}

/// The next hop from rank `src`: its length, then its bytes.
fn receive(group: &Group, src: i32) -> Hop {
    let bytes = (|| -> crate::mlx::Result<Vec<u8>> {
        let len = group.recv(&[1], Dtype::Uint32, src)?;
        len.eval()?;
        let len = len.item::<u32>()?;
        let bytes = group.recv(&[len as i32], Dtype::Uint8, src)?;
        bytes.eval()?;
        bytes.to_vec()
    })();
    match bytes {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| Hop::Failed(format!("rank {src} sent an unreadable message: {e}"))),
        Err(e) => Hop::Failed(lost(src, e)),
    }
}

fn send(group: &Group, hop: &Hop, dst: i32) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(hop)?;
    let len = Array::from_slice(&[bytes.len() as u32], &[1])?;
    let body = Array::from_slice(&bytes, &[bytes.len() as i32])?;
    group
        .send(&len, dst)
        .and_then(|s| s.eval())
        .and_then(|()| group.send(&body, dst)?.eval())
        .map_err(|e| anyhow::anyhow!("{}", lost(dst, e)))
}
