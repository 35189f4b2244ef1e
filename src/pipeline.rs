//! The pipeline: what happens to one login event, from the bytes RabbitMQ
//! delivered to the acknowledgement.
//!
//! ```text
//! parse ─▶ stale? ─▶ already stored? ─▶ TapTalk (retry) ─▶ store ─▶ ticket.ready ─▶ ack
//!   │         │            │                 │
//!   │         │            └─ re-publish     ├─ ParamValidationFailed ─▶ ticket.failed + dead letter
//!   │         └─ ticket.failed "expired"     └─ down / misconfigured ─▶ back to the queue
//!   └─ ticket.failed "invalid" + dead letter
//! ```
//!
//! [`Pipeline::handle`] decides and then settles the delivery; the worker only
//! feeds it deliveries and watches the outcome.

use crate::broker::{DeadLetterNote, PublishError, Publisher};
use crate::domain::{IssuedTicket, TicketRecord, TicketRequest};
use crate::events::{Envelope, FailureReason, InvalidEvent, LoginEvent, TicketFailed, TicketReady};
use crate::retry::{RetryPolicy, Verdict, retry};
use crate::storage::{Saved, StoreError, TicketStore};
use crate::taptalk::{Breaker, TaptalkClient, TicketError};
use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::time::Duration;

/// The rules the pipeline applies to each event.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    pub max_event_bytes: usize,
    /// Older events (by `occurredAt`) are answered `expired`; `None`: never.
    pub max_event_age: Option<Duration>,
    /// Retries of one TapTalk request.
    pub upstream_retry: RetryPolicy,
    /// Retries of one Postgres write.
    pub store_retry: RetryPolicy,
}

/// How one delivery ended. Every variant but `Abandoned` has been settled
/// with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A new ticket was stored and announced.
    Issued,
    /// The event already had a ticket; it was announced again.
    AlreadyIssued,
    /// `ticket.failed` (invalid or rejected upstream) and a dead letter.
    DeadLettered(FailureReason),
    /// `ticket.failed` "expired"; nothing else.
    Expired,
    /// TapTalk or Postgres was unavailable: a copy went back to the queue.
    RetryLater,
    /// An unexpected failure: nacked back to the queue, spending one of its
    /// deliveries (the queue's delivery limit ends a loop).
    Requeued,
    /// The broker connection failed mid-way; RabbitMQ will redeliver it.
    Abandoned,
}

/// What to do with the delivery, decided before touching the broker.
#[derive(Debug)]
enum Decision {
    Ready(TicketRecord, Outcome),
    Fail {
        failed: Option<TicketFailed>,
        dead_letter: Option<DeadLetter>,
        outcome: Outcome,
    },
    RetryLater,
    Requeue,
}

#[derive(Debug)]
struct DeadLetter {
    reason: FailureReason,
    problem: Option<&'static str>,
    message: String,
    field: Option<String>,
}

/// The services one event needs, shared by all in-flight deliveries.
#[derive(Debug, Clone)]
pub struct Pipeline {
    store: TicketStore,
    taptalk: TaptalkClient,
    breaker: Breaker,
    policy: EventPolicy,
}

impl Pipeline {
    pub fn new(
        store: TicketStore,
        taptalk: TaptalkClient,
        breaker: Breaker,
        policy: EventPolicy,
    ) -> Pipeline {
        Pipeline {
            store,
            taptalk,
            breaker,
            policy,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn taptalk(&self) -> &TaptalkClient {
        &self.taptalk
    }

    /// Processes one delivery and settles it (ack, nack or republish).
    #[tracing::instrument(
        name = "pipeline.handle",
        skip_all,
        fields(delivery_tag = delivery.delivery_tag, redelivered = delivery.redelivered, event_id = tracing::field::Empty)
    )]
    pub async fn handle(&self, delivery: &Delivery, bus: &Publisher) -> Outcome {
        let decision = self.decide(delivery).await;
        match self.settle(delivery, bus, decision).await {
            Ok(outcome) => {
                tracing::debug!(?outcome, "settled");
                outcome
            }
            Err(error) => {
                tracing::warn!(%error, "could not settle the delivery; RabbitMQ will redeliver it");
                Outcome::Abandoned
            }
        }
    }

