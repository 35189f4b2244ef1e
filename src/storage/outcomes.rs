//! `event_outcomes`: the final outcome of each login event, first writer wins.
//!
//! Several copies of one event can be in flight at once (a duplicate publish,
//! a redelivery, another replica). Whichever copy first records an outcome —
//! a stored ticket or a failure — decides it for all of them, so one event
//! never gets both `ticket.ready` and `ticket.failed`.
//!
//! Everything stored about an event goes together: [`TicketStore::purge_batch`]
//! deletes long-decided events, and [`TicketStore::forget_events`] deletes
//! named ones (the demo, removing what it made).

use super::bounded;
use super::rows::Row;
use super::{StoreError, TicketStore};
use crate::domain::{EventId, TicketRecord};
use crate::events::FailureReason;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// What one purge statement deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Events deleted, outcome and ticket together.
    pub events: u64,
    /// Of those, events whose ticket event was still waiting in the outbox:
    /// RabbitMQ never confirmed it in all that time.
    pub unannounced: u64,
}

/// A failure recorded as an event's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFailure {
    pub reason: FailureReason,
    pub message: String,
    pub field: Option<String>,
    /// The user and device of the copy the failure was recorded for; every
    /// later copy is answered with these. `None` on rows recorded before
    /// they were kept.
    pub about: Option<FailedFor>,
}

/// Whom a recorded failure answers: the user and device of the copy of the
/// event that recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedFor {
    pub xc_user_id: String,
    pub user_device_id: String,
}

/// What the database knows about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// No outcome yet.
    Nothing,
    /// Its ticket is stored.
    Issued(TicketRecord),
    /// It failed; every copy answers with this failure.
    Failed(StoredFailure),
}

/// What [`TicketStore::forget_events`] deleted, table by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// `auth_tickets` rows.
    pub tickets: u64,
    /// `event_outcomes` rows (one per event that had an outcome).
    pub outcomes: u64,
    /// `ticket_event_outbox` rows (ticket events not confirmed yet).
    pub announcements: u64,
}

impl Forgotten {
    fn from_counts((tickets, outcomes, announcements): (i64, i64, i64)) -> Forgotten {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Forgotten {
            tickets: count(tickets),
            outcomes: count(outcomes),
            announcements: count(announcements),
        }
    }
}

#[derive(sqlx::FromRow)]
struct OutcomeRow {
    event_id: String,
    outcome: String,
    reason: Option<String>,
    message: Option<String>,
    field: Option<String>,
    o_xc_user_id: Option<String>,
    o_user_device_id: Option<String>,
    t_event_id: Option<String>,
    xc_user_id: Option<String>,
    user_id: Option<String>,
    user_device_id: Option<String>,
    user_platform: Option<String>,
    ticket: Option<String>,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl OutcomeRow {
    /// What the row says about its event.
    fn into_known(self) -> Result<Known, StoreError> {
        if self.outcome == "failed" {
            let reason = self
                .reason
                .as_deref()
                .and_then(FailureReason::parse)
                .ok_or_else(|| {
                    StoreError::Failed("event_outcomes row has an invalid reason".into())
                })?;
            let about = match (self.o_xc_user_id, self.o_user_device_id) {
                (Some(xc_user_id), Some(user_device_id)) => Some(FailedFor {
                    xc_user_id,
                    user_device_id,
                }),
                _ => None,
            };
            return Ok(Known::Failed(StoredFailure {
                reason,
                message: self.message.unwrap_or_default(),
                field: self.field,
                about,
            }));
        }
        let ticket = match (
            self.t_event_id,
            self.xc_user_id,
            self.user_id,
            self.user_device_id,
            self.user_platform,
            self.ticket,
            self.issued_at,
            self.expires_at,
        ) {
            (
                Some(event_id),
                Some(xc_user_id),
                Some(user_id),
                Some(user_device_id),
                Some(user_platform),
                Some(ticket),
                Some(issued_at),
                Some(expires_at),
            ) => Row {
                event_id,
                xc_user_id,
                user_id,
                user_device_id,
                user_platform,
                ticket,
                issued_at,
                expires_at,
            },
            // Issued, but the ticket was purged in between: nothing usable.
            _ => return Ok(Known::Nothing),
        };
        Ok(Known::Issued(TicketRecord::try_from(ticket)?))
    }
}

/// The outcomes of the events in `$1` (a `text[]`), with their tickets.
const KNOWN_MANY: &str = "SELECT o.event_id, o.outcome, o.reason, o.message, o.field,
        o.xc_user_id AS o_xc_user_id, o.user_device_id AS o_user_device_id,
        t.event_id AS t_event_id, t.xc_user_id, t.user_id, t.user_device_id,
        t.user_platform, t.ticket, t.issued_at, t.expires_at
     FROM event_outcomes o LEFT JOIN auth_tickets t ON t.event_id = o.event_id
     WHERE o.event_id = ANY($1)";

impl TicketStore {
    /// The outcome of an event, with its ticket when it was issued.
    #[tracing::instrument(name = "storage.known", level = "debug", skip_all, fields(event_id = %event_id))]
    pub async fn known(&self, event_id: &EventId) -> Result<Known, StoreError> {
        let mut known = self.known_many(std::slice::from_ref(event_id)).await?;
        known.pop().unwrap_or(Ok(Known::Nothing))
    }

