//! `DATABASE_URL` naming several servers, as libpq's multi-host form does:
//! `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`, for
//! a primary and its standbys. The worker writes, so it must be on a server
//! that takes writes; which one that is changes when a standby is promoted.
//!
//! - `target_session_attrs` means what it means to libpq: `any` (the
//!   default) takes the first server that answers; `read-write` one whose
//!   sessions may write (`transaction_read_only` is off); `primary` one that
//!   is not in recovery.
//! - Every new connection is checked against it, so a pool never fills with
//!   connections to a server that cannot take the worker's writes.
//! - After a failure that a failover explains (a read-only server, 25006; an
//!   admin or crash shutdown, 57P01–57P03; a lost connection, class 08; no
//!   connection at all), the servers are asked again in the order given, at
//!   most once a second; when another one fits, the pool moves to it and the
//!   connections to the old one are closed.
//!
//! Meanwhile statements fail as transient, so intake pauses as for any
//! Postgres outage, and no event is dead-lettered or answered
//! `ticket.failed` because of it.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long asking one server may take.
const ASK_WITHIN: Duration = Duration::from_secs(5);

/// The least time between two rounds of asking the servers.
const ASK_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// libpq's `target_session_attrs`, the values that matter to a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    Primary,
}

impl SessionAttrs {
    fn parse(raw: &str) -> Option<SessionAttrs> {
        match raw {
            "any" => Some(SessionAttrs::Any),
            "read-write" => Some(SessionAttrs::ReadWrite),
            "primary" => Some(SessionAttrs::Primary),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::Primary => "primary",
        }
    }

    /// Whether a server in this state fits.
    fn accepts(self, read_only: bool, in_recovery: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::Primary => !in_recovery,
        }
    }
}

/// The servers of one `DATABASE_URL`, and what a session needs of them.
#[derive(Debug, Clone)]
pub struct Targets {
    /// One set of connect options per server, in the order given.
    pub options: Vec<PgConnectOptions>,
    /// `host:port` of each, for logs.
    pub names: Vec<String>,
    pub attrs: SessionAttrs,
}

/// Why a `DATABASE_URL` cannot be used; never quotes the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTargets(pub String);

impl Targets {
    /// Reads a `postgres://` URL with one host or several (`h1:p1,h2:p2`),
    /// and its `target_session_attrs`.
    pub fn parse(raw: &str) -> Result<Targets, InvalidTargets> {
        let invalid = |what: &str| InvalidTargets(what.to_owned());
        let (scheme, rest) = raw
            .split_once("://")
            .filter(|(s, _)| matches!(*s, "postgres" | "postgresql"))
            .ok_or_else(|| invalid("must start with postgres:// or postgresql://"))?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        let mut attrs = SessionAttrs::Any;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("target_session_attrs", value)) => {
                    attrs = SessionAttrs::parse(value).ok_or_else(|| {
                        invalid("target_session_attrs must be read-write, primary or any")
                    })?;
                }
                _ if pair.is_empty() => {}
                _ => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let mut targets = Targets {
            options: Vec::new(),
            names: Vec::new(),
            attrs,
        };
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(invalid("names an empty host in its list of hosts"));
            }
            let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            let one = format!("{scheme}://{user}{host}{path}{query}");
            let options = PgConnectOptions::from_str(&one).map_err(|_| {
                invalid("is not a valid Postgres URL; expected postgres://user:password@host:5432/database (several hosts: host1:5432,host2:5432)")
            })?;
            targets
                .names
                .push(format!("{}:{}", options.get_host(), options.get_port()));
            targets.options.push(options);
        }
        Ok(targets)
    }

    /// Whether the worker must check servers at all: several to choose from,
    /// or a session attribute to insist on.
    pub fn chooses(&self) -> bool {
        self.options.len() > 1 || self.attrs != SessionAttrs::Any
    }

    /// Checks one open connection against [`Targets::attrs`].
    pub async fn check(
        attrs: SessionAttrs,
        connection: &mut sqlx::PgConnection,
    ) -> Result<(), sqlx::Error> {
        if attrs == SessionAttrs::Any {
            return Ok(());
        }
        let (read_only, in_recovery): (String, bool) =
            sqlx::query_as("SELECT current_setting('transaction_read_only'), pg_is_in_recovery()")
                .fetch_one(&mut *connection)
                .await?;
        if attrs.accepts(read_only == "on", in_recovery) {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(format!(
                "this Postgres server is {} (a standby?), and DATABASE_URL asks for target_session_attrs={}",
                if in_recovery {
                    "in recovery"
                } else {
                    "read-only"
                },
                attrs.as_str()
            )))
        }
    }
}

