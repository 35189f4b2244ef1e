//! The worker's Prometheus metrics, served on `/metrics` (see
//! [`super::endpoints`]): what happened to events, TapTalk requests and their
//! durations, retries, what is in flight, the TapTalk concurrency limit, the
//! intake state, login-to-ready time, connections opened, and the build.
//!
//! Every metric is created at start with every label value it can have, and
//! the handles are kept, so counting on the hot path is one atomic add: no
//! lookup, no lock, no allocation. Label values come from fixed lists (an
//! outcome, a reason, a result); nothing unbounded (an event id, a user id,
//! a message) ever becomes a label.
//!
//! One [`Metrics`] per worker (tests run several in one process), each with
//! its own registry; the names are prefixed `ticket_worker_`, counters end
//! in `_total` and durations in `_seconds` (histograms with buckets).

use crate::delivery::{Outcome, Stage};
use crate::events::FailureReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// How a delivery ended, as the `outcome` label says it.
const OUTCOMES: [&str; 10] = [
    "issued",
    "already_issued",
    "dead_lettered",
    "expired",
    "retry_later",
    "requeued",
    "rejected",
    "abandoned",
    "panicked",
    "overdue",
];

/// The reasons of `ticket.failed` and of the worker's dead letters.
const REASONS: [FailureReason; 4] = [
    FailureReason::Invalid,
    FailureReason::RejectedByUpstream,
    FailureReason::Expired,
    FailureReason::RetriesExhausted,
];

/// How a TapTalk request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestResult {
    /// A ticket.
    Ok,
    /// `ParamValidationFailed`: the event's own fields.
    Rejected,
    /// The key or endpoint is wrong (`HeaderValidationFailed`, 401, …).
    Misconfigured,
    /// 429.
    RateLimited,
    /// 5xx, a timeout, a connection error, an answer that is not a ticket.
    Transient,
}

impl RequestResult {
    /// How a request's result counts: `Ok`, or what its error maps to
    /// (the TapTalk client says how its errors count).
    pub fn of<T, E>(result: &Result<T, E>) -> RequestResult
    where
        for<'e> RequestResult: From<&'e E>,
    {
        match result {
            Ok(_) => RequestResult::Ok,
            Err(error) => RequestResult::from(error),
        }
    }

    const ALL: [RequestResult; 5] = [
        RequestResult::Ok,
        RequestResult::Rejected,
        RequestResult::Misconfigured,
        RequestResult::RateLimited,
        RequestResult::Transient,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::Rejected => "rejected",
            RequestResult::Misconfigured => "misconfigured",
            RequestResult::RateLimited => "rate_limited",
            RequestResult::Transient => "transient",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What was tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A TapTalk request, after a pause.
    Taptalk,
    /// A Postgres statement, after a pause.
    Postgres,
}

/// A dependency intake pauses for, as the `state` label names it (the
/// breaker's `health::Dependency` maps into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyKind {
    Taptalk,
    Postgres,
}

/// Where intake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Consuming.
    Running,
    /// Not consuming: a dependency is down (`misconfigured`: refuses the
    /// configuration, rather than failing for a while).
    Paused {
        dependency: DependencyKind,
        misconfigured: bool,
    },
    /// No RabbitMQ session (starting, or reconnecting).
    Disconnected,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    /// `host:port` of an AMQP_URL entry (configured, so a fixed list).
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// The intake states, as the `state` label says them.
const STATES: [&str; 6] = [
    "running",
    "paused_taptalk_outage",
    "paused_taptalk_misconfigured",
    "paused_postgres_outage",
    "paused_postgres_misconfigured",
    "disconnected",
];

