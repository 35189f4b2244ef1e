//! `ticket-bench`: measures the worker on the user's own machine, against
//! the configured RabbitMQ and Postgres, from one command
//! (`cargo run --release -p ticket-bench -- --case <case>`).
//!
//! A crate of its own, apart from the product: it depends on the product's
//! library (`ticket_worker`) and on the TapTalk stand-in (`fake_taptalk`),
//! nothing depends on it, and it is never part of the shipped binary. Its
//! worker replicas are the product's own `run` command at its defaults: this
//! binary starts itself as `ticket-bench worker-run …` (hidden), which hands
//! the rest of its command line to the product's command line as
//! `ticket-worker run …`, in a process of its own, measured from outside.
//!
//! A run, in order:
//!
//! 1. makes a place of its own: a RabbitMQ vhost `bench-<id>` (or, without
//!    `rabbitmqctl`, exchanges and queues `taptalk.bench-<id>.*`) and a
//!    Postgres database `ticket_bench_<id>`, migrated (`environment.rs`,
//!    `vhost.rs`, `database.rs`);
//! 2. measures the broker-only ceiling there (`ceiling.rs`);
//! 3. runs each phase of its case (`cases.rs`, `phase.rs`): the TapTalk
//!    stand-in in this process with the phase's latency and capacity,
//!    worker replicas as separate processes at the worker's default
//!    settings (`replicas.rs`), login events published as a burst or at a
//!    rate (`events.rs`, `load.rs`) while their ticket events are watched
//!    (`watch.rs`, `ledger.rs`), a progress line each second
//!    (`progress.rs`);
//! 4. reports: a table on stdout (`table.rs`), the targets judged
//!    (`targets.rs`), `--json` (`report.rs`), `--svg` (`svg.rs`), from the
//!    figures of `stats.rs` and `procfs.rs`;
//! 5. removes what it made, also on failure and Ctrl-C (`--keep` keeps it).

mod args;
mod burn;
mod cases;
mod ceiling;
mod database;
mod environment;
mod error;
mod events;
mod ledger;
mod load;
mod phase;
mod procfs;
mod progress;
mod replicas;
mod report;
mod stats;
mod svg;
mod table;
mod targets;
mod vhost;
mod watch;

use args::BenchArgs;
use cases::Plan;
use clap::Parser;
use environment::{Environment, say};
use phase::{Context, Running};
use report::{Report, RunSettings};
use secrecy::ExposeSecret;
use std::process::ExitCode;
use std::time::Duration;
use ticket_worker::broker::connect;
use ticket_worker::commands::CommandError;
use ticket_worker::commands::{LOCAL_AMQP_URL, LOCAL_DATABASE_URL};
use ticket_worker::config::{BrokerSettings, ConfigError, DatabaseSettings};
use ticket_worker::events::TicketReady;
use ticket_worker::observe::{self, LogFormat};
use ticket_worker::shutdown::Shutdown;
use ticket_worker::time::Later;
use tokio::time::Instant;

/// Messages the ceiling publishes at most per distinct body (it cycles).
const CEILING_BODIES: usize = 1_000;

/// The hidden first argument that makes this process a worker replica
/// (`replicas.rs`): the rest of the command line goes to `ticket-worker run`.
const WORKER_RUN: &str = "worker-run";

/// Measure the worker: throughput, latency, CPU and commits per event, against a broker-only ceiling.
#[derive(Parser)]
#[command(name = "ticket-bench", version, about)]
struct Cli {
    /// Log format
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    bench: Box<BenchArgs>,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let program = args.next();
    let mut rest = args.peekable();
    if rest.peek().is_some_and(|first| first == WORKER_RUN) {
        rest.next();
        return worker_run(rest);
    }
    bench(Cli::parse_from(program.into_iter().chain(rest)))
}

#[tokio::main]
async fn bench(cli: Cli) -> ExitCode {
    observe::init(cli.log_format, observe::QUIET_FILTER);
    match run(&cli.bench).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ticket-bench: {}", observe::scrub(&error.to_string()));
            ExitCode::from(error.exit_code())
        }
    }
}

