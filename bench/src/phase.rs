//! One phase of a run: a fresh stand-in with the phase's upstream, the
//! replicas started and consuming, the events published while their
//! answers are watched, then the replicas stopped and every figure read:
//! the ledger's, the stand-in's, `/proc`'s and `pg_stat_database`'s.
//!
//! The measured window runs from just before the first publish to the last
//! answer: replica CPU time is the difference of two readings at those
//! instants, so start-up is not in it. Peak RSS is the replicas' `VmHWM`
//! at the end. Postgres commits are read once the replicas have exited
//! (see `database.rs`).

use super::cases::Phase;
use super::database::BenchDatabase;
use super::events;
use super::ledger::Ledger;
use super::load;
use super::procfs::{self, Sample};
use super::progress::Progress;
use super::replicas::{self, Replica, WorkerEnv};
use super::report::{InUpstream, PhaseReport, PostgresReport, ReplicaReport, UpstreamReport};
use super::stats;
use super::table::thousands;
use super::vhost::Place;
use super::watch;
use fake_taptalk::{FakeTaptalk, Knobs};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use ticket_worker::shutdown::Shutdown;
use ticket_worker::taptalk::ServerKey;
use ticket_worker::time::Later;
use tokio::time::Instant;

/// How long replicas may take to start consuming.
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a replica may take to stop after SIGTERM: the worker's default
/// `SHUTDOWN_GRACE` (20 s) plus its 10 s to close the connection, and some.
pub(crate) const STOP_WITHIN: Duration = Duration::from_secs(35);
/// How long to wait for the database's backends to leave.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// What every phase of a run shares.
pub(crate) struct Context<'a> {
    pub id: &'a str,
    pub place: &'a Place,
    pub database: &'a BenchDatabase,
    /// The bench's own connection (watching, publishing, passive declares).
    pub connection: &'a Connection,
    /// `--worker-env`.
    pub worker_env: &'a [(String, String)],
    /// Worker settings the case itself sets (`--worker-env` wins).
    pub case_env: &'a [(&'static str, &'static str)],
    /// `--worker-bin`: the replicas' program, when not this one.
    pub worker_bin: Option<&'a std::path::Path>,
    /// `--replica-logs`.
    pub replica_logs: Option<&'a std::path::Path>,
    pub deadline: Instant,
    pub timeout: Duration,
    pub ticks_per_second: u64,
    pub shutdown: &'a Shutdown,
    /// The broker-only ceiling, events per second.
    pub ceiling: Option<f64>,
}

/// What a phase has running; the caller stops it whatever happens.
#[derive(Default)]
pub(crate) struct Running {
    pub replicas: Vec<Replica>,
    pub fake: Option<FakeTaptalk>,
}

impl Running {
    /// Stops the replicas (SIGTERM, then a kill after `patience`) and the
    /// stand-in. Returns the numbers of the replicas that were killed.
    pub(crate) async fn stop(&mut self, patience: Duration) -> Vec<usize> {
        let killed = replicas::stop_all(&mut self.replicas, patience).await;
        if let Some(fake) = self.fake.take() {
            fake.stop();
        }
        killed
    }
}

/// How waiting for the answers ended.
enum End {
    Answered,
    TimedOut,
    Interrupted,
    Died(usize, std::process::ExitStatus),
    PublishFailed(String),
}

