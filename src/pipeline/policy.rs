//! The rules the pipeline applies to every event: size, age, clock skew,
//! how often it may go back to the queue, and how its calls are retried.

use crate::retry::RetryPolicy;
use std::time::Duration;

/// The rules the pipeline applies to each event.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    pub max_event_bytes: usize,
    /// Older events (by `occurredAt`) are answered `expired`; `None`: never.
    pub max_event_age: Option<Duration>,
    /// Events whose `occurredAt` is further ahead of our clock are invalid.
    pub max_clock_skew: Duration,
    /// Times an event may go back to the queue for its own failures before it
    /// is given up (`retries_exhausted`); `None`: never.
    pub max_requeues: Option<u32>,
    /// Retries of one TapTalk request.
    pub upstream_retry: RetryPolicy,
    /// Retries of one Postgres statement.
    pub store_retry: RetryPolicy,
}
