//! The limiter against a simulated TapTalk, in simulated time (tokio's paused
//! clock, so every run is deterministic and takes well under a second of real
//! time). Many more client tasks than the limit each take a permit, "call"
//! the simulated server, report, and go again, as the worker's event tasks
//! do; a 429 makes the client wait out its `Retry-After` (1 s), a 503 the
//! retry code's first pause (200 ms).
//!
//! Each scenario prints its figures:
//! `cargo test --test it limiter::sim -- --nocapture --test-threads=1`.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use ticket_worker::taptalk::limit::{AdaptiveLimit, LimitSettings, Permit, Signal};
use ticket_worker::time::Later;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio::time::sleep;

const MS: Duration = Duration::from_millis(1);

/// How the simulated TapTalk answers.
#[derive(Clone)]
struct Upstream {
    /// Service time of one request.
    service: Duration,
    /// Requests served at once; the rest wait in one FIFO line. `None`:
    /// unlimited.
    capacity: Option<Arc<Semaphore>>,
    /// Beyond this many waiting, it answers 503 at once.
    max_waiting: usize,
    waiting: Arc<AtomicUsize>,
    /// Between these instants it answers every request 429 after 5 ms.
    storm: Option<(Instant, Instant)>,
    /// Every n-th request fails 503 after 5 ms.
    fail_every: Option<u64>,
    /// From this instant on, the service time is this (TapTalk got slower).
    slower: Option<(Instant, Duration)>,
    /// Each service time varies by up to this share either way
    /// (pseudo-random, the same in every run).
    jitter: f64,
    calls: Arc<AtomicU64>,
}

impl Upstream {
    fn unlimited(service: Duration) -> Upstream {
        Upstream {
            service,
            capacity: None,
            max_waiting: usize::MAX,
            waiting: Arc::default(),
            storm: None,
            fail_every: None,
            slower: None,
            jitter: 0.0,
            calls: Arc::default(),
        }
    }

    /// Serves `capacity` at once, lines up to `max_waiting` more.
    fn with_capacity(service: Duration, capacity: usize, max_waiting: usize) -> Upstream {
        Upstream {
            capacity: Some(Arc::new(Semaphore::new(capacity))),
            max_waiting,
            ..Upstream::unlimited(service)
        }
    }

    async fn call(&self) -> (Answer, Duration) {
        let start = Instant::now();
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let storming = self
            .storm
            .is_some_and(|(from, to)| start >= from && start < to);
        if storming {
            sleep(5 * MS).await;
            return (Answer::TooMany, start.elapsed());
        }
        if self.fail_every.is_some_and(|every| n.is_multiple_of(every)) {
            sleep(5 * MS).await;
            return (Answer::Shed, start.elapsed());
        }
        let _slot = match &self.capacity {
            None => None,
            Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) if self.waiting.load(Ordering::Relaxed) >= self.max_waiting => {
                    return (Answer::Shed, start.elapsed());
                }
                Err(_) => {
                    self.waiting.fetch_add(1, Ordering::Relaxed);
                    let slot = Arc::clone(slots).acquire_owned().await.ok();
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    slot
                }
            },
        };
        let service = match self.slower {
            Some((from, slower)) if start >= from => slower,
            _ => self.service,
        };
        sleep(service.mul_f64(1.0 + self.jitter * spread(n))).await;
        (Answer::Ticket, start.elapsed())
    }
}

/// A number in -1..1 that looks random, from `n` (splitmix64).
fn spread(n: u64) -> f64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ticket,
    Shed,
    TooMany,
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
struct Call {
    /// Since the start of the run: when the client wanted to send it, and
    /// when the answer came.
    asked: Duration,
    answered: Duration,
    /// Inside the server: waiting in its line plus service.
    in_upstream: Duration,
    answer: Answer,
}

/// The limit and in-flight count every 10 ms.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Duration,
    limit: usize,
    in_flight: usize,
}

struct Run {
    start: Instant,
    limit: AdaptiveLimit,
    calls: Arc<StdMutex<Vec<Call>>>,
    trace: Arc<StdMutex<Vec<Point>>>,
}

impl Run {
    fn new(limit: AdaptiveLimit) -> Run {
        Run {
            start: Instant::now(),
            limit,
            calls: Arc::default(),
            trace: Arc::default(),
        }
    }

    fn adaptive() -> Run {
        Run::new(AdaptiveLimit::new(&LimitSettings::default()).expect("default settings"))
    }

