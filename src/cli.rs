//! The command line: `ticket-worker run | migrate | fake-taptalk | demo | publish | bench`.
//! Each command's work lives in its own module; this file only parses and
//! dispatches, registers every secret with the log redactor as soon as the
//! settings are read, and turns failures into exit codes (2: configuration,
//! 1: other), the final error line scrubbed like every log line.

use crate::configuration::{
    BrokerSettings, ConfigError, ConfigErrors, DatabaseArgs, DatabaseSettings, RunArgs,
    ServerKeyArgs, Settings,
};
use crate::fake_taptalk::{FakeTaptalk, Knobs};
use crate::shutdown::Shutdown;
use crate::startup::Application;
use crate::storage::TicketStore;
use crate::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Turns login events on RabbitMQ into TapTalk.io auth tickets stored in Postgres.
#[derive(Parser)]
#[command(name = "ticket-worker", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Consume login events and turn them into auth tickets (the worker)
    Run(Box<RunArgs>),
    /// Apply the database migrations, then exit
    Migrate(DatabaseArgs),
    /// Serve the TapTalk.io stand-in (for local runs, tests and benchmarks)
    FakeTaptalk(FakeTaptalkArgs),
    /// See it work: the stand-in, a worker and a few hundred login events, on the local RabbitMQ and Postgres
    Demo(Box<crate::demo::DemoArgs>),
    /// Publish login events (JSON lines, from a file or stdin) to the login exchange
    Publish(crate::publish::PublishArgs),
    /// Measure the worker: throughput, latency, CPU and commits per event, against a broker-only ceiling
    Bench(Box<crate::bench::BenchArgs>),
}

/// `ticket-worker fake-taptalk`.
#[derive(clap::Args)]
pub struct FakeTaptalkArgs {
    /// Address to listen on
    #[arg(
        long,
        env = "FAKE_TAPTALK_LISTEN",
        value_name = "FAKE_TAPTALK_LISTEN",
        default_value = "127.0.0.1:8089"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub key: ServerKeyArgs,
    /// Delay added to every answer
    #[arg(long, env = "FAKE_LATENCY", value_name = "FAKE_LATENCY", value_parser = duration, default_value = "0s")]
    pub latency: Duration,
    /// Random extra delay, up to this much
    #[arg(long, env = "FAKE_LATENCY_JITTER", value_name = "FAKE_LATENCY_JITTER", value_parser = duration, default_value = "0s")]
    pub latency_jitter: Duration,
    /// Share of requests answered 503 (0 to 1)
    #[arg(long, env = "FAKE_FAIL_503", value_name = "FAKE_FAIL_503", value_parser = share, default_value_t = 0.0)]
    pub fail_503: f64,
    /// Share of requests answered 429 with Retry-After: 1 (0 to 1)
    #[arg(long, env = "FAKE_FAIL_429", value_name = "FAKE_FAIL_429", value_parser = share, default_value_t = 0.0)]
    pub fail_429: f64,
    /// Share of requests that hang past any client timeout (0 to 1)
    #[arg(long, env = "FAKE_HANG", value_name = "FAKE_HANG", value_parser = share, default_value_t = 0.0)]
    pub hang: f64,
    /// How long a hanging request hangs
    #[arg(long, env = "FAKE_HANG_FOR", value_name = "FAKE_HANG_FOR", value_parser = duration, default_value = "5m")]
    pub hang_for: Duration,
    /// Answer every request HeaderValidationFailed, as if the key were revoked
    #[arg(long, env = "FAKE_WRONG_KEY", value_name = "FAKE_WRONG_KEY")]
    pub wrong_key: bool,
    /// Send numeric error codes (40001, 40002) instead of names
    #[arg(
        long,
        env = "FAKE_NUMERIC_ERROR_CODES",
        value_name = "FAKE_NUMERIC_ERROR_CODES"
    )]
    pub numeric_error_codes: bool,
    /// Requests served at once (the latency is spent holding a slot); the rest wait in line. Default: no limit
    #[arg(long, env = "FAKE_CAPACITY", value_name = "FAKE_CAPACITY", value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// With --capacity: requests that may wait; one more is shed at once with 503. Default: no limit
    #[arg(
        long,
        env = "FAKE_MAX_QUEUE",
        value_name = "FAKE_MAX_QUEUE",
        requires = "capacity"
    )]
    pub max_queue: Option<u32>,
}

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Every missing or malformed setting, one per line (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<ConfigError> for CommandError {
    fn from(error: ConfigError) -> CommandError {
        CommandError::Config(error.into())
    }
}

impl Cli {
    /// Runs the chosen command and maps its result to the process exit code.
    pub async fn execute(self) -> ExitCode {
        let filter = match self.command {
            Command::Demo(_) | Command::Publish(_) | Command::Bench(_) => telemetry::QUIET_FILTER,
            _ => telemetry::DEFAULT_FILTER,
        };
        telemetry::init(self.log_format, filter);
        register_early_secrets(&self.command);
        let result = match self.command {
            Command::Run(args) => run(&args).await,
            Command::Migrate(args) => migrate(&args).await,
            Command::FakeTaptalk(args) => fake_taptalk(&args).await,
            Command::Demo(args) => crate::demo::run(&args).await,
            Command::Publish(args) => crate::publish::run(&args).await,
            Command::Bench(args) => crate::bench::run(&args).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ticket-worker: {}", telemetry::scrub(&error.to_string()));
                match error {
                    CommandError::Config(_) => ExitCode::from(2),
                    CommandError::Failed(_) => ExitCode::FAILURE,
                }
            }
        }
    }
}

