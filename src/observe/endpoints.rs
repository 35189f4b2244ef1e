//! The HTTP server every replica runs on `HTTP_LISTEN`, for whoever operates
//! it: `/metrics` (Prometheus text), `/healthz` (liveness: the control loop is
//! turning) and `/readyz` (readiness: consuming, with RabbitMQ and Postgres
//! answering). Nothing else is served, and nothing secret: the metrics carry
//! no event or user ids, the probes' answers only say what is wrong. The
//! server under them ([`http_server`](super::http_server)) bounds what any
//! client can hold: time, bytes and connections.

use super::metrics::Metrics;
use crate::health::{Heartbeat, Readiness};
use crate::taptalk::AdaptiveLimit;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The content type of the metrics (OpenMetrics text, which Prometheus reads).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub metrics: Metrics,
    /// Read at scrape time for the concurrency-limit gauges.
    pub limit: AdaptiveLimit,
    pub heartbeat: Heartbeat,
    pub readiness: Readiness,
}

/// Binds `listen`; the caller logs where and serves with [`serve`].
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        format!(
            "HTTP_LISTEN: cannot listen on {listen} for /metrics, /healthz and /readyz: {e}; choose another address or set HTTP_LISTEN=off"
        )
    })
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
    super::http_server::serve(listener, app, super::http_server::Limits::ENDPOINTS, stop).await;
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    let limit = &endpoints.limit;
    endpoints
        .metrics
        .taptalk_limit(limit.limit(), limit.in_flight());
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
