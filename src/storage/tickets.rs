//! `auth_tickets`: one row per login event with the ticket TapTalk issued for
//! it. Saving claims the event's outcome in `event_outcomes` in the same
//! statement, so a ticket is only stored if no copy of the event ended
//! otherwise first.

use super::bounded;
use super::outcomes::{Known, StoredFailure};
use super::rows::Row;
use super::{StoreError, TicketStore};
use crate::domain::{EventId, TicketRecord};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

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
    #[tracing::instrument(name = "storage.find", level = "debug", skip_all, fields(event_id = %event_id))]
    pub async fn find(&self, event_id: &EventId) -> Result<Option<TicketRecord>, StoreError> {
        let row: Option<Row> = bounded!(self, |conn, persistent| {
            sqlx::query_as(
            "SELECT event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at
             FROM auth_tickets WHERE event_id = $1",
        )
        .persistent(persistent)
        .bind(event_id.as_str())
        .fetch_optional(&mut *conn)
        })?;
        row.map(TicketRecord::try_from).transpose()
    }

    /// The stored tickets of several events, oldest first.
    #[tracing::instrument(name = "storage.find_many", level = "debug", skip_all, fields(events = event_ids.len()))]
    pub async fn find_many(&self, event_ids: &[EventId]) -> Result<Vec<TicketRecord>, StoreError> {
        let ids: Vec<String> = event_ids.iter().map(ToString::to_string).collect();
        let rows: Vec<Row> = bounded!(self, |conn, persistent| {
            sqlx::query_as(
            "SELECT event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at
             FROM auth_tickets WHERE event_id = ANY($1) ORDER BY issued_at, event_id",
        )
        .persistent(persistent)
        .bind(ids)
        .fetch_all(&mut *conn)
        })?;
        rows.into_iter().map(TicketRecord::try_from).collect()
    }

    /// Stores a ticket, unless the event already has an outcome (see
    /// [`TicketStore::save_many`]).
    #[tracing::instrument(name = "storage.save", level = "debug", skip_all, fields(event_id = %record.event_id))]
    pub async fn save(
        &self,
        record: &TicketRecord,
        ready_event: &str,
    ) -> Result<Saved, StoreError> {
        let mut saved = self
            .save_many(std::slice::from_ref(&(
                record.clone(),
                ready_event.to_owned(),
            )))
            .await?;
        saved.pop().unwrap_or_else(|| {
            Err(StoreError::Failed(
                "saving a ticket returned no answer".into(),
            ))
        })
    }

    /// Stores many tickets, each unless its event already has an outcome,
    /// in one statement, so one transaction: for every event it claims the
    /// outcome, writes the row and queues its `ticket.ready` JSON in the
    /// outbox together, or does none of it. Answers in the order given.
    ///
    /// Concurrent saves of one event serialise on the outcome's primary key;
    /// rows are claimed in `event_id` order, so two batches that share events
    /// wait for each other instead of deadlocking. An event given twice is
    /// stored once; its other copies answer like a later copy would.
    #[tracing::instrument(name = "storage.save_many", level = "debug", skip_all, fields(events = tickets.len()))]
    pub async fn save_many(
        &self,
        tickets: &[(TicketRecord, String)],
    ) -> Result<Vec<Result<Saved, StoreError>>, StoreError> {
        let mut columns = Columns::with_capacity(tickets.len());
        let mut seen = HashSet::with_capacity(tickets.len());
        for (record, ready_event) in tickets {
            if seen.insert(record.event_id.as_str()) {
                columns.push(record, ready_event);
            }
        }
        let inserted: Vec<String> =
            bounded!(self, |conn, persistent| sqlx::query_scalar(SAVE_MANY)
                .persistent(persistent)
                .bind(&columns.event_id)
                .bind(&columns.xc_user_id)
                .bind(&columns.user_id)
                .bind(&columns.user_device_id)
                .bind(&columns.user_platform)
                .bind(&columns.ticket)
                .bind(&columns.issued_at)
                .bind(&columns.expires_at)
                .bind(&columns.ready_event)
                .fetch_all(&mut *conn))?;
        // Which of the given tickets this statement stored: each stored event
        // once, for its first copy in the batch.
        let mut inserted: HashSet<&str> = inserted.iter().map(String::as_str).collect();
        let stored: Vec<bool> = tickets
            .iter()
            .map(|(record, _)| inserted.remove(record.event_id.as_str()))
            .collect();
        // For the rest, another copy got there first: read what it left, in a
        // new statement, whose snapshot sees that commit.
        let lost: Vec<EventId> = tickets
            .iter()
            .zip(&stored)
            .filter(|(_, stored)| !**stored)
            .map(|((record, _), _)| record.event_id.clone())
            .collect();
        let mut lost_answers = if lost.is_empty() {
            Vec::new()
        } else {
            self.known_many(&lost).await?
        }
        .into_iter();
        Ok(tickets
            .iter()
            .zip(stored)
            .map(|((record, _), stored)| {
                if stored {
                    return Ok(Saved::Inserted(record.clone()));
                }
                match lost_answers.next() {
                    Some(Ok(Known::Issued(existing))) => Ok(Saved::Existing(existing)),
                    Some(Ok(Known::Failed(failure))) => Ok(Saved::Failed(failure)),
                    Some(Ok(Known::Nothing)) | None => Err(StoreError::Failed(format!(
                        "event {} conflicted with an outcome that is gone (purged meanwhile?)",
                        record.event_id
                    ))),
                    Some(Err(error)) => Err(error),
                }
            })
            .collect())
    }
}

