//! Property tests of the login-event parser: whatever the bytes, it never
//! panics, and it accepts exactly the events an independent reading of the
//! rules accepts — no invalid event gets through, no valid one is refused —
//! and forwards the TapTalk fields untouched.
//!
//! Bodies are written member by member, so they can repeat a top-level key
//! (sometimes spelled with `\u` escapes), which a `serde_json::Map` cannot hold.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::net::IpAddr;
use ticket_worker::events::{Envelope, InvalidEvent, LoginEvent};

const MAX: usize = 64 * 1024;

const REQUIRED: [&str; 6] = [
    "userIPAddress",
    "userAgent",
    "userPlatform",
    "userDeviceID",
    "xcUserID",
    "fullName",
];
const OPTIONAL: [&str; 6] = [
    "email",
    "phone",
    "username",
    "photoThumbnailURL",
    "photoFullsizeURL",
    "userRoleCode",
];

fn max_chars(field: &str) -> usize {
    match field {
        "xcUserID" => 50,
        "userAgent" => 1024,
        "photoThumbnailURL" | "photoFullsizeURL" => 2048,
        _ => 255,
    }
}

/// The rules, read independently of the implementation: `Some(event id)` when
/// the object is a valid login event.
fn oracle(object: &Map<String, Value>, message_id: Option<&str>) -> Option<String> {
    let id = match object.get("eventID") {
        None | Some(Value::Null) => message_id.filter(|m| good_id(m))?.to_owned(),
        Some(Value::String(id)) if good_id(id) => id.clone(),
        _ => return None,
    };
    match object.get("occurredAt") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {}
        _ => return None,
    }
    let text_ok = |field: &str, value: &str| {
        value.chars().count() <= max_chars(field) && !value.chars().any(char::is_control)
    };
    for field in REQUIRED {
        let Some(Value::String(value)) = object.get(field) else {
            return None;
        };
        if value.trim().is_empty() || !text_ok(field, value) {
            return None;
        }
    }
    for field in OPTIONAL {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(value)) if text_ok(field, value) => {}
            _ => return None,
        }
    }
    let platform = object.get("userPlatform").and_then(Value::as_str)?;
    let ip = object.get("userIPAddress").and_then(Value::as_str)?;
    (["android", "ios", "web"].contains(&platform) && ip.parse::<IpAddr>().is_ok()).then_some(id)
}

/// A non-blank id of at most 255 bytes without control characters.
fn good_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= 255 && !id.chars().any(char::is_control)
}

/// One top-level member of a body as it is written: the key (spelled with a
/// `\u` escape for every character when `escaped`) and the value's JSON text.
#[derive(Debug, Clone)]
struct Member {
    key: String,
    escaped: bool,
    raw: String,
}

impl Member {
    fn new(key: &str, raw: &str) -> Member {
        Member {
            key: key.to_owned(),
            escaped: false,
            raw: raw.to_owned(),
        }
    }

    fn escaped(key: &str, raw: &str) -> Member {
        Member {
            escaped: true,
            ..Member::new(key, raw)
        }
    }
}

/// The JSON text of an object with these members, in this order.
fn write_body(members: &[Member]) -> String {
    let written: Vec<String> = members
        .iter()
        .map(|m| {
            let key = if m.escaped {
                let mut units = [0u16; 2];
                let escaped: String = m
                    .key
                    .chars()
                    .flat_map(|c| c.encode_utf16(&mut units).to_vec())
                    .map(|unit| format!("\\u{unit:04x}"))
                    .collect();
                format!("\"{escaped}\"")
            } else {
                Value::String(m.key.clone()).to_string()
            };
            format!("{key}:{}", m.raw)
        })
        .collect();
    format!("{{{}}}", written.join(","))
}

/// Keys written more than once (compared as decoded), each named once.
fn repeated_keys(members: &[Member]) -> Vec<&str> {
    let mut repeated: Vec<&str> = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let key = member.key.as_str();
        if members[..i].iter().any(|m| m.key == key) && !repeated.contains(&key) {
            repeated.push(key);
        }
    }
    repeated
}

/// The object the members spell, when no key repeats.
fn object_of(members: &[Member]) -> Map<String, Value> {
    members
        .iter()
        .map(|m| {
            let value = serde_json::from_str(&m.raw).expect("generated values are JSON");
            (m.key.clone(), value)
        })
        .collect()
}