    async fn decide(&self, delivery: &Delivery) -> Decision {
        let properties = &delivery.properties;
        let envelope = Envelope {
            content_type: properties.content_type().as_ref().map(|s| s.as_str()),
            content_encoding: properties.content_encoding().as_ref().map(|s| s.as_str()),
            message_id: properties.message_id().as_ref().map(|s| s.as_str()),
        };
        let event = match LoginEvent::parse(&delivery.data, &envelope, self.policy.max_event_bytes)
        {
            Ok(event) => event,
            Err(invalid) => return invalid_event(invalid),
        };
        tracing::Span::current().record("event_id", tracing::field::display(&event.event_id));

        if let (Some(age), Some(max)) = (event.age(Utc::now()), self.policy.max_event_age)
            && age.to_std().is_ok_and(|age| age > max)
        {
            let message = format!(
                "the login happened {} ago, more than MAX_EVENT_AGE ({})",
                humantime::format_duration(Duration::from_secs(age.num_seconds().max(0) as u64)),
                humantime::format_duration(max)
            );
            let failed = TicketFailed::new(&event.event_id, FailureReason::Expired, message, None)
                .about(
                    Some(event.request.xc_user_id()),
                    Some(event.request.user_device_id()),
                );
            return Decision::Fail {
                failed: Some(failed),
                dead_letter: None,
                outcome: Outcome::Expired,
            };
        }

        match self.stored(&event).await {
            Ok(Some(record)) => return Decision::Ready(record, Outcome::AlreadyIssued),
            Ok(None) => {}
            Err(decision) => return decision,
        }

        let issued = match self.request_ticket(&event.request).await {
            Ok(issued) => issued,
            Err(TicketError::Rejected { field, message }) => {
                let failed = TicketFailed::new(
                    &event.event_id,
                    FailureReason::RejectedByUpstream,
                    message.clone(),
                    field.as_deref(),
                )
                .about(
                    Some(event.request.xc_user_id()),
                    Some(event.request.user_device_id()),
                );
                return Decision::Fail {
                    failed: Some(failed),
                    dead_letter: Some(DeadLetter {
                        reason: FailureReason::RejectedByUpstream,
                        problem: None,
                        message,
                        field,
                    }),
                    outcome: Outcome::DeadLettered(FailureReason::RejectedByUpstream),
                };
            }
            Err(error) => {
                tracing::debug!(%error, "no ticket now; the event goes back to the queue");
                return Decision::RetryLater;
            }
        };

        let record = TicketRecord::new(event.event_id, &event.request, issued);
        match self.save(&record).await {
            Ok(Saved::Inserted(record)) => Decision::Ready(record, Outcome::Issued),
            Ok(Saved::Existing(record)) => Decision::Ready(record, Outcome::AlreadyIssued),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "cannot store the ticket; the event goes back to the queue");
                Decision::RetryLater
            }
            Err(error) => {
                tracing::error!(%error, "cannot store the ticket");
                Decision::Requeue
            }
        }
    }

    /// The stored ticket of a redelivered event, if any.
    async fn stored(&self, event: &LoginEvent) -> Result<Option<TicketRecord>, Decision> {
        retry(
            &self.policy.store_retry,
            || self.store.find(&event.event_id),
            |error: &StoreError| {
                if error.is_transient() {
                    Verdict::Retry(None)
                } else {
                    Verdict::Stop
                }
            },
        )
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot look the event up");
            if error.is_transient() {
                Decision::RetryLater
            } else {
                Decision::Requeue
            }
        })
    }

    async fn save(&self, record: &TicketRecord) -> Result<Saved, StoreError> {
        retry(
            &self.policy.store_retry,
            || self.store.save(record),
            |error: &StoreError| {
                if error.is_transient() {
                    tracing::debug!(%error, "storing failed; retrying");
                    Verdict::Retry(None)
                } else {
                    Verdict::Stop
                }
            },
        )
        .await
    }

    /// Requests a ticket, retrying transient failures, and gives up early when
    /// the breaker opens (TapTalk is down for everybody).
    async fn request_ticket(&self, request: &TicketRequest) -> Result<IssuedTicket, TicketError> {
        if self.breaker.is_open() {
            return Err(TicketError::Transient {
                detail: "TapTalk is marked down".into(),
                retry_after: None,
            });
        }
        let attempts = retry(
            &self.policy.upstream_retry,
            || async {
                let result = self.taptalk.request_ticket(request).await;
                match &result {
                    Ok(_) => self.breaker.record_success(),
                    Err(error) => {
                        self.breaker.record_failure(error);
                    }
                }
                result
            },
            |error: &TicketError| match error {
                TicketError::Transient {
                    detail,
                    retry_after,
                } if !self.breaker.is_open() => {
                    tracing::debug!(%detail, "TapTalk request failed; retrying");
                    Verdict::Retry(*retry_after)
                }
                _ => Verdict::Stop,
            },
        );
        tokio::select! {
            biased;
            result = attempts => result,
            _ = self.breaker.opened() => Err(TicketError::Transient { detail: "TapTalk is marked down".into(), retry_after: None }),
        }
    }

    /// Carries a decision out on the broker and settles the delivery.
    async fn settle(
        &self,
        delivery: &Delivery,
        bus: &Publisher,
        decision: Decision,
    ) -> Result<Outcome, SettleError> {
        let outcome = match decision {
            Decision::Ready(record, outcome) => {
                bus.ticket_ready(&TicketReady::for_record(&record)).await?;
                outcome
            }
            Decision::Fail {
                failed,
                dead_letter,
                outcome,
            } => {
                if let Some(failed) = failed {
                    bus.ticket_failed(&failed).await?;
                }
                if let Some(dl) = dead_letter {
                    let note = DeadLetterNote {
                        reason: dl.reason.as_str(),
                        problem: dl.problem,
                        message: &dl.message,
                        field: dl.field.as_deref(),
                    };
                    bus.dead_letter(delivery, note).await?;
                }
                outcome
            }
            Decision::RetryLater => {
                bus.retry_later(delivery).await?;
                Outcome::RetryLater
            }
            Decision::Requeue => {
                let options = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                return match delivery.acker.nack(options).await {
                    Ok(true) => Ok(Outcome::Requeued),
                    Ok(false) => Err(SettleError::ChannelGone),
                    Err(error) => Err(SettleError::Publish(error.into())),
                };
            }
        };
        match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(outcome),
            Ok(false) => Err(SettleError::ChannelGone),
            Err(error) => Err(SettleError::Publish(error.into())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SettleError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the consuming channel is closed")]
    ChannelGone,
}

/// The answer to an event that failed parsing: `ticket.failed` when it has an
/// id to correlate with, a dead letter always.
fn invalid_event(invalid: InvalidEvent) -> Decision {
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
        dead_letter: Some(DeadLetter {
            reason: FailureReason::Invalid,
            problem: Some(invalid.problem.code()),
            message: invalid.message,
            field: invalid.field.map(str::to_owned),
        }),
        outcome: Outcome::DeadLettered(FailureReason::Invalid),
    }
}
