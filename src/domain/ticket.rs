//! What TapTalk issues: the TapTalk user id and the auth ticket, a bearer
//! credential that must never be printed.

use chrono::{DateTime, TimeDelta, Utc};
pub use taptalk_api::AuthTicket;

/// How long TapTalk honours a ticket after it was requested.
pub const TICKET_LIFETIME: TimeDelta = TimeDelta::hours(1);

/// A ticket as TapTalk issued it for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedTicket {
    /// TapTalk's own user id for the request's `xcUserID`.
    pub user_id: String,
    pub ticket: AuthTicket,
    /// When the successful request was sent; the ticket expires one hour later.
    pub requested_at: DateTime<Utc>,
}

impl IssuedTicket {
    /// The safe expiry: the time the request was sent plus one hour.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.requested_at
            .checked_add_signed(TICKET_LIFETIME)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_ticket() {
        let issued = IssuedTicket {
            user_id: "u1".into(),
            ticket: AuthTicket::new("tkt-very-secret".into()),
            requested_at: Utc::now(),
        };
        let printed = format!("{issued:?}");
        assert!(!printed.contains("tkt-very-secret"), "{printed}");
        assert!(printed.contains("REDACTED"));
        assert_eq!(
            issued.expires_at() - issued.requested_at,
            TimeDelta::hours(1)
        );
    }
}

/// One stored ticket: a row of `auth_tickets`, one per login event.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRecord {
    pub event_id: super::EventId,
    pub xc_user_id: String,
    pub user_id: String,
    pub user_device_id: String,
    pub platform: super::Platform,
    pub ticket: AuthTicket,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl TicketRecord {
    /// The record for a ticket TapTalk issued for `request`.
    pub fn new(
        event_id: super::EventId,
        request: &super::TicketRequest,
        issued: IssuedTicket,
    ) -> TicketRecord {
        TicketRecord {
            event_id,
            xc_user_id: request.xc_user_id().to_owned(),
            user_device_id: request.user_device_id().to_owned(),
            platform: request.platform(),
            expires_at: issued.expires_at(),
            issued_at: issued.requested_at,
            user_id: issued.user_id,
            ticket: issued.ticket,
        }
    }
}
