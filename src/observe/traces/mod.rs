//! Traces: OpenTelemetry spans exported over OTLP/HTTP, and the W3C trace
//! context carried from a login event to the ticket event that answers it.
//!
//! **Off** unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then there is no layer, no
//! exporter and no thread, and the only trace work left is passing a login
//! event's `traceparent` (and `tracestate`) on to its `ticket.ready` or
//! `ticket.failed`, as it came ([`carried_on`]); an event without one costs
//! nothing.
//!
//! **On** ([`Traces::from_env`], installed by
//! [`init_with`](super::logs::init_with) on the same subscriber as the logs):
//!
//! - *What is exported:* one trace per login event delivery: the span
//!   [`EVENT_SPAN`] (a consumer span around deciding and settling it, see
//!   [`event_span`]) and the worker's own spans inside it
//!   (`pipeline.decide`, `taptalk.request_ticket`, `broker.publish_ready`, …)
//!   at `debug` and above, whatever `RUST_LOG` says. Spans of other crates,
//!   the worker's background loops (the relay, purging, probes, batched
//!   statements, which serve many events at once) and log events are not
//!   exported: logs stay on stderr, scrubbed.
//! - *Continued:* a well-formed `traceparent` header on the login event
//!   becomes the parent of its [`EVENT_SPAN`]. The header is the login
//!   service's, so anything else (malformed, oversized, of another AMQP type
//!   than a long string or a byte array holding the text) is ignored: the
//!   event starts a trace of its own, and is handled as always.
//! - *Carried on:* `ticket.ready` and `ticket.failed` carry the `traceparent`
//!   of the span that published them, so the app's work continues the trace.
//!   Announcements re-published by the outbox [relay](crate::relay) have no
//!   live context: they start no trace and carry no `traceparent`.
//! - *No secrets or personal data:* no span of the worker records a ticket
//!   or the server key, and only the attributes in [`EXPORTED_ATTRIBUTES`]
//!   leave the process: of a login event, its `eventID`. The one personal
//!   field a span records, `xc_user_id` on `taptalk.request_ticket`, is for
//!   the logs and is not exported.
//! - *Shutdown is explicit:* spans are exported in batches from a thread of
//!   the SDK; [`Traces::shutdown`] exports what is still queued and stops it.
//!   `ticket-worker run` calls it once the worker has stopped (after SIGTERM
//!   and the shutdown grace), before the process exits, as tokio's
//!   mini-redis shuts its tracer provider down at the end of `main`.
//!
//! The other settings are the OpenTelemetry SDK's, read as it reads them:
//! `OTEL_SERVICE_NAME` (default `ticket-worker`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS` (their values are scrubbed from the logs like
//! every secret), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn traces off. Only `http/protobuf` is built in: the exporter speaks
//! OTLP/HTTP (a collector's port 4318), not gRPC.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanProcessor,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::registry::LookupSpan;

mod headers;

pub use headers::{TRACEPARENT, TRACESTATE, carried_on, event_span, extract, inject, short};

/// The span around one login event's delivery, from deciding what becomes of
/// it to settling it: the root of the event's trace in the worker.
pub const EVENT_SPAN: &str = "worker.login_event";

/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "ticket-worker";

/// How long [`Traces::shutdown`] waits for the last spans to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The span attributes that may leave the process: the fields the worker's
/// spans record that identify nobody (an `eventID`, a failure reason, a
/// count, how a delivery ended), and what `tracing-opentelemetry` adds
/// (where in the code, which thread, busy and idle time). Anything else is
/// dropped before export, so a field added to a span later stays in the
/// logs until it is added here.
pub const EXPORTED_ATTRIBUTES: [&str; 13] = [
    "event_id",
    "events",
    "reason",
    "routing_key",
    "outcome",
    "target",
    "code.file.path",
    "code.module.name",
    "code.line.number",
    "thread.id",
    "thread.name",
    "busy_ns",
    "idle_ns",
];

/// Set once the span layer is part of the global subscriber.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (a [`Traces`] layer is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Marks the span layer installed; [`init_with`](super::logs::init_with)
/// calls it once the subscriber carrying the layer is the global one.
pub(super) fn mark_installed() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// The OTLP span pipeline: the tracer provider, with its export thread.
/// Build it with [`Traces::from_env`], hand it to
/// [`init_with`](super::logs::init_with), and call [`Traces::shutdown`]
/// before the process exits.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// The span pipeline the environment asks for: `None` unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// is set (and neither `OTEL_SDK_DISABLED=true` nor
    /// `OTEL_TRACES_EXPORTER=none` turns traces off). Registers the
    /// endpoint's password and the OTLP header values with the log redactor
    /// first. An error names the setting at fault.
    pub fn from_env() -> Result<Option<Traces>, SettingError> {
        let Some((setting, endpoint)) = endpoint_setting()? else {
            return Ok(None);
        };
        if env_var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match env_var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(config_error(
                    "OTEL_TRACES_EXPORTER",
                    format!("{other:?} is not supported; use otlp (the default) or none"),
                ));
            }
        }
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = env_var(protocol)
                && value != "http/protobuf"
            {
                return Err(config_error(
                    protocol,
                    format!(
                        "{value:?} is not supported; this build exports OTLP over HTTP with protobuf only: set http/protobuf (or unset it) and point {setting} at the collector's OTLP/HTTP port (4318)"
                    ),
                ));
            }
        }
        super::register_url(&endpoint);
        for headers in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            for secret in env_var(headers).iter().flat_map(|h| header_secrets(h)) {
                super::register_secret(&secret);
            }
        }
        match url::Url::parse(&endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => {
                return Err(config_error(
                    setting,
                    "not an http:// or https:// URL (the collector's OTLP/HTTP endpoint, e.g. http://otel-collector:4318)",
                ));
            }
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|e| config_error(setting, e.to_string()))?;
        let processor = Allowlisted(BatchSpanProcessor::builder(exporter).build());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Some(Traces { provider }))
    }

    /// The `tracing` layer that turns the exported spans (see the module
    /// documentation) into OpenTelemetry spans, with its own filter: it sees
    /// neither log events nor other crates' spans, whatever `RUST_LOG` says.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer(DEFAULT_SERVICE_NAME);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(exported_spans())
    }

    /// Exports the spans still queued and stops the export thread, waiting
    /// at most 5 s. Call it once, after the worker has stopped and before
    /// the process exits: spans that end later are dropped. Failing to
    /// export is logged, never an error: traces are not worth a failed exit.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not export the last spans at shutdown");
            }
            Err(error) => {
                tracing::warn!(%error, "could not export the last spans at shutdown");
            }
        }
    }
}

