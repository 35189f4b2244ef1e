//! Showing a login event to an operator without its personal data: the
//! `dlq list` samples. Every key is kept, so the shape of the event can be
//! seen; every value is masked except those that identify nothing about a
//! person and that an operator needs: `eventID`, `occurredAt` (when it is a
//! time: will a replay be answered `expired`?) and `userPlatform` (when it
//! is one of the platforms). Everything else, the TapTalk fields and any key
//! the worker does not know, shows only that a value was there: its first
//! character and its length for text, its kind for anything else.
//!
//! A body that is not JSON is never shown, only its size.

use serde_json::{Map, Value};

/// Keys whose values are shown as they are (when they are what they claim).
const SHOWN: [&str; 3] = ["eventID", "occurredAt", "userPlatform"];

/// Texts shorter than this are masked without their first character.
const SHORTEST_WITH_INITIAL: usize = 4;

/// A body as an operator may see it.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskedBody {
    /// The body parsed as JSON; every personal value masked.
    Json(Value),
    /// Not JSON (or not UTF-8): only its size.
    Opaque { bytes: usize },
}

impl MaskedBody {
    /// Masks `body` (see the module documentation).
    pub fn of(body: &[u8]) -> MaskedBody {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => MaskedBody::Json(Value::Object(mask_object(&object))),
            Ok(other) => MaskedBody::Json(mask_value(&other)),
            Err(_) => MaskedBody::Opaque { bytes: body.len() },
        }
    }

    /// One line of text: compact JSON, or the size of an opaque body.
    pub fn to_line(&self) -> String {
        match self {
            MaskedBody::Json(value) => value.to_string(),
            MaskedBody::Opaque { bytes } => format!("(not JSON, {bytes} bytes)"),
        }
    }
}

/// The texts of `body` that masking hides (the values of masked keys, at
/// least four characters long, nested ones included):
/// what else is shown beside the body (an error message from TapTalk, say)
/// must not repeat them either. See [`hide_values`].
pub fn masked_texts(body: &[u8]) -> Vec<String> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut texts = Vec::new();
    for (key, value) in &object {
        if shown(key, value).is_none() {
            collect_texts(value, &mut texts);
        }
    }
    texts.sort_by_key(|text| std::cmp::Reverse(text.len()));
    texts.dedup();
    texts
}

/// `text` with every one of `hidden` replaced by `***`.
pub fn hide_values(text: &str, hidden: &[String]) -> String {
    let mut out = text.to_owned();
    for value in hidden {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), "***");
        }
    }
    out
}

fn mask_object(object: &Map<String, Value>) -> Map<String, Value> {
    object
        .iter()
        .map(|(key, value)| {
            let masked = shown(key, value).unwrap_or_else(|| mask_value(value));
            (key.clone(), masked)
        })
        .collect()
}

/// The value itself, when `key` is one that is shown and the value is what
/// it should be.
fn shown(key: &str, value: &Value) -> Option<Value> {
    if !SHOWN.contains(&key) {
        return None;
    }
    let text = value.as_str()?;
    let fits = match key {
        "eventID" => crate::domain::EventId::parse(text).is_ok(),
        "occurredAt" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "userPlatform" => crate::domain::Platform::parse(text).is_some(),
        _ => false,
    };
    fits.then(|| value.clone())
}

/// What is left of a masked value: that it was there, and its kind.
fn mask_value(value: &Value) -> Value {
    let masked = match value {
        Value::Null => return Value::Null,
        Value::String(text) => mask_text(text),
        Value::Bool(_) => "(a boolean)".to_owned(),
        Value::Number(_) => "(a number)".to_owned(),
        Value::Array(items) => format!("(an array of {})", count(items.len(), "item")),
        Value::Object(keys) => format!("(an object of {})", count(keys.len(), "key")),
    };
    Value::String(masked)
}

