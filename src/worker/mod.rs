//! The worker: consumes the work queue with bounded concurrency, hands each
//! delivery to the [`Pipeline`], and keeps going through everything around it.
//!
//! - **Sessions.** One RabbitMQ connection per session: a consuming channel
//!   (prefetch `PREFETCH`) and a confirm-mode publishing channel. When the
//!   connection or a channel fails, the session ends, in-flight work is dropped
//!   unacknowledged (RabbitMQ redelivers it; idempotency prevents doubles) and
//!   a new session starts after a backoff pause, re-declaring the topology.
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

use crate::broker::{Publisher, Settler, connect, inbound};
use crate::config::BrokerSettings;
use crate::health::{Health, Probes};
use crate::observe::counters::Counters;
use crate::pipeline::{Outcome, Pipeline};
use crate::relay::RelaySettings;
use crate::shutdown::Shutdown;
use crate::storage::{Announced, TicketStore};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
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
    pub prefetch: u16,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    /// When ticket events left in the outbox are published.
    pub relay: RelaySettings,
    /// How often a progress line is logged; `None`: never.
    pub progress_every: Option<Duration>,
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
    stats: Arc<Counters>,
    probes: Probes,
    /// Sessions lost in a row to a message too large to receive (see
    /// [`Session::quarantined`]).
    landmines: Arc<AtomicU32>,
}

/// Why a consuming phase ended.
enum PhaseEnd {
    Shutdown,
    Paused,
    Lost(String),
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
    Lost(String),
}

/// One RabbitMQ connection and its two channels.
struct Session {
    connection: Connection,
    consume: Channel,
    settler: Settler,
    /// Cancelled by a task that found the broker unusable.
    broken: CancellationToken,
    /// The connection's events, read once the session is over to learn
    /// whether it failed on a frame larger than `frame_max`: RabbitMQ
    /// redelivered a message whose headers, with the `x-delivery-count` it
    /// adds, no longer fit (see [`crate::broker::copies`]).
    events: Mutex<BoxStream<'static, lapin::Event>>,
    /// The session started after such a failure: one message at a time, so
    /// that each further failure spends a delivery of that one message only,
    /// until RabbitMQ's delivery limit dead-letters it. It ends with the first
    /// delivery that is not a redelivery: what was returned is through.
    quarantined: AtomicBool,
}

/// The outbox relay of one session.
struct Relay {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Stops it, letting it delete what was announced meanwhile (bounded).
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(BROKER_STEP_TIMEOUT, self.task).await;
    }
}

impl Session {
    /// Whether the connection failed on a frame too large to receive (lapin
    /// closes it with a FRAME_ERROR). Call once the session is over: it reads
    /// the events that are already there, without waiting.
    fn lost_to_oversized_frame(&self) -> bool {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut oversized = false;
        while let Some(Some(event)) = events.next().now_or_never() {
            if let lapin::Event::Error(error) = event {
                oversized |= crate::broker::connection::is_oversized_frame(&error);
            }
        }
        oversized
    }
}

