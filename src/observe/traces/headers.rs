//! The W3C trace context in AMQP headers: reading a login event's
//! `traceparent` and `tracestate` (hostile input: anything not well-formed
//! is ignored), opening the event's span as their child, and writing them
//! into the ticket events that answer it. Also [`short`]: text cut to an
//! AMQP short string, as a header name must be (the broker re-exports it).

use super::{EVENT_SPAN, exporting};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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

/// An AMQP short string from any text, cut at 255 bytes on a character
/// boundary (converting longer text directly would panic).
pub fn short(value: &str) -> ShortString {
    let mut end = value.len().min(255);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use proptest::prelude::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn short_strings_are_cut_on_a_character_boundary() {
        assert_eq!(short("abc").as_str(), "abc");
        let long = "é".repeat(200);
        let cut = short(&long);
        assert!(cut.as_str().len() <= 255);
        assert_eq!(cut.as_str().chars().count(), 127);
    }

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
