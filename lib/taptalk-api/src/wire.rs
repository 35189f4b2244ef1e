//! The TapTalk.io server API as it appears on the wire: the endpoint, the
//! `Server-Key` header and the response envelope.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::fmt;

/// `POST {BASE_URL}` + this path requests an auth ticket.
pub const AUTH_TICKET_PATH: &str = "/v1/server/auth_ticket/request";

/// The header that carries the server key.
pub const SERVER_KEY_HEADER: &str = "Server-Key";

/// `error.code` when a body field is invalid (by name, and by SDK number).
pub const PARAM_VALIDATION_FAILED: [&str; 2] = ["ParamValidationFailed", "40002"];

/// `error.code` when the `Server-Key` header is invalid (by name, and by SDK number).
pub const HEADER_VALIDATION_FAILED: [&str; 2] = ["HeaderValidationFailed", "40001"];

/// The server key from the TapTalk dashboard: a public id and a secret.
///
/// `Debug` shows the id only.
#[derive(Clone)]
pub struct ServerKey {
    id: String,
    secret: SecretString,
}

impl ServerKey {
    pub fn new(id: impl Into<String>, secret: SecretString) -> ServerKey {
        ServerKey {
            id: id.into(),
            secret,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `base64("<id>:<secret>")`, the value of the `Server-Key` header. It embeds
    /// the secret: hand it to the HTTP layer only, marked sensitive.
    pub fn header_value(&self) -> SecretString {
        let raw = format!("{}:{}", self.id, self.secret.expose_secret());
        SecretString::from(STANDARD.encode(raw))
    }

    /// The spellings of the secret that a log redactor must hide: the secret
    /// itself and the `Server-Key` header value that embeds it.
    pub fn secret_spellings(&self) -> [SecretString; 2] {
        [self.secret.clone(), self.header_value()]
    }

    /// Replaces any copy of the secret (raw or inside the header value) in a
    /// text that came from outside, such as an upstream error message.
    pub fn scrub(&self, text: &str) -> String {
        let secret = self.secret.expose_secret();
        let header = self.header_value();
        let mut text = text.replace(header.expose_secret(), "[REDACTED]");
        if !secret.is_empty() {
            text = text.replace(secret, "[REDACTED]");
        }
        text
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Every TapTalk answer: `{ status, error: { code, message, field }, data }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiEnvelope {
    pub status: u16,
    #[serde(default)]
    pub error: ApiError,
    #[serde(default)]
    pub data: Value,
}

/// The `error` member. TapTalk may send the code as a name or as a number, and
/// the field as a name or as its numeric code; both are read as text.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    #[serde(default, deserialize_with = "text")]
    pub code: String,
    #[serde(default, deserialize_with = "text")]
    pub message: String,
    #[serde(default, deserialize_with = "text")]
    pub field: String,
}

impl ApiError {
    pub fn is(&self, codes: [&str; 2]) -> bool {
        codes.iter().any(|c| self.code.eq_ignore_ascii_case(c))
    }

    /// `401xx`: TapTalk's authorization failures.
    pub fn is_authorization_failure(&self) -> bool {
        self.code.len() == 5
            && self.code.starts_with("401")
            && self.code.bytes().all(|b| b.is_ascii_digit())
    }
}

/// `data` of a successful auth-ticket answer. `Debug` hides the ticket.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct TicketData {
    #[serde(rename = "userID")]
    pub user_id: String,
    pub ticket: String,
}

impl fmt::Debug for TicketData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketData")
            .field("user_id", &self.user_id)
            .field("ticket", &"[REDACTED]")
            .finish()
    }
}

impl ApiEnvelope {
    pub fn success(data: &TicketData) -> ApiEnvelope {
        ApiEnvelope {
            status: 200,
            error: ApiError::default(),
            data: serde_json::to_value(data).unwrap_or_default(),
        }
    }

    pub fn failure(
        status: u16,
        code: &str,
        message: impl Into<String>,
        field: &str,
    ) -> ApiEnvelope {
        ApiEnvelope {
            status,
            error: ApiError {
                code: code.to_owned(),
                message: message.into(),
                field: field.to_owned(),
            },
            data: Value::Object(Default::default()),
        }
    }
}

/// Reads a string, a number or null as text.
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_base64_of_id_colon_secret() {
        let key = ServerKey::new("key-id", SecretString::from("s3cr3t"));
        assert_eq!(key.header_value().expose_secret(), "a2V5LWlkOnMzY3IzdA==");
        let debug = format!("{key:?}");
        assert!(
            debug.contains("key-id") && !debug.contains("s3cr3t"),
            "{debug}"
        );
        assert_eq!(
            key.scrub("got a2V5LWlkOnMzY3IzdA== and s3cr3t"),
            "got [REDACTED] and [REDACTED]"
        );
    }

    #[test]
    fn ticket_data_debug_hides_the_ticket() {
        let data = TicketData {
            user_id: "u1".into(),
            ticket: "bearer-ticket-1".into(),
        };
        let debug = format!("{data:?}");
        assert!(
            debug.contains("u1") && !debug.contains("bearer-ticket-1"),
            "{debug}"
        );
    }

    #[test]
    fn error_codes_may_be_names_or_numbers() {
        let envelope: ApiEnvelope = serde_json::from_str(
            r#"{"status":400,"error":{"code":40002,"message":"bad","field":105},"data":{}}"#,
        )
        .expect("parse");
        assert!(envelope.error.is(PARAM_VALIDATION_FAILED));
        assert_eq!(envelope.error.field, "105");
        let envelope: ApiEnvelope =
            serde_json::from_str(r#"{"status":401,"error":{"code":"40104"}}"#).expect("parse");
        assert!(envelope.error.is_authorization_failure());
        assert!(!envelope.error.is(HEADER_VALIDATION_FAILED));
    }
}