impl Worker {
    pub fn new(
        settings: WorkerSettings,
        pipeline: Pipeline,
        probes: Probes,
        store: TicketStore,
    ) -> Worker {
        Worker {
            settings: Arc::new(settings),
            pipeline: Arc::new(pipeline),
            store,
            announced: Announced::default(),
            stats: Arc::new(Counters::default()),
            probes,
            landmines: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn stats(&self) -> Arc<Counters> {
        Arc::clone(&self.stats)
    }

    /// Runs sessions until `shutdown`; reconnects with growing pauses when the
    /// broker is unreachable or a session is lost.
    pub async fn run(&self, shutdown: &Shutdown) {
        tokio::select! {
            _ = self.probes.check_at_start() => {}
            _ = shutdown.triggered() => return,
        }
        let progress = CancellationToken::new();
        if let Some(every) = self.settings.progress_every {
            let stats = Arc::clone(&self.stats);
            let stop = progress.clone();
            tokio::spawn(async move { stats.report_progress(every, stop).await });
        }
        let _stop_progress = progress.drop_guard();
        let mut reconnect = self.settings.broker.reconnect.schedule();
        while !shutdown.is_triggered() {
            let opened = tokio::select! {
                session = self.open_session() => session,
                _ = shutdown.triggered() => break,
            };
            let mut quarantine = false;
            match opened {
                Ok(session) => {
                    self.stats.session_opened();
                    let started = Instant::now();
                    let relay = self.start_relay(&session);
                    let end = self.run_session(&session, shutdown).await;
                    relay.stop().await;
                    close(&session.connection, "session over").await;
                    if let SessionEnd::Lost(reason) = &end {
                        tracing::warn!(%reason, "lost the RabbitMQ session; in-flight messages will be redelivered");
                    }
                    if session.lost_to_oversized_frame() {
                        quarantine = self.landmine_found();
                    }
                    if matches!(end, SessionEnd::Shutdown) {
                        break;
                    }
                    if started.elapsed() >= HEALTHY_SESSION {
                        reconnect = self.settings.broker.reconnect.schedule();
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot start a RabbitMQ session"),
            }
            let pause = if quarantine {
                QUARANTINE_PAUSE
            } else {
                reconnect
                    .next_pause(None)
                    .unwrap_or(self.settings.broker.reconnect.max_pause)
            };
            tracing::info!(pause = %humantime::format_duration(pause), "reconnecting to RabbitMQ after a pause");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.triggered() => break,
            }
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

    /// Starts the outbox relay for this session; cancel the token to stop it.
    fn start_relay(&self, session: &Session) -> Relay {
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::relay::run(
            self.store.clone(),
            self.announced.clone(),
            session.settler.publisher().clone(),
            self.settings.relay,
            stop.clone(),
        ));
        Relay { stop, task }
    }

    async fn open_session(&self) -> Result<Session, lapin::Error> {
        let broker = &self.settings.broker;
        let connection = connect(&broker.amqp_url, &broker.connection_name).await?;
        let events = Mutex::new(connection.events_listener().boxed());
        let quarantined = self.landmines.load(Ordering::Relaxed) > 0;
        let prefetch = if quarantined {
            1
        } else {
            self.settings.prefetch
        };
        let consume = connection.create_channel().await?;
        if let Err(error) = broker.topology.declare(&consume).await {
            tracing::error!(%error, "RabbitMQ refused the topology; if a queue exists with other arguments (such as x-delivery-limit), align DELIVERY_LIMIT or delete the queue");
            close(&connection, "topology refused").await;
            return Err(error);
        }
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let publisher = Publisher::open(
            &connection,
            Arc::new(broker.topology.clone()),
            broker.login_user().as_deref(),
        )
        .await?;
        let concurrency = if quarantined {
            1
        } else {
            self.settings.concurrency
        };
        tracing::info!(queue = %broker.topology.work_queue, prefetch, concurrency, quarantined, "connected to RabbitMQ");
        Ok(Session {
            connection,
            consume,
            settler: Settler::new(publisher, self.announced.clone()),
            broken: CancellationToken::new(),
            events,
            quarantined: AtomicBool::new(quarantined),
        })
    }

    /// Ends the quarantine (after the first fresh delivery): full prefetch
    /// and concurrency again. RabbitMQ applies a new prefetch only to
    /// consumers started after it, so the quarantined consumer is cancelled
    /// and the caller consumes anew; messages in flight go on meanwhile.
    async fn leave_quarantine(
        &self,
        session: &Session,
        consumer: &Consumer,
        permits: &Semaphore,
    ) -> Result<(), String> {
        session.quarantined.store(false, Ordering::Relaxed);
        self.landmines.store(0, Ordering::Relaxed);
        let cancel = session
            .consume
            .basic_cancel(consumer.tag(), BasicCancelOptions::default());
        match tokio::time::timeout(BROKER_STEP_TIMEOUT, cancel).await {
            Ok(cancelled) => cancelled.map_err(|e| e.to_string())?,
            Err(_) => return Err("RabbitMQ did not confirm the consumer's cancellation".into()),
        }
        session
            .consume
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        permits.add_permits(self.settings.concurrency.saturating_sub(1));
        tracing::info!(
            prefetch = self.settings.prefetch,
            "every returned message is through; consuming at full speed again"
        );
        Ok(())
    }

    /// Consumes in phases (paused while a dependency is down) until shutdown or loss.
    async fn run_session(&self, session: &Session, shutdown: &Shutdown) -> SessionEnd {
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
                    if delivery.acker.usable() {
                        let requeue = BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        };
                        if delivery.acker.nack(requeue).await.is_err() {
                            broken.cancel();
                        }
                    }
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

/// Closes a connection (which closes its channels and returns every
/// unacknowledged delivery to the queue), without waiting forever.
async fn close(connection: &Connection, why: &str) {
    let _ = tokio::time::timeout(
        BROKER_STEP_TIMEOUT,
        connection.close(200, crate::broker::short(why)),
    )
    .await;
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
