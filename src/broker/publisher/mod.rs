//! Confirmed publishing: every message the worker sends (ticket events, dead
//! letters, messages put back for later) waits for the broker's confirm before
//! the original delivery is acknowledged. Many tasks publish on one channel at
//! once, so confirms are pipelined rather than taken one at a time.
//!
//! Ticket events and copies of deliveries go out on two channels. Both are
//! published `mandatory`, but an unroutable ticket event is normal (nobody
//! listens yet) while an unroutable copy is not (it would be lost). lapin
//! hands a returned message to whichever confirm of its channel comes next,
//! not necessarily the one it belongs to; on a shared channel, a ticket event
//! nobody listens to made a dead letter look unroutable, and it was sent twice.
//!
//! Here: the publisher itself (its channels, the user it publishes as, a
//! confirmed publish with its deadline). By job: [`events`] publishes ticket
//! events, [`resend`] copies of deliveries, whose contents [`copy`] decides;
//! [`headers`] names the headers the worker writes and reads.

mod copy;
mod events;
pub mod headers;
mod resend;

pub use headers::{
    DEAD_LETTERED_AT_HEADER, ERROR_HEADER, FIELD_HEADER, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_USER_ID_HEADER, PROBLEM_HEADER, REASON_HEADER,
    RETRIES_HEADER,
};

use super::connection::{BROKER_STEP, no_answer};
use super::{Topology, copies, short};
use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Why the broker did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed: the session is over.
    #[error("RabbitMQ publish failed: {0}")]
    Broker(#[from] lapin::Error),
    /// The event could not be encoded (a bug).
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    /// The broker refused the message (it could not store it).
    #[error("RabbitMQ refused (nacked) the message published to {0:?}")]
    Nacked(String),
    /// Even without its original headers, a copy would not fit RabbitMQ's
    /// frame size (it cannot happen with RabbitMQ's frame sizes; handled
    /// anyway).
    #[error("{0}")]
    DoesNotFit(#[from] copies::DoesNotFit),
    /// Nothing is bound where the message had to go.
    #[error("no queue is bound to exchange {exchange:?} for routing key {routing_key:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl PublishError {
    /// Whether the channel or connection is unusable (rather than this one
    /// message refused).
    pub fn is_broker_failure(&self) -> bool {
        matches!(self, PublishError::Broker(_))
    }
}

/// A confirm-mode channel for everything the worker publishes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// `ticket.ready` and `ticket.failed`.
    events: Channel,
    /// Dead letters and copies put back in the work queue.
    copies: Channel,
    topology: Arc<Topology>,
    warned_unroutable: Arc<AtomicBool>,
    /// The connection's negotiated frame size: every copy must fit in it.
    frame_max: u32,
    /// The RabbitMQ user the worker logs in as, set as the (broker-validated)
    /// `user_id` of the copies it puts back, so a retry count can be trusted.
    user: Option<ShortString>,
    /// The publishing connection's status: while RabbitMQ blocks it (a
    /// memory or disk alarm), a confirm may take as long as the alarm.
    status: lapin::ConnectionStatus,
}

impl Publisher {
    /// Opens a channel in confirm mode on `connection`. `user` is the
    /// RabbitMQ user name the connection authenticated as, when known (see
    /// [`Publisher::retries`]).
    pub async fn open(
        connection: &Connection,
        topology: Arc<Topology>,
        user: Option<&str>,
    ) -> Result<Publisher, lapin::Error> {
        let events = confirm_channel(connection).await?;
        let copies = confirm_channel(connection).await?;
        let user = match user.filter(|u| !u.is_empty()).map(short) {
            Some(user) => accepted_user_id(connection, user).await?,
            None => None,
        };
        if user.is_none() {
            tracing::warn!(
                "the worker's RabbitMQ user is not known (auth_mechanism external or anonymous, or RabbitMQ refused it as user_id): retry counts cannot be trusted, so MAX_REQUEUES never gives an event up"
            );
        }
        Ok(Publisher {
            events,
            copies,
            topology,
            warned_unroutable: Arc::new(AtomicBool::new(false)),
            frame_max: connection.configuration().frame_max(),
            user,
            status: connection.status().clone(),
        })
    }

