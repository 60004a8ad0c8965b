//! Server-sent events: a `text/event-stream` response fed by a task, the
//! steps of a turn that stop once the client has gone, and the one loop that
//! answers a generation either as a stream or as one body.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::request::{with_usage, Extras};
use super::turn::{Outcome, Turn, Update};
use super::{Generate, Shared};
use crate::constrain::Guide;
use crate::tokenizer::Tokenizer;

pub fn log_stream(outcome: &Outcome) {
    tracing::info!(
        prompt_tokens = outcome.prompt_tokens,
        completion_tokens = outcome.completion_tokens,
        tok_s = format_args!("{:.1}", outcome.tokens_per_second()),
        latency_ms = format_args!("{:.0}", outcome.elapsed.as_secs_f64() * 1e3),
        finish_reason = outcome.finish_reason.reason(),
        "stream finished"
    );
}

pub type Sender = mpsc::Sender<SseEvent>;

/// The turn's next step; None once the client has gone (its stream was
/// dropped), so the caller returns and dropping the turn cancels the
/// generation without waiting for text to send.
pub async fn next_or_gone(
    turn: &mut Turn<'_>,
    tx: &Sender,
) -> Option<Result<(Update, Option<Outcome>), ApiError>> {
    tokio::select! {
        step = turn.next() => Some(step),
        () = tx.closed() => None,
    }
}

/// Sends one `data:` event; false once the client is gone.
pub async fn send(tx: &Sender, data: Value) -> bool {
    tx.send(SseEvent::default().data(data.to_string())).await.is_ok()
}

/// A `text/event-stream` response fed by `produce`, which runs as its own
/// task. When the client disconnects the stream is dropped, `produce`'s
/// next send fails, and dropping its turn cancels the generation.
/// `[DONE]` follows unless `produce` returns false (the client is gone).
pub fn sse<F, Fut>(state: Shared, produce: F) -> Response
where
    F: FnOnce(Shared, Sender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    sse_with(state, produce, true)
}

pub fn sse_with<F, Fut>(state: Shared, produce: F, done_marker: bool) -> Response
where
    F: FnOnce(Shared, Sender) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<SseEvent>(16);
    tokio::spawn(async move {
        if produce(state, tx.clone()).await && done_marker {
            let _ = tx.send(SseEvent::default().data("[DONE]")).await;
        }
    });
    Sse::new(receiver_stream(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn receiver_stream(rx: mpsc::Receiver<SseEvent>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

/// An endpoint's answer as it grows from a turn's updates: the chunks each
/// step streams and, at the end, the whole body. One value builds both, so a
/// streamed answer adds up to the answer sent whole.
pub trait Accumulator: Send + 'static {
    /// Chunks sent before the first token.
    fn opening(&mut self) -> Vec<Value>;

    /// Takes in one step's update; the chunks that stream it.
    fn update(&mut self, update: Update, tokenizer: &Tokenizer) -> Vec<Value>;

    /// The stream's last chunks; `extras` are another API's fields.
    fn close(&mut self, outcome: &Outcome, extras: Vec<(&'static str, Value)>) -> Vec<Value>;

    /// The answer sent whole.
    fn body(self, outcome: &Outcome, extras: Vec<(&'static str, Value)>) -> Value;
}

/// A generation to answer and how to read it.
pub struct Job {
    pub generate: Generate,
    pub guide: Option<Guide>,
    /// The output is harmony (reasoning, answer, calls), not plain text.
    pub chat: bool,
    pub stops: Vec<String>,
    pub stream: bool,
}

/// Admits and starts `job`, then feeds its turn through `answer`: as
/// `data:` chunks ending with `[DONE]` when it streams, else one JSON body.
/// Everything a request can get wrong is answered with an error status
/// before a stream starts.
pub async fn respond(state: Shared, job: Job, mut answer: impl Accumulator, extras: Extras) -> Response {
    let slot = match state.admit() {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let started = match state.start(job.generate, job.guide) {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    if job.stream {
        return sse(state, move |state, tx| async move {
            let _slot = slot;
            let mut turn = match state.turn(started, job.chat, job.stops) {
                Ok(turn) => turn,
                Err(e) => return send(&tx, e.body()).await,
            };
            if !send_all(&tx, answer.opening()).await {
                return false;
            }
            loop {
                let (update, outcome) = match next_or_gone(&mut turn, &tx).await {
                    None => return false,
                    Some(Ok(next)) => next,
                    Some(Err(e)) => return send(&tx, e.body()).await,
                };
                if !send_all(&tx, answer.update(update, turn.tokenizer())).await {
                    return false;
                }
                if let Some(outcome) = outcome {
                    log_stream(&outcome);
                    return send_all(&tx, answer.close(&outcome, extras(&state, &outcome))).await;
                }
            }
        });
    }
    let _slot = slot;
    let mut turn = match state.turn(started, job.chat, job.stops) {
        Ok(turn) => turn,
        Err(e) => return e.into_response(),
    };
    loop {
        let (update, outcome) = match turn.next().await {
            Ok(next) => next,
            Err(e) => return e.into_response(),
        };
        // The chunks are what a stream would send; the body holds them all.
        answer.update(update, turn.tokenizer());
        if let Some(outcome) = outcome {
            let body = answer.body(&outcome, extras(&state, &outcome));
            return with_usage(Json(body), &outcome);
        }
    }
}

/// Sends `chunks` in order; false once the client is gone.
async fn send_all(tx: &Sender, chunks: Vec<Value>) -> bool {
    for chunk in chunks {
        if !send(tx, chunk).await {
            return false;
        }
    }
    true
}
