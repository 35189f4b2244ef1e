//! `ticket-worker demo`: the newcomer's first command. It starts the TapTalk
//! stand-in and a worker in this process, publishes a few hundred realistic
//! login events to the local RabbitMQ (a few of them deliberately bad), shows
//! progress while they flow, and ends with what Postgres now holds.
//!
//! A run leaves nothing behind unless asked to. It has an id of its own
//! ([`DemoRun`], `demo-1a2b3c4d`) that names its exchanges and queues
//! (`taptalk.demo-1a2b3c4d.logins`, …), so its dead letters never mix with
//! real ones, and starts its events' ids. After the final table it stops the
//! worker, deletes those exchanges and queues and exactly its events' rows
//! (also when it fails, times out or is interrupted, as far as it can), and
//! says so in one line. `--keep` keeps all of it, and `--remove <run>`
//! removes it later. Topology names given by flag or environment are
//! honoured as by the worker; the demo then leaves those exchanges and
//! queues alone, since they may be somebody's real ones.

mod clean_up;
mod report;
mod run_id;
mod traffic;

pub use run_id::{DemoRun, NotARunId};

use super::{CommandError, LOCAL_AMQP_URL, LOCAL_DATABASE_URL};
use crate::broker::{Topology, connect};
use crate::config::{
    BrokerArgs, BrokerSettings, DatabaseArgs, DatabaseSettings, RunArgs, ServerKeyArgs, Settings,
    TaptalkArgs,
};
use crate::domain::EventId;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::startup::Application;
use crate::storage::TicketStore;
use crate::taptalk::ServerKey;
use clean_up::{Rows, Whose, count_held, kept_line, removal_line, remove_things};
use fake_taptalk::{FakeTaptalk, Knobs};
use lapin::Connection;
use run_id::{GivenNames, NAME_SETTINGS};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use traffic::{Progress, Seen};

/// `ticket-worker demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Login events to publish
    #[arg(long, default_value_t = 300)]
    pub events: usize,
    /// TapTalk requests the worker has in flight: `auto` (as the worker) or a number
    #[arg(long, default_value = "auto")]
    pub concurrency: String,
    /// Stand-in latency per request (plus up to twice as much jitter)
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of stand-in requests answered 503, to show retries (0 to 1)
    #[arg(long, default_value_t = 0.03)]
    pub fail_503: f64,
    /// Give up waiting after this long
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Keep what the run made (its rows, exchanges and queues) instead of removing it at the end
    #[arg(long)]
    pub keep: bool,
    /// Only remove what an earlier run left (after --keep, or an interrupted run): its rows, exchanges and queues
    #[arg(long, value_name = "RUN", value_parser = DemoRun::parse, conflicts_with = "keep")]
    pub remove: Option<DemoRun>,
    /// Before `broker`: clap's derive takes each value out of its matches
    /// as it reads it, and this looks at the topology's.
    #[command(flatten)]
    names: GivenNames,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What a run has started, stopped at the end whatever happened.
#[derive(Default)]
struct Running {
    /// Whether the worker was started: from then on RabbitMQ and Postgres
    /// may hold something of the run's.
    started: bool,
    fake: Option<FakeTaptalk>,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
    connection: Option<Connection>,
}

impl Running {
    /// Stops the worker (in-flight events finish within its 5 s grace or go
    /// back to the queue), the stand-in and the demo's own connection.
    /// Safe to repeat.
    async fn stop(&mut self, shutdown: &Shutdown) {
        shutdown.trigger();
        if let Some(mut worker) = self.worker.take() {
            // The grace, then up to 10 s for RabbitMQ to close the connection.
            if tokio::time::timeout(Duration::from_secs(20), &mut worker)
                .await
                .is_err()
            {
                worker.abort();
            }
        }
        if let Some(connection) = self.connection.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                connection.close(200, "demo over".into()),
            )
            .await;
        }
        if let Some(fake) = self.fake.take() {
            fake.stop();
        }
    }
}