    /// The outcomes of several events, in the order asked, in one statement.
    /// A row that makes no sense fails its own event only.
    #[tracing::instrument(name = "storage.known_many", level = "debug", skip_all, fields(events = event_ids.len()))]
    pub async fn known_many(
        &self,
        event_ids: &[EventId],
    ) -> Result<Vec<Result<Known, StoreError>>, StoreError> {
        let ids: Vec<&str> = event_ids.iter().map(EventId::as_str).collect();
        let rows: Vec<OutcomeRow> = bounded!(self, |conn, persistent| sqlx::query_as(KNOWN_MANY)
            .persistent(persistent)
            .bind(&ids)
            .fetch_all(&mut *conn))?;
        let mut found: HashMap<String, Result<Known, StoreError>> =
            HashMap::with_capacity(rows.len());
        for row in rows {
            let event_id = row.event_id.clone();
            found.insert(event_id, row.into_known());
        }
        Ok(event_ids
            .iter()
            .map(|id| {
                found
                    .get(id.as_str())
                    .cloned()
                    .unwrap_or(Ok(Known::Nothing))
            })
            .collect())
    }

    /// Records a failure as the event's outcome, unless it already has one,
    /// and queues `failed_event` (the `ticket.failed` JSON) in the outbox in
    /// the same statement; returns the outcome that stands (ours, or the one
    /// recorded first). `body_sha256` is the digest of the body of the copy
    /// that failed (see [`body_digest`]): a replay clears the failure only
    /// for that copy.
    #[tracing::instrument(name = "storage.record_failure", level = "debug", skip_all, fields(event_id = %event_id, reason = failure.reason.as_str()))]
    pub async fn record_failure(
        &self,
        event_id: &EventId,
        failure: &StoredFailure,
        failed_event: &str,
        body_sha256: &[u8],
    ) -> Result<Known, StoreError> {
        let (xc_user_id, user_device_id) = match &failure.about {
            Some(about) => (Some(&about.xc_user_id), Some(&about.user_device_id)),
            None => (None, None),
        };
        let recorded: bool = bounded!(self, |conn, persistent| sqlx::query_scalar(
            "WITH recorded AS (
                 INSERT INTO event_outcomes (event_id, outcome, reason, message, field,
                                             xc_user_id, user_device_id, body_sha256)
                 VALUES ($1, 'failed', $2, $3, $4, $6, $7, $8)
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING event_id
             ),
             announced AS (
                 INSERT INTO ticket_event_outbox (event_id, routing_key, body)
                 SELECT event_id, 'ticket.failed', $5 FROM recorded
                 ON CONFLICT (event_id) DO NOTHING
             )
             SELECT EXISTS (SELECT 1 FROM recorded)",
        )
        .persistent(persistent)
        .bind(event_id.as_str())
        .bind(failure.reason.as_str())
        .bind(&failure.message)
        .bind(&failure.field)
        .bind(failed_event)
        .bind(xc_user_id)
        .bind(user_device_id)
        .bind(body_sha256)
        .fetch_one(&mut *conn))?;
        if recorded {
            return Ok(Known::Failed(failure.clone()));
        }
        match self.known(event_id).await? {
            Known::Nothing => Err(StoreError::Failed(format!(
                "event {event_id} conflicted with an outcome that is gone (purged meanwhile?)"
            ))),
            known => Ok(known),
        }
    }

