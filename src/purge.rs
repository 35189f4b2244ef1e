//! Purging: deletes tickets long after they expired, so `auth_tickets` does
//! not grow forever. Every replica runs it; deleting is idempotent, so
//! replicas racing each other only repeat an empty `DELETE`.

use crate::shutdown::Shutdown;
use crate::storage::TicketStore;
use std::time::Duration;

/// When and what to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// Rows whose ticket expired more than this long ago are deleted.
    pub after: Duration,
    /// How often to look.
    pub every: Duration,
}

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// Purges every `settings.every` until shutdown.
pub async fn run(store: TicketStore, settings: PurgeSettings, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.every) => {}
            _ = shutdown.triggered() => return,
        }
        match store.purge_expired(settings.after, BATCH).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged expired tickets"),
            Err(error) => {
                tracing::warn!(%error, "purging expired tickets failed; trying again later")
            }
        }
    }
}
