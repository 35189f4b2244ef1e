//! `ticket-worker migrate`: applies the embedded migrations and exits.

use super::{CommandError, secrets};
use crate::config::{DatabaseArgs, DatabaseSettings};
use crate::storage::TicketStore;

pub async fn run(args: &DatabaseArgs) -> Result<(), CommandError> {
    let database = DatabaseSettings::from_args(args, None)?;
    secrets::register_database(&database);
    let store = TicketStore::connect_lazy_with_reader_role(&database.url, 1, &database.reader_role)
        .map_err(anyhow::Error::from)?;
    store.migrate().await.map_err(|e| {
        anyhow::anyhow!(
            "applying database migrations failed: {}",
            crate::storage::describe_migration(&e)
        )
    })?;
    tracing::info!("database migrations applied");
    Ok(())
}
