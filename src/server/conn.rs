//! Accepting connections: at most `--max-connections` at once (the rest wait
//! in the kernel's backlog instead of using up file descriptors), and a
//! client gets `--read-timeout` to send its headers (hyper's timer; its body
//! has the same in [`super::error::Body`]). `axum::serve` offers neither, so
//! this is its accept loop with both, over hyper's HTTP/1 connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub struct Limits {
    pub max_connections: usize,
    pub read_timeout: Duration,
}

/// Connections being served; `closed` resolves once there are none.
pub struct Connections {
    open: Arc<Semaphore>,
    limit: usize,
    /// Tells each connection to finish its request in flight and close.
    closing: watch::Sender<bool>,
}

impl Connections {
    pub fn new(limits: &Limits) -> Connections {
        Connections {
            open: Arc::new(Semaphore::new(limits.max_connections)),
            limit: limits.max_connections,
            closing: watch::channel(false).0,
        }
    }

    /// Accepts and serves connections until `stop` resolves; then asks
    /// each open connection to close after its request in flight.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        limits: &Limits,
        stop: impl Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let accept = async {
                // A place first: past the cap, connections wait unaccepted.
                let place = self.open.clone().acquire_owned().await;
                (place, listener.accept().await)
            };
            let (place, accepted) = tokio::select! {
                () = &mut stop => break,
                next = accept => next,
            };
            let Ok(place) = place else { break };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or a connection reset before
                    // it was accepted: the listener itself is fine.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(app.clone());
            let mut closing = self.closing.subscribe();
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.read_timeout);
            tokio::spawn(async move {
                let _place = place;
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection ended: {e}");
                        }
                        return;
                    }
                    _ = closing.wait_for(|&c| c) => connection.as_mut().graceful_shutdown(),
                }
                if let Err(e) = connection.await {
                    tracing::debug!("connection ended: {e}");
                }
            });
        }
        self.closing.send_replace(true);
    }

    /// Resolves once every connection has closed.
    pub async fn closed(&self) {
        let _all = self.open.acquire_many(self.limit as u32).await;
    }
}
