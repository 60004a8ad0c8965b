//! The engine as a service: one thread owns the model (MLX arrays stay on the
//! thread that made them) and decodes every request it is given together,
//! continuous batching over [`BatchGeneration`]. Requests arrive over a
//! channel; each request's tokens go back over a channel of its own as they
//! are produced. A request whose receiver is gone (its client left) leaves
//! the batch at the next step, freeing its slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc::UnboundedSender;

use super::batch::BatchGeneration;
use super::cache::make_caches;
use super::generate::{GenerateOptions, LogprobsQuery, Step, TokenLogprobs};
use super::prefix::PrefixCache;
use crate::mlx::{self, Array};
use crate::model::GptOss;

/// One generation to run.
pub struct Request {
    pub prompt: Vec<u32>,
    /// How many of the prompt's first tokens are worth keeping in the prefix
    /// cache for later requests (the system message and a policy); 0: none.
    pub cache_prefix: usize,
    pub options: GenerateOptions,
    /// Ids that end generation (reported, then nothing more).
    pub stop_tokens: Vec<u32>,
    /// Report the chosen token's log-probability and this many alternatives.
    pub top_logprobs: Option<usize>,
    /// Ids whose log-probabilities every step reports (a verdict's digits).
    pub watch: Vec<u32>,
    pub events: UnboundedSender<Event>,
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub logprobs: Option<TokenLogprobs>,
    /// Log-probabilities of [`Request::watch`]'s ids, in its order.
    pub watched: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The last token was one of the stop tokens.
    StopToken,
    /// `max_tokens` were generated.
    Length,
}

#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Sequences decoded together at most; more requests wait their turn.
    pub max_batch: usize,
    pub prefix_cache_bytes: usize,
}

/// A handle on the engine thread; cheap to clone, usable from any thread.
/// The thread ends when the last handle is dropped and its work is done.
#[derive(Clone)]
pub struct Engine {
    requests: mpsc::Sender<Request>,
    decoding: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineStopped;

impl Engine {
    /// Starts the engine thread and loads the model there with `load`,
    /// returning once it is ready, with what `load` returned besides it.
    pub fn start<I: Send + 'static>(
        load: impl FnOnce() -> anyhow::Result<(GptOss, I)> + Send + 'static,
        options: EngineOptions,
    ) -> anyhow::Result<(Engine, I)> {
        let (requests, incoming) = mpsc::channel();
        let (ready, loaded) = mpsc::sync_channel(1);
        let decoding = Arc::new(AtomicUsize::new(0));
        let count = decoding.clone();
        thread::Builder::new()
            .name("engine".into())
            .spawn(move || match load() {
                Ok((model, info)) => {
                    let _ = ready.send(Ok(info));
                    serve(&model, &incoming, options, &count);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })?;
        let info = loaded
            .recv()
            .map_err(|_| anyhow::anyhow!("the engine thread died while loading the model"))??;
        Ok((Engine { requests, decoding }, info))
    }

    /// Sequences in the batch now.
    pub fn decoding(&self) -> usize {
        self.decoding.load(Ordering::Relaxed)
    }

    pub fn submit(&self, request: Request) -> Result<(), EngineStopped> {
        self.requests.send(request).map_err(|_| EngineStopped)
    }
}

struct Active {
    stop_tokens: Vec<u32>,
    top_logprobs: Option<usize>,
    watch: Vec<u32>,
    events: UnboundedSender<Event>,
    produced: usize,
    max_tokens: usize,
}

/// What the engine thread holds: the batch, the requests in it, and the
/// prefix cache.
struct Worker<'m> {
    model: &'m GptOss,
    prefixes: PrefixCache,
    batch: BatchGeneration<'m>,
    active: HashMap<usize, Active>,
    next_id: usize,
}

