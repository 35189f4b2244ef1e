//! The limiter's API: waiting, fairness, cancellation, the watch, the log
//! line, and the control law step by step on hand-made answers.

use super::*;
use crate::time::Later;
use std::sync::Mutex as StdMutex;
use tokio::time::{sleep, timeout};

const MS: Duration = Duration::from_millis(1);

fn adaptive(settings: LimitSettings) -> AdaptiveLimit {
    AdaptiveLimit::new(&settings).expect("valid settings")
}

#[test]
fn signals_of_client_results() {
    let ok: Result<(), TicketError> = Ok(());
    assert_eq!(Signal::of(&ok), Signal::Success);
    let transient: Result<(), TicketError> = Err(TicketError::Transient {
        detail: "TapTalk answered HTTP 429 Too Many Requests".into(),
        retry_after: Some(Duration::from_secs(1)),
    });
    assert_eq!(Signal::of(&transient), Signal::BackPressure);
    let rejected: Result<(), TicketError> = Err(TicketError::Rejected {
        code: "ParamValidationFailed".into(),
        field: Some("email".into()),
        message: "bad".into(),
    });
    assert_eq!(Signal::of(&rejected), Signal::Ignore);
    let misconfigured: Result<(), TicketError> = Err(TicketError::Misconfigured("key".into()));
    assert_eq!(Signal::of(&misconfigured), Signal::Ignore);
}

#[test]
fn invalid_settings_are_refused() {
    let settings = LimitSettings {
        min: 10,
        max: 5,
        ..LimitSettings::default()
    };
    assert!(AdaptiveLimit::new(&settings).is_err());
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_at_the_limit_and_serves_waiters_in_order() {
    let limit = AdaptiveLimit::fixed(NonZeroUsize::new(2).expect("2"));
    let first = limit.acquire().await;
    let _second = limit.acquire().await;
    assert_eq!(limit.in_flight(), 2);
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (limit, order) = (limit.clone(), Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let permit = limit.acquire().await;
            order.lock().expect("order").push(i);
            sleep(10 * MS).await;
            permit.done(Signal::Success);
        }));
        // Let it queue before the next one arrives.
        tokio::task::yield_now().await;
    }
    sleep(50 * MS).await;
    assert!(order.lock().expect("order").is_empty());
    first.done(Signal::Success);
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_takes_nothing() {
    let limit = AdaptiveLimit::fixed(NonZeroUsize::new(1).expect("1"));
    let held = limit.acquire().await;
    assert!(timeout(10 * MS, limit.acquire()).await.is_err());
    assert_eq!(limit.in_flight(), 1);
    drop(held);
    assert_eq!(limit.in_flight(), 0);
    let again = timeout(10 * MS, limit.acquire()).await;
    assert!(again.is_ok());
}

