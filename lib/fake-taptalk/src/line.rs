//! The stand-in's capacity, as a real service has one: at most `capacity`
//! requests are served at once, the rest wait in line (first come, first
//! served), and beyond `max_queue` waiting a request is shed at once.
//!
//! Every request that is let in is a [`Visit`]: it holds its slot until its
//! answer has been handed to the connection, and then records how long it
//! spent inside the stand-in, from arrival to the answer sent, the wait in
//! line included. Shed requests are counted (`FakeStats::shed`), not timed:
//! they spend next to nothing inside.
//!
//! Per request this costs a few atomic operations and one short lock to
//! record the time; no lock is held across an await.

use super::Knobs;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one capacity setting. Changing the knobs makes new ones;
/// requests already in line keep theirs.
#[derive(Debug)]
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    max_queue: Option<usize>,
}

impl Slots {
    /// `None` when the knobs set no capacity.
    pub(super) fn for_knobs(knobs: &Knobs) -> Option<Arc<Slots>> {
        let capacity = knobs.capacity?.clamp(1, Semaphore::MAX_PERMITS);
        Some(Arc::new(Slots {
            semaphore: Arc::new(Semaphore::new(capacity)),
            max_queue: knobs.max_queue,
        }))
    }
}

/// Requests in service and in line, their peaks, and the times spent inside.
#[derive(Debug)]
pub(super) struct Line {
    in_service: AtomicUsize,
    waiting: AtomicUsize,
    peak_in_service: AtomicUsize,
    peak_waiting: AtomicUsize,
    /// Microseconds from arrival to the answer sent, of every visit.
    times: Mutex<Histogram<u64>>,
}

/// The highest time recorded, in microseconds (an hour); longer visits are
/// recorded as this.
const LONGEST_US: u64 = 3_600_000_000;

impl Default for Line {
    fn default() -> Self {
        Line {
            in_service: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            peak_in_service: AtomicUsize::new(0),
            peak_waiting: AtomicUsize::new(0),
            times: Mutex::new(new_histogram()),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to an hour at 3 significant digits: a fixed ~200 KiB, allocated
    // once. The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, LONGEST_US, 3).unwrap_or_else(|_| unreachable!())
}

/// A request let in: holds its slot (if there is a capacity) and counts as
/// in service until dropped, which records its time inside.
#[derive(Debug)]
pub(super) struct Visit {
    line: Arc<Line>,
    arrived: Instant,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for Visit {
    fn drop(&mut self) {
        self.line.in_service.fetch_sub(1, Ordering::AcqRel);
        let micros = u64::try_from(self.arrived.elapsed().as_micros()).unwrap_or(u64::MAX);
        lock(&self.line.times).saturating_record(micros.clamp(1, LONGEST_US));
    }
}

/// Decrements a counter when dropped, also when the waiting request is
/// given up (its client went away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Line {
    /// Lets a request that arrived at `arrived` in: at once if a slot is free
    /// (or there is no capacity), after its turn in line otherwise. `None`:
    /// the line is full, shed it.
    pub(super) async fn enter(
        line: &Arc<Line>,
        slots: Option<&Slots>,
        arrived: Instant,
    ) -> Option<Visit> {
        let slot = match slots {
            None => None,
            Some(slots) => match Arc::clone(&slots.semaphore).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let waiting = line.waiting.fetch_add(1, Ordering::AcqRel) + 1;
                    let _in_line = Waiting(&line.waiting);
                    if slots.max_queue.is_some_and(|max| waiting > max) {
                        return None;
                    }
                    line.peak_waiting.fetch_max(waiting, Ordering::Relaxed);
                    // Tokio's semaphore is fair: permits go to waiters in
                    // the order they asked. It is never closed.
                    Some(Arc::clone(&slots.semaphore).acquire_owned().await.ok()?)
                }
            },
        };
        let in_service = line.in_service.fetch_add(1, Ordering::AcqRel) + 1;
        line.peak_in_service
            .fetch_max(in_service, Ordering::Relaxed);
        Some(Visit {
            line: Arc::clone(line),
            arrived,
            _slot: slot,
        })
    }

    pub(super) fn stats(&self) -> LoadStats {
        let times = lock(&self.times);
        let at = |quantile: f64| Duration::from_micros(times.value_at_quantile(quantile));
        let visits = times.len();
        LoadStats {
            in_service: self.in_service.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            peak_in_service: self.peak_in_service.load(Ordering::Relaxed),
            peak_waiting: self.peak_waiting.load(Ordering::Relaxed),
            in_upstream: TimeInside {
                visits,
                p50: at(0.50),
                p90: at(0.90),
                p99: at(0.99),
                max: Duration::from_micros(if visits == 0 { 0 } else { times.max() }),
                mean: Duration::from_micros(times.mean() as u64),
            },
        }
    }
}

/// How loaded the stand-in is and was (see [`super::FakeTaptalk::load`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Requests being served now.
    pub in_service: usize,
    /// Requests waiting in line now.
    pub waiting: usize,
    /// The most requests ever served at once.
    pub peak_in_service: usize,
    /// The most requests ever waiting at once.
    pub peak_waiting: usize,
    /// Time from arrival to the answer sent, wait in line included, of the
    /// requests served so far (shed ones are not timed).
    pub in_upstream: TimeInside,
}

/// A summary of the times spent inside the stand-in, at microsecond
/// resolution (3 significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeInside {
    /// Requests timed: those answered since the start, shed ones excepted.
    pub visits: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
