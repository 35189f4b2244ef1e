//! Configuration: every setting of `ticket-worker run`, as a flag and as an
//! environment variable (secrets also as `*_FILE`), checked once at start into
//! [`Settings`]. Every missing or malformed setting is a [`ConfigError`] that
//! names the variable and says how to fix it; one reading reports them all
//! together, as [`ConfigErrors`], so that a first run lists everything to set
//! (the binary prints one per line and exits with code 2). Values of secrets
//! are never repeated in an error.
//!
//! Numbers (`PREFETCH`, `CONCURRENCY`, …) are parsed by clap, which stops at
//! the first value that is not a number; everything after that is checked
//! here.

use crate::breaker::BreakerSettings;
use crate::broker::Topology;
use crate::purge::PurgeSettings;
use crate::relay::RelaySettings;
use crate::retry::RetryPolicy;
use crate::taptalk::ServerKey;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use url::Url;

/// One setting that is missing or malformed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    /// The environment variable (the flag has the same name, in kebab case).
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(setting: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            problem: problem.into(),
        }
    }
}

/// Every setting found missing or malformed in one reading, in the order
/// they were checked; never empty. Displayed as one line when there is one,
/// else as a count followed by one indented line per setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// Each problem, one per setting.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// The names of the settings at fault, in order.
    pub fn settings(&self) -> Vec<&'static str> {
        self.0.iter().map(|error| error.setting).collect()
    }

    /// The problem with `setting`, if it has one.
    pub fn get(&self, setting: &str) -> Option<&ConfigError> {
        self.0.iter().find(|error| error.setting == setting)
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "configuration error: {one}"),
            all => {
                write!(f, "{} configuration errors:", all.len())?;
                for error in all {
                    write!(f, "\n  {error}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects the problems of many settings while they are checked, so that
/// one reading reports every one of them.
#[derive(Debug, Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The checked value, or `None` with its problems kept.
    fn take<T, E: Into<ConfigErrors>>(&mut self, checked: Result<T, E>) -> Option<T> {
        match checked {
            Ok(value) => Some(value),
            Err(errors) => {
                self.0.extend(errors.into());
                None
            }
        }
    }

    /// Keeps a problem with `setting` unless `ok`.
    fn require(&mut self, ok: bool, setting: &'static str, problem: &str) {
        if !ok {
            self.0.push(ConfigError::new(setting, problem));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems found. Called when a value is missing, so there is at
    /// least one; should there be none, the error says so rather than
    /// passing an empty list on.
    fn into_errors(self) -> ConfigErrors {
        if self.0.is_empty() {
            return ConfigError::new(
                "settings",
                "a setting was refused without a reason (a bug in ticket-worker; please report it)",
            )
            .into();
        }
        ConfigErrors(self.0)
    }
}

/// Where to find RabbitMQ, and the names of everything the worker declares.
#[derive(clap::Args, Clone)]
pub struct BrokerArgs {
    /// RabbitMQ URL, amqp://user:password@host:5672/vhost or amqps://…
    #[arg(
        long,
        env = "AMQP_URL",
        value_name = "AMQP_URL",
        hide_env_values = true
    )]
    pub amqp_url: Option<String>,
    /// File holding the RabbitMQ URL (instead of AMQP_URL)
    #[arg(long, env = "AMQP_URL_FILE", value_name = "AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,
    /// Connection name shown by RabbitMQ (rabbitmqctl list_connections client_properties)
    #[arg(
        long,
        env = "AMQP_CONNECTION_NAME",
        value_name = "AMQP_CONNECTION_NAME",
        default_value = "ticket-worker"
    )]
    pub amqp_connection_name: String,
    #[command(flatten)]
    pub names: TopologyArgs,
}

/// The exchanges and queues (defaults from the design; each configurable).
#[derive(clap::Args, Clone, Debug)]
pub struct TopologyArgs {
    /// Topic exchange the login service publishes login events to
    #[arg(
        long,
        env = "LOGIN_EXCHANGE",
        value_name = "LOGIN_EXCHANGE",
        default_value = "taptalk.logins"
    )]
    pub login_exchange: String,
    /// Quorum queue the workers consume, bound to the login exchange with '#'
    #[arg(
        long,
        env = "WORK_QUEUE",
        value_name = "WORK_QUEUE",
        default_value = "taptalk.logins.ticket-worker"
    )]
    pub work_queue: String,
    /// Exchange that receives dead letters
    #[arg(
        long,
        env = "DEAD_LETTER_EXCHANGE",
        value_name = "DEAD_LETTER_EXCHANGE",
        default_value = "taptalk.logins.dlx"
    )]
    pub dead_letter_exchange: String,
    /// Queue that keeps dead letters
    #[arg(
        long,
        env = "DEAD_LETTER_QUEUE",
        value_name = "DEAD_LETTER_QUEUE",
        default_value = "taptalk.logins.dead"
    )]
    pub dead_letter_queue: String,
    /// Topic exchange for ticket.ready and ticket.failed
    #[arg(
        long,
        env = "TICKET_EXCHANGE",
        value_name = "TICKET_EXCHANGE",
        default_value = "taptalk.tickets"
    )]
    pub ticket_exchange: String,
    /// Deliveries of one message before the broker dead-letters it (crash-loop backstop)
    #[arg(
        long,
        env = "DELIVERY_LIMIT",
        value_name = "DELIVERY_LIMIT",
        default_value_t = 20
    )]
    pub delivery_limit: u32,
}

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
}

