//! Configuration: every setting of `ticket-worker run`, as a flag and as an
//! environment variable (secrets also as `*_FILE`), checked once at start into
//! [`Settings`]. Every missing or malformed setting is a [`ConfigError`] that
//! names the variable and says how to fix it; one reading reports them all
//! together, as [`ConfigErrors`], so that a first run lists everything to set
//! (the binary prints one per line and exits with code 2). Values of secrets
//! are never repeated in an error.
//!
//! Numbers (`PREFETCH`, `CONCURRENCY`, …) are parsed by clap, which stops at
//! the first value that is not a number; everything after that is checked
//! here. `dead_letters.rs` holds the settings of `dlq replay`.

mod broker;
mod database;
mod dead_letters;
mod errors;
mod run;
mod taptalk;
mod values;

pub use broker::{BrokerArgs, TopologyArgs};
// Checked here, held by the broker; the path stays for the commands and the
// tests.
pub use crate::broker::BrokerSettings;
pub use database::{DatabaseArgs, DatabaseSettings};
pub use dead_letters::{ReplaySettings, Selection, SelectionArgs};
pub use errors::{ConfigError, ConfigErrors};
pub use run::RunArgs;
pub use taptalk::{ServerKeyArgs, TaptalkArgs, TaptalkSettings, server_key, taptalk_base_url};

use crate::health::BreakerSettings;
use crate::purge::PurgeSettings;
use crate::relay::RelaySettings;
use crate::retry::RetryPolicy;
use crate::taptalk::limit::Concurrency;
use crate::taptalk::{LimitSettings, RateLimit};
use crate::worker::Prefetch;
use errors::Problems;
use std::net::SocketAddr;
use std::time::Duration;
use values::{duration, positive_duration};

/// Pauses between probes of a dependency that is down: 1 s growing to 60 s.
pub const PROBE_PAUSES: RetryPolicy = RetryPolicy {
    first_pause: Duration::from_secs(1),
    max_pause: Duration::from_secs(60),
    give_up_after: None,
};

/// Pauses between attempts to reach RabbitMQ: 0.5 s growing to 30 s.
pub const RECONNECT_PAUSES: RetryPolicy = RetryPolicy {
    first_pause: Duration::from_millis(500),
    max_pause: Duration::from_secs(30),
    give_up_after: None,
};

/// Everything the worker needs, checked. `Debug` hides every secret.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub taptalk: TaptalkSettings,
    /// When TapTalk or Postgres counts as down for everybody.
    pub breaker: BreakerSettings,
    /// Pauses between probes while a dependency is down.
    pub probe: RetryPolicy,
    /// Times an event may be put back before it is given up; `None`: never.
    pub max_requeues: Option<u32>,
    /// `PREFETCH`: fixed, or following the TapTalk concurrency limit.
    pub prefetch: Prefetch,
    /// TapTalk requests in flight: adaptive within bounds, or fixed.
    pub limit: LimitSettings,
    /// Most TapTalk requests per second; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// `TAPTALK_QUOTA`: requests per second for the whole deployment.
    pub quota: Option<f64>,
    pub max_event_bytes: usize,
    /// `None`: events never expire.
    pub max_event_age: Option<Duration>,
    /// How far ahead of the worker's clock an event's `occurredAt` may be.
    pub max_clock_skew: Duration,
    pub shutdown_grace: Duration,
    pub migrate: bool,
    /// `None`: never purge.
    pub purge: Option<PurgeSettings>,
    /// When unconfirmed ticket events are published from the outbox.
    pub relay: RelaySettings,
    /// How often a progress line is logged; `None`: never.
    pub progress_every: Option<Duration>,
    /// `EVENT_LOG_RATE`: per-event lines a second at most; 0: none.
    pub event_log_rate: u32,
    /// Where the HTTP server (metrics, probes) listens; `None`: no server.
    pub http_listen: Option<SocketAddr>,
    /// `DELIVERY_DEADLINE`: the longest one delivery may be in flight.
    pub delivery_deadline: Duration,
}

