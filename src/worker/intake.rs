//! Consuming within one session: taking deliveries while a permit is free,
//! handing each to the pipeline and the settler on a task of its own,
//! following the TapTalk concurrency limit with the prefetch, pausing while a
//! dependency is down (everything prefetched and in flight goes back to the
//! queue), and finishing in-flight work at shutdown.

use super::consumers::Consumers;
use super::prefetch::{Prefetch, SETTLE};
use super::session::Session;
use super::{PAUSE_DRAIN_TIMEOUT, PauseEnd, PhaseEnd, SessionEnd, SessionLost, Worker};
use crate::broker::inbound;
use crate::delivery::{Outcome, Stage, StageMark};
use crate::health::Health;
use crate::observe::metrics::Intake;
use crate::observe::traces;
use crate::shutdown::Shutdown;
use crate::time::Later;
use futures_util::FutureExt;
use lapin::message::Delivery;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

/// Events one session may have in flight outside the quarantine: the
/// prefetch bounds them (at most twice over while a new consumer replaces an
/// old one).
const MAX_IN_FLIGHT: usize = 2 * u16::MAX as usize;

impl Worker {
    /// Consumes in phases (paused while a dependency is down) until shutdown or loss.
    pub(super) async fn run_session(&self, session: &Session, shutdown: &Shutdown) -> SessionEnd {
        let in_flight = if session.quarantined.load(Ordering::Relaxed) {
            1
        } else {
            MAX_IN_FLIGHT
        };
        let permits = Arc::new(Semaphore::new(in_flight));
        let mut tasks = JoinSet::new();
        let mut consumers = Consumers::new();
        // Whether the pause now under way was announced (by `pause`).
        let mut announced = false;
        loop {
            let announced_already = std::mem::take(&mut announced);
            if self.pipeline.breaker().is_open() {
                // A session that opens with the breaker open (the key was
                // rejected before a reconnect) is paused from the start.
                if !announced_already {
                    self.announce_pause();
                }
                let probing = self
                    .heartbeat
                    .while_waiting(self.probes.wait_for_recovery(shutdown));
                let recovered = tokio::select! {
                    recovered = probing => recovered,
                    _ = session.broken.cancelled() => {
                        return self.lose(&mut tasks, SessionLost::FailedWhilePaused).await;
                    }
                };
                if !recovered {
                    break;
                }
            }
            let prefetch = self.prefetch_now(session);
            let queue = self.settings.broker.topology.work_queue.as_str();
            if let Err(error) = consumers.start(&session.consume, queue, prefetch).await {
                return self.lose(&mut tasks, error.into()).await;
            }
            session.settler.acks().window(prefetch);
            self.metrics.prefetch(prefetch);
            self.metrics.intake(Intake::Running);
            match self
                .feed(session, &mut consumers, &permits, &mut tasks, shutdown)
                .await
            {
                PhaseEnd::Shutdown => {
                    // Draining now: not ready for work.
                    self.metrics.intake(Intake::Disconnected);
                    let _ = self
                        .heartbeat
                        .while_waiting(consumers.stop(&session.consume))
                        .await;
                    self.metrics.prefetch(0);
                    break;
                }
                PhaseEnd::Lost(reason) => return self.lose(&mut tasks, reason).await,
                // The next phase consumes at full prefetch, in place of the
                // quarantined consumer.
                PhaseEnd::QuarantineOver => self.leave_quarantine(session, &permits, in_flight),
                PhaseEnd::Paused => {
                    match self
                        .pause(session, &mut consumers, &permits, &mut tasks, shutdown)
                        .await
                    {
                        Ok(PauseEnd::Drained) => announced = true,
                        Ok(PauseEnd::Shutdown) => break,
                        Err(reason) => return self.lose(&mut tasks, reason).await,
                    }
                }
            }
        }
        self.heartbeat.while_waiting(self.finish(&mut tasks)).await;
        self.heartbeat
            .while_waiting(session.settler.acks().flush())
            .await;
        SessionEnd::Shutdown
    }

    /// The prefetch to consume with now: 1 in the quarantine, else the
    /// setting's value for the current TapTalk concurrency limit.
    fn prefetch_now(&self, session: &Session) -> u16 {
        if session.quarantined.load(Ordering::Relaxed) {
            1
        } else {
            self.settings.prefetch.for_limit(self.limit.limit())
        }
    }

