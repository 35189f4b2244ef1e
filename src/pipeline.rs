//! The pipeline: what happens to one login event, from the bytes RabbitMQ
//! delivered to the acknowledgement.
//!
//! ```text
//! parse ─▶ headers fill the frame? ─▶ outcome recorded? ─▶ stale? ─▶ TapTalk (retry) ─▶ store ─▶ ticket.ready ─▶ ack
//!   │            │                           │                │           │               │
//!   │            └─ trimmed copy back first  └─ answer again  │           │               └─ a copy failed first: its failure
//!   │                                                         │           ├─ ParamValidationFailed ─▶ failure + dead letter
//!   │                                                         │           └─ unavailable ─▶ back to the queue (… retries_exhausted)
//!   │                                                         └─ failure "expired"
//!   └─ ticket.failed "invalid" + dead letter
//! ```
//!
//! Outcomes are recorded in Postgres before they are announced, first writer
//! wins ([`storage`](crate::storage)), so all copies of an event end the same
//! way: one stored ticket and `ticket.ready`, or one recorded failure and
//! `ticket.failed`. The announcement is stored with the outcome (the outbox);
//! once RabbitMQ confirms it, the pipeline reports it [`Announced`], and the
//! [relay](crate::relay) publishes any that a lost delivery left behind.
//!
//! [`Pipeline::handle`] decides and then settles the delivery; the worker only
//! feeds it deliveries and watches the outcome. Every call to TapTalk or
//! Postgres reports to the [`Breaker`], which pauses the worker when one of
//! them fails for everybody.

use crate::broker::{DeadLetterNote, PublishError, Publisher, copies};
use crate::domain::{IssuedTicket, TicketRecord};
use crate::events::{Envelope, FailureReason, InvalidEvent, LoginEvent, TicketFailed, TicketReady};
use crate::health::{Breaker, Dependency};
use crate::retry::{RetryPolicy, Verdict, retry};
use crate::storage::{Announced, Known, Saved, StoreError, StoredFailure, TicketStore};
use crate::taptalk::{TaptalkClient, TicketError};
use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::future::Future;
use std::time::Duration;

/// The rules the pipeline applies to each event.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    pub max_event_bytes: usize,
    /// Older events (by `occurredAt`) are answered `expired`; `None`: never.
    pub max_event_age: Option<Duration>,
    /// Events whose `occurredAt` is further ahead of our clock are invalid.
    pub max_clock_skew: Duration,
    /// Times an event may go back to the queue for its own failures before it
    /// is given up (`retries_exhausted`); `None`: never.
    pub max_requeues: Option<u32>,
    /// Retries of one TapTalk request.
    pub upstream_retry: RetryPolicy,
    /// Retries of one Postgres statement.
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

/// What to do with the delivery, decided before touching the broker.
#[derive(Debug)]
enum Decision {
    Ready(TicketRecord, Outcome),
    Fail {
        failed: Option<TicketFailed>,
        dead_letter: Option<DeadLetterNote>,
        outcome: Outcome,
        /// The failure is a recorded outcome, announced from the outbox too.
        recorded: bool,
    },
    /// Back to the queue; `count`: the event's own failure, not an outage.
    RetryLater {
        count: bool,
    },
    /// Its headers nearly fill the frame: a trimmed copy goes back to the
    /// queue in its place. Should RabbitMQ refuse the copy, the original is
    /// rejected (RabbitMQ dead-letters it), never requeued: its redelivery
    /// would not fit a frame.
    Defuse,
    Requeue,
}