/// Runs `phase`; what it started is in `running` until it is stopped here
/// (or, should this fail, by the caller).
pub(crate) async fn run(
    ctx: &Context<'_>,
    phase: &Phase,
    running: &mut Running,
) -> anyhow::Result<PhaseReport> {
    let (bodies, ids) = events::login_events(phase.load.events());
    let ledger = Arc::new(Ledger::new(ids));

    let secret = SecretString::from(uuid::Uuid::new_v4().simple().to_string());
    let key = ServerKey::new("bench-key", secret.clone());
    ticket_worker::taptalk::register_with_logs(&key);
    let knobs = Knobs {
        latency: phase.upstream.latency,
        latency_jitter: phase.upstream.jitter,
        capacity: phase.upstream.capacity,
        max_queue: phase.upstream.max_queue,
        ..Knobs::default()
    };
    let fake = FakeTaptalk::start(([127, 0, 0, 1], 0).into(), &key, knobs, false)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the TapTalk stand-in: {e}"))?;
    let base_url = fake.base_url().to_string();
    running.fake = Some(fake);

    let db = ctx.database;
    let tickets_before = db.tickets().await?;
    db.settle(SETTLE_WITHIN).await?;
    let transactions_before = db.transactions().await?;

    let mut ours = vec![
        ("AMQP_URL", ctx.place.amqp_url.expose_secret().to_owned()),
        (
            "AMQP_CONNECTION_NAME",
            format!("ticket-worker bench-{}", ctx.id),
        ),
        ("DATABASE_URL", db.url.expose_secret().to_owned()),
        ("TAPTALK_BASE_URL", base_url),
        ("TAPTALK_SERVER_KEY_ID", key.id().to_owned()),
        (
            "TAPTALK_SERVER_KEY_SECRET",
            secret.expose_secret().to_owned(),
        ),
        ("SKIP_MIGRATIONS", "true".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        // Replicas share the machine: each takes a free port for its probes.
        ("HTTP_LISTEN", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect::<Vec<_>>();
    ours.extend(ctx.place.topology_env());
    ours.extend(
        ctx.case_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut env = WorkerEnv::new(ours, ctx.worker_env);
    env.program = ctx.worker_bin.map(std::path::Path::to_path_buf);
    env.logs = ctx.replica_logs.map(std::path::Path::to_path_buf);
    for number in 1..=phase.replicas {
        running.replicas.push(Replica::spawn(number, &env)?);
    }
    let channel = ctx.connection.create_channel().await?;
    wait_consuming(ctx, &channel, phase.replicas, running).await?;

    let watch_channel = ctx.connection.create_channel().await?;
    let watcher = watch::watch(&watch_channel, &ctx.place.topology, Arc::clone(&ledger)).await?;
    let before: Vec<Option<Sample>> = samples(running, ctx.ticks_per_second);
    let publisher = tokio::spawn(load::publish(
        ctx.connection.create_channel().await?,
        ctx.place.topology.login_exchange.clone(),
        bodies,
        phase.load,
        Arc::clone(&ledger),
    ));
    let end = wait_for_answers(ctx, &phase.name, &ledger, running, publisher).await;
    let after: Vec<Option<Sample>> = samples(running, ctx.ticks_per_second);
    let (fake_stats, fake_load) = running
        .fake
        .as_ref()
        .map(|fake| (fake.stats(), fake.load()))
        .unwrap_or_default();

    if !matches!(end, End::Answered) {
        let why = unfinished(ctx, &channel, &ledger, running, end).await;
        watcher.abort();
        return Err(anyhow::anyhow!("{why}"));
    }

    let logs: Vec<_> = running
        .replicas
        .iter()
        .map(|r| (r.number, r.pid, r.log()))
        .collect();
    let killed = running.stop(STOP_WITHIN).await;
    running.replicas.clear();
    watcher.abort();
    let _ = watch_channel.close(200, "phase over".into()).await;
    let _ = channel.close(200, "phase over".into()).await;

    let settled = db.settle(SETTLE_WITHIN).await?;
    let transactions = db.transactions().await?.since(transactions_before);
    let tickets = db.tickets().await? - tickets_before;

    let rows = ledger.rows();
    let flow = stats::flow(&rows, ledger.first_published().unwrap_or(0));
    let answered = ledger.answered_count();
    let per_event = |total: f64| {
        if answered == 0 {
            0.0
        } else {
            total / answered as f64
        }
    };
    let replicas: Vec<ReplicaReport> = logs
        .into_iter()
        .enumerate()
        .map(|(i, (number, pid, log))| {
            let (start, end) = (
                before.get(i).copied().flatten(),
                after.get(i).copied().flatten(),
            );
            ReplicaReport {
                number,
                pid,
                peak_rss_mib: end.map_or(0.0, |s| s.peak_rss_kib as f64 / 1024.0),
                cpu_ms: match (start, end) {
                    (Some(start), Some(end)) => {
                        end.cpu.saturating_sub(start.cpu).as_secs_f64() * 1000.0
                    }
                    _ => 0.0,
                },
                limit_last: log.limit_last,
                limit_max: log.limit_max,
                killed: killed.contains(&number),
            }
        })
        .collect();
    let cpu_us: f64 = replicas.iter().map(|r| r.cpu_ms * 1000.0).sum();
    let inside = fake_load.in_upstream;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(PhaseReport {
        name: phase.name.clone(),
        settings: phase.clone(),
        published: ledger.published_count.load(Ordering::Relaxed),
        confirmed: ledger.confirmed.load(Ordering::Relaxed),
        refused: ledger.refused.load(Ordering::Relaxed),
        answered,
        ready: ledger.ready.load(Ordering::Relaxed),
        failed: ledger.failed.load(Ordering::Relaxed),
        duplicates: ledger.duplicates.load(Ordering::Relaxed),
        tickets_stored: tickets,
        seconds: flow.seconds,
        throughput_per_s: flow.per_second,
        ceiling_ratio: ctx.ceiling.map(|c| flow.per_second / c),
        login_to_ready: flow.login_to_ready,
        upstream: UpstreamReport {
            requests: fake_stats.requests,
            issued: fake_stats.issued,
            shed: fake_stats.shed,
            injected_503: fake_stats.injected_503,
            injected_429: fake_stats.injected_429,
            peak_in_service: fake_load.peak_in_service,
            peak_waiting: fake_load.peak_waiting,
            in_upstream_ms: InUpstream {
                timed: inside.visits,
                p50: ms(inside.p50),
                p90: ms(inside.p90),
                p99: ms(inside.p99),
                max: ms(inside.max),
                mean: ms(inside.mean),
            },
            bound_per_s: phase.upstream.bound_per_second(),
        },
        replicas,
        worker_cpu_us_per_event: per_event(cpu_us),
        postgres: PostgresReport {
            commits: transactions.commits,
            rollbacks: transactions.rollbacks,
            per_event: per_event((transactions.commits + transactions.rollbacks) as f64),
            settled,
        },
        timeline: flow.timeline,
    })
}

fn samples(running: &Running, ticks: u64) -> Vec<Option<Sample>> {
    running
        .replicas
        .iter()
        .map(|r| procfs::sample(r.pid, ticks))
        .collect()
}

/// Waits until the work queue has a consumer per replica.
async fn wait_consuming(
    ctx: &Context<'_>,
    channel: &Channel,
    replicas: usize,
    running: &mut Running,
) -> anyhow::Result<()> {
    let until = Instant::now().later_by(START_WITHIN).min(ctx.deadline);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let queue = channel
            .queue_declare(
                ctx.place.topology.work_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot look at the work queue: {e}"))?;
        let consumers = queue.consumer_count() as usize;
        if consumers >= replicas {
            return Ok(());
        }
        if let Some((number, status)) = first_exit(running) {
            return Err(anyhow::anyhow!(
                "worker replica {number} exited ({status}) before consuming; its last log lines:\n{}",
                tail_of(running, number)
            ));
        }
        if ctx.shutdown.is_triggered() {
            return Err(anyhow::anyhow!("interrupted"));
        }
        if Instant::now() > until {
            let tails = running
                .replicas
                .iter()
                .map(|r| format!("  replica {}:\n{}", r.number, r.tail_text()))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(anyhow::anyhow!(
                "only {consumers} of {replicas} replicas were consuming the work queue {} after {} s; their last log lines:\n{tails}",
                ctx.place.topology.work_queue,
                START_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for every event's answer, showing progress once a second.
async fn wait_for_answers(
    ctx: &Context<'_>,
    name: &str,
    ledger: &Ledger,
    running: &mut Running,
    mut publisher: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> End {
    let mut progress = Progress::new();
    let mut published = false;
    let mut next_line = Instant::now().later_by(Duration::from_secs(1));
    let end = loop {
        if ledger.answered_count() >= ledger.events() {
            break End::Answered;
        }
        if let Some((number, status)) = first_exit(running) {
            break End::Died(number, status);
        }
        if ctx.shutdown.is_triggered() {
            break End::Interrupted;
        }
        if Instant::now() >= ctx.deadline {
            break End::TimedOut;
        }
        let refused = ledger.refused.load(Ordering::Relaxed);
        if refused > 0 {
            break End::PublishFailed(format!(
                "RabbitMQ refused {refused} login events or had no queue for them"
            ));
        }
        if Instant::now() >= next_line {
            progress.show(name, ledger);
            next_line = next_line.later_by(Duration::from_secs(1));
        }
        tokio::select! {
            joined = &mut publisher, if !published => {
                published = true;
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break End::PublishFailed(format!("publishing failed: {e}")),
                    Err(e) => break End::PublishFailed(format!("the publisher failed: {e}")),
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = ctx.shutdown.triggered() => {}
        }
    };
    progress.show(name, ledger);
    progress.finish();
    if !published {
        publisher.abort();
    }
    end
}

fn first_exit(running: &mut Running) -> Option<(usize, std::process::ExitStatus)> {
    running
        .replicas
        .iter_mut()
        .find_map(|r| r.exited().map(|status| (r.number, status)))
}

fn tail_of(running: &Running, number: usize) -> String {
    running
        .replicas
        .iter()
        .find(|r| r.number == number)
        .map(Replica::tail_text)
        .unwrap_or_default()
}

/// Why a phase did not finish, with what is missing and where it may be.
async fn unfinished(
    ctx: &Context<'_>,
    channel: &Channel,
    ledger: &Ledger,
    running: &Running,
    end: End,
) -> String {
    let (some, missing) = ledger.missing(5);
    let more = if missing > some.len() { ", …" } else { "" };
    let mut why = match end {
        End::Answered => String::new(),
        End::TimedOut => format!(
            "timed out (--timeout {}): ",
            humantime::format_duration(ctx.timeout)
        ),
        End::Interrupted => "interrupted: ".to_owned(),
        End::Died(number, status) => format!(
            "worker replica {number} exited ({status}) during the run; its last log lines:\n{}\n",
            tail_of(running, number)
        ),
        End::PublishFailed(reason) => format!("{reason}: "),
    };
    let count = |n: usize| thousands(n as f64);
    why.push_str(&format!(
        "{} of {} events got no ticket.ready or ticket.failed (first: {}{more}); {} published, {} confirmed",
        count(missing),
        count(ledger.events()),
        some.join(", "),
        count(ledger.published_count.load(Ordering::Relaxed)),
        count(ledger.confirmed.load(Ordering::Relaxed)),
    ));
    let topology = &ctx.place.topology;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if let Ok(queue) = channel
        .queue_declare(
            topology.work_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
    {
        why.push_str(&format!(
            "; the work queue {} holds {} messages not yet delivered, with {} consumer{}",
            topology.work_queue,
            count(queue.message_count() as usize),
            queue.consumer_count(),
            if queue.consumer_count() == 1 { "" } else { "s" }
        ));
    }
    if let Ok(dead) = channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        && dead.message_count() > 0
    {
        why.push_str(&format!(
            "; {} dead letters in {}",
            dead.message_count(),
            topology.dead_letter_queue
        ));
    }
    ticket_worker::observe::scrub(&why)
}