impl Settings {
    /// Checks every setting, reporting every problem found.
    pub fn from_args(args: &RunArgs) -> Result<Settings, ConfigErrors> {
        let mut problems = Problems::default();
        let broker = problems.take(BrokerSettings::from_args(&args.broker, None));
        let database = problems.take(DatabaseSettings::from_args(&args.database, None));
        let base_url = problems.take(taptalk_base_url(args.taptalk.taptalk_base_url.as_deref()));
        let server_key = problems.take(server_key(&args.taptalk.key));
        let timeout = problems.take(positive_duration("TAPTALK_TIMEOUT", &args.taptalk_timeout));
        let retry_for = problems.take(duration("TAPTALK_RETRY_FOR", &args.taptalk_retry_for));
        let max_retry_after = problems.take(duration(
            "TAPTALK_MAX_RETRY_AFTER",
            &args.taptalk_max_retry_after,
        ));
        let outage_after = problems.take(duration("OUTAGE_AFTER", &args.outage_after));
        let prefetch = problems.take(
            args.prefetch
                .parse::<Prefetch>()
                .map_err(|e| ConfigError::new("PREFETCH", e.to_string())),
        );
        let limit = problems.take(limit_settings(args));
        let rate_limit = problems.take(
            args.taptalk_rate_limit
                .as_deref()
                .map(RateLimit::parse)
                .transpose()
                .map_err(|e| {
                    ConfigError::new(
                        "TAPTALK_RATE_LIMIT",
                        format!("{e}; write requests per second, e.g. 50 or 2.5"),
                    )
                }),
        );
        let quota = problems.take(
            args.taptalk_quota
                .as_deref()
                .map(|q| RateLimit::parse(q).map(|r| r.per_second()))
                .transpose()
                .map_err(|e| {
                    ConfigError::new(
                        "TAPTALK_QUOTA",
                        format!("{e}; write the deployment's requests per second, e.g. 200"),
                    )
                }),
        );
        problems.require(
            args.max_event_bytes >= 256,
            "MAX_EVENT_BYTES",
            "must be at least 256",
        );
        let max_event_age = problems.take(duration("MAX_EVENT_AGE", &args.max_event_age));
        let max_clock_skew = problems.take(duration("MAX_CLOCK_SKEW", &args.max_clock_skew));
        let shutdown_grace = problems.take(duration("SHUTDOWN_GRACE", &args.shutdown_grace));
        let purge_after = problems.take(duration("PURGE_AFTER", &args.purge_after));
        let purge_every = problems.take(positive_duration("PURGE_EVERY", &args.purge_every));
        let relay_after = problems.take(positive_duration(
            "OUTBOX_RELAY_AFTER",
            &args.outbox_relay_after,
        ));
        let progress_every = problems.take(duration("PROGRESS_EVERY", &args.progress_every));
        let http_listen = problems.take(http_listen(&args.http_listen));
        let pooled = database
            .as_ref()
            .is_some_and(|d| d.pooling == crate::storage::Pooling::Transaction);
        problems.require(
            !pooled || args.skip_migrations,
            "SKIP_MIGRATIONS",
            crate::storage::NEEDS_A_SESSION,
        );
        let delivery_deadline = problems.take(positive_duration(
            "DELIVERY_DEADLINE",
            &args.delivery_deadline,
        ));
        let (
            Some(broker),
            Some(database),
            Some(base_url),
            Some(server_key),
            Some(timeout),
            Some(retry_for),
            Some(max_retry_after),
            Some(outage_after),
            Some(max_event_age),
            Some(max_clock_skew),
            Some(shutdown_grace),
            Some(purge_after),
            Some(purge_every),
            Some(relay_after),
            Some(progress_every),
            Some(prefetch),
            Some(limit),
            Some(rate_limit),
            Some(quota),
            Some(http_listen),
            Some(delivery_deadline),
        ) = (
            broker,
            database,
            base_url,
            server_key,
            timeout,
            retry_for,
            max_retry_after,
            outage_after,
            max_event_age,
            max_clock_skew,
            shutdown_grace,
            purge_after,
            purge_every,
            relay_after,
            progress_every,
            prefetch,
            limit,
            rate_limit,
            quota,
            http_listen,
            delivery_deadline,
        )
        else {
            return Err(problems.into_errors());
        };
        if !problems.is_empty() {
            return Err(problems.into_errors());
        }
        Ok(Settings {
            broker,
            database,
            taptalk: TaptalkSettings {
                max_retry_after,
                ..TaptalkSettings::new(base_url, server_key, timeout, retry_for)
            },
            breaker: BreakerSettings {
                trip_after: outage_after,
                ..BreakerSettings::default()
            },
            probe: PROBE_PAUSES,
            max_requeues: (args.max_requeues > 0).then_some(args.max_requeues),
            prefetch,
            limit,
            rate_limit,
            quota,
            max_event_bytes: args.max_event_bytes,
            max_event_age: (!max_event_age.is_zero()).then_some(max_event_age),
            max_clock_skew,
            shutdown_grace,
            migrate: !args.skip_migrations,
            purge: (!purge_after.is_zero()).then_some(PurgeSettings {
                after: purge_after,
                every: purge_every,
            }),
            relay: RelaySettings::new(relay_after),
            progress_every: (!progress_every.is_zero()).then_some(progress_every),
            event_log_rate: args.event_log_rate,
            http_listen,
            delivery_deadline,
        })
    }
}

/// HTTP_LISTEN: `host:port`, or `off`.
fn http_listen(raw: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    raw.parse::<SocketAddr>().map(Some).map_err(|_| {
        ConfigError::new(
            "HTTP_LISTEN",
            format!(
                "{:?} is not an address to listen on; write host:port (e.g. 0.0.0.0:8080, [::]:8080) or off",
                raw.chars().take(64).collect::<String>()
            ),
        )
    })
}

/// CONCURRENCY, CONCURRENCY_MIN and CONCURRENCY_MAX, checked together.
fn limit_settings(args: &RunArgs) -> Result<LimitSettings, ConfigErrors> {
    let concurrency = args
        .concurrency
        .parse::<Concurrency>()
        .map_err(|e| ConfigError::new("CONCURRENCY", e.to_string()))?;
    let settings = LimitSettings {
        concurrency,
        min: args.concurrency_min,
        max: args.concurrency_max,
        ..LimitSettings::default()
    };
    settings.validate().map_err(|e| {
        ConfigError::new(
            "CONCURRENCY_MIN",
            format!(
                "{e} (CONCURRENCY_MIN is {}, CONCURRENCY_MAX {})",
                args.concurrency_min, args.concurrency_max
            ),
        )
    })?;
    Ok(settings)
}

#[cfg(test)]
mod tests;