/// The TapTalk server key (read by `run` and by the stand-in).
#[derive(clap::Args, Clone)]
pub struct ServerKeyArgs {
    /// Server Key ID from the TapTalk dashboard
    #[arg(
        long,
        env = "TAPTALK_SERVER_KEY_ID",
        value_name = "TAPTALK_SERVER_KEY_ID"
    )]
    pub taptalk_server_key_id: Option<String>,
    /// Server Key Secret from the TapTalk dashboard (prefer the _FILE variant)
    #[arg(
        long,
        env = "TAPTALK_SERVER_KEY_SECRET",
        value_name = "TAPTALK_SERVER_KEY_SECRET",
        hide_env_values = true
    )]
    pub taptalk_server_key_secret: Option<String>,
    /// File holding the Server Key Secret
    #[arg(
        long,
        env = "TAPTALK_SERVER_KEY_SECRET_FILE",
        value_name = "TAPTALK_SERVER_KEY_SECRET_FILE"
    )]
    pub taptalk_server_key_secret_file: Option<PathBuf>,
}

/// Where to find TapTalk.io, and the server key.
#[derive(clap::Args, Clone)]
pub struct TaptalkArgs {
    /// TapTalk base URL, e.g. https://taptalk.io (the stand-in: http://127.0.0.1:8089)
    #[arg(long, env = "TAPTALK_BASE_URL", value_name = "TAPTALK_BASE_URL")]
    pub taptalk_base_url: Option<String>,
    #[command(flatten)]
    pub key: ServerKeyArgs,
}

/// Everything `ticket-worker run` reads.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub taptalk: TaptalkArgs,
    /// Timeout of one TapTalk request
    #[arg(
        long,
        env = "TAPTALK_TIMEOUT",
        value_name = "TAPTALK_TIMEOUT",
        default_value = "10s"
    )]
    pub taptalk_timeout: String,
    /// How long one event retries a failing TapTalk before going back to the queue
    #[arg(
        long,
        env = "TAPTALK_RETRY_FOR",
        value_name = "TAPTALK_RETRY_FOR",
        default_value = "30s"
    )]
    pub taptalk_retry_for: String,
    /// How long TapTalk or Postgres must fail every call before intake pauses
    #[arg(
        long,
        env = "OUTAGE_AFTER",
        value_name = "OUTAGE_AFTER",
        default_value = "15s"
    )]
    pub outage_after: String,
    /// Times one event may go back to the queue, failing while others succeed, before it is failed and dead-lettered; 0: never
    #[arg(
        long,
        env = "MAX_REQUEUES",
        value_name = "MAX_REQUEUES",
        default_value_t = 50
    )]
    pub max_requeues: u32,
    /// Unacknowledged messages RabbitMQ hands one worker at a time
    #[arg(long, env = "PREFETCH", value_name = "PREFETCH", default_value_t = 128)]
    pub prefetch: u16,
    /// Messages one worker processes at once
    #[arg(
        long,
        env = "CONCURRENCY",
        value_name = "CONCURRENCY",
        default_value_t = 64
    )]
    pub concurrency: usize,
    /// Largest login event accepted, in bytes
    #[arg(long, env = "MAX_EVENT_BYTES", value_name = "MAX_EVENT_BYTES", default_value_t = crate::events::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Events older than this (by occurredAt) get ticket.failed "expired"; 0 turns the check off
    #[arg(
        long,
        env = "MAX_EVENT_AGE",
        value_name = "MAX_EVENT_AGE",
        default_value = "15m"
    )]
    pub max_event_age: String,
    /// Events whose occurredAt is further ahead of the worker's clock are invalid; 0 allows none
    #[arg(
        long,
        env = "MAX_CLOCK_SKEW",
        value_name = "MAX_CLOCK_SKEW",
        default_value = "1m"
    )]
    pub max_clock_skew: String,
    /// On SIGTERM, how long in-flight messages may finish before they go back to the queue
    #[arg(
        long,
        env = "SHUTDOWN_GRACE",
        value_name = "SHUTDOWN_GRACE",
        default_value = "20s"
    )]
    pub shutdown_grace: String,
    /// Delete tickets this long after they expired; 0 turns purging off
    #[arg(
        long,
        env = "PURGE_AFTER",
        value_name = "PURGE_AFTER",
        default_value = "24h"
    )]
    pub purge_after: String,
    /// How often to purge expired tickets
    #[arg(
        long,
        env = "PURGE_EVERY",
        value_name = "PURGE_EVERY",
        default_value = "10m"
    )]
    pub purge_every: String,
    /// Do not apply database migrations at start
    #[arg(long, env = "SKIP_MIGRATIONS", value_name = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
    /// A stored outcome whose ticket event is not confirmed after this long is published from the outbox
    #[arg(
        long,
        env = "OUTBOX_RELAY_AFTER",
        value_name = "OUTBOX_RELAY_AFTER",
        default_value = "10s"
    )]
    pub outbox_relay_after: String,
    /// How often to log a progress line while events flow; 0 turns it off
    #[arg(
        long,
        env = "PROGRESS_EVERY",
        value_name = "PROGRESS_EVERY",
        default_value = "30s"
    )]
    pub progress_every: String,
}

