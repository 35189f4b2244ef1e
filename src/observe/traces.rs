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

use crate::broker::short;
use crate::config::ConfigError;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
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
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::registry::LookupSpan;

/// The span around one login event's delivery, from deciding what becomes of
/// it to settling it: the root of the event's trace in the worker.
pub const EVENT_SPAN: &str = "worker.login_event";

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendors' own trace data.
pub const TRACESTATE: &str = "tracestate";

/// The longest `traceparent` read. Version `00` is 55 bytes; later versions
/// may append fields, which the worker does not understand and drops.
const MAX_TRACEPARENT: usize = 256;
/// The longest `tracestate` read: the 512 characters W3C asks every vendor
/// to pass on. A longer one is dropped whole; the `traceparent` still counts.
const MAX_TRACESTATE: usize = 512;
/// The length of a version `00` `traceparent`, and of the part of a later
/// version's that the worker reads.
const TRACEPARENT_V00: usize = 55;

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
    pub fn from_env() -> Result<Option<Traces>, ConfigError> {
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

/// The span around one delivery ([`EVENT_SPAN`]), continuing the trace its
/// `traceparent` header names, if it has a well-formed one. A disabled span
/// (no work at all) when spans are not exported.
pub fn event_span(login_headers: Option<&FieldTable>) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let span = tracing::debug_span!(
        parent: None,
        EVENT_SPAN,
        otel.kind = "consumer",
        outcome = tracing::field::Empty,
    );
    if let Some(parent) = extract(login_headers) {
        // Only fails when the span is disabled or already started: it is
        // neither, and a trace not continued is no reason to stop.
        let _ = span.set_parent(parent);
    }
    span
}

/// The trace headers a ticket event answering a login event carries: when
/// spans are exported, those of the current span (the one publishing it,
/// inside the login event's trace); otherwise the login event's own, passed
/// on unchanged (when well-formed); `None` when there is no trace to carry.
pub fn carried_on(login_headers: Option<&FieldTable>) -> Option<FieldTable> {
    let context = if exporting() {
        tracing::Span::current().context()
    } else {
        extract(login_headers)?
    };
    inject(&context)
}

/// The remote trace context `headers` carry, if they carry a well-formed one.
pub fn extract(headers: Option<&FieldTable>) -> Option<Context> {
    let headers = headers?;
    let traceparent = header_text(headers, TRACEPARENT, MAX_TRACEPARENT)?;
    if !well_formed(traceparent) {
        return None;
    }
    let incoming = Incoming {
        // Later versions may append fields: the first 55 bytes are version 00's.
        traceparent: traceparent.get(..TRACEPARENT_V00)?,
        tracestate: header_text(headers, TRACESTATE, MAX_TRACESTATE).filter(|s| plausible_state(s)),
    };
    let context = TraceContextPropagator::new().extract(&incoming);
    let continued = {
        let span = context.span();
        let span = span.span_context();
        span.is_valid() && span.is_remote()
    };
    continued.then_some(context)
}

/// `traceparent` (and `tracestate`, when not empty) for `context`, as AMQP
/// headers; `None` when it names no span.
pub fn inject(context: &Context) -> Option<FieldTable> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut headers = Outgoing(FieldTable::default());
    TraceContextPropagator::new().inject_context(context, &mut headers);
    Some(headers.0)
}

