//! The exchanges and queues, declared idempotently by every worker (and by
//! `publish`) at start and after each reconnect:
//!
//! ```text
//! taptalk.logins (topic) ──#──▶ taptalk.logins.ticket-worker (quorum, delivery limit)
//!                                   │ dead-lettered by the broker or the worker
//!                                   ▼
//!                        taptalk.logins.dlx (topic) ──#──▶ taptalk.logins.dead (quorum)
//! taptalk.tickets (topic): ticket.ready, ticket.failed
//! ```
//!
//! The work queue dead-letters **at least once** (`x-dead-letter-strategy:
//! at-least-once`, which RabbitMQ requires to come with `x-overflow:
//! reject-publish`): a message RabbitMQ dead-letters itself (the delivery
//! limit, a rejection) stays in the work queue until the dead-letter queue has
//! confirmed its copy, so it cannot be lost on the way, as it can with the
//! default at-most-once strategy. A work queue declared by an earlier version
//! without those arguments cannot be redeclared with them (RabbitMQ refuses a
//! change of arguments); it is then used as it is, with a warning naming the
//! policy that gives it the same strategy (see [`LEGACY_WORK_QUEUE`]).

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

/// What the log says when the work queue exists without at-least-once
/// dead-lettering (declared by an earlier version).
pub const LEGACY_WORK_QUEUE: &str = "the work queue exists without x-dead-letter-strategy=at-least-once (declared by an earlier version), so messages RabbitMQ dead-letters itself can be lost on the way to the dead-letter queue; give it the strategy with a policy (see docs/operating.md, 'Queues declared by an earlier version') or delete and redeclare the queue when it is empty";

/// How the work queue was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// With every argument this version declares.
    Current,
    /// With the arguments of an earlier version (no at-least-once
    /// dead-lettering); a policy can add it (see [`LEGACY_WORK_QUEUE`]).
    LegacyWorkQueue,
}

/// The names (and the delivery limit) of everything the worker declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub login_exchange: String,
    pub work_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub ticket_exchange: String,
    /// Deliveries of one message before the broker dead-letters it: the
    /// backstop for a message that crashes the worker itself.
    pub delivery_limit: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            login_exchange: "taptalk.logins".into(),
            work_queue: "taptalk.logins.ticket-worker".into(),
            dead_letter_exchange: "taptalk.logins.dlx".into(),
            dead_letter_queue: "taptalk.logins.dead".into(),
            ticket_exchange: "taptalk.tickets".into(),
            delivery_limit: 20,
        }
    }
}

impl Topology {
    /// The default names with `taptalk.` replaced by `taptalk.<scope>.`: a
    /// topology of its own for a demo or benchmark run, told apart from the
    /// real one by its names alone.
    pub fn scoped(scope: &str, delivery_limit: u32) -> Topology {
        let name = |rest: &str| format!("taptalk.{scope}.{rest}");
        Topology {
            login_exchange: name("logins"),
            work_queue: name("logins.ticket-worker"),
            dead_letter_exchange: name("logins.dlx"),
            dead_letter_queue: name("logins.dead"),
            ticket_exchange: name("tickets"),
            delivery_limit,
        }
    }

    /// Declares everything on channels of its own on `connection`. Safe to
    /// repeat; fails if a queue exists with other arguments, for example
    /// another delivery limit, except that a work queue declared by an earlier
    /// version (without at-least-once dead-lettering) is accepted as it is.
    #[tracing::instrument(name = "broker.declare_topology", skip_all, fields(work_queue = %self.work_queue))]
    pub async fn declare(&self, connection: &Connection) -> Result<Declared, lapin::Error> {
        let channel = connection.create_channel().await?;
        match self.declare_on(&channel, true).await {
            Ok(()) => {
                let _ = channel.close(200, "declared".into()).await;
                Ok(Declared::Current)
            }
            Err(error) if is_precondition_failed(&error) => {
                tracing::debug!(%error, "RabbitMQ refused the work queue's arguments; trying an earlier version's");
                // RabbitMQ closed that channel. The same arguments as before,
                // without the strategy: if the queue has those, go on with it.
                let channel = connection.create_channel().await?;
                // If it fails again, the queue differs in more (say, its delivery
                // limit), and this answer names what.
                self.declare_on(&channel, false).await?;
                let _ = channel.close(200, "declared".into()).await;
                Ok(Declared::LegacyWorkQueue)
            }
            Err(error) => Err(error),
        }
    }

    async fn declare_on(&self, channel: &Channel, at_least_once: bool) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for exchange in [
            &self.login_exchange,
            &self.dead_letter_exchange,
            &self.ticket_exchange,
        ] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // The dead-letter queue has no delivery limit (and no dead-letter
        // exchange of its own), on purpose: `dlq list` and `dlq replay` read
        // it without acknowledging and give back what they do not remove
        // (basic.nack with requeue), which counts as a redelivery. RabbitMQ
        // 3.x sets no delivery limit on a quorum queue unless asked, so those
        // returns count towards nothing and nothing is ever dropped. RabbitMQ
        // 4.x gives every quorum queue a default limit of 20 (4.0 to 4.2 count
        // every return towards it; from 4.3 a basic.nack does not count): there,
        // lift it with a policy (`delivery-limit: -1`, see docs/operating.md). Adding
        // the argument here would make RabbitMQ refuse to redeclare queues that
        // exist without it.
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue,
                quorum(),
            )
            .await?;
        self.bind(channel, &self.dead_letter_queue, &self.dead_letter_exchange)
            .await?;

        let mut work_arguments = quorum();
        work_arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        work_arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        if at_least_once {
            work_arguments.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            work_arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        channel
            .queue_declare(
                self.work_queue.as_str().into(),
                durable_queue,
                work_arguments,
            )
            .await?;
        self.bind(channel, &self.work_queue, &self.login_exchange)
            .await
    }

    /// Deletes everything `declare` made, messages included (tests, demos).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for queue in [&self.work_queue, &self.dead_letter_queue] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            &self.login_exchange,
            &self.dead_letter_exchange,
            &self.ticket_exchange,
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await?;
        }
        Ok(())
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
    ) -> Result<(), lapin::Error> {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

/// AMQP 406 PRECONDITION_FAILED: a queue exists with other arguments.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}