pub async fn run(args: &DemoArgs) -> Result<(), CommandError> {
    if let Some(run) = &args.remove {
        return remove(args, run).await;
    }
    let broker = BrokerSettings::from_args(&args.broker, Some(LOCAL_AMQP_URL))?;
    let database = DatabaseSettings::from_args(&args.database, Some(LOCAL_DATABASE_URL))?;
    let run = DemoRun::new();
    let own_topology = args.names.0.is_empty();
    let topology = if own_topology {
        run.topology(broker.topology.delivery_limit)
    } else {
        broker.topology.clone()
    };
    if own_topology {
        say(&format!(
            "run {run}, on exchanges and queues of its own ({})",
            run.topology_pattern()
        ));
    } else {
        let others = if args.names.0.len() < NAME_SETTINGS.len() {
            "; the others default"
        } else {
            ""
        };
        say(&format!(
            "run {run}, on the exchanges and queues you named ({}{others}), which it leaves in place",
            args.names.0.join(", ")
        ));
    }
    let store = TicketStore::connect_lazy(&database.url, 2).map_err(anyhow::Error::from)?;
    let events = traffic::login_events(&run, args.events);
    let event_ids: Vec<EventId> = events
        .iter()
        .filter_map(|e| e["eventID"].as_str())
        .filter_map(|id| EventId::parse(id).ok())
        .collect();
    let shutdown = Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;

    let mut running = Running::default();
    let shown = show(
        args,
        &broker,
        &topology,
        &store,
        &events,
        &shutdown,
        &mut running,
    )
    .await;
    running.stop(&shutdown).await;
    if !running.started {
        // Nothing reached RabbitMQ or Postgres: nothing to remove.
        return shown;
    }

    let tidied = if args.keep {
        let held = if own_topology {
            Some(count_held(&broker.amqp_url, &topology).await)
        } else {
            None
        };
        say(&kept_line(&run, held));
        Ok(())
    } else {
        let removal = remove_things(
            &broker.amqp_url,
            own_topology.then_some(&topology),
            &store,
            Rows::Of(&event_ids),
        )
        .await;
        let whose = if own_topology {
            Whose::ThisRun
        } else {
            Whose::ThisRunOnNamesGiven
        };
        say(&removal_line(&run, &removal, whose));
        removal.complete()
    };
    store.pool().close().await;
    shown?;
    tidied.map_err(|e| anyhow::Error::from(e).into())
}

