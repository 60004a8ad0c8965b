//! The batch driver: every caller that runs several sequences (`serve`,
//! `classify`, `bench`) hands it jobs and calls [`Driver::step`] until they
//! are done. Each admitted job holds one slot: its caches, its prompt still
//! to prefill, its sampler and its token count.
//!
//! A step (1) admits waiting jobs into free slots, sharing them between
//! groups (one client request is one group) so that a request with many
//! items cannot take every slot; (2) queues one decode forward for every
//! slot whose prompt is in; (3) runs one prompt chunk (`prefill_step`
//! tokens) of the prefilling slot with the fewest chunks left (the earliest
//! among equals), so a long prompt never holds up the streams in flight
//! for more than a chunk, nor a shorter prompt behind it at all; (4) reads the previous decode forward and reports
//! its tokens, with every log-probability read of the step evaluated at once.
//!
//! Decoding is continuous batching as mlx-lm's `BatchGenerator`, but unlike
//! its left-padded `BatchKVCache` every sequence keeps caches of its own and
//! attends alone ([`GptOss::forward_rows`]); only the position-independent
//! work (embeddings, projections, experts, head) is batched. Padding would
//! add masked keys to each softmax and change its reduction order; this way
//! a sequence's tokens and log-probabilities are bit-for-bit those of
//! decoding it alone, sampled ones included (each slot draws from its own
//! sampler). Prompt chunks are cut where [`super::generate::prefill`] cuts
//! them and run alone, so chunking interleaved with other slots' steps
//! changes nothing either.
//!
//! Decode steps are pipelined as in [`super::generate::Generation`]: the
//! forward for token `n + 1` is built from token `n` while that is still
//! being computed. A slot cancelled in between has one step computed for
//! nothing.
//!
//! A slot under a grammar ([`Job::guide`]) cannot draw its token `n + 1`
//! when its forward is queued: the grammar's mask depends on token `n`,
//! which the host learns only when the previous step is read. Its row is
//! left undrawn; once token `n` is read and observed, the mask is computed
//! on the host while forward `n + 1` runs, then applied and drawn lazily
//! (see [`Driver::draw_deferred`]). That adds no host sync: token `n` is
//! read at that point for every slot anyway.

use std::collections::VecDeque;
use std::ops::Range;

use super::cache::{make_caches, LayerCache};
use super::generate::{prefill, GenerateOptions, LogprobsQuery, Step, TokenLogprobs};
use super::prefix::PrefixCache;
use super::sampler::Sampler;
use super::{Error, Result};
use crate::constrain::{Constraint, Guide};
use crate::mlx::memory::WiredLimit;
use crate::mlx::{self, Array};
use crate::model::GptOss;

/// One generation to run. Serializable so that rank 0 of a split model can
/// hand it to the other ranks ([`crate::distributed::serve`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub prompt: Vec<u32>,
    /// How many of the prompt's first tokens are worth keeping in the prefix
    /// cache for later jobs (the system message and a policy); 0: none.
    pub cache_prefix: usize,
    /// Keep the whole prompt (all but its last token) in the prefix cache
    /// too, for a later job that continues this conversation.
    pub keep_prompt: bool,
    pub options: GenerateOptions,
    /// Ids that end generation (reported, then nothing more).
    pub stop_tokens: Vec<u32>,
    /// Report the chosen token's log-probability and this many alternatives.
    pub top_logprobs: Option<usize>,
    /// Ids whose log-probabilities every step reports (a verdict's digits).
    pub watch: Vec<u32>,
    /// Jobs of one group (the items of one request) share the slots they
    /// get with other groups: a free slot goes to the group holding fewest.
    pub group: u64,
    /// The grammar that holds the answer or tool calls; None: free text.
    /// Other ranks get its rules and match them over their own vocabulary.
    #[serde(skip)]
    pub guide: Option<Guide>,
}

/// A job, as [`Driver::submit`] named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct JobId(pub u64);

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt is in; `cached_tokens` of it came from the prefix cache.
    Started {
        cached_tokens: usize,
    },
    Token(Token),
    /// No more tokens will come.
    Finished(Stop),
    Failed(String),
}

