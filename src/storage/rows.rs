//! Rows as Postgres returns them, and their checked conversion into domain
//! values: a row that makes no sense is an error, never a ticket.

use super::StoreError;
use crate::domain::{AuthTicket, EventId, Platform, TicketRecord};
use chrono::{DateTime, Utc};

/// An `auth_tickets` row.
#[derive(sqlx::FromRow)]
pub(super) struct Row {
    pub(super) event_id: String,
    pub(super) xc_user_id: String,
    pub(super) user_id: String,
    pub(super) user_device_id: String,
    pub(super) user_platform: String,
    pub(super) ticket: String,
    pub(super) issued_at: DateTime<Utc>,
    pub(super) expires_at: DateTime<Utc>,
}

impl TryFrom<Row> for TicketRecord {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<TicketRecord, StoreError> {
        let corrupt =
            |what: &str| StoreError::Failed(format!("auth_tickets row has an invalid {what}"));
        Ok(TicketRecord {
            event_id: EventId::parse(&row.event_id).map_err(|_| corrupt("event_id"))?,
            platform: Platform::parse(&row.user_platform)
                .ok_or_else(|| corrupt("user_platform"))?,
            xc_user_id: row.xc_user_id,
            user_id: row.user_id,
            user_device_id: row.user_device_id,
            ticket: AuthTicket::new(row.ticket),
            issued_at: row.issued_at,
            expires_at: row.expires_at,
        })
    }
}
