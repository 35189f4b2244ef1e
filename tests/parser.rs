//! Property tests of the login-event parser: whatever the bytes, it never
//! panics, and it accepts exactly the events an independent reading of the
//! rules accepts — no invalid event gets through, no valid one is refused —
//! and forwards the TapTalk fields untouched.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::net::IpAddr;
use ticket_worker::events::{Envelope, LoginEvent};

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
    let good_id =
        |id: &str| !id.trim().is_empty() && id.len() <= 255 && !id.chars().any(char::is_control);
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
    fn accepts_exactly_what_the_rules_accept(object in object(), (ct, id) in envelope()) {
        let body = Value::Object(object.clone()).to_string();
        let envelope = Envelope { content_type: ct.as_deref(), content_encoding: None, message_id: id.as_deref() };
        let parsed = LoginEvent::parse(body.as_bytes(), &envelope, MAX);
        let expected = if ct.as_deref() == Some("text/plain") { None } else { oracle(&object, id.as_deref()) };
        match (parsed, expected) {
            (Ok(event), Some(expected_id)) => {
                prop_assert_eq!(event.event_id.as_str(), expected_id.as_str());
                // The TapTalk fields go upstream exactly as sent.
                let forwarded: Map<String, Value> = object
                    .iter()
                    .filter(|(k, v)| (REQUIRED.contains(&k.as_str()) || OPTIONAL.contains(&k.as_str())) && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(event.request.to_json(), forwarded);
            }
            (Err(_), None) => {}
            (Ok(event), None) => prop_assert!(false, "accepted an invalid event: {:?}", event),
            (Err(invalid), Some(_)) => prop_assert!(false, "refused a valid event: {}", invalid),
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
/// of both valid and invalid events.
#[test]
fn the_generator_covers_valid_and_invalid_events() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = object();
    let valid = (0..2000)
        .filter(|_| {
            let object = strategy
                .new_tree(&mut runner)
                .map(|t| t.current())
                .unwrap_or_default();
            oracle(&object, None).is_some()
        })
        .count();
    assert!(
        (200..=1800).contains(&valid),
        "{valid} of 2000 generated events are valid"
    );
}