impl Event {
    /// Whether nothing follows this event.
    pub fn is_last(&self) -> bool {
        matches!(self, Event::Finished(_) | Event::Failed(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub logprobs: Option<TokenLogprobs>,
    /// Log-probabilities of [`Job::watch`]'s ids, in its order.
    pub watched: Vec<f32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The last token was one of the stop tokens (or a stop string matched).
    StopToken,
    /// `max_tokens` were generated.
    Length,
    /// The stop token ended a call to a tool (`<|call|>`): the engine stops
    /// on it as on any stop token; the server reads it as a call.
    ToolCalls,
}

impl Stop {
    /// OpenAI's `finish_reason`, which LM Studio's `/api/v0` answers share.
    pub fn reason(self) -> &'static str {
        match self {
            Stop::StopToken => "stop",
            Stop::Length => "length",
            Stop::ToolCalls => "tool_calls",
        }
    }

    /// LM Studio's `stats.stop_reason`.
    pub fn lm_studio_reason(self) -> &'static str {
        match self {
            Stop::StopToken => "eosFound",
            Stop::Length => "maxPredictedTokensReached",
            Stop::ToolCalls => "toolCalls",
        }
    }

    /// The Responses API's `status` of the response and its last item.
    pub fn responses_status(self) -> &'static str {
        match self {
            Stop::StopToken | Stop::ToolCalls => "completed",
            Stop::Length => "incomplete",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DriverOptions {
    /// Slots, i.e. sequences decoded together; more jobs wait their turn.
    pub max_slots: usize,
    pub prefix_cache_bytes: usize,
}

struct Slot {
    id: JobId,
    group: u64,
    prompt: Vec<u32>,
    /// Prompt ranges still to prefill, in order. The last prompt token is
    /// never among them: it is the first decode step's input.
    chunks: VecDeque<Range<usize>>,
    /// Prompt lengths whose state goes to the prefix cache once prefilled
    /// (prefixes the cache did not hold), in ascending order.
    store_at: Vec<usize>,
    caches: Vec<LayerCache>,
    cached_tokens: usize,
    sampler: Sampler,
    /// The token to feed next `[1]`: the prompt's last, or one sampled but
    /// perhaps not yet computed.
    next: Array,
    /// Decode steps queued, and tokens reported.
    queued: usize,
    produced: usize,
    max_tokens: usize,
    stop_tokens: Vec<u32>,
    top_logprobs: Option<usize>,
    watch: Vec<u32>,
    constraint: Option<Constraint>,
}

impl Slot {
    fn decoding(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A decode forward in flight: which slot each row is, what it drew, and the
/// distributions it drew from. A constrained row's draw is None until
/// [`Driver::draw_deferred`] makes it.
struct Pending {
    ids: Vec<JobId>,
    drawn: Vec<Option<Array>>,
    logprobs: Array,
}

pub struct Driver<'m> {
    model: &'m GptOss,
    max_slots: usize,
    prefixes: PrefixCache,
    /// Submitted and not yet admitted, in arrival order.
    waiting: VecDeque<(JobId, Job)>,
    slots: Vec<Slot>,
    pending: Option<Pending>,
    next_id: u64,
    _wired: WiredLimit,
}

impl<'m> Driver<'m> {
    pub fn new(model: &'m GptOss, options: DriverOptions) -> Driver<'m> {
        Driver {
            model,
            max_slots: options.max_slots.max(1),
            prefixes: PrefixCache::new(options.prefix_cache_bytes),
            waiting: VecDeque::new(),
            slots: Vec::new(),
            pending: None,
            next_id: 0,
            _wired: WiredLimit::recommended(),
        }
    }

    /// Changes how many jobs hold slots at once, from the next admission on.
    pub fn set_max_slots(&mut self, max_slots: usize) {
        self.max_slots = max_slots.max(1);
    }

    /// Queues `job`; its events come from later [`Driver::step`]s.
    pub fn submit(&mut self, job: Job) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back((id, job));
        id
    }

    /// Drops job `id`, waiting or running (its client left); a prompt being
    /// prefilled stops before its next chunk.
    pub fn cancel(&mut self, id: JobId) {
        self.waiting.retain(|(w, _)| *w != id);
        self.slots.retain(|s| s.id != id);
    }

    /// Nothing waiting and nothing running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.slots.is_empty()
    }

    /// Jobs holding a slot (prefilling or decoding).
    pub fn running(&self) -> usize {
        self.slots.len()
    }

    /// Jobs holding a slot whose prompt is not in yet.
    pub fn prefilling(&self) -> usize {
        self.slots.iter().filter(|s| !s.decoding()).count()
    }

    /// Jobs waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.prefixes
    }

    /// Admits, runs one prompt chunk and one decode step; the events of
    /// the step, each job's in order.
    pub fn step(&mut self) -> Vec<(JobId, Event)> {
        let mut out = Vec::new();
        self.admit(&mut out);
        let ready = match self.pending.take() {
            Some(pending) => Some(pending),
            // Nothing earlier is unread: every mask can be made now.
            None => self.queue(&mut out).map(|mut fresh| {
                self.draw_deferred(&mut fresh, &mut out);
                fresh
            }),
        };
        if ready.is_some() {
            self.pending = self.queue(&mut out);
        }
        self.prefill_chunk(&mut out);
        if let Some(ready) = ready {
            self.read(ready, &mut out);
        }
        if let Some(mut pending) = self.pending.take() {
            self.draw_deferred(&mut pending, &mut out);
            self.pending = Some(pending);
        }
        out
    }

    /// Fills free slots: each goes to the waiting job of the group holding
    /// fewest slots, earliest first.
    fn admit(&mut self, out: &mut Vec<(JobId, Event)>) {
        while self.slots.len() < self.max_slots {
            let held = |group: u64| self.slots.iter().filter(|s| s.group == group).count();
            let Some(next) = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, (_, job))| !self.prefix_in_progress(job))
                .min_by_key(|&(i, (_, job))| (held(job.group), i))
                .map(|(i, _)| i)
            else {
                return;
            };
            let (id, job) = self.waiting.remove(next).expect("an index of waiting");
            match self.start(id, job) {
                Ok(slot) => {
                    self.slots.push(slot);
                    if self.slots.last().is_some_and(Slot::decoding) {
                        self.prompt_in(self.slots.len() - 1, out);
                    }
                }
                Err(e) => out.push((id, Event::Failed(e.to_string()))),
            }
        }
    }