    /// Samples the limit every 10 ms until `until`.
    fn trace_until(&self, until: Duration) -> tokio::task::JoinHandle<()> {
        let (limit, trace, start) = (self.limit.clone(), Arc::clone(&self.trace), self.start);
        tokio::spawn(async move {
            while start.elapsed() <= until {
                let point = Point {
                    at: start.elapsed(),
                    limit: limit.limit(),
                    in_flight: limit.in_flight(),
                };
                trace.lock().expect("trace").push(point);
                sleep(10 * MS).await;
            }
        })
    }

    /// One request through the limiter, recorded.
    async fn one(
        limit: &AdaptiveLimit,
        upstream: &Upstream,
        calls: &StdMutex<Vec<Call>>,
        start: Instant,
    ) -> Answer {
        let asked = start.elapsed();
        let permit = limit.acquire().await;
        let (answer, in_upstream) = upstream.call().await;
        permit.done(match answer {
            Answer::Ticket => Signal::Success,
            Answer::Shed | Answer::TooMany => Signal::BackPressure,
        });
        calls.lock().expect("calls").push(Call {
            asked,
            answered: start.elapsed(),
            in_upstream,
            answer,
        });
        answer
    }

    /// `clients` closed-loop clients from `from` until `until` (since start).
    fn clients(
        &self,
        clients: usize,
        upstream: &Upstream,
        from: Duration,
        until: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..clients)
            .map(|_| {
                let (limit, upstream) = (self.limit.clone(), upstream.clone());
                let (calls, start) = (Arc::clone(&self.calls), self.start);
                tokio::spawn(async move {
                    tokio::time::sleep_until(start.later_by(from)).await;
                    while start.elapsed() < until {
                        match Run::one(&limit, &upstream, &calls, start).await {
                            Answer::Ticket => {}
                            Answer::TooMany => sleep(Duration::from_secs(1)).await,
                            Answer::Shed => sleep(200 * MS).await,
                        }
                    }
                })
            })
            .collect()
    }

    /// Open-loop arrivals, evenly paced at `per_second`, from `from` until
    /// `until`: each arrival is one request of its own.
    fn paced(
        &self,
        per_second: u32,
        upstream: &Upstream,
        from: Duration,
        until: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (limit, upstream) = (self.limit.clone(), upstream.clone());
        let (calls, start) = (Arc::clone(&self.calls), self.start);
        tokio::spawn(async move {
            let gap = Duration::from_secs(1) / per_second;
            let mut next = start.later_by(from);
            let mut requests = Vec::new();
            while next < start.later_by(until) {
                tokio::time::sleep_until(next).await;
                let (limit, upstream, calls) =
                    (limit.clone(), upstream.clone(), Arc::clone(&calls));
                requests.push(tokio::spawn(async move {
                    Run::one(&limit, &upstream, &calls, start).await;
                }));
                next = next.later_by(gap);
            }
            for request in requests {
                request.await.expect("request");
            }
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    fn trace(&self) -> Vec<Point> {
        self.trace.lock().expect("trace").clone()
    }

    /// Tickets per second answered within `from..to`.
    fn throughput(&self, from: Duration, to: Duration) -> f64 {
        let tickets = self
            .calls()
            .iter()
            .filter(|c| c.answer == Answer::Ticket && c.answered >= from && c.answered < to)
            .count();
        tickets as f64 / to.saturating_sub(from).as_secs_f64()
    }

    /// First time the limit was at least `level`.
    fn reached(&self, level: usize, after: Duration) -> Option<Duration> {
        self.trace()
            .iter()
            .find(|p| p.at >= after && p.limit >= level)
            .map(|p| p.at)
    }

    fn limits(&self, from: Duration, to: Duration) -> (usize, f64, usize) {
        let points: Vec<usize> = self
            .trace()
            .iter()
            .filter(|p| p.at >= from && p.at < to)
            .map(|p| p.limit)
            .collect();
        let min = points.iter().copied().min().unwrap_or(0);
        let max = points.iter().copied().max().unwrap_or(0);
        let mean = points.iter().sum::<usize>() as f64 / points.len().max(1) as f64;
        (min, mean, max)
    }

    fn limit_at(&self, at: Duration) -> usize {
        self.trace()
            .iter()
            .rev()
            .find(|p| p.at <= at)
            .map_or(0, |p| p.limit)
    }
}

async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.await.expect("simulation task");
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The `p`-th percentile (0–100) of some durations.
fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn in_upstream(calls: &[Call], from: Duration, to: Duration) -> Vec<Duration> {
    calls
        .iter()
        .filter(|c| c.answer == Answer::Ticket && c.asked >= from && c.asked < to)
        .map(|c| c.in_upstream)
        .collect()
}

fn count(calls: &[Call], answer: Answer) -> usize {
    calls.iter().filter(|c| c.answer == answer).count()
}

/// (1) An unlimited 100 ms TapTalk: slow start takes the limit to the
/// maximum within about a second, and throughput to max / 0.1 s.
#[tokio::test(start_paused = true)]
async fn an_unlimited_upstream_is_used_up_to_the_maximum() {
    unlimited_upstream("(1)", Upstream::unlimited(100 * MS)).await;
}

/// (1b) The same with service times spread ±20%: noise is not queueing.
#[tokio::test(start_paused = true)]
async fn an_unlimited_upstream_with_jitter_is_used_up_to_the_maximum() {
    let upstream = Upstream {
        jitter: 0.2,
        ..Upstream::unlimited(100 * MS)
    };
    unlimited_upstream("(1b) ±20% jitter,", upstream).await;
}

async fn unlimited_upstream(label: &str, upstream: Upstream) {
    let run = Run::adaptive();
    let end = secs(6.0);
    let trace = run.trace_until(end);
    join(run.clients(3_000, &upstream, Duration::ZERO, end)).await;
    trace.await.expect("trace");

    let to_1000 = run.reached(1_000, Duration::ZERO);
    let steady = run.throughput(secs(2.0), end);
    let first_second = run.throughput(Duration::ZERO, secs(1.0));
    let max_in_flight = run.trace().iter().map(|p| p.in_flight).max().unwrap_or(0);
    let snapshot = run.limit.snapshot();
    println!(
        "{label} unlimited 100 ms, 3,000 clients: limit ≥ 1,000 after {to_1000:?}; final \
         limit {}; throughput {first_second:.0}/s in the first second, {steady:.0}/s from 2 s \
         to 6 s ({:.1}% of 1,024 / 0.1 s); peak in flight {max_in_flight}; {} cuts",
        run.limit.limit(),
        steady / 10_240.0 * 100.0,
        snapshot.decreases,
    );
    assert!(to_1000.is_some_and(|t| t <= secs(1.5)), "{to_1000:?}");
    assert_eq!(run.limit.limit(), 1_024);
    assert!(steady >= 0.95 * 10_240.0, "{steady}");
    assert!(max_in_flight <= 1_024);
    assert_eq!(
        snapshot.decreases, 0,
        "nothing pushed back, nothing should be cut"
    );
}

/// The capacity-limited TapTalk of the issue: 100 at once, 100 ms each, a
/// FIFO line, 503 beyond 200 waiting: 1,000 per second at most.
fn capacity_limited() -> Upstream {
    Upstream::with_capacity(100 * MS, 100, 200)
}

/// (2) The limiter finds the knee: ≥ 90% of the 1,000/s the server can do,
/// with the p99 time inside the server (line + service) under 250 ms.
#[tokio::test(start_paused = true)]
async fn a_capacity_limited_upstream_is_used_at_its_knee() {
    capacity_limited_upstream("(2)", capacity_limited()).await;
}

/// (2b) The same with service times spread ±20%.
#[tokio::test(start_paused = true)]
async fn a_capacity_limited_upstream_with_jitter_is_used_at_its_knee() {
    let upstream = Upstream {
        jitter: 0.2,
        ..capacity_limited()
    };
    capacity_limited_upstream("(2b) ±20% jitter,", upstream).await;
}

async fn capacity_limited_upstream(label: &str, upstream: Upstream) {
    let run = Run::adaptive();
    let end = secs(10.0);
    let trace = run.trace_until(end);
    join(run.clients(2_000, &upstream, Duration::ZERO, end)).await;
    trace.await.expect("trace");

    let calls = run.calls();
    let all = run.throughput(Duration::ZERO, end);
    let steady = run.throughput(secs(2.0), end);
    let inside = in_upstream(&calls, Duration::ZERO, end);
    let inside_steady = in_upstream(&calls, secs(2.0), end);
    let (p50, p99, max) = (
        percentile(inside.clone(), 50.0),
        percentile(inside.clone(), 99.0),
        percentile(inside, 100.0),
    );
    let p99_steady = percentile(inside_steady, 99.0);
    let (low, mean, high) = run.limits(secs(2.0), end);
    let snapshot = run.limit.snapshot();
    println!(
        "{label} capacity 100 × 100 ms, line of 200, 2,000 clients, 10 s: throughput \
         {all:.0}/s overall, {steady:.0}/s from 2 s ({:.1}% of 1,000/s); inside the server p50 \
         {} ms, p99 {} ms (p99 {} ms from 2 s), max {} ms; shed {}; limit from 2 s: \
         {low}..{high}, mean {mean:.0}; baseline {:?}; {} raises, {} cuts",
        steady / 10.0,
        ms(p50),
        ms(p99),
        ms(p99_steady),
        ms(max),
        count(&calls, Answer::Shed),
        snapshot.baseline,
        snapshot.increases,
        snapshot.decreases,
    );
    assert!(all >= 900.0, "{all}");
    assert!(steady >= 900.0, "{steady}");
    assert!(p99 < 250 * MS, "{p99:?}");
    assert_eq!(count(&calls, Answer::Shed), 0);
}

/// (3) The same server, after a burst, with demand at half its bound (500
/// arrivals per second, evenly paced): requests wait for nothing, the
/// latency stays at the service time.
#[tokio::test(start_paused = true)]
async fn paced_demand_below_the_knee_sees_the_bare_service_time() {
    let run = Run::adaptive();
    let upstream = capacity_limited();
    let end = secs(15.0);
    let trace = run.trace_until(end);
    let burst = run.clients(1_000, &upstream, Duration::ZERO, secs(3.0));
    let paced = run.paced(500, &upstream, secs(3.0), end);
    join(burst).await;
    paced.await.expect("paced");
    trace.await.expect("trace");

    // The burst clients waiting for a permit at 3 s still send that request:
    // a backlog that drains at 1,000 - 500 per second. Measure from 7 s.
    let calls: Vec<Call> = run
        .calls()
        .into_iter()
        .filter(|c| c.asked >= secs(7.0))
        .collect();
    let latency: Vec<Duration> = calls.iter().map(|c| c.answered - c.asked).collect();
    let (p50, p99, max) = (
        percentile(latency.clone(), 50.0),
        percentile(latency.clone(), 99.0),
        percentile(latency, 100.0),
    );
    let throughput = run.throughput(secs(7.0), secs(14.0));
    let (low, mean, high) = run.limits(secs(7.0), end);
    println!(
        "(3) same server, 1,000 clients for 3 s then 500/s paced: from 7 s {} requests, {throughput:.0}/s, \
         latency (waiting for a permit + inside) p50 {} ms, p99 {} ms, max {} ms; \
         limit {low}..{high}, mean {mean:.0}; limit at the end of the burst {}",
        calls.len(),
        ms(p50),
        ms(p99),
        ms(max),
        run.limit_at(secs(3.0)),
    );
    assert!((495.0..=505.0).contains(&throughput), "{throughput}");
    assert!(p99 <= 110 * MS, "{p99:?}");
    assert!(calls.iter().all(|c| c.answer == Answer::Ticket));
}

/// (4) A 429 storm of 2 s (every answer 429, `Retry-After: 1`) on an
/// unlimited 100 ms TapTalk: the limit is cut within a few round trips, at
/// most once per round trip, and comes back after the storm.
#[tokio::test(start_paused = true)]
async fn a_storm_of_429s_cuts_the_limit_once_per_round_trip_and_it_recovers() {
    let run = Run::adaptive();
    let start = run.start;
    let upstream = Upstream {
        storm: Some((start + secs(4.0), start + secs(6.0))),
        ..Upstream::unlimited(100 * MS)
    };
    let end = secs(16.0);
    let trace = run.trace_until(end);
    let limit = run.limit.clone();
    let cuts_before = tokio::spawn(async move {
        tokio::time::sleep_until(start + secs(4.0)).await;
        let before = limit.snapshot().decreases;
        tokio::time::sleep_until(start + secs(6.0)).await;
        (before, limit.snapshot().decreases)
    });
    join(run.clients(3_000, &upstream, Duration::ZERO, end)).await;
    trace.await.expect("trace");
    let (cuts_at_start, cuts_at_end) = cuts_before.await.expect("cuts");

    let before = run.limit_at(secs(3.99));
    let first_cut = run
        .trace()
        .iter()
        .find(|p| p.at >= secs(4.0) && p.limit < before)
        .map(|p| p.at - secs(4.0));
    let (storm_low, _, _) = run.limits(secs(4.0), secs(6.0));
    let cuts = cuts_at_end - cuts_at_start;
    let calls = run.calls();
    let too_many = count(&calls, Answer::TooMany);
    let recovered = run.reached(before * 9 / 10, secs(6.0));
    let after = run.throughput(secs(12.0), end);
    println!(
        "(4) 429 storm from 4 s to 6 s, 3,000 clients waiting out Retry-After: 1: limit {before} \
         before, first cut {first_cut:?} into the storm, to {} at 4.1 s, lowest {storm_low}; \
         {cuts} cuts for {too_many} answers 429; back to ≥ 90% at {recovered:?} ({:?} after \
         the storm); throughput from 12 s {after:.0}/s",
        run.limit_at(secs(4.1)),
        recovered.map(|t| t.saturating_sub(secs(6.0))),
    );
    assert_eq!(before, 1_024);
    assert!(first_cut.is_some_and(|t| t <= 30 * MS), "{first_cut:?}");
    assert!(run.limit_at(secs(4.1)) <= before * 3 / 4);
    // At most one cut per round trip (100 ms), however many 429s.
    assert!(cuts <= 21, "{cuts}");
    assert!(too_many > 100 * cuts as usize);
    assert!(recovered.is_some_and(|t| t <= secs(10.0)), "{recovered:?}");
}

/// (5) Demand below the limit: the limit does not grow, however good the
/// round trips.
#[tokio::test(start_paused = true)]
async fn demand_below_the_limit_does_not_grow_it() {
    let run = Run::adaptive();
    let upstream = Upstream::unlimited(100 * MS);
    let end = secs(10.0);
    let trace = run.trace_until(end);
    let closed = run.clients(40, &upstream, Duration::ZERO, end);
    let paced = run.paced(200, &upstream, Duration::ZERO, end);
    join(closed).await;
    paced.await.expect("paced");
    trace.await.expect("trace");
    let (low, _, high) = run.limits(Duration::ZERO, end);
    let peak = run.trace().iter().map(|p| p.in_flight).max().unwrap_or(0);
    println!(
        "(5) 40 clients + 200/s paced (~60 in flight) against a limit of 64: \
         limit {low}..{high}, peak in flight {peak}, {} raises",
        run.limit.snapshot().increases
    );
    assert_eq!((low, high), (64, 64));
    assert_eq!(run.limit.snapshot().increases, 0);
}

/// (6) Fixed mode never changes, whatever TapTalk does: a capacity-limited
/// server that queues and sheds, then a 429 storm.
#[tokio::test(start_paused = true)]
async fn a_fixed_limit_never_changes() {
    let fixed = AdaptiveLimit::fixed(NonZeroUsize::new(250).expect("250"));
    let run = Run::new(fixed);
    let upstream = Upstream {
        storm: Some((run.start + secs(3.0), run.start + secs(4.0))),
        ..capacity_limited()
    };
    let end = secs(6.0);
    let trace = run.trace_until(end);
    let mut watch = run.limit.watch();
    join(run.clients(1_000, &upstream, Duration::ZERO, end)).await;
    trace.await.expect("trace");
    let calls = run.calls();
    let (low, _, high) = run.limits(Duration::ZERO, end);
    let peak = run.trace().iter().map(|p| p.in_flight).max().unwrap_or(0);
    let inside = percentile(in_upstream(&calls, Duration::ZERO, end), 99.0);
    println!(
        "(6) fixed 250 against the capacity-limited server and a 429 storm: limit {low}..{high}, \
         peak in flight {peak}, p99 inside the server {} ms (what a fixed limit above the knee \
         costs), {} answers 429",
        ms(inside),
        count(&calls, Answer::TooMany)
    );
    assert_eq!((low, high), (250, 250));
    assert!(peak <= 250);
    assert!(!watch.has_changed().unwrap_or(true));
    assert_eq!(*watch.borrow_and_update(), 250);
    assert_eq!(run.limit.snapshot().phase, None);
}

/// (7) Permits dropped without `done` (a task cancelled mid-request) give
/// their slots back and teach the limiter nothing.
#[tokio::test(start_paused = true)]
async fn dropped_permits_are_released() {
    let run = Run::adaptive();
    let limit = run.limit.clone();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let limit = limit.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let permit = limit.acquire().await;
                    if i % 2 == 0 {
                        // Abandoned after a while, as by a shutdown.
                        sleep(50 * MS).await;
                        drop(permit);
                    } else {
                        // Cancelled: the future holding it is dropped.
                        let _ = tokio::time::timeout(20 * MS, async move {
                            let _held = permit;
                            sleep(Duration::from_secs(60)).await;
                        })
                        .await;
                    }
                }
            })
        })
        .collect();
    join(tasks).await;
    let snapshot = run.limit.snapshot();
    println!(
        "(7) 10,000 permits dropped without done: in flight {}, limit {}, {} raises, {} cuts",
        snapshot.in_flight, snapshot.limit, snapshot.increases, snapshot.decreases
    );
    assert_eq!(snapshot.in_flight, 0);
    assert_eq!(snapshot.limit, 64);
    assert_eq!((snapshot.increases, snapshot.decreases), (0, 0));
    // All 64 slots are free again.
    let permits: Vec<Permit> =
        futures_util::future::join_all((0..64).map(|_| limit.acquire())).await;
    assert_eq!(limit.in_flight(), 64);
    drop(permits);
    assert_eq!(limit.in_flight(), 0);
}