impl RunArgs {
    /// What `run` would read with no flags: the environment, then the defaults.
    /// The demo starts from here, so it runs with the worker's own defaults.
    pub fn from_environment() -> Result<RunArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        <Wrapper as clap::Parser>::try_parse_from(["ticket-worker"]).map(|w| w.run)
    }
}

/// TapTalk connection settings, validated.
#[derive(Debug, Clone)]
pub struct TaptalkSettings {
    pub base_url: Url,
    pub server_key: ServerKey,
    pub timeout: Duration,
    /// Retries of one request: 200 ms doubling to 5 s, for `retry_for`.
    pub retry: RetryPolicy,
}

impl TaptalkSettings {
    pub fn new(
        base_url: Url,
        server_key: ServerKey,
        timeout: Duration,
        retry_for: Duration,
    ) -> TaptalkSettings {
        TaptalkSettings {
            base_url,
            server_key,
            timeout,
            retry: RetryPolicy {
                first_pause: Duration::from_millis(200),
                max_pause: Duration::from_secs(5),
                give_up_after: Some(retry_for),
            },
        }
    }
}

/// Pauses between probes of a dependency that is down: 1 s growing to 60 s.
pub const PROBE_PAUSES: RetryPolicy = RetryPolicy {
    first_pause: Duration::from_secs(1),
    max_pause: Duration::from_secs(60),
    give_up_after: None,
};

/// Pauses between attempts to reach RabbitMQ: 0.5 s growing to 30 s.
pub const RECONNECT_PAUSES: RetryPolicy = RetryPolicy {
    first_pause: Duration::from_millis(500),
    max_pause: Duration::from_secs(30),
    give_up_after: None,
};

/// Broker settings, validated.
#[derive(Clone)]
pub struct BrokerSettings {
    pub amqp_url: SecretString,
    pub connection_name: String,
    pub topology: Topology,
    /// Pauses between reconnect attempts.
    pub reconnect: RetryPolicy,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("amqp_url", &redact_url(self.amqp_url.expose_secret()))
            .field("connection_name", &self.connection_name)
            .field("topology", &self.topology)
            .finish()
    }
}

/// Database settings, validated.
#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// The role the migrations create and grant read access to the tickets
    /// (a plain Postgres identifier, checked).
    pub reader_role: String,
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

/// Everything the worker needs, checked. `Debug` hides every secret.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub taptalk: TaptalkSettings,
    /// When TapTalk or Postgres counts as down for everybody.
    pub breaker: BreakerSettings,
    /// Pauses between probes while a dependency is down.
    pub probe: RetryPolicy,
    /// Times an event may be put back before it is given up; `None`: never.
    pub max_requeues: Option<u32>,
    pub prefetch: u16,
    pub concurrency: usize,
    pub max_event_bytes: usize,
    /// `None`: events never expire.
    pub max_event_age: Option<Duration>,
    /// How far ahead of the worker's clock an event's `occurredAt` may be.
    pub max_clock_skew: Duration,
    pub shutdown_grace: Duration,
    pub migrate: bool,
    /// `None`: never purge.
    pub purge: Option<PurgeSettings>,
    /// When unconfirmed ticket events are published from the outbox.
    pub relay: RelaySettings,
    /// How often a progress line is logged; `None`: never.
    pub progress_every: Option<Duration>,
}

