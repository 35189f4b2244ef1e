//! The worker: consumes the work queue with bounded concurrency, hands each
//! delivery to the [`Pipeline`], and keeps going through everything around it.
//!
//! - **Sessions.** Two RabbitMQ connections per session: one consumes (a
//!   channel with prefetch `PREFETCH`) and acknowledges, the other publishes
//!   on confirm-mode channels, so a memory or disk alarm, which blocks
//!   publishing connections, does not stall acknowledgements too. When a
//!   connection or a channel fails, the session ends, in-flight work is
//!   dropped unacknowledged (RabbitMQ redelivers it; idempotency prevents
//!   doubles) and a new session starts after a backoff pause, re-declaring
//!   the topology.
//! - **Outages.** When the [`Breaker`](crate::health::Breaker) opens (TapTalk
//!   or Postgres refuses the configuration, or fails everything), the worker
//!   cancels its consumer, lets in-flight messages go back to the queue, and
//!   probes the failing dependency with growing pauses; it consumes again once
//!   the dependency answers.
//! - **Shutdown.** On [`Shutdown`], it cancels the consumer, gives in-flight
//!   messages `SHUTDOWN_GRACE` to finish, then closes the connection, which
//!   returns whatever is left to the queue.
//! - **Beside the consumer.** Each session runs the outbox [relay](crate::relay)
//!   on its publishing channel; a progress line is logged every
//!   `PROGRESS_EVERY`.
//! - **Messages too large to receive.** When RabbitMQ redelivers a message
//!   whose header frame no longer fits `frame_max` (see
//!   [`copies`](crate::broker::copies)), lapin closes the connection. The
//!   next sessions are *quarantined* — one message at a time, reconnecting
//!   at once — so that each further failure spends a delivery of that message
//!   alone, until RabbitMQ's delivery limit dead-letters it.

mod consumers;
mod intake;
mod prefetch;
mod session;

pub use prefetch::{Prefetch, PrefetchError};

use crate::broker::BrokerSettings;
use crate::health::Heartbeat;
use crate::health::Probes;
use crate::observe::event_log::EventLog;
use crate::observe::metrics::{Intake, Metrics};
use crate::pipeline::Pipeline;
use crate::relay::RelaySettings;
use crate::shutdown::Shutdown;
use crate::storage::{Announced, TicketStore};
use crate::taptalk::AdaptiveLimit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A session that lasted this long was healthy: the next reconnect starts
/// again from the shortest pause.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// How long one step with the broker (cancelling a consumer, closing a
/// connection) may take before the worker gives up on it.
const BROKER_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long returning prefetched and in-flight messages may take when intake
/// pauses.
const PAUSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause before reconnecting after a message too large to receive broke
/// the session: the broker is fine, and the message must be delivered again
/// (and fail again) until RabbitMQ's delivery limit dead-letters it.
const QUARANTINE_PAUSE: Duration = Duration::from_millis(200);

/// How the worker consumes.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub broker: BrokerSettings,
    /// `PREFETCH`: fixed, or following the TapTalk concurrency limit.
    pub prefetch: Prefetch,
    pub shutdown_grace: Duration,
    /// When ticket events left in the outbox are published.
    pub relay: RelaySettings,
    /// How often a progress line is logged; `None`: never.
    pub progress_every: Option<Duration>,
    /// `EVENT_LOG_RATE`: per-event lines a second at most; 0: none.
    pub event_log_rate: u32,
    /// `DELIVERY_DEADLINE`: a delivery in flight longer goes back to the
    /// queue, and a warning names where it was stuck.
    pub delivery_deadline: Duration,
}

/// Consumes the work queue until shutdown.
#[derive(Debug, Clone)]
pub struct Worker {
    settings: Arc<WorkerSettings>,
    pipeline: Arc<Pipeline>,
    /// For the outbox relay.
    store: TicketStore,
    /// Ticket events confirmed by RabbitMQ, whose outbox rows the relay deletes.
    announced: Announced,
    metrics: Metrics,
    /// One line per settled event, at most `EVENT_LOG_RATE` a second.
    event_log: Arc<EventLog>,
    /// Beaten by the control loop, read by `/healthz`.
    heartbeat: Heartbeat,
    probes: Probes,
    /// The TapTalk concurrency limit, which the prefetch follows.
    limit: AdaptiveLimit,
    /// Sessions lost in a row to a message too large to receive (see
    /// [`Session::quarantined`]).
    landmines: Arc<AtomicU32>,
    /// Where in AMQP_URL's list of nodes the next session starts.
    node: Arc<AtomicUsize>,
}

/// Why a consuming phase ended.
enum PhaseEnd {
    Shutdown,
    Paused,
    Lost(SessionLost),
    /// The quarantine is over: consume again at full prefetch.
    QuarantineOver,
}

/// How a pause ended.
enum PauseEnd {
    /// Everything in flight went back; wait for the dependency.
    Drained,
    Shutdown,
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Lost(SessionLost),
}

