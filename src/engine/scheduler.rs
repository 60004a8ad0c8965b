//! The engine as a service: one thread owns the model (MLX arrays stay on the
//! thread that made them) and runs the [`Driver`] over every request it is
//! given. Requests arrive over a channel; each request's events go back over
//! a channel of its own as they happen. A request whose receiver is gone
//! (its client left) is cancelled before the next step, freeing its slot
//! and stopping its prefill before the next chunk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc::UnboundedSender;

use super::driver::{Driver, DriverOptions, Event, Job, JobId};
use crate::model::GptOss;

/// One generation to run, and where its events go.
pub struct Request {
    pub job: Job,
    pub events: UnboundedSender<Event>,
}

/// What the engine is doing, for `/health`.
#[derive(Debug, Default)]
struct Status {
    running: AtomicUsize,
    prefilling: AtomicUsize,
    waiting: AtomicUsize,
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
    /// returning once it is ready.
    pub fn start(
        load: impl FnOnce() -> anyhow::Result<GptOss> + Send + 'static,
        options: DriverOptions,
    ) -> anyhow::Result<Engine> {
        let (requests, incoming) = mpsc::channel();
        let (ready, loaded) = mpsc::sync_channel(1);
        let status = Arc::new(Status::default());
        let shared = status.clone();
        thread::Builder::new()
            .name("engine".into())
            .spawn(move || match load() {
                Ok(model) => {
                    let _ = ready.send(Ok(()));
                    serve(Driver::new(&model, options), &incoming, &shared);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })?;
        loaded
            .recv()
            .map_err(|_| anyhow::anyhow!("the engine thread died while loading the model"))??;
        Ok(Engine { requests, status })
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

    pub fn submit(&self, request: Request) -> Result<(), EngineStopped> {
        self.requests.send(request).map_err(|_| EngineStopped)
    }
}

fn serve(mut driver: Driver<'_>, incoming: &mpsc::Receiver<Request>, status: &Status) {
    let mut clients: HashMap<JobId, UnboundedSender<Event>> = HashMap::new();
    let mut open = true;
    while open || !driver.is_idle() {
        // Wait when idle; otherwise take whatever has arrived.
        if driver.is_idle() {
            match incoming.recv() {
                Ok(request) => {
                    clients.insert(driver.submit(request.job), request.events);
                }
                Err(_) => return,
            }
        }
        while open {
            match incoming.try_recv() {
                Ok(request) => {
                    clients.insert(driver.submit(request.job), request.events);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        clients.retain(|&id, events| {
            let here = !events.is_closed();
            if !here {
                driver.cancel(id);
            }
            here
        });
        for (id, event) in driver.step() {
            let last = event.is_last();
            let delivered = clients.get(&id).is_some_and(|c| c.send(event).is_ok());
            if last || !delivered {
                clients.remove(&id);
                if !last {
                    driver.cancel(id);
                }
            }
        }
        status.running.store(driver.running(), Ordering::Relaxed);
        status.prefilling.store(driver.prefilling(), Ordering::Relaxed);
        status.waiting.store(driver.waiting(), Ordering::Relaxed);
    }
}