impl Settings {
    /// Checks every setting, reporting every problem found.
    pub fn from_args(args: &RunArgs) -> Result<Settings, ConfigErrors> {
        let mut problems = Problems::default();
        let broker = problems.take(BrokerSettings::from_args(&args.broker, None));
        let database = problems.take(DatabaseSettings::from_args(&args.database, None));
        let base_url = problems.take(taptalk_base_url(args.taptalk.taptalk_base_url.as_deref()));
        let server_key = problems.take(server_key(&args.taptalk.key));
        let timeout = problems.take(positive_duration("TAPTALK_TIMEOUT", &args.taptalk_timeout));
        let retry_for = problems.take(duration("TAPTALK_RETRY_FOR", &args.taptalk_retry_for));
        let outage_after = problems.take(duration("OUTAGE_AFTER", &args.outage_after));
        problems.require(args.prefetch > 0, "PREFETCH", "must be between 1 and 65535");
        problems.require(
            (1..=10_000).contains(&args.concurrency),
            "CONCURRENCY",
            "must be between 1 and 10000",
        );
        problems.require(
            args.max_event_bytes >= 256,
            "MAX_EVENT_BYTES",
            "must be at least 256",
        );
        let max_event_age = problems.take(duration("MAX_EVENT_AGE", &args.max_event_age));
        let max_clock_skew = problems.take(duration("MAX_CLOCK_SKEW", &args.max_clock_skew));
        let shutdown_grace = problems.take(duration("SHUTDOWN_GRACE", &args.shutdown_grace));
        let purge_after = problems.take(duration("PURGE_AFTER", &args.purge_after));
        let purge_every = problems.take(positive_duration("PURGE_EVERY", &args.purge_every));
        let relay_after = problems.take(positive_duration(
            "OUTBOX_RELAY_AFTER",
            &args.outbox_relay_after,
        ));
        let progress_every = problems.take(duration("PROGRESS_EVERY", &args.progress_every));
        let (
            Some(broker),
            Some(database),
            Some(base_url),
            Some(server_key),
            Some(timeout),
            Some(retry_for),
            Some(outage_after),
            Some(max_event_age),
            Some(max_clock_skew),
            Some(shutdown_grace),
            Some(purge_after),
            Some(purge_every),
            Some(relay_after),
            Some(progress_every),
        ) = (
            broker,
            database,
            base_url,
            server_key,
            timeout,
            retry_for,
            outage_after,
            max_event_age,
            max_clock_skew,
            shutdown_grace,
            purge_after,
            purge_every,
            relay_after,
            progress_every,
        )
        else {
            return Err(problems.into_errors());
        };
        if !problems.is_empty() {
            return Err(problems.into_errors());
        }
        Ok(Settings {
            broker,
            database,
            taptalk: TaptalkSettings::new(base_url, server_key, timeout, retry_for),
            breaker: BreakerSettings {
                trip_after: outage_after,
                ..BreakerSettings::default()
            },
            probe: PROBE_PAUSES,
            max_requeues: (args.max_requeues > 0).then_some(args.max_requeues),
            prefetch: args.prefetch,
            concurrency: args.concurrency,
            max_event_bytes: args.max_event_bytes,
            max_event_age: (!max_event_age.is_zero()).then_some(max_event_age),
            max_clock_skew,
            shutdown_grace,
            migrate: !args.skip_migrations,
            purge: (!purge_after.is_zero()).then_some(PurgeSettings {
                after: purge_after,
                every: purge_every,
            }),
            relay: RelaySettings::new(relay_after),
            progress_every: (!progress_every.is_zero()).then_some(progress_every),
        })
    }
}

impl BrokerSettings {
    /// `default_url` stands in for a missing AMQP_URL (the demo's local broker).
    /// Reports every problem of AMQP_URL, AMQP_CONNECTION_NAME and the topology.
    pub fn from_args(
        args: &BrokerArgs,
        default_url: Option<&str>,
    ) -> Result<BrokerSettings, ConfigErrors> {
        let mut problems = Problems::default();
        let amqp_url = problems.take(amqp_url(args, default_url));
        problems.require(
            !args.amqp_connection_name.trim().is_empty(),
            "AMQP_CONNECTION_NAME",
            "must not be empty",
        );
        let topology = problems.take(Topology::from_args(&args.names));
        match (amqp_url, topology) {
            (Some(amqp_url), Some(topology)) if problems.is_empty() => Ok(BrokerSettings {
                amqp_url,
                connection_name: args.amqp_connection_name.clone(),
                topology,
                reconnect: RECONNECT_PAUSES,
            }),
            _ => Err(problems.into_errors()),
        }
    }
}

