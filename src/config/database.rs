//! Postgres settings: `DATABASE_URL` (or `DATABASE_URL_FILE`), the pool size
//! and the reader role the migrations grant read access to.

use super::errors::{ConfigError, ConfigErrors, Problems};
use super::values::secret;
use crate::observe::redact_url;
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;

/// Where to find Postgres.
#[derive(clap::Args, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL, postgres://user:password@host:5432/db (sslmode=require etc. as query parameters)
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// File holding the Postgres URL (instead of DATABASE_URL)
    #[arg(long, env = "DATABASE_URL_FILE", value_name = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Most Postgres connections one worker opens
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        value_name = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub database_max_connections: u32,
    /// Postgres role the migrations let read the tickets (and nothing else); one per database or tenant
    #[arg(
        long,
        env = "READER_ROLE",
        value_name = "READER_ROLE",
        default_value = crate::storage::DEFAULT_READER_ROLE
    )]
    pub reader_role: String,
    /// `transaction` when DATABASE_URL goes through a connection pooler in transaction mode (PgBouncer pool_mode = transaction); `none` otherwise
    #[arg(
        long,
        env = "DATABASE_POOLER",
        value_name = "DATABASE_POOLER",
        default_value = "none"
    )]
    pub database_pooler: String,
}

/// Database settings, validated.
#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// The role the migrations create and grant read access to the tickets
    /// (a plain Postgres identifier, checked).
    pub reader_role: String,
    /// `DATABASE_POOLER`: straight to Postgres, or through a pooler in
    /// transaction mode.
    pub pooling: crate::storage::Pooling,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .field("reader_role", &self.reader_role)
            .finish()
    }
}

impl DatabaseSettings {
    /// `default_url` stands in for a missing DATABASE_URL (the demo's local database).
    /// Reports every problem of DATABASE_URL, DATABASE_MAX_CONNECTIONS and READER_ROLE.
    pub fn from_args(
        args: &DatabaseArgs,
        default_url: Option<&str>,
    ) -> Result<DatabaseSettings, ConfigErrors> {
        let mut problems = Problems::default();
        let url = problems.take(database_url(args, default_url));
        problems.require(
            args.database_max_connections > 0,
            "DATABASE_MAX_CONNECTIONS",
            "must be at least 1",
        );
        let reader_role = problems.take(reader_role(&args.reader_role));
        let pooling = crate::storage::Pooling::parse(&args.database_pooler);
        problems.require(
            pooling.is_some(),
            "DATABASE_POOLER",
            "must be none or transaction (transaction: DATABASE_URL goes through PgBouncer or another pooler in transaction mode)",
        );
        match (url, reader_role, pooling) {
            (Some(url), Some(reader_role), Some(pooling)) if problems.is_empty() => {
                Ok(DatabaseSettings {
                    url,
                    max_connections: args.database_max_connections,
                    reader_role,
                    pooling,
                })
            }
            _ => Err(problems.into_errors()),
        }
    }
}

/// DATABASE_URL (or DATABASE_URL_FILE), checked.
fn database_url(
    args: &DatabaseArgs,
    default_url: Option<&str>,
) -> Result<SecretString, ConfigError> {
    let url = secret(
        "DATABASE_URL",
        "--database-url",
        args.database_url.as_deref(),
        args.database_url_file.as_ref(),
        default_url,
    )?;
    let raw = url.expose_secret();
    if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "must start with postgres:// or postgresql://",
        ));
    }
    crate::storage::hosts::Targets::parse(raw)
        .map_err(|e| ConfigError::new("DATABASE_URL", e.to_string()))?;
    Ok(url)
}

/// READER_ROLE: a role name the migrations can use as it is, without
/// quoting: 1 to 63 bytes of lowercase ASCII letters, digits and underscores,
/// not starting with a digit. `public` and `none` are not roles in Postgres
/// (`GRANT … TO public` grants to everybody) and `pg_` names are reserved.
fn reader_role(raw: &str) -> Result<String, ConfigError> {
    let plain = (1..=63).contains(&raw.len())
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(ConfigError::new(
            "READER_ROLE",
            format!(
                "{raw:?} is not a plain Postgres role name; use 1 to 63 lowercase letters, digits and underscores, starting with a letter or underscore (e.g. tickets_acme_reader)"
            ),
        ));
    }
    if matches!(raw, "public" | "none") || raw.starts_with("pg_") {
        return Err(ConfigError::new(
            "READER_ROLE",
            format!(
                "{raw:?} is reserved by Postgres (public, none and pg_ names); choose a role of the app backends' own, e.g. tickets_acme_reader"
            ),
        ));
    }
    Ok(raw.to_owned())
}
