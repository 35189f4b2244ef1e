//! The pipeline: what happens to one login event, from the bytes RabbitMQ
//! delivered to the acknowledgement.
//!
//! ```text
//! parse ─▶ headers readable? ─▶ headers fill the frame? ─▶ outcome recorded? ─▶ stale? ─▶ TapTalk (retry) ─▶ store ─▶ ticket.ready ─▶ ack
//!   │            │                     │                          │                │           │               │
//!   │            │                     └─ trimmed copy back first └─ answer again  │           │               └─ a copy failed first: its failure
//!   │            │                                                                 │           ├─ ParamValidationFailed ─▶ failure + dead letter
//!   │            │                                                                 │           └─ unavailable ─▶ back to the queue (… retries_exhausted)
//!   │            │                                                                 └─ failure "expired"
//!   │            └─ ticket.failed "invalid" (unreadable_headers) + dead letter without them
//!   └─ ticket.failed "invalid" + dead letter
//! ```
//!
//! Outcomes are recorded in Postgres before they are announced, first writer
//! wins ([`storage`](crate::storage)), so all copies of an event end the same
//! way: one stored ticket and `ticket.ready`, or one recorded failure and
//! `ticket.failed`. The announcement is stored with the outcome (the outbox);
//! once RabbitMQ confirms it, the settler reports it announced, and the
//! [relay](crate::relay) publishes any that a lost delivery left behind.
//!
//! [`Pipeline::decide`] turns a [`Message`] (body, envelope, retry count) into
//! a [`Decision`], with no broker types in it: the broker code carries the
//! decision out and settles the delivery
//! ([`Settler`](crate::broker::settle::Settler)). Every call to TapTalk or
//! Postgres reports to the [`Breaker`], which pauses the worker when one of
//! them fails for everybody.

mod decision;
mod policy;

pub(crate) use policy::EventPolicy;

use crate::delivery::{Decision, Message, Outcome, Stage, StageMark};
use crate::domain::{IssuedTicket, TicketRecord};
use crate::events::{FailureReason, LoginEvent, Problem, TicketReady};
use crate::health::{Breaker, Dependency};
use crate::observe::metrics::{Metrics, RequestResult, Retry};
use crate::retry::{Verdict, retry};
use crate::storage::{
    BatchedStore, FailedFor, Known, Saved, StoreError, StoredFailure, TicketStore, body_digest,
};
use crate::taptalk::quota::SharedQuota;
use crate::taptalk::{AdaptiveLimit, RateLimit, Signal, TaptalkClient, TicketError, UpstreamPause};
use chrono::Utc;
use decision::{encoding_failed, failed, invalid_event, ticket_failed};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How the pipeline calls TapTalk.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub client: TaptalkClient,
    /// TapTalk requests in flight: one permit per HTTP attempt.
    pub limit: AdaptiveLimit,
    /// A hard cap on TapTalk requests per second, when set.
    pub rate: Option<RateLimit>,
    /// The quiet TapTalk asked for with a 429's `Retry-After`.
    pub pause: UpstreamPause,
    /// The deployment's quota (`TAPTALK_QUOTA`), when set.
    pub quota: Option<SharedQuota>,
}

/// The services one event needs, shared by all in-flight messages.
#[derive(Debug, Clone)]
pub struct Pipeline {
    store: BatchedStore,
    upstream: Upstream,
    breaker: Breaker,
    policy: EventPolicy,
    metrics: Metrics,
}

