//! Traces over OTLP, end to end: the real `ticket-worker run` against the
//! real RabbitMQ and Postgres, exporting to a stand-in OTLP/HTTP collector
//! that records what it is sent. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the
//! worker continues a login event's `traceparent`, exports the event's spans
//! (flushed at SIGTERM) without secrets or personal data, and `ticket.ready`
//! and `ticket.failed` carry the trace on; garbage trace headers are ignored;
//! without the setting, nothing is exported, no export thread runs, and a
//! login event's `traceparent` is passed on unchanged.

use crate::support::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use fake_taptalk::Knobs;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// The SDK's export thread, as `/proc/PID/task/*/comm` names it (15 bytes).
const EXPORT_THREAD: &str = "OpenTelemetry.T";

// ---------------------------------------------------------------- the collector

/// What a stand-in collector received: each POST /v1/traces, raw and decoded.
#[derive(Default)]
struct Received {
    raw: Vec<Bytes>,
    requests: Vec<ExportTraceServiceRequest>,
    /// Requests that were not OTLP/HTTP protobuf, or did not decode.
    refused: Vec<String>,
}

/// An OTLP/HTTP collector on 127.0.0.1 that records every export.
struct Collector {
    url: String,
    received: Arc<Mutex<Received>>,
    server: JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            url,
            received,
            server,
        }
    }

    fn received<T>(&self, read: impl FnOnce(&Received) -> T) -> T {
        read(&self.received.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every span received, with the `service.name` of its resource.
    fn spans(&self) -> Vec<(String, Span)> {
        self.received(|r| {
            let mut spans = Vec::new();
            for request in &r.requests {
                for resource in &request.resource_spans {
                    let service = resource
                        .resource
                        .as_ref()
                        .and_then(|r| text_attribute(&r.attributes, "service.name"))
                        .unwrap_or_default();
                    for scope in &resource.scope_spans {
                        for span in &scope.spans {
                            spans.push((service.clone(), span.clone()));
                        }
                    }
                }
            }
            spans
        })
    }

    fn request_count(&self) -> usize {
        self.received(|r| r.raw.len() + r.refused.len())
    }

    /// Every byte received, for looking for what must not be there.
    fn raw(&self) -> Vec<u8> {
        self.received(|r| r.raw.iter().flat_map(|b| b.iter().copied()).collect())
    }

    fn refused(&self) -> Vec<String> {
        self.received(|r| r.refused.clone())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn export(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let decoded = ExportTraceServiceRequest::decode(body.clone());
    let mut received = received.lock().unwrap_or_else(|p| p.into_inner());
    let ok = match decoded {
        Ok(request) if content_type == "application/x-protobuf" => {
            received.raw.push(body);
            received.requests.push(request);
            true
        }
        Ok(_) => {
            received
                .refused
                .push(format!("content type {content_type:?}"));
            false
        }
        Err(error) => {
            received.refused.push(format!("undecodable: {error}"));
            false
        }
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    // An empty ExportTraceServiceResponse: everything accepted.
    (
        status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::new(),
    )
}

fn text_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.clone()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- ticket events

/// A ticket event as a consumer sees it, headers included.
#[derive(Debug, Clone)]
struct Seen {
    routing_key: String,
    body: Value,
    headers: BTreeMap<String, AMQPValue>,
}

impl Seen {
    fn event_id(&self) -> &str {
        self.body["eventID"].as_str().unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<String> {
        match self.headers.get(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            other => panic!("header {name} is not a long string: {other:?}"),
        }
    }

    /// The (trace id, span id) of its `traceparent`, checked for the W3C form.
    fn trace(&self) -> Option<(String, String)> {
        let traceparent = self.header("traceparent")?;
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00", "{traceparent}");
        assert_eq!(parts[1].len(), 32, "{traceparent}");
        assert_eq!(parts[2].len(), 16, "{traceparent}");
        Some((parts[1].to_owned(), parts[2].to_owned()))
    }
}

/// Takes ticket events from the broker's durable tap queue until `n` have
/// arrived.
async fn ticket_events(h: &Harness, queue: &str, n: usize) -> Vec<Seen> {
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        while let Some(message) = h
            .broker
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let delivery = message.delivery;
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            seen.push(Seen {
                routing_key: delivery.routing_key.to_string(),
                body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                headers,
            });
        }
        if seen.len() >= n {
            return seen;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {n} ticket events (have {})",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn for_event<'a>(events: &'a [Seen], event_id: &str) -> &'a Seen {
    events
        .iter()
        .find(|e| e.event_id() == event_id)
        .unwrap_or_else(|| panic!("no ticket event for {event_id} in {events:#?}"))
}

// ---------------------------------------------------------------- login events

/// A fresh (trace id, span id), as a login service's tracer would make.
fn remote_span() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

fn traceparent((trace, span): &(String, String)) -> String {
    format!("00-{trace}-{span}-01")
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(text.into())
}

/// Publishes `event` as a login service would, with these headers.
async fn publish_with(h: &Harness, event: &Value, headers: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert((*name).into(), value.clone());
    }
    let id = event["eventID"].as_str().expect("an eventID");
    h.broker
        .publish_raw(
            event.to_string().as_bytes(),
            json_properties()
                .with_message_id(id.into())
                .with_headers(table),
        )
        .await;
}

/// A login event the worker refuses (`ticket.failed` `invalid`).
fn invalid_event() -> Value {
    let mut event = login_event("cust-invalid");
    if let Some(fields) = event.as_object_mut() {
        fields.remove("xcUserID");
    }
    event
}

fn id(event: &Value) -> String {
    event["eventID"].as_str().expect("an eventID").to_owned()
}

// ---------------------------------------------------------------- the worker

fn traced_env(h: &Harness, collector: &Collector, name: &str) -> Vec<(&'static str, String)> {
    let mut env = worker_env(&h.db.url, &h.broker, &h.taptalk.base_url(), name);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone()));
    env
}

/// The names of the process's threads.
fn threads(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path().join("comm");
            Some(std::fs::read_to_string(path).ok()?.trim().to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn the_login_events_trace_is_continued_exported_at_sigterm_and_carried_on() {
    let h = Harness::new(Knobs::default()).await;
    let collector = Collector::start().await;
    let tap = h.broker.durable_tap_queue().await;
    let mut env = traced_env(&h, &collector, &format!("traces-{}", unique()));
    // Nothing leaves on a timer during the test: what arrives is the flush
    // at SIGTERM.
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".into()));
    let mut worker = WorkerProcess::spawn(&env);
    let ready_parent = remote_span();
    let failed_parent = remote_span();
    let event = login_event("cust-traced");
    let invalid = invalid_event();
    publish_with(
        &h,
        &event,
        &[
            ("traceparent", long(&traceparent(&ready_parent))),
            ("tracestate", long("loginsvc=t61rcWkgMzE")),
        ],
    )
    .await;
    publish_with(
        &h,
        &invalid,
        &[("traceparent", long(&traceparent(&failed_parent)))],
    )
    .await;

    let events = ticket_events(&h, &tap, 2).await;
    let ready = for_event(&events, &id(&event));
    let failed = for_event(&events, &id(&invalid));
    assert_eq!(ready.routing_key, "ticket.ready");
    assert_eq!(failed.routing_key, "ticket.failed");
    assert_eq!(failed.body["reason"], "invalid");

    // (b), (c): the ticket events carry the trace on, from spans of the worker.
    let (ready_trace, ready_span) = ready.trace().expect("ticket.ready carries a traceparent");
    assert_eq!(ready_trace, ready_parent.0);
    assert_ne!(ready_span, ready_parent.1);
    assert!(
        ready
            .header("traceparent")
            .is_some_and(|t| t.ends_with("-01"))
    );
    assert_eq!(
        ready.header("tracestate").as_deref(),
        Some("loginsvc=t61rcWkgMzE")
    );
    let (failed_trace, failed_span) = failed.trace().expect("ticket.failed carries a traceparent");
    assert_eq!(failed_trace, failed_parent.0);
    assert_ne!(failed_span, failed_parent.1);

    assert!(
        threads(worker.pid()).iter().any(|t| t == EXPORT_THREAD),
        "the export thread runs: {:?}",
        threads(worker.pid())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        collector.request_count(),
        0,
        "nothing exported before SIGTERM"
    );
    assert_eq!(worker.terminate().await, Some(0), "{}", worker.logs());

    // (a): the spans, flushed at shutdown, continue the login events' traces.
    assert!(collector.refused().is_empty(), "{:?}", collector.refused());
    let spans = collector.spans();
    assert!(
        !spans.is_empty(),
        "spans exported at SIGTERM\n{}",
        worker.logs()
    );
    for (service, _) in &spans {
        assert_eq!(service, "ticket-worker");
    }
    let traces: BTreeSet<String> = spans.iter().map(|(_, s)| hex(&s.trace_id)).collect();
    assert_eq!(
        traces,
        BTreeSet::from([ready_parent.0.clone(), failed_parent.0.clone()]),
        "only the two events' traces are exported (no background loops)"
    );
    for ((trace, parent), (published, publisher, outcome)) in [
        (
            (&ready_parent.0, &ready_parent.1),
            (&ready_span, "broker.publish_ready", "Issued"),
        ),
        (
            (&failed_parent.0, &failed_parent.1),
            (
                &failed_span,
                "broker.publish_failed",
                "DeadLettered(Invalid)",
            ),
        ),
    ] {
        let in_trace: Vec<&Span> = spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| &hex(&s.trace_id) == trace)
            .collect();
        let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
        let root = in_trace
            .iter()
            .find(|s| s.name == "worker.login_event")
            .unwrap_or_else(|| panic!("no worker.login_event span in {names:?}"));
        assert_eq!(
            &hex(&root.parent_span_id),
            parent,
            "parented under the login service's span"
        );
        assert_eq!(root.kind, SpanKind::Consumer as i32);
        assert_eq!(
            text_attribute(&root.attributes, "outcome").as_deref(),
            Some(outcome)
        );
        assert!(names.contains(&"pipeline.decide"), "{names:?}");
        let ids: BTreeSet<String> = in_trace.iter().map(|s| hex(&s.span_id)).collect();
        for span in &in_trace {
            if span.span_id != root.span_id {
                assert!(
                    ids.contains(&hex(&span.parent_span_id)),
                    "{} is inside the event's span tree",
                    span.name
                );
            }
        }
        let publish = in_trace
            .iter()
            .find(|s| &hex(&s.span_id) == published)
            .unwrap_or_else(|| panic!("the ticket event's span {published} is not in {names:?}"));
        assert_eq!(publish.name, publisher);
    }
    let ready_trace_spans: Vec<&str> = spans
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == ready_parent.0)
        .map(|(_, s)| s.name.as_str())
        .collect();
    assert!(
        ready_trace_spans.contains(&"taptalk.request_ticket"),
        "{ready_trace_spans:?}"
    );

    // No secret and no personal data leaves in a span.
    let raw = collector.raw();
    let issued = h.taptalk.issued();
    assert!(!issued.is_empty());
    let tickets = issued.iter().map(|i| i.ticket.expose().to_owned());
    let personal = [
        "cust-traced",
        "ana@example.com",
        "+628123456789",
        "Ana Lima",
    ];
    let secrets = [KEY_SECRET.to_owned(), "xc_user_id".to_owned()];
    for needle in tickets
        .chain(secrets)
        .chain(personal.iter().map(|s| (*s).to_owned()))
    {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the exported spans contain {needle:?}"
        );
    }
}

#[tokio::test]
async fn garbage_trace_headers_are_ignored_and_the_event_still_gets_its_ticket() {
    let h = Harness::new(Knobs::default()).await;
    let collector = Collector::start().await;
    let tap = h.broker.durable_tap_queue().await;
    let mut env = traced_env(&h, &collector, &format!("traces-junk-{}", unique()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".into()));
    let mut worker = WorkerProcess::spawn(&env);
    let junk = "j".repeat(300);
    let mut bytes: Vec<u8> = (0..=255).collect();
    bytes.extend_from_slice(b"-\xff\xfe");
    let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let with_state = remote_span();
    let as_bytes = remote_span();
    let ignored: Vec<(&str, Vec<(&str, AMQPValue)>)> = vec![
        ("300 bytes of junk", vec![("traceparent", long(&junk))]),
        (
            "a byte array of junk",
            vec![("traceparent", AMQPValue::ByteArray(bytes.clone().into()))],
        ),
        (
            "a number",
            vec![("traceparent", AMQPValue::LongLongInt(42))],
        ),
        ("a zero trace id", vec![("traceparent", long(zero))]),
        ("junk in tracestate only", vec![("tracestate", long(&junk))]),
    ];
    let mut ids = Vec::new();
    for (what, headers) in &ignored {
        let event = login_event(&format!("cust-junk-{}", ids.len()));
        publish_with(&h, &event, headers).await;
        ids.push((*what, id(&event)));
    }
    let state_event = login_event("cust-big-state");
    let huge_state = format!("k={}", "v".repeat(10_000));
    publish_with(
        &h,
        &state_event,
        &[
            ("traceparent", long(&traceparent(&with_state))),
            ("tracestate", long(&huge_state)),
        ],
    )
    .await;
    let bytes_event = login_event("cust-bytes");
    publish_with(
        &h,
        &bytes_event,
        &[(
            "traceparent",
            AMQPValue::ByteArray(traceparent(&as_bytes).into_bytes().into()),
        )],
    )
    .await;

    let events = ticket_events(&h, &tap, ids.len() + 2).await;
    assert!(
        events.iter().all(|e| e.routing_key == "ticket.ready"),
        "{events:#?}"
    );
    let mut new_traces = BTreeSet::new();
    for (what, event_id) in &ids {
        let ready = for_event(&events, event_id);
        let (trace, _) = ready
            .trace()
            .unwrap_or_else(|| panic!("{what}: the worker's own trace is carried on"));
        assert_ne!(trace, "0".repeat(32), "{what}");
        assert!(new_traces.insert(trace), "{what}: a trace of its own");
        assert_eq!(ready.header("tracestate"), None, "{what}");
    }
    let state_ready = for_event(&events, &id(&state_event));
    assert_eq!(state_ready.trace().map(|t| t.0), Some(with_state.0.clone()));
    assert_eq!(
        state_ready.header("tracestate"),
        None,
        "an oversized tracestate is dropped"
    );
    let bytes_ready = for_event(&events, &id(&bytes_event));
    assert_eq!(bytes_ready.trace().map(|t| t.0), Some(as_bytes.0.clone()));

    assert_eq!(worker.terminate().await, Some(0));
    let logs = worker.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    let spans = collector.spans();
    for trace in &new_traces {
        let root = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| &hex(&s.trace_id) == trace && s.name == "worker.login_event")
            .unwrap_or_else(|| panic!("the span of trace {trace} was exported"));
        assert!(root.parent_span_id.is_empty(), "a root, not continued");
    }
    for parent in [&with_state, &as_bytes] {
        let root = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| hex(&s.trace_id) == parent.0 && s.name == "worker.login_event")
            .expect("the continued span was exported");
        assert_eq!(hex(&root.parent_span_id), parent.1);
    }
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_a_traceparent_passes_through() {
    let h = Harness::new(Knobs::default()).await;
    let collector = Collector::start().await;
    let tap = h.broker.durable_tap_queue().await;
    let mut env = worker_env(
        &h.db.url,
        &h.broker,
        &h.taptalk.base_url(),
        &format!("traces-off-{}", unique()),
    );
    // Other OTEL_* settings do not turn traces on, and are not even read:
    // this protocol would be refused if they were.
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", String::new()));
    env.push(("OTEL_SERVICE_NAME", "not-used".into()));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
    let mut worker = WorkerProcess::spawn(&env);
    let plain = login_event("cust-plain");
    let traced = login_event("cust-passed");
    let invalid = invalid_event();
    let parent = remote_span();
    let invalid_parent = remote_span();
    publish_with(&h, &plain, &[("x-something", long("else"))]).await;
    publish_with(
        &h,
        &traced,
        &[
            ("traceparent", long(&traceparent(&parent))),
            ("tracestate", long("loginsvc=t61rcWkgMzE")),
        ],
    )
    .await;
    publish_with(
        &h,
        &invalid,
        &[("traceparent", long(&traceparent(&invalid_parent)))],
    )
    .await;

    let events = ticket_events(&h, &tap, 3).await;
    let plain_ready = for_event(&events, &id(&plain));
    assert!(
        plain_ready.headers.is_empty(),
        "no trace headers, nothing copied: {:?}",
        plain_ready.headers
    );
    let traced_ready = for_event(&events, &id(&traced));
    assert_eq!(
        traced_ready.header("traceparent"),
        Some(traceparent(&parent)),
        "passed on unchanged"
    );
    assert_eq!(
        traced_ready.header("tracestate").as_deref(),
        Some("loginsvc=t61rcWkgMzE")
    );
    let failed = for_event(&events, &id(&invalid));
    assert_eq!(failed.routing_key, "ticket.failed");
    assert_eq!(
        failed.header("traceparent"),
        Some(traceparent(&invalid_parent))
    );

    let threads = threads(worker.pid());
    assert!(!threads.is_empty(), "the worker's threads are listed");
    assert!(
        !threads.iter().any(|t| t.starts_with("OpenTelemetry")),
        "no export thread: {threads:?}"
    );
    assert_eq!(worker.terminate().await, Some(0));
    assert_eq!(collector.request_count(), 0);
}

#[tokio::test]
async fn a_malformed_otlp_setting_is_refused_naming_it_with_the_others() {
    for (setting, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
    ] {
        let output = bin()
            .arg("run")
            .env(setting, value)
            .output()
            .expect("run ticket-worker");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{setting}: not an http:// or https:// URL")),
            "{stderr}"
        );
        // Listed with the worker's other missing settings.
        assert!(stderr.contains("AMQP_URL: missing"), "{stderr}");
    }
    let output = bin()
        .arg("run")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .expect("run ticket-worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL: \"grpc\" is not supported"),
        "{stderr}"
    );
    let output = bin()
        .arg("run")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://user:Otlp-Pw-81f2@[::1",
        )
        .output()
        .expect("run ticket-worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("Otlp-Pw-81f2"), "{stderr}");
}
