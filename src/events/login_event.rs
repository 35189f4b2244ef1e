//! The login event: the message a login service publishes, parsed and checked
//! before anything else happens to it.
//!
//! Parsing never panics and never guesses. Whatever is wrong with a message is
//! reported as an [`InvalidEvent`] that carries as much of the event's identity
//! as could still be read, so the worker can answer with `ticket.failed`.
//!
//! Not guessing includes repeated keys: JSON readers disagree about which of
//! two `"eventID"`s counts (most take the last, some the first, some refuse),
//! so an event that writes a top-level key twice — compared after unescaping,
//! `"eventID"` and `"event\u0049D"` are one key — is refused as
//! [`Problem::DuplicateKey`]. Repeats inside nested values are not checked:
//! nested values only ever belong to keys the worker ignores (every field it
//! reads must be a string), so no reading of them changes the event.
//!
//! Parsing does not read the clock; [`LoginEvent::check_clock_skew`] refuses
//! an `occurredAt` in the future, given the time.
//!
//! [`LoginEvent::body_event_id`] reads only the identity, with the same
//! reader: `ticket-worker publish` sets the AMQP `message_id` from it, so it
//! never picks one of two `eventID`s where the worker would refuse both.

use crate::domain::{EventId, Field, TicketRequest, json_kind};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// The largest login event the worker accepts by default (`MAX_EVENT_BYTES`).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

/// How far ahead of the worker's clock `occurredAt` may be by default
/// (`MAX_CLOCK_SKEW`).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The `eventID` a body gives itself, as [`LoginEvent::body_event_id`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEventId {
    /// A valid `eventID`, written once.
    One(EventId),
    /// None to use: the body is not a JSON object, or it has no `eventID`,
    /// or its `eventID` is `null` or not a valid id.
    Absent,
    /// `eventID` is written more than once: which copy counts is what JSON
    /// readers disagree about, so neither is an answer.
    Repeated,
}

/// What the AMQP envelope says about a message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envelope<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub message_id: Option<&'a str>,
}

/// A login event that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginEvent {
    pub event_id: EventId,
    /// When the user logged in, if the login service said.
    pub occurred_at: Option<DateTime<Utc>>,
    pub request: TicketRequest,
}

