//! Confirmed publishing: every message the worker sends (ticket events, dead
//! letters, messages put back for later) waits for the broker's confirm before
//! the original delivery is acknowledged. Many tasks publish on one channel at
//! once, so confirms are pipelined rather than taken one at a time.

use super::{Topology, short};
use crate::events::{TicketFailed, TicketReady};
use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Header naming why the worker dead-lettered a message (`invalid`, `rejected_by_upstream`).
pub const REASON_HEADER: &str = "x-ticket-worker-reason";
/// Header with the finer problem code of an invalid event (`not_json`, `invalid_field`, …).
pub const PROBLEM_HEADER: &str = "x-ticket-worker-problem";
/// Header with the human-readable explanation.
pub const ERROR_HEADER: &str = "x-ticket-worker-error";
/// Header naming the offending field, when one is to blame.
pub const FIELD_HEADER: &str = "x-ticket-worker-field";
/// Header counting how often the worker put a message back for later.
pub const RETRIES_HEADER: &str = "x-ticket-worker-retries";

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

/// What the dead-letter headers say about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterNote {
    /// `invalid`, `rejected_by_upstream`, `retries_exhausted`.
    pub reason: &'static str,
    /// For invalid events, the finer problem code (`not_json`, …).
    pub problem: Option<&'static str>,
    pub message: String,
    pub field: Option<String>,
}

/// A confirm-mode channel for everything the worker publishes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Arc<Topology>,
    warned_unroutable: Arc<AtomicBool>,
}

impl Publisher {
    /// Opens a channel in confirm mode on `connection`.
    pub async fn open(
        connection: &Connection,
        topology: Arc<Topology>,
    ) -> Result<Publisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            topology,
            warned_unroutable: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `ticket.ready`.
    #[tracing::instrument(name = "broker.publish_ready", skip_all, fields(event_id = %ready.event_id))]
    pub async fn ticket_ready(&self, ready: &TicketReady) -> Result<(), PublishError> {
        self.ticket_event(TicketReady::ROUTING_KEY, &ready.event_id, ready)
            .await
    }

    /// Publishes `ticket.failed`.
    #[tracing::instrument(name = "broker.publish_failed", skip_all, fields(event_id = %failed.event_id, reason = failed.reason.as_str()))]
    pub async fn ticket_failed(&self, failed: &TicketFailed) -> Result<(), PublishError> {
        self.ticket_event(TicketFailed::ROUTING_KEY, &failed.event_id, failed)
            .await
    }

    async fn ticket_event(
        &self,
        routing_key: &str,
        event_id: &str,
        body: &impl serde::Serialize,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(body)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id(short(event_id))
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_type(routing_key.into())
            .with_app_id("ticket-worker".into())
            .with_timestamp(now_seconds());
        match self
            .publish(
                &self.topology.ticket_exchange,
                routing_key,
                &body,
                properties,
            )
            .await
        {
            Err(PublishError::Unroutable {
                exchange,
                routing_key,
            }) => {
                // Tickets are in Postgres whether or not anybody listens; say so once.
                if !self.warned_unroutable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%exchange, %routing_key, "no queue is bound for ticket events; they are dropped until one is");
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Sends a copy of `delivery` to the dead-letter exchange with headers that
    /// say why, under its original routing key.
    #[tracing::instrument(name = "broker.dead_letter", skip_all, fields(reason = note.reason))]
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        note: &DeadLetterNote,
    ) -> Result<(), PublishError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), long(note.reason));
        headers.insert(ERROR_HEADER.into(), long(&note.message));
        if let Some(problem) = note.problem {
            headers.insert(PROBLEM_HEADER.into(), long(problem));
        }
        if let Some(field) = &note.field {
            headers.insert(FIELD_HEADER.into(), long(field));
        }
        headers.insert(
            "x-original-exchange".into(),
            long(delivery.exchange.as_str()),
        );
        headers.insert(
            "x-original-routing-key".into(),
            long(delivery.routing_key.as_str()),
        );
        headers.insert(
            "x-ticket-worker-dead-lettered-at".into(),
            AMQPValue::Timestamp(now_seconds()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        self.publish(
            &self.topology.dead_letter_exchange,
            delivery.routing_key.as_str(),
            &delivery.data,
            properties,
        )
        .await
    }

    /// Puts a copy of `delivery` back at the tail of the work queue. Unlike a
    /// nack, this does not spend the queue's delivery limit, which is kept for
    /// messages that crash the worker. `count` adds one to the retries header
    /// (see [`retries`]): the event itself failed, rather than being sent back
    /// because a dependency is down for everybody.
    #[tracing::instrument(name = "broker.retry_later", skip_all)]
    pub async fn retry_later(&self, delivery: &Delivery, count: bool) -> Result<(), PublishError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        if count {
            headers.insert(
                RETRIES_HEADER.into(),
                AMQPValue::LongLongInt(
                    i64::try_from(retries(delivery))
                        .unwrap_or(i64::MAX)
                        .saturating_add(1),
                ),
            );
        }
        let properties = delivery.properties.clone().with_headers(headers);
        self.publish("", &self.topology.work_queue, &delivery.data, properties)
            .await
    }

    /// Publishes one persistent, mandatory message and waits for its confirm.
    async fn publish(
        &self,
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
        let confirm = self
            .channel
            .basic_publish(
                short(exchange),
                short(routing_key),
                options,
                body,
                properties,
            )
            .await?
            .await?;
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

/// How often the worker has put this message back because it could not get
/// a ticket for it (the `x-ticket-worker-retries` header).
pub fn retries(delivery: &Delivery) -> u64 {
    let headers = delivery.properties.headers().as_ref();
    match headers.and_then(|h| h.inner().get(RETRIES_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn now_seconds() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}
