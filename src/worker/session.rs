//! One broker session: two connections, as RabbitMQ's documentation
//! recommends (a memory or disk alarm blocks connections that publish, and
//! acknowledgements on a blocked connection would stall with them): one
//! consumes and acknowledges, the other publishes (the publisher's two
//! confirm-mode channels, used by the settler and the outbox relay). A
//! watcher reads both connections' events: an error ends the session, a block
//! is logged. Also: the outbox relay that runs beside a session, and leaving
//! the quarantine that follows a message too large to receive.

use super::{BROKER_STEP_TIMEOUT, Worker};
use crate::broker::acks::Acks;
use crate::broker::addresses::Addresses;
use crate::broker::topology::{Declared, LEGACY_WORK_QUEUE};
use crate::broker::{Publisher, Settler};
use futures_util::StreamExt;
use lapin::{Channel, Connection};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A RabbitMQ session: a consuming connection and a publishing one.
pub(super) struct Session {
    /// Consumes the work queue and acknowledges its deliveries.
    pub(super) consuming: Connection,
    /// Publishes ticket events, dead letters and copies put back.
    pub(super) publishing: Connection,
    pub(super) consume: Channel,
    pub(super) settler: Settler,
    /// Cancelled by a task that found the broker unusable.
    pub(super) broken: CancellationToken,
    /// Reads both connections' events until the session is over.
    watcher: Watcher,
    /// The session started after such a failure: one message at a time, so
    /// that each further failure spends a delivery of that one message only,
    /// until RabbitMQ's delivery limit dead-letters it. It ends with the first
    /// delivery that is not a redelivery: what was returned is through.
    pub(super) quarantined: AtomicBool,
}

/// Reads the connections' events: ends the session on a connection error,
/// logs blocks, and remembers whether a connection failed on a frame larger
/// than `frame_max` (RabbitMQ redelivered a message whose headers, with the
/// `x-delivery-count` it adds, no longer fit; see [`crate::broker::copies`]).
struct Watcher {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<bool>,
    /// Stops the task when the watcher is dropped without [`Session::close`]
    /// (a session dropped half-opened, at shutdown).
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Watcher {
    fn start(
        consuming: &Connection,
        publishing: &Connection,
        broken: CancellationToken,
    ) -> Watcher {
        let statuses = [consuming.status().clone(), publishing.status().clone()];
        let consumed = consuming.events_listener().map(|e| (0, e));
        let published = publishing.events_listener().map(|e| (1, e));
        let mut events = futures_util::stream::select(consumed, published);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut oversized = false;
            loop {
                let event = tokio::select! {
                    biased;
                    event = events.next() => event,
                    // Whatever is already there is read before stopping.
                    _ = stopped.cancelled() => {
                        while let Some(Some(event)) = futures_util::FutureExt::now_or_never(events.next()) {
                            oversized |= is_oversized(&event.1);
                        }
                        return oversized;
                    }
                };
                let Some((index, event)) = event else {
                    return oversized;
                };
                let connection = ["consuming", "publishing"][index];
                oversized |= is_oversized(&event);
                match event {
                    // A channel's error is its users' to handle (a refused
                    // declaration is expected); a connection's ends the session.
                    lapin::Event::Error(error)
                        if statuses[index].errored() || statuses[index].closed() =>
                    {
                        tracing::warn!(connection, %error, "a RabbitMQ connection failed; the session ends");
                        broken.cancel();
                    }
                    lapin::Event::ConnectionBlocked(reason) => tracing::warn!(
                        connection,
                        reason = %crate::broker::short(&reason),
                        "RabbitMQ blocks publishing (a memory or disk alarm): ticket events and acknowledgements of what needs one wait until it clears; nothing is lost"
                    ),
                    lapin::Event::ConnectionUnblocked => {
                        tracing::info!(connection, "RabbitMQ publishes again (the alarm cleared)")
                    }
                    _ => {}
                }
            }
        });
        Watcher {
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            task,
        }
    }
}

fn is_oversized(event: &lapin::Event) -> bool {
    matches!(event, lapin::Event::Error(error) if crate::broker::connection::is_oversized_frame(error))
}

/// The outbox relay of one session.
pub(super) struct Relay {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Stops it, letting it delete what was announced meanwhile (bounded).
    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(BROKER_STEP_TIMEOUT, self.task).await;
    }
}