/// The rules for a body written member by member: a top-level key written
/// twice makes it invalid, whichever copy another reader would take; below the
/// top level (values of ignored keys) repeats do not matter.
fn oracle_members(members: &[Member], message_id: Option<&str>) -> Option<String> {
    if !repeated_keys(members).is_empty() {
        return None;
    }
    oracle(&object_of(members), message_id)
}

/// The id a refused body with repeated keys must still carry: its eventID when
/// that key is written once and is a good id, otherwise the message_id — never
/// one of two eventIDs.
fn identity_of_repeats(members: &[Member], message_id: Option<&str>) -> Option<String> {
    let from_message = || message_id.filter(|m| good_id(m)).map(str::to_owned);
    if repeated_keys(members).contains(&"eventID") {
        return from_message();
    }
    let body_id = members
        .iter()
        .find(|m| m.key == "eventID")
        .and_then(|m| serde_json::from_str::<Value>(&m.raw).ok())
        .and_then(|v| v.as_str().filter(|id| good_id(id)).map(str::to_owned));
    body_id.or_else(from_message)
}

/// Strings that hit the edges of the rules.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("   ".to_owned()),
        Just("android".to_owned()),
        Just("ios".to_owned()),
        Just("web".to_owned()),
        Just("Web".to_owned()),
        Just("203.0.113.7".to_owned()),
        Just("2001:db8::1".to_owned()),
        Just("999.0.0.1".to_owned()),
        Just("2026-11-24T06:31:57Z".to_owned()),
        Just("a\u{0}b".to_owned()),
        Just("line\nbreak".to_owned()),
        "[a-z0-9]{1,10}",
        "\\PC{0,60}",
        (40usize..60).prop_map(|n| "x".repeat(n)),
        (250usize..260).prop_map(|n| "é".repeat(n)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(json!(["a"])),
        1 => Just(json!({"nested": 1})),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(
            REQUIRED.iter().chain(OPTIONAL.iter()).chain(["eventID", "occurredAt"].iter()).copied().collect::<Vec<_>>()
        )
        .prop_map(str::to_owned),
        1 => "[a-zA-Z]{1,12}",
    ]
}

/// Objects that are mostly valid events with a few fields changed.
fn object() -> impl Strategy<Value = Map<String, Value>> {
    let base = json!({
        "eventID": "evt-1", "occurredAt": "2026-11-24T06:31:57Z", "userIPAddress": "203.0.113.7",
        "userAgent": "Mozilla/5.0", "userPlatform": "ios", "userDeviceID": "d-1",
        "xcUserID": "cust-1", "fullName": "Ana Lima"
    });
    let base = match base {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    (
        proptest::collection::vec((key(), value()), 0..6),
        proptest::collection::vec(key(), 0..3),
    )
        .prop_map(move |(sets, removals)| {
            let mut object = base.clone();
            for key in removals {
                object.remove(&key);
            }
            for (key, value) in sets {
                object.insert(key, value);
            }
            object
        })
}

/// Objects that repeat a key inside: fine as values of keys the worker ignores.
const NESTED_REPEAT: &str = r#"{"nested":1,"nested":2}"#;
const METADATA_REPEAT: &str = r#"{"source":"a","source":"b"}"#;

/// A value's JSON text; some are objects that repeat a key inside.
fn raw_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => value().prop_map(|v| v.to_string()),
        1 => Just(NESTED_REPEAT.to_owned()),
    ]
}

/// Bodies made of `object()`'s members, sometimes with a few more members
/// (mostly repeating a key already there) at random places, sometimes with an
/// ignored object that repeats a key inside, and with some keys escaped.
fn members() -> impl Strategy<Value = Vec<Member>> {
    let extra = (any::<proptest::sample::Index>(), key(), raw_value());
    (
        object(),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(extra, 1..3),
        ],
        proptest::option::weighted(0.2, Just(())),
        proptest::collection::vec(proptest::bool::weighted(0.2), 20),
    )
        .prop_map(|(object, extras, nested_repeat, escapes)| {
            let mut members: Vec<Member> = object
                .into_iter()
                .map(|(key, value)| Member::new(&key, &value.to_string()))
                .collect();
            if nested_repeat.is_some() {
                members.push(Member::new("metadata", METADATA_REPEAT));
            }
            for (at, key, raw) in extras {
                let at = at.index(members.len() + 1);
                members.insert(at, Member::new(&key, &raw));
            }
            for (member, escaped) in members.iter_mut().zip(escapes) {
                member.escaped = escaped;
            }
            members
        })
}