/// `demo`, `publish` and `bench` read their settings in their own modules: read the
/// URLs here too, only to register their passwords with the log redactor
/// before anything connects. A setting that does not parse is left to the
/// command to report.
fn register_early_secrets(command: &Command) {
    match command {
        Command::Demo(args) => {
            let local = crate::demo::LOCAL_AMQP_URL;
            if let Ok(broker) = BrokerSettings::from_args(&args.broker, Some(local)) {
                register_broker_secrets(&broker);
            }
            let local = crate::demo::LOCAL_DATABASE_URL;
            if let Ok(database) = DatabaseSettings::from_args(&args.database, Some(local)) {
                register_database_secrets(&database);
            }
        }
        Command::Publish(args) => {
            if let Ok(broker) = BrokerSettings::from_args(&args.broker, None) {
                register_broker_secrets(&broker);
            }
        }
        Command::Bench(args) => {
            let local = crate::demo::LOCAL_AMQP_URL;
            if let Ok(broker) = BrokerSettings::from_args(&args.broker, Some(local)) {
                register_broker_secrets(&broker);
            }
            let local = crate::demo::LOCAL_DATABASE_URL;
            if let Ok(database) = DatabaseSettings::from_args(&args.database, Some(local)) {
                register_database_secrets(&database);
            }
        }
        Command::Run(_) | Command::Migrate(_) | Command::FakeTaptalk(_) => {}
    }
}

fn register_broker_secrets(broker: &BrokerSettings) {
    telemetry::register_url(broker.amqp_url.expose_secret());
}

fn register_database_secrets(database: &DatabaseSettings) {
    telemetry::register_url(database.url.expose_secret());
}

async fn run(args: &RunArgs) -> Result<(), CommandError> {
    let settings = Settings::from_args(args)?;
    register_broker_secrets(&settings.broker);
    register_database_secrets(&settings.database);
    settings.taptalk.server_key.register_with_logs();
    tracing::info!(
        amqp = %crate::configuration::redact_url(settings.broker.amqp_url.expose_secret()),
        taptalk = %crate::configuration::redact_url(settings.taptalk.base_url.as_str()),
        server_key_id = settings.taptalk.server_key.id(),
        "starting ticket-worker {}",
        env!("CARGO_PKG_VERSION")
    );
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
    Application::build(settings)?
        .run_until_stopped(shutdown)
        .await?;
    Ok(())
}

async fn migrate(args: &DatabaseArgs) -> Result<(), CommandError> {
    let database = DatabaseSettings::from_args(args, None)?;
    register_database_secrets(&database);
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

async fn fake_taptalk(args: &FakeTaptalkArgs) -> Result<(), CommandError> {
    let key = crate::configuration::server_key(&args.key)?;
    key.register_with_logs();
    let knobs = Knobs {
        latency: args.latency,
        latency_jitter: args.latency_jitter,
        fail_503: args.fail_503,
        fail_429: args.fail_429,
        hang: args.hang,
        hang_for: args.hang_for,
        wrong_key: args.wrong_key,
        numeric_codes: args.numeric_error_codes,
        capacity: args.capacity.map(|n| n as usize),
        max_queue: args.max_queue.map(|n| n as usize),
    };
    let server = FakeTaptalk::start(args.listen, &key, knobs.clone(), false)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (FAKE_TAPTALK_LISTEN): {e}",
                args.listen
            )
        })?;
    tracing::info!(url = %server.base_url(), server_key_id = key.id(), ?knobs, "TapTalk stand-in listening");
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
    shutdown.triggered().await;
    server.stop();
    Ok(())
}

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e}; write e.g. 25ms, 2s"))
}

fn share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("must be a number between 0 and 1".into()),
    }
}
