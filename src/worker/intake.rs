//! Consuming within one session: taking deliveries while a permit is free,
//! handing each to the pipeline and the settler on a task of its own, pausing
//! while a dependency is down (everything prefetched and in flight goes back
//! to the queue), and finishing in-flight work at shutdown.

use super::session::Session;
use super::{BROKER_STEP_TIMEOUT, PAUSE_DRAIN_TIMEOUT, PauseEnd, PhaseEnd, SessionEnd, Worker};
use crate::broker::inbound;
use crate::health::Health;
use crate::pipeline::Outcome;
use crate::shutdown::Shutdown;
use futures_util::{FutureExt, StreamExt};
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

impl Worker {
    /// Consumes in phases (paused while a dependency is down) until shutdown or loss.
    pub(super) async fn run_session(&self, session: &Session, shutdown: &Shutdown) -> SessionEnd {
        let concurrency = if session.quarantined.load(Ordering::Relaxed) {
            1
        } else {
            self.settings.concurrency
        };
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        loop {
            if self.pipeline.breaker().is_open() && !self.probes.wait_for_recovery(shutdown).await {
                break;
            }
            let mut consumer = match self.consume(session).await {
                Ok(consumer) => consumer,
                Err(error) => return self.lose(&mut tasks, error.to_string()).await,
            };
            match self
                .feed(session, &mut consumer, &permits, &mut tasks, shutdown)
                .await
            {
                PhaseEnd::Shutdown => {
                    let cancel = session
                        .consume
                        .basic_cancel(consumer.tag(), BasicCancelOptions::default());
                    let _ = tokio::time::timeout(BROKER_STEP_TIMEOUT, cancel).await;
                    break;
                }
                PhaseEnd::Lost(reason) => return self.lose(&mut tasks, reason).await,
                PhaseEnd::QuarantineOver => {
                    if let Err(reason) = self.leave_quarantine(session, &consumer, &permits).await {
                        return self.lose(&mut tasks, reason).await;
                    }
                }
                PhaseEnd::Paused => {
                    match self
                        .pause(session, consumer, &permits, &mut tasks, shutdown)
                        .await
                    {
                        Ok(PauseEnd::Drained) => {}
                        Ok(PauseEnd::Shutdown) => break,
                        Err(reason) => return self.lose(&mut tasks, reason).await,
                    }
                }
            }
        }
        self.finish(&mut tasks).await;
        session.settler.acks().flush().await;
        SessionEnd::Shutdown
    }
    async fn consume(&self, session: &Session) -> Result<Consumer, lapin::Error> {
        session
            .consume
            .basic_consume(
                self.settings.broker.topology.work_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }
    /// Takes deliveries while a permit is free, until something ends the phase.
    async fn feed(
        &self,
        session: &Session,
        consumer: &mut Consumer,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) -> PhaseEnd {
        let breaker = self.pipeline.breaker();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.triggered() => return PhaseEnd::Shutdown,
                _ = session.broken.cancelled() => return PhaseEnd::Lost("a channel failed while settling a delivery".into()),
                _ = breaker.opened() => return PhaseEnd::Paused,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => report(joined),
                (permit, next) = next_delivery(permits, consumer) => match next {
                    Some(Ok(delivery)) => {
                        let fresh = !delivery.redelivered;
                        self.spawn(session, tasks, delivery, permit);
                        if fresh && session.quarantined.load(Ordering::Relaxed) {
                            return PhaseEnd::QuarantineOver;
                        }
                    }
                    Some(Err(error)) => return PhaseEnd::Lost(error.to_string()),
                    None => return PhaseEnd::Lost("RabbitMQ cancelled the consumer (was the queue deleted?)".into()),
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
        let stats = Arc::clone(&self.stats);
        let settler = session.settler.clone();
        let broken = session.broken.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let handle = async {
                let message = inbound::message(&delivery, settler.publisher());
                let decision = pipeline.decide(&message).await;
                let outcome = settler.settle(&delivery, decision).await;
                tracing::debug!(?outcome, "settled");
                outcome
            };
            let handled = AssertUnwindSafe(handle).catch_unwind().await;
            match handled {
                Ok(outcome) => {
                    stats.record(outcome);
                    if outcome == Outcome::Abandoned {
                        broken.cancel();
                    }
                }
                Err(_) => {
                    // A bug, not the event's fault as far as we know: give it back,
                    // spending one delivery, so the delivery limit ends a loop.
                    stats.panicked();
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
        mut consumer: Consumer,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) -> Result<PauseEnd, String> {
        self.stats.paused();
        if let Health::Down {
            dependency,
            misconfigured,
            reason,
        } = self.pipeline.breaker().health()
        {
            tracing::error!(
                %dependency,
                misconfigured,
                %reason,
                "{dependency} is failing for every event: intake paused, in-flight messages go back to the queue; probing until it answers"
            );
        }
        let cancel = session
            .consume
            .basic_cancel(consumer.tag(), BasicCancelOptions::default());
        match tokio::time::timeout(BROKER_STEP_TIMEOUT, cancel).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("RabbitMQ did not confirm the consumer's cancellation".into()),
        }
        let drain = async {
            loop {
                let (permit, next) = next_delivery(permits, &mut consumer).await;
                match next {
                    Some(Ok(delivery)) => self.spawn(session, tasks, delivery, permit),
                    Some(Err(error)) => return Err(error.to_string()),
                    None => break,
                }
            }
            while let Some(joined) = tasks.join_next().await {
                report(joined);
            }
            session.settler.acks().flush().await;
            Ok(())
        };
        tokio::select! {
            drained = tokio::time::timeout(PAUSE_DRAIN_TIMEOUT, drain) => match drained {
                Ok(result) => result?,
                Err(_) => return Err("prefetched messages did not go back to the queue in time".into()),
            },
            _ = shutdown.triggered() => return Ok(PauseEnd::Shutdown),
        }
        if session.broken.is_cancelled() {
            return Err("a channel failed while returning messages to the queue".into());
        }
        Ok(PauseEnd::Drained)
    }

    /// The session is unusable: drop in-flight work (RabbitMQ redelivers it).
    async fn lose(&self, tasks: &mut JoinSet<()>, reason: String) -> SessionEnd {
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
    consumer: &mut Consumer,
) -> (OwnedSemaphorePermit, Option<Result<Delivery, lapin::Error>>) {
    let permit = Arc::clone(permits).acquire_owned().await;
    // The worker never closes its semaphore, so a permit always comes.
    let permit = permit.expect("the worker's semaphore is never closed");
    (permit, consumer.next().await)
}

fn report(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!("a delivery task panicked outside the pipeline");
    }
}
