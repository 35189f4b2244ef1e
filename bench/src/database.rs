//! The run's own Postgres database, `ticket_bench_<id>`, on the server of
//! `DATABASE_URL`: created and migrated by the bench, counted, and dropped
//! `WITH (FORCE)` at the end.
//!
//! **Commits per event** come from `pg_stat_database` (`xact_commit` and
//! `xact_rollback` of this database). Postgres 15 and later keep a
//! backend's counts in the backend and flush them with a delay (at most
//! once a second, and an idle backend only after ten), but always when the
//! backend exits, before it leaves `pg_stat_activity`. So the counts are
//! read when no backend is connected to the database: after the replicas
//! have exited and the bench's own connections are closed. A phase's
//! commits are then exact: everything its replicas did, start-up and
//! shutdown included (a handful per replica).

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Transactions Postgres counted for the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transactions {
    pub commits: i64,
    pub rollbacks: i64,
}

impl Transactions {
    pub(crate) fn since(self, earlier: Transactions) -> Transactions {
        Transactions {
            commits: self.commits - earlier.commits,
            rollbacks: self.rollbacks - earlier.rollbacks,
        }
    }
}

/// The database of one run, and a connection to the server's database
/// `DATABASE_URL` names, to create, watch and drop it from.
pub(crate) struct BenchDatabase {
    pub name: String,
    /// `DATABASE_URL` with the run's database in place of the configured one.
    pub url: SecretString,
    admin: PgPool,
}

impl BenchDatabase {
    /// The name for run `id`.
    pub(crate) fn name_for(id: &str) -> String {
        format!("ticket_bench_{id}")
    }

    /// A handle on the server; creates nothing yet.
    pub(crate) fn new(admin_url: &SecretString, id: &str) -> anyhow::Result<BenchDatabase> {
        let name = BenchDatabase::name_for(id);
        let options = PgConnectOptions::from_str(admin_url.expose_secret())
            .context("DATABASE_URL is not a valid Postgres URL")?
            .application_name("ticket-bench");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let mut url = url::Url::parse(admin_url.expose_secret())
            .context("DATABASE_URL is not a valid URL")?;
        url.set_path(&format!("/{name}"));
        Ok(BenchDatabase {
            name,
            url: SecretString::from(url.to_string()),
            admin,
        })
    }

    /// Creates the database and applies the migrations.
    pub(crate) async fn create(&self, reader_role: &str) -> anyhow::Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", self.name)))
            .execute(&self.admin)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the database {} on the DATABASE_URL server: {}; the DATABASE_URL user needs the CREATEDB privilege",
                    self.name,
                    ticket_worker::storage::describe(&e)
                )
            })?;
        let store = ticket_worker::storage::TicketStore::connect_lazy_with_reader_role(
            &self.url,
            1,
            reader_role,
        )
        .context("the bench database's URL")?;
        let migrated = store.migrate().await;
        store.pool().close().await;
        migrated.map_err(|e| {
            anyhow::anyhow!(
                "applying the migrations to {} failed: {}",
                self.name,
                ticket_worker::storage::describe_migration(&e)
            )
        })
    }

    /// Waits until no backend is connected to the database (so that every
    /// backend has flushed its statistics); `false` if some still are after
    /// `within`.
    pub(crate) async fn settle(&self, within: Duration) -> anyhow::Result<bool> {
        let started = Instant::now();
        loop {
            let connected: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                    .bind(&self.name)
                    .fetch_one(&self.admin)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot read pg_stat_activity: {}",
                            ticket_worker::storage::describe(&e)
                        )
                    })?;
            if connected == 0 {
                return Ok(true);
            }
            if started.elapsed() > within {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What `pg_stat_database` counts for the database now.
    pub(crate) async fn transactions(&self) -> anyhow::Result<Transactions> {
        let (commits, rollbacks): (i64, i64) = sqlx::query_as(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.admin)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read pg_stat_database: {}",
                ticket_worker::storage::describe(&e)
            )
        })?;
        Ok(Transactions { commits, rollbacks })
    }

    /// Rows in `auth_tickets` (one per event issued), on a connection of
    /// its own, closed again.
    pub(crate) async fn tickets(&self) -> anyhow::Result<i64> {
        let mut connection = PgConnection::connect(self.url.expose_secret())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to {}: {}",
                    self.name,
                    ticket_worker::storage::describe(&e)
                )
            })?;
        let rows = sqlx::query_scalar("SELECT count(*) FROM auth_tickets")
            .fetch_one(&mut connection)
            .await;
        let _ = connection.close().await;
        rows.map_err(|e| {
            anyhow::anyhow!(
                "cannot count auth_tickets: {}",
                ticket_worker::storage::describe(&e)
            )
        })
    }

    /// Drops the database, ending its connections.
    pub(crate) async fn drop_database(&self) -> Result<(), crate::error::CleanUpError> {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&self.admin)
            .await
            .map(|_| ())
            .map_err(|e| {
                crate::error::CleanUpError::Postgres(ticket_worker::storage::describe(&e))
            });
        self.admin.close().await;
        dropped
    }
}