impl LoginEvent {
    /// Parses a message body under its AMQP envelope.
    pub fn parse(
        body: &[u8],
        envelope: &Envelope<'_>,
        max_bytes: usize,
    ) -> Result<LoginEvent, InvalidEvent> {
        let message_id = envelope.message_id.and_then(|id| EventId::parse(id).ok());
        let reject =
            |problem, message: String| InvalidEvent::new(problem, message, message_id.clone());

        if body.len() > max_bytes {
            return Err(reject(
                Problem::TooLarge,
                format!(
                    "body is {} bytes, the limit is {max_bytes} (MAX_EVENT_BYTES)",
                    body.len()
                ),
            ));
        }
        if let Some(content_type) = envelope.content_type.filter(|ct| !is_json_content_type(ct)) {
            return Err(reject(
                Problem::ContentType,
                format!(
                    "content type {:?} is not application/json",
                    clip(content_type)
                ),
            ));
        }
        if let Some(encoding) = envelope
            .content_encoding
            .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
        {
            return Err(reject(
                Problem::ContentType,
                format!(
                    "content encoding {:?} is not supported; send plain JSON",
                    clip(encoding)
                ),
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| reject(Problem::NotUtf8, format!("body is not UTF-8: {e}")))?;
        let body: Body = serde_json::from_str(text)
            .map_err(|e| reject(Problem::NotJson, format!("body is not JSON: {e}")))?;
        let top = match body {
            Body::Object(top) => top,
            Body::Other(kind) => {
                return Err(reject(
                    Problem::NotAnObject,
                    format!("body must be a JSON object, not {kind}"),
                ));
            }
        };
        Self::from_object(&top.object, &top.repeated, message_id)
    }

    fn from_object(
        object: &Map<String, Value>,
        repeated: &Repeats,
        message_id: Option<EventId>,
    ) -> Result<LoginEvent, InvalidEvent> {
        // A repeated key has no one value to echo.
        let readable = |key: &str| {
            (!repeated.contains(key))
                .then(|| readable_string(object, key))
                .flatten()
        };
        let salvage = |mut invalid: InvalidEvent| {
            invalid.xc_user_id = readable(Field::XcUserId.name());
            invalid.user_device_id = readable(Field::UserDeviceId.name());
            invalid
        };
        if let Some(key) = repeated.first() {
            // The body's eventID still identifies the event, unless it is the
            // repeated key: then only the message_id may.
            let event_id = if repeated.contains("eventID") {
                message_id
            } else {
                object
                    .get("eventID")
                    .and_then(Value::as_str)
                    .and_then(|raw| EventId::parse(raw).ok())
                    .or(message_id)
            };
            let mut invalid =
                InvalidEvent::new(Problem::DuplicateKey, repeated.message(), event_id);
            invalid.field = known_key(key);
            return Err(salvage(invalid));
        }
        let body_id = match object.get("eventID") {
            None | Some(Value::Null) => None,
            Some(Value::String(raw)) => Some(EventId::parse(raw).map_err(|problem| {
                salvage(
                    InvalidEvent::new(
                        Problem::InvalidEventId,
                        format!("eventID {problem}"),
                        message_id.clone(),
                    )
                    .with_field("eventID"),
                )
            })?),
            Some(other) => {
                return Err(salvage(
                    InvalidEvent::new(
                        Problem::InvalidEventId,
                        format!("eventID must be a string, not {}", json_kind(other)),
                        message_id,
                    )
                    .with_field("eventID"),
                ));
            }
        };
        let Some(event_id) = body_id.or(message_id) else {
            return Err(salvage(
                InvalidEvent::new(
                    Problem::MissingEventId,
                    "the event has no eventID and the message has no message_id".into(),
                    None,
                )
                .with_field("eventID"),
            ));
        };
        let invalid = |problem, message: String, field: &'static str| {
            salvage(InvalidEvent::new(problem, message, Some(event_id.clone())).with_field(field))
        };
        let occurred_at = match object.get("occurredAt") {
            None | Some(Value::Null) => None,
            Some(Value::String(raw)) => Some(
                DateTime::parse_from_rfc3339(raw)
                    .map_err(|e| {
                        invalid(
                            Problem::InvalidOccurredAt,
                            format!("occurredAt must be an RFC 3339 timestamp: {e}"),
                            "occurredAt",
                        )
                    })?
                    .with_timezone(&Utc),
            ),
            Some(other) => {
                return Err(invalid(
                    Problem::InvalidOccurredAt,
                    format!("occurredAt must be a string, not {}", json_kind(other)),
                    "occurredAt",
                ));
            }
        };
        let request = TicketRequest::from_json(object)
            .map_err(|e| invalid(Problem::InvalidField, e.to_string(), e.field.name()))?;
        Ok(LoginEvent {
            event_id,
            occurred_at,
            request,
        })
    }

    /// The `eventID` of a message body, read as [`LoginEvent::parse`] reads
    /// the body (keys compared after unescaping), whatever else is wrong with
    /// it; nothing else is checked.
    pub fn body_event_id(body: &[u8]) -> BodyEventId {
        let Ok(Body::Object(top)) = serde_json::from_slice::<Body>(body) else {
            return BodyEventId::Absent;
        };
        if top.repeated.contains("eventID") {
            return BodyEventId::Repeated;
        }
        top.object
            .get("eventID")
            .and_then(Value::as_str)
            .and_then(|raw| EventId::parse(raw).ok())
            .map_or(BodyEventId::Absent, BodyEventId::One)
    }

    /// How old the event is at `now`, if it says when it happened.
    pub fn age(&self, now: DateTime<Utc>) -> Option<TimeDelta> {
        self.occurred_at.map(|at| now.signed_duration_since(at))
    }

    /// Refuses an event whose `occurredAt` is more than `max_skew`
    /// (`MAX_CLOCK_SKEW`) ahead of `now`, the worker's clock. A login cannot
    /// happen in the future: such a time is a wrong clock or a made-up value,
    /// and it would keep the event young past `MAX_EVENT_AGE`. An event that
    /// does not say when it happened passes.
    ///
    /// The refusal is an invalid event like any other (`invalid_occurred_at`,
    /// field `occurredAt`), with the event's id and user.
    pub fn check_clock_skew(
        &self,
        now: DateTime<Utc>,
        max_skew: Duration,
    ) -> Result<(), InvalidEvent> {
        let Some(at) = self.occurred_at else {
            return Ok(());
        };
        let allowed = TimeDelta::from_std(max_skew).unwrap_or(TimeDelta::MAX);
        let ahead = at.signed_duration_since(now);
        if ahead <= allowed {
            return Ok(());
        }
        let millis = u64::try_from(ahead.num_milliseconds()).unwrap_or_default();
        let message = format!(
            "occurredAt {} is {} ahead of the worker's clock, more than MAX_CLOCK_SKEW ({}) allows; \
             send the time of the login from a synchronised clock",
            at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            humantime::format_duration(Duration::from_millis(millis)),
            humantime::format_duration(max_skew),
        );
        Err(self
            .refused(Problem::InvalidOccurredAt, message)
            .with_field("occurredAt"))
    }

    /// This event refused for `problem`, although its body parsed: as
    /// invalid as any other, answered by its id, user and device.
    pub fn refused(&self, problem: Problem, message: String) -> InvalidEvent {
        let mut invalid = InvalidEvent::new(problem, message, Some(self.event_id.clone()));
        invalid.xc_user_id = Some(self.request.xc_user_id().to_owned());
        invalid.user_device_id = Some(self.request.user_device_id().to_owned());
        invalid
    }
}

/// What kind of wrong an invalid event is; the stable code goes into the
/// dead-letter headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    TooLarge,
    ContentType,
    NotUtf8,
    NotJson,
    NotAnObject,
    MissingEventId,
    InvalidEventId,
    InvalidOccurredAt,
    InvalidField,
    /// A top-level key is written more than once.
    DuplicateKey,
    /// The message's headers nest or number beyond what the worker reads in
    /// full (the body may be fine).
    UnreadableHeaders,
}

