//! Publishing copies of deliveries on the copies channel: a dead letter to
//! the dead-letter exchange, a message put back at the tail of the work queue,
//! and the replay of a dead letter to the login exchange. What a copy holds
//! is decided in [`super::copy`].

use super::copy::{Copy, Original};
use super::headers::{
    DEAD_LETTERED_AT_HEADER, ERROR_HEADER, FIELD_HEADER, PROBLEM_HEADER, REASON_HEADER,
    RETRIES_HEADER, long, now_seconds, retries_value,
};
use super::{PublishError, Publisher};
use crate::delivery::DeadLetterNote;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

impl Publisher {
    /// Sends a copy of `delivery` to the dead-letter exchange with headers that
    /// say why, under its original routing key. Original headers that would
    /// not fit RabbitMQ's frame size are dropped, and a header says so.
    #[tracing::instrument(name = "broker.dead_letter", level = "debug", skip_all, fields(reason = note.reason))]
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        note: &DeadLetterNote,
    ) -> Result<(), PublishError> {
        let mut copy = self.copy_of(delivery);
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
            copy.set(RETRIES_HEADER, retries_value(retries));
        }
        let routing_key = copy.original_routing_key.clone();
        let properties = self.fit(
            copy.properties(&delivery.properties, self.user.clone()),
            &copy.written,
        )?;
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
        let mut copy = self.copy_of(delivery);
        if retries > 0 {
            copy.set(RETRIES_HEADER, retries_value(retries));
        }
        let properties = self.fit(
            copy.properties(&delivery.properties, self.user.clone()),
            &copy.written,
        )?;
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
    /// [`ReplayCopy`](crate::broker::dead_letters::ReplayCopy)) to the login
    /// exchange, `mandatory`, and waits for the confirm: a replay that no
    /// queue takes is an error ([`PublishError::Unroutable`]), not a success.
    #[tracing::instrument(name = "broker.replay", level = "debug", skip_all)]
    pub async fn replay(
        &self,
        copy: &crate::broker::dead_letters::ReplayCopy,
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

    /// The copy of `delivery` this publisher would make.
    fn copy_of(&self, delivery: &Delivery) -> Copy {
        Copy::of(self.is_own_copy(delivery), Original::of(delivery))
    }
}