/// Why a session was lost, logged as the `reason` of "lost the RabbitMQ
/// session": a new session starts after a pause, and what this one held is
/// redelivered.
#[derive(Debug, thiserror::Error)]
enum SessionLost {
    /// A consumer could not be started or cancelled.
    #[error(transparent)]
    Consumer(#[from] consumers::ConsumerError),
    /// A delivery came with an error instead of a message.
    #[error(transparent)]
    Delivery(lapin::Error),
    /// The session's connection or a channel failed; the channel's own
    /// warning says why.
    #[error("a RabbitMQ connection or channel failed (see the warning before this line)")]
    ChannelFailed,
    #[error("a RabbitMQ connection failed while intake was paused")]
    FailedWhilePaused,
    #[error("RabbitMQ cancelled the consumer (was the queue deleted?)")]
    ConsumerCancelled,
    /// A pause could not send what was prefetched back within
    /// `PAUSE_DRAIN_TIMEOUT`.
    #[error("prefetched messages did not go back to the queue in time")]
    DrainTimedOut,
    #[error("a channel failed while returning messages to the queue")]
    FailedWhileDraining,
}

impl Worker {
    pub fn new(
        settings: WorkerSettings,
        pipeline: Pipeline,
        probes: Probes,
        store: TicketStore,
        limit: AdaptiveLimit,
        metrics: Metrics,
    ) -> Worker {
        Worker {
            event_log: Arc::new(EventLog::new(settings.event_log_rate)),
            settings: Arc::new(settings),
            pipeline: Arc::new(pipeline),
            store,
            announced: Announced::default(),
            metrics,
            heartbeat: Heartbeat::new(),
            probes,
            limit,
            landmines: Arc::new(AtomicU32::new(0)),
            node: Arc::new(AtomicUsize::new(rand::random::<u16>().into())),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The control loop's heartbeat (`/healthz`).
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// Runs sessions until `shutdown`; reconnects with growing pauses when the
    /// broker is unreachable or a session is lost.
    pub async fn run(&self, shutdown: &Shutdown) {
        tokio::select! {
            _ = self.heartbeat.while_waiting(self.probes.check_at_start()) => {}
            _ = shutdown.triggered() => return,
        }
        let progress = CancellationToken::new();
        let reporter = self.settings.progress_every.map(|every| {
            tokio::spawn(crate::observe::progress::report(
                self.metrics.clone(),
                every,
                progress.clone(),
            ))
        });
        let _stop_progress = progress.clone().drop_guard();
        let mut reconnect = self.settings.broker.reconnect.schedule();
        while !shutdown.is_triggered() {
            let opened = tokio::select! {
                session = self.heartbeat.while_waiting(self.open_session()) => session,
                _ = shutdown.triggered() => break,
            };
            let mut quarantine = false;
            match opened {
                Ok(session) => {
                    self.metrics.session_opened();
                    let started = Instant::now();
                    let relay = self.start_relay(&session);
                    let end = self.run_session(&session, shutdown).await;
                    self.metrics.intake(Intake::Disconnected);
                    self.metrics.prefetch(0);
                    self.metrics.rabbitmq_node(None);
                    self.heartbeat.while_waiting(relay.stop()).await;
                    if let SessionEnd::Lost(reason) = &end {
                        tracing::warn!(%reason, "lost the RabbitMQ session; in-flight messages will be redelivered");
                        // The next session starts at the next node of the
                        // list (with one node, the same one).
                        self.node.fetch_add(1, Ordering::Relaxed);
                    }
                    if self
                        .heartbeat
                        .while_waiting(session.close("session over"))
                        .await
                    {
                        quarantine = self.landmine_found();
                    }
                    if matches!(end, SessionEnd::Shutdown) {
                        break;
                    }
                    if started.elapsed() >= HEALTHY_SESSION {
                        reconnect = self.settings.broker.reconnect.schedule();
                    }
                }
                Err(error) => tracing::warn!(
                    error = %crate::broker::connection::describe(&error),
                    "cannot start a RabbitMQ session"
                ),
            }
            let pause = if quarantine {
                QUARANTINE_PAUSE
            } else {
                reconnect
                    .next_pause(None)
                    .unwrap_or(self.settings.broker.reconnect.max_pause)
            };
            tracing::info!(pause = %crate::time::human(pause), "reconnecting to RabbitMQ after a pause");
            tokio::select! {
                _ = self.heartbeat.while_waiting(tokio::time::sleep(pause)) => {}
                _ = shutdown.triggered() => break,
            }
        }
        // The last window's lines, before the process can exit.
        self.event_log.flush();
        progress.cancel();
        if let Some(reporter) = reporter {
            let _ = tokio::time::timeout(Duration::from_secs(1), reporter).await;
        }
        tracing::info!("worker stopped");
    }

    /// A session was lost to a message too large to receive. Returns whether
    /// the next session should start quarantined (quickly, one message at a
    /// time): yes, unless it keeps happening far beyond the delivery limit,
    /// which a single message cannot explain.
    fn landmine_found(&self) -> bool {
        let losses = self.landmines.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.settings.broker.topology.delivery_limit;
        if losses == 1 {
            tracing::error!(
                delivery_limit = limit,
                "RabbitMQ delivered a message whose header frame exceeds frame_max (its headers nearly filled the frame, and a redelivery added x-delivery-count); it cannot be received. Taking one message at a time until RabbitMQ's delivery limit dead-letters it"
            );
        }
        if losses > limit.saturating_add(5) {
            // More failures than one message can explain: stop hurrying.
            self.landmines.store(0, Ordering::Relaxed);
            tracing::error!(
                losses,
                "sessions keep failing on oversized frames beyond the delivery limit; back to ordinary reconnect pauses and full speed"
            );
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_session_says_why_in_the_words_of_its_cause() {
        let timed_out = SessionLost::from(consumers::ConsumerError::from(
            crate::broker::connection::no_answer("basic.qos"),
        ));
        assert!(
            timed_out
                .to_string()
                .contains("RabbitMQ did not answer basic.qos within 30s"),
            "{timed_out}"
        );
        assert_eq!(
            SessionLost::from(consumers::ConsumerError::CancelUnconfirmed).to_string(),
            "RabbitMQ did not confirm the consumer's cancellation"
        );
        assert_eq!(
            SessionLost::ConsumerCancelled.to_string(),
            "RabbitMQ cancelled the consumer (was the queue deleted?)"
        );
    }
}
