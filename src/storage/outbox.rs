//! `ticket_event_outbox`: the ticket event that announces an event's outcome,
//! written in the same statement as the outcome (a transactional outbox).
//!
//! The pipeline publishes the event itself right away and then reports it
//! [`Announced`]; those rows are deleted in batches. A row that stays (the
//! worker crashed, the connection dropped, or RabbitMQ dead-lettered the login
//! event before it was answered) is picked up by the [relay](crate::relay),
//! so every stored outcome is announced at least once.

use super::bounded;
use super::{StoreError, TicketStore};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A ticket event waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub event_id: String,
    /// `ticket.ready` or `ticket.failed`.
    pub routing_key: String,
    /// The event's JSON, exactly as it is published.
    pub body: String,
}

/// Event ids whose ticket event RabbitMQ has confirmed, waiting for their
/// outbox rows to be deleted in one statement. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Announced(Arc<Mutex<Vec<String>>>);

impl Announced {
    /// Notes that the ticket event of `event_id` is confirmed.
    pub fn push(&self, event_id: &str) {
        self.lock().push(event_id.to_owned());
    }

    /// Takes every id noted so far.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts ids back after a failed delete, to try again later.
    pub fn restore(&self, ids: Vec<String>) {
        self.lock().extend(ids);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    event_id: String,
    routing_key: String,
    body: String,
}

impl TicketStore {
    /// Takes up to `limit` announcements nobody has set out to publish for
    /// `older_than`, and marks them attempted now, so that other replicas
    /// leave them alone for as long again.
    #[tracing::instrument(name = "storage.outbox_take_due", level = "debug", skip(self))]
    pub async fn take_due_announcements(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<Announcement>, StoreError> {
        let rows: Vec<Row> = bounded!(self, |conn, persistent| sqlx::query_as(
            "UPDATE ticket_event_outbox o SET attempted_at = now()
             WHERE o.event_id IN (
                 SELECT event_id FROM ticket_event_outbox
                 WHERE attempted_at < now() - make_interval(secs => $1)
                 ORDER BY attempted_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             RETURNING o.event_id, o.routing_key, o.body",
        )
        .persistent(persistent)
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut *conn))?;
        Ok(rows
            .into_iter()
            .map(|row| Announcement {
                event_id: row.event_id,
                routing_key: row.routing_key,
                body: row.body,
            })
            .collect())
    }

    /// Deletes the outbox rows of events whose ticket event is confirmed.
    #[tracing::instrument(name = "storage.outbox_delete", level = "debug", skip_all, fields(events = event_ids.len()))]
    pub async fn delete_announced(&self, event_ids: &[String]) -> Result<u64, StoreError> {
        if event_ids.is_empty() {
            return Ok(0);
        }
        let deleted = bounded!(self, |conn, persistent| sqlx::query(
            "DELETE FROM ticket_event_outbox WHERE event_id = ANY($1)"
        )
        .persistent(persistent)
        .bind(event_ids)
        .execute(&mut *conn))?
        .rows_affected();
        Ok(deleted)
    }

    /// How many announcements are waiting (tests, progress reports).
    pub async fn pending_announcements(&self) -> Result<i64, StoreError> {
        Ok(bounded!(self, |conn, persistent| sqlx::query_scalar(
            "SELECT count(*) FROM ticket_event_outbox"
        )
        .persistent(persistent)
        .fetch_one(&mut *conn))?)
    }
}
