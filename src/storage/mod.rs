//! Postgres storage: the connection pool, the migrations, and how storage
//! errors are sorted. The queries live beside it: [`tickets`] (the
//! `auth_tickets` rows app backends read), [`outcomes`] (the final outcome
//! of each event, which keeps every copy of an event ending the same way) and
//! [`outbox`] (the ticket event announcing each outcome, until it is
//! confirmed).

mod outbox;
mod outcomes;
mod tickets;

pub use outbox::{Announced, Announcement};
pub use outcomes::{Forgotten, Known, StoredFailure};
pub use tickets::Saved;

use crate::breaker::Failure;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The role app backends read tickets through, unless READER_ROLE names
/// another (the name the first migration used).
pub const DEFAULT_READER_ROLE: &str = "ticket_reader";

/// The custom session setting the migrations read the reader role's name
/// from (`current_setting('ticket_worker.reader_role', true)`).
pub const READER_ROLE_SETTING: &str = "ticket_worker.reader_role";

/// A storage failure, sorted by what the worker does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection dropped, the server restarted, the pool ran dry:
    /// trying again later can succeed.
    #[error("Postgres is unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Every event will fail the same way until an operator acts: a wrong
    /// password, a missing database, table or privilege.
    #[error(
        "Postgres refuses the worker's configuration: {0}; check DATABASE_URL, the migrations and the user's privileges"
    )]
    Misconfigured(String),
    /// Anything else: a bug, a row that makes no sense.
    #[error("Postgres query failed: {0}")]
    Failed(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// What the error says about Postgres as a whole; `None` when it concerns
    /// one event only.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            StoreError::Unavailable(error) => Some(Failure::Transient(error.to_string())),
            StoreError::Misconfigured(reason) => Some(Failure::Misconfigured(reason.clone())),
            StoreError::Failed(_) => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        // sqlx's Display shows the server's message only, never row contents
        // (which could include a ticket).
        if is_transient(&error) {
            StoreError::Unavailable(error)
        } else if is_misconfiguration(&error) {
            StoreError::Misconfigured(error.to_string())
        } else {
            StoreError::Failed(error.to_string())
        }
    }
}

/// Whether a sqlx error means the worker's database setup is wrong: SQLSTATE
/// class 28 (authorization), 3D (no such database), 42 (no such table or
/// column, no privilege), or a bad connection option.
pub(crate) fn is_misconfiguration(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Configuration(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("28") || code.starts_with("3D") || code.starts_with("42")
        }),
        _ => false,
    }
}

/// Whether a sqlx error is worth retrying.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources;
            // 57P01-57P03: admin shutdown, crash shutdown, cannot connect now;
            // 40001/40P01: serialization failure, deadlock;
            // 25006: read-only transaction (a failover in progress).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "25006"
                )
        }),
        _ => false,
    }
}

/// The ticket table, behind a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TicketStore {
    pool: PgPool,
}

impl TicketStore {
    /// A pool for `database_url` that connects lazily, so a worker can start
    /// (and wait) while Postgres is still coming up. Migrations applied
    /// through it grant reading to [`DEFAULT_READER_ROLE`].
    pub fn connect_lazy(
        database_url: &SecretString,
        max_connections: u32,
    ) -> Result<TicketStore, sqlx::Error> {
        TicketStore::connect_lazy_with_reader_role(
            database_url,
            max_connections,
            DEFAULT_READER_ROLE,
        )
    }

    /// Like [`TicketStore::connect_lazy`], for a pool whose migrations grant
    /// reading to `reader_role` (a checked READER_ROLE): its connections
    /// carry the name as the session setting [`READER_ROLE_SETTING`].
    pub fn connect_lazy_with_reader_role(
        database_url: &SecretString,
        max_connections: u32,
        reader_role: &str,
    ) -> Result<TicketStore, sqlx::Error> {
        let mut options = PgConnectOptions::from_str(database_url.expose_secret())?
            .application_name("ticket-worker");
        // The default goes without saying (the migrations fall back to it),
        // so that connection poolers that refuse the `options` startup
        // parameter keep working for everybody who does not choose a name.
        if reader_role != DEFAULT_READER_ROLE {
            options = options.options([(READER_ROLE_SETTING, reader_role)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            // No ping before every statement: a dead connection fails its
            // statement instead, which the pipeline retries on another one.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Ok(TicketStore { pool })
    }

    pub fn from_pool(pool: PgPool) -> TicketStore {
        TicketStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations (idempotent; replicas starting together
    /// serialise on a Postgres advisory lock).
    #[tracing::instrument(name = "storage.migrate", skip_all)]
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Checks, without side effects, that the worker can use its tables: the
    /// connection works and the user may read and write them.
    #[tracing::instrument(name = "storage.probe", skip_all)]
    pub async fn probe(&self) -> Result<(), StoreError> {
        let allowed: bool = sqlx::query_scalar(
            "SELECT has_table_privilege('auth_tickets', 'SELECT, INSERT')
                AND has_table_privilege('event_outcomes', 'SELECT, INSERT')
                AND has_table_privilege('ticket_event_outbox', 'SELECT, INSERT, UPDATE, DELETE')",
        )
        .fetch_one(&self.pool)
        .await?;
        if allowed {
            Ok(())
        } else {
            Err(StoreError::Misconfigured(
                "the database user may not SELECT and INSERT on auth_tickets and event_outcomes, and SELECT, INSERT, UPDATE and DELETE on ticket_event_outbox"
                    .into(),
            ))
        }
    }
}
