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

use super::connection::{BROKER_STEP, no_answer};
use super::{Topology, copies, header_limits, short};
use crate::events::{TicketFailed, TicketReady};
use crate::observe::traces;
use crate::pipeline::DeadLetterNote;
use crate::storage::Announcement;
use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
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
/// Header with the exchange a dead-lettered message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-original-exchange";
/// Header with the routing key a dead-lettered message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
/// Header keeping a dead-lettered message's `user_id`, which the copy cannot carry.
pub const ORIGINAL_USER_ID_HEADER: &str = "x-original-user-id";
/// Header with the time the worker dead-lettered a message.
pub const DEAD_LETTERED_AT_HEADER: &str = "x-ticket-worker-dead-lettered-at";

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

    /// Publishes `ticket.ready` answering a login event with these headers
    /// (`None` for none), carrying its trace on (see
    /// [`traces::carried_on`]).
    #[tracing::instrument(name = "broker.publish_ready", level = "debug", skip_all, fields(event_id = %ready.event_id))]
    pub async fn ticket_ready(
        &self,
        ready: &TicketReady,
        login: Option<&FieldTable>,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(ready)?;
        let trace = traces::carried_on(login);
        self.ticket_event(TicketReady::ROUTING_KEY, &ready.event_id, &body, trace)
            .await
    }

    /// Publishes a `ticket.ready` already encoded (as stored in the outbox),
    /// as [`Publisher::ticket_ready`] does.
    #[tracing::instrument(name = "broker.publish_ready", level = "debug", skip_all, fields(event_id = %event_id))]
    pub async fn ticket_ready_encoded(
        &self,
        event_id: &str,
        body: &str,
        login: Option<&FieldTable>,
    ) -> Result<(), PublishError> {
        let trace = traces::carried_on(login);
        self.ticket_event(TicketReady::ROUTING_KEY, event_id, body.as_bytes(), trace)
            .await
    }

    /// Publishes `ticket.failed`, as [`Publisher::ticket_ready`] does.
    #[tracing::instrument(name = "broker.publish_failed", level = "debug", skip_all, fields(event_id = %failed.event_id, reason = failed.reason.as_str()))]
    pub async fn ticket_failed(
        &self,
        failed: &TicketFailed,
        login: Option<&FieldTable>,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(failed)?;
        let trace = traces::carried_on(login);
        self.ticket_event(TicketFailed::ROUTING_KEY, &failed.event_id, &body, trace)
            .await
    }

    /// Publishes a ticket event from the outbox, exactly as it was stored.
    /// Its login event's delivery is gone, and its trace with it: it carries
    /// none.
    #[tracing::instrument(name = "broker.publish_announcement", level = "debug", skip_all, fields(event_id = %announcement.event_id, routing_key = %announcement.routing_key))]
    pub async fn announcement(&self, announcement: &Announcement) -> Result<(), PublishError> {
        self.ticket_event(
            &announcement.routing_key,
            &announcement.event_id,
            announcement.body.as_bytes(),
            None,
        )
        .await
    }

    /// `trace`: the trace headers it carries, if any.
    async fn ticket_event(
        &self,
        routing_key: &str,
        event_id: &str,
        body: &[u8],
        trace: Option<FieldTable>,
    ) -> Result<(), PublishError> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id(short(event_id))
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_type(short(routing_key))
            .with_app_id("ticket-worker".into())
            .with_timestamp(now_seconds());
        if let Some(trace) = trace {
            properties = properties.with_headers(trace);
        }
        match self
            .publish(
                &self.events,
                &self.topology.ticket_exchange,
                routing_key,
                body,
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
    /// say why, under its original routing key. Original headers that would
    /// not fit RabbitMQ's frame size are dropped, and a header says so.
    #[tracing::instrument(name = "broker.dead_letter", level = "debug", skip_all, fields(reason = note.reason))]
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        note: &DeadLetterNote,
    ) -> Result<(), PublishError> {
        let mut copy = Copy::of(self, delivery);
        copy.set(REASON_HEADER, long(note.reason));
        copy.set(ERROR_HEADER, long(&note.message));
        if let Some(problem) = note.problem {
            copy.set(PROBLEM_HEADER, long(problem));
        }
        if let Some(field) = &note.field {
            copy.set(FIELD_HEADER, long(field));
        }
        copy.set(DEAD_LETTERED_AT_HEADER, AMQPValue::Timestamp(now_seconds()));
        let retries = self.retries(delivery);
        if retries > 0 {
            copy.set(
                RETRIES_HEADER,
                AMQPValue::LongLongInt(i64::try_from(retries).unwrap_or(i64::MAX)),
            );
        }
        let routing_key = copy.original_routing_key.clone();
        let properties = self.fit(copy.properties(self, delivery), &copy.written)?;
        self.publish(
            &self.copies,
            &self.topology.dead_letter_exchange,
            &routing_key,
            &delivery.data,
            properties,
        )
        .await
    }

    /// Puts a copy of `delivery` back at the tail of the work queue. Unlike a
    /// nack, this does not spend the queue's delivery limit, which is kept for
    /// messages that crash the worker. `count` adds one to the retries header
    /// (see [`Publisher::retries`]): the event itself failed, rather than
    /// being sent back because a dependency is down for everybody. The copy
    /// carries the worker's own RabbitMQ user as its `user_id`, which RabbitMQ
    /// checks, so the count on it can be trusted; and where the original was
    /// first published, for a dead letter to say later.
    #[tracing::instrument(name = "broker.retry_later", level = "debug", skip_all)]
    pub async fn retry_later(&self, delivery: &Delivery, count: bool) -> Result<(), PublishError> {
        let retries = self.retries(delivery).saturating_add(u64::from(count));
        let mut copy = Copy::of(self, delivery);
        if retries > 0 {
            copy.set(
                RETRIES_HEADER,
                AMQPValue::LongLongInt(i64::try_from(retries).unwrap_or(i64::MAX)),
            );
        }
        let properties = self.fit(copy.properties(self, delivery), &copy.written)?;
        self.publish(
            &self.copies,
            "",
            &self.topology.work_queue,
            &delivery.data,
            properties,
        )
        .await
    }

    /// Publishes the replay of a dead letter (see
    /// [`ReplayCopy`](super::dead_letters::ReplayCopy)) to the login
    /// exchange, `mandatory`, and waits for the confirm: a replay that no
    /// queue takes is an error ([`PublishError::Unroutable`]), not a success.
    #[tracing::instrument(name = "broker.replay", level = "debug", skip_all)]
    pub async fn replay(
        &self,
        copy: &super::dead_letters::ReplayCopy,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let properties = self.fit(copy.properties.clone(), &[])?;
        self.publish(
            &self.copies,
            &self.topology.login_exchange,
            &copy.routing_key,
            body,
            properties,
        )
        .await
    }

    /// How often the worker has put this message back because it could not
    /// get a ticket for it (the `x-ticket-worker-retries` header). Only copies
    /// the worker itself put back count (see [`Publisher::is_own_copy`]);
    /// anything a publisher wrote there reads as 0.
    pub fn retries(&self, delivery: &Delivery) -> u64 {
        if !self.is_own_copy(delivery) {
            return 0;
        }
        let headers = delivery.properties.headers().as_ref();
        match headers.and_then(|h| h.inner().get(RETRIES_HEADER)) {
            Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
            Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether `delivery` is a copy the worker put back itself: it came
    /// through the default exchange to the work queue with the worker's own
    /// RabbitMQ user as its `user_id`, which RabbitMQ lets no other user set.
    /// Only on such a copy do the worker's headers mean anything.
    pub fn is_own_copy(&self, delivery: &Delivery) -> bool {
        self.user.is_some()
            && delivery.exchange.as_str().is_empty()
            && delivery.routing_key.as_str() == self.topology.work_queue
            && delivery.properties.user_id().as_ref() == self.user.as_ref()
    }

    /// A copy's properties as the worker may publish them: RabbitMQ refuses a
    /// `user_id` that is not the publishing connection's own user (and closes
    /// the channel), so the original's gives way to the worker's, or goes.
    fn as_own(&self, properties: BasicProperties) -> BasicProperties {
        copies::with_user_id(&properties, self.user.clone())
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

/// What the worker's own copies record about the original, kept on every
/// further copy.
const KEPT_FROM_OWN_COPIES: [&str; 5] = [
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    ORIGINAL_USER_ID_HEADER,
    copies::TRIMMED_HEADER,
    header_limits::UNREADABLE_HEADER,
];

/// The headers of a copy the worker makes of a delivery, and which of them
/// the worker wrote (those are never trimmed).
struct Copy {
    headers: std::collections::BTreeMap<ShortString, AMQPValue>,
    written: Vec<&'static str>,
    original_routing_key: String,
}

impl Copy {
    /// Starts from the original's headers. The worker's own names
    /// (`x-ticket-worker-*`, `x-original-*`) and RabbitMQ's record of
    /// dead-lettering (`x-death`, `x-first-death-*`, `x-last-death-*`) mean
    /// nothing coming from a publisher and are dropped, unless the delivery
    /// is the worker's own copy,
    /// whose record of the original (exchange, routing key, `user_id`) is kept.
    /// Headers the parser may have cut short are left out, and a header
    /// says how many (see [`header_limits`]).
    fn of(publisher: &Publisher, delivery: &Delivery) -> Copy {
        let own = publisher.is_own_copy(delivery);
        let mut headers: std::collections::BTreeMap<ShortString, AMQPValue> = delivery
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        headers.retain(|name, _| {
            let name = name.as_str();
            let workers = name.starts_with("x-ticket-worker-") || name.starts_with("x-original-");
            // RabbitMQ's record of dead-lettering, written by a publisher,
            // would make the worker's own dead letter read as RabbitMQ's.
            let brokers = name == "x-death"
                || name.starts_with("x-first-death-")
                || name.starts_with("x-last-death-");
            (!workers && !brokers) || (own && KEPT_FROM_OWN_COPIES.contains(&name))
        });
        let unreadable = header_limits::strip(&mut headers);
        let mut copy = Copy {
            headers,
            written: Vec::new(),
            original_routing_key: delivery.routing_key.to_string(),
        };
        if own {
            if let Some(AMQPValue::LongString(key)) = copy.headers.get(ORIGINAL_ROUTING_KEY_HEADER)
            {
                copy.original_routing_key = key.to_string();
            }
            for name in KEPT_FROM_OWN_COPIES {
                if copy.headers.contains_key(name) {
                    copy.written.push(name);
                }
            }
        } else {
            copy.set(ORIGINAL_EXCHANGE_HEADER, long(delivery.exchange.as_str()));
            copy.set(
                ORIGINAL_ROUTING_KEY_HEADER,
                long(delivery.routing_key.as_str()),
            );
            if let Some(user_id) = delivery.properties.user_id() {
                copy.set(ORIGINAL_USER_ID_HEADER, long(user_id.as_str()));
            }
        }
        if unreadable > 0 {
            copy.set(
                header_limits::UNREADABLE_HEADER,
                header_limits::note(unreadable),
            );
        }
        copy
    }

    fn set(&mut self, name: &'static str, value: AMQPValue) {
        self.headers.insert(name.into(), value);
        if !self.written.contains(&name) {
            self.written.push(name);
        }
    }

    /// The copy's properties: the original's, with these headers and the
    /// worker's `user_id` (RabbitMQ refuses any other from the worker).
    fn properties(&self, publisher: &Publisher, delivery: &Delivery) -> BasicProperties {
        let properties = delivery
            .properties
            .clone()
            .with_headers(lapin::types::FieldTable::from(self.headers.clone()));
        publisher.as_own(properties)
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

fn long(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn now_seconds() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}
