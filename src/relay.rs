//! The outbox relay: makes sure every stored outcome is announced.
//!
//! The pipeline writes each outcome's ticket event into the outbox in the same
//! statement as the outcome, publishes it, and once RabbitMQ confirms it,
//! notes it [`Announced`]. This relay, which runs beside the consumer in every
//! worker session:
//!
//! - deletes the outbox rows of announced events, many in one statement, every
//!   [`FLUSH_EVERY`];
//! - every [`RelaySettings::every`], publishes (with confirms) the ticket
//!   events that nobody set out to publish for [`RelaySettings::after`]: their
//!   login event's delivery was lost to a crash, a dropped connection or
//!   RabbitMQ's delivery limit after the outcome was stored.
//!
//! Replicas share the work: each takes a batch of due rows and marks it
//! attempted, so the others skip it (`FOR UPDATE SKIP LOCKED`). A relayed event
//! may repeat one the pipeline published just before a crash; the contract
//! already asks consumers to dedupe on `eventID`.
//!
//! A relayed event has no live trace: its login event's delivery, and the
//! `traceparent` it came with, are gone. It goes out without trace headers
//! and starts no trace (see [`traces`](crate::observe::traces)); the
//! relay's own work is not exported either.

use crate::broker::Publisher;
use crate::observe::metrics::Metrics;
use crate::storage::{Announced, Announcement, StoreError, TicketStore};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often confirmed announcements are deleted from the outbox.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Announcements taken from the outbox per statement.
const BATCH: i64 = 200;

/// When the relay takes over from the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    /// An announcement nobody set out to publish for this long is relayed
    /// (`OUTBOX_RELAY_AFTER`).
    pub after: Duration,
    /// How often to look for such announcements.
    pub every: Duration,
}

impl RelaySettings {
    /// Relays after `after`, looking twice per `after` (but no more often
    /// than every 200 ms, and at least once a minute).
    pub fn new(after: Duration) -> RelaySettings {
        RelaySettings {
            after,
            every: (after / 2).clamp(Duration::from_millis(200), Duration::from_secs(60)),
        }
    }
}

/// Runs until `stop`, then deletes what was announced meanwhile one last time.
/// Deleting and relaying run side by side, so a relay pass waiting on
/// RabbitMQ never holds up the deletes.
pub async fn run(
    store: TicketStore,
    announced: Announced,
    publisher: Publisher,
    settings: RelaySettings,
    metrics: Metrics,
    stop: CancellationToken,
) {
    tokio::join!(
        flush_until(&store, &announced, &stop),
        relay_until(&store, &publisher, settings, &metrics, &stop),
    );
}

/// Deletes the outbox rows of announced events every [`FLUSH_EVERY`], and
/// once more at `stop`.
async fn flush_until(store: &TicketStore, announced: &Announced, stop: &CancellationToken) {
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = stop.cancelled() => true,
        };
        match flush(store, announced).await {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot delete announced ticket events from the outbox; keeping them to try again (the relay may announce them once more)");
            }
            Err(error) => tracing::debug!(%error, "deleting announced ticket events failed again"),
        }
        if stopping {
            return;
        }
    }
}

/// Relays due announcements every `settings.every` until `stop`.
async fn relay_until(
    store: &TicketStore,
    publisher: &Publisher,
    settings: RelaySettings,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    // One warning per run of failures: Postgres or RabbitMQ being down is
    // reported where it matters (the worker pauses or reconnects).
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.every) => {}
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            relayed = relay(store, publisher, settings.after) => match relayed {
                Ok(count) => {
                    failing = false;
                    metrics.relayed(count as u64);
                    if count > 0 {
                        tracing::info!(count, "announced stored outcomes whose ticket events had not been confirmed (from the outbox)");
                    }
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "relaying ticket events from the outbox failed; trying again every {}", humantime::format_duration(settings.every));
                }
                Err(error) => tracing::debug!(%error, "relaying ticket events from the outbox failed again"),
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Deletes the outbox rows of announced events; on failure keeps them for
/// the next flush (at worst, the relay announces them once more).
async fn flush(store: &TicketStore, announced: &Announced) -> Result<(), StoreError> {
    let ids = announced.take();
    if ids.is_empty() {
        return Ok(());
    }
    if let Err(error) = store.delete_announced(&ids).await {
        announced.restore(ids);
        return Err(error);
    }
    Ok(())
}

/// Publishes every due announcement; returns how many RabbitMQ confirmed.
async fn relay(
    store: &TicketStore,
    publisher: &Publisher,
    after: Duration,
) -> Result<usize, StoreError> {
    let mut relayed = 0;
    loop {
        let due = store.take_due_announcements(after, BATCH).await?;
        let full = due.len() as i64 == BATCH;
        let published = futures_util::future::join_all(due.iter().map(|a| publish(publisher, a)))
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<String>>();
        relayed += published.len();
        store.delete_announced(&published).await?;
        if !full || published.is_empty() {
            return Ok(relayed);
        }
    }
}

/// Publishes one announcement; its event id when RabbitMQ confirmed it.
async fn publish(publisher: &Publisher, announcement: &Announcement) -> Option<String> {
    match publisher.announcement(announcement).await {
        Ok(()) => Some(announcement.event_id.clone()),
        Err(error) => {
            tracing::debug!(%error, event_id = %announcement.event_id, "relaying a ticket event failed; it stays in the outbox");
            None
        }
    }
}
