//! Observing the worker: logs ([`logs`], with every secret scrubbed by
//! [`redact`]), OpenTelemetry [`traces`] over OTLP when an endpoint is set,
//! the Prometheus [`metrics`], the [`progress`] line, one [`event_log`] line per event, and the bounded
//! [`http_server`] that `health::endpoints` serves the metrics and the probes
//! on.

pub mod event_log;
pub mod http_server;
pub mod logs;
pub mod metrics;
pub mod progress;
pub mod redact;
pub mod traces;

pub use logs::{DEFAULT_FILTER, LogFormat, QUIET_FILTER, init, init_with};
pub use redact::{redact_url, register_secret, register_url, scrub};