/// The worker's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    outcomes: [Counter; OUTCOMES.len()],
    tickets_issued: Counter,
    failures: [Counter; REASONS.len()],
    dead_letters: [Counter; REASONS.len()],
    /// Dead-lettered by RabbitMQ after the worker rejected the message (its
    /// headers filled the frame, and RabbitMQ refused the trimmed copy).
    dead_letters_refused_copy: Counter,
    requests: [Counter; RequestResult::ALL.len()],
    request_seconds: [Histogram; RequestResult::ALL.len()],
    retries: [Counter; 2],
    in_flight: Gauge,
    limit: Gauge,
    requests_in_flight: Gauge,
    prefetch: Gauge,
    intake: [Gauge; STATES.len()],
    /// The index in [`STATES`] of the intake state now: read by `/readyz`
    /// in one load (the gauges change one after another).
    intake_now: AtomicU8,
    login_to_ready: Histogram,
    connections: [Counter; 2],
    relayed: Counter,
    /// By [`Stage`], in its order.
    overdue: [Counter; 6],
    nodes: Family<NodeLabel, Gauge>,
    quota_takes: Counter,
    node_now: std::sync::Mutex<Option<String>>,
    /// Broker sessions opened, for the progress line and tests.
    sessions: AtomicU64,
    /// Times intake paused.
    pauses: AtomicU64,
}

/// Counts at one moment, for the progress line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub issued: u64,
    pub already_issued: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    pub retry_later: u64,
    pub requeued: u64,
    pub abandoned: u64,
    pub panicked: u64,
    /// Broker sessions opened (1 + reconnects).
    pub sessions: u64,
    /// Times intake paused because a dependency was down.
    pub pauses: u64,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            issued: self.issued.saturating_sub(earlier.issued),
            already_issued: self.already_issued.saturating_sub(earlier.already_issued),
            dead_lettered: self.dead_lettered.saturating_sub(earlier.dead_lettered),
            expired: self.expired.saturating_sub(earlier.expired),
            retry_later: self.retry_later.saturating_sub(earlier.retry_later),
            requeued: self.requeued.saturating_sub(earlier.requeued),
            abandoned: self.abandoned.saturating_sub(earlier.abandoned),
            panicked: self.panicked.saturating_sub(earlier.panicked),
            sessions: self.sessions.saturating_sub(earlier.sessions),
            pauses: self.pauses.saturating_sub(earlier.pauses),
        }
    }
}