/// (8) A TapTalk that fails 1% of requests at random (503) is not congested:
/// the limit still reaches the maximum.
#[tokio::test(start_paused = true)]
async fn stray_failures_do_not_shrink_the_limit() {
    let run = Run::adaptive();
    let upstream = Upstream {
        fail_every: Some(100),
        ..Upstream::unlimited(100 * MS)
    };
    let end = secs(6.0);
    let trace = run.trace_until(end);
    join(run.clients(3_000, &upstream, Duration::ZERO, end)).await;
    trace.await.expect("trace");
    let (low, mean, _) = run.limits(secs(2.0), end);
    let steady = run.throughput(secs(2.0), end);
    println!(
        "(8) unlimited 100 ms with 1% 503s: limit from 2 s {low}.., mean {mean:.0}; \
         {steady:.0} tickets/s; {} cuts",
        run.limit.snapshot().decreases
    );
    assert!(low >= 1_000, "{low}");
}

/// (9) Two replicas share the capacity-limited server: together they still
/// find its knee.
#[tokio::test(start_paused = true)]
async fn two_replicas_share_the_knee() {
    let upstream = capacity_limited();
    let first = Run::adaptive();
    let second = Run {
        start: first.start,
        ..Run::adaptive()
    };
    let end = secs(10.0);
    let traces = [first.trace_until(end), second.trace_until(end)];
    let mut clients = first.clients(1_500, &upstream, Duration::ZERO, end);
    clients.extend(second.clients(1_500, &upstream, Duration::ZERO, end));
    join(clients).await;
    join(traces.into()).await;
    let total = first.throughput(secs(2.0), end) + second.throughput(secs(2.0), end);
    let mut calls = first.calls();
    calls.extend(second.calls());
    let p99 = percentile(in_upstream(&calls, Duration::ZERO, end), 99.0);
    let (_, mean_a, _) = first.limits(secs(2.0), end);
    let (_, mean_b, _) = second.limits(secs(2.0), end);
    println!(
        "(9) two replicas, one capacity-limited server: {total:.0}/s together from 2 s, \
         p99 inside {} ms, mean limits {mean_a:.0} + {mean_b:.0}, shed {}",
        ms(p99),
        count(&calls, Answer::Shed)
    );
    assert!(total >= 900.0, "{total}");
    assert!(p99 < 250 * MS, "{p99:?}");
}

/// (10) TapTalk becomes slower for good (100 ms → 300 ms, no queueing): the
/// limiter first reads it as congestion and cuts, then believes the new
/// baseline once the old one leaves its window (10 s), and grows back.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_became_slower_is_believed_after_the_baseline_window() {
    let run = Run::adaptive();
    let upstream = Upstream {
        slower: Some((run.start + secs(3.0), 300 * MS)),
        ..Upstream::unlimited(100 * MS)
    };
    let end = secs(40.0);
    let trace = run.trace_until(end);
    join(run.clients(3_000, &upstream, Duration::ZERO, end)).await;
    trace.await.expect("trace");
    let (low, _, _) = run.limits(secs(3.0), secs(15.0));
    let back = run.reached(1_000, secs(4.0));
    println!(
        "(10) service 100 → 300 ms at 3 s: limit down to {low}, back to ≥ 1,000 at {back:?}; \
         throughput from 30 s {:.0}/s (1,024 / 0.3 s = 3,413)",
        run.throughput(secs(30.0), end)
    );
    assert!(back.is_some_and(|t| t <= secs(30.0)), "{back:?}");
}
