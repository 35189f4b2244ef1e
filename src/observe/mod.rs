//! Observing the worker: logs ([`logs`], with every secret scrubbed by
//! [`redact`]), the Prometheus [`metrics`], the [`progress`] line, and the
//! HTTP [`endpoints`] that serve the metrics and the health probes.

pub mod endpoints;
pub mod logs;
pub mod metrics;
pub mod progress;
pub mod redact;

pub use logs::{DEFAULT_FILTER, LogFormat, QUIET_FILTER, init};
pub use redact::{register_secret, register_url, scrub};
