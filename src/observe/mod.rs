//! Observing the worker: logs ([`logs`], with every secret scrubbed by
//! [`redact`]) and the counts of what happened to deliveries ([`counters`]),
//! which the progress line reports.

pub mod counters;
pub mod logs;
pub mod redact;

pub use logs::{DEFAULT_FILTER, LogFormat, QUIET_FILTER, init};
pub use redact::{register_secret, register_url, scrub};