/// AMQP_URL (or AMQP_URL_FILE), checked.
fn amqp_url(args: &BrokerArgs, default_url: Option<&str>) -> Result<SecretString, ConfigError> {
    let amqp_url = secret(
        "AMQP_URL",
        "--amqp-url",
        args.amqp_url.as_deref(),
        args.amqp_url_file.as_ref(),
        default_url,
    )?;
    let raw = amqp_url.expose_secret();
    if !(raw.starts_with("amqp://") || raw.starts_with("amqps://")) {
        return Err(ConfigError::new(
            "AMQP_URL",
            "must start with amqp:// or amqps://",
        ));
    }
    if lapin::uri::AMQPUri::from_str(raw).is_err() {
        // The parser's message repeats the URL, password included: say it our way.
        return Err(ConfigError::new(
            "AMQP_URL",
            "is not a valid AMQP URL; expected amqp://user:password@host:5672/vhost (percent-encode special characters, %2f for the default vhost)",
        ));
    }
    Ok(amqp_url)
}

impl BrokerSettings {
    /// The RabbitMQ user the worker logs in as, when it uses a user name and
    /// password (not `auth_mechanism=external` or `anonymous`): the `user_id` RabbitMQ lets
    /// the worker put on the messages it publishes.
    pub fn login_user(&self) -> Option<String> {
        let uri = lapin::uri::AMQPUri::from_str(self.amqp_url.expose_secret()).ok()?;
        use lapin::uri::SASLMechanism;
        let by_password = matches!(
            uri.query.auth_mechanism,
            None | Some(SASLMechanism::Plain | SASLMechanism::AMQPlain)
        );
        by_password.then_some(uri.authority.userinfo.username)
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
        match (url, reader_role) {
            (Some(url), Some(reader_role)) if problems.is_empty() => Ok(DatabaseSettings {
                url,
                max_connections: args.database_max_connections,
                reader_role,
            }),
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
    if sqlx::postgres::PgConnectOptions::from_str(raw).is_err() {
        return Err(ConfigError::new(
            "DATABASE_URL",
            "is not a valid Postgres URL; expected postgres://user:password@host:5432/database",
        ));
    }
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

impl Topology {
    /// Checks every name and DELIVERY_LIMIT, reporting every problem found.
    pub fn from_args(args: &TopologyArgs) -> Result<Topology, ConfigErrors> {
        let mut problems = Problems::default();
        let mut name = |setting: &'static str, value: &str| -> Option<String> {
            let ok = !value.trim().is_empty() && value.len() <= 255;
            problems.require(ok, setting, "must be a name of 1 to 255 bytes");
            ok.then(|| value.to_owned())
        };
        let names = (
            name("LOGIN_EXCHANGE", &args.login_exchange),
            name("WORK_QUEUE", &args.work_queue),
            name("DEAD_LETTER_EXCHANGE", &args.dead_letter_exchange),
            name("DEAD_LETTER_QUEUE", &args.dead_letter_queue),
            name("TICKET_EXCHANGE", &args.ticket_exchange),
        );
        problems.require(
            args.delivery_limit > 0,
            "DELIVERY_LIMIT",
            "must be at least 1",
        );
        match names {
            (
                Some(login_exchange),
                Some(work_queue),
                Some(dead_letter_exchange),
                Some(dead_letter_queue),
                Some(ticket_exchange),
            ) if problems.is_empty() => Ok(Topology {
                login_exchange,
                work_queue,
                dead_letter_exchange,
                dead_letter_queue,
                ticket_exchange,
                delivery_limit: args.delivery_limit,
            }),
            _ => Err(problems.into_errors()),
        }
    }
}

/// The TapTalk base URL, checked (one setting, so at most one problem).
pub fn taptalk_base_url(raw: Option<&str>) -> Result<Url, ConfigErrors> {
    let raw = required(
        "TAPTALK_BASE_URL",
        "--taptalk-base-url",
        raw.map(str::to_owned),
        false,
    )?;
    let url = Url::parse(raw.trim()).map_err(|e| {
        ConfigError::new(
            "TAPTALK_BASE_URL",
            format!("is not a URL ({e}); expected e.g. https://taptalk.io"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(
            ConfigError::new("TAPTALK_BASE_URL", "must start with http:// or https://").into(),
        );
    }
    Ok(url)
}

/// The server key, from id plus secret (or secret file); reports the
/// problems of both.
pub fn server_key(args: &ServerKeyArgs) -> Result<ServerKey, ConfigErrors> {
    let mut problems = Problems::default();
    let id = problems.take(server_key_id(args.taptalk_server_key_id.clone()));
    let secret = problems.take(secret(
        "TAPTALK_SERVER_KEY_SECRET",
        "--taptalk-server-key-secret",
        args.taptalk_server_key_secret.as_deref(),
        args.taptalk_server_key_secret_file.as_ref(),
        None,
    ));
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(ServerKey::new(id, secret)),
        _ => Err(problems.into_errors()),
    }
}

fn server_key_id(raw: Option<String>) -> Result<String, ConfigError> {
    let id = required(
        "TAPTALK_SERVER_KEY_ID",
        "--taptalk-server-key-id",
        raw,
        false,
    )?;
    if id.contains(':') || id.chars().any(char::is_control) || id.trim() != id {
        return Err(ConfigError::new(
            "TAPTALK_SERVER_KEY_ID",
            "must not contain ':', control characters or surrounding spaces",
        ));
    }
    Ok(id)
}

/// A secret from its variable or its `_FILE` variant (exactly one of them).
fn secret(
    setting: &'static str,
    flag: &str,
    value: Option<&str>,
    file: Option<&PathBuf>,
    default: Option<&str>,
) -> Result<SecretString, ConfigError> {
    let value = value.filter(|v| !v.is_empty());
    let from_file = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                setting,
                format!("set either {setting} or {setting}_FILE, not both"),
            ));
        }
        (_, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                setting,
                format!("cannot read {setting}_FILE {}: {e}", path.display()),
            )
        })?),
        (_, None) => None,
    };
    let raw = from_file
        .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
        .or_else(|| value.map(str::to_owned))
        .or_else(|| default.map(str::to_owned));
    required(setting, flag, raw, true).map(SecretString::from)
}