    /// The `user_id` the worker's copies carry: its RabbitMQ user, when
    /// RabbitMQ accepts it as such.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.as_str())
    }

    /// Whether RabbitMQ blocks this publisher's connection now (a memory or
    /// disk alarm): publishes wait until it clears, on purpose.
    pub fn is_blocked(&self) -> bool {
        self.status.blocked()
    }

    /// The negotiated `frame_max` of this publisher's connection.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// How often the worker has put this message back because it could not
    /// get a ticket for it (the `x-ticket-worker-retries` header). Only copies
    /// the worker itself put back count (see [`Publisher::is_own_copy`]);
    /// anything a publisher wrote there reads as 0.
    pub fn retries(&self, delivery: &Delivery) -> u64 {
        if !self.is_own_copy(delivery) {
            return 0;
        }
        headers::retries_in(delivery.properties.headers().as_ref())
    }

    /// Whether `delivery` is a copy the worker put back itself: it came
    /// through the default exchange to the work queue with the worker's own
    /// RabbitMQ user as its `user_id`, which RabbitMQ lets no other user set.
    /// Only on such a copy do the worker's headers mean anything.
    pub fn is_own_copy(&self, delivery: &Delivery) -> bool {
        headers::is_own(
            self.user.as_ref(),
            &self.topology.work_queue,
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            delivery.properties.user_id().as_ref(),
        )
    }

    /// Fits a copy's properties into this connection's frame size, logging
    /// what had to go.
    fn fit(
        &self,
        properties: BasicProperties,
        keep: &[&str],
    ) -> Result<BasicProperties, PublishError> {
        let (properties, trimmed) = copies::fit(properties, self.frame_max, keep)?;
        if let Some(trimmed) = trimmed {
            tracing::warn!(
                headers = trimmed.headers,
                bytes = trimmed.bytes,
                "a message's headers were too large to copy whole; the copy carries the rest and says so in {}",
                copies::TRIMMED_HEADER
            );
        }
        Ok(properties)
    }

    /// Publishes one persistent, mandatory message and waits for its confirm.
    async fn publish(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let properties = properties.with_delivery_mode(2);
        let confirm = async {
            channel
                .basic_publish(
                    short(exchange),
                    short(routing_key),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirm = self.confirmed(confirm).await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked(exchange.to_owned())),
        }
    }
}

impl Publisher {
    /// Waits for a publish and its confirm: at most [`BROKER_STEP`] at a
    /// time, and longer only while RabbitMQ blocks the connection (an alarm:
    /// it holds publishes on purpose, and nothing is lost meanwhile). A
    /// broker that neither confirms nor says it blocks is gone: an error,
    /// and the session ends.
    async fn confirmed<T>(
        &self,
        confirm: impl std::future::Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, lapin::Error> {
        tokio::pin!(confirm);
        loop {
            match tokio::time::timeout(BROKER_STEP, &mut confirm).await {
                Ok(confirmed) => return confirmed,
                Err(_) if self.status.blocked() => continue,
                Err(_) => return Err(no_answer("a publish (its confirm)")),
            }
        }
    }
}

/// Whether RabbitMQ takes `user` as the `user_id` of what this connection
/// publishes: it must be the user the connection logged in as, which the URL
/// need not tell (an OAuth 2 token names its own). Asked once per connection
/// with an empty message nobody receives, on a channel of its own, since a
/// refusal closes the channel.
async fn accepted_user_id(
    connection: &Connection,
    user: ShortString,
) -> Result<Option<ShortString>, lapin::Error> {
    let channel = confirm_channel(connection).await?;
    let probe = async {
        channel
            .basic_publish(
                "".into(),
                "ticket-worker.user-id-check".into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default().with_user_id(user.clone()),
            )
            .await?
            .await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), probe).await {
        Ok(Ok(_)) => {
            let _ = channel.close(200, "user_id checked".into()).await;
            Ok(Some(user))
        }
        Ok(Err(error)) if is_precondition_failed(&error) => {
            tracing::error!(%error, user = user.as_str(), "RabbitMQ refuses the worker's user name as user_id; copies go out without one");
            Ok(None)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            let _ = channel.close(200, "user_id check timed out".into()).await;
            Ok(None)
        }
    }
}

/// RabbitMQ closed the channel with PRECONDITION_FAILED (406).
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// A new channel in confirm mode.
async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = super::connection::within("channel.open", connection.create_channel()).await?;
    let select = channel.confirm_select(ConfirmSelectOptions::default());
    super::connection::within("confirm.select", select).await?;
    Ok(channel)
}
