//! Postgres storage: the connection pool, the migrations, and how storage
//! errors are sorted and worded. The queries live beside it: `tickets.rs` (the
//! `auth_tickets` rows app backends read), `outcomes.rs` (the final outcome
//! of each event, which keeps every copy of an event ending the same way),
//! `outbox.rs` (the ticket event announcing each outcome, until it is
//! confirmed), `replays.rs` (clearing a recorded failure for `dlq replay`)
//! and `rows.rs` (rows into domain values). [`BatchedStore`] is the
//! store as the pipeline uses it: the lookups and saves of all events in
//! flight folded into one statement each (`batcher.rs`, a group commit).
//!
//! Errors from Postgres reach logs and the command line through [`describe`]
//! and [`describe_migration`], not through sqlx's `Display`: that one appends
//! the error's `line` field, which is a line of the *server's* C source
//! (`database "x" does not exist at line 948`) and reads like a line of our
//! migrations. [`describe`] writes the SQLSTATE code, the message and the
//! hint, the detail only where it cannot quote row data, and says which
//! setting to fix when the code points at DATABASE_URL.

mod batched;
mod batcher;
pub mod hosts;
mod outbox;
mod outcomes;
mod quota;
mod replays;
mod rows;
mod tickets;

pub use batched::BatchedStore;
pub use outbox::{Announced, Announcement};
pub use outcomes::{FailedFor, Forgotten, Known, Purged, StoredFailure, body_digest};
pub use replays::{Cleared, ReplayState};
pub use tickets::Saved;

use crate::health::Failure;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The role app backends read tickets through, unless READER_ROLE names
/// another (the name the first migration used).
pub const DEFAULT_READER_ROLE: &str = "ticket_reader";

/// The custom session setting the migrations read the reader role's name
/// from (`current_setting('ticket_worker.reader_role', true)`).
pub const READER_ROLE_SETTING: &str = "ticket_worker.reader_role";

/// The longest any statement may take, as the worker waits for it: a
/// statement Postgres does not answer (a lock wait, a stalled server, a
/// connection whose peer vanished) would otherwise hold its events, and
/// through the group commit every event behind them, for ever, silently.
/// Its connection is closed, never reused. Postgres itself cancels a
/// statement a little sooner ([`SERVER_TIMEOUTS`]), which leaves the
/// connection usable.
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(15);

/// Set on every connection of the worker's pool: Postgres cancels a
/// statement after 10 s (SQLSTATE 57014) and a wait for a lock after 5 s
/// (55P03), both retried as transient. Migrations run without them.
/// The longest the migrations may take, their wait for another replica's
/// included.
pub const MIGRATION_DEADLINE: Duration = Duration::from_secs(600);

/// See [`STATEMENT_DEADLINE`].
pub const SERVER_TIMEOUTS: &str = "SET statement_timeout = '10s'; SET lock_timeout = '5s'";

/// How the worker reaches Postgres (`DATABASE_POOLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Straight to Postgres (or a pooler in session mode): a connection is a
    /// session, statements are prepared once and cached, the statement
    /// timeouts are set once per connection.
    #[default]
    Direct,
    /// Through a pooler in transaction mode (PgBouncer's `pool_mode =
    /// transaction`): a server connection is ours for one transaction only,
    /// so nothing may outlive one. Every statement runs in a transaction of
    /// its own, as an unnamed prepared statement (a named one would stay on
    /// a server connection that another client gets next), with its
    /// timeouts `SET LOCAL`; and no session settings at all.
    Transaction,
}

impl Pooling {
    /// `none` or `transaction`.
    pub fn parse(raw: &str) -> Option<Pooling> {
        match raw.trim() {
            "" | "none" => Some(Pooling::Direct),
            "transaction" => Some(Pooling::Transaction),
            _ => None,
        }
    }
}

/// Why migrations cannot run through a pooler in transaction mode, and what
/// to do.
pub const NEEDS_A_SESSION: &str = "DATABASE_POOLER=transaction: migrations need a session of their own (they hold an advisory lock across statements, which a pooler in transaction mode does not keep); run `ticket-worker migrate` with a DATABASE_URL straight to Postgres, and the workers with SKIP_MIGRATIONS=true";