/// Whether a failure is one a failover explains, so that the servers are
/// worth asking again.
pub fn failover_explains(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "25006" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The pool of the server the worker is on now, which moves to another
/// server of [`Targets`] after a failover.
pub struct Switch {
    pub(super) targets: Targets,
    pool: RwLock<PgPool>,
    make_pool: Box<dyn Fn(PgConnectOptions) -> PgPool + Send + Sync>,
    current: AtomicUsize,
    asking: AtomicBool,
    last_asked: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("servers", &self.targets.names)
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Switch {
    /// Starts on the first server; `make_pool` makes a (lazy) pool for one.
    pub fn new(
        targets: Targets,
        make_pool: impl Fn(PgConnectOptions) -> PgPool + Send + Sync + 'static,
    ) -> Arc<Switch> {
        let first = targets.options[0].clone();
        let pool = make_pool(first);
        Arc::new(Switch {
            targets,
            pool: RwLock::new(pool),
            make_pool: Box::new(make_pool),
            current: AtomicUsize::new(0),
            asking: AtomicBool::new(false),
            last_asked: Mutex::new(None),
        })
    }

    /// The pool now (cheap: a handle).
    pub fn pool(&self) -> PgPool {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reports a failed statement: when a failover may explain it, the
    /// servers are asked again, in the background, at most once a second.
    pub fn suspect(self: &Arc<Self>, error: &sqlx::Error) {
        if !failover_explains(error) {
            return;
        }
        {
            let mut last = self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < ASK_AT_MOST_EVERY) {
                return;
            }
            if self.asking.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let switch = Arc::clone(self);
        tokio::spawn(async move {
            switch.ask().await;
            switch.asking.store(false, Ordering::Release);
        });
    }

    /// Asks the servers in order; moves the pool to the first that fits.
    async fn ask(&self) {
        for (index, options) in self.targets.options.iter().enumerate() {
            let fits = async {
                let mut connection = options.connect().await?;
                let checked = Targets::check(self.targets.attrs, &mut connection).await;
                let _ = connection.close().await;
                checked
            };
            match tokio::time::timeout(ASK_WITHIN, fits).await {
                Ok(Ok(())) => {
                    self.move_to(index);
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(server = %self.targets.names[index], error = %super::describe(&error), "this Postgres server does not fit DATABASE_URL");
                }
                Err(_) => {
                    tracing::debug!(server = %self.targets.names[index], "this Postgres server did not answer");
                }
            }
        }
        tracing::warn!(
            servers = ?self.targets.names,
            target_session_attrs = self.targets.attrs.as_str(),
            "no Postgres server of DATABASE_URL fits now (a failover in progress?); asking again after the next failure"
        );
    }

    fn move_to(&self, index: usize) {
        let was = self.current.swap(index, Ordering::AcqRel);
        if was == index {
            return;
        }
        let fresh = (self.make_pool)(self.targets.options[index].clone());
        let old = std::mem::replace(
            &mut *self.pool.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        tracing::warn!(
            from = %self.targets.names[was],
            to = %self.targets.names[index],
            target_session_attrs = self.targets.attrs.as_str(),
            "Postgres failover: the worker moves to another server of DATABASE_URL; its connections to the old one are closed"
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), old.close()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpqs_multi_host_form_is_read_host_by_host() {
        let targets = Targets::parse(
            "postgres://app:pw@db-a:5432,db-b:6543/tickets?sslmode=disable&target_session_attrs=read-write",
        )
        .expect("two hosts");
        assert_eq!(targets.names, ["db-a:5432", "db-b:6543"]);
        assert_eq!(targets.attrs, SessionAttrs::ReadWrite);
        assert_eq!(targets.options[1].get_database(), Some("tickets"));
        assert_eq!(targets.options[1].get_username(), "app");
        assert!(targets.chooses());
        let one = Targets::parse("postgres://postgres@127.0.0.1:5432/test").expect("one");
        assert!(!one.chooses());
        assert_eq!(one.attrs, SessionAttrs::Any);
    }

    #[test]
    fn what_cannot_be_read_is_said_without_the_url() {
        for (raw, says) in [
            ("mysql://x", "must start with postgres://"),
            ("postgres://u:pw-Q@a,,b/db", "empty host"),
            (
                "postgres://u:pw-Q@a/db?target_session_attrs=standby",
                "read-write, primary or any",
            ),
        ] {
            let error = Targets::parse(raw).expect_err(raw).to_string();
            assert!(error.contains(says), "{raw}: {error}");
            assert!(!error.contains("pw-Q"), "{error}");
        }
    }

    #[test]
    fn session_attributes_mean_what_they_mean_to_libpq() {
        assert!(SessionAttrs::ReadWrite.accepts(false, false));
        assert!(!SessionAttrs::ReadWrite.accepts(true, true));
        assert!(!SessionAttrs::Primary.accepts(false, true));
        assert!(SessionAttrs::Any.accepts(true, true));
    }
}
