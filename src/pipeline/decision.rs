//! What the pipeline decides for a message ([`Decision`]), how a delivery
//! ended once that was carried out ([`Outcome`]), and the decisions that
//! answer a failure.

use crate::domain::TicketRecord;
use crate::events::{FailureReason, InvalidEvent, LoginEvent, TicketFailed};
use crate::storage::StoredFailure;
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
    /// Announce a ticket stored before (by another copy of the event).
    pub fn announce(record: TicketRecord) -> Decision {
        Decision::Ready {
            record,
            outcome: Outcome::AlreadyIssued,
            encoded: None,
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

/// The answer for an event whose outcome is a failure.
pub(super) fn failed(event: &LoginEvent, failure: &StoredFailure) -> Decision {
    let dead_letter = matches!(
        failure.reason,
        FailureReason::RejectedByUpstream | FailureReason::RetriesExhausted
    )
    .then(|| DeadLetterNote {
        reason: failure.reason.as_str(),
        problem: None,
        message: failure.message.clone(),
        field: failure.field.clone(),
    });
    let outcome = if dead_letter.is_some() {
        Outcome::DeadLettered(failure.reason)
    } else {
        Outcome::Expired
    };
    Decision::Fail {
        failed: Some(ticket_failed(event, failure)),
        dead_letter,
        outcome,
        recorded: true,
    }
}

/// The `ticket.failed` event that announces a recorded failure: about the
/// user and device it was recorded for, whichever copy of the event asks
/// (rows from before they were kept: this copy's).
pub(super) fn ticket_failed(event: &LoginEvent, failure: &StoredFailure) -> TicketFailed {
    let (xc_user_id, user_device_id) = match &failure.about {
        Some(about) => (about.xc_user_id.as_str(), about.user_device_id.as_str()),
        None => (event.request.xc_user_id(), event.request.user_device_id()),
    };
    TicketFailed::new(
        &event.event_id,
        failure.reason,
        failure.message.clone(),
        failure.field.as_deref(),
    )
    .about(Some(xc_user_id), Some(user_device_id))
}

/// The answer to an event that failed parsing: `ticket.failed` when it has an
/// id to correlate with, a dead letter always.
pub(super) fn invalid_event(invalid: InvalidEvent) -> Decision {
    tracing::info!(problem = %invalid.problem, event_id = ?invalid.event_id.as_ref().map(|id| id.as_str()), "invalid login event: {}", invalid.message);
    let failed = invalid.event_id.as_ref().map(|id| {
        TicketFailed::new(
            id,
            FailureReason::Invalid,
            invalid.message.clone(),
            invalid.field,
        )
        .about(
            invalid.xc_user_id.as_deref(),
            invalid.user_device_id.as_deref(),
        )
    });
    Decision::Fail {
        failed,
        dead_letter: Some(DeadLetterNote {
            reason: FailureReason::Invalid.as_str(),
            problem: Some(invalid.problem.code()),
            message: invalid.message,
            field: invalid.field.map(str::to_owned),
        }),
        outcome: Outcome::DeadLettered(FailureReason::Invalid),
        recorded: false,
    }
}

/// A ticket event could not be encoded (a bug): back to the queue, spending a
/// delivery, so the delivery limit ends a loop.
pub(super) fn encoding_failed(error: &serde_json::Error) -> Decision {
    tracing::error!(%error, "cannot encode a ticket event");
    Decision::Requeue
}
