//! The HTTP/1 server under the endpoints, hardened for clients that are not
//! the scraper or the kubelet: whoever can reach `HTTP_LISTEN`.
//!
//! axum's own `serve` runs hyper without a timer, so a client could hold a
//! connection open forever, trickle a request head of hundreds of kilobytes,
//! or open sockets until the process runs out of file descriptors, and the
//! probes then stop answering. Here:
//!
//! - a request head must arrive whole within [`Limits::header_read`], and an
//!   idle keep-alive connection is closed after as long;
//! - a head is at most [`Limits::max_head_bytes`] (hyper answers `431` or
//!   closes beyond), so a connection holds at most a few KiB;
//! - a connection lives at most [`Limits::max_age`], whatever it does;
//! - at most [`Limits::max_connections`] are open at once: one more evicts
//!   the oldest, closed at once, so that a flood of idle sockets cannot keep
//!   the kubelet's probe out (it sends its request the moment it connects)
//!   and the file descriptors the worker needs for RabbitMQ and Postgres
//!   stay free;
//! - `accept` failing (no file descriptor left) pauses accepting briefly
//!   rather than spinning.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; one more evicts the oldest.
    pub max_connections: usize,
    /// Time to send a whole request head, and the longest idle keep-alive.
    pub header_read: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Longest life of one connection.
    pub max_age: Duration,
}

impl Limits {
    /// The endpoints' limits: a scraper and a kubelet need a few connections
    /// and send heads of a few hundred bytes at once.
    pub const ENDPOINTS: Limits = Limits {
        max_connections: 128,
        header_read: Duration::from_secs(5),
        max_head_bytes: 8 * 1024,
        max_age: Duration::from_secs(60),
    };
}

/// How long a connection being shut down (or evicted) may take to finish
/// the response it is writing.
const FINISH_WITHIN: Duration = Duration::from_secs(2);

/// The pause after `accept` fails (for instance with no file descriptor
/// left), before trying again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The open connections, oldest first: an id and what stops it.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    connections: VecDeque<(u64, CancellationToken)>,
}

/// Serves `app` on `listener` within `limits` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut accept_failures = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                accept_failures += 1;
                if accept_failures == 1 || accept_failures.is_power_of_two() {
                    tracing::warn!(%error, failures = accept_failures, "the HTTP server for metrics and probes cannot accept a connection; pausing briefly");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, token) = {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            while open.connections.len() >= limits.max_connections.max(1) {
                if let Some((_, oldest)) = open.connections.pop_front() {
                    oldest.cancel();
                }
            }
            let id = open.next_id;
            open.next_id = open.next_id.wrapping_add(1);
            let evict = CancellationToken::new();
            open.connections.push_back((id, evict.clone()));
            (id, evict)
        };
        let app = app.clone();
        let open = Arc::clone(&open);
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, limits, token, stop).await;
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            open.connections.retain(|(other, _)| *other != id);
        });
    }
}

/// One connection, until it ends, outlives `limits.max_age`, or `stop` is
/// cancelled (shutdown): then it may finish what it is writing. Evicted
/// (`evict`), it is closed at once, its file descriptor with it.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    limits: Limits,
    evict: CancellationToken,
    stop: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(limits.max_head_bytes.max(8 * 1024))
        .max_header_size(limits.max_head_bytes)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = &mut connection => Some(ended),
        _ = tokio::time::sleep(limits.max_age) => None,
        _ = stop.cancelled() => None,
        _ = evict.cancelled() => return,
    };
    if ended.is_none() {
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(FINISH_WITHIN, connection).await;
    }
}