impl Pipeline {
    pub fn new(
        store: TicketStore,
        upstream: Upstream,
        breaker: Breaker,
        policy: EventPolicy,
        metrics: Metrics,
    ) -> Pipeline {
        Pipeline {
            store: BatchedStore::new(store),
            upstream,
            breaker,
            policy,
            metrics,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Decides what becomes of one message: parse ─▶ headers readable? ─▶
    /// headers fill the frame?
    /// ─▶ outcome recorded? ─▶ stale? ─▶ TapTalk ─▶ store.
    #[tracing::instrument(name = "pipeline.decide", level = "debug", skip_all, fields(event_id = tracing::field::Empty))]
    pub async fn decide(&self, message: &Message<'_>) -> Decision {
        let event =
            match LoginEvent::parse(message.body, &message.envelope, self.policy.max_event_bytes) {
                Ok(event) => event,
                Err(invalid) => return invalid_event(invalid),
            };
        if let Err(invalid) = event.check_clock_skew(Utc::now(), self.policy.max_clock_skew) {
            return invalid_event(invalid);
        }
        tracing::Span::current().record("event_id", tracing::field::display(&event.event_id));
        if let Some(unreadable) = &message.unreadable_headers {
            // The parser cut them short: refuse the event rather than act on
            // half of what its publisher sent. Its dead letter leaves them out.
            return invalid_event(
                event.refused(Problem::UnreadableHeaders, unreadable.to_string()),
            );
        }
        if let Some(frame) = &message.oversized_headers {
            // Its headers fill RabbitMQ's frame: a redelivery (which adds
            // x-delivery-count) would not fit, and would break the connection
            // of whichever worker got it. Put a trimmed copy back first.
            tracing::warn!(
                header_frame_bytes = frame.bytes,
                frame_max = frame.frame_max,
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
        message.stage.set(Stage::LookingUp);
        match self
            .store_call(&event, || self.store.known(&event.event_id))
            .await
        {
            Ok(Known::Issued(record)) => return Decision::announce(record, event.occurred_at),
            Ok(Known::Failed(failure)) => return failed(&event, &failure),
            Ok(Known::Nothing) => {}
            Err(error) => return Box::pin(self.unavailable(message, &event, &error)).await,
        }
        if let Some(failure) = self.stale(&event) {
            return Box::pin(self.fail(message, &event, failure)).await;
        }

        let issued = match self.request_ticket(&event, message.stage).await {
            Ok(issued) => issued,
            Err(TicketError::Rejected {
                code,
                field,
                message: why,
            }) => {
                // The event's data, not the worker: said once, as TapTalk
                // said it (its texts escaped by Debug).
                tracing::info!(
                    event_id = %event.event_id,
                    code = ?code,
                    field = ?field,
                    message = ?why,
                    "TapTalk rejected the event's data; it is answered ticket.failed (rejected_by_upstream)"
                );
                let failure = StoredFailure {
                    reason: FailureReason::RejectedByUpstream,
                    message: why,
                    field,
                    about: Some(failed_for(&event)),
                };
                return Box::pin(self.fail(message, &event, failure)).await;
            }
            Err(error) => return Box::pin(self.unavailable(message, &event, &error)).await,
        };

        message.stage.set(Stage::Storing);
        let record = TicketRecord::new(event.event_id.clone(), &event.request, issued);
        let ready = TicketReady::for_record(&record).with_login_at(event.occurred_at);
        let ready = match serde_json::to_string(&ready) {
            Ok(ready) => ready,
            Err(error) => return encoding_failed(&error),
        };
        match self
            .store_call(&event, || self.store.save(&record, &ready))
            .await
        {
            Ok(Saved::Inserted(record)) => Decision::Ready {
                record,
                outcome: Outcome::Issued,
                encoded: Some(ready),
                occurred_at: event.occurred_at,
            },
            Ok(Saved::Existing(record)) => Decision::announce(record, event.occurred_at),
            Ok(Saved::Failed(failure)) => failed(&event, &failure),
            Err(error) => Box::pin(self.unavailable(message, &event, &error)).await,
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
            about: Some(failed_for(event)),
        })
    }

    /// Records a failure as the event's outcome and answers with whichever
    /// outcome stands: ours, or the one another copy recorded first. `body`
    /// is this copy's: its digest goes with the failure (see
    /// [`body_digest`]).
    async fn fail(
        &self,
        message: &Message<'_>,
        event: &LoginEvent,
        failure: StoredFailure,
    ) -> Decision {
        message.stage.set(Stage::Storing);
        let digest = body_digest(message.body);
        let announcement = match serde_json::to_string(&ticket_failed(event, &failure)) {
            Ok(announcement) => announcement,
            Err(error) => return encoding_failed(&error),
        };
        match self
            .store_call(event, || {
                self.store
                    .store()
                    .record_failure(&event.event_id, &failure, &announcement, &digest)
            })
            .await
        {
            Ok(Known::Failed(stored)) => failed(event, &stored),
            Ok(Known::Issued(record)) => Decision::announce(record, event.occurred_at),
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
        message: &Message<'_>,
        event: &LoginEvent,
        error: &(dyn Unavailable + Sync),
    ) -> Decision {
        let detail = error.to_string();
        if !error.retryable() {
            tracing::error!(%detail, "unexpected failure; the event goes back to the queue");
            return Decision::Requeue;
        }
        if self.breaker.is_open() || error.rate_limited() {
            // Down for everybody, or TapTalk asked everybody for quiet: not
            // this event's own failure.
            return Decision::RetryLater { count: false };
        }
        let rounds = message.retries;
        match self.policy.max_requeues {
            Some(max) if rounds >= u64::from(max) => {
                let why = format!(
                    "no ticket after {} rounds of retries; last error: {detail}",
                    rounds + 1
                );
                tracing::warn!(message = %why, "giving the event up");
                let failure = StoredFailure {
                    reason: FailureReason::RetriesExhausted,
                    message: why,
                    field: None,
                    about: Some(failed_for(event)),
                };
                self.fail(message, event, failure).await
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
        let attempts = AtomicU32::new(0);
        retry(
            &self.policy.store_retry,
            || async {
                if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
                    self.metrics.retry(Retry::Postgres);
                }
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
    async fn request_ticket(
        &self,
        event: &LoginEvent,
        stage: &StageMark,
    ) -> Result<IssuedTicket, TicketError> {
        let marked_down = || TicketError::Transient {
            detail: "intake is paused: a dependency is down".into(),
            retry_after: None,
        };
        if self.breaker.is_open() {
            return Err(marked_down());
        }
        let tried = AtomicU32::new(0);
        let attempts = retry(
            &self.policy.upstream_retry,
            || async {
                if tried.fetch_add(1, Ordering::Relaxed) > 0 {
                    self.metrics.retry(Retry::Taptalk);
                }
                // One permit per attempt, none held across a retry pause; and
                // no request while TapTalk asked for quiet.
                let upstream = &self.upstream;
                stage.set(Stage::AwaitingTaptalk);
                upstream.pause.wait().await;
                if let Some(quota) = &upstream.quota {
                    quota.wait().await;
                }
                if let Some(rate) = &upstream.rate {
                    rate.wait().await;
                }
                let permit = upstream.limit.acquire().await;
                stage.set(Stage::RequestingTicket);
                let started = tokio::time::Instant::now();
                let result = upstream.client.request_ticket(&event.request).await;
                self.metrics
                    .taptalk_request(RequestResult::of(&result), started.elapsed());
                permit.done(Signal::of(&result));
                if let Err(TicketError::Transient {
                    retry_after: Some(after),
                    ..
                }) = &result
                {
                    let (pause, fresh) = upstream.pause.asked(*after);
                    if fresh {
                        tracing::warn!(
                            asked = %humantime::format_duration(Duration::from_secs(after.as_secs().min(u64::from(u32::MAX)))),
                            pause = %humantime::format_duration(Duration::from_secs(pause.as_secs())),
                            "TapTalk answered 429 with Retry-After: no TapTalk request from this worker until the pause is over (at most TAPTALK_MAX_RETRY_AFTER)"
                        );
                    }
                }
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
                // A Retry-After is waited out by the next attempt, at the
                // pause every request waits at: not by this event's own
                // schedule, whose time budget a long pause would end.
                TicketError::Transient { detail, .. } if !self.breaker.is_open() => {
                    tracing::debug!(%detail, "TapTalk request failed; retrying");
                    Verdict::Retry(None)
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
}

/// An error that left an event without its ticket for now.
trait Unavailable: std::fmt::Display {
    /// Whether trying again later can help.
    fn retryable(&self) -> bool;
    /// Whether the upstream asked for quiet (a 429 with `Retry-After`).
    fn rate_limited(&self) -> bool {
        false
    }
}

impl Unavailable for TicketError {
    fn retryable(&self) -> bool {
        // Rejections are answered before; everything else may pass.
        true
    }

    fn rate_limited(&self) -> bool {
        // A pause of nothing (`Retry-After: 0`, a date gone by) holds nobody:
        // counted as the event's own failure, or it could come back for ever.
        matches!(
            self,
            TicketError::Transient {
                retry_after: Some(after),
                ..
            } if !after.is_zero()
        )
    }
}

impl Unavailable for StoreError {
    fn retryable(&self) -> bool {
        self.is_transient() || self.failure().is_some()
    }
}

/// Whom a failure recorded for `event` answers.
fn failed_for(event: &LoginEvent) -> FailedFor {
    FailedFor {
        xc_user_id: event.request.xc_user_id().to_owned(),
        user_device_id: event.request.user_device_id().to_owned(),
    }
}
