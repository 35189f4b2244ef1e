//! Postgres storage of tickets: the `auth_tickets` table, its migrations, and
//! the two queries the pipeline needs (look an event up, save its ticket).

use crate::breaker::Failure;
use crate::domain::{AuthTicket, EventId, Platform, TicketRecord};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, migrate::Migrator};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

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
fn is_misconfiguration(error: &sqlx::Error) -> bool {
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

/// Whether `save` wrote the row or found one already there.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// This call stored the ticket.
    Inserted(TicketRecord),
    /// The event already had a ticket (a redelivery, or another replica won a
    /// race); this is the stored one, and the new ticket was not kept.
    Existing(TicketRecord),
}

impl Saved {
    pub fn record(&self) -> &TicketRecord {
        match self {
            Saved::Inserted(record) | Saved::Existing(record) => record,
        }
    }
}

/// The ticket table, behind a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TicketStore {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct Row {
    event_id: String,
    xc_user_id: String,
    user_id: String,
    user_device_id: String,
    user_platform: String,
    ticket: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl TryFrom<Row> for TicketRecord {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<TicketRecord, StoreError> {
        let corrupt =
            |what: &str| StoreError::Failed(format!("auth_tickets row has an invalid {what}"));
        Ok(TicketRecord {
            event_id: EventId::parse(&row.event_id).map_err(|_| corrupt("event_id"))?,
            platform: Platform::parse(&row.user_platform)
                .ok_or_else(|| corrupt("user_platform"))?,
            xc_user_id: row.xc_user_id,
            user_id: row.user_id,
            user_device_id: row.user_device_id,
            ticket: AuthTicket::new(row.ticket),
            issued_at: row.issued_at,
            expires_at: row.expires_at,
        })
    }
}

impl TicketStore {
    /// A pool for `database_url` that connects lazily, so a worker can start
    /// (and wait) while Postgres is still coming up.
    pub fn connect_lazy(
        database_url: &SecretString,
        max_connections: u32,
    ) -> Result<TicketStore, sqlx::Error> {
        let options = PgConnectOptions::from_str(database_url.expose_secret())?
            .application_name("ticket-worker");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
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

    /// Checks, without side effects, that the worker can use the table: the
    /// connection works and the user may read and write `auth_tickets`.
    #[tracing::instrument(name = "storage.probe", skip_all)]
    pub async fn probe(&self) -> Result<(), StoreError> {
        let allowed: bool =
            sqlx::query_scalar("SELECT has_table_privilege('auth_tickets', 'SELECT, INSERT')")
                .fetch_one(&self.pool)
                .await?;
        if allowed {
            Ok(())
        } else {
            Err(StoreError::Misconfigured(
                "the database user may not SELECT and INSERT on auth_tickets".into(),
            ))
        }
    }

    /// The stored ticket of an event, if it has one.
    #[tracing::instrument(name = "storage.find", skip_all, fields(event_id = %event_id))]
    pub async fn find(&self, event_id: &EventId) -> Result<Option<TicketRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at
             FROM auth_tickets WHERE event_id = $1",
        )
        .bind(event_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(TicketRecord::try_from).transpose()
    }

    /// Deletes tickets that expired more than `older_than` ago, `batch` rows
    /// per statement so no statement holds many locks; returns how many went.
    #[tracing::instrument(name = "storage.purge_expired", skip(self))]
    pub async fn purge_expired(&self, older_than: Duration, batch: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM auth_tickets WHERE event_id IN (
                     SELECT event_id FROM auth_tickets
                     WHERE expires_at < now() - make_interval(secs => $1)
                     LIMIT $2)",
            )
            .bind(older_than.as_secs_f64())
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += deleted;
            if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
    }

    /// The stored tickets of several events, oldest first.
    #[tracing::instrument(name = "storage.find_many", skip_all, fields(events = event_ids.len()))]
    pub async fn find_many(&self, event_ids: &[EventId]) -> Result<Vec<TicketRecord>, StoreError> {
        let ids: Vec<String> = event_ids.iter().map(ToString::to_string).collect();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at
             FROM auth_tickets WHERE event_id = ANY($1) ORDER BY issued_at, event_id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TicketRecord::try_from).collect()
    }

    /// Stores a ticket unless the event already has one. One statement, so one
    /// transaction: the row is either fully there or not at all.
    #[tracing::instrument(name = "storage.save", skip_all, fields(event_id = %record.event_id))]
    pub async fn save(&self, record: &TicketRecord) -> Result<Saved, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO auth_tickets
                (event_id, xc_user_id, user_id, user_device_id, user_platform, ticket, issued_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(record.event_id.as_str())
        .bind(&record.xc_user_id)
        .bind(&record.user_id)
        .bind(&record.user_device_id)
        .bind(record.platform.as_str())
        .bind(record.ticket.expose())
        .bind(record.issued_at)
        .bind(record.expires_at)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            return Ok(Saved::Inserted(record.clone()));
        }
        // Another delivery stored this event first. Read its row in a new
        // statement, whose snapshot sees that commit.
        match self.find(&record.event_id).await? {
            Some(existing) => Ok(Saved::Existing(existing)),
            None => Err(StoreError::Failed(format!(
                "event {} conflicted with a row that is gone (purged meanwhile?)",
                record.event_id
            ))),
        }
    }
}