/// The variable that names the traces endpoint, and its value: the
/// traces-only one wins, as in the SDK. Empty counts as unset.
fn endpoint_setting() -> Result<Option<(&'static str, String)>, SettingError> {
    for setting in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        match std::env::var(setting) {
            Ok(value) if !value.trim().is_empty() => return Ok(Some((setting, value))),
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(config_error(setting, "not valid UTF-8"));
            }
        }
    }
    Ok(None)
}

/// A variable's value, trimmed; `None` when unset, empty or not UTF-8.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// What to hide of `key=value,key=value` (the OTLP headers format, values
/// percent-encoded): each value as written and decoded, and of a value like
/// `Bearer token`, the credentials alone.
fn header_secrets(headers: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    for value in headers
        .split(',')
        .filter_map(|pair| pair.split_once('=').map(|(_, value)| value.trim()))
        .filter(|value| !value.is_empty())
    {
        for value in [value.to_owned(), percent_decoded(value)] {
            if let Some((_, credentials)) = value.split_once(' ') {
                secrets.push(credentials.trim().to_owned());
            }
            secrets.push(value);
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets.dedup();
    secrets
}

/// `%XX` sequences decoded (lossily); anything else as it is.
fn percent_decoded(value: &str) -> String {
    String::from_utf8_lossy(&super::redact::percent_decode(value)).into_owned()
}

fn config_error(setting: &'static str, problem: impl Into<String>) -> SettingError {
    SettingError {
        setting,
        problem: problem.into(),
    }
}

/// A malformed `OTEL_*` setting: which one, and what is wrong with it. The
/// configuration lists it with the worker's other settings' problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct SettingError {
    /// The environment variable.
    pub setting: &'static str,
    pub problem: String,
}

/// The resource every span names: `service.name` from `OTEL_SERVICE_NAME`,
/// else from `OTEL_RESOURCE_ATTRIBUTES`, else [`DEFAULT_SERVICE_NAME`]; the
/// worker's version; the SDK's own attributes; and the rest of
/// `OTEL_RESOURCE_ATTRIBUTES`.
fn resource() -> Resource {
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let builder = Resource::builder_empty()
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&detectors);
    match env_var("OTEL_SERVICE_NAME") {
        Some(name) => builder.with_service_name(name),
        None => builder,
    }
    .build()
}

/// Which spans the layer turns into OpenTelemetry spans: the worker's own,
/// at `debug` and above, that are an [`EVENT_SPAN`] or inside one. Decided
/// per span (`Interest::sometimes`), since whether a span is inside one
/// depends on where it starts; everything else is never looked at again.
fn exported_spans<S>() -> impl tracing_subscriber::layer::Filter<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    DynFilterFn::new(|meta, cx: &tracing_subscriber::layer::Context<'_, S>| {
        candidate(meta) && (meta.name() == EVENT_SPAN || cx.lookup_current().is_some())
    })
    .with_callsite_filter(|meta| {
        if candidate(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    })
    .with_max_level_hint(LevelFilter::DEBUG)
}

/// A span of this crate at `debug` or above.
fn candidate(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    meta.is_span()
        && *meta.level() <= tracing::Level::DEBUG
        && (target == "ticket_worker" || target.starts_with("ticket_worker::"))
}

/// Passes finished spans on with only the [`EXPORTED_ATTRIBUTES`] and no
/// span events.
#[derive(Debug)]
struct Allowlisted<P>(P);

impl<P: SpanProcessor> SpanProcessor for Allowlisted<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        let before = span.attributes.len();
        span.attributes
            .retain(|kv| EXPORTED_ATTRIBUTES.contains(&kv.key.as_str()));
        let dropped = u32::try_from(before - span.attributes.len()).unwrap_or(u32::MAX);
        span.dropped_attributes_count = span.dropped_attributes_count.saturating_add(dropped);
        span.events = Default::default();
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowlisted_attributes_are_exported() {
        assert!(EXPORTED_ATTRIBUTES.contains(&"event_id"));
        for personal in [
            "xc_user_id",
            "email",
            "phone",
            "full_name",
            "ticket",
            "server_key",
        ] {
            assert!(!EXPORTED_ATTRIBUTES.contains(&personal), "{personal}");
        }
    }

    #[test]
    fn otlp_header_values_are_found_for_the_redactor() {
        let secrets = header_secrets(
            "authorization=Bearer%20abc123,x-api-key = k=ey , empty=,novalue,x=%zz%4",
        );
        assert_eq!(
            secrets,
            [
                "Bearer%20abc123",
                "abc123",
                "Bearer abc123",
                "k=ey",
                "%zz%4"
            ]
        );
    }
}