impl Session {
    /// Ends the session: closes both connections (which returns every
    /// unacknowledged delivery to the queue) and tells whether it failed on
    /// a frame too large to receive (lapin closes a connection on such a
    /// frame with a FRAME_ERROR).
    pub(super) async fn close(self, why: &str) -> bool {
        close(&self.consuming, why).await;
        close(&self.publishing, why).await;
        self.watcher.stop.cancel();
        tokio::time::timeout(BROKER_STEP_TIMEOUT, self.watcher.task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
    }
}

impl Worker {
    /// Starts the outbox relay for this session; cancel the token to stop it.
    pub(super) fn start_relay(&self, session: &Session) -> Relay {
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::relay::run(
            self.store.clone(),
            self.announced.clone(),
            session.settler.publisher().clone(),
            self.settings.relay,
            self.metrics.clone(),
            stop.clone(),
        ));
        Relay { stop, task }
    }

    pub(super) async fn open_session(&self) -> Result<Session, lapin::Error> {
        let broker = &self.settings.broker;
        let name = &broker.connection_name;
        let addresses = Addresses::parse(broker.amqp_url.expose_secret())?;
        // From the node this replica is at in the list (a random one at
        // first, so replicas spread), both connections on the same node.
        let start = self.node.load(Ordering::Relaxed);
        let (consuming, index) = addresses
            .connect_from(start, &format!("{name} consume"))
            .await?;
        self.node.store(index, Ordering::Relaxed);
        let node = addresses.nodes().get(index).cloned().unwrap_or_default();
        let publishing = match addresses
            .connect_from(index, &format!("{name} publish"))
            .await
        {
            Ok((publishing, _)) => publishing,
            Err(error) => {
                close(&consuming, "no publishing connection").await;
                return Err(error.into());
            }
        };
        let broken = CancellationToken::new();
        let watcher = Watcher::start(&consuming, &publishing, broken.clone());
        let quarantined = self.landmines.load(Ordering::Relaxed) > 0;
        let opened = async {
            match broker.topology.declare(&consuming).await {
                Ok(Declared::Current) => {}
                Ok(Declared::LegacyWorkQueue) => {
                    tracing::warn!(queue = %broker.topology.work_queue, "{LEGACY_WORK_QUEUE}");
                }
                Err(error) => {
                    tracing::error!(%error, "RabbitMQ refused the topology; if a queue exists with other arguments (such as x-delivery-limit), align DELIVERY_LIMIT or delete the queue");
                    return Err(error);
                }
            }
            let consume = consuming.create_channel().await?;
            let publisher = Publisher::open(
                &publishing,
                Arc::new(broker.topology.clone()),
                broker.login_user().as_deref(),
            )
            .await?;
            Ok((consume, publisher))
        };
        let opened = crate::broker::connection::within(
            "declaring the topology and opening the session's channels",
            opened,
        );
        let (consume, publisher) = match opened.await {
            Ok(opened) => opened,
            Err(error) => {
                watcher.stop.cancel();
                close(&consuming, "session not opened").await;
                close(&publishing, "session not opened").await;
                return Err(error);
            }
        };
        let acks = Acks::start(consume.clone(), broken.clone());
        self.metrics.rabbitmq_node(Some(&node));
        tracing::info!(
            node = %node,
            queue = %broker.topology.work_queue,
            prefetch = %self.settings.prefetch,
            concurrency_limit = self.limit.limit(),
            adaptive = self.limit.is_adaptive(),
            quarantined,
            "connected to RabbitMQ"
        );
        Ok(Session {
            consuming,
            publishing,
            consume,
            settler: Settler::new(
                publisher,
                self.announced.clone(),
                acks,
                self.metrics.clone(),
            ),
            broken,
            watcher,
            quarantined: AtomicBool::new(quarantined),
        })
    }

    /// Ends the quarantine (after the first fresh delivery): full
    /// concurrency again, and the caller consumes anew at full prefetch (the
    /// new consumer replaces the quarantined one); messages in flight go on
    /// meanwhile.
    pub(super) fn leave_quarantine(
        &self,
        session: &Session,
        permits: &Semaphore,
        in_flight: usize,
    ) {
        session.quarantined.store(false, Ordering::Relaxed);
        self.landmines.store(0, Ordering::Relaxed);
        permits.add_permits(in_flight.saturating_sub(1));
        tracing::info!("every returned message is through; consuming at full speed again");
    }
}

/// Closes a connection (which closes its channels and returns every
/// unacknowledged delivery to the queue), without waiting forever.
pub(super) async fn close(connection: &Connection, why: &str) {
    let _ = tokio::time::timeout(
        BROKER_STEP_TIMEOUT,
        connection.close(200, crate::broker::short(why)),
    )
    .await;
}
