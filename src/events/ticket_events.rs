//! The events the worker publishes on the ticket exchange: `ticket.ready` and
//! `ticket.failed`. They say *that* a ticket is ready and for whom, never the
//! ticket itself, which lives in Postgres only.

use crate::domain::{EventId, Field, TicketRecord};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

/// `ticket.ready`: a ticket for this login is stored and can be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketReady {
    #[serde(rename = "eventID")]
    pub event_id: String,
    #[serde(rename = "xcUserID")]
    pub xc_user_id: String,
    #[serde(rename = "userID")]
    pub user_id: String,
    #[serde(rename = "userDeviceID")]
    pub user_device_id: String,
    pub user_platform: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub issued_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    /// When the user logged in (the login event's `occurredAt`), when it
    /// said: subscribers (and `ticket-worker tail`) see login-to-ready.
    #[serde(
        rename = "loginOccurredAt",
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_or_none"
    )]
    pub login_occurred_at: Option<DateTime<Utc>>,
}

impl TicketReady {
    pub const ROUTING_KEY: &'static str = "ticket.ready";

    pub fn for_record(record: &TicketRecord) -> TicketReady {
        TicketReady {
            event_id: record.event_id.to_string(),
            xc_user_id: record.xc_user_id.clone(),
            user_id: record.user_id.clone(),
            user_device_id: record.user_device_id.clone(),
            user_platform: record.platform.as_str(),
            issued_at: record.issued_at,
            expires_at: record.expires_at,
            login_occurred_at: None,
        }
    }

    /// With the login's time (its `occurredAt`), when there is one.
    pub fn with_login_at(mut self, at: Option<DateTime<Utc>>) -> TicketReady {
        self.login_occurred_at = at;
        self
    }
}

/// Why no ticket will come for a login event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The event broke a rule before any upstream call (see `field`).
    Invalid,
    /// The event was older than the configured maximum age.
    Expired,
    /// TapTalk answered `ParamValidationFailed` for `field`.
    RejectedByUpstream,
    /// The event went back to the queue `MAX_REQUEUES` times without TapTalk
    /// or Postgres serving it, while they served other events.
    RetriesExhausted,
}

impl FailureReason {
    pub fn parse(raw: &str) -> Option<FailureReason> {
        [
            FailureReason::Invalid,
            FailureReason::Expired,
            FailureReason::RejectedByUpstream,
            FailureReason::RetriesExhausted,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Invalid => "invalid",
            FailureReason::Expired => "expired",
            FailureReason::RejectedByUpstream => "rejected_by_upstream",
            FailureReason::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// `ticket.failed`: no ticket will come for this login event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketFailed {
    #[serde(rename = "eventID")]
    pub event_id: String,
    #[serde(rename = "xcUserID")]
    pub xc_user_id: Option<String>,
    #[serde(rename = "userDeviceID")]
    pub user_device_id: Option<String>,
    pub reason: FailureReason,
    pub message: String,
    /// The offending field's JSON name, when one field is to blame.
    pub field: Option<String>,
    /// TapTalk's numeric code for `field`, when it is a TapTalk field.
    #[serde(rename = "fieldCode")]
    pub field_code: Option<u16>,
}

impl TicketFailed {
    pub const ROUTING_KEY: &'static str = "ticket.failed";

    pub fn new(
        event_id: &EventId,
        reason: FailureReason,
        message: impl Into<String>,
        field: Option<&str>,
    ) -> TicketFailed {
        TicketFailed {
            event_id: event_id.to_string(),
            xc_user_id: None,
            user_device_id: None,
            reason,
            message: message.into(),
            field: field.map(str::to_owned),
            field_code: field.and_then(Field::lookup).map(Field::code),
        }
    }

    pub fn about(mut self, xc_user_id: Option<&str>, user_device_id: Option<&str>) -> TicketFailed {
        self.xc_user_id = xc_user_id.map(str::to_owned);
        self.user_device_id = user_device_id.map(str::to_owned);
        self
    }
}

fn rfc3339<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn rfc3339_or_none<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuthTicket, Platform};
    use serde_json::json;

    #[test]
    fn ready_event_has_the_documented_shape_and_no_ticket() {
        let at =
            DateTime::parse_from_rfc3339("2026-11-24T06:31:57.5Z").map(|t| t.with_timezone(&Utc));
        let at = at.expect("time");
        let record = TicketRecord {
            event_id: EventId::parse("e1").expect("id"),
            xc_user_id: "cust-42".into(),
            user_id: "1001".into(),
            user_device_id: "dev".into(),
            platform: Platform::Web,
            ticket: AuthTicket::new("SECRET-TICKET".into()),
            issued_at: at,
            expires_at: at + crate::domain::TICKET_LIFETIME,
        };
        let value = serde_json::to_value(TicketReady::for_record(&record)).expect("json");
        assert_eq!(
            value,
            json!({
                "eventID": "e1", "xcUserID": "cust-42", "userID": "1001", "userDeviceID": "dev",
                "userPlatform": "web", "issuedAt": "2026-11-24T06:31:57.500Z",
                "expiresAt": "2026-11-24T07:31:57.500Z"
            })
        );
        assert!(!value.to_string().contains("SECRET-TICKET"));
        let login = at - chrono::Duration::milliseconds(120);
        let value =
            serde_json::to_value(TicketReady::for_record(&record).with_login_at(Some(login)))
                .expect("json");
        assert_eq!(value["loginOccurredAt"], "2026-11-24T06:31:57.380Z");
    }

    #[test]
    fn failed_event_carries_field_name_and_code() {
        let id = EventId::parse("e2").expect("id");
        let failed = TicketFailed::new(
            &id,
            FailureReason::RejectedByUpstream,
            "bad email",
            Some("email"),
        )
        .about(Some("cust-1"), None);
        assert_eq!(
            serde_json::to_value(failed).expect("json"),
            json!({
                "eventID": "e2", "xcUserID": "cust-1", "userDeviceID": null,
                "reason": "rejected_by_upstream", "message": "bad email",
                "field": "email", "fieldCode": 107
            })
        );
    }
}