/// A header's text, when it is a long string (or a byte array, which some
/// clients send for text) of ASCII no longer than `max`.
fn header_text<'a>(headers: &'a FieldTable, name: &str, max: usize) -> Option<&'a str> {
    let bytes = match headers.inner().get(name)? {
        AMQPValue::LongString(text) => text.as_bytes(),
        AMQPValue::ByteArray(bytes) => bytes.as_slice(),
        _ => return None,
    };
    if bytes.len() > max || !bytes.is_ascii() {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Whether `value` is a W3C `traceparent`: `version-traceid-parentid-flags`,
/// lowercase hex of 2, 32, 16 and 2 digits, version not `ff`, exactly 55
/// bytes for version `00`, and for a later version 55 bytes or more
/// followed by `-`. The SDK's parser is laxer (it takes a short trace id).
/// All-zero ids are left to it to refuse.
fn well_formed(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() < TRACEPARENT_V00 {
        return false;
    }
    let hex = |from: usize, to: usize| {
        b[from..to]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let version_00 = &b[..2] == b"00";
    let rest = if version_00 {
        b.len() == TRACEPARENT_V00
    } else {
        b.len() == TRACEPARENT_V00 || b[TRACEPARENT_V00] == b'-'
    };
    hex(0, 2)
        && &b[..2] != b"ff"
        && b[2] == b'-'
        && hex(3, 35)
        && b[35] == b'-'
        && hex(36, 52)
        && b[52] == b'-'
        && hex(53, 55)
        && rest
}

/// Whether `value` may be a `tracestate`: printable ASCII, every list member
/// `key=value` with a key. The SDK checks the rest (it takes an empty key).
fn plausible_state(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.split(',').all(|member| {
            let member = member.trim_matches([' ', '\t']);
            member.is_empty() || member.find('=').is_some_and(|at| at > 0)
        })
}

/// The checked headers of a login event, for the propagator to read.
struct Incoming<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec![TRACEPARENT];
        if self.tracestate.is_some() {
            keys.push(TRACESTATE);
        }
        keys
    }
}

/// Headers of a ticket event, for the propagator to write.
struct Outgoing(FieldTable);

impl Injector for Outgoing {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0
                .insert(short(key), AMQPValue::LongString(value.into()));
        }
    }
}