impl Problem {
    pub fn code(self) -> &'static str {
        match self {
            Problem::TooLarge => "too_large",
            Problem::ContentType => "content_type",
            Problem::NotUtf8 => "not_utf8",
            Problem::NotJson => "not_json",
            Problem::NotAnObject => "not_an_object",
            Problem::MissingEventId => "missing_event_id",
            Problem::InvalidEventId => "invalid_event_id",
            Problem::InvalidOccurredAt => "invalid_occurred_at",
            Problem::InvalidField => "invalid_field",
            Problem::DuplicateKey => "duplicate_key",
            Problem::UnreadableHeaders => "unreadable_headers",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A message that is not a valid login event, with whatever identity could be
/// read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    pub problem: Problem,
    pub message: String,
    /// The offending field's JSON name, when one field is to blame.
    pub field: Option<&'static str>,
    pub event_id: Option<EventId>,
    pub xc_user_id: Option<String>,
    pub user_device_id: Option<String>,
}

impl InvalidEvent {
    fn new(problem: Problem, message: String, event_id: Option<EventId>) -> InvalidEvent {
        InvalidEvent {
            problem,
            message,
            field: None,
            event_id,
            xc_user_id: None,
            user_device_id: None,
        }
    }

    fn with_field(mut self, field: &'static str) -> InvalidEvent {
        self.field = Some(field);
        self
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid login event ({}): {}",
            self.problem, self.message
        )
    }
}

impl std::error::Error for InvalidEvent {}

