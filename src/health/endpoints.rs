//! The HTTP server every replica runs on `HTTP_LISTEN`, for whoever operates
//! it: `/metrics` (Prometheus text), `/healthz` (liveness: the control loop is
//! turning) and `/readyz` (readiness: consuming, with RabbitMQ and Postgres
//! answering). Nothing else is served, and nothing secret: the metrics carry
//! no event or user ids, the probes' answers only say what is wrong. The
//! server under them ([`http_server`](crate::observe::http_server)) bounds
//! what any client can hold: time, bytes and connections.

use super::{Heartbeat, Readiness};
use crate::observe::http_server;
use crate::observe::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The content type of the metrics (OpenMetrics text, which Prometheus reads).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub metrics: Metrics,
    /// Read at scrape time for the concurrency-limit gauges.
    pub limit: LimitReading,
    pub heartbeat: Heartbeat,
    pub readiness: Readiness,
}

/// The TapTalk concurrency limit and the requests in flight under it, read
/// at scrape time (the limiter lives above health; this is all the endpoints
/// need of it).
#[derive(Clone)]
pub struct LimitReading(Arc<dyn Fn() -> (usize, usize) + Send + Sync>);

impl LimitReading {
    /// `read` answers `(limit, in_flight)`.
    pub fn new(read: impl Fn() -> (usize, usize) + Send + Sync + 'static) -> LimitReading {
        LimitReading(Arc::new(read))
    }
}

impl fmt::Debug for LimitReading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (limit, in_flight) = (self.0)();
        f.debug_struct("LimitReading")
            .field("limit", &limit)
            .field("in_flight", &in_flight)
            .finish()
    }
}

/// `HTTP_LISTEN` names an address the worker cannot listen on.
#[derive(Debug, thiserror::Error)]
#[error(
    "HTTP_LISTEN: cannot listen on {listen} for /metrics, /healthz and /readyz: {cause}; choose another address or set HTTP_LISTEN=off"
)]
pub struct BindError {
    pub listen: SocketAddr,
    /// Said in the message itself, so not a `source` (it would be said twice).
    pub cause: std::io::Error,
}

/// Binds `listen`; the caller logs where and serves with [`serve`].
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|cause| BindError { listen, cause })
}

/// Serves the endpoints until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Endpoints,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints);
    http_server::serve(listener, app, http_server::Limits::ENDPOINTS, stop).await;
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    let (limit, in_flight) = (endpoints.limit.0)();
    endpoints.metrics.taptalk_limit(limit, in_flight);
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        endpoints.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(endpoints): State<Endpoints>) -> Response {
    let since = endpoints.heartbeat.since_last();
    if endpoints.heartbeat.is_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the worker's control loop has not turned for {}\n",
                humantime::format_duration(std::time::Duration::from_secs(since.as_secs()))
            ),
        )
            .into_response()
    }
}

async fn readyz(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.readiness.check().await {
        Ok(on) => (StatusCode::OK, format!("ready: {on}\n")).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
