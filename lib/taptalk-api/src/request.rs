//! `TicketRequest`: the TapTalk request fields of one login, checked against the
//! documented rules, kept exactly as the login service sent them.

use crate::Field;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// `userPlatform`: one of `"android"`, `"ios"`, `"web"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Android,
    Ios,
    Web,
}

impl Platform {
    pub fn parse(raw: &str) -> Option<Platform> {
        match raw {
            "android" => Some(Platform::Android),
            "ios" => Some(Platform::Ios),
            "web" => Some(Platform::Web),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Web => "web",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one field broke the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Field,
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

/// The body TapTalk receives for one login: every required field present and
/// valid, optional fields present only when the event carried them.
///
/// Values are never trimmed or rewritten: what the login service sent is what
/// TapTalk gets.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRequest {
    values: BTreeMap<Field, String>,
    platform: Platform,
}

impl TicketRequest {
    /// Checks the TapTalk fields of a JSON object, in code order, and reports the
    /// first field that breaks a rule. Keys that are not TapTalk fields are
    /// ignored.
    pub fn from_json(object: &Map<String, Value>) -> Result<TicketRequest, FieldError> {
        let mut values = BTreeMap::new();
        for field in Field::ALL {
            if let Some(value) = field_value(object, field)? {
                values.insert(field, value);
            }
        }
        let platform = values
            .get(&Field::UserPlatform)
            .and_then(|raw| Platform::parse(raw))
            .ok_or_else(|| FieldError {
                field: Field::UserPlatform,
                problem: "must be one of \"android\", \"ios\", \"web\"".into(),
            })?;
        Ok(TicketRequest { values, platform })
    }

    /// The value of a field, if the event carried it.
    pub fn get(&self, field: Field) -> Option<&str> {
        self.values.get(&field).map(String::as_str)
    }

    /// The fields the event carried, in code order, with their values.
    pub fn fields(&self) -> impl Iterator<Item = (Field, &str)> {
        self.values.iter().map(|(f, v)| (*f, v.as_str()))
    }

    pub fn xc_user_id(&self) -> &str {
        self.required(Field::XcUserId)
    }

    pub fn user_device_id(&self) -> &str {
        self.required(Field::UserDeviceId)
    }

    pub fn platform(&self) -> Platform {
        self.platform
    }

    fn required(&self, field: Field) -> &str {
        // Required fields are checked present in `from_json`.
        self.get(field).unwrap_or_default()
    }

    /// The request as the JSON object TapTalk expects.
    pub fn to_json(&self) -> Map<String, Value> {
        self.fields()
            .map(|(f, v)| (f.name().to_owned(), Value::String(v.to_owned())))
            .collect()
    }
}

/// Reads one field: `Ok(None)` when an optional field is absent or null.
fn field_value(object: &Map<String, Value>, field: Field) -> Result<Option<String>, FieldError> {
    let fail = |problem: String| FieldError { field, problem };
    let value = match object.get(field.name()) {
        None | Some(Value::Null) if field.is_required() => {
            return Err(fail("is required".into()));
        }
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(fail(format!("must be a string, not {}", json_kind(other))));
        }
    };
    if field.is_required() && value.trim().is_empty() {
        return Err(fail("must not be empty".into()));
    }
    if value.chars().count() > field.max_chars() {
        return Err(fail(format!(
            "must be at most {} characters",
            field.max_chars()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(fail("must not contain control characters".into()));
    }
    if field == Field::UserIpAddress && value.parse::<IpAddr>().is_err() {
        return Err(fail("must be an IPv4 or IPv6 address".into()));
    }
    Ok(Some(value.clone()))
}

/// The JSON type of a value, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Map<String, Value> {
        match json!({
            "userIPAddress": "203.0.113.7",
            "userAgent": "Mozilla/5.0",
            "userPlatform": "ios",
            "userDeviceID": "A1B2",
            "xcUserID": "cust-42",
            "fullName": "Ana Lima",
            "email": "ana@example.com",
            "somethingElse": 42
        }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn error_for(mutate: impl FnOnce(&mut Map<String, Value>)) -> FieldError {
        let mut object = valid();
        mutate(&mut object);
        TicketRequest::from_json(&object).expect_err("should be invalid")
    }

    #[test]
    fn keeps_values_exactly_and_ignores_unknown_keys() {
        let request = TicketRequest::from_json(&valid()).expect("valid");
        assert_eq!(request.xc_user_id(), "cust-42");
        assert_eq!(request.platform(), Platform::Ios);
        assert_eq!(request.get(Field::Email), Some("ana@example.com"));
        assert_eq!(request.get(Field::Phone), None);
        let body = request.to_json();
        assert_eq!(body.len(), 7);
        assert!(!body.contains_key("somethingElse"));
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let mut object = valid();
        object.insert("phone".into(), Value::Null);
        let request = TicketRequest::from_json(&object).expect("valid");
        assert_eq!(request.get(Field::Phone), None);
    }

    #[test]
    fn every_required_field_is_required() {
        for field in Field::ALL.into_iter().filter(|f| f.is_required()) {
            let error = error_for(|o| {
                o.remove(field.name());
            });
            assert_eq!(error.field, field);
            assert_eq!(error.problem, "is required");
            let error = error_for(|o| {
                o.insert(field.name().into(), json!("  "));
            });
            assert_eq!(error.field, field, "blank {field}");
        }
    }

    #[test]
    fn field_rules() {
        let cases: Vec<(Field, Value, &str)> = vec![
            (Field::UserPlatform, json!("windows"), "must be one of"),
            (Field::UserPlatform, json!("IOS"), "must be one of"),
            (Field::XcUserId, json!("x".repeat(51)), "at most 50"),
            (Field::UserIpAddress, json!("not-an-ip"), "IPv4 or IPv6"),
            (
                Field::UserAgent,
                json!(12),
                "must be a string, not a number",
            ),
            (Field::Email, json!(["a"]), "must be a string, not an array"),
            (Field::FullName, json!("Ana\u{0}Lima"), "control characters"),
            (Field::Username, json!("u".repeat(256)), "at most 255"),
        ];
        for (field, value, expected) in cases {
            let error = error_for(|o| {
                o.insert(field.name().into(), value.clone());
            });
            assert_eq!(error.field, field, "{value}");
            assert!(
                error.problem.contains(expected),
                "{field}: {}",
                error.problem
            );
        }
    }

    #[test]
    fn fifty_characters_are_allowed_for_xc_user_id() {
        let mut object = valid();
        object.insert("xcUserID".into(), json!("é".repeat(50)));
        assert!(TicketRequest::from_json(&object).is_ok());
    }

    #[test]
    fn ipv6_is_an_ip_address() {
        let mut object = valid();
        object.insert("userIPAddress".into(), json!("2001:db8::1"));
        assert!(TicketRequest::from_json(&object).is_ok());
    }
}
