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

use super::{CommandError, LOCAL_AMQP_URL, LOCAL_DATABASE_URL};
use crate::broker::{Topology, connect};
use crate::config::{
    BrokerArgs, BrokerSettings, DatabaseArgs, DatabaseSettings, RunArgs, ServerKeyArgs, Settings,
    TaptalkArgs,
};
use crate::domain::{EventId, TicketRecord};
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::startup::Application;
use crate::storage::{Forgotten, StoreError, TicketStore};
use crate::taptalk::ServerKey;
use fake_taptalk::{FakeTaptalk, Knobs};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long each clean-up step (RabbitMQ, Postgres) may take.
const CLEAN_UP_WITHIN: Duration = Duration::from_secs(15);

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

/// One demo run's id, `demo-` and 8 hex digits. It names the run's exchanges
/// and queues and starts its login events' ids, so that what a run made can
/// be told from everything else, and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoRun(String);

impl DemoRun {
    fn new() -> DemoRun {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        DemoRun(format!("demo-{}", &hex[..8]))
    }

    /// Reads a run id as the demo prints it (`demo-1a2b3c4d`; the bare hex
    /// digits do too).
    pub fn parse(raw: &str) -> Result<DemoRun, String> {
        let hex = raw.strip_prefix("demo-").unwrap_or(raw);
        if hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(DemoRun(format!("demo-{hex}")))
        } else {
            Err("expected a demo run id as the demo printed it: demo- and 8 hex digits".into())
        }
    }

    /// The run's own exchanges and queues: the worker's default names with
    /// `taptalk.` replaced by `taptalk.<run>.`.
    pub fn topology(&self, delivery_limit: u32) -> Topology {
        let name = |rest: &str| format!("taptalk.{}.{rest}", self.0);
        Topology {
            login_exchange: name("logins"),
            work_queue: name("logins.ticket-worker"),
            dead_letter_exchange: name("logins.dlx"),
            dead_letter_queue: name("logins.dead"),
            ticket_exchange: name("tickets"),
            delivery_limit,
        }
    }

    /// What every event id of the run starts with: `demo-1a2b3c4d-`.
    pub fn event_id_prefix(&self) -> String {
        format!("{}-", self.0)
    }

    /// A fresh event id of the run.
    fn event_id(&self) -> String {
        format!("{}{}", self.event_id_prefix(), uuid::Uuid::new_v4())
    }

    /// `taptalk.demo-1a2b3c4d.*`, for messages.
    fn topology_pattern(&self) -> String {
        format!("taptalk.{}.*", self.0)
    }
}

