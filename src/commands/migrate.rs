//! `ticket-worker migrate`: applies the embedded migrations and exits.

use super::{CommandError, secrets};
use crate::config::{DatabaseArgs, DatabaseSettings};
use crate::storage::TicketStore;

pub(super) async fn run(args: &DatabaseArgs) -> Result<(), CommandError> {
    let database = DatabaseSettings::from_args(args, None)?;
    secrets::register_database(&database);
    if database.pooling == crate::storage::Pooling::Transaction {
        return Err(crate::config::ConfigError::new(
            "DATABASE_POOLER",
            crate::storage::NEEDS_A_SESSION,
        )
        .into());
    }
    let store = TicketStore::connect_lazy_with_reader_role(&database.url, 1, &database.reader_role)
        .map_err(anyhow::Error::from)?;
    store.migrate().await.map_err(|e| {
        anyhow::anyhow!(
            "applying database migrations failed: {}",
            crate::storage::describe_migration(&e)
        )
    })?;
    tracing::info!("database migrations applied");
    // The reader's grants are made once, by the migration that runs first:
    // say so if READER_ROLE names someone else now.
    match store.ticket_readers().await {
        Ok(readers) => match crate::storage::reader_role_advice(&database.reader_role, &readers) {
            Some(advice) => {
                tracing::warn!(reader_role = %database.reader_role, readers = ?readers, "{advice}")
            }
            None => {
                tracing::info!(reader_role = %database.reader_role, "the reader role may read the tickets, and no other role may")
            }
        },
        Err(error) => {
            tracing::warn!(%error, "cannot check which roles may read the tickets")
        }
    }
    Ok(())
}