    /// Takes deliveries while a permit is free, until something ends the
    /// phase; starts a consumer with a new prefetch when the TapTalk
    /// concurrency limit moved enough.
    async fn feed(
        &self,
        session: &Session,
        consumers: &mut Consumers,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) -> PhaseEnd {
        let breaker = self.pipeline.breaker();
        let mut limit = self.limit.watch();
        let follows = self.settings.prefetch == Prefetch::Auto;
        // A change of prefetch waiting for the last one to settle.
        let mut resize_at: Option<Instant> = None;
        // The loop beats on every turn, and at least once a second.
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            self.heartbeat.beat();
            tokio::select! {
                biased;
                _ = shutdown.triggered() => return PhaseEnd::Shutdown,
                _ = session.broken.cancelled() => return PhaseEnd::Lost(SessionLost::ChannelFailed),
                _ = breaker.opened() => return PhaseEnd::Paused,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => report(joined),
                changed = limit.changed(), if follows && resize_at.is_none() => {
                    if changed.is_err() {
                        // The limiter is gone (never, while the worker runs).
                        resize_at = Some(Instant::now().later_by(std::time::Duration::from_secs(86_400)));
                        continue;
                    }
                    let wanted = self.prefetch_now(session);
                    if Prefetch::worth_changing(consumers.prefetch(), wanted) {
                        resize_at = Some(consumers.started().later_by(SETTLE));
                    }
                }
                _ = sleep_until(resize_at) => {
                    resize_at = None;
                    let wanted = self.prefetch_now(session);
                    if Prefetch::worth_changing(consumers.prefetch(), wanted) {
                        let queue = self.settings.broker.topology.work_queue.as_str();
                        if let Err(error) = consumers.start(&session.consume, queue, wanted).await {
                            return PhaseEnd::Lost(error.into());
                        }
                        session.settler.acks().window(wanted);
                        self.metrics.prefetch(wanted);
                        tracing::debug!(prefetch = wanted, limit = self.limit.limit(), "the prefetch follows the TapTalk concurrency limit");
                    }
                }
                _ = ticks.tick() => {}
                (permit, next) = next_delivery(permits, consumers) => match next {
                    Some(Ok(delivery)) => {
                        let fresh = !delivery.redelivered;
                        self.spawn(session, tasks, delivery, permit);
                        if fresh && session.quarantined.load(Ordering::Relaxed) {
                            return PhaseEnd::QuarantineOver;
                        }
                    }
                    Some(Err(error)) => return PhaseEnd::Lost(SessionLost::Delivery(error)),
                    None => return PhaseEnd::Lost(SessionLost::ConsumerCancelled),
                },
            }
        }
    }

    fn spawn(
        &self,
        session: &Session,
        tasks: &mut JoinSet<()>,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
    ) {
        // Registered before any later delivery can be settled: the settler
        // acknowledges runs of deliveries at once.
        session.settler.acks().received(delivery.delivery_tag);
        let pipeline = Arc::clone(&self.pipeline);
        let metrics = self.metrics.clone();
        let event_log = Arc::clone(&self.event_log);
        let received = std::time::Instant::now();
        let in_flight = metrics.in_flight();
        let settler = session.settler.clone();
        let broken = session.broken.clone();
        let deadline = self.settings.delivery_deadline;
        tasks.spawn(async move {
            let _permit = permit;
            let _in_flight = in_flight;
            // The event's trace (a disabled span, no work, unless spans are
            // exported), continuing the login event's `traceparent`.
            let span = traces::event_span(delivery.properties.headers().as_ref());
            let stage = StageMark::default();
            let handle = async {
                let message = inbound::message(&delivery, settler.publisher(), &stage);
                let decision = pipeline.decide(&message).await;
                let event_id = decision
                    .event_id()
                    .or(message.envelope.message_id)
                    .map(str::to_owned);
                stage.set(Stage::Settling);
                let outcome = settler.settle(&delivery, decision).await;
                tracing::debug!(?outcome, "settled");
                event_log.settled(event_id.as_deref(), outcome, received.elapsed());
                outcome
            };
            // Every wait inside has a deadline of its own; this one bounds
            // them all together, for whatever was missed. Publishing that
            // RabbitMQ holds back during an alarm waits for the alarm: given
            // back, the delivery would only come round again, each time
            // spending one of its deliveries and leaving a publish queued.
            let bounded = async {
                tokio::pin!(handle);
                loop {
                    match tokio::time::timeout(deadline, &mut handle).await {
                        Ok(outcome) => return Ok(outcome),
                        Err(_)
                            if stage.get() == Stage::Settling
                                && settler.publisher().is_blocked() =>
                        {
                            continue;
                        }
                        Err(overdue) => return Err(overdue),
                    }
                }
            };
            let handled = AssertUnwindSafe(bounded.instrument(span.clone()))
                .catch_unwind()
                .await;
            match handled {
                Ok(Err(_overdue)) => {
                    let stuck = stage.get();
                    metrics.overdue(stuck);
                    tracing::warn!(
                        stage = stuck.as_str(),
                        deadline = %humantime::format_duration(deadline),
                        "a delivery was in flight longer than DELIVERY_DEADLINE, stuck {}; it goes back to the queue",
                        stuck.describe()
                    );
                    settler.requeue(&delivery);
                }
                Ok(Ok(outcome)) => {
                    span.record("outcome", tracing::field::debug(outcome));
                    metrics.record(outcome);
                    if outcome == Outcome::Abandoned {
                        broken.cancel();
                    }
                }
                Err(_) => {
                    // A bug, not the event's fault as far as we know: give it back,
                    // spending one delivery, so the delivery limit ends a loop.
                    metrics.panicked();
                    tracing::error!("handling a delivery panicked; it goes back to the queue");
                    settler.requeue(&delivery);
                }
            }
        });
    }

    /// A dependency is down: stop the consumer, send what was prefetched and
    /// what is in flight back to the queue (the pipeline does that at once
    /// while the breaker is open).
    async fn pause(
        &self,
        session: &Session,
        consumers: &mut Consumers,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) -> Result<PauseEnd, SessionLost> {
        self.announce_pause();
        self.heartbeat
            .while_waiting(consumers.stop(&session.consume))
            .await?;
        self.metrics.prefetch(0);
        let drain = async {
            loop {
                let (permit, next) = next_delivery(permits, consumers).await;
                match next {
                    Some(Ok(delivery)) => self.spawn(session, tasks, delivery, permit),
                    Some(Err(error)) => return Err(SessionLost::Delivery(error)),
                    None => break,
                }
            }
            while let Some(joined) = tasks.join_next().await {
                report(joined);
            }
            session.settler.acks().flush().await;
            Ok(())
        };
        let drain = self
            .heartbeat
            .while_waiting(tokio::time::timeout(PAUSE_DRAIN_TIMEOUT, drain));
        tokio::select! {
            drained = drain => match drained {
                Ok(result) => result?,
                Err(_) => return Err(SessionLost::DrainTimedOut),
            },
            _ = shutdown.triggered() => return Ok(PauseEnd::Shutdown),
        }
        if session.broken.is_cancelled() {
            return Err(SessionLost::FailedWhileDraining);
        }
        Ok(PauseEnd::Drained)
    }

    /// Intake pauses because the breaker is open: say so in the log and on
    /// `/metrics` (and so `/readyz`).
    fn announce_pause(&self) {
        self.metrics.paused();
        if let Health::Down {
            dependency,
            misconfigured,
            reason,
        } = self.pipeline.breaker().health()
        {
            self.metrics.intake(Intake::Paused {
                dependency: dependency.into(),
                misconfigured,
            });
            tracing::error!(
                %dependency,
                misconfigured,
                %reason,
                "{dependency} is failing for every event: intake paused, in-flight messages go back to the queue; probing until it answers"
            );
        }
    }

    /// The session is unusable: drop in-flight work (RabbitMQ redelivers it).
    async fn lose(&self, tasks: &mut JoinSet<()>, reason: SessionLost) -> SessionEnd {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        SessionEnd::Lost(reason)
    }
    /// Shutdown: give in-flight messages the grace period; what is unfinished
    /// then goes back to the queue when the connection closes.
    async fn finish(&self, tasks: &mut JoinSet<()>) {
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = %humantime::format_duration(self.settings.shutdown_grace), "letting in-flight messages finish");
        }
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while let Some(joined) = tasks.join_next().await {
                report(joined);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unfinished = tasks.len(),
                "shutdown grace is over; unfinished messages go back to the queue"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// Waits for a free permit, then for the next delivery.
async fn next_delivery(
    permits: &Arc<Semaphore>,
    consumers: &mut Consumers,
) -> (OwnedSemaphorePermit, Option<Result<Delivery, lapin::Error>>) {
    let permit = Arc::clone(permits).acquire_owned().await;
    // The worker never closes its semaphore, so a permit always comes.
    let permit = permit.expect("the worker's semaphore is never closed");
    (permit, consumers.next().await)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn report(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!("a delivery task panicked outside the pipeline");
    }
}