impl fmt::Display for DemoRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The topology settings given by flag or environment rather than left at
/// their defaults (clap fills the defaults in, so only its matches tell).
/// Adds no arguments of its own: it reads those of [`BrokerArgs`].
#[derive(Debug, Clone, Default)]
struct GivenNames(Vec<&'static str>);

/// The topology names: clap's argument id, and the setting's name.
const NAME_SETTINGS: [(&str, &str); 5] = [
    ("login_exchange", "LOGIN_EXCHANGE"),
    ("work_queue", "WORK_QUEUE"),
    ("dead_letter_exchange", "DEAD_LETTER_EXCHANGE"),
    ("dead_letter_queue", "DEAD_LETTER_QUEUE"),
    ("ticket_exchange", "TICKET_EXCHANGE"),
];

impl clap::FromArgMatches for GivenNames {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use clap::parser::ValueSource;
        Ok(GivenNames(
            NAME_SETTINGS
                .iter()
                .filter(|(id, _)| {
                    matches!(
                        matches.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
                .map(|(_, setting)| *setting)
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = GivenNames::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for GivenNames {
    fn augment_args(command: clap::Command) -> clap::Command {
        command
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        command
    }
}

/// Counts of the ticket events seen for the demo's own login events.
#[derive(Debug, Default)]
struct Seen {
    ready: HashSet<String>,
    failed: Vec<(String, String)>,
}

/// How waiting for the answers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Answered,
    TimedOut,
    Interrupted,
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

/// Which rows to forget.
enum Rows<'a> {
    Of(&'a [EventId]),
    StartingWith(&'a str),
}

/// Whose things are removed, for the words of the line that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    /// This run's, on exchanges and queues of its own.
    ThisRun,
    /// This run's, on exchanges and queues named by flag or environment,
    /// which stay.
    ThisRunOnNamesGiven,
    /// An earlier run's (`--remove`): whatever of it is left.
    EarlierRun,
}

/// What removing a run's things came to.
struct Removal {
    rows: Result<Forgotten, String>,
    /// `None`: the topology was not the run's own, so it was left alone.
    topology: Option<Result<Held, String>>,
}

/// Messages in a run's work queue and dead-letter queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    unanswered: u32,
    dead_letters: u32,
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
    let events = login_events(&run, args.events);
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
    tidied.map_err(CommandError::from)
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
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to RabbitMQ at {}: {e}",
                crate::observe::redact_url(broker.amqp_url.expose_secret())
            )
        })?;
    let declared = topology.declare(&connection).await;
    let channel = connection
        .create_channel()
        .await
        .map_err(anyhow::Error::from);
    running.connection = Some(connection);
    declared.map_err(anyhow::Error::from)?;
    let channel = channel?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch_ticket_events(&channel, topology, Arc::clone(&seen))
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
    publish(&channel, topology, events)
        .await
        .map_err(anyhow::Error::from)?;

    let progress = progress(&seen, &ids, started, args.timeout, shutdown).await;
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
    print_table(&records);
    let seen = seen
        .lock()
        .map(|s| (s.ready.len(), s.failed.clone()))
        .unwrap_or_default();
    print_summary(events.len(), &records, &seen.1, elapsed, args.keep);
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
    removal.complete().map_err(CommandError::from)
}

/// Deletes `topology` (when given: the run's own) with whatever its queues
/// still hold, and the rows, each step within [`CLEAN_UP_WITHIN`].
async fn remove_things(
    amqp_url: &SecretString,
    topology: Option<&Topology>,
    store: &TicketStore,
    rows: Rows<'_>,
) -> Removal {
    let topology = match topology {
        Some(topology) => Some(within(delete_topology(amqp_url, topology)).await),
        None => None,
    };
    let forgotten = async {
        match rows {
            Rows::Of(ids) => store.forget_events(ids).await,
            Rows::StartingWith(prefix) => store.forget_events_starting_with(prefix).await,
        }
        .map_err(|e: StoreError| e.to_string())
    };
    Removal {
        rows: within(forgotten).await,
        topology,
    }
}

/// Deletes the run's exchanges and queues (deleting what is not there is no
/// error), and says what its queues held.
async fn delete_topology(amqp_url: &SecretString, topology: &Topology) -> Result<Held, String> {
    let connection = connect(amqp_url, "ticket-worker demo clean-up")
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let deleted = async {
        let channel = connection.create_channel().await?;
        // The queues first, one by one, for their message counts; then the
        // rest of the topology.
        let held = Held {
            unanswered: channel
                .queue_delete(topology.work_queue.as_str().into(), Default::default())
                .await?,
            dead_letters: channel
                .queue_delete(
                    topology.dead_letter_queue.as_str().into(),
                    Default::default(),
                )
                .await?,
        };
        topology.delete(&channel).await?;
        // Closed before the connection, which lapin otherwise logs as an error.
        let _ = channel.close(200, "demo clean-up".into()).await;
        Ok::<Held, lapin::Error>(held)
    }
    .await;
    let _ = connection.close(200, "demo clean-up".into()).await;
    deleted.map_err(|e| e.to_string())
}

/// What the run's queues hold (for `--keep`), by passive declarations, each
/// on a channel of its own (a missing queue closes it), within
/// [`CLEAN_UP_WITHIN`].
async fn count_held(amqp_url: &SecretString, topology: &Topology) -> Result<Held, String> {
    async fn messages(connection: &Connection, queue: &str) -> u32 {
        let Ok(channel) = connection.create_channel().await else {
            return 0;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(declared) => {
                let _ = channel.close(200, "counted".into()).await;
                declared.message_count()
            }
            Err(_) => 0,
        }
    }
    within(async {
        let connection = connect(amqp_url, "ticket-worker demo")
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let held = Held {
            unanswered: messages(&connection, &topology.work_queue).await,
            dead_letters: messages(&connection, &topology.dead_letter_queue).await,
        };
        let _ = connection.close(200, "demo over".into()).await;
        Ok(held)
    })
    .await
}

/// `step`, or an error once it has taken [`CLEAN_UP_WITHIN`].
async fn within<T>(step: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CLEAN_UP_WITHIN, step)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(CLEAN_UP_WITHIN)
            ))
        })
}

