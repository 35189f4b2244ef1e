//! Logging: `tracing` events to stderr, as text for people or JSON lines for
//! log pipelines (`LOG_FORMAT=json`), filtered by `RUST_LOG`.
//!
//! Secrets are kept out of the logs in three layers:
//!
//! 1. Nothing secret is recorded as a field by this crate: tickets and keys
//!    are wrapped in types whose `Debug` prints `[REDACTED]`, and URLs are
//!    logged redacted.
//! 2. Every line, from any crate, passes through [`redact`](super::redact) before it reaches
//!    stderr: each secret registered with [`register_secret`] or
//!    [`register_url`] is replaced, raw and in the encodings a library may
//!    print (byte lists, base64, hex, percent and JSON escapes). The commands
//!    register the key secret, the `Server-Key` header and the URL passwords
//!    as soon as they have parsed their settings; [`scrub`] does the same for
//!    text printed outside `tracing` (the final error line).
//! 3. lapin's `trace` events are dropped whatever `RUST_LOG` says: they dump
//!    whole AMQP frames, which carry the SASL login (user name and password,
//!    as a byte list) and every message body (login events are personal
//!    data: names, e-mail addresses, phone numbers, IP addresses). The
//!    redactor would hide the password, but not the personal data, and it
//!    is better not to rely on one layer for the password either. lapin's
//!    `debug` and above stay available. To see frames, capture the traffic
//!    (Wireshark decodes AMQP 0-9-1) on a test broker instead. lapin's note on
//!    a returned (unroutable) message is dropped at every level for the same
//!    reason: it prints the whole message, body included; the publisher says
//!    what was unroutable itself.
//!
//! When traces are exported ([`init_with`] given a [`Traces`]), the OTLP
//! span layer joins the same subscriber with a filter of its own, and
//! `RUST_LOG` filters the log lines only: the same lines as with traces off
//! (at `debug`, inside the span `worker.login_event`, which only exists when
//! traces are exported).

pub use super::redact::{RedactingMakeWriter, register_secret, register_url, scrub};

use super::traces::{self, Traces};
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter used when `RUST_LOG` is not set: our own events at `info`, the
/// chatty libraries at `warn`, and lapin off. lapin logs at ERROR what the
/// worker recovers from (a refused login, an unknown vhost, a lost
/// connection, "Exponential backoff attempts exhausted, aborting recovery"
/// although the worker reconnects): every such failure reaches the worker as
/// an error, which it logs itself, once, in words that name the setting
/// (`AMQP_URL → host:port: …`). lapin's note on returned messages would print
/// whole message bodies. `RUST_LOG=info,lapin=debug` shows lapin again.
pub const DEFAULT_FILTER: &str = "info,lapin=off,sqlx=warn,hyper=warn,reqwest=warn";

/// The filter of the operator's commands and the demo: only problems, so
/// their own output stays readable.
pub const QUIET_FILTER: &str = "warn,lapin=off";

/// Installs the global subscriber, with `default_filter` unless `RUST_LOG` is
/// set. Call once, at the start of a command; a second call is a no-op.
pub fn init(format: LogFormat, default_filter: &str) {
    init_with(format, default_filter, None);
}

/// [`init`], and when `traces` is given, its span layer on the same
/// subscriber (see [`traces`]). Without `traces`, `RUST_LOG` is a global
/// filter, as it always was: what it leaves out costs nothing. With it,
/// `RUST_LOG` filters the log lines and the span layer has its own filter.
pub fn init_with(format: LogFormat, default_filter: &str, traces: Option<&Traces>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let installed = match traces {
        None => tracing_subscriber::registry()
            .with(filter)
            .with(no_frame_dumps())
            .with(log_lines(format))
            .try_init(),
        Some(traces) => tracing_subscriber::registry()
            .with(no_frame_dumps())
            .with(log_lines(format).with_filter(filter))
            .with(traces.layer())
            .try_init(),
    };
    if installed.is_ok() && traces.is_some() {
        traces::mark_installed();
    }
    if installed.is_ok() {
        log_panics();
    }
}