/// A worker replica: the product's own command line, as `ticket-worker run
/// <args>`, so the replica is exactly the product's `run` (its settings,
/// logs, traces, exit codes and runtime), only started from this binary.
fn worker_run(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let command_line = ["ticket-worker", "run"]
        .map(std::ffi::OsString::from)
        .into_iter()
        .chain(args);
    ticket_worker::commands::Cli::parse_from(command_line).main()
}

async fn run(args: &BenchArgs) -> Result<(), CommandError> {
    let plan = Plan::from_args(args).map_err(|problem| ConfigError {
        setting: "--replicas",
        problem,
    })?;
    let broker = BrokerSettings::from_args(&args.broker, Some(LOCAL_AMQP_URL))?;
    let database = DatabaseSettings::from_args(&args.database, Some(LOCAL_DATABASE_URL))?;
    ticket_worker::observe::register_url(broker.amqp_url.expose_secret());
    ticket_worker::observe::register_url(database.url.expose_secret());
    let delivery_limit = match args.worker_env.iter().find(|(k, _)| k == "DELIVERY_LIMIT") {
        None => ticket_worker::broker::Topology::default().delivery_limit,
        Some((_, value)) => value.parse().map_err(|_| ConfigError {
            setting: "DELIVERY_LIMIT",
            problem: format!("--worker-env DELIVERY_LIMIT={value} is not a whole number"),
        })?,
    };
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;

    let deadline = Instant::now().later_by(args.timeout);
    let _burner = if args.burn_core {
        let burner = burn::Burner::start();
        if burner.is_none() {
            return Err(anyhow::anyhow!("--burn-core: cannot start the spinning thread").into());
        }
        say("burning one core beside the run (--burn-core)");
        burner
    } else {
        None
    };
    let mut environment = Environment::new();
    let mut running = Running::default();
    let measured = tokio::select! {
        measured = measure(args, &plan, &broker, &database, delivery_limit, deadline, &shutdown, &mut environment, &mut running) => measured,
        _ = shutdown.triggered() => Err(anyhow::anyhow!("interrupted")),
    };
    if measured.is_err() {
        say("stopping what runs and removing what the run made");
    }
    running.stop(phase::STOP_WITHIN).await;

    let printed = match &measured {
        Ok(report) => output(args, report),
        Err(_) => Ok(()),
    };
    let tidied = if args.keep {
        say(&environment.kept_line());
        true
    } else {
        let (line, all) = environment.remove().await;
        say(&line);
        all
    };
    measured?;
    printed?;
    if !tidied {
        return Err(anyhow::anyhow!("could not remove everything the run made (see above)").into());
    }
    Ok(())
}