/// The variable that names the traces endpoint, and its value: the
/// traces-only one wins, as in the SDK. Empty counts as unset.
fn endpoint_setting() -> Result<Option<(&'static str, String)>, ConfigError> {
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
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn config_error(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
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
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use proptest::prelude::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with(name: &str, value: AMQPValue) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), value);
        headers
    }

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(text.into())
    }

    fn text(headers: &FieldTable, name: &str) -> Option<String> {
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            other => panic!("{name} is not a long string: {other:?}"),
        }
    }

    fn span_context(context: &Context) -> SpanContext {
        context.span().span_context().clone()
    }

    #[test]
    fn a_well_formed_traceparent_is_read_from_a_long_string_or_a_byte_array() {
        for value in [long(PARENT), AMQPValue::ByteArray(PARENT.as_bytes().into())] {
            let headers = with(TRACEPARENT, value);
            let context = extract(Some(&headers)).expect("continued");
            let span = span_context(&context);
            assert!(span.is_remote());
            assert_eq!(
                span.trace_id(),
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
            );
            assert_eq!(
                span.span_id(),
                SpanId::from_hex("00f067aa0ba902b7").expect("hex")
            );
            assert_eq!(span.trace_flags(), TraceFlags::SAMPLED);
        }
    }

    #[test]
    fn anything_else_is_ignored() {
        let junk = "x".repeat(300);
        let cases: Vec<(&str, AMQPValue)> = vec![
            ("300 bytes of junk", long(&junk)),
            (
                "junk bytes",
                AMQPValue::ByteArray(vec![0xff, 0, 1, 2].into()),
            ),
            ("a number", AMQPValue::LongLongInt(7)),
            (
                "a table",
                AMQPValue::FieldTable(with(TRACEPARENT, long(PARENT))),
            ),
            ("empty", long("")),
            ("upper case", long(&PARENT.to_uppercase())),
            ("a short trace id", long("00-4bf9-00f067aa0ba902b7-01")),
            (
                "zero trace id",
                long("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            ),
            (
                "zero parent id",
                long("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            ),
            (
                "version ff",
                long("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ),
            ("version 00 with more", long(&format!("{PARENT}-extra"))),
            ("trailing space", long(&format!("{PARENT} "))),
            ("not ASCII", long(&PARENT.replace('4', "é"))),
            (
                "a later version run on",
                long("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            ),
            (
                "oversized later version",
                long(&format!(
                    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
                    "a".repeat(300)
                )),
            ),
        ];
        for (what, value) in cases {
            let headers = with(TRACEPARENT, value);
            assert!(extract(Some(&headers)).is_none(), "{what} was continued");
            assert!(
                carried_on(Some(&headers)).is_none(),
                "{what} was carried on"
            );
        }
        assert!(extract(None).is_none());
        assert!(extract(Some(&with("traceparent-ish", long(PARENT)))).is_none());
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let headers = with(TRACEPARENT, long(later));
        let carried = carried_on(Some(&headers)).expect("carried on");
        assert_eq!(text(&carried, TRACEPARENT).as_deref(), Some(PARENT));
    }

    #[test]
    fn without_an_exporter_the_login_events_trace_is_passed_on_unchanged() {
        let mut headers = with(TRACEPARENT, long(PARENT));
        headers.insert(
            TRACESTATE.into(),
            long("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        );
        headers.insert("x-other".into(), long("not carried"));
        let carried = carried_on(Some(&headers)).expect("carried on");
        assert_eq!(text(&carried, TRACEPARENT).as_deref(), Some(PARENT));
        assert_eq!(
            text(&carried, TRACESTATE).as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(carried.inner().len(), 2, "{carried:?}");
        assert!(carried_on(None).is_none());
        assert!(carried_on(Some(&FieldTable::default())).is_none());
    }

    #[test]
    fn a_bad_tracestate_is_dropped_and_the_traceparent_still_counts() {
        for state in [
            "k=".to_owned() + &"v".repeat(600),
            "k=v\u{7f}".to_owned(),
            "=no key".to_owned(),
        ] {
            let mut headers = with(TRACEPARENT, long(PARENT));
            headers.insert(TRACESTATE.into(), long(&state));
            let carried = carried_on(Some(&headers)).expect("carried on");
            assert_eq!(text(&carried, TRACEPARENT).as_deref(), Some(PARENT));
            assert_eq!(text(&carried, TRACESTATE), None, "{state:?}");
        }
    }

    #[test]
    fn inject_writes_the_w3c_form_and_nothing_for_no_span() {
        let span = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex"),
            SpanId::from_hex("b7ad6b7169203331").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let headers = inject(&Context::new().with_remote_span_context(span)).expect("a span");
        assert_eq!(
            text(&headers, TRACEPARENT).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert!(
            !headers.contains_key(TRACESTATE),
            "empty tracestate omitted"
        );
        assert!(inject(&Context::new()).is_none());
    }

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

    proptest! {
        #[test]
        fn no_header_value_panics_and_what_is_taken_goes_out_as_it_came(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            as_text in any::<bool>(),
            state in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let value = if as_text {
                AMQPValue::LongString(bytes.clone().into())
            } else {
                AMQPValue::ByteArray(bytes.clone().into())
            };
            let mut headers = with(TRACEPARENT, value);
            headers.insert(TRACESTATE.into(), AMQPValue::LongString(state.into()));
            if let Some(carried) = carried_on(Some(&headers)) {
                // Version, trace id and parent id as they came; of the
                // flags, the sampled bit.
                let out = text(&carried, TRACEPARENT).expect("a traceparent");
                prop_assert_eq!(&out.as_bytes()[3..53], &bytes[3..53]);
            }
        }

        #[test]
        fn every_well_formed_traceparent_is_continued(
            trace in "[0-9a-f]{32}",
            parent in "[0-9a-f]{16}",
            flags in "[0-9a-f]{2}",
        ) {
            prop_assume!(trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'));
            let traceparent = format!("00-{trace}-{parent}-{flags}");
            let headers = with(TRACEPARENT, long(&traceparent));
            let carried = carried_on(Some(&headers)).expect("carried on");
            let sampled = u8::from_str_radix(&flags, 16).expect("hex") & 1;
            prop_assert_eq!(
                text(&carried, TRACEPARENT),
                Some(format!("00-{trace}-{parent}-{sampled:02x}"))
            );
        }
    }
}
