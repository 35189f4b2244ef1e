//! The report of a run, as data: every figure of every phase, the ceiling,
//! the settings and the machine. The JSON report is this, serialized; the
//! table (`table.rs`) and the plot (`svg.rs`) are drawn from it.

use super::cases::{Phase, Plan, Target};
use super::ceiling::Ceiling;
use super::procfs::Machine;
use super::stats::{Percentiles, Second};
use super::vhost::Isolation;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub case: &'static str,
    pub version: &'static str,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    pub machine: Machine,
    pub settings: RunSettings,
    pub ceiling: Option<Ceiling>,
    pub phases: Vec<PhaseReport>,
    pub targets: Vec<TargetResult>,
}

/// How the run was made.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunSettings {
    pub plan: Plan,
    pub isolation: Isolation,
    pub database: String,
    /// `--worker-env` settings; every other worker setting at its default.
    pub worker_env: Vec<String>,
    /// `--worker-bin`, when the replicas ran another build.
    pub worker_bin: Option<String>,
    /// `--burn-core`: one core spun beside the run.
    pub burn_core: bool,
    pub timeout_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    pub name: String,
    pub settings: Phase,
    pub published: usize,
    /// Confirmed by RabbitMQ and routed to the work queue.
    pub confirmed: usize,
    /// Refused by RabbitMQ or not routed.
    pub refused: usize,
    /// Events with a `ticket.ready` or `ticket.failed` (each counted once).
    pub answered: usize,
    pub ready: usize,
    pub failed: usize,
    /// Ticket events for an event already answered.
    pub duplicates: usize,
    /// Rows the phase added to `auth_tickets` (one per ticket issued),
    /// counted before the database is dropped.
    pub tickets_stored: i64,
    /// From the first publish to the last answer.
    pub seconds: f64,
    /// `answered` over `seconds`.
    pub throughput_per_s: f64,
    /// `throughput_per_s` over the broker-only ceiling's.
    pub ceiling_ratio: Option<f64>,
    /// From `occurredAt` (the publish instant) to the `ticket.ready`'s arrival.
    pub login_to_ready: Percentiles,
    pub upstream: UpstreamReport,
    pub replicas: Vec<ReplicaReport>,
    /// The replicas' CPU time during the phase (from just before the first
    /// publish to the last answer) over `answered`.
    pub worker_cpu_us_per_event: f64,
    pub postgres: PostgresReport,
    /// Per second since the first publish.
    pub timeline: Vec<Second>,
}

/// What the stand-in saw.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UpstreamReport {
    pub requests: u64,
    pub issued: u64,
    /// Answered 503 at once, the line being full.
    pub shed: u64,
    pub injected_503: u64,
    pub injected_429: u64,
    pub peak_in_service: usize,
    pub peak_waiting: usize,
    /// Arrival to answer sent, wait in line included, of requests not shed.
    pub in_upstream_ms: InUpstream,
    /// Capacity ÷ latency, when it has a capacity.
    pub bound_per_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct InUpstream {
    pub timed: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReplicaReport {
    pub number: usize,
    pub pid: u32,
    /// `VmHWM`, at the end of the phase.
    pub peak_rss_mib: f64,
    /// `utime` + `stime` during the phase.
    pub cpu_ms: f64,
    /// The adaptive concurrency limit it logged, last and highest.
    pub limit_last: Option<f64>,
    pub limit_max: Option<f64>,
    /// It did not stop within its grace after SIGTERM and was killed.
    pub killed: bool,
}

/// `pg_stat_database` of the run's database, during the phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PostgresReport {
    pub commits: i64,
    pub rollbacks: i64,
    /// (commits + rollbacks) over `answered`.
    pub per_event: f64,
    /// Whether every backend had left (so had flushed its counts) when
    /// they were read; if not, the counts may be a little low.
    pub settled: bool,
}

/// One target, what was measured, and whether it holds (`None`: the run
/// has nothing to judge it by, e.g. `--no-ceiling`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetResult {
    pub wanted: String,
    pub target: Target,
    pub measured: Option<String>,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

impl Report {
    /// Writes the JSON report to `path`, `-` for stdout.
    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        if path.as_os_str() == "-" {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")?;
            return Ok(());
        }
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write the JSON report to {}: {e}", path.display()))
    }
}

/// A small report of one instant-upstream phase, for the tests of the
/// table, the plot and the targets.
#[cfg(test)]
pub(crate) fn example() -> Report {
    use super::cases::{Load, Upstream};
    use super::stats::Percentiles;
    use std::time::Duration;
    let phase = Phase {
        name: "instant".into(),
        upstream: Upstream {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            capacity: None,
            max_queue: None,
        },
        load: Load::Burst { events: 300 },
        replicas: 1,
    };
    let plan = Plan {
        case: "instant",
        phases: vec![phase.clone()],
        main: 0,
        ceiling_events: Some(300),
        targets: vec![
            Target::CeilingShare {
                at_least: 1.0 / 3.0,
            },
            Target::CommitsPerEvent { at_most: 3.0 },
            Target::PeakRss { under_mib: 64.0 },
        ],
        worker_env: Vec::new(),
    };
    let mut report = Report {
        case: "instant",
        version: "0.0.0",
        started_at: "2026-12-01T18:30:15Z".into(),
        machine: Machine {
            cores: 2,
            cpu_model: None,
            kernel: None,
            memory_mib: None,
        },
        settings: RunSettings {
            plan,
            isolation: Isolation::Vhost("bench-1a2b3c4d".into()),
            database: "ticket_bench_1a2b3c4d".into(),
            worker_env: vec![],
            worker_bin: None,
            burn_core: false,
            timeout_s: 60.0,
        },
        ceiling: Some(Ceiling {
            messages: 300,
            seconds: 0.0125,
            per_second: 24_000.0,
            tasks: 4,
            prefetch_per_task: 500,
            message_bytes: 400,
            reply_bytes: 250,
        }),
        phases: vec![PhaseReport {
            name: "instant".into(),
            settings: phase,
            published: 300,
            confirmed: 300,
            refused: 0,
            answered: 300,
            ready: 300,
            failed: 0,
            duplicates: 0,
            tickets_stored: 300,
            seconds: 0.15,
            throughput_per_s: 2_000.0,
            ceiling_ratio: Some(2_000.0 / 24_000.0),
            login_to_ready: Percentiles {
                count: 300,
                p50_ms: 70.0,
                p95_ms: 130.0,
                p99_ms: 140.0,
                max_ms: 148.0,
                mean_ms: 72.0,
            },
            upstream: UpstreamReport {
                requests: 300,
                issued: 300,
                shed: 0,
                injected_503: 0,
                injected_429: 0,
                peak_in_service: 12,
                peak_waiting: 0,
                in_upstream_ms: InUpstream {
                    timed: 300,
                    p50: 0.2,
                    p90: 0.4,
                    p99: 1.1,
                    max: 3.0,
                    mean: 0.25,
                },
                bound_per_s: None,
            },
            replicas: vec![ReplicaReport {
                number: 1,
                pid: 4242,
                peak_rss_mib: 29.0,
                cpu_ms: 81.0,
                limit_last: None,
                limit_max: None,
                killed: false,
            }],
            worker_cpu_us_per_event: 270.0,
            postgres: PostgresReport {
                commits: 600,
                rollbacks: 0,
                per_event: 2.0,
                settled: true,
            },
            timeline: vec![Second {
                at: 0,
                ready: 300,
                answered: 300,
                p50_ms: 70.0,
                p99_ms: 140.0,
            }],
        }],
        targets: vec![],
    };
    report.targets = super::targets::judge(&report);
    report
}