/// Everything between setting up and cleaning up.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &BenchArgs,
    plan: &Plan,
    broker: &BrokerSettings,
    database: &DatabaseSettings,
    delivery_limit: u32,
    deadline: Instant,
    shutdown: &Shutdown,
    environment: &mut Environment,
    running: &mut Running,
) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = environment.id.clone();
    let place = environment
        .prepare_broker(broker, delivery_limit)
        .await?
        .clone();
    let bench_database = environment.prepare_database(database).await?;
    say(&format!(
        "run {id}: {}, database {}; the worker replicas run at their default settings{}",
        match &place.isolation {
            vhost::Isolation::Vhost(name) => format!("vhost {name}"),
            vhost::Isolation::Names(pattern) => format!("exchanges and queues {pattern}"),
        },
        bench_database.name,
        if args.worker_env.is_empty() {
            String::new()
        } else {
            " except the --worker-env ones".to_owned()
        }
    ));

    let connection = connect(&place.amqp_url, &format!("ticket-bench-{id}"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ: {e}"))?;
    let measured = async {
        place
            .topology
            .declare(&connection)
            .await
            .map_err(|e| anyhow::anyhow!("cannot declare the run's exchanges and queues: {e}"))?;

        let ceiling = match plan.ceiling_events {
            Some(messages) if messages > 0 => {
                let (mut bodies, _) = events::login_events(messages.min(CEILING_BODIES));
                let now = chrono::Utc::now();
                bodies.iter_mut().for_each(|b| b.stamp(now));
                let patience = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(600));
                let ceiling =
                    ceiling::measure(&place, &bodies, &ceiling_reply(), messages, patience).await?;
                say(&format!(
                    "broker-only ceiling: {} messages/s ({} consumed, each answered with a confirmed publish, then acked, in {:.2} s)",
                    table::thousands(ceiling.per_second),
                    table::thousands(messages as f64),
                    ceiling.seconds
                ));
                Some(ceiling)
            }
            _ => None,
        };

        let ctx = Context {
            id: &id,
            place: &place,
            database: bench_database,
            connection: &connection,
            worker_env: &args.worker_env,
            case_env: &plan.worker_env,
            worker_bin: args.worker_bin.as_deref(),
            replica_logs: args.replica_logs.as_deref(),
            deadline,
            timeout: args.timeout,
            ticks_per_second: procfs::ticks_per_second(),
            shutdown,
            ceiling: ceiling.as_ref().map(|c| c.per_second),
        };
        let mut phases = Vec::with_capacity(plan.phases.len());
        for phase in &plan.phases {
            say(&format!(
                "phase {}: {} replica{}, {} events",
                phase.name,
                phase.replicas,
                if phase.replicas == 1 { "" } else { "s" },
                table::thousands(phase.load.events() as f64)
            ));
            let report = phase::run(&ctx, phase, running).await?;
            running.stop(phase::STOP_WITHIN).await;
            phases.push(report);
        }
        let mut report = Report {
            case: plan.case,
            version: env!("CARGO_PKG_VERSION"),
            started_at,
            machine: procfs::Machine::this(),
            settings: RunSettings {
                plan: plan.clone(),
                isolation: place.isolation.clone(),
                database: bench_database.name.clone(),
                worker_env: plan
                    .worker_env
                    .iter()
                    .filter(|(k, _)| !args.worker_env.iter().any(|(o, _)| o == k))
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain(
                        args.worker_env
                            .iter()
                            .map(|(k, v)| ticket_worker::observe::scrub(&format!("{k}={v}"))),
                    )
                    .collect(),
                worker_bin: args.worker_bin.as_ref().map(|p| p.display().to_string()),
                burn_core: args.burn_core,
                timeout_s: args.timeout.as_secs_f64(),
            },
            ceiling,
            phases,
            targets: Vec::new(),
        };
        report.targets = targets::judge(&report);
        Ok(report)
    }
    .await;
    let _ = connection.close(200, "bench over".into()).await;
    measured
}

/// A `ticket.ready` as the worker publishes it, the ceiling's reply.
fn ceiling_reply() -> Vec<u8> {
    let now = chrono::Utc::now();
    let ready = TicketReady {
        event_id: uuid::Uuid::new_v4().to_string(),
        xc_user_id: "cust-1234".into(),
        user_id: "1001234".into(),
        user_device_id: "android-1a2b3c4d".into(),
        user_platform: "android",
        issued_at: now,
        expires_at: now
            .checked_add_signed(chrono::Duration::hours(1))
            .unwrap_or(now),
        login_occurred_at: Some(now),
    };
    serde_json::to_vec(&ready).unwrap_or_default()
}

/// The table (stdout, or stderr when the JSON goes to stdout), the JSON
/// report and the plot.
fn output(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    let table = table::render(report);
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if json_to_stdout {
        eprint!("\n{table}");
    } else {
        print!("\n{table}");
    }
    if let Some(path) = &args.json {
        report.write_json(path)?;
        if !json_to_stdout {
            say(&format!("JSON report written to {}", path.display()));
        }
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::render(report))
            .map_err(|e| anyhow::anyhow!("cannot write the plot to {}: {e}", path.display()))?;
        say(&format!("plot written to {}", path.display()));
    }
    Ok(())
}
