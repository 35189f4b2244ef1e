//! Logging: `tracing` events to stderr, as text for people or JSON lines for
//! log pipelines (`LOG_FORMAT=json`), filtered by `RUST_LOG`.
//!
//! Nothing secret is ever recorded as a field: tickets and keys are wrapped in
//! types whose `Debug` prints `[REDACTED]`, and URLs are logged redacted.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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
/// chatty libraries at `warn`. lapin's own note on returned messages is off: it
/// prints whole message bodies, and the publisher reports unroutable events
/// itself.
pub const DEFAULT_FILTER: &str =
    "info,lapin=warn,lapin::returned_messages=off,sqlx=warn,hyper=warn,reqwest=warn";

/// The demo's filter: only problems, so the progress line stays readable.
pub const QUIET_FILTER: &str = "warn,lapin::returned_messages=off";

/// Installs the global subscriber, with `default_filter` unless `RUST_LOG` is
/// set. Call once, at the start of a command; a second call is a no-op.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for people at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(FmtSpan::NONE)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
