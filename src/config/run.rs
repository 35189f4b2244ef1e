//! Everything `ticket-worker run` reads, as flags and environment variables
//! (clap); [`Settings`](super::Settings) checks it.

use super::broker::BrokerArgs;
use super::database::DatabaseArgs;
use super::taptalk::TaptalkArgs;

/// Everything `ticket-worker run` reads.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub taptalk: TaptalkArgs,
    /// Timeout of one TapTalk request
    #[arg(
        long,
        env = "TAPTALK_TIMEOUT",
        value_name = "TAPTALK_TIMEOUT",
        default_value = "10s"
    )]
    pub taptalk_timeout: String,
    /// How long one event retries a failing TapTalk before going back to the queue
    #[arg(
        long,
        env = "TAPTALK_RETRY_FOR",
        value_name = "TAPTALK_RETRY_FOR",
        default_value = "30s"
    )]
    pub taptalk_retry_for: String,
    /// Longest pause honoured when TapTalk answers 429 with Retry-After (no request from this worker meanwhile)
    #[arg(
        long,
        env = "TAPTALK_MAX_RETRY_AFTER",
        value_name = "TAPTALK_MAX_RETRY_AFTER",
        default_value = "60s"
    )]
    pub taptalk_max_retry_after: String,
    /// How long TapTalk or Postgres must fail every call before intake pauses
    #[arg(
        long,
        env = "OUTAGE_AFTER",
        value_name = "OUTAGE_AFTER",
        default_value = "15s"
    )]
    pub outage_after: String,
    /// Times one event may go back to the queue, failing while others succeed, before it is failed and dead-lettered; 0: never
    #[arg(
        long,
        env = "MAX_REQUEUES",
        value_name = "MAX_REQUEUES",
        default_value_t = 50
    )]
    pub max_requeues: u32,
    /// Unacknowledged messages RabbitMQ hands one worker at a time: `auto` (follow the TapTalk concurrency limit) or a number
    #[arg(
        long,
        env = "PREFETCH",
        value_name = "PREFETCH",
        default_value = "auto"
    )]
    pub prefetch: String,
    /// TapTalk requests one worker has in flight: `auto` (adapts between CONCURRENCY_MIN and CONCURRENCY_MAX) or a fixed number
    #[arg(
        long,
        env = "CONCURRENCY",
        value_name = "CONCURRENCY",
        default_value = "auto"
    )]
    pub concurrency: String,
    /// Lowest TapTalk concurrency the adaptive limit goes down to
    #[arg(
        long,
        env = "CONCURRENCY_MIN",
        value_name = "CONCURRENCY_MIN",
        default_value_t = 16
    )]
    pub concurrency_min: usize,
    /// Highest TapTalk concurrency the adaptive limit goes up to
    #[arg(
        long,
        env = "CONCURRENCY_MAX",
        value_name = "CONCURRENCY_MAX",
        default_value_t = 1024
    )]
    pub concurrency_max: usize,
    /// Most TapTalk requests per second one worker sends (a TapTalk quota); unset: no limit
    #[arg(long, env = "TAPTALK_RATE_LIMIT", value_name = "TAPTALK_RATE_LIMIT")]
    pub taptalk_rate_limit: Option<String>,
    /// TapTalk requests per second for the whole deployment, shared by every replica through Postgres (per server key); unset: none
    #[arg(long, env = "TAPTALK_QUOTA", value_name = "TAPTALK_QUOTA")]
    pub taptalk_quota: Option<String>,
    /// Largest login event accepted, in bytes
    #[arg(long, env = "MAX_EVENT_BYTES", value_name = "MAX_EVENT_BYTES", default_value_t = crate::events::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Events older than this (by occurredAt) get ticket.failed "expired"; 0 turns the check off
    #[arg(
        long,
        env = "MAX_EVENT_AGE",
        value_name = "MAX_EVENT_AGE",
        default_value = "15m"
    )]
    pub max_event_age: String,
    /// Events whose occurredAt is further ahead of the worker's clock are invalid; 0 allows none
    #[arg(
        long,
        env = "MAX_CLOCK_SKEW",
        value_name = "MAX_CLOCK_SKEW",
        default_value = "1m"
    )]
    pub max_clock_skew: String,
    /// On SIGTERM, how long in-flight messages may finish before they go back to the queue
    #[arg(
        long,
        env = "SHUTDOWN_GRACE",
        value_name = "SHUTDOWN_GRACE",
        default_value = "20s"
    )]
    pub shutdown_grace: String,
    /// Delete tickets this long after they expired; 0 turns purging off
    #[arg(
        long,
        env = "PURGE_AFTER",
        value_name = "PURGE_AFTER",
        default_value = "24h"
    )]
    pub purge_after: String,
    /// How often to purge expired tickets
    #[arg(
        long,
        env = "PURGE_EVERY",
        value_name = "PURGE_EVERY",
        default_value = "10m"
    )]
    pub purge_every: String,
    /// Do not apply database migrations at start
    #[arg(long, env = "SKIP_MIGRATIONS", value_name = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
    /// A stored outcome whose ticket event is not confirmed after this long is published from the outbox
    #[arg(
        long,
        env = "OUTBOX_RELAY_AFTER",
        value_name = "OUTBOX_RELAY_AFTER",
        default_value = "10s"
    )]
    pub outbox_relay_after: String,
    /// Address of the HTTP server for /metrics, /healthz and /readyz; `off` turns it off
    #[arg(
        long,
        env = "HTTP_LISTEN",
        value_name = "HTTP_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub http_listen: String,
    /// The longest one login event may be in flight; past it, it goes back to the queue with a warning naming where it was stuck
    #[arg(
        long,
        env = "DELIVERY_DEADLINE",
        value_name = "DELIVERY_DEADLINE",
        default_value = "5m"
    )]
    pub delivery_deadline: String,
    /// How often to log a progress line while events flow; 0 turns it off
    #[arg(
        long,
        env = "PROGRESS_EVERY",
        value_name = "PROGRESS_EVERY",
        default_value = "30s"
    )]
    pub progress_every: String,
    /// Lines logged per second at most, one per settled event; past it, a line says how many were left out; 0 turns them off
    #[arg(
        long,
        env = "EVENT_LOG_RATE",
        value_name = "EVENT_LOG_RATE",
        default_value_t = 20
    )]
    pub event_log_rate: u32,
}

impl RunArgs {
    /// What `run` would read with no flags: the environment, then the defaults.
    /// The demo starts from here, so it runs with the worker's own defaults.
    pub fn from_environment() -> Result<RunArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        <Wrapper as clap::Parser>::try_parse_from(["ticket-worker"]).map(|w| w.run)
    }
}
