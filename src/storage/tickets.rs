//! `auth_tickets`: one row per login event with the ticket TapTalk issued for
//! it. Saving claims the event's outcome in `event_outcomes` in the same
//! statement, so a ticket is only stored if no copy of the event ended
//! otherwise first.

use super::outcomes::{Known, StoredFailure};
use super::rows::Row;
use super::{StoreError, TicketStore};
use crate::domain::{EventId, TicketRecord};

/// What `save` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// This call stored the ticket.
    Inserted(TicketRecord),
    /// The event already had a ticket (a redelivery, or another replica won a
    /// race); this is the stored one, and the new ticket was not kept.
    Existing(TicketRecord),
    /// A copy of the event already ended in a failure; the new ticket was not
    /// kept, and that failure is the event's answer.
    Failed(StoredFailure),
}

impl TicketStore {
    /// The stored ticket of an event, if it has one.
    #[tracing::instrument(name = "storage.find", skip_all, fields(event_id = %event_id))]
    pub async fn find(&self, event_id: &EventId) -> Result<Option<TicketRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at
             FROM auth_tickets WHERE event_id = $1",
        )
        .bind(event_id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.map(TicketRecord::try_from).transpose()
    }

    /// The stored tickets of several events, oldest first.
    #[tracing::instrument(name = "storage.find_many", skip_all, fields(events = event_ids.len()))]
    pub async fn find_many(&self, event_ids: &[EventId]) -> Result<Vec<TicketRecord>, StoreError> {
        let ids: Vec<String> = event_ids.iter().map(ToString::to_string).collect();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at
             FROM auth_tickets WHERE event_id = ANY($1) ORDER BY issued_at, event_id",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(TicketRecord::try_from).collect()
    }

    /// Stores a ticket, unless the event already has an outcome. One
    /// statement, so one transaction: it claims the event's outcome, writes
    /// the row and queues `ready_event` (the `ticket.ready` JSON) in the
    /// outbox together, or does none of it. Concurrent saves of one event
    /// serialise on the outcome's primary key.
    #[tracing::instrument(name = "storage.save", skip_all, fields(event_id = %record.event_id))]
    pub async fn save(
        &self,
        record: &TicketRecord,
        ready_event: &str,
    ) -> Result<Saved, StoreError> {
        let inserted: bool = sqlx::query_scalar(
            "WITH claim AS (
                 INSERT INTO event_outcomes (event_id, outcome, decided_at)
                 VALUES ($1, 'issued', $7)
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id
             ),
             stored AS (
                 INSERT INTO auth_tickets
                     (event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM claim
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id
             ),
             announced AS (
                 INSERT INTO ticket_event_outbox (event_id, routing_key, body)
                 SELECT event_id, 'ticket.ready', $9 FROM stored
                 ON CONFLICT (event_id) DO NOTHING
             )
             SELECT EXISTS (SELECT 1 FROM stored)",
        )
        .bind(record.event_id.as_str())
        .bind(&record.xc_user_id)
        .bind(&record.user_id)
        .bind(&record.user_device_id)
        .bind(record.platform.as_str())
        .bind(record.ticket.expose())
        .bind(record.issued_at)
        .bind(record.expires_at)
        .bind(ready_event)
        .fetch_one(self.pool())
        .await?;
        if inserted {
            return Ok(Saved::Inserted(record.clone()));
        }
        // Another copy of the event got there first. Read what it left in a new
        // statement, whose snapshot sees that commit.
        match self.known(&record.event_id).await? {
            Known::Issued(existing) => Ok(Saved::Existing(existing)),
            Known::Failed(failure) => Ok(Saved::Failed(failure)),
            Known::Nothing => Err(StoreError::Failed(format!(
                "event {} conflicted with an outcome that is gone (purged meanwhile?)",
                record.event_id
            ))),
        }
    }
}