impl Removal {
    /// `Ok` when everything went.
    fn complete(&self) -> Result<(), anyhow::Error> {
        let topology_failed = matches!(self.topology, Some(Err(_)));
        if self.rows.is_err() || topology_failed {
            Err(anyhow::anyhow!(
                "could not remove everything the demo made (see above)"
            ))
        } else {
            Ok(())
        }
    }
}

/// The one line after a run (or `--remove`): what went, what could not, and
/// how to try again.
fn removal_line(run: &DemoRun, removal: &Removal, whose: Whose) -> String {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    match &removal.rows {
        Ok(rows) => removed.push(format!(
            "its rows ({} auth_tickets, {} event_outcomes, {} ticket_event_outbox)",
            rows.tickets, rows.outcomes, rows.announcements
        )),
        Err(e) => failed.push(format!("its rows (Postgres: {e})")),
    }
    let topology = match whose {
        Whose::EarlierRun => format!("any exchanges and queues {}", run.topology_pattern()),
        _ => format!("its exchanges and queues {}", run.topology_pattern()),
    };
    match &removal.topology {
        Some(Ok(held)) => removed.push(format!("{topology}{}", held_note(*held))),
        Some(Err(e)) => failed.push(format!("{topology} (RabbitMQ: {e})")),
        None => {}
    }
    let verb = match whose {
        Whose::EarlierRun => "left",
        _ => "made",
    };
    let mut line = if removed.is_empty() {
        format!("removed nothing run {run} {verb}")
    } else {
        format!("removed what run {run} {verb}: {}", removed.join(" and "))
    };
    if !failed.is_empty() {
        line.push_str(&format!(
            "; could not remove {}; try again with: ticket-worker demo --remove {run}",
            failed.join(" and ")
        ));
    }
    if whose == Whose::ThisRunOnNamesGiven {
        line.push_str("; the exchanges and queues you named stay as they are");
    }
    crate::observe::scrub(&line)
}

/// The one line after a run with `--keep`. `held` is `None` when the
/// topology was not the run's own.
fn kept_line(run: &DemoRun, held: Option<Result<Held, String>>) -> String {
    let topology = match held {
        None => String::new(),
        Some(Ok(held)) => format!(
            " and its exchanges and queues {}{}",
            run.topology_pattern(),
            held_note(held)
        ),
        Some(Err(_)) => format!(" and its exchanges and queues {}", run.topology_pattern()),
    };
    format!(
        "kept what run {run} made: its rows (event ids {}…){topology}; remove them with: ticket-worker demo --remove {run}",
        run.event_id_prefix()
    )
}

/// ` (with 3 unanswered login events and 1 dead letter)`, or nothing.
fn held_note(held: Held) -> String {
    let mut notes = Vec::new();
    if held.unanswered > 0 {
        notes.push(counted(held.unanswered, "unanswered login event"));
    }
    if held.dead_letters > 0 {
        notes.push(counted(held.dead_letters, "dead letter"));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" (with {})", notes.join(" and "))
    }
}

fn counted(n: u32, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Consumes ticket events from a private queue, recording them in `seen`.
async fn watch_ticket_events(
    channel: &Channel,
    topology: &Topology,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), lapin::Error> {
    let mut consumer =
        crate::broker::tap::subscribe(channel, topology.ticket_exchange.as_str()).await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
                continue;
            };
            let id = body["eventID"].as_str().unwrap_or_default().to_owned();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if delivery.routing_key.as_str() == "ticket.ready" {
                seen.ready.insert(id);
            } else {
                let reason = body["reason"].as_str().unwrap_or_default().to_owned();
                seen.failed.push((id, reason));
            }
        }
    });
    Ok(())
}

async fn publish(
    channel: &Channel,
    topology: &Topology,
    events: &[Value],
) -> Result<(), lapin::Error> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for event in events {
        let id = event["eventID"].as_str().unwrap_or_default();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.into());
        channel
            .basic_publish(
                topology.login_exchange.as_str().into(),
                "login".into(),
                BasicPublishOptions::default(),
                event.to_string().as_bytes(),
                properties,
            )
            .await?;
    }
    channel.wait_for_confirms().await.map(|_| ())
}