/// What a statement's own transaction starts with, through a pooler in
/// transaction mode (see [`Pooling::Transaction`]).
pub const POOLED_BEGIN: &str =
    "BEGIN; SET LOCAL statement_timeout = '10s'; SET LOCAL lock_timeout = '5s'";

/// Runs one statement on a connection of `store`'s pool, within
/// [`STATEMENT_DEADLINE`]; the connection is closed if the deadline passes.
/// `$body` uses the connection as `&mut *$conn`, and prepares its statement
/// with `.persistent($persistent)`: cached on a direct connection, unnamed
/// and in a transaction of its own through a pooler in transaction mode.
macro_rules! bounded {
    ($store:expr, |$conn:ident, $persistent:ident| $body:expr) => {{
        let store = &$store;
        let mut $conn = store.pool().acquire().await.map_err(|error| {
            store.suspect(&error);
            $crate::storage::StoreError::from(error)
        })?;
        let $persistent = store.pooling() == $crate::storage::Pooling::Direct;
        let run = async {
            if !$persistent {
                ::sqlx::raw_sql($crate::storage::POOLED_BEGIN)
                    .execute(&mut *$conn)
                    .await?;
            }
            let result = $body.await;
            if !$persistent {
                let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
                ::sqlx::raw_sql(end).execute(&mut *$conn).await?;
            }
            result
        };
        match ::tokio::time::timeout($crate::storage::STATEMENT_DEADLINE, run).await {
            Ok(result) => result.map_err(|error| {
                store.suspect(&error);
                $crate::storage::StoreError::from(error)
            }),
            Err(_) => {
                $conn.close_on_drop();
                Err($crate::storage::StoreError::no_answer(module_path!()))
            }
        }
    }};
}
pub(crate) use bounded;

/// A storage failure, sorted by what the worker does about it. Cloneable,
/// so that one failed batch statement answers every event in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The connection dropped, the server restarted, the pool ran dry:
    /// trying again later can succeed.
    #[error("Postgres is unavailable: {0}")]
    Unavailable(String),
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
    /// Postgres gave no answer within [`STATEMENT_DEADLINE`], in `place`.
    pub fn no_answer(place: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "Postgres did not answer a statement within {}s ({place}); its connection is closed",
            STATEMENT_DEADLINE.as_secs()
        ))
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// What the error says about Postgres as a whole; `None` when it concerns
    /// one event only.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            StoreError::Unavailable(reason) => Some(Failure::Transient(reason.clone())),
            StoreError::Misconfigured(reason) => Some(Failure::Misconfigured(reason.clone())),
            StoreError::Failed(_) => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        // `describe` never shows row contents (which could include a ticket).
        if is_transient(&error) {
            StoreError::Unavailable(describe(&error))
        } else if is_misconfiguration(&error) {
            StoreError::Misconfigured(describe(&error))
        } else {
            StoreError::Failed(describe(&error))
        }
    }
}

/// A sqlx error in words for an operator: for an error from Postgres, its
/// message, SQLSTATE code, hint and (where it holds no row data) detail,
/// without the server's source line; for anything else, sqlx's own message.
pub fn describe(error: &sqlx::Error) -> String {
    let database = match error {
        sqlx::Error::Database(database) => database,
        // Ours are in words already (`DATABASE_URL → …`, a deadline).
        sqlx::Error::Io(io) if io.get_ref().is_some() => return io.to_string(),
        _ => return error.to_string(),
    };
    match database.try_downcast_ref::<PgDatabaseError>() {
        Some(postgres) => describe_postgres(
            postgres.code(),
            postgres.message(),
            postgres.detail(),
            postgres.hint(),
        ),
        None => describe_postgres(
            database.code().as_deref().unwrap_or("?????"),
            database.message(),
            None,
            None,
        ),
    }
}

/// How long [`TicketStore::why_unreachable`] asks the server.
const ASK_WITHIN: Duration = Duration::from_secs(3);

