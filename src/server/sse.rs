//! Server-sent events: a `text/event-stream` response fed by a task, and
//! the steps of a turn that stop once the client has gone.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::turn::{Outcome, Turn, Update};
use super::Shared;

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
