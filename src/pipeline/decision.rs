//! The decisions that answer a failure: a recorded one, an event that failed
//! parsing, a ticket event that could not be encoded. (What a decision can
//! be, [`Decision`], is `delivery`'s vocabulary.)

use crate::delivery::{DeadLetterNote, Decision, Outcome};
use crate::events::{FailureReason, InvalidEvent, LoginEvent, TicketFailed};
use crate::storage::StoredFailure;

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