/// TapTalk request durations: 1 ms to ~33 s.
fn request_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// Login-to-ready times: 10 ms to ~5.5 min.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ticket_worker");

        let events = Family::<OutcomeLabel, Counter>::default();
        let outcomes =
            OUTCOMES.map(|outcome| events.get_or_create_owned(&OutcomeLabel { outcome }));
        registry.register(
            "events",
            "Login events settled with the broker, by how they ended",
            events,
        );

        let tickets_issued = Counter::default();
        registry.register(
            "tickets_issued",
            "Tickets stored (once per event; re-announcements not counted)",
            tickets_issued.clone(),
        );

        let failures_family = Family::<ReasonLabel, Counter>::default();
        let failures = REASONS
            .map(|r| failures_family.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));
        registry.register(
            "failures",
            "Events answered ticket.failed, by reason",
            failures_family,
        );

        let dead_family = Family::<ReasonLabel, Counter>::default();
        let dead_letters =
            REASONS.map(|r| dead_family.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));
        let dead_letters_refused_copy = dead_family.get_or_create_owned(&ReasonLabel {
            reason: "refused_copy",
        });
        registry.register(
            "dead_letters",
            "Messages the worker dead-lettered, by reason (refused_copy: rejected for RabbitMQ to dead-letter)",
            dead_family,
        );

        let requests_family = Family::<ResultLabel, Counter>::default();
        let requests = RequestResult::ALL
            .map(|r| requests_family.get_or_create_owned(&ResultLabel { result: r.as_str() }));
        registry.register(
            "taptalk_requests",
            "TapTalk auth-ticket requests, by result",
            requests_family,
        );
        let seconds_family = Family::<ResultLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(request_buckets())
        });
        let request_seconds = RequestResult::ALL
            .map(|r| seconds_family.get_or_create_owned(&ResultLabel { result: r.as_str() }));
        registry.register_with_unit(
            "taptalk_request_duration",
            "Time of one TapTalk request (an attempt; retries are requests of their own), by result",
            Unit::Seconds,
            seconds_family,
        );

        let retries_family = Family::<KindLabel, Counter>::default();
        let retries = ["taptalk", "postgres"]
            .map(|kind| retries_family.get_or_create_owned(&KindLabel { kind }));
        registry.register(
            "retries",
            "Calls tried again after a pause (events put back in the queue count in events_total{outcome=\"retry_later\"})",
            retries_family,
        );

        let in_flight = Gauge::default();
        registry.register(
            "events_in_flight",
            "Login events taken from the queue and not yet settled",
            in_flight.clone(),
        );
        let limit = Gauge::default();
        registry.register(
            "taptalk_concurrency_limit",
            "TapTalk requests this replica may have in flight now (adaptive, or CONCURRENCY)",
            limit.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "taptalk_requests_in_flight",
            "TapTalk requests in flight now",
            requests_in_flight.clone(),
        );
        let prefetch = Gauge::default();
        registry.register(
            "prefetch",
            "The prefetch of the active consumer (0 when not consuming)",
            prefetch.clone(),
        );

        let intake_family = Family::<StateLabel, Gauge>::default();
        let intake = STATES.map(|state| intake_family.get_or_create_owned(&StateLabel { state }));
        registry.register(
            "intake_state",
            "1 for the intake's current state: running, paused (which dependency, and whether it refuses the configuration or is failing), or disconnected from RabbitMQ",
            intake_family,
        );

        let login_to_ready = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "login_to_ready",
            "From the login (occurredAt) to its ticket.ready confirmed by RabbitMQ, for new tickets of events with occurredAt",
            Unit::Seconds,
            login_to_ready.clone(),
        );

        let connections_family = Family::<DependencyLabel, Counter>::default();
        let connections = ["rabbitmq", "postgres"].map(|dependency| {
            connections_family.get_or_create_owned(&DependencyLabel { dependency })
        });
        registry.register(
            "connections_opened",
            "Connections opened (RabbitMQ: two per session, one consuming and one publishing; Postgres: pool connections): more than the first ones are reconnects",
            connections_family,
        );

        let overdue_family = Family::<StageLabel, Counter>::default();
        let overdue = Stage::ALL
            .map(|s| overdue_family.get_or_create_owned(&StageLabel { stage: s.as_str() }));
        registry.register(
            "deliveries_overdue",
            "Deliveries in flight longer than DELIVERY_DEADLINE, given back to the queue, by the stage they were stuck at",
            overdue_family,
        );

        let nodes = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "rabbitmq_node",
            "1 for the RabbitMQ node (host:port of AMQP_URL) this replica's session is on now, 0 for others it was on",
            nodes.clone(),
        );

        let quota_takes = Counter::default();
        registry.register(
            "taptalk_quota_takes",
            "Statements run to take tokens from the shared TapTalk quota (TAPTALK_QUOTA): its cost in Postgres round trips",
            quota_takes.clone(),
        );

        let relayed = Counter::default();
        registry.register(
            "outbox_relayed",
            "Ticket events published by the outbox relay (their delivery was lost after the outcome was stored)",
            relayed.clone(),
        );

        registry.register(
            "build",
            "The running build",
            Info::new(BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );

        let metrics = Metrics(Arc::new(Inner {
            registry,
            outcomes,
            tickets_issued,
            failures,
            dead_letters,
            dead_letters_refused_copy,
            requests,
            request_seconds,
            retries,
            in_flight,
            limit,
            requests_in_flight,
            prefetch,
            intake,
            intake_now: AtomicU8::new(STATES.len() as u8 - 1),
            login_to_ready,
            connections,
            relayed,
            overdue,
            nodes,
            quota_takes,
            node_now: std::sync::Mutex::new(None),
            sessions: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        }));
        metrics.intake(Intake::Disconnected);
        metrics
    }

    /// Counts one settled delivery, with its failure and dead letter.
    pub fn record(&self, outcome: Outcome) {
        let m = &self.0;
        let name = match outcome {
            Outcome::Issued => {
                m.tickets_issued.inc();
                "issued"
            }
            Outcome::AlreadyIssued => "already_issued",
            Outcome::DeadLettered(reason) => {
                m.failures[reason_index(reason)].inc();
                m.dead_letters[reason_index(reason)].inc();
                "dead_lettered"
            }
            Outcome::Expired => {
                m.failures[reason_index(FailureReason::Expired)].inc();
                "expired"
            }
            Outcome::RetryLater => "retry_later",
            Outcome::Requeued => "requeued",
            Outcome::Rejected => {
                m.dead_letters_refused_copy.inc();
                "rejected"
            }
            Outcome::Abandoned => "abandoned",
        };
        m.outcomes[outcome_index(name)].inc();
    }

    /// Handling a delivery panicked (it went back to the queue).
    pub fn panicked(&self) {
        self.0.outcomes[outcome_index("panicked")].inc();
    }

    /// A delivery was in flight past DELIVERY_DEADLINE, stuck at `stage`
    /// (it went back to the queue).
    pub fn overdue(&self, stage: Stage) {
        self.0.outcomes[outcome_index("overdue")].inc();
        self.0.overdue[stage as usize].inc();
    }

    /// A TapTalk request ended with `result` after `took`.
    pub fn taptalk_request(&self, result: RequestResult, took: Duration) {
        let i = result.index();
        self.0.requests[i].inc();
        self.0.request_seconds[i].observe(took.as_secs_f64());
    }

    /// A call is tried again.
    pub fn retry(&self, kind: Retry) {
        self.0.retries[kind as usize].inc();
    }

    /// An event was taken from the queue: it counts as in flight until the
    /// guard is dropped (settled, or its task aborted).
    pub fn in_flight(&self) -> InFlight {
        self.0.in_flight.inc();
        InFlight(self.clone())
    }

    /// The login of a new ticket happened `ago` before its ticket.ready
    /// was confirmed.
    pub fn login_to_ready(&self, ago: Duration) {
        self.0.login_to_ready.observe(ago.as_secs_f64());
    }

    /// The TapTalk concurrency limit and the requests in flight now.
    pub fn taptalk_limit(&self, limit: usize, in_flight: usize) {
        self.0.limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
        self.0
            .requests_in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    /// The prefetch of the active consumer.
    pub fn prefetch(&self, prefetch: u16) {
        self.0.prefetch.set(i64::from(prefetch));
    }

    /// Where intake stands now.
    pub fn intake(&self, intake: Intake) {
        let state = match intake {
            Intake::Running => "running",
            Intake::Paused {
                dependency,
                misconfigured,
            } => match (dependency, misconfigured) {
                (DependencyKind::Taptalk, false) => "paused_taptalk_outage",
                (DependencyKind::Taptalk, true) => "paused_taptalk_misconfigured",
                (DependencyKind::Postgres, false) => "paused_postgres_outage",
                (DependencyKind::Postgres, true) => "paused_postgres_misconfigured",
            },
            Intake::Disconnected => "disconnected",
        };
        let index = STATES
            .iter()
            .position(|s| *s == state)
            .unwrap_or(STATES.len() - 1);
        self.0.intake_now.store(index as u8, Ordering::Relaxed);
        for (i, gauge) in self.0.intake.iter().enumerate() {
            gauge.set(i64::from(i == index));
        }
    }

    /// Whether intake is running now.
    pub fn is_running(&self) -> bool {
        self.intake_state() == STATES[0]
    }

    /// The intake state now, as the `state` label says it.
    pub fn intake_state(&self) -> &'static str {
        let index = usize::from(self.0.intake_now.load(Ordering::Relaxed));
        STATES.get(index).copied().unwrap_or("disconnected")
    }

    /// Tokens were taken from the shared TapTalk quota (one statement).
    pub fn quota_take(&self) {
        self.0.quota_takes.inc();
    }

    /// The RabbitMQ node (`host:port` of AMQP_URL) the worker's session is
    /// on now; `None`: none. The gauge is 1 for that node, 0 for the others
    /// seen before.
    pub fn rabbitmq_node(&self, node: Option<&str>) {
        let m = &self.0;
        let mut current = m.node_now.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = current.take() {
            m.nodes.get_or_create(&NodeLabel { node: previous }).set(0);
        }
        if let Some(node) = node {
            m.nodes
                .get_or_create(&NodeLabel {
                    node: node.to_owned(),
                })
                .set(1);
            *current = Some(node.to_owned());
        }
    }

    /// The RabbitMQ node the session is on, if any.
    pub fn rabbitmq_node_now(&self) -> Option<String> {
        self.0
            .node_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A broker session was opened.
    pub fn session_opened(&self) {
        self.0.sessions.fetch_add(1, Ordering::Relaxed);
        self.0.connections[0].inc_by(2);
    }

    /// A Postgres connection was opened.
    pub fn database_connection_opened(&self) {
        self.0.connections[1].inc();
    }

    /// Intake paused because a dependency was down.
    pub fn paused(&self) {
        self.0.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// The outbox relay published a ticket event.
    pub fn relayed(&self, n: u64) {
        self.0.relayed.inc_by(n);
    }

    /// The metrics in the Prometheus / OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = &self.0;
        let get = |name: &str| m.outcomes[outcome_index(name)].get();
        Snapshot {
            issued: get("issued"),
            already_issued: get("already_issued"),
            dead_lettered: get("dead_lettered") + get("rejected"),
            expired: get("expired"),
            retry_later: get("retry_later"),
            requeued: get("requeued"),
            abandoned: get("abandoned"),
            panicked: get("panicked"),
            sessions: m.sessions.load(Ordering::Relaxed),
            pauses: m.pauses.load(Ordering::Relaxed),
        }
    }
}

