//! Watching an exchange: a private queue (exclusive, deleted with its
//! channel) bound to it with `#` and consumed without acknowledgements. The
//! demo, the bench and the tests read ticket events this way; it never takes
//! a message from anybody else's queue.

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

/// Starts consuming everything published to `exchange` from now on.
pub async fn subscribe(channel: &Channel, exchange: &str) -> Result<Consumer, lapin::Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}