fn required(
    setting: &'static str,
    flag: &str,
    value: Option<String>,
    has_file: bool,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            setting,
            format!(
                "missing; set the environment variable {setting}{} or pass {flag}",
                if has_file {
                    format!(" (or {setting}_FILE)")
                } else {
                    String::new()
                }
            ),
        )),
    }
}

/// A duration like `30s`, `5m`, `250ms` or `0`.
fn duration(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    if raw.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(raw.trim()).map_err(|e| {
        ConfigError::new(
            setting,
            format!("is not a duration ({e}); write e.g. 30s, 5m, 250ms"),
        )
    })
}

fn positive_duration(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let value = duration(setting, raw)?;
    if value.is_zero() {
        return Err(ConfigError::new(setting, "must be longer than 0"));
    }
    Ok(value)
}

/// A URL with its passwords replaced by `***`, for logs and `Debug`: the one
/// in the user info and any `password`-like query parameter (Postgres
/// accepts `?password=` and `?sslpassword=`).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        return "[unparseable URL]".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret_key = |key: &str| {
        let key = key.to_ascii_lowercase();
        key.contains("password") || key.contains("secret") || key == "pass"
    };
    if url.query_pairs().any(|(key, _)| secret_key(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let value = if secret_key(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        run: RunArgs,
    }

    fn settings(args: &[&str]) -> Result<Settings, ConfigErrors> {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        let harness =
            Harness::try_parse_from(argv).map_err(|e| ConfigError::new("CLAP", e.to_string()))?;
        Settings::from_args(&harness.run)
    }

    /// The one problem of a reading that should find exactly one.
    fn only(errors: ConfigErrors) -> ConfigError {
        assert_eq!(errors.errors().len(), 1, "{errors}");
        errors.into_iter().next().expect("one error")
    }

    /// The five settings without a default, in the order they are reported.
    const REQUIRED: [(&str, &str); 5] = [
        ("AMQP_URL", "--amqp-url"),
        ("DATABASE_URL", "--database-url"),
        ("TAPTALK_BASE_URL", "--taptalk-base-url"),
        ("TAPTALK_SERVER_KEY_ID", "--taptalk-server-key-id"),
        ("TAPTALK_SERVER_KEY_SECRET", "--taptalk-server-key-secret"),
    ];

    fn remove_required(args: &mut RunArgs) {
        args.broker.amqp_url = None;
        args.broker.amqp_url_file = None;
        args.database.database_url = None;
        args.database.database_url_file = None;
        args.taptalk.taptalk_base_url = None;
        args.taptalk.key.taptalk_server_key_id = None;
        args.taptalk.key.taptalk_server_key_secret = None;
        args.taptalk.key.taptalk_server_key_secret_file = None;
    }

    const COMPLETE: [&str; 10] = [
        "--amqp-url=amqp://guest:guest@127.0.0.1:5672/%2f",
        "--database-url=postgres://postgres:pw@127.0.0.1:5432/test",
        "--taptalk-base-url=http://127.0.0.1:8089",
        "--taptalk-server-key-id=key",
        "--taptalk-server-key-secret=s3cr3t",
        "--prefetch=10",
        "--concurrency=5",
        "--max-event-age=0",
        "--shutdown-grace=2s",
        "--taptalk-retry-for=1m",
    ];

    fn without(flag: &str) -> Vec<&'static str> {
        COMPLETE
            .iter()
            .copied()
            .filter(|a| !a.starts_with(flag))
            .collect()
    }

    /// The complete flags with one flag set to another value.
    fn with(extra: &'static str) -> Vec<&'static str> {
        let name = extra.split('=').next().unwrap_or(extra);
        let mut args = without(name);
        args.push(extra);
        args
    }

    #[test]
    fn a_complete_configuration_parses_and_hides_its_secrets() {
        let settings = settings(&COMPLETE).expect("valid");
        assert_eq!(settings.max_event_age, None);
        assert_eq!(
            settings.max_clock_skew,
            crate::events::DEFAULT_MAX_CLOCK_SKEW,
            "the default, which publish checks with"
        );
        assert_eq!(
            settings.taptalk.retry.give_up_after,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            settings.broker.topology.work_queue,
            "taptalk.logins.ticket-worker"
        );
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains(":pw@") && !debug.contains("guest:guest"),
            "{debug}"
        );
    }

    /// Parses the complete flag set; flags given explicitly win over any
    /// variable in the test's environment, so the result does not depend on it.
    fn complete_args() -> RunArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(&COMPLETE);
        Harness::try_parse_from(argv)
            .map(|h| h.run)
            .expect("complete flags parse")
    }

    #[test]
    fn each_missing_setting_is_named() {
        type Remove = fn(&mut RunArgs);
        let cases: [(&str, &str, Remove); 5] = [
            ("--amqp-url", "AMQP_URL", |a| a.broker.amqp_url = None),
            ("--database-url", "DATABASE_URL", |a| {
                a.database.database_url = None
            }),
            ("--taptalk-base-url", "TAPTALK_BASE_URL", |a| {
                a.taptalk.taptalk_base_url = None
            }),
            ("--taptalk-server-key-id", "TAPTALK_SERVER_KEY_ID", |a| {
                a.taptalk.key.taptalk_server_key_id = None
            }),
            (
                "--taptalk-server-key-secret",
                "TAPTALK_SERVER_KEY_SECRET",
                |a| {
                    a.taptalk.key.taptalk_server_key_secret = None;
                    a.taptalk.key.taptalk_server_key_secret_file = None;
                },
            ),
        ];
        for (flag, setting, remove) in cases {
            let mut args = complete_args();
            remove(&mut args);
            let error = only(Settings::from_args(&args).map(|_| ()).expect_err(flag));
            assert_eq!(error.setting, setting);
            assert!(error.problem.starts_with("missing"), "{error}");
            assert!(error.problem.contains(flag), "{error}");
        }
    }

    #[test]
    fn with_nothing_set_one_reading_names_all_five_required_settings() {
        let mut args = complete_args();
        remove_required(&mut args);
        let errors = Settings::from_args(&args).map(|_| ()).expect_err("empty");
        let names: Vec<&str> = REQUIRED.iter().map(|(setting, _)| *setting).collect();
        assert_eq!(errors.settings(), names, "{errors}");
        for ((setting, flag), error) in REQUIRED.iter().zip(errors.errors()) {
            assert!(error.problem.starts_with("missing"), "{error}");
            assert!(
                error
                    .problem
                    .contains(&format!("set the environment variable {setting}"))
                    && error.problem.contains(flag),
                "says what to do: {error}"
            );
        }
        // One line per setting, under a count.
        let text = errors.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"5 configuration errors:"), "{text}");
        for (setting, _) in REQUIRED {
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.starts_with(&format!("  {setting}: missing")))
                    .count(),
                1,
                "{text}"
            );
        }
        assert_eq!(lines.len(), 6, "{text}");
    }

    #[test]
    fn missing_and_malformed_settings_are_reported_together_without_secrets() {
        let mut args = complete_args();
        args.broker.amqp_url = None;
        args.broker.names.work_queue = String::new();
        args.broker.names.delivery_limit = 0;
        args.database.database_url = Some("mysql://root:topsecret-db@h/x".into());
        args.database.reader_role = "Tickets".into();
        args.taptalk.taptalk_base_url = Some("ftp://x".into());
        args.taptalk.key.taptalk_server_key_id = Some("a:b".into());
        args.taptalk.key.taptalk_server_key_secret_file = Some("/nonexistent/secret".into());
        args.concurrency = 0;
        args.max_event_age = "soon".into();
        args.purge_every = "0".into();
        let errors = Settings::from_args(&args).map(|_| ()).expect_err("bad");
        assert_eq!(
            errors.settings(),
            [
                "AMQP_URL",
                "WORK_QUEUE",
                "DELIVERY_LIMIT",
                "DATABASE_URL",
                "READER_ROLE",
                "TAPTALK_BASE_URL",
                "TAPTALK_SERVER_KEY_ID",
                "TAPTALK_SERVER_KEY_SECRET",
                "CONCURRENCY",
                "MAX_EVENT_AGE",
                "PURGE_EVERY",
            ],
            "{errors}"
        );
        assert!(
            errors
                .get("TAPTALK_SERVER_KEY_SECRET")
                .is_some_and(|e| e.problem.contains("not both")),
            "{errors}"
        );
        let text = format!("{errors} {errors:?}");
        assert!(
            !text.contains("topsecret") && !text.contains("s3cr3t"),
            "{text}"
        );
    }

    #[test]
    fn one_problem_is_one_line() {
        let error = ConfigErrors::from(ConfigError::new("PREFETCH", "must be between 1 and 65535"));
        assert_eq!(
            error.to_string(),
            "configuration error: PREFETCH: must be between 1 and 65535"
        );
    }

    #[test]
    fn malformed_values_are_named_without_echoing_secrets() {
        let error = settings(
            &[
                &without("--amqp-url")[..],
                &["--amqp-url=amqp://u:topsecret@[bad"],
            ]
            .concat(),
        )
        .map(|_| ())
        .expect_err("bad url");
        let error = only(error);
        assert_eq!(error.setting, "AMQP_URL");
        assert!(!error.to_string().contains("topsecret"), "{error}");
        for (extra, setting) in [
            ("--max-event-age=soon", "MAX_EVENT_AGE"),
            ("--max-clock-skew=-5s", "MAX_CLOCK_SKEW"),
            ("--concurrency=0", "CONCURRENCY"),
            ("--taptalk-timeout=0", "TAPTALK_TIMEOUT"),
            ("--work-queue=", "WORK_QUEUE"),
            ("--delivery-limit=0", "DELIVERY_LIMIT"),
        ] {
            let error = only(settings(&with(extra)).map(|_| ()).expect_err(extra));
            assert_eq!(error.setting, setting, "{extra}");
        }
        let error = settings(
            &[
                &without("--taptalk-base-url")[..],
                &["--taptalk-base-url=ftp://x"],
            ]
            .concat(),
        )
        .map(|_| ())
        .expect_err("ftp");
        assert_eq!(only(error).setting, "TAPTALK_BASE_URL");
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("tw-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        std::fs::write(&path, "from-file\n").expect("write");
        let mut args = complete_args();
        args.taptalk.key.taptalk_server_key_secret_file = Some(path.clone());
        let error = only(Settings::from_args(&args).map(|_| ()).expect_err("both"));
        assert!(error.problem.contains("not both"), "{error}");

        args.taptalk.key.taptalk_server_key_secret = None;
        let settings = Settings::from_args(&args).expect("valid");
        assert_eq!(
            settings.taptalk.server_key.header_value().expose_secret(),
            "a2V5OmZyb20tZmlsZQ=="
        );

        args.taptalk.key.taptalk_server_key_secret_file = Some(dir.join("missing"));
        let error = only(
            Settings::from_args(&args)
                .map(|_| ())
                .expect_err("unreadable"),
        );
        assert!(
            error
                .problem
                .contains("cannot read TAPTALK_SERVER_KEY_SECRET_FILE"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("::"), "[unparseable URL]");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=hunter2&sslpassword=x"),
            "postgres://u@h/db?sslmode=require&password=***&sslpassword=***"
        );
    }

    #[test]
    fn the_reader_role_is_a_plain_postgres_identifier() {
        let longest = "r".repeat(63);
        for good in ["tickets_acme_reader", "_r2", &longest] {
            let mut args = complete_args();
            args.database.reader_role = good.to_owned();
            let settings = Settings::from_args(&args).expect(good);
            assert_eq!(settings.database.reader_role, good);
        }
        let too_long = "r".repeat(64);
        for bad in [
            "",
            "Tickets",
            "1reader",
            "tickets-reader",
            "tickets reader",
            "r\"; DROP ROLE postgres; --",
            "lecteur_é",
            &too_long,
            "public",
            "none",
            "pg_read_all_data",
        ] {
            let mut args = complete_args();
            args.database.reader_role = bad.to_owned();
            let error = only(Settings::from_args(&args).map(|_| ()).expect_err(bad));
            assert_eq!(error.setting, "READER_ROLE", "{bad}");
        }
    }
}
