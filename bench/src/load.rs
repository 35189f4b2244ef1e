//! The load generator: publishes a phase's login events to the login
//! exchange as a login service would (persistent, `message_id` = `eventID`,
//! `mandatory`, publisher confirms), either all at once or at a fixed rate.
//! Confirms are awaited by a task of their own, in order, so publishing
//! never waits for one unless many thousands are outstanding. Each event's
//! `occurredAt` and its entry in the ledger are the instant it is handed to
//! the client library.

use super::cases::Load;
use super::events::EventBody;
use super::ledger::Ledger;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use ticket_worker::broker::short;
use ticket_worker::time::Later;
use tokio::task::JoinHandle;

/// Confirms outstanding before publishing waits for the oldest.
const WINDOW: usize = 16_384;

/// Publishes every body to `exchange` as `load` says; the ledger records
/// each publish and each confirm. Ends when every confirm is in.
pub(crate) async fn publish(
    channel: Channel,
    exchange: String,
    mut bodies: Vec<EventBody>,
    load: Load,
    ledger: Arc<Ledger>,
) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (confirms, mut to_await) = tokio::sync::mpsc::channel::<PublisherConfirm>(WINDOW);
    let tally = Arc::clone(&ledger);
    let awaiting: JoinHandle<anyhow::Result<()>> = tokio::spawn(async move {
        while let Some(confirm) = to_await.recv().await {
            match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {
                    tally.confirmed.fetch_add(1, Ordering::Relaxed)
                }
                Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        Ok(())
    });
    let start = tokio::time::Instant::now();
    let period = match load {
        Load::Burst { .. } => None,
        Load::Rate { per_second, .. } => Some(Duration::from_secs_f64(1.0 / per_second)),
    };
    for (index, body) in bodies.iter_mut().enumerate() {
        if let Some(period) = period {
            let due = start.later_by(period.mul_f64(index as f64));
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        let at = ledger.now();
        body.stamp(chrono::Utc::now());
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(short(&body.id))
            .with_app_id("ticket-bench".into());
        ledger.mark_published(index, at);
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                "login".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body.bytes,
                properties,
            )
            .await?;
        if confirms.send(confirm).await.is_err() {
            break;
        }
    }
    drop(confirms);
    awaiting.await?
}
