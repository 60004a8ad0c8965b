//! `--parallel data` for `classify` and `eval`: every rank loads the whole
//! model and classifies its share of the items ([`crate::distributed::data`]);
//! rank 0 gets every result, in input order, and alone writes them.

use anyhow::Result;
use serde_json::Value;

use super::classify::RunArgs;
use crate::distributed::{data, Watchdog};
use crate::mlx;
use crate::mlx::distributed::Group;

/// Items per rank in one round, in batches: enough to keep continuous
/// batching busy between the round's ends, few enough that a killed run
/// loses little.
const ROUND_BATCHES: usize = 4;

/// Says what this rank holds, once the model is loaded.
pub(super) fn announce(group: &Group) {
    eprintln!(
        "[rank {}/{} (data parallel): the whole model, one item in {}; {:.1} MB of weights]",
        group.rank(),
        group.size(),
        group.size(),
        mlx::memory::active() as f64 / 1e6
    );
}

/// Classifies the units `todo` (indices into the caller's list: items, or
/// eval's (policy, text) pairs; the same list on every rank, from
/// [`data::agree`]) in rounds of `--batch-size` × [`ROUND_BATCHES`] per
/// rank: `judge` classifies this rank's share of a round, giving each
/// result line to its callback with the unit's position in the share; on
/// rank 0, `collect` gets every result with its unit's index, in `todo`
/// order. A rank that finishes no unit and hears from no neighbour within
/// `--step-timeout` (a peer paused or cut off, which no closed connection
/// reports) exits.
pub(super) fn classify(
    group: &Group,
    run: &RunArgs,
    todo: &[usize],
    mut judge: impl FnMut(&[usize], &mut dyn FnMut(usize, Value) -> Result<()>) -> Result<()>,
    mut collect: impl FnMut(usize, Value) -> Result<()>,
) -> Result<()> {
    let batch_size = run.batch_size as usize;
    let watchdog = Watchdog::start(run.distributed.step_timeout(), group.rank());
    let work = |mine: &[usize]| -> Result<Vec<Value>> {
        let mut results = vec![Value::Null; mine.len()];
        judge(mine, &mut |i, result| {
            watchdog.beat();
            results[i] = result;
            Ok(())
        })?;
        // The hop from the neighbour above starts now.
        watchdog.beat();
        Ok(results)
    };
    let collect = |i: usize, value: Value| {
        watchdog.beat();
        collect(i, value)
    };
    data::run(group, todo, batch_size * ROUND_BATCHES, work, collect)
}
