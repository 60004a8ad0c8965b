//! The engine as a service: one thread owns the model (MLX arrays stay on the
//! thread that made them) and runs the [`Driver`] over every request it is
//! given. Requests arrive over a channel; each request's events go back over
//! a channel of its own as they happen. A request whose receiver is gone
//! (its client left) is cancelled before the next step, freeing its slot
//! and stopping its prefill before the next chunk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use super::driver::{Driver, DriverOptions, Event, Job, JobId};
use crate::distributed::serve::{self, Lockstep, Plan, HEARTBEAT};
use crate::model::GptOss;

/// One generation to run, and where its events go.
pub struct Request {
    pub job: Job,
    pub events: UnboundedSender<Event>,
}

/// What the engine is doing, for `/health`.
#[derive(Debug)]
struct Status {
    running: AtomicUsize,
    prefilling: AtomicUsize,
    waiting: AtomicUsize,
    /// Why the engine stopped for good (a rank of a split model was lost).
    lost: watch::Sender<Option<String>>,
}

impl Status {
    fn update(&self, driver: &Driver<'_>) {
        self.running.store(driver.running(), Ordering::Relaxed);
        self.prefilling.store(driver.prefilling(), Ordering::Relaxed);
        self.waiting.store(driver.waiting(), Ordering::Relaxed);
    }
}

/// What the engine thread runs: the model and, on the ranks of a split
/// model, this rank's end of rank 0's plans.
pub struct Loaded {
    pub model: GptOss,
    pub lockstep: Option<Lockstep>,
}

/// A handle on the engine thread; cheap to clone, usable from any thread.
/// The thread ends when the last handle is dropped and its work is done.
#[derive(Clone)]
pub struct Engine {
    requests: mpsc::Sender<Request>,
    status: Arc<Status>,
}

#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineStopped;

impl Engine {
    /// Starts the engine thread and loads the model there with `load`,
    /// returning once it is ready. On a rank other than 0 of a split model
    /// nothing is served here: the thread follows rank 0's plans, and this
    /// returns None once rank 0 has closed.
    pub fn start(
        load: impl FnOnce() -> anyhow::Result<Loaded> + Send + 'static,
        options: DriverOptions,
    ) -> anyhow::Result<Option<Engine>> {
        let (requests, incoming) = mpsc::channel();
        let (ready, loaded) = mpsc::sync_channel(1);
        let status = Arc::new(Status {
            running: AtomicUsize::new(0),
            prefilling: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            lost: watch::channel(None).0,
        });
        let shared = status.clone();
        let engine = thread::Builder::new()
            .name("engine".into())
            .spawn(move || match load() {
                Ok(Loaded { model, lockstep }) => {
                    let mut driver = Driver::new(&model, options);
                    match lockstep {
                        Some(lockstep) if !lockstep.is_leader() => {
                            let _ = ready.send(serve::follow(&mut driver, &lockstep).map(|()| false));
                        }
                        lockstep => {
                            let _ = ready.send(Ok(true));
                            run(driver, &incoming, &shared, lockstep.as_ref());
                        }
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })?;
        let serving = loaded
            .recv()
            .map_err(|_| anyhow::anyhow!("the engine thread died while loading the model"))??;
        if !serving {
            // A follower's thread still frees its model and caches after
            // saying so; the process must not exit (and tear MLX down) under
            // it, which corrupted the heap.
            let _ = engine.join();
        }
        Ok(serving.then_some(Engine { requests, status }))
    }

    /// Requests holding a slot now (prefilling or decoding).
    pub fn decoding(&self) -> usize {
        self.status.running.load(Ordering::Relaxed)
    }

    /// Requests holding a slot whose prompt is still being prefilled.
    pub fn prefilling(&self) -> usize {
        self.status.prefilling.load(Ordering::Relaxed)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.status.waiting.load(Ordering::Relaxed)
    }

    /// Why the engine stopped for good, once it has (a rank was lost).
    pub fn lost(&self) -> Option<String> {
        self.status.lost.borrow().clone()
    }

    /// Returns (with [`Engine::lost`]'s reason) when the engine stops for good.
    pub async fn until_lost(&self) -> String {
        let mut lost = self.status.lost.subscribe();
        let why = match lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        };
        why
    }

    pub fn submit(&self, request: Request) -> Result<(), EngineStopped> {
        self.requests.send(request).map_err(|_| EngineStopped)
    }
}

/// Serves requests until every handle is gone and the work is done. Each
/// step's admissions and cancellations go into a [`Plan`] that, under a
/// split model, every rank applies before the step as this one does.
fn run(
    mut driver: Driver<'_>,
    incoming: &mpsc::Receiver<Request>,
    status: &Status,
    lockstep: Option<&Lockstep>,
) {
    let mut clients: HashMap<JobId, UnboundedSender<Event>> = HashMap::new();
    let mut plan = Plan::default();
    // Under a split model a job's failure may be a rank lost: the next plan
    // tells, and the client then hears which.
    let mut held: Vec<(JobId, Event)> = Vec::new();
    let mut open = true;
    loop {
        let mut arrived = Vec::new();
        // Wait when idle, a heartbeat at most; otherwise take whatever has arrived.
        if open && driver.is_idle() && held.is_empty() {
            match incoming.recv_timeout(HEARTBEAT) {
                Ok(request) => arrived.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        while open {
            match incoming.try_recv() {
                Ok(request) => arrived.push(request),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        clients.retain(|&id, events| {
            let here = !events.is_closed();
            if !here {
                plan.cancel.push(id);
            }
            here
        });
        let (jobs, senders): (Vec<Job>, Vec<_>) = arrived.into_iter().map(|r| (r.job, r.events)).unzip();
        plan.admit = jobs;
        plan.closing = !open;
        if let Some(Err(lost)) = lockstep.map(|l| l.lead(&plan)) {
            let why = lost.to_string();
            // Requests sent from now on are refused with `why` by their handlers.
            status.lost.send_replace(Some(why.clone()));
            let queued: Vec<_> = incoming.try_iter().map(|r| r.events).collect();
            for events in clients.values().chain(&senders).chain(&queued) {
                let _ = events.send(Event::Failed(why.clone()));
            }
            return;
        }
        for (id, event) in held.drain(..) {
            deliver(&mut clients, &mut plan.cancel, id, event);
        }
        let closing = plan.closing;
        let ids = std::mem::take(&mut plan).apply(&mut driver);
        clients.extend(ids.into_iter().zip(senders));
        if !driver.is_idle() {
            for (id, event) in driver.step() {
                if lockstep.is_some() && matches!(event, Event::Failed(_)) {
                    held.push((id, event));
                } else {
                    deliver(&mut clients, &mut plan.cancel, id, event);
                }
            }
        }
        status.update(&driver);
        if closing && driver.is_idle() {
            for (id, event) in held {
                deliver(&mut clients, &mut plan.cancel, id, event);
            }
            return;
        }
    }
}

/// Sends `event` to its client; the job of a client gone is cancelled by the
/// next plan.
fn deliver(
    clients: &mut HashMap<JobId, UnboundedSender<Event>>,
    cancel: &mut Vec<JobId>,
    id: JobId,
    event: Event,
) {
    let last = event.is_last();
    let delivered = clients.get(&id).is_some_and(|c| c.send(event).is_ok());
    if last || !delivered {
        clients.remove(&id);
        if !last {
            cancel.push(id);
        }
    }
}