fn serve(model: &GptOss, incoming: &mpsc::Receiver<Request>, options: EngineOptions, decoding: &AtomicUsize) {
    let mut worker = Worker {
        model,
        prefixes: PrefixCache::new(options.prefix_cache_bytes),
        batch: BatchGeneration::new(model),
        active: HashMap::new(),
        next_id: 0,
    };
    let mut open = true;
    while open || !worker.active.is_empty() {
        decoding.store(worker.active.len(), Ordering::Relaxed);
        // Wait when idle; otherwise take what is queued while there is room.
        if worker.active.is_empty() {
            match incoming.recv() {
                Ok(request) => worker.admit(request),
                Err(_) => return,
            }
        }
        while open && worker.active.len() < options.max_batch.max(1) {
            match incoming.try_recv() {
                Ok(request) => worker.admit(request),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        worker.drop_departed();
        decoding.store(worker.active.len(), Ordering::Relaxed);
        if !worker.batch.is_empty() {
            worker.step();
        }
    }
}

impl Worker<'_> {
    /// Prefills `request` (from the prefix cache where it can) and adds it
    /// to the batch; failures go to its client.
    fn admit(&mut self, request: Request) {
        if request.events.is_closed() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let prefix = request.cache_prefix.min(request.prompt.len().saturating_sub(1));
        let started = (|| -> crate::model::Result<usize> {
            let (caches, cached) = if prefix > 0 {
                let (caches, hit) = self.prefixes.caches_for(
                    self.model,
                    &request.prompt[..prefix],
                    request.options.prefill_step,
                )?;
                (caches, if hit { prefix } else { 0 })
            } else {
                (make_caches(self.model), 0)
            };
            self.batch
                .insert(id, caches, &request.prompt[prefix..], request.options)?;
            Ok(cached)
        })();
        match started {
            Ok(cached_tokens) => {
                let _ = request.events.send(Event::Started { cached_tokens });
                if request.options.max_tokens == 0 {
                    let _ = request.events.send(Event::Finished(Stop::Length));
                    return;
                }
                self.active.insert(
                    id,
                    Active {
                        stop_tokens: request.stop_tokens,
                        top_logprobs: request.top_logprobs,
                        watch: request.watch,
                        events: request.events,
                        produced: 0,
                        max_tokens: request.options.max_tokens,
                    },
                );
            }
            Err(e) => {
                let _ = request.events.send(Event::Failed(e.to_string()));
            }
        }
    }

    /// Drops the requests whose clients have gone.
    fn drop_departed(&mut self) {
        let left: Vec<usize> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in left {
            self.batch.remove(id);
            self.active.remove(&id);
        }
    }

    /// One token for every request in the batch, sent to its client.
    fn step(&mut self) {
        let steps = match self.batch.step() {
            Ok(steps) => steps,
            Err(e) => {
                for (_, a) in self.active.drain() {
                    let _ = a.events.send(Event::Failed(e.to_string()));
                }
                self.batch = BatchGeneration::new(self.model);
                return;
            }
        };
        // Every request's log-probability reads, evaluated together: one
        // sync per step rather than one per request.
        let reads: Vec<(usize, u32, anyhow::Result<Reads>)> = steps
            .iter()
            .filter_map(|(id, step)| {
                let a = self.active.get(id)?;
                Some((*id, step.token, Reads::new(step, a.top_logprobs, &a.watch)))
            })
            .collect();
        let arrays: Vec<&Array> = reads
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .flat_map(Reads::arrays)
            .collect();
        // A failure here leaves the arrays unevaluated; each request's own
        // read below then meets it again and reports it to that request only.
        if !arrays.is_empty() {
            let _ = mlx::eval(&arrays);
        }
        for (id, token, reads) in reads {
            let a = self
                .active
                .get_mut(&id)
                .expect("reads exist for active requests only");
            a.produced += 1;
            let event = reads
                .and_then(|r| r.token(token))
                .map_or_else(|e| Event::Failed(e.to_string()), Event::Token);
            let failed = matches!(event, Event::Failed(_));
            let end = if failed {
                None
            } else if a.stop_tokens.contains(&token) {
                Some(Stop::StopToken)
            } else if a.produced >= a.max_tokens {
                Some(Stop::Length)
            } else {
                None
            };
            let delivered = a.events.send(event).is_ok();
            if let Some(stop) = end.filter(|_| delivered) {
                let _ = a.events.send(Event::Finished(stop));
            }
            if !delivered || failed || end.is_some() {
                self.batch.remove(id);
                self.active.remove(&id);
            }
        }
    }
}

/// What one request reads from a step's distribution, not yet evaluated.
struct Reads {
    top: Option<LogprobsQuery>,
    watched: Option<Array>,
}

impl Reads {
    fn new(step: &Step, top_logprobs: Option<usize>, watch: &[u32]) -> anyhow::Result<Reads> {
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

    fn token(self, id: u32) -> anyhow::Result<Token> {
        Ok(Token {
            id,
            logprobs: self.top.map(LogprobsQuery::read).transpose()?,
            watched: self.watched.map_or(Ok(Vec::new()), |w| w.to_vec::<f32>())?,
        })
    }
}