    /// Whether another slot is prefilling the prefix `job` would take from
    /// the cache: then `job` waits for it rather than computing it twice.
    fn prefix_in_progress(&self, job: &Job) -> bool {
        let prefix = cache_prefix(job);
        prefix > 0
            && self
                .slots
                .iter()
                .any(|s| s.store_at.contains(&prefix) && s.prompt[..prefix] == job.prompt[..prefix])
    }

    /// A slot for `job`: caches from the prefix cache where it holds the
    /// prefix, and the chunks left to prefill.
    fn start(&mut self, id: JobId, job: Job) -> Result<Slot> {
        let last = *job.prompt.last().ok_or(Error::EmptyPrompt)?;
        let prefix = cache_prefix(&job);
        let end = job.prompt.len() - 1;
        let reach = if job.keep_prompt { end } else { prefix };
        let (caches, cached_tokens) = if reach > 0 {
            self.prefixes.lookup(self.model, &job.prompt[..reach])
        } else {
            (make_caches(self.model), 0)
        };
        let step = job.options.prefill_step.max(1);
        let mut store_at = Vec::new();
        for at in [prefix, if job.keep_prompt { end } else { 0 }] {
            if at > cached_tokens && !store_at.contains(&at) {
                store_at.push(at);
            }
        }
        // Each stored prefix and the rest are prefilled apart, as a prefix
        // cache hit followed by the rest would be.
        let mut chunks = VecDeque::new();
        let mut from = cached_tokens;
        for &to in store_at.iter().chain([&end]) {
            chunks.extend(ranges(from..to, step));
            from = to;
        }
        let constraint = job.guide.as_ref().map(|g| g.start(&job.prompt)).transpose()?;
        Ok(Slot {
            id,
            group: job.group,
            chunks,
            store_at,
            caches,
            cached_tokens,
            sampler: Sampler::new(job.options.sampler)?,
            next: Array::from_slice(&[last], &[1])?,
            queued: 0,
            produced: 0,
            max_tokens: job.options.max_tokens,
            stop_tokens: job.stop_tokens,
            top_logprobs: job.top_logprobs,
            watch: job.watch,
            prompt: job.prompt,
            constraint,
        })
    }

    /// Reports that slot `index`'s prompt is in; a job that asked for no
    /// tokens ends there.
    fn prompt_in(&mut self, index: usize, out: &mut Vec<(JobId, Event)>) {
        let slot = &self.slots[index];
        out.push((
            slot.id,
            Event::Started {
                cached_tokens: slot.cached_tokens,
            },
        ));
        if slot.max_tokens == 0 {
            out.push((slot.id, Event::Finished(Stop::Length)));
            self.slots.remove(index);
        }
    }

