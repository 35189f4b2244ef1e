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

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

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
    /// Declares everything. Safe to repeat; fails (and closes the channel) if a
    /// queue exists with other arguments, for example another delivery limit.
    #[tracing::instrument(name = "broker.declare_topology", skip_all, fields(work_queue = %self.work_queue))]
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
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
        // lift it with a policy (`delivery-limit: -1`, see the README). Adding
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

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}