/// One event in flight (see [`Metrics::in_flight`]).
#[derive(Debug)]
pub struct InFlight(Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.in_flight.dec();
    }
}

fn outcome_index(name: &str) -> usize {
    OUTCOMES.iter().position(|o| *o == name).unwrap_or(0)
}

fn reason_index(reason: FailureReason) -> usize {
    REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_there_from_the_start_with_bounded_labels() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for family in [
            "ticket_worker_events_total{outcome=\"issued\"} 0",
            "ticket_worker_tickets_issued_total 0",
            "ticket_worker_failures_total{reason=\"retries_exhausted\"} 0",
            "ticket_worker_dead_letters_total{reason=\"invalid\"} 0",
            "ticket_worker_taptalk_requests_total{result=\"ok\"} 0",
            "ticket_worker_taptalk_request_duration_seconds_bucket{le=\"0.001\",result=\"ok\"} 0",
            "ticket_worker_retries_total{kind=\"taptalk\"} 0",
            "ticket_worker_events_in_flight 0",
            "ticket_worker_taptalk_concurrency_limit 0",
            "ticket_worker_intake_state{state=\"disconnected\"} 1",
            "ticket_worker_intake_state{state=\"running\"} 0",
            "ticket_worker_login_to_ready_seconds_bucket{le=\"0.01\"} 0",
            "ticket_worker_connections_opened_total{dependency=\"postgres\"} 0",
            "ticket_worker_outbox_relayed_total 0",
            "ticket_worker_build_info{version=\"",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
        // Histograms, not summaries.
        assert!(text.contains("# TYPE ticket_worker_login_to_ready_seconds histogram"));
        assert!(!text.contains("summary"));
    }

    #[test]
    fn outcomes_count_their_failures_and_dead_letters() {
        let metrics = Metrics::new();
        metrics.record(Outcome::Issued);
        metrics.record(Outcome::DeadLettered(FailureReason::Invalid));
        metrics.record(Outcome::Expired);
        metrics.taptalk_request(RequestResult::RateLimited, Duration::from_millis(3));
        metrics.intake(Intake::Paused {
            dependency: DependencyKind::Taptalk,
            misconfigured: true,
        });
        let text = metrics.render();
        for line in [
            "ticket_worker_events_total{outcome=\"issued\"} 1",
            "ticket_worker_tickets_issued_total 1",
            "ticket_worker_failures_total{reason=\"invalid\"} 1",
            "ticket_worker_dead_letters_total{reason=\"invalid\"} 1",
            "ticket_worker_failures_total{reason=\"expired\"} 1",
            "ticket_worker_dead_letters_total{reason=\"expired\"} 0",
            "ticket_worker_taptalk_requests_total{result=\"rate_limited\"} 1",
            "ticket_worker_taptalk_request_duration_seconds_bucket{le=\"0.004\",result=\"rate_limited\"} 1",
            "ticket_worker_intake_state{state=\"paused_taptalk_misconfigured\"} 1",
            "ticket_worker_intake_state{state=\"disconnected\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!metrics.is_running());
        assert_eq!(metrics.snapshot().issued, 1);
    }
}