/// Why one connection attempt failed, in an operator's words.
fn connect_cause(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
            _ => io.to_string(),
        },
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        other => describe(other),
    }
}

/// A migration failure in words for an operator, like [`describe`].
/// (sqlx calls a failure to connect "while executing migrations" too: that
/// prefix is left out, and a failing migration is named by its version.)
pub fn describe_migration(error: &MigrateError) -> String {
    match error {
        MigrateError::Execute(error) => describe(error),
        MigrateError::ExecuteMigration(error, version) => {
            format!("migration {version} failed: {}", describe(error))
        }
        other => other.to_string(),
    }
}

/// The words of one Postgres error. Detail is left out for SQLSTATE classes
/// 22 (data exception) and 23 (integrity constraint violation), where Postgres
/// quotes values in it (`Key (event_id)=(…) already exists`, `Failing row
/// contains (…)`); a class-22 message can quote the refused value too, so
/// only the code is given for it.
fn describe_postgres(
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> String {
    let class = code.get(..2).unwrap_or_default();
    let mut text = if class == "22" {
        format!(
            "Postgres refused a value (SQLSTATE {code}, a data exception; its message is withheld as it can quote the value)"
        )
    } else {
        format!("{message} (SQLSTATE {code})")
    };
    if let Some(detail) = detail.filter(|_| !matches!(class, "22" | "23")) {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = hint {
        text.push_str(&format!("; hint: {hint}"));
    }
    let advice = match code {
        "3D000" => Some(
            "DATABASE_URL names a database that does not exist on this server: create it, or correct DATABASE_URL",
        ),
        "28P01" => Some("check the user name and password in DATABASE_URL"),
        _ if class == "28" => Some(
            "the server refuses this login: check the user in DATABASE_URL and the server's pg_hba.conf",
        ),
        "42501" => Some("the user in DATABASE_URL lacks this privilege"),
        _ => None,
    };
    if let Some(advice) = advice {
        text.push_str("; ");
        text.push_str(advice);
    }
    text
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
            // 25006: read-only transaction (a failover in progress);
            // 57014, 55P03: statement_timeout, lock_timeout (SERVER_TIMEOUTS).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "25006" | "57014" | "55P03"
                )
        }),
        _ => false,
    }
}