    /// Deletes up to `batch` events decided more than `older_than` + 1 hour ago
    /// (for tickets: expired more than `older_than` ago), outcome, ticket and
    /// any announcement still waiting together in one statement; returns how
    /// many events went, and how many of them were never announced.
    #[tracing::instrument(name = "storage.purge_batch", skip(self))]
    pub async fn purge_batch(
        &self,
        older_than: Duration,
        batch: i64,
    ) -> Result<Purged, StoreError> {
        let (events, unannounced): (i64, i64) = bounded!(self, |conn, persistent| sqlx::query_as(
            "WITH doomed AS (
                 SELECT event_id FROM event_outcomes
                 WHERE decided_at < now() - make_interval(secs => $1) - interval '1 hour'
                 LIMIT $2
             ),
             tickets AS (
                 DELETE FROM auth_tickets WHERE event_id IN (SELECT event_id FROM doomed)
             ),
             unannounced AS (
                 DELETE FROM ticket_event_outbox WHERE event_id IN (SELECT event_id FROM doomed)
                 RETURNING event_id
             ),
             outcomes AS (
                 DELETE FROM event_outcomes WHERE event_id IN (SELECT event_id FROM doomed)
                 RETURNING event_id
             )
             SELECT (SELECT count(*) FROM outcomes), (SELECT count(*) FROM unannounced)",
        )
        .persistent(persistent)
        .bind(older_than.as_secs_f64())
        .bind(batch)
        .fetch_one(&mut *conn))?;
        Ok(Purged {
            events: u64::try_from(events).unwrap_or(0),
            unannounced: u64::try_from(unannounced).unwrap_or(0),
        })
    }

    /// Deletes everything stored about these events, in one statement: their
    /// tickets, outcomes and waiting announcements. Rows of other events are
    /// untouched. For removing what a demo made; the worker never forgets.
    #[tracing::instrument(name = "storage.forget_events", skip_all, fields(events = event_ids.len()))]
    pub async fn forget_events(&self, event_ids: &[EventId]) -> Result<Forgotten, StoreError> {
        let ids: Vec<&str> = event_ids.iter().map(EventId::as_str).collect();
        let counts = bounded!(self, |conn, persistent| sqlx::query_as(
            "WITH tickets AS (
                 DELETE FROM auth_tickets WHERE event_id = ANY($1) RETURNING 1
             ),
             announcements AS (
                 DELETE FROM ticket_event_outbox WHERE event_id = ANY($1) RETURNING 1
             ),
             outcomes AS (
                 DELETE FROM event_outcomes WHERE event_id = ANY($1) RETURNING 1
             )
             SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM outcomes),
                    (SELECT count(*) FROM announcements)",
        )
        .persistent(persistent)
        .bind(ids)
        .fetch_one(&mut *conn))?;
        Ok(Forgotten::from_counts(counts))
    }

    /// Like [`TicketStore::forget_events`], for every event whose id starts
    /// with `prefix` (as a demo run's ids do). Refuses a prefix shorter than
    /// 8 bytes, which could match real events.
    #[tracing::instrument(name = "storage.forget_events_starting_with", skip(self))]
    pub async fn forget_events_starting_with(&self, prefix: &str) -> Result<Forgotten, StoreError> {
        if prefix.len() < 8 {
            return Err(StoreError::Failed(format!(
                "refusing to forget every event whose id starts with {prefix:?}: too short"
            )));
        }
        // A scan of every table, not a lookup: more time than a statement
        // of the worker's, in a transaction of its own.
        const FORGET_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);
        let mut conn = self.pool().acquire().await?;
        sqlx::raw_sql("BEGIN; SET LOCAL statement_timeout = '10min'")
            .execute(&mut *conn)
            .await?;
        let forget = sqlx::query_as(
            "WITH tickets AS (
                 DELETE FROM auth_tickets WHERE starts_with(event_id, $1) RETURNING 1
             ),
             announcements AS (
                 DELETE FROM ticket_event_outbox WHERE starts_with(event_id, $1) RETURNING 1
             ),
             outcomes AS (
                 DELETE FROM event_outcomes WHERE starts_with(event_id, $1) RETURNING 1
             )
             SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM outcomes),
                    (SELECT count(*) FROM announcements)",
        )
        .bind(prefix)
        .fetch_one(&mut *conn);
        let counts = match tokio::time::timeout(FORGET_WITHIN, forget).await {
            Ok(counts) => counts?,
            Err(_) => {
                conn.close_on_drop();
                return Err(StoreError::no_answer("forgetting a run's events"));
            }
        };
        sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
        Ok(Forgotten::from_counts(counts))
    }
}

/// The SHA-256 of a login event's body, as `event_outcomes.body_sha256`
/// keeps it for a recorded failure.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[tokio::test]
    async fn forgetting_by_prefix_refuses_short_prefixes_before_asking_postgres() {
        // Nothing listens on port 1: reaching Postgres at all would fail otherwise.
        let url = SecretString::from("postgres://nobody@127.0.0.1:1/none");
        let store = TicketStore::connect_lazy(&url, 1).expect("a lazy pool");
        for prefix in ["", "%", "demo-", "1234567"] {
            match store.forget_events_starting_with(prefix).await {
                Err(StoreError::Failed(message)) => assert!(message.contains("too short")),
                other => panic!("{prefix:?}: {other:?}"),
            }
        }
    }
}
