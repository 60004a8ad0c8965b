//! `serve` across ranks: rank 0 runs the HTTP server and the scheduler and,
//! before every engine step, hands that step's work (a [`Plan`]: the jobs
//! admitted, with their prompts, sampling options, seeds and grammar rules;
//! the jobs cancelled; whether it is closing) to the other ranks. Every rank
//! applies the same plan to a driver of its own, so the drivers stay
//! identical and step in lockstep: the same admissions, prefill chunks,
//! prefix-cache hits and batches, hence the same collectives inside each
//! forward. Each rank's caches hold its own kv heads only; they are the same
//! size on every rank, so the prefix caches evict the same entries too.
//!
//! A plan travels through MLX's collectives, as JSON: its length in one
//! all-sum (the other ranks add zeros), then its bytes in a second one,
//! skipped for an empty plan, so a decode step with nothing new costs one
//! one-element all-sum. While idle, rank 0 sends an empty plan every
//! [`HEARTBEAT`]: every rank's step watchdog stays fed, and a rank lost
//! while nobody is waiting is found all the same.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Watchdog;
use crate::constrain::{Guide, Rules, Vocabulary};
use crate::engine::driver::{Driver, Event, Job, JobId};
use crate::mlx::distributed::Group;
use crate::tokenizer::Tokenizer;

/// The longest rank 0 waits for work before telling the others it has none.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// One step's work, as rank 0 decides it.
#[derive(Debug, Default)]
pub struct Plan {
    /// New jobs, in the order every rank submits them (so they get the same ids).
    pub admit: Vec<Job>,
    pub cancel: Vec<JobId>,
    /// No job will come any more: the ranks stop once their drivers are idle.
    pub closing: bool,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.admit.is_empty() && self.cancel.is_empty() && !self.closing
    }

    /// Submits the new jobs to `driver`, then cancels; the new jobs' ids, in order.
    pub fn apply(self, driver: &mut Driver<'_>) -> Vec<JobId> {
        let ids = self.admit.into_iter().map(|job| driver.submit(job)).collect();
        for id in self.cancel {
            driver.cancel(id);
        }
        ids
    }
}

/// A plan on the wire: a job's grammar goes as its rules, which the other
/// ranks match over a vocabulary of their own.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    admit: Cow<'a, [Job]>,
    rules: Vec<Option<Rules>>,
    cancel: Cow<'a, [JobId]>,
    closing: bool,
}

/// A rank the job can no longer run without: every rank stops.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Lost(String);

/// This rank's end of the plans: rank 0 sends them, the others receive them.
pub struct Lockstep {
    group: Group,
    watchdog: Watchdog,
    /// What the other ranks build their grammars' vocabulary from, once one
    /// is needed (it takes a moment): the tokenizer and the model's vocabulary size.
    tokenizer: Option<(Tokenizer, usize)>,
    vocabulary: OnceCell<Vocabulary>,
}

