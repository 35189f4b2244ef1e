//! Watching an exchange: a private queue (exclusive, deleted with its
//! channel) bound to it with `#` and consumed without acknowledgements. The
//! demo, the bench and the tests read ticket events this way; it never takes
//! a message from anybody else's queue.

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

/// Starts consuming everything published to `exchange` from now on.
pub async fn subscribe(channel: &Channel, exchange: &str) -> Result<Consumer, lapin::Error> {
    subscribe_with(channel, exchange, FieldTable::default()).await
}

/// As [`subscribe`], on a queue that holds at most `max_length` messages,
/// dropping the oldest beyond: a reader that stops reading (a paused
/// terminal) must not fill the broker's memory and block every publisher.
pub async fn subscribe_bounded(
    channel: &Channel,
    exchange: &str,
    max_length: u32,
) -> Result<Consumer, lapin::Error> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongUInt(max_length),
    );
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("drop-head".into()),
    );
    subscribe_with(channel, exchange, arguments).await
}

async fn subscribe_with(
    channel: &Channel,
    exchange: &str,
    arguments: FieldTable,
) -> Result<Consumer, lapin::Error> {
    let queue = super::connection::within(
        "declaring a private queue",
        channel.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await?;
    super::connection::within(
        "binding the private queue",
        channel.queue_bind(
            queue.name().clone(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    super::connection::within(
        "consuming the private queue",
        channel.basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}
