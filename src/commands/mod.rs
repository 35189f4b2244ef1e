//! The command line: `ticket-worker run | migrate | fake-taptalk | demo | publish | dlq`.
//! Each command lives in its own file; this one only parses and dispatches,
//! registers secrets with the log redactor before anything connects, and turns
//! failures into exit codes (2: configuration, 1: other), the final error line
//! scrubbed like every log line.

#[cfg(feature = "stand-in")]
pub mod demo;
pub mod dlq;
mod error;
#[cfg(feature = "stand-in")]
pub mod fake_taptalk;
mod migrate;
pub mod publish;
mod run;
pub mod runtime;
mod secrets;
pub mod tail;

pub use error::CommandError;

use crate::config::{BrokerSettings, ConfigError, ConfigErrors, DatabaseArgs, RunArgs, Settings};
use crate::observe::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Where the demo and the benchmark (the `ticket-bench` crate) look when
/// AMQP_URL / DATABASE_URL are not set: the local RabbitMQ and Postgres of
/// the README's Quick start.
#[cfg(feature = "stand-in")]
pub const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
#[cfg(feature = "stand-in")]
pub const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

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
    #[cfg(feature = "stand-in")]
    /// Serve the TapTalk.io stand-in (for local runs, tests and benchmarks)
    FakeTaptalk(fake_taptalk::FakeTaptalkArgs),
    #[cfg(feature = "stand-in")]
    /// See it work: the stand-in, a worker and a few hundred login events, on the local RabbitMQ and Postgres
    Demo(Box<demo::DemoArgs>),
    /// Publish login events (JSON lines, from a file or stdin) to the login exchange
    Publish(publish::PublishArgs),
    /// Look at the dead letters, and replay them once what failed them is fixed
    Dlq(dlq::DlqArgs),
    /// Follow ticket.ready and ticket.failed live, one line each (user, outcome, reason, login-to-ready)
    Tail(Box<tail::TailArgs>),
}

impl Cli {
    /// Runs the chosen command on the runtime of [`runtime`] and returns
    /// the process exit code: what `main` does.
    pub fn main(self) -> ExitCode {
        runtime::block_on(self.execute())
    }

    /// Runs the chosen command and maps its result to the process exit code.
    pub async fn execute(self) -> ExitCode {
        let filter = match self.command {
            Command::Publish(_) | Command::Dlq(_) | Command::Tail(_) => observe::QUIET_FILTER,
            #[cfg(feature = "stand-in")]
            Command::Demo(_) => observe::QUIET_FILTER,
            _ => observe::DEFAULT_FILTER,
        };
        // Traces are the worker's: only `run` exports spans. A malformed
        // OTEL_* setting stops it like any other setting, listed with them.
        let traces = match &self.command {
            Command::Run(args) => match observe::traces::Traces::from_env() {
                Ok(traces) => traces,
                Err(error) => {
                    observe::init(self.log_format, filter);
                    let errors = match Settings::from_args(args) {
                        Ok(_) => ConfigErrors::from(ConfigError::from(error)),
                        Err(errors) => errors.and(error.into()),
                    };
                    return failed(&CommandError::Config(errors));
                }
            },
            _ => None,
        };
        observe::init_with(self.log_format, filter, traces.as_ref());
        register_early_secrets(&self.command);
        let result = match self.command {
            Command::Run(args) => run::run(&args).await,
            Command::Migrate(args) => migrate::run(&args).await,
            #[cfg(feature = "stand-in")]
            Command::FakeTaptalk(args) => fake_taptalk::run(&args).await,
            #[cfg(feature = "stand-in")]
            Command::Demo(args) => demo::run(&args).await,
            Command::Publish(args) => publish::run(&args).await,
            Command::Dlq(args) => dlq::run(&args).await,
            Command::Tail(args) => tail::run(&args).await,
        };
        // Explicitly, once the command has stopped: the spans still queued
        // go out before the process exits.
        if let Some(traces) = traces {
            traces.shutdown().await;
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => failed(&error),
        }
    }
}

/// A RabbitMQ connection named after the command (`ticket-worker tail`), or
/// an error that says where to look.
pub(crate) async fn broker_connection(
    broker: &BrokerSettings,
    command: &str,
) -> Result<lapin::Connection, CommandError> {
    crate::broker::connect(
        &broker.amqp_url,
        &format!("{} {command}", broker.connection_name),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ: {e}").into())
}

/// Prints the final error line, scrubbed, and returns its exit code.
fn failed(error: &CommandError) -> ExitCode {
    eprintln!("ticket-worker: {}", observe::scrub(&error.to_string()));
    ExitCode::from(error.exit_code())
}

/// `demo` and `publish` read their settings in their own modules: read the
/// URLs here too, only to register their passwords with the log redactor
/// before anything connects. A setting that does not parse is left to the
/// command to report.
fn register_early_secrets(command: &Command) {
    match command {
        #[cfg(feature = "stand-in")]
        Command::Demo(args) => register_with_local_defaults(&args.broker, &args.database),
        Command::Publish(args) => {
            if let Ok(broker) = BrokerSettings::from_args(&args.broker, None) {
                secrets::register_broker(&broker);
            }
        }
        // These register theirs as soon as they have read their settings.
        Command::Run(_) | Command::Migrate(_) | Command::Dlq(_) | Command::Tail(_) => {}
        #[cfg(feature = "stand-in")]
        Command::FakeTaptalk(_) => {}
    }
}

/// For the commands that fall back to the local RabbitMQ and Postgres (the
/// demo): registers the URLs they will use.
#[cfg(feature = "stand-in")]
fn register_with_local_defaults(broker: &crate::config::BrokerArgs, database: &DatabaseArgs) {
    use crate::config::DatabaseSettings;
    if let Ok(broker) = BrokerSettings::from_args(broker, Some(LOCAL_AMQP_URL)) {
        secrets::register_broker(&broker);
    }
    if let Ok(database) = DatabaseSettings::from_args(database, Some(LOCAL_DATABASE_URL)) {
        secrets::register_database(&database);
    }
}
