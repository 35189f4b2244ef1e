//! Watching for answers: a private queue bound to the ticket exchange,
//! consumed without acknowledgements, as an app backend would listen. Each
//! `ticket.ready` or `ticket.failed` is matched to its login event by its
//! `correlation_id` (the `eventID`, which the worker sets on every ticket
//! event) and its arrival is written in the ledger.

use super::ledger::{Answer, Ledger};
use futures_util::StreamExt;
use lapin::Channel;
use std::sync::Arc;
use ticket_worker::broker::Topology;
use tokio::task::JoinHandle;

/// Starts consuming the ticket events of `topology` into `ledger`.
pub(crate) async fn watch(
    channel: &Channel,
    topology: &Topology,
    ledger: Arc<Ledger>,
) -> Result<JoinHandle<()>, lapin::Error> {
    let mut consumer =
        ticket_worker::broker::tap::subscribe(channel, topology.ticket_exchange.as_str()).await?;
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