/// The services one event needs, shared by all in-flight deliveries.
#[derive(Debug, Clone)]
pub struct Pipeline {
    store: TicketStore,
    taptalk: TaptalkClient,
    breaker: Breaker,
    policy: EventPolicy,
    /// Events whose ticket event is confirmed; their outbox rows can go.
    announced: Announced,
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
            announced: Announced::default(),
        }
    }

    /// The events announced so far whose outbox rows are still to be deleted
    /// (the [relay](crate::relay) deletes them).
    pub fn announced(&self) -> &Announced {
        &self.announced
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn taptalk(&self) -> &TaptalkClient {
        &self.taptalk
    }

    pub fn store(&self) -> &TicketStore {
        &self.store
    }

    /// Processes one delivery and settles it (ack, nack or republish).
    #[tracing::instrument(
        name = "pipeline.handle",
        skip_all,
        fields(delivery_tag = delivery.delivery_tag, redelivered = delivery.redelivered, event_id = tracing::field::Empty)
    )]
    pub async fn handle(&self, delivery: &Delivery, bus: &Publisher) -> Outcome {
        let decision = self.decide(delivery, bus).await;
        let outcome = self.settle(delivery, bus, decision).await;
        tracing::debug!(?outcome, "settled");
        outcome
    }

    async fn decide(&self, delivery: &Delivery, bus: &Publisher) -> Decision {
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
        if let Err(invalid) = event.check_clock_skew(Utc::now(), self.policy.max_clock_skew) {
            return invalid_event(invalid);
        }
        tracing::Span::current().record("event_id", tracing::field::display(&event.event_id));
        if copies::is_landmine(&delivery.properties, bus.frame_max()) {
            // Its headers fill RabbitMQ's frame: a redelivery (which adds
            // x-delivery-count) would not fit, and would break the connection
            // of whichever worker got it. Put a trimmed copy back first.
            tracing::warn!(
                header_frame_bytes = copies::header_frame_len(&delivery.properties),
                frame_max = bus.frame_max(),
                "a login event's headers nearly fill RabbitMQ's frame size; a copy with trimmed headers goes back to the queue in its place"
            );
            return Decision::Defuse;
        }
        if self.breaker.is_open() {
            // Intake is pausing: hand the event back without touching anything.
            return Decision::RetryLater { count: false };
        }

        // An outcome already recorded wins over everything else: every copy of
        // an event ends the same way.
        match self
            .store_call(&event, || self.store.known(&event.event_id))
            .await
        {
            Ok(Known::Issued(record)) => return Decision::Ready(record, Outcome::AlreadyIssued),
            Ok(Known::Failed(failure)) => return failed(&event, &failure),
            Ok(Known::Nothing) => {}
            Err(error) => return self.unavailable(delivery, bus, &event, &error).await,
        }
        if let Some(failure) = self.stale(&event) {
            return self.fail(&event, failure).await;
        }

        let issued = match self.request_ticket(&event).await {
            Ok(issued) => issued,
            Err(TicketError::Rejected { field, message }) => {
                let failure = StoredFailure {
                    reason: FailureReason::RejectedByUpstream,
                    message,
                    field,
                };
                return self.fail(&event, failure).await;
            }
            Err(error) => return self.unavailable(delivery, bus, &event, &error).await,
        };

        let record = TicketRecord::new(event.event_id.clone(), &event.request, issued);
        let ready = match serde_json::to_string(&TicketReady::for_record(&record)) {
            Ok(ready) => ready,
            Err(error) => return encoding_failed(&error),
        };
        match self
            .store_call(&event, || self.store.save(&record, &ready))
            .await
        {
            Ok(Saved::Inserted(record)) => Decision::Ready(record, Outcome::Issued),
            Ok(Saved::Existing(record)) => Decision::Ready(record, Outcome::AlreadyIssued),
            Ok(Saved::Failed(failure)) => failed(&event, &failure),
            Err(error) => self.unavailable(delivery, bus, &event, &error).await,
        }
    }

    /// The `expired` failure when the login is older than `MAX_EVENT_AGE`.
    fn stale(&self, event: &LoginEvent) -> Option<StoredFailure> {
        let max = self.policy.max_event_age?;
        let age = event
            .age(Utc::now())?
            .to_std()
            .ok()
            .filter(|age| *age > max)?;
        let message = format!(
            "the login happened {} ago, more than MAX_EVENT_AGE ({})",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max)
        );
        Some(StoredFailure {
            reason: FailureReason::Expired,
            message,
            field: None,
        })
    }

    /// Records a failure as the event's outcome and answers with whichever
    /// outcome stands: ours, or the one another copy recorded first.
    async fn fail(&self, event: &LoginEvent, failure: StoredFailure) -> Decision {
        let announcement = match serde_json::to_string(&ticket_failed(event, &failure)) {
            Ok(announcement) => announcement,
            Err(error) => return encoding_failed(&error),
        };
        match self
            .store_call(event, || {
                self.store
                    .record_failure(&event.event_id, &failure, &announcement)
            })
            .await
        {
            Ok(Known::Failed(stored)) => failed(event, &stored),
            Ok(Known::Issued(record)) => Decision::Ready(record, Outcome::AlreadyIssued),
            Ok(Known::Nothing) => Decision::RetryLater { count: false },
            Err(error) if error.retryable() => {
                tracing::warn!(%error, "cannot record the failure; the event goes back to the queue");
                Decision::RetryLater { count: false }
            }
            Err(error) => {
                tracing::error!(%error, "cannot record the failure");
                Decision::Requeue
            }
        }
    }

    /// No ticket now, because TapTalk or Postgres did not serve this event.
    /// Back to the queue: uncounted while a dependency is down for everybody,
    /// counted when this event failed while others did not, and given up
    /// after `MAX_REQUEUES` rounds. An error that no retry can fix (neither
    /// transient nor a configuration problem) is nacked instead, so the
    /// delivery limit ends a loop.
    async fn unavailable(
        &self,
        delivery: &Delivery,
        bus: &Publisher,
        event: &LoginEvent,
        error: &(dyn Unavailable + Sync),
    ) -> Decision {
        let detail = error.to_string();
        if !error.retryable() {
            tracing::error!(%detail, "unexpected failure; the event goes back to the queue");
            return Decision::Requeue;
        }
        if self.breaker.is_open() {
            return Decision::RetryLater { count: false };
        }
        let rounds = bus.retries(delivery);
        match self.policy.max_requeues {
            Some(max) if rounds >= u64::from(max) => {
                let message = format!(
                    "no ticket after {} rounds of retries; last error: {detail}",
                    rounds + 1
                );
                tracing::warn!(%message, "giving the event up");
                let failure = StoredFailure {
                    reason: FailureReason::RetriesExhausted,
                    message,
                    field: None,
                };
                self.fail(event, failure).await
            }
            _ => {
                tracing::debug!(%detail, rounds, "no ticket now; the event goes back to the queue");
                Decision::RetryLater { count: true }
            }
        }
    }

    /// Runs a storage call, retrying while Postgres is briefly unavailable,
    /// and reports every attempt to the breaker.
    async fn store_call<T, Fut>(
        &self,
        event: &LoginEvent,
        call: impl Fn() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry(
            &self.policy.store_retry,
            || async {
                let result = call().await;
                self.observe_store(&result, event.event_id.as_str());
                result
            },
            |error: &StoreError| {
                if error.is_transient() && !self.breaker.is_open() {
                    Verdict::Retry(None)
                } else {
                    Verdict::Stop
                }
            },
        )
        .await
    }

    fn observe_store<T>(&self, result: &Result<T, StoreError>, source: &str) {
        match result.as_ref().map_err(StoreError::failure) {
            Ok(_) | Err(None) => self.breaker.record_success(Dependency::Postgres),
            Err(Some(failure)) => {
                self.breaker
                    .record_failure(Dependency::Postgres, &failure, Some(source));
            }
        }
    }

    /// Requests a ticket, retrying transient failures, and gives up early when
    /// the breaker opens (a dependency is down for everybody).
    async fn request_ticket(&self, event: &LoginEvent) -> Result<IssuedTicket, TicketError> {
        let marked_down = || TicketError::Transient {
            detail: "intake is paused: a dependency is down".into(),
            retry_after: None,
        };
        if self.breaker.is_open() {
            return Err(marked_down());
        }
        let attempts = retry(
            &self.policy.upstream_retry,
            || async {
                let result = self.taptalk.request_ticket(&event.request).await;
                match result.as_ref().map_err(TicketError::failure) {
                    Ok(_) | Err(None) => self.breaker.record_success(Dependency::Taptalk),
                    Err(Some(failure)) => {
                        self.breaker.record_failure(
                            Dependency::Taptalk,
                            &failure,
                            Some(event.event_id.as_str()),
                        );
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
            _ = self.breaker.opened() => Err(marked_down()),
        }
    }

    /// Carries a decision out on the broker and settles the delivery.
    async fn settle(&self, delivery: &Delivery, bus: &Publisher, decision: Decision) -> Outcome {
        let published = match decision {
            Decision::Ready(record, outcome) => bus
                .ticket_ready(&TicketReady::for_record(&record))
                .await
                .map(|()| {
                    self.announced.push(record.event_id.as_str());
                    outcome
                }),
            Decision::Fail {
                failed,
                dead_letter,
                outcome,
                recorded,
            } => {
                async {
                    if let Some(failed) = failed {
                        bus.ticket_failed(&failed).await?;
                        if recorded {
                            self.announced.push(&failed.event_id);
                        }
                    }
                    if let Some(note) = dead_letter {
                        match bus.dead_letter(delivery, &note).await {
                            Err(PublishError::DoesNotFit(error)) => {
                                // Not even a trimmed copy fits: drop it, loudly.
                                tracing::error!(%error, reason = note.reason, "the message cannot be dead-lettered and is dropped");
                            }
                            other => other?,
                        }
                    }
                    Ok(outcome)
                }
                .await
            }
            Decision::RetryLater { count } => bus
                .retry_later(delivery, count)
                .await
                .map(|()| Outcome::RetryLater),
            Decision::Defuse => match bus.retry_later(delivery, false).await {
                Err(error) if !error.is_broker_failure() => {
                    tracing::error!(%error, "RabbitMQ refused the trimmed copy; the message is rejected, and dead-lettered by RabbitMQ");
                    return reject(delivery).await;
                }
                other => other.map(|()| Outcome::RetryLater),
            },
            Decision::Requeue => return nack(delivery).await,
        };
        match published {
            Ok(outcome) => match delivery.acker.ack(BasicAckOptions::default()).await {
                Ok(true) => outcome,
                _ => abandoned("the acknowledgement failed"),
            },
            Err(error) if error.is_broker_failure() => abandoned(&error.to_string()),
            Err(error) => {
                // The broker is fine but refused this message: try it again later.
                tracing::warn!(%error, "publishing for this delivery failed; it goes back to the queue");
                nack(delivery).await
            }
        }
    }
}

/// An error that left an event without its ticket for now.
trait Unavailable: std::fmt::Display {
    /// Whether trying again later can help.
    fn retryable(&self) -> bool;
}

impl Unavailable for TicketError {
    fn retryable(&self) -> bool {
        // Rejections are answered before; everything else may pass.
        true
    }
}

impl Unavailable for StoreError {
    fn retryable(&self) -> bool {
        self.is_transient() || self.failure().is_some()
    }
}

/// The answer for an event whose outcome is a failure.
fn failed(event: &LoginEvent, failure: &StoredFailure) -> Decision {
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

/// The `ticket.failed` event that announces a recorded failure.
fn ticket_failed(event: &LoginEvent, failure: &StoredFailure) -> TicketFailed {
    TicketFailed::new(
        &event.event_id,
        failure.reason,
        failure.message.clone(),
        failure.field.as_deref(),
    )
    .about(
        Some(event.request.xc_user_id()),
        Some(event.request.user_device_id()),
    )
}

/// Returns a delivery to the queue, spending one of its deliveries.
async fn nack(delivery: &Delivery) -> Outcome {
    let options = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    match delivery.acker.nack(options).await {
        Ok(true) => Outcome::Requeued,
        _ => abandoned("the negative acknowledgement failed"),
    }
}

/// Rejects a delivery without requeueing it: the work queue's dead-letter
/// exchange receives it, with RabbitMQ's `x-death` header.
async fn reject(delivery: &Delivery) -> Outcome {
    let options = BasicNackOptions {
        requeue: false,
        ..Default::default()
    };
    match delivery.acker.nack(options).await {
        Ok(true) => Outcome::Rejected,
        _ => abandoned("the rejection failed"),
    }
}

fn abandoned(why: &str) -> Outcome {
    tracing::warn!(
        why,
        "could not settle the delivery; RabbitMQ will redeliver it"
    );
    Outcome::Abandoned
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
fn encoding_failed(error: &serde_json::Error) -> Decision {
    tracing::error!(%error, "cannot encode a ticket event");
    Decision::Requeue
}