fn envelope() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    (
        prop_oneof![
            Just(None),
            Just(Some("application/json".to_owned())),
            Just(Some("text/plain".to_owned()))
        ],
        prop_oneof![
            Just(None),
            Just(Some("msg-1".to_owned())),
            Just(Some(String::new()))
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), (ct, id) in envelope()) {
        let envelope = Envelope { content_type: ct.as_deref(), content_encoding: None, message_id: id.as_deref() };
        let _ = LoginEvent::parse(&body, &envelope, MAX);
    }

    #[test]
    fn accepts_exactly_what_the_rules_accept(members in members(), (ct, id) in envelope()) {
        let body = write_body(&members);
        let envelope = Envelope { content_type: ct.as_deref(), content_encoding: None, message_id: id.as_deref() };
        let parsed = LoginEvent::parse(body.as_bytes(), &envelope, MAX);
        let plain_text = ct.as_deref() == Some("text/plain");
        let expected = if plain_text { None } else { oracle_members(&members, id.as_deref()) };
        match (parsed, expected) {
            (Ok(event), Some(expected_id)) => {
                prop_assert_eq!(event.event_id.as_str(), expected_id.as_str());
                // The TapTalk fields go upstream exactly as sent.
                let forwarded: Map<String, Value> = object_of(&members)
                    .into_iter()
                    .filter(|(k, v)| (REQUIRED.contains(&k.as_str()) || OPTIONAL.contains(&k.as_str())) && !v.is_null())
                    .collect();
                prop_assert_eq!(event.request.to_json(), forwarded);
            }
            (Err(invalid), None) => {
                // A repeated key is named as such, and never lends its eventID.
                if !plain_text && !repeated_keys(&members).is_empty() {
                    prop_assert_eq!(invalid.problem.code(), "duplicate_key", "{}", invalid);
                    prop_assert_eq!(
                        invalid.event_id.as_ref().map(|id| id.as_str().to_owned()),
                        identity_of_repeats(&members, id.as_deref()),
                        "{}", body
                    );
                }
            }
            (Ok(event), None) => prop_assert!(false, "accepted an invalid event: {:?}\n{}", event, body),
            (Err(invalid), Some(_)) => prop_assert!(false, "refused a valid event: {}\n{}", invalid, body),
        }
    }

    #[test]
    fn any_json_value_at_the_top_never_panics(value in value()) {
        let body = value.to_string();
        let envelope = Envelope { content_type: Some("application/json"), content_encoding: None, message_id: Some("m") };
        prop_assert!(LoginEvent::parse(body.as_bytes(), &envelope, MAX).is_err() || value.is_object());
    }
}

/// The property above means something only if the generator produces plenty
/// of valid and invalid events, of bodies with repeated keys, and of valid ones
/// with escaped keys or repeats inside an ignored object.
#[test]
fn the_generator_covers_valid_and_invalid_events() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = members();
    let (mut valid, mut repeated, mut valid_escaped, mut valid_nested) = (0, 0, 0, 0);
    for _ in 0..2000 {
        let members = strategy
            .new_tree(&mut runner)
            .map(|t| t.current())
            .unwrap_or_default();
        repeated += usize::from(!repeated_keys(&members).is_empty());
        if oracle_members(&members, None).is_some() {
            valid += 1;
            valid_escaped += usize::from(members.iter().any(|m| m.escaped));
            valid_nested += usize::from(
                members
                    .iter()
                    .any(|m| m.raw == NESTED_REPEAT || m.raw == METADATA_REPEAT),
            );
        }
    }
    assert!(
        (200..=1800).contains(&valid),
        "{valid} of 2000 generated events are valid"
    );
    assert!(repeated >= 200, "{repeated} of 2000 repeat a key");
    assert!(
        valid_escaped >= 100,
        "{valid_escaped} valid ones escape a key"
    );
    assert!(
        valid_nested >= 30,
        "{valid_nested} valid ones repeat a key in an ignored object"
    );
}

/// Parses a body written member by member, as a login service would send it.
fn parse_members(members: &[Member], message_id: Option<&str>) -> Result<LoginEvent, InvalidEvent> {
    let envelope = Envelope {
        content_type: Some("application/json"),
        content_encoding: None,
        message_id,
    };
    LoginEvent::parse(write_body(members).as_bytes(), &envelope, MAX)
}