/// The ticket table, behind a connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TicketStore {
    pool: PgPool,
    /// With several servers in DATABASE_URL (or a target_session_attrs),
    /// the pool of the one the worker is on; `pool` is then unused.
    switch: Option<Arc<hosts::Switch>>,
    pooling: Pooling,
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
        TicketStore::connect_lazy_observed(
            database_url,
            max_connections,
            reader_role,
            Pooling::Direct,
            || {},
        )
    }

    /// As [`TicketStore::connect_lazy_with_reader_role`], calling `opened`
    /// for every connection the pool opens (the worker counts reconnects).
    pub fn connect_lazy_observed(
        database_url: &SecretString,
        max_connections: u32,
        reader_role: &str,
        pooling: Pooling,
        opened: impl Fn() + Send + Sync + 'static,
    ) -> Result<TicketStore, sqlx::Error> {
        let targets = hosts::Targets::parse(database_url.expose_secret())
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
        let attrs = targets.attrs;
        let reader_role = reader_role.to_owned();
        let opened: Arc<dyn Fn() + Send + Sync> = Arc::new(opened);
        let make_pool = move |options: PgConnectOptions| {
            // No `extra_float_digits` startup parameter (sqlx's default sends
            // one, which PgBouncer refuses unless told to ignore it): the
            // worker reads no floats as text.
            let mut options = options
                .application_name("ticket-worker")
                .extra_float_digits(None);
            // The default goes without saying (the migrations fall back to
            // it), so that connection poolers that refuse the `options`
            // startup parameter keep working for everybody who does not
            // choose a name. Through a pooler in transaction mode nothing
            // migrates, and nothing may be set per session.
            if reader_role != DEFAULT_READER_ROLE && pooling == Pooling::Direct {
                options = options.options([(READER_ROLE_SETTING, reader_role.as_str())]);
            }
            let opened = Arc::clone(&opened);
            PgPoolOptions::new()
                .max_connections(max_connections)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(5))
                // No ping before every statement: a dead connection fails its
                // statement instead, which the pipeline retries on another one.
                .test_before_acquire(false)
                .after_connect(move |connection, _| {
                    opened();
                    Box::pin(async move {
                        // A server that cannot take the worker's writes (see
                        // `hosts`) gets no connection into the pool.
                        hosts::Targets::check(attrs, connection).await?;
                        if pooling == Pooling::Direct {
                            sqlx::raw_sql(SERVER_TIMEOUTS).execute(connection).await?;
                        }
                        Ok(())
                    })
                })
                .connect_lazy_with(options)
        };
        if targets.chooses() {
            let switch = hosts::Switch::new(targets, make_pool);
            return Ok(TicketStore {
                pool: switch.pool(),
                switch: Some(switch),
                pooling,
            });
        }
        let first = targets
            .options
            .into_iter()
            .next()
            .ok_or_else(|| sqlx::Error::Configuration("DATABASE_URL names no server".into()))?;
        Ok(TicketStore {
            pool: make_pool(first),
            switch: None,
            pooling,
        })
    }

    /// Reports a failed statement to the failover switch, if there is one.
    pub(crate) fn suspect(&self, error: &sqlx::Error) {
        if let Some(switch) = &self.switch {
            switch.suspect(error);
        }
    }

    pub fn from_pool(pool: PgPool) -> TicketStore {
        TicketStore {
            pool,
            switch: None,
            pooling: Pooling::Direct,
        }
    }

    /// How this store reaches Postgres.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The pool of the server the worker is on now (a handle: cheap).
    pub fn pool(&self) -> PgPool {
        match &self.switch {
            Some(switch) => switch.pool(),
            None => self.pool.clone(),
        }
    }

    /// The server this store connects to now, `host:port` (or the socket),
    /// without credentials: for messages.
    pub fn server(&self) -> String {
        let options = self.pool().connect_options();
        match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        }
    }

    /// Why Postgres gives no connection, in the words every command uses
    /// (`DATABASE_URL → 127.0.0.1:5433: connection refused`). The pool only
    /// says that it timed out (sqlx retries a refused connection until its
    /// deadline and drops the cause), so one direct attempt, within
    /// [`ASK_WITHIN`], asks the server itself.
    /// `None` when the server answers that attempt: then the pool's own
    /// error is the better account.
    pub async fn why_unreachable(&self) -> Option<String> {
        use sqlx::ConnectOptions;
        let options = self.pool().connect_options();
        let cause = match tokio::time::timeout(ASK_WITHIN, options.connect()).await {
            Err(_) => format!(
                "no answer within {}s (a firewall, or the wrong host?)",
                ASK_WITHIN.as_secs()
            ),
            Ok(Ok(connection)) => {
                let _ = tokio::time::timeout(ASK_WITHIN, sqlx::Connection::close(connection)).await;
                return None;
            }
            Ok(Err(error)) => connect_cause(&error),
        };
        Some(format!("DATABASE_URL → {}: {cause}", self.server()))
    }

    /// `error` as the commands say it: the setting and the server, and the
    /// server's own reason when the pool gave none.
    pub async fn explain(&self, error: &StoreError) -> String {
        if let StoreError::Unavailable(_) = error
            && let Some(why) = self.why_unreachable().await
        {
            return why;
        }
        format!("DATABASE_URL → {}: {error}", self.server())
    }

    /// Applies the embedded migrations (idempotent; replicas starting together
    /// serialise on a Postgres advisory lock).
    #[tracing::instrument(name = "storage.migrate", skip_all)]
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        if self.pooling == Pooling::Transaction {
            return Err(MigrateError::Execute(sqlx::Error::Configuration(
                NEEDS_A_SESSION.into(),
            )));
        }
        // On a connection of its own, without the statement timeouts: a
        // migration may rewrite a table, and waiting for another replica's
        // migration (an advisory lock) is expected. Closed afterwards, so
        // the settings go with it.
        let mut connection = match self.pool().acquire().await {
            Ok(connection) => connection,
            Err(error) => {
                // Perhaps the first server of DATABASE_URL is a standby.
                self.suspect(&error);
                if matches!(error, sqlx::Error::PoolTimedOut) {
                    let why = self.why_unreachable().await.unwrap_or_else(|| {
                        format!(
                            "DATABASE_URL → {}: no connection from the pool in time (the server answers now)",
                            self.server()
                        )
                    });
                    let error = std::io::Error::new(std::io::ErrorKind::NotConnected, why);
                    return Err(MigrateError::Execute(sqlx::Error::Io(error)));
                }
                return Err(error.into());
            }
        };
        connection.close_on_drop();
        sqlx::raw_sql("SET statement_timeout = 0; SET lock_timeout = 0")
            .execute(&mut *connection)
            .await?;
        let connection: &mut PgConnection = &mut connection;
        let migrated = MIGRATOR.run_direct(None, connection, false);
        match tokio::time::timeout(MIGRATION_DEADLINE, migrated).await {
            Ok(migrated) => migrated,
            Err(_) => Err(MigrateError::Execute(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the migrations did not finish within {} minutes (another replica holding the migration lock, or Postgres not answering)",
                    MIGRATION_DEADLINE.as_secs() / 60
                ),
            )))),
        }
    }

    /// The roles (other than the owner) that may read `auth_tickets`, in
    /// name order; `PUBLIC` when everyone may.
    #[tracing::instrument(name = "storage.ticket_readers", skip_all)]
    pub async fn ticket_readers(&self) -> Result<Vec<String>, StoreError> {
        let readers: Vec<String> = bounded!(self, |conn, persistent| sqlx::query_scalar(
            "SELECT DISTINCT coalesce(r.rolname, 'PUBLIC')
             FROM pg_class c
             CROSS JOIN LATERAL aclexplode(c.relacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
             WHERE c.oid = 'auth_tickets'::regclass
               AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
             ORDER BY 1",
        )
        .persistent(persistent)
        .fetch_all(&mut *conn))?;
        Ok(readers)
    }

    /// Checks, without side effects, that the worker can use its tables: the
    /// connection works and the user may read and write them.
    #[tracing::instrument(name = "storage.probe", skip_all)]
    pub async fn probe(&self) -> Result<(), StoreError> {
        let allowed: bool = bounded!(self, |conn, persistent| sqlx::query_scalar(
            "SELECT has_table_privilege('auth_tickets', 'SELECT, INSERT')
                AND has_table_privilege('event_outcomes', 'SELECT, INSERT')
                AND has_table_privilege('ticket_event_outbox', 'SELECT, INSERT, UPDATE, DELETE')",
        )
        .persistent(persistent)
        .fetch_one(&mut *conn))?;
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

impl crate::health::Probe for TicketStore {
    fn probe(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Failure>> + Send + '_>> {
        Box::pin(async {
            let error = TicketStore::probe(self).await.err()?;
            Some(
                error
                    .failure()
                    .unwrap_or(Failure::Transient(error.to_string())),
            )
        })
    }
}

/// What an operator must do when the roles that may read the tickets are
/// not just `reader_role` (READER_ROLE): the migration that grants the
/// reader its rights runs once per database, so naming another role later
/// changes nothing by itself. `None` when all is as configured.
pub fn reader_role_advice(reader_role: &str, readers: &[String]) -> Option<String> {
    let others: Vec<&String> = readers.iter().filter(|r| *r != reader_role).collect();
    let has_it = readers.iter().any(|r| r == reader_role);
    if has_it && others.is_empty() {
        return None;
    }
    // Role names come from the catalog: quoted as identifiers, escaped for
    // the terminal, before an operator pastes them.
    let quoted = |role: &str| {
        if role == "PUBLIC" {
            return role.to_owned();
        }
        crate::domain::text::printable(&format!("\"{}\"", role.replace('"', "\"\"")), 130)
    };
    let reader = quoted(reader_role);
    let mut advice = String::new();
    if !has_it {
        advice.push_str(&format!(
            "READER_ROLE {reader_role} may not read the tickets: the migration that grants the reader role its rights ran before, under another name. As the owner of the tables, run: \
             GRANT USAGE ON SCHEMA public TO {reader}; GRANT SELECT ON auth_tickets TO {reader}; \
             GRANT EXECUTE ON FUNCTION current_auth_ticket(text, text), claim_auth_ticket(text, text) TO {reader};"
        ));
    }
    for other in others {
        if !advice.is_empty() {
            advice.push(' ');
        }
        let role = quoted(other);
        advice.push_str(&format!(
            "{role} may still read the tickets, though READER_ROLE is {reader_role}; if it should not, run: \
             REVOKE SELECT ON auth_tickets FROM {role}; \
             REVOKE EXECUTE ON FUNCTION current_auth_ticket(text, text), claim_auth_ticket(text, text) FROM {role};"
        ));
    }
    Some(advice)
}

#[cfg(test)]
mod tests {
    use super::describe_postgres;

    #[test]
    fn a_missing_database_names_database_url_and_no_source_line() {
        let text = describe_postgres("3D000", "database \"nope\" does not exist", None, None);
        assert_eq!(
            text,
            "database \"nope\" does not exist (SQLSTATE 3D000); DATABASE_URL names a database that does not exist on this server: create it, or correct DATABASE_URL"
        );
    }

    #[test]
    fn details_that_quote_rows_are_left_out() {
        let text = describe_postgres(
            "23505",
            "duplicate key value violates unique constraint \"auth_tickets_pkey\"",
            Some("Key (event_id)=(e-1) already exists."),
            None,
        );
        assert!(!text.contains("e-1"), "{text}");
        assert!(
            text.contains("auth_tickets_pkey") && text.contains("23505"),
            "{text}"
        );
        let text = describe_postgres(
            "23502",
            "null value in column \"user_id\" violates not-null constraint",
            Some("Failing row contains (e-1, cust-42, null, TICKET-SECRET)."),
            None,
        );
        assert!(!text.contains("TICKET-SECRET"), "{text}");
        let text = describe_postgres(
            "22P02",
            "invalid input syntax for type uuid: \"TICKET-SECRET\"",
            None,
            None,
        );
        assert!(
            !text.contains("TICKET-SECRET") && text.contains("22P02"),
            "{text}"
        );
    }

    #[test]
    fn other_details_and_hints_are_kept() {
        let text = describe_postgres(
            "42883",
            "function claim_auth_ticket(integer) does not exist",
            Some("some detail"),
            Some("No function matches the given name and argument types."),
        );
        assert_eq!(
            text,
            "function claim_auth_ticket(integer) does not exist (SQLSTATE 42883); detail: some detail; hint: No function matches the given name and argument types."
        );
    }

    #[test]
    fn reader_role_advice_names_what_to_grant_and_revoke() {
        let readers = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(super::reader_role_advice("a", &readers(&["a"])), None);
        let moved = super::reader_role_advice("b", &readers(&["a"])).unwrap_or_default();
        assert!(
            moved.contains("READER_ROLE b may not read the tickets"),
            "{moved}"
        );
        assert!(
            moved.contains("GRANT SELECT ON auth_tickets TO \"b\""),
            "{moved}"
        );
        assert!(
            moved.contains("REVOKE SELECT ON auth_tickets FROM \"a\""),
            "{moved}"
        );
        let hostile = super::reader_role_advice("b", &readers(&["x\"; DROP TABLE t;--\u{1b}"]))
            .unwrap_or_default();
        assert!(
            hostile.contains("FROM \"x\"\"; DROP TABLE t;--\\u{1b}\""),
            "{hostile}"
        );
        let extra = super::reader_role_advice("b", &readers(&["a", "b"])).unwrap_or_default();
        assert!(!extra.contains("GRANT"), "{extra}");
        assert!(extra.contains("\"a\" may still read"), "{extra}");
    }
}