/// A message body, read as JSON once: an object's members, or what else it is.
enum Body {
    Object(TopLevel),
    /// Not an object: which JSON type it is instead, for the error message.
    Other(&'static str),
}

/// The members of the body's object: the first value of every key, and the
/// keys written more than once (their later values are only checked to be
/// JSON, never kept).
struct TopLevel {
    object: Map<String, Value>,
    repeated: Repeats,
}

/// The top-level keys an object writes more than once.
#[derive(Debug, Default)]
struct Repeats {
    /// The first key found repeated, in the order of the body.
    first: Option<String>,
    all: BTreeSet<String>,
}

impl Repeats {
    fn add(&mut self, key: &str) {
        if self.all.insert(key.to_owned()) && self.first.is_none() {
            self.first = Some(key.to_owned());
        }
    }

    fn first(&self) -> Option<&str> {
        self.first.as_deref()
    }

    fn contains(&self, key: &str) -> bool {
        self.all.contains(key)
    }

    /// What the refusal says: the first repeated key, clipped, and how many
    /// others there are.
    fn message(&self) -> String {
        let key = self.first().unwrap_or_default();
        let others = match self.all.len().saturating_sub(1) {
            0 => String::new(),
            1 => " (and 1 other key)".to_owned(),
            n => format!(" (and {n} other keys)"),
        };
        format!(
            "key {:?} appears more than once{others}; JSON readers disagree about which value counts, so send each key once",
            clip(key)
        )
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

/// Reads the top level of a body; below it, values are plain
/// [`serde_json::Value`]s (so nested repeats keep serde_json's last value).
struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    /// Keeps each key's first value and notes the repeats, reading on to the
    /// end: a syntax error anywhere still makes the body not JSON, and the
    /// identity after a repeat can still be read.
    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Body, A::Error> {
        let mut object = Map::new();
        let mut repeated = Repeats::default();
        // Keys arrive unescaped: "event\u0049D" is "eventID".
        while let Some(key) = members.next_key::<String>()? {
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(members.next_value::<Value>()?);
                }
                Entry::Occupied(slot) => {
                    members.next_value::<IgnoredAny>()?;
                    repeated.add(slot.key());
                }
            }
        }
        Ok(Body::Object(TopLevel { object, repeated }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut elements: A) -> Result<Body, A::Error> {
        while elements.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Body::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
        Ok(Body::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body, E> {
        Ok(Body::Other("a string"))
    }
}

/// The name to report as `field` for a key: a TapTalk field, `eventID` or
/// `occurredAt`; `None` for keys the worker ignores.
fn known_key(key: &str) -> Option<&'static str> {
    ["eventID", "occurredAt"]
        .into_iter()
        .chain(Field::ALL.map(Field::name))
        .find(|name| *name == key)
}

/// `application/json`, `application/json; charset=utf-8`, or a `+json` type.
fn is_json_content_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let charset_ok = parts.all(|param| match param.split_once('=') {
        Some((key, value)) if key.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    charset_ok
        && (essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json")))
}

/// A string field that can safely be echoed into a `ticket.failed` event.
fn readable_string(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key) {
        Some(Value::String(s))
            if !s.is_empty() && s.chars().count() <= 255 && !s.chars().any(char::is_control) =>
        {
            Some(s.clone())
        }
        _ => None,
    }
}

/// Shortens a value echoed in an error message.
fn clip(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        value.chars().take(MAX).chain("…".chars()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JSON: Envelope<'static> = Envelope {
        content_type: Some("application/json"),
        content_encoding: None,
        message_id: None,
    };

    fn event() -> Value {
        json!({
            "eventID": "evt-1",
            "occurredAt": "2026-11-24T06:31:57Z",
            "userIPAddress": "203.0.113.7",
            "userAgent": "Mozilla/5.0",
            "userPlatform": "android",
            "userDeviceID": "dev-1",
            "xcUserID": "cust-42",
            "fullName": "Ana Lima"
        })
    }

    fn parse_value(value: &Value, envelope: &Envelope<'_>) -> Result<LoginEvent, InvalidEvent> {
        LoginEvent::parse(
            value.to_string().as_bytes(),
            envelope,
            DEFAULT_MAX_EVENT_BYTES,
        )
    }

    #[test]
    fn parses_a_valid_event() {
        let event = parse_value(&event(), &JSON).expect("valid");
        assert_eq!(event.event_id.as_str(), "evt-1");
        assert_eq!(event.request.xc_user_id(), "cust-42");
        assert_eq!(
            event.occurred_at.map(|t| t.to_rfc3339()),
            Some("2026-11-24T06:31:57+00:00".into())
        );
    }

    #[test]
    fn message_id_stands_in_for_a_missing_event_id() {
        let mut body = event();
        body.as_object_mut().map(|o| o.remove("eventID"));
        let envelope = Envelope {
            message_id: Some("msg-9"),
            ..JSON
        };
        assert_eq!(
            parse_value(&body, &envelope).map(|e| e.event_id.to_string()),
            Ok("msg-9".into())
        );
        let invalid = parse_value(&body, &JSON).expect_err("no id");
        assert_eq!(invalid.problem, Problem::MissingEventId);
        assert_eq!(invalid.event_id, None);
        assert_eq!(invalid.xc_user_id.as_deref(), Some("cust-42"));
    }

    #[test]
    fn body_event_id_wins_over_message_id() {
        let envelope = Envelope {
            message_id: Some("msg-9"),
            ..JSON
        };
        assert_eq!(
            parse_value(&event(), &envelope).map(|e| e.event_id.to_string()),
            Ok("evt-1".into())
        );
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/vnd.login+json",
        ] {
            let envelope = Envelope {
                content_type: Some(ok),
                ..JSON
            };
            assert!(parse_value(&event(), &envelope).is_ok(), "{ok}");
        }
        let absent = Envelope {
            content_type: None,
            ..JSON
        };
        assert!(parse_value(&event(), &absent).is_ok());
        for bad in [
            "text/plain",
            "application/json; charset=latin1",
            "application/xml",
        ] {
            let envelope = Envelope {
                content_type: Some(bad),
                ..JSON
            };
            let invalid = parse_value(&event(), &envelope).expect_err(bad);
            assert_eq!(invalid.problem, Problem::ContentType, "{bad}");
        }
        let gzip = Envelope {
            content_encoding: Some("gzip"),
            ..JSON
        };
        assert_eq!(
            parse_value(&event(), &gzip).map_err(|e| e.problem),
            Err(Problem::ContentType)
        );
    }

    #[test]
    fn poison_bodies_are_classified() {
        let envelope = Envelope {
            message_id: Some("m-1"),
            ..JSON
        };
        let cases: Vec<(&[u8], Problem)> = vec![
            (b"\xff\xfe{}", Problem::NotUtf8),
            (b"{not json", Problem::NotJson),
            (b"", Problem::NotJson),
            (b"[1,2]", Problem::NotAnObject),
            (b"\"a string\"", Problem::NotAnObject),
            (b"null", Problem::NotAnObject),
        ];
        for (body, problem) in cases {
            let invalid =
                LoginEvent::parse(body, &envelope, DEFAULT_MAX_EVENT_BYTES).expect_err("poison");
            assert_eq!(invalid.problem, problem, "{body:?}");
            assert_eq!(invalid.event_id.as_ref().map(EventId::as_str), Some("m-1"));
        }
    }

    #[test]
    fn size_limit() {
        let body = event().to_string();
        let invalid =
            LoginEvent::parse(body.as_bytes(), &JSON, body.len() - 1).expect_err("too big");
        assert_eq!(invalid.problem, Problem::TooLarge);
        assert!(LoginEvent::parse(body.as_bytes(), &JSON, body.len()).is_ok());
    }

    #[test]
    fn invalid_fields_keep_the_identity() {
        let mut body = event();
        body["userPlatform"] = json!("windows");
        let invalid = parse_value(&body, &JSON).expect_err("platform");
        assert_eq!(invalid.problem, Problem::InvalidField);
        assert_eq!(invalid.field, Some("userPlatform"));
        assert_eq!(
            invalid.event_id.as_ref().map(EventId::as_str),
            Some("evt-1")
        );
        assert_eq!(invalid.user_device_id.as_deref(), Some("dev-1"));
        assert!(invalid.message.contains("(103)"), "{}", invalid.message);
    }

    #[test]
    fn event_id_and_occurred_at_types() {
        let mut body = event();
        body["eventID"] = json!(42);
        let invalid = parse_value(&body, &JSON).expect_err("numeric id");
        assert_eq!(
            (invalid.problem, invalid.field),
            (Problem::InvalidEventId, Some("eventID"))
        );

        let mut body = event();
        body["occurredAt"] = json!("yesterday");
        let invalid = parse_value(&body, &JSON).expect_err("bad time");
        assert_eq!(invalid.problem, Problem::InvalidOccurredAt);
        assert_eq!(
            invalid.event_id.as_ref().map(EventId::as_str),
            Some("evt-1")
        );

        let mut body = event();
        body["occurredAt"] = Value::Null;
        assert_eq!(parse_value(&body, &JSON).map(|e| e.occurred_at), Ok(None));
    }

    /// A valid event's JSON text with `member` written first, before its own
    /// members (serde_json writes them in key order: eventID, fullName,
    /// occurredAt, userAgent, userDeviceID, userIPAddress, userPlatform, xcUserID).
    fn with_first(member: &str) -> String {
        let text = event().to_string();
        format!("{{{member},{}", text.trim_start_matches('{'))
    }

    fn parse_text(text: &str, envelope: &Envelope<'_>) -> Result<LoginEvent, InvalidEvent> {
        LoginEvent::parse(text.as_bytes(), envelope, DEFAULT_MAX_EVENT_BYTES)
    }

    #[test]
    fn a_repeated_field_is_refused_and_named_and_the_identity_kept() {
        // The second userPlatform comes before xcUserID: reading goes on past
        // the repeat, so xcUserID is still salvaged.
        let invalid =
            parse_text(&with_first(r#""userPlatform":"web""#), &JSON).expect_err("two platforms");
        assert_eq!(
            (invalid.problem, invalid.field),
            (Problem::DuplicateKey, Some("userPlatform"))
        );
        assert!(
            invalid
                .message
                .starts_with(r#"key "userPlatform" appears more than once;"#),
            "{}",
            invalid.message
        );
        assert_eq!(
            invalid.event_id.as_ref().map(EventId::as_str),
            Some("evt-1")
        );
        assert_eq!(invalid.xc_user_id.as_deref(), Some("cust-42"));
        assert_eq!(invalid.user_device_id.as_deref(), Some("dev-1"));

        // A repeated xcUserID is not echoed: there is no one value to echo.
        let invalid =
            parse_text(&with_first(r#""xcUserID":"cust-7""#), &JSON).expect_err("two users");
        assert_eq!(invalid.field, Some("xcUserID"));
        assert_eq!(invalid.xc_user_id, None);
        assert_eq!(invalid.user_device_id.as_deref(), Some("dev-1"));

        let invalid = parse_text(&with_first(r#""occurredAt":null"#), &JSON).expect_err("twice");
        assert_eq!(
            (invalid.problem, invalid.field),
            (Problem::DuplicateKey, Some("occurredAt"))
        );

        // Keys the worker ignores may not repeat either; no field is to blame.
        let body = with_first(r#""extra":1,"extra":2,"more":1,"more":2,"fullName":"X""#);
        let invalid = parse_text(&body, &JSON).expect_err("repeats");
        assert_eq!(
            (invalid.problem, invalid.field),
            (Problem::DuplicateKey, None)
        );
        assert!(
            invalid
                .message
                .starts_with(r#"key "extra" appears more than once (and 2 other keys);"#),
            "{}",
            invalid.message
        );
        assert_eq!(
            invalid.event_id.as_ref().map(EventId::as_str),
            Some("evt-1")
        );
    }

    #[test]
    fn body_event_id_reads_the_id_as_parse_does_and_never_picks_a_copy() {
        let id = |body: &str| LoginEvent::body_event_id(body.as_bytes());
        let one = |raw: &str| BodyEventId::One(EventId::parse(raw).expect("valid id"));
        assert_eq!(id(&event().to_string()), one("evt-1"));
        assert_eq!(
            id(r#"{"eventID": "evt-1", "fullName": "A", "fullName": "B"}"#),
            one("evt-1")
        );
        assert_eq!(
            id(r#"{"eventID": "evt-1", "eventID": "evt-2"}"#),
            BodyEventId::Repeated
        );
        assert_eq!(
            id(r#"{"event\u0049D": "evt-1", "eventID": "evt-1"}"#),
            BodyEventId::Repeated
        );
        for absent in [
            r#"{"xcUserID": "cust-42"}"#,
            r#"{"eventID": null}"#,
            r#"{"eventID": ""}"#,
            r#"{"eventID": 7}"#,
            r#"["evt-1"]"#,
            "not json",
            r#"{"eventID": "evt-1""#,
        ] {
            assert_eq!(id(absent), BodyEventId::Absent, "{absent}");
        }
    }

    #[test]
    fn a_repeated_event_id_never_identifies_the_event() {
        let envelope = Envelope {
            message_id: Some("msg-9"),
            ..JSON
        };
        // Different copies, equal copies, and a copy spelled with an escape.
        for member in [
            r#""eventID":"evt-2""#,
            r#""eventID":"evt-1""#,
            r#""event\u0049D":"evt-2""#,
        ] {
            let body = with_first(member);
            let invalid = parse_text(&body, &envelope).expect_err(&body);
            assert_eq!(
                (invalid.problem, invalid.field),
                (Problem::DuplicateKey, Some("eventID")),
                "{body}"
            );
            assert_eq!(
                invalid.event_id.as_ref().map(EventId::as_str),
                Some("msg-9"),
                "{body}"
            );
            assert_eq!(invalid.xc_user_id.as_deref(), Some("cust-42"));
            let invalid = parse_text(&body, &JSON).expect_err(&body);
            assert_eq!(invalid.event_id, None, "{body}: no message_id, no id");
        }
    }

    #[test]
    fn repeats_below_the_top_level_do_not_matter() {
        let body = with_first(r#""meta":{"k":1,"k":2,"eventID":"a","eventID":"b"}"#);
        assert_eq!(
            parse_text(&body, &JSON).map(|e| e.event_id.to_string()),
            Ok("evt-1".into())
        );
    }

    #[test]
    fn broken_json_is_not_json_wherever_the_repeat_is() {
        let invalid = parse_text(r#"{"eventID":"a","eventID":"b","#, &JSON).expect_err("cut off");
        assert_eq!(invalid.problem, Problem::NotJson);
        let invalid = parse_text(r#"{"a":1,"a":2} trailing"#, &JSON).expect_err("trailing");
        assert_eq!(invalid.problem, Problem::NotJson);
    }

    #[test]
    fn a_long_repeated_key_is_clipped_in_the_message() {
        let key = "k".repeat(10_000);
        let body = with_first(&format!(r#""{key}":1,"{key}":2"#));
        let invalid = parse_text(&body, &JSON).expect_err("repeat");
        assert_eq!(invalid.problem, Problem::DuplicateKey);
        assert!(invalid.message.len() < 300, "{}", invalid.message);
        assert!(invalid.message.contains(&format!("{}…", "k".repeat(64))));
    }

    #[test]
    fn a_body_that_is_not_an_object_says_what_it_is() {
        for (body, kind) in [
            ("[1, {\"a\": 2}]", "an array"),
            ("\"text\"", "a string"),
            ("null", "null"),
            ("true", "a boolean"),
            ("-3", "a number"),
            ("18446744073709551615", "a number"),
            ("1.5e3", "a number"),
        ] {
            let invalid = parse_text(body, &JSON).expect_err(body);
            assert_eq!(invalid.problem, Problem::NotAnObject, "{body}");
            assert_eq!(
                invalid.message,
                format!("body must be a JSON object, not {kind}")
            );
        }
    }

    fn time(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn a_login_ahead_of_the_clock_passes_up_to_the_allowance() {
        // The event says 06:31:57; the worker's clock says a minute earlier.
        let event = parse_value(&event(), &JSON).expect("valid");
        let now = time("2026-11-24T06:30:57Z");
        let minute = Duration::from_secs(60);
        assert_eq!(event.check_clock_skew(now, minute), Ok(()), "just inside");
        let just_outside = event
            .check_clock_skew(now - TimeDelta::milliseconds(1), minute)
            .expect_err("just outside");
        assert_eq!(
            (just_outside.problem, just_outside.field),
            (Problem::InvalidOccurredAt, Some("occurredAt"))
        );
        assert!(
            just_outside.message.starts_with(
                "occurredAt 2026-11-24T06:31:57Z is 1m 1ms ahead of the worker's clock, \
                 more than MAX_CLOCK_SKEW (1m) allows;"
            ),
            "{}",
            just_outside.message
        );
        assert!(
            event
                .check_clock_skew(now, minute - Duration::from_millis(1))
                .is_err(),
            "a smaller allowance"
        );
        // Past times are the age check's business.
        assert_eq!(
            event.check_clock_skew(time("2030-01-01T00:00:00Z"), minute),
            Ok(())
        );
        // No allowance: exactly now passes, a millisecond later does not.
        let at = time("2026-11-24T06:31:57Z");
        assert_eq!(event.check_clock_skew(at, Duration::ZERO), Ok(()));
        assert!(
            event
                .check_clock_skew(at - TimeDelta::milliseconds(1), Duration::ZERO)
                .is_err()
        );
    }

    #[test]
    fn a_login_in_the_year_9999_is_invalid_with_its_identity() {
        let mut body = event();
        body["occurredAt"] = json!("9999-01-01T00:00:00Z");
        let event = parse_value(&body, &JSON).expect("parses without the clock");
        let now = time("2026-11-24T06:31:57Z");
        let invalid = event
            .check_clock_skew(now, Duration::from_secs(60))
            .expect_err("the future");
        assert_eq!(invalid.problem, Problem::InvalidOccurredAt);
        assert_eq!(invalid.field, Some("occurredAt"));
        assert_eq!(
            invalid.event_id.as_ref().map(EventId::as_str),
            Some("evt-1")
        );
        assert_eq!(invalid.xc_user_id.as_deref(), Some("cust-42"));
        assert_eq!(invalid.user_device_id.as_deref(), Some("dev-1"));
        assert!(
            invalid
                .message
                .starts_with("occurredAt 9999-01-01T00:00:00Z is 7971years 11months")
                && invalid
                    .message
                    .contains("more than MAX_CLOCK_SKEW (1m) allows"),
            "{}",
            invalid.message
        );
        // However large the allowance, nothing overflows.
        assert_eq!(event.check_clock_skew(now, Duration::MAX), Ok(()));

        let mut body = self::event();
        body["occurredAt"] = Value::Null;
        let undated = parse_value(&body, &JSON).expect("valid");
        assert_eq!(undated.check_clock_skew(now, Duration::ZERO), Ok(()));
    }

    #[test]
    fn age_is_measured_from_occurred_at() {
        let event = parse_value(&event(), &JSON).expect("valid");
        let now =
            DateTime::parse_from_rfc3339("2026-11-24T06:41:57Z").map(|t| t.with_timezone(&Utc));
        assert_eq!(
            now.map(|now| event.age(now)),
            Ok(Some(TimeDelta::minutes(10)))
        );
    }
}
