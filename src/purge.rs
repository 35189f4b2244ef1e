//! Purging: deletes events (their ticket and their outcome) long after the
//! ticket expired, so the tables do not grow forever. Every replica runs it;
//! deleting is idempotent, so replicas racing each other only repeat an
//! empty `DELETE`.

use crate::shutdown::Shutdown;
use crate::storage::TicketStore;
use std::time::Duration;

/// When and what to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// Events whose ticket expired more than this long ago are deleted.
    pub after: Duration,
    /// How often to look.
    pub every: Duration,
}

/// Events deleted per statement, so no statement holds many locks.
pub const BATCH: i64 = 5_000;

/// Purges every `settings.every` until shutdown.
pub async fn run(store: TicketStore, settings: PurgeSettings, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.every) => {}
            _ = shutdown.triggered() => return,
        }
        match purge(&store, settings.after, BATCH, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged expired tickets"),
            Err(error) => {
                tracing::warn!(%error, "purging expired tickets failed; trying again later")
            }
        }
    }
}

/// Deletes batch after batch until none is full, or shutdown is asked for.
pub async fn purge(
    store: &TicketStore,
    after: Duration,
    batch: i64,
    shutdown: &Shutdown,
) -> Result<u64, crate::storage::StoreError> {
    let mut total = 0;
    while !shutdown.is_triggered() {
        let purged = store.purge_batch(after, batch).await?;
        total += purged.events;
        if purged.unannounced > 0 {
            // The outbox relay tried for a day: RabbitMQ never confirmed them.
            tracing::warn!(
                events = purged.unannounced,
                "purged events whose ticket event RabbitMQ never confirmed; their consumers were never told"
            );
        }
        if purged.events < u64::try_from(batch).unwrap_or(u64::MAX) {
            break;
        }
    }
    Ok(total)
}