/// Claims the outcomes, stores the tickets and queues their `ticket.ready`
/// events for the rows given as parallel arrays; returns the events stored.
const SAVE_MANY: &str = "WITH input AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[])
             AS i(event_id, xc_user_id, user_id, user_device_id, user_platform,
                  ticket, issued_at, expires_at, ready_event)
     ),
     claim AS (
         INSERT INTO event_outcomes (event_id, outcome, decided_at)
         SELECT event_id, 'issued', issued_at FROM input ORDER BY event_id
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id
     ),
     stored AS (
         INSERT INTO auth_tickets
             (event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at)
         SELECT i.event_id, i.xc_user_id, i.user_id, i.user_device_id, i.user_platform,
                i.ticket, i.issued_at, i.expires_at
         FROM input i JOIN claim c ON c.event_id = i.event_id
         ORDER BY i.event_id
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id
     ),
     announced AS (
         INSERT INTO ticket_event_outbox (event_id, routing_key, body)
         SELECT i.event_id, 'ticket.ready', i.ready_event
         FROM input i JOIN stored s ON s.event_id = i.event_id
         ON CONFLICT (event_id) DO NOTHING
     )
     SELECT event_id FROM stored";

/// Tickets as the parallel arrays [`SAVE_MANY`] takes.
struct Columns<'a> {
    event_id: Vec<&'a str>,
    xc_user_id: Vec<&'a str>,
    user_id: Vec<&'a str>,
    user_device_id: Vec<&'a str>,
    user_platform: Vec<&'static str>,
    ticket: Vec<&'a str>,
    issued_at: Vec<DateTime<Utc>>,
    expires_at: Vec<DateTime<Utc>>,
    ready_event: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn with_capacity(n: usize) -> Columns<'a> {
        Columns {
            event_id: Vec::with_capacity(n),
            xc_user_id: Vec::with_capacity(n),
            user_id: Vec::with_capacity(n),
            user_device_id: Vec::with_capacity(n),
            user_platform: Vec::with_capacity(n),
            ticket: Vec::with_capacity(n),
            issued_at: Vec::with_capacity(n),
            expires_at: Vec::with_capacity(n),
            ready_event: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, record: &'a TicketRecord, ready_event: &'a str) {
        self.event_id.push(record.event_id.as_str());
        self.xc_user_id.push(&record.xc_user_id);
        self.user_id.push(&record.user_id);
        self.user_device_id.push(&record.user_device_id);
        self.user_platform.push(record.platform.as_str());
        self.ticket.push(record.ticket.expose());
        self.issued_at.push(record.issued_at);
        self.expires_at.push(record.expires_at);
        self.ready_event.push(ready_event);
    }
}
