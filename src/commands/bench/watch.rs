//! Watching for answers: a private queue bound to the ticket exchange,
//! consumed without acknowledgements, as an app backend would listen. Each
//! `ticket.ready` or `ticket.failed` is matched to its login event by its
//! `correlation_id` (the `eventID`, which the worker sets on every ticket
//! event) and its arrival is written in the ledger.

use super::ledger::{Answer, Ledger};
use crate::broker::Topology;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Starts consuming the ticket events of `topology` into `ledger`.
pub async fn watch(
    channel: &Channel,
    topology: &Topology,
    ledger: Arc<Ledger>,
) -> Result<JoinHandle<()>, lapin::Error> {
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
            topology.ticket_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let answer = match delivery.routing_key.as_str() {
                "ticket.ready" => Answer::Ready,
                _ => Answer::Failed,
            };
            let id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.as_str())
                .unwrap_or_default();
            ledger.mark_answered(id, answer);
        }
    }))
}