/// Prints a progress line until every event is answered, the time is up or
/// the demo is interrupted (SIGINT, SIGTERM).
async fn progress(
    seen: &Mutex<Seen>,
    ids: &HashSet<String>,
    started: Instant,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Progress {
    let total = ids.len();
    loop {
        let (ready, failed) = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            (
                seen.ready.iter().filter(|id| ids.contains(*id)).count(),
                seen.failed
                    .iter()
                    .filter(|(id, _)| ids.contains(id))
                    .map(|(id, _)| id)
                    .collect::<HashSet<_>>()
                    .len(),
            )
        };
        let rate = (ready + failed) as f64 / started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r  answered {:>4}/{total}  ready {ready:>4}  failed {failed:>3}  {rate:>6.0} events/s ",
            ready + failed
        );
        let _ = std::io::stderr().flush();
        let ended = if ready + failed >= total {
            Some(Progress::Answered)
        } else if started.elapsed() > timeout {
            Some(Progress::TimedOut)
        } else if shutdown.is_triggered() {
            Some(Progress::Interrupted)
        } else {
            None
        };
        if let Some(ended) = ended {
            eprintln!();
            return ended;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.triggered() => {}
        }
    }
}

fn print_table(records: &[TicketRecord]) {
    println!();
    println!(
        "auth_tickets (first {} of {} rows written by this demo):",
        records.len().min(12),
        records.len()
    );
    println!(
        "  {:<12} {:<10} {:<8} {:<14} {:<16} {:<20}",
        "xcUserID", "userID", "platform", "device", "ticket", "expires_at (UTC)"
    );
    for record in records.iter().take(12) {
        let ticket = record.ticket.expose();
        let masked = format!(
            "{}…({} chars)",
            ticket.chars().take(4).collect::<String>(),
            ticket.chars().count()
        );
        println!(
            "  {:<12} {:<10} {:<8} {:<14} {:<16} {:<20}",
            record.xc_user_id,
            record.user_id,
            record.platform.as_str(),
            record.user_device_id.chars().take(14).collect::<String>(),
            masked,
            record.expires_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
}

fn print_summary(
    published: usize,
    records: &[TicketRecord],
    failed: &[(String, String)],
    elapsed: Duration,
    keep: bool,
) {
    let mut reasons: Vec<(String, usize)> = Vec::new();
    let unique: HashSet<&(String, String)> = failed.iter().collect();
    for (_, reason) in unique {
        match reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason.clone(), 1)),
        }
    }
    reasons.sort();
    let failed_text = reasons
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let users: HashSet<&str> = records.iter().map(|r| r.xc_user_id.as_str()).collect();
    println!();
    println!(
        "{published} login events → {} tickets stored for {} users, ticket.failed: {}",
        records.len(),
        users.len(),
        if failed_text.is_empty() {
            "none".into()
        } else {
            failed_text
        }
    );
    println!(
        "{:.1} s from first publish to last answer: {:.0} events/s",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64().max(0.001)
    );
    if let Some(first) = records.first() {
        let select = format!(
            "SELECT user_id, ticket, expires_at FROM current_auth_ticket('{}');",
            first.xc_user_id
        );
        if keep {
            println!("an app backend reads a user's current ticket with: {select}");
        } else {
            println!(
                "an app backend reads a user's current ticket with: {select} (this run's rows are removed as it ends; --keep keeps them)"
            );
        }
    }
}

/// `count` login events as a login service would send them: a third as many
/// users as events (people log in more than once), all three platforms, and
/// about 1 in 50 deliberately bad (an unknown platform, caught by the worker;
/// a malformed e-mail, caught by TapTalk). Their ids are the run's.
fn login_events(run: &DemoRun, count: usize) -> Vec<Value> {
    let mut rng = rand::rng();
    let users = (count / 3).max(1);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (0..count)
        .map(|i| {
            let user = rng.random_range(0..users);
            let mut event =
                fake_taptalk::logins::realistic_login_event(&mut rng, user, &run.event_id(), &now);
            match i % 50 {
                17 => event["userPlatform"] = json!("windows-phone"),
                42 => {
                    let first = event["fullName"].as_str().unwrap_or_default();
                    let first = first.split(' ').next().unwrap_or_default().to_lowercase();
                    event["email"] = json!(format!("{first}(at)example.com"));
                }
                _ => {}
            }
            event
        })
        .collect()
}

