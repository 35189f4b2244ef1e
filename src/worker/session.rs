//! One broker session: a connection with its consuming channel, its
//! publisher (two confirm-mode channels) and the settler that acknowledges
//! deliveries; the outbox relay that runs beside it; and leaving the
//! quarantine that follows a message too large to receive.

use super::{BROKER_STEP_TIMEOUT, Worker};
use crate::broker::acks::Acks;
use crate::broker::{Publisher, Settler, connect};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use lapin::{Channel, Connection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// One RabbitMQ connection and its two channels.
pub(super) struct Session {
    pub(super) connection: Connection,
    pub(super) consume: Channel,
    pub(super) settler: Settler,
    /// Cancelled by a task that found the broker unusable.
    pub(super) broken: CancellationToken,
    /// The connection's events, read once the session is over to learn
    /// whether it failed on a frame larger than `frame_max`: RabbitMQ
    /// redelivered a message whose headers, with the `x-delivery-count` it
    /// adds, no longer fit (see [`crate::broker::copies`]).
    pub(super) events: Mutex<BoxStream<'static, lapin::Event>>,
    /// The session started after such a failure: one message at a time, so
    /// that each further failure spends a delivery of that one message only,
    /// until RabbitMQ's delivery limit dead-letters it. It ends with the first
    /// delivery that is not a redelivery: what was returned is through.
    pub(super) quarantined: AtomicBool,
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
    /// Whether the connection failed on a frame too large to receive (lapin
    /// closes it with a FRAME_ERROR). Call once the session is over: it reads
    /// the events that are already there, without waiting.
    pub(super) fn lost_to_oversized_frame(&self) -> bool {
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
        let connection = connect(&broker.amqp_url, &broker.connection_name).await?;
        let events = Mutex::new(connection.events_listener().boxed());
        let quarantined = self.landmines.load(Ordering::Relaxed) > 0;
        let consume = connection.create_channel().await?;
        let broken = CancellationToken::new();
        if let Err(error) = broker.topology.declare(&consume).await {
            tracing::error!(%error, "RabbitMQ refused the topology; if a queue exists with other arguments (such as x-delivery-limit), align DELIVERY_LIMIT or delete the queue");
            close(&connection, "topology refused").await;
            return Err(error);
        }
        let publisher = Publisher::open(
            &connection,
            Arc::new(broker.topology.clone()),
            broker.login_user().as_deref(),
        )
        .await?;
        let acks = Acks::start(consume.clone(), broken.clone());
        tracing::info!(
            queue = %broker.topology.work_queue,
            prefetch = %self.settings.prefetch,
            concurrency_limit = self.limit.limit(),
            adaptive = self.limit.is_adaptive(),
            quarantined,
            "connected to RabbitMQ"
        );
        Ok(Session {
            connection,
            consume,
            settler: Settler::new(
                publisher,
                self.announced.clone(),
                acks,
                self.metrics.clone(),
            ),
            broken,
            events,
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