    /// One prompt chunk of the prefilling slot closest to done, earliest
    /// first among equals (which keeps equal prompts in arrival order).
    fn prefill_chunk(&mut self, out: &mut Vec<(JobId, Event)>) {
        let Some(index) = (0..self.slots.len())
            .filter(|&i| !self.slots[i].decoding())
            .min_by_key(|&i| (self.slots[i].chunks.len(), self.slots[i].id))
        else {
            return;
        };
        let slot = &mut self.slots[index];
        let chunk = slot.chunks.pop_front().expect("a prefilling slot has chunks");
        let end = chunk.end;
        if let Err(e) = prefill(self.model, &mut slot.caches, &slot.prompt[chunk], usize::MAX) {
            out.push((slot.id, Event::Failed(e.to_string())));
            self.slots.remove(index);
            return;
        }
        if slot.store_at.first() == Some(&end) {
            self.prefixes.store(&slot.prompt[..end], &slot.caches);
            slot.store_at.remove(0);
        }
        if slot.decoding() {
            self.prompt_in(index, out);
        }
    }

    /// Builds and starts the decode forward of every slot whose prompt is in
    /// and that has steps left. A failure ends those slots.
    fn queue(&mut self, out: &mut Vec<(JobId, Event)>) -> Option<Pending> {
        match self.try_queue() {
            Ok(pending) => pending,
            Err(e) => {
                let failed: Vec<JobId> = self.slots.iter().filter(|s| s.decoding()).map(|s| s.id).collect();
                self.fail(&failed, &e, out);
                None
            }
        }
    }

    fn try_queue(&mut self) -> Result<Option<Pending>> {
        let mut rows: Vec<&mut Slot> = self
            .slots
            .iter_mut()
            .filter(|s| s.decoding() && s.queued < s.max_tokens)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let inputs: Vec<&Array> = rows.iter().map(|s| &s.next).collect();
        let tokens = mlx::concatenate(&inputs, 0)?.reshape(&[rows.len() as i32, 1])?;
        let mut caches: Vec<&mut [LayerCache]> = rows.iter_mut().map(|s| s.caches.as_mut_slice()).collect();
        let logits = self.model.forward_rows(&tokens, &mut caches)?.squeeze(1)?; // [B, vocab]
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let mut drawn = Vec::with_capacity(rows.len());
        for (row, slot) in rows.iter_mut().enumerate() {
            let row = row as i32;
            slot.queued += 1;
            if slot.constraint.is_some() {
                drawn.push(None);
                continue;
            }
            slot.next = slot.sampler.sample(&logprobs.slice_axis(0, row, row + 1)?)?;
            drawn.push(Some(slot.next.clone()));
        }
        let mut started: Vec<&Array> = drawn.iter().flatten().collect();
        started.push(&logprobs);
        mlx::async_eval(&started)?;
        Ok(Some(Pending {
            ids: rows.iter().map(|s| s.id).collect(),
            drawn,
            logprobs,
        }))
    }

    /// Draws the constrained rows of `pending`, whose slots have observed
    /// every token before it: the masks are made on the host while the
    /// forward runs, and the draws join its graph. A slot whose mask or draw
    /// fails ends with that error.
    fn draw_deferred(&mut self, pending: &mut Pending, out: &mut Vec<(JobId, Event)>) {
        let mut failed = Vec::new();
        let mut started = Vec::new();
        for (row, (id, drawn)) in pending.ids.iter().zip(&mut pending.drawn).enumerate() {
            let Some(slot) = self.slots.iter_mut().find(|s| s.id == *id) else {
                continue;
            };
            let Some(constraint) = slot.constraint.as_mut() else {
                continue;
            };
            let mask = constraint.mask();
            let row = row as i32;
            let draw = pending
                .logprobs
                .slice_axis(0, row, row + 1)
                .map_err(Error::from)
                .and_then(|logprobs| Ok(slot.sampler.sample_within(&logprobs, mask.as_ref())?));
            match draw {
                Ok(token) => {
                    slot.next = token.clone();
                    started.push(token.clone());
                    *drawn = Some(token);
                }
                Err(e) => failed.push((*id, e)),
            }
        }
        for (id, e) in failed {
            self.fail(&[id], &e, out);
        }
        let started: Vec<&Array> = started.iter().collect();
        if let Err(e) = mlx::async_eval(&started) {
            self.fail(&pending.ids, &Error::from(e), out);
        }
    }