/// A valid event's members, `eventID` first.
fn valid_members() -> Vec<Member> {
    [
        ("eventID", r#""evt-1""#),
        ("occurredAt", r#""2026-11-24T06:31:57Z""#),
        ("userIPAddress", r#""203.0.113.7""#),
        ("userAgent", r#""Mozilla/5.0""#),
        ("userPlatform", r#""ios""#),
        ("userDeviceID", r#""d-1""#),
        ("xcUserID", r#""cust-1""#),
        ("fullName", r#""Ana Lima""#),
    ]
    .into_iter()
    .map(|(key, raw)| Member::new(key, raw))
    .collect()
}

fn with_member(member: Member) -> Vec<Member> {
    let mut members = valid_members();
    members.push(member);
    members
}

#[test]
fn a_repeated_required_field_is_refused_and_the_event_keeps_its_id() {
    let members = with_member(Member::new("xcUserID", r#""cust-2""#));
    let invalid = parse_members(&members, Some("msg-1")).expect_err("two xcUserIDs");
    assert_eq!(invalid.problem.code(), "duplicate_key");
    assert_eq!(invalid.field, Some("xcUserID"));
    assert!(
        invalid.message.contains("\"xcUserID\""),
        "{}",
        invalid.message
    );
    assert_eq!(
        invalid.event_id.map(|id| id.to_string()),
        Some("evt-1".into())
    );
    assert_eq!(invalid.xc_user_id, None, "neither copy is echoed");
    assert_eq!(invalid.user_device_id.as_deref(), Some("d-1"));
}

#[test]
fn a_repeated_event_id_is_refused_without_guessing_which_one_counts() {
    let members = with_member(Member::new("eventID", r#""evt-2""#));
    let invalid = parse_members(&members, Some("msg-1")).expect_err("two eventIDs");
    assert_eq!(invalid.problem.code(), "duplicate_key");
    assert_eq!(invalid.field, Some("eventID"));
    assert_eq!(
        invalid.event_id.map(|id| id.to_string()),
        Some("msg-1".into())
    );
    assert_eq!(invalid.xc_user_id.as_deref(), Some("cust-1"));

    let invalid = parse_members(&members, None).expect_err("two eventIDs");
    assert_eq!(invalid.problem.code(), "duplicate_key");
    assert_eq!(invalid.event_id, None, "no id: a dead letter only");
}

#[test]
fn keys_are_compared_after_unescaping() {
    // "event\u0049D" is "eventID".
    let valid = write_body(&valid_members());
    let body = format!(
        "{},\"event\\u0049D\":\"evt-2\"}}",
        valid.trim_end_matches('}')
    );
    let envelope = Envelope {
        content_type: Some("application/json"),
        content_encoding: None,
        message_id: None,
    };
    let invalid = LoginEvent::parse(body.as_bytes(), &envelope, MAX).expect_err(&body);
    assert_eq!(invalid.problem.code(), "duplicate_key");
    assert_eq!(invalid.event_id, None);

    let members = with_member(Member::escaped("fullName", r#""Ana""#));
    let invalid = parse_members(&members, None).expect_err("escaped repeat");
    assert_eq!(
        (invalid.problem.code(), invalid.field),
        ("duplicate_key", Some("fullName"))
    );

    // Escaped but not repeated: an ordinary key.
    let mut members = valid_members();
    members.iter_mut().for_each(|m| m.escaped = true);
    assert!(parse_members(&members, None).is_ok());
}

#[test]
fn a_repeated_key_inside_an_ignored_object_does_not_matter() {
    let members = with_member(Member::new("metadata", METADATA_REPEAT));
    let event = parse_members(&members, None).expect("repeats below the top level are ignored");
    assert_eq!(event.event_id.as_str(), "evt-1");

    let members = with_member(Member::new("metadata", r#"{"eventID":"a","eventID":"b"}"#));
    assert!(parse_members(&members, None).is_ok());
}

#[test]
fn a_repeated_unknown_key_is_refused_without_a_field() {
    let mut members = with_member(Member::new("extra", "1"));
    members.push(Member::new("extra", "2"));
    let invalid = parse_members(&members, None).expect_err("two extras");
    assert_eq!(invalid.problem.code(), "duplicate_key");
    assert_eq!(invalid.field, None);
    assert_eq!(
        invalid.event_id.map(|id| id.to_string()),
        Some("evt-1".into())
    );
}