/// Drives a limiter with `clients` tasks against a fixed-latency server for
/// `run`; `answer` picks each request's signal from its sequence number.
async fn drive(
    limit: &AdaptiveLimit,
    clients: usize,
    run: Duration,
    latency: Duration,
    answer: fn(u64) -> Signal,
) {
    let until = Instant::now().later_by(run);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (limit, counter) = (limit.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let permit = limit.acquire().await;
                    sleep(latency).await;
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    permit.done(answer(n));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
}

#[tokio::test(start_paused = true)]
async fn the_watch_follows_the_limit() {
    let limit = adaptive(LimitSettings::default());
    let mut watch = limit.watch();
    assert_eq!(*watch.borrow_and_update(), 64);
    drive(&limit, 300, 500 * MS, 20 * MS, |_| Signal::Success).await;
    assert!(watch.has_changed().unwrap_or(false));
    assert_eq!(*watch.borrow_and_update(), limit.limit());
    assert!(limit.limit() > 64);
}

#[tokio::test(start_paused = true)]
async fn back_pressure_cuts_once_per_round_trip() {
    let limit = adaptive(LimitSettings::default());
    // Slow start to the maximum.
    drive(&limit, 1_200, Duration::from_secs(2), 20 * MS, |_| {
        Signal::Success
    })
    .await;
    assert_eq!(limit.limit(), 1_024);
    // 1,200 requests in flight when TapTalk starts pushing back on all of
    // them: one cut per round trip, not one per answer.
    let start = Instant::now();
    drive(&limit, 1_200, 100 * MS, 20 * MS, |_| Signal::BackPressure).await;
    let round_trips = start.elapsed().as_millis() / 20;
    let snapshot = limit.snapshot();
    assert!(
        snapshot.decreases as u128 >= round_trips / 2 && snapshot.decreases as u128 <= round_trips,
        "{} cuts in {round_trips} round trips",
        snapshot.decreases
    );
    assert!(snapshot.limit < 1_024 / 2, "{}", snapshot.limit);
    assert_eq!(snapshot.phase, Some(Phase::Avoidance));
}

#[tokio::test(start_paused = true)]
async fn ignored_answers_teach_nothing() {
    let limit = adaptive(LimitSettings::default());
    drive(&limit, 200, Duration::from_secs(2), 20 * MS, |_| {
        Signal::Ignore
    })
    .await;
    let snapshot = limit.snapshot();
    assert_eq!((snapshot.limit, snapshot.increases), (64, 0));
    assert_eq!(snapshot.baseline, None);
}

#[tokio::test(start_paused = true)]
async fn the_limit_stays_within_its_bounds() {
    let settings = LimitSettings {
        min: 20,
        max: 100,
        initial: 30,
        ..LimitSettings::default()
    };
    let limit = adaptive(settings);
    drive(&limit, 500, Duration::from_secs(2), 20 * MS, |_| {
        Signal::Success
    })
    .await;
    assert_eq!(limit.limit(), 100);
    drive(&limit, 500, Duration::from_secs(2), 20 * MS, |_| {
        Signal::BackPressure
    })
    .await;
    assert_eq!(limit.limit(), 20);
}

/// Captures JSON log lines.
#[derive(Clone, Default)]
struct Lines(Arc<StdMutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lines").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn big_changes_are_logged_with_numeric_fields_and_not_too_often() {
    let lines = Lines::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(lines.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests, on other threads without a subscriber, may have hit the
    // same callsite first and cached "nobody is interested".
    tracing::callsite::rebuild_interest_cache();
    let limit = adaptive(LimitSettings::default());
    // Slow start from 64 to 1,024 (~1 s), then 2 s at the maximum.
    drive(&limit, 1_200, Duration::from_secs(3), 100 * MS, |_| {
        Signal::Success
    })
    .await;
    let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
    let logged: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| {
            line["fields"]["message"] == "TapTalk concurrency limit changed"
        })
        .collect();
    let values: Vec<(u64, u64)> = logged
        .iter()
        .filter_map(|line| {
            Some((
                line["fields"]["previous"].as_u64()?,
                line["fields"]["limit"].as_u64()?,
            ))
        })
        .collect();
    assert_eq!(values.len(), logged.len(), "{text}");
    // The first big step, then (rate-limited) the end of slow start at 1,024.
    assert!((2..=4).contains(&values.len()), "{values:?}");
    assert_eq!(values.first().map(|v| v.0), Some(64));
    assert_eq!(values.last().map(|v| v.1), Some(1_024));
    assert!(values.windows(2).all(|w| w[0].1 == w[1].0), "{values:?}");
    let last = logged.last().expect("a line");
    assert_eq!(last["fields"]["phase"], "avoidance");
    assert!(
        last["fields"]["rtt_ms"]
            .as_f64()
            .is_some_and(|ms| (99.0..=101.0).contains(&ms))
    );
    assert!(last["fields"]["baseline_ms"].as_f64().is_some());
    assert_eq!(last["level"], "INFO");
}

#[test]
fn handles_and_futures_can_cross_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    fn sendable<F: std::future::Future + Send>(_: F) {}
    shared::<AdaptiveLimit>();
    shared::<Permit>();
    shared::<crate::taptalk::RateLimit>();
    let limit = AdaptiveLimit::new(&LimitSettings::default()).expect("settings");
    sendable(limit.acquire());
    let rate = crate::taptalk::RateLimit::new(10.0).expect("rate");
    sendable(rate.wait());
}

/// What one request costs the limiter, uncontended (acquire + done):
/// `cargo test --release --lib taptalk::limit::tests::cost -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement, not a check: run by hand in release"]
async fn cost_per_request() {
    const ROUNDS: u32 = 1_000_000;
    let adaptive = AdaptiveLimit::new(&LimitSettings::default()).expect("settings");
    let fixed = AdaptiveLimit::fixed(NonZeroUsize::new(64).expect("64"));
    for (name, limit) in [("adaptive", &adaptive), ("fixed", &fixed)] {
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            let permit = limit.acquire().await;
            permit.done(Signal::Success);
        }
        let per = start.elapsed() / ROUNDS;
        println!("{name}: {per:?} per acquire + done");
    }
}
