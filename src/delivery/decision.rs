//! What the pipeline decides for a message ([`Decision`], with the
//! [`DeadLetterNote`] a dead letter carries), and how a delivery ended once
//! the broker carried that out ([`Outcome`]).

use crate::domain::TicketRecord;
use crate::events::{FailureReason, TicketFailed, TicketReady};
use chrono::{DateTime, Utc};

/// How one delivery ended. Every variant but `Abandoned` has been settled
/// with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new ticket was stored and announced.
    Issued,
    /// The event already had a ticket; it was announced again.
    AlreadyIssued,
    /// `ticket.failed` (invalid, rejected upstream, retries exhausted) and a dead letter.
    DeadLettered(FailureReason),
    /// `ticket.failed` "expired"; nothing else.
    Expired,
    /// TapTalk or Postgres was unavailable: a copy went back to the queue.
    RetryLater,
    /// An unexpected failure: nacked back to the queue, spending one of its
    /// deliveries (the queue's delivery limit ends a loop).
    Requeued,
    /// Rejected without requeueing: RabbitMQ dead-letters it (`x-death`).
    Rejected,
    /// The broker connection failed mid-way; RabbitMQ will redeliver it.
    Abandoned,
}

/// What to do with a message, decided before touching the broker; the broker
/// code carries it out ([`Settler`](crate::broker::settle::Settler)).
#[derive(Debug)]
pub enum Decision {
    /// Announce the stored ticket with `ticket.ready`.
    Ready {
        record: TicketRecord,
        outcome: Outcome,
        /// The `ticket.ready` JSON, when it was encoded already (for the
        /// outbox), so it goes out exactly as stored and is encoded once.
        encoded: Option<String>,
        /// When the login happened (`occurredAt`), for a new ticket: the
        /// login-to-ready time is measured once its announcement is confirmed.
        occurred_at: Option<DateTime<Utc>>,
    },
    /// Announce a failure (`ticket.failed`) and/or dead-letter the message.
    Fail {
        failed: Option<TicketFailed>,
        dead_letter: Option<DeadLetterNote>,
        outcome: Outcome,
        /// The failure is a recorded outcome, announced from the outbox too.
        recorded: bool,
    },
    /// Back to the queue; `count`: the event's own failure, not an outage.
    RetryLater { count: bool },
    /// Its headers nearly fill the frame: a trimmed copy goes back to the
    /// queue in its place. Should RabbitMQ refuse the copy, the original is
    /// rejected (RabbitMQ dead-letters it), never requeued: its redelivery
    /// would not fit a frame.
    Defuse,
    /// Nack it back to the queue, spending a delivery (a bug, not the event).
    Requeue,
}

impl Decision {
    /// The id of the event decided on, when the decision knows it.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Decision::Ready { record, .. } => Some(record.event_id.as_str()),
            Decision::Fail {
                failed: Some(failed),
                ..
            } => Some(failed.event_id.as_str()),
            _ => None,
        }
    }

    /// Announce a ticket stored before (by another copy of the event), with
    /// the login's time as this copy says it: the same `ticket.ready` as the
    /// first announcement. (Not counted again in login-to-ready.)
    pub fn announce(record: TicketRecord, login_at: Option<DateTime<Utc>>) -> Decision {
        let ready = TicketReady::for_record(&record).with_login_at(login_at);
        Decision::Ready {
            encoded: serde_json::to_string(&ready).ok(),
            record,
            outcome: Outcome::AlreadyIssued,
            occurred_at: None,
        }
    }
}

/// What the dead-letter headers say about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterNote {
    /// `invalid`, `rejected_by_upstream`, `retries_exhausted`.
    pub reason: &'static str,
    /// For invalid events, the finer problem code (`not_json`, …).
    pub problem: Option<&'static str>,
    pub message: String,
    pub field: Option<String>,
}
