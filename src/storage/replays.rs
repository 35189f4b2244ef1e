//! Making way for a replayed dead letter (`dlq replay`).
//!
//! The first outcome recorded for an event wins ([`outcomes`](super::outcomes)):
//! a copy of an event given up with `retries_exhausted` or
//! `rejected_by_upstream` is answered with that failure again, without a
//! TapTalk call. So before a replay is published, the failure that put the
//! dead letter there is deleted, together with its `ticket.failed` if that is
//! still waiting in the outbox (left there, the relay would announce a
//! failure that no longer stands, and the row would keep the replay's
//! `ticket.ready` out of the outbox). An event that has a stored ticket is
//! never touched, and neither is any other outcome; nor is a failure
//! recorded for another copy of the event: copies can differ (a publisher may
//! send another body under the same eventID), and only the copy whose body
//! the failure was recorded for (`body_sha256`) may be given another chance.
//! Failures recorded before the digest was kept are cleared as before.

use super::bounded;
use super::{StoreError, TicketStore};
use crate::domain::EventId;
use crate::events::FailureReason;

/// What the database holds for an event about to be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayState {
    /// Its ticket is stored: the replay will only announce it again.
    pub ticketed: bool,
    /// The failure recorded as its outcome, if that is its outcome.
    pub failure: Option<String>,
    /// That failure was recorded for another copy of the event (a body with
    /// another digest): a replay of this one cannot clear it.
    pub other_copy: bool,
}

/// What [`TicketStore::clear_for_replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    /// The event as it was before.
    pub before: ReplayState,
    /// The recorded failure was deleted.
    pub failure: bool,
    /// Its `ticket.failed` was still waiting in the outbox, and went too.
    pub announcement: bool,
}

impl TicketStore {
    /// What the database holds for `event_id` (`dlq replay --dry-run`).
    #[tracing::instrument(name = "storage.replay_state", level = "debug", skip_all, fields(event_id = %event_id))]
    /// `body_sha256`: the digest of the body about to be replayed.
    pub async fn replay_state(
        &self,
        event_id: &EventId,
        body_sha256: &[u8],
    ) -> Result<ReplayState, StoreError> {
        let (ticketed, failure, other_copy): (bool, Option<String>, Option<bool>) =
            bounded!(self, |conn, persistent| sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM auth_tickets WHERE event_id = $1), o.reason,
                        o.body_sha256 IS DISTINCT FROM $2 AND o.body_sha256 IS NOT NULL
                 FROM (SELECT 1) one
                 LEFT JOIN event_outcomes o ON o.event_id = $1 AND o.outcome = 'failed'",
            )
            .persistent(persistent)
            .bind(event_id.as_str())
            .bind(body_sha256)
            .fetch_one(&mut *conn))?;
        Ok(ReplayState {
            ticketed,
            failure,
            other_copy: other_copy.unwrap_or(false),
        })
    }

    /// Deletes the failure `reason` recorded for `event_id`, and its
    /// `ticket.failed` still waiting in the outbox, in one statement; only
    /// when that failure is the event's outcome, recorded for the copy whose
    /// body has the digest `body_sha256` (or before digests were kept), and
    /// the event has no stored ticket.
    #[tracing::instrument(name = "storage.clear_for_replay", level = "debug", skip_all, fields(event_id = %event_id, reason = reason.as_str()))]
    pub async fn clear_for_replay(
        &self,
        event_id: &EventId,
        reason: FailureReason,
        body_sha256: &[u8],
    ) -> Result<Cleared, StoreError> {
        // Every part of one statement sees the same snapshot, so the last
        // columns describe the event as it was before the deletes.
        let (failure, announcement, ticketed, recorded, other_copy): (
            bool,
            bool,
            bool,
            Option<String>,
            Option<bool>,
        ) = bounded!(self, |conn, persistent| {
            sqlx::query_as(
                "WITH cleared AS (
                     DELETE FROM event_outcomes o
                     WHERE o.event_id = $1 AND o.outcome = 'failed' AND o.reason = $2
                       AND (o.body_sha256 IS NULL OR o.body_sha256 = $3)
                       AND NOT EXISTS (SELECT 1 FROM auth_tickets t WHERE t.event_id = $1)
                     RETURNING o.event_id
                 ),
                 unannounced AS (
                     DELETE FROM ticket_event_outbox b
                     WHERE b.event_id IN (SELECT event_id FROM cleared)
                       AND b.routing_key = 'ticket.failed'
                     RETURNING b.event_id
                 )
                 SELECT EXISTS (SELECT 1 FROM cleared), EXISTS (SELECT 1 FROM unannounced),
                        EXISTS (SELECT 1 FROM auth_tickets WHERE event_id = $1),
                        (SELECT reason FROM event_outcomes WHERE event_id = $1 AND outcome = 'failed'),
                        (SELECT body_sha256 IS DISTINCT FROM $3 AND body_sha256 IS NOT NULL
                         FROM event_outcomes WHERE event_id = $1 AND outcome = 'failed')",
            )
        .persistent(persistent)
            .bind(event_id.as_str())
            .bind(reason.as_str())
            .bind(body_sha256)
            .fetch_one(&mut *conn)
        })?;
        Ok(Cleared {
            before: ReplayState {
                ticketed,
                failure: recorded,
                other_copy: other_copy.unwrap_or(false),
            },
            failure,
            announcement,
        })
    }
}
