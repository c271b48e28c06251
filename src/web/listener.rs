//! The accept loop of `probe serve`: HTTP/1 connections with a read
//! timeout and a connection limit, so idle or slow clients cannot hold the
//! prober's file descriptors (which its probes need).
//!
//! axum's own `serve` has neither: it is replaced by hyper's connection
//! builder with its header read timeout, and a semaphore around `accept`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Listener limits (`probe serve --web.read-timeout`, `--web.max-connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection must send a complete request head within this long of
    /// opening, and of its previous response (keep-alive), or it is closed:
    /// one timer for slow headers and idle connections (hyper's header read
    /// timeout, which runs whenever the server waits for a request).
    pub read_timeout: Duration,
    /// Connections open at once; further clients wait in the kernel's
    /// accept queue (they hold no descriptor of the prober) until one ends.
    pub max_connections: usize,
}

/// 10 s: a scrape's request arrives in milliseconds; Prometheus reconnects
/// when its scrape interval is longer (one TCP handshake per scrape).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// As Prometheus' `--web.max-connections`; with the default file limit of
/// 1,024 this leaves room for probe runs (`serve.max_concurrency`, 64) and
/// the Discord session.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in
/// progress finish (idle connections close at once) and returns when every
/// connection has ended.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break, // never closed
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset
                    // before it was accepted: not fatal, and not a busy loop.
                    tracing::warn!("cannot accept a connection on {:?}: {e}", listener.local_addr().ok());
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            // A timeout or a client gone midway ends the connection; neither
            // is the prober's problem.
            if let Err(e) = conn.await {
                tracing::debug!("connection closed: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
}