    /// Reports the tokens of a decode forward to the slots still running,
    /// their log-probability reads evaluated together (one sync per step
    /// rather than one per slot), and ends the slots that are done.
    fn read(&mut self, ready: Pending, out: &mut Vec<(JobId, Event)>) {
        // Rows without a draw belong to slots that ended since.
        let rows: Vec<(usize, JobId, &Array)> = ready
            .ids
            .iter()
            .zip(&ready.drawn)
            .enumerate()
            .filter_map(|(row, (&id, drawn))| Some((row, id, drawn.as_ref()?)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let drawn: Vec<&Array> = rows.iter().map(|&(_, _, d)| d).collect();
        let sampled = match mlx::concatenate(&drawn, 0).and_then(|s| s.to_vec::<u32>()) {
            Ok(sampled) => sampled,
            Err(e) => return self.fail(&ready.ids, &Error::from(e), out),
        };
        let reads: Vec<(JobId, u32, Result<Reads>)> = rows
            .iter()
            .zip(sampled)
            .filter_map(|(&(row, id, _), token)| {
                let slot = self.slots.iter().find(|s| s.id == id)?;
                let row = row as i32;
                let reads = (|| {
                    let logprobs = ready.logprobs.slice_axis(0, row, row + 1)?.squeeze(0)?;
                    Reads::new(&Step { token, logprobs }, slot.top_logprobs, &slot.watch)
                })();
                Some((id, token, reads))
            })
            .collect();
        let arrays: Vec<&Array> = reads
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .flat_map(Reads::arrays)
            .collect();
        // A failure here leaves the arrays unevaluated; each slot's own read
        // below then meets it again and reports it to that slot only.
        if !arrays.is_empty() {
            let _ = mlx::eval(&arrays);
        }
        for (id, token, reads) in reads {
            let index = self
                .slots
                .iter()
                .position(|s| s.id == id)
                .expect("reads exist for running slots only");
            let slot = &mut self.slots[index];
            slot.produced += 1;
            if let Some(constraint) = &mut slot.constraint {
                constraint.observe(token);
            }
            let event = reads
                .and_then(|r| r.token(token))
                .map_or_else(|e| Event::Failed(e.to_string()), Event::Token);
            let end = if matches!(event, Event::Failed(_)) {
                None
            } else if slot.stop_tokens.contains(&token) {
                Some(Stop::StopToken)
            } else if slot.produced >= slot.max_tokens {
                Some(Stop::Length)
            } else {
                None
            };
            let last = event.is_last() || end.is_some();
            out.push((id, event));
            if let Some(stop) = end {
                out.push((id, Event::Finished(stop)));
            }
            if last {
                self.slots.remove(index);
            }
        }
    }

    fn fail(&mut self, ids: &[JobId], e: &Error, out: &mut Vec<(JobId, Event)>) {
        for &id in ids {
            if self.slots.iter().any(|s| s.id == id) {
                out.push((id, Event::Failed(e.to_string())));
            }
        }
        self.slots.retain(|s| !ids.contains(&s.id));
        self.pending = None;
    }
}

/// The prefix of `job`'s prompt to take from (or keep in) the prefix cache:
/// never its last token, which is the first decode step's input.
fn cache_prefix(job: &Job) -> usize {
    job.cache_prefix.min(job.prompt.len().saturating_sub(1))
}

/// `range` cut into pieces of `step`, as [`prefill`] cuts it.
fn ranges(range: Range<usize>, step: usize) -> impl Iterator<Item = Range<usize>> {
    range
        .clone()
        .step_by(step)
        .map(move |start| start..(start + step).min(range.end))
}

/// What one slot reads from a step's distribution, not yet evaluated.
struct Reads {
    top: Option<LogprobsQuery>,
    watched: Option<Array>,
}

impl Reads {
    fn new(step: &Step, top_logprobs: Option<usize>, watch: &[u32]) -> Result<Reads> {
        let top = top_logprobs.map(|k| step.query_top_logprobs(k)).transpose()?;
        let watched = if watch.is_empty() {
            None
        } else {
            Some(step.logprobs_of(watch)?)
        };
        Ok(Reads { top, watched })
    }

    fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.top
            .iter()
            .flat_map(LogprobsQuery::arrays)
            .chain(&self.watched)
    }

    fn token(self, id: u32) -> Result<Token> {
        Ok(Token {
            id,
            logprobs: self.top.map(LogprobsQuery::read).transpose()?,
            watched: self.watched.map_or(Ok(Vec::new()), |w| w.to_vec::<f32>())?,
        })
    }
}