fn mask_text(text: &str) -> String {
    let chars = text.chars().count();
    match text.chars().next() {
        Some(first) if chars >= SHORTEST_WITH_INITIAL && !first.is_control() => {
            format!("{first}… ({chars} chars)")
        }
        _ => format!("… ({chars} chars)"),
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn collect_texts(value: &Value, texts: &mut Vec<String>) {
    match value {
        Value::String(text) if text.chars().count() >= SHORTEST_WITH_INITIAL => {
            texts.push(text.clone());
        }
        Value::Array(items) => items.iter().for_each(|item| collect_texts(item, texts)),
        Value::Object(keys) => keys.values().for_each(|item| collect_texts(item, texts)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masked(body: &Value) -> Value {
        match MaskedBody::of(body.to_string().as_bytes()) {
            MaskedBody::Json(value) => value,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn personal_fields_and_unknown_keys_keep_their_key_and_lose_their_value() {
        let body = json!({
            "eventID": "e-1", "occurredAt": "2026-11-24T06:31:57Z", "userPlatform": "ios",
            "fullName": "Ana Lima", "email": "ana@example.com", "phone": "+628123456789",
            "userIPAddress": "203.0.113.7", "userAgent": "Mozilla/5.0", "userDeviceID": "A1B2-C3D4",
            "xcUserID": "cust-42", "username": "ana", "photoThumbnailURL": "https://x.example/a.png",
            "userRoleCode": "admin", "token": "s3cret-value", "nested": {"deep": "s3cret-nested"},
            "age": 42, "vip": true, "tags": ["a", "b"], "username2": null
        });
        let out = masked(&body);
        assert_eq!(out["eventID"], "e-1");
        assert_eq!(out["occurredAt"], "2026-11-24T06:31:57Z");
        assert_eq!(out["userPlatform"], "ios");
        assert_eq!(out["fullName"], "A… (8 chars)");
        assert_eq!(out["email"], "a… (15 chars)");
        assert_eq!(out["username"], "… (3 chars)");
        assert_eq!(out["nested"], "(an object of 1 key)");
        assert_eq!(out["age"], "(a number)");
        assert_eq!(out["tags"], "(an array of 2 items)");
        assert_eq!(out["username2"], Value::Null);
        let text = out.to_string();
        for secret in [
            "Ana Lima",
            "ana@example.com",
            "+628123456789",
            "203.0.113.7",
            "Mozilla",
            "A1B2-C3D4",
            "cust-42",
            "x.example",
            "admin",
            "s3cret",
            "42",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            out.as_object().map(|o| o.len()),
            body.as_object().map(|o| o.len())
        );
    }

    #[test]
    fn shown_keys_are_masked_too_when_they_are_not_what_they_claim() {
        let out = masked(&json!({
            "eventID": "", "occurredAt": "Ana Lima's birthday", "userPlatform": "ana@example.com"
        }));
        assert_eq!(out["eventID"], "… (0 chars)");
        assert_eq!(out["occurredAt"], "A… (19 chars)");
        assert_eq!(out["userPlatform"], "a… (15 chars)");
    }

    #[test]
    fn a_body_that_is_not_json_is_only_its_size() {
        let body = b"fullName=Ana Lima&email=ana@example.com";
        assert_eq!(
            MaskedBody::of(body),
            MaskedBody::Opaque { bytes: body.len() }
        );
        assert_eq!(MaskedBody::of(body).to_line(), "(not JSON, 39 bytes)");
        assert_eq!(
            MaskedBody::of(b"\"Ana Lima\"").to_line(),
            "\"A… (8 chars)\""
        );
    }

    #[test]
    fn messages_beside_the_body_lose_its_values_too() {
        let body = json!({"eventID": "e-1", "email": "ana@example", "userPlatform": "ios"});
        let hidden = masked_texts(body.to_string().as_bytes());
        assert_eq!(hidden, vec!["ana@example".to_owned()]);
        assert_eq!(
            hide_values("email (107) \"ana@example\" is not an address", &hidden),
            "email (107) \"***\" is not an address"
        );
    }
}