/// Routes panic messages through the log, so that they pass the redactor
/// and come in the configured format (`LOG_FORMAT=json`) like any other
/// line: Rust's own hook writes them to stderr as plain text, secrets and
/// all. Where no subscriber is in place (before logging starts), the
/// previous hook still prints them.
pub fn log_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let logging = tracing::dispatcher::get_default(|dispatch| {
            !dispatch.is::<tracing::subscriber::NoSubscriber>()
        });
        if !logging {
            previous(info);
            return;
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(target: "ticket_worker::panic", %location, thread, "panicked: {message}");
    }));
}

/// The layer writing log lines to stderr, scrubbed.
fn log_lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(RedactingMakeWriter::new(std::io::stderr))
        // Colours only for people at a terminal, never into log files.
        .with_ansi(ansi)
        .with_span_events(FmtSpan::NONE)
        .with_target(true);
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json().flatten_event(true).with_current_span(true)),
    }
}

/// Drops lapin's `trace` events and spans, the ones that dump AMQP frames,
/// and its note on returned messages, which prints them whole (see the
/// module documentation).
fn no_frame_dumps() -> FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    FilterFn::new(|meta| {
        let lapin = is_lapin(meta.target());
        !(lapin && *meta.level() == Level::TRACE || meta.target() == "lapin::returned_messages")
    })
}

fn is_lapin(target: &str) -> bool {
    target == "lapin" || target.starts_with("lapin::")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    #[test]
    fn lapin_trace_is_capped_and_every_line_is_scrubbed_at_trace() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(no_frame_dumps())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(RedactingMakeWriter::new(move || writer.clone()))
                    .with_ansi(false)
                    .json(),
            );
        register_secret("telemetry-test-Pw-81f2");
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "lapin::io_loop", "a frame dump");
            tracing::trace!(target: "lapin", "another frame dump");
            tracing::debug!(target: "lapin::channels", "create channel");
            tracing::trace!(target: "lapinesque", "not lapin");
            tracing::warn!(target: "lapin::returned_messages", "a whole returned message");
            tracing::trace!(
                target: "some_crate",
                response = ?b"\0user\0telemetry-test-Pw-81f2",
                "secret as bytes"
            );
            tracing::trace!(target: "some_crate", "secret {}", "telemetry-test-Pw-81f2");
        });
        let logs = captured.text();
        assert!(!logs.contains("frame dump"), "{logs}");
        assert!(logs.contains("create channel"), "{logs}");
        assert!(logs.contains("not lapin"), "{logs}");
        assert!(!logs.contains("a whole returned message"), "{logs}");
        assert!(!logs.contains("telemetry-test-Pw-81f2"), "{logs}");
        let listed: Vec<String> = "telemetry-test-Pw-81f2"
            .bytes()
            .map(|b| b.to_string())
            .collect();
        assert!(!logs.contains(&listed.join(", ")), "{logs}");
        assert_eq!(logs.matches("[REDACTED]").count(), 2, "{logs}");
    }

    #[test]
    fn panics_are_logged_through_the_redactor_in_the_log_format() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(RedactingMakeWriter::new(move || writer.clone()))
                .with_ansi(false)
                .json(),
        );
        register_secret("panic-test-Pw-5c1e");
        log_panics();
        tracing::subscriber::with_default(subscriber, || {
            let _ = std::panic::catch_unwind(|| {
                panic!("overflow near the key panic-test-Pw-5c1e");
            });
        });
        let logs = captured.text();
        let line: serde_json::Value = serde_json::from_str(logs.trim()).expect("one JSON line");
        assert_eq!(line["level"], "ERROR");
        assert_eq!(
            line["fields"]["message"],
            "panicked: overflow near the key [REDACTED]"
        );
        assert!(
            line["fields"]["location"]
                .as_str()
                .is_some_and(|l| l.contains("logs.rs"))
        );
        assert!(!logs.contains("panic-test-Pw-5c1e"), "{logs}");
    }
}