/// Everything up to the final table: the stand-in, the worker, the events
/// and their answers. What it starts goes into `running`.
async fn show(
    args: &DemoArgs,
    broker: &BrokerSettings,
    topology: &Topology,
    store: &TicketStore,
    events: &[Value],
    shutdown: &Shutdown,
    running: &mut Running,
) -> Result<(), CommandError> {
    let secret = SecretString::from(uuid::Uuid::new_v4().to_string());
    let key = ServerKey::new("demo-key", secret.clone());
    let knobs = Knobs {
        latency: args.latency,
        latency_jitter: args.latency * 2,
        fail_503: args.fail_503.clamp(0.0, 1.0),
        ..Knobs::default()
    };
    let fake = FakeTaptalk::start(([127, 0, 0, 1], 0).into(), &key, knobs, false)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the TapTalk stand-in: {e}"))?;
    say(&format!(
        "TapTalk stand-in on {} ({} latency, {:.0}% of requests answered 503)",
        fake.base_url(),
        humantime::format_duration(args.latency),
        args.fail_503 * 100.0
    ));
    let base_url = fake.base_url().to_string();
    running.fake = Some(fake);

    // The worker's own defaults, on the demo's services and topology, with
    // quicker retries so that the injected 503s do not hold the demo up.
    let mut run = RunArgs::from_environment().map_err(|e| anyhow::anyhow!("{e}"))?;
    run.broker = args.broker.clone();
    run.database = args.database.clone();
    if run.broker.amqp_url_file.is_none() {
        run.broker
            .amqp_url
            .get_or_insert_with(|| LOCAL_AMQP_URL.to_owned());
    }
    if run.database.database_url_file.is_none() {
        run.database
            .database_url
            .get_or_insert_with(|| LOCAL_DATABASE_URL.to_owned());
    }
    run.taptalk = TaptalkArgs {
        taptalk_base_url: Some(base_url),
        key: ServerKeyArgs {
            taptalk_server_key_id: Some(key.id().to_owned()),
            taptalk_server_key_secret: Some(secret.expose_secret().to_owned()),
            taptalk_server_key_secret_file: None,
        },
    };
    run.concurrency = args.concurrency.clone();
    let mut settings = Settings::from_args(&run)?;
    settings.broker.topology = topology.clone();
    settings.taptalk.retry = RetryPolicy {
        first_pause: Duration::from_millis(100),
        max_pause: Duration::from_secs(2),
        give_up_after: Some(Duration::from_secs(20)),
    };
    settings.probe = RetryPolicy::forever(Duration::from_millis(500), Duration::from_secs(5));
    settings.shutdown_grace = Duration::from_secs(5);
    // The demo is a look, not a deployment: no metrics or probes server.
    settings.http_listen = None;
    settings.purge = None;
    let app = Application::build(settings)?;
    running.worker = Some(tokio::spawn(app.run_until_stopped(shutdown.clone())));
    running.started = true;

    let connection = connect(&broker.amqp_url, "ticket-worker demo")
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ: {e}"))?;
    let declared = topology.declare(&connection).await;
    let channel = connection
        .create_channel()
        .await
        .map_err(anyhow::Error::from);
    running.connection = Some(connection);
    declared.map_err(anyhow::Error::from)?;
    let channel = channel?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    traffic::watch_ticket_events(&channel, topology, Arc::clone(&seen))
        .await
        .map_err(anyhow::Error::from)?;

    let ids: HashSet<String> = events
        .iter()
        .filter_map(|e| e["eventID"].as_str().map(str::to_owned))
        .collect();
    say(&format!(
        "publishing {} login events to exchange {}",
        events.len(),
        topology.login_exchange
    ));
    let started = Instant::now();
    traffic::publish(&channel, topology, events)
        .await
        .map_err(anyhow::Error::from)?;

    let progress = traffic::progress(&seen, &ids, started, args.timeout, shutdown).await;
    let elapsed = started.elapsed();
    running.stop(shutdown).await;

    let event_ids: Vec<EventId> = ids
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .collect();
    let records = store
        .find_many(&event_ids)
        .await
        .map_err(anyhow::Error::from)?;
    report::print_table(&records);
    let seen = seen
        .lock()
        .map(|s| (s.ready.len(), s.failed.clone()))
        .unwrap_or_default();
    report::print_summary(events.len(), &records, &seen.1, elapsed, args.keep);
    match progress {
        Progress::Answered => Ok(()),
        Progress::TimedOut => Err(anyhow::anyhow!(
            "not every event was answered within {}",
            humantime::format_duration(args.timeout)
        )
        .into()),
        Progress::Interrupted => Err(anyhow::anyhow!("interrupted").into()),
    }
}

/// `demo --remove <run>`: removes what an earlier run left, found by its
/// names alone (its exchanges and queues, the rows of its event ids).
async fn remove(args: &DemoArgs, run: &DemoRun) -> Result<(), CommandError> {
    let broker = BrokerSettings::from_args(&args.broker, Some(LOCAL_AMQP_URL))?;
    let database = DatabaseSettings::from_args(&args.database, Some(LOCAL_DATABASE_URL))?;
    let store = TicketStore::connect_lazy(&database.url, 2).map_err(anyhow::Error::from)?;
    let topology = run.topology(broker.topology.delivery_limit);
    let prefix = run.event_id_prefix();
    let removal = remove_things(
        &broker.amqp_url,
        Some(&topology),
        &store,
        Rows::StartingWith(&prefix),
    )
    .await;
    store.pool().close().await;
    say(&removal_line(run, &removal, Whose::EarlierRun));
    removal
        .complete()
        .map_err(|e| anyhow::Error::from(e).into())
}

fn say(line: &str) {
    eprintln!("demo: {line}");
}