fn say(line: &str) {
    eprintln!("demo: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("demo").chain(args.iter().copied())).map(|c| c.demo)
    }

    #[test]
    fn topology_names_count_as_given_only_when_set() {
        let defaults = parse(&[]).expect("parse");
        assert!(defaults.names.0.is_empty(), "{:?}", defaults.names);
        let given = parse(&[
            "--ticket-exchange",
            "t",
            "--work-queue",
            "taptalk.logins.ticket-worker",
        ])
        .expect("parse");
        assert_eq!(
            given.names.0,
            ["WORK_QUEUE", "TICKET_EXCHANGE"],
            "set, even to the default"
        );
        assert_eq!(given.broker.names.ticket_exchange, "t");
    }

    #[test]
    fn run_ids_name_the_topology_and_start_the_event_ids() {
        let run = DemoRun::new();
        assert_eq!(DemoRun::parse(&run.to_string()), Ok(run.clone()));
        let topology = run.topology(7);
        assert_eq!(topology.login_exchange, format!("taptalk.{run}.logins"));
        assert_eq!(
            topology.work_queue,
            format!("taptalk.{run}.logins.ticket-worker")
        );
        assert_eq!(topology.delivery_limit, 7);
        assert!(run.event_id().starts_with(&format!("{run}-")));
        assert!(EventId::parse(&run.event_id()).is_ok());
        assert_ne!(DemoRun::new(), run);
    }

    #[test]
    fn remove_takes_only_a_run_id_and_not_with_keep() {
        assert_eq!(
            DemoRun::parse("1a2b3c4d"),
            Ok(DemoRun("demo-1a2b3c4d".into()))
        );
        for bad in [
            "",
            "demo-",
            "demo-1a2b3c4",
            "demo-1a2b3c4d5",
            "demo-1A2B3C4D",
            "demo-1a2b3c4d-",
            "demo-%%%%%%%%",
            "taptalk.",
        ] {
            assert!(DemoRun::parse(bad).is_err(), "{bad:?}");
            assert!(parse(&["--remove", bad]).is_err(), "{bad:?}");
        }
        let args = parse(&["--remove", "demo-1a2b3c4d"]).expect("parse");
        assert_eq!(args.remove, Some(DemoRun("demo-1a2b3c4d".into())));
        assert!(parse(&["--remove", "demo-1a2b3c4d", "--keep"]).is_err());
    }

    #[test]
    fn the_clean_up_line_says_what_went_and_how_to_finish() {
        let run = DemoRun("demo-1a2b3c4d".into());
        let all = Removal {
            rows: Ok(Forgotten {
                tickets: 39,
                outcomes: 40,
                announcements: 0,
            }),
            topology: Some(Ok(Held {
                unanswered: 0,
                dead_letters: 1,
            })),
        };
        assert_eq!(
            removal_line(&run, &all, Whose::ThisRun),
            "removed what run demo-1a2b3c4d made: its rows (39 auth_tickets, 40 event_outcomes, 0 ticket_event_outbox) and its exchanges and queues taptalk.demo-1a2b3c4d.* (with 1 dead letter)"
        );
        assert!(all.complete().is_ok());
        let half = Removal {
            rows: Err("connection refused".into()),
            topology: Some(Ok(Held {
                unanswered: 3,
                dead_letters: 2,
            })),
        };
        let line = removal_line(&run, &half, Whose::EarlierRun);
        assert!(
            line.starts_with("removed what run demo-1a2b3c4d left: any exchanges and queues taptalk.demo-1a2b3c4d.* (with 3 unanswered login events and 2 dead letters)")
                && line.ends_with(
                    "could not remove its rows (Postgres: connection refused); try again with: ticket-worker demo --remove demo-1a2b3c4d"
                ),
            "{line}"
        );
        assert!(half.complete().is_err());
        let kept = kept_line(&run, Some(Ok(Held::default())));
        assert_eq!(
            kept,
            "kept what run demo-1a2b3c4d made: its rows (event ids demo-1a2b3c4d-…) and its exchanges and queues taptalk.demo-1a2b3c4d.*; remove them with: ticket-worker demo --remove demo-1a2b3c4d"
        );
    }
}