impl Lockstep {
    /// `tokenizer`: on ranks other than 0, the model's tokenizer and
    /// vocabulary size, for the grammars of guided jobs. A rank that sees no
    /// plan within `step_timeout` (a peer paused or cut off) exits.
    pub fn new(group: Group, step_timeout: Duration, tokenizer: Option<(Tokenizer, usize)>) -> Lockstep {
        let watchdog = Watchdog::start(step_timeout, group.rank());
        Lockstep {
            group,
            watchdog,
            tokenizer,
            vocabulary: OnceCell::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.group.rank() == 0
    }

    /// Rank 0: hands `plan` to every other rank.
    pub fn lead(&self, plan: &Plan) -> Result<(), Lost> {
        let bytes = if plan.is_empty() {
            Vec::new()
        } else {
            let wire = Wire {
                admit: Cow::Borrowed(&plan.admit),
                rules: plan
                    .admit
                    .iter()
                    .map(|j| j.guide.as_ref().map(|g| g.rules.clone()))
                    .collect(),
                cancel: Cow::Borrowed(&plan.cancel),
                closing: plan.closing,
            };
            serde_json::to_vec(&wire).expect("plans serialize")
        };
        self.broadcast(&bytes)?;
        Ok(())
    }

    /// Ranks other than 0: the next plan.
    fn follow(&self) -> anyhow::Result<Plan> {
        let bytes = self.broadcast(&[])?;
        if bytes.is_empty() {
            return Ok(Plan::default());
        }
        let wire: Wire<'_> = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "rank 0 sent a plan this rank cannot read ({e}); every rank must run the same safeguard build"
            )
        })?;
        let mut admit = wire.admit.into_owned();
        for (job, rules) in admit.iter_mut().zip(wire.rules) {
            job.guide = rules
                .map(|rules| {
                    anyhow::Ok(Guide {
                        vocabulary: self.vocabulary()?.clone(),
                        rules,
                    })
                })
                .transpose()?;
        }
        Ok(Plan {
            admit,
            cancel: wire.cancel.into_owned(),
            closing: wire.closing,
        })
    }

    fn vocabulary(&self) -> anyhow::Result<&Vocabulary> {
        if let Some(vocabulary) = self.vocabulary.get() {
            return Ok(vocabulary);
        }
        let (tokenizer, size) = self
            .tokenizer
            .as_ref()
            .expect("ranks other than 0 have the tokenizer");
        let vocabulary = Vocabulary::new(tokenizer, *size)?;
        Ok(self.vocabulary.get_or_init(|| vocabulary))
    }

    /// Rank 0's `bytes` on every rank (the others pass none): the length,
    /// then, unless 0, the bytes, each an all-sum of rank 0's values with
    /// the others' zeros.
    fn broadcast(&self, bytes: &[u8]) -> Result<Vec<u8>, Lost> {
        let lost = |e: crate::mlx::Error| Lost(self.lost_message(&e));
        let len = super::sum(&self.group, &[bytes.len() as i32]).map_err(lost)?[0] as usize;
        let received = if len == 0 {
            Vec::new()
        } else if self.is_leader() {
            super::sum(&self.group, bytes).map_err(lost)?
        } else {
            super::sum(&self.group, &vec![0u8; len]).map_err(lost)?
        };
        self.watchdog.beat();
        Ok(received)
    }

    /// Which rank is gone, as far as this one can tell: MLX's ring reports
    /// only that a connection closed, which with two ranks names the other.
    fn lost_message(&self, e: &crate::mlx::Error) -> String {
        let (rank, size) = (self.group.rank(), self.group.size());
        let who = match (size, rank) {
            (2, _) => format!("rank {}", 1 - rank),
            (_, 0) => format!(
                "one of ranks 1..{} (the log of each says which stopped)",
                size - 1
            ),
            _ => "a peer rank".to_string(),
        };
        format!(
            "lost {who} of the {size} serving the model ({e}): it stopped, crashed or became unreachable; \
             restart every rank"
        )
    }
}

/// A rank other than 0: applies rank 0's plans to `driver` and steps with
/// it until rank 0 closes (Ok) or a rank is lost (the error says which).
/// SIGINT and SIGTERM are ignored here: a launcher's Ctrl-C reaches every
/// rank, and rank 0 needs the others to finish the requests in flight
/// before it closes them.
pub fn follow(driver: &mut Driver<'_>, lockstep: &Lockstep) -> anyhow::Result<()> {
    #[cfg(unix)]
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    loop {
        let plan = lockstep.follow()?;
        let closing = plan.closing;
        plan.apply(driver);
        // The events are rank 0's to report, but a failure here (a peer lost,
        // memory) may be this rank's alone, and going on would leave the
        // drivers apart. Stopping closes this rank's connections, which is
        // how the ranks that did not see it learn it (MLX's ring may not
        // tell rank 0 of a rank that is not its neighbour).
        let events = if driver.is_idle() {
            Vec::new()
        } else {
            driver.step()
        };
        let failure = events.into_iter().find_map(|(_, event)| match event {
            Event::Failed(why) => Some(why),
            _ => None,
        });
        if let Some(why) = failure {
            anyhow::bail!(
                "rank {}: a step failed ({why}); stopping, which tells the other ranks",
                lockstep.group.rank()
            );
        }
        if closing && driver.is_idle() {
            return Ok(());
        }
    }
}
