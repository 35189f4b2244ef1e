//! Adaptive concurrency toward TapTalk: how many auth-ticket requests one
//! replica has in flight, found from what the requests observe.
//!
//! # Use
//!
//! ```no_run
//! # async fn example(client: ticket_worker::taptalk::TaptalkClient,
//! #                  request: ticket_worker::domain::TicketRequest) {
//! use ticket_worker::taptalk::limit::{AdaptiveLimit, LimitSettings, Signal};
//! let limit = AdaptiveLimit::new(&LimitSettings::default()).expect("valid settings");
//! let mut prefetch = limit.watch(); // the consumer's prefetch follows the limit
//!
//! // Per HTTP attempt (never across a retry pause):
//! let permit = limit.acquire().await;
//! let result = client.request_ticket(&request).await;
//! permit.done(Signal::of(&result));
//! # }
//! ```
//!
//! One [`AdaptiveLimit`] per replica, cloned into every task (a clone is one
//! `Arc`). [`AdaptiveLimit::acquire`] waits, first come first served, while
//! the requests in flight reach the limit; it is cancel-safe (a dropped wait
//! takes nothing) and allocates nothing. The [`Permit`] holds the slot until
//! [`Permit::done`] reports how the request ended, or until it is dropped,
//! which counts as [`Signal::Ignore`]. Take the permit right before the
//! request and report right after it: the round trip is measured from
//! `acquire` to `done`, so anything else inside inflates it. With a hard rate
//! limit ([`super::rate`]), wait for the rate limiter *before* acquiring.
//!
//! Wiring it into the worker:
//!
//! * In the pipeline's retry loop, one permit per attempt, inside the
//!   attempt closure; the retry pause (and `Retry-After`) happens with no
//!   permit held. The `select!` on the breaker may drop a waiting `acquire`:
//!   that is fine, it is cancel-safe.
//! * The limit only grows when requests find it reached, so the number of
//!   events processed at once must be able to exceed it (at least
//!   [`LimitSettings::max`], or follow the limit with headroom for the
//!   Postgres and broker steps); otherwise it stays where it starts.
//! * The consumer's prefetch can follow [`AdaptiveLimit::watch`] (about
//!   twice the limit, as docs/operating.md advises for `CONCURRENCY`). `basic.qos`
//!   is a broker round trip: apply it when the value moved by a quarter or
//!   so, not on every change. A prefetch of 2,048 also raises the worst-case
//!   memory bound docs/operating.md computes from `PREFETCH` × the broker's
//!   `max_message_size`.
//! * [`AdaptiveLimit::snapshot`] gives the limit, the in-flight count, the
//!   phase, the baseline and the smoothed round trip, and counts of raises
//!   and cuts, for `/metrics`.
//!
//! # The control law
//!
//! It combines TCP's slow start (with HyStart's early exit on rising round
//! trips), Vector's adaptive request concurrency (averaged round trips,
//! growth only when the limit was reached, a multiplicative cut on
//! back-pressure) and Netflix's Gradient/Vegas limits (a baseline round trip,
//! and cutting to where the queue would vanish):
//!
//! * **Measurements.** Successful answers give round trips. A control
//!   interval lasts one smoothed round trip (at least
//!   [`LimitSettings::min_interval`]) and at least 8 answers. The
//!   **baseline** is the lowest interval mean over the last
//!   [`LimitSettings::baseline_window`]: TapTalk's round trip when nothing
//!   queues. Round trips above [`LimitSettings::tolerance`] × baseline (and
//!   at least [`LimitSettings::rtt_slack`] above it) mean TapTalk queues our
//!   requests. The **knee**, what TapTalk takes without queueing, comes from
//!   Little's law: requests at concurrency `level` that take `rtt` are served
//!   at `level / rtt` per second, which at the baseline needs
//!   `level × baseline / rtt` in flight (`level` is the limit for requests
//!   that had to wait for a slot, else the count in flight when they
//!   started). Decisions use only requests sent after the last cut; the
//!   baseline uses them all.
//! * **Slow start.** From [`LimitSettings::initial`], every success that
//!   found the limit reached adds ½ (×1.5 per round trip, applied in steps
//!   of 1/16): against a 100 ms TapTalk, from 64 to 1,024 in flight in under
//!   a second. It ends at the maximum, at back-pressure, or when the recent
//!   round trip (an average of the last ~30 answers) exceeds
//!   [`LimitSettings::slow_start_exit`] × baseline: then the limit drops to
//!   the knee estimate at once (at most halving). ×1.5 rather than TCP's ×2:
//!   against a TapTalk that serves C at once, the first slow answers return
//!   about 1.5 round trips after the knee is crossed; ×2 would be at ~2.5 C by
//!   then, ×1.5 stays under ~1.9 C.
//! * **Avoidance.** Each interval whose mean round trip stays within the
//!   tolerance and in which the limit was reached adds
//!   `max(√limit, limit/8)` (rounded up): +4 at 16, +13 at 100, +128 at
//!   1,024. An interval above the tolerance sets the limit to its knee
//!   estimate (at most halving). Against a TapTalk that serves C at once, the
//!   limit saws between C and about 1.5 C: each cut lands where the queue
//!   empties, which also keeps the baseline honest.
//! * **Back-pressure** (429, 503, timeouts, connection errors: any
//!   [`TicketError::Transient`]) cuts the limit to [`LimitSettings::decrease`]
//!   × the load the refused request met (the higher of the level it went out
//!   at and what was in flight when it came back, like TCP's flight size).
//!   It acts once back-pressure is more than
//!   [`LimitSettings::backpressure_share`] of the answers of the current and
//!   the previous interval (and at least 2 of them): a stray 503 does not
//!   cut, a storm of 429s does within a few milliseconds. At most one cut per
//!   interval, and never for a request sent before the previous cut: a burst
//!   of 429s cuts once per round trip, like TCP's one reduction per window.
//!   `Retry-After` is the retry code's business (it waits it out); the
//!   limiter only learns that TapTalk pushed back. Once answers are good
//!   again, slow start brings the limit back to half what it was before the
//!   first cut (TCP's ssthresh), then avoidance takes over.
//! * **No growth without demand.** The limit only grows from answers to
//!   requests that found it reached. After 5 s without that, the next burst
//!   begins with slow start again (TCP's restart after idle).
//! * **A slower TapTalk.** If TapTalk gets slower for good (not by
//!   queueing), the limiter first reads the longer round trips as queueing
//!   and cuts, down to the minimum; once the old baseline has left its window
//!   and the new one is more than `slow_start_exit` × the old, slow start
//!   finds the new level (~13 s in all from 100 ms to 300 ms, in the
//!   simulation).
//! * **Bounds.** The limit stays within [`LimitSettings::min`] and
//!   [`LimitSettings::max`]. In fixed mode ([`Concurrency::Fixed`]) it is a
//!   plain FIFO semaphore of that size: no measurements, no lock.
//!
//! [`Signal::Ignore`] (an event TapTalk rejected for its own fields, a wrong
//! key, a request abandoned by shutdown) counts for nothing: such answers may
//! be served faster than a ticket and would pull the round-trip averages down.
//!
//! # Cost
//!
//! Per request: one atomic compare-and-swap on the semaphore to acquire (the
//! waiting path only when no slot is free), two clock reads, one `Arc`
//! clone, and one short `std` mutex at `done` (a few arithmetic steps; never
//! held across an `.await`); no allocation. Resizing and logging happen a few
//! times per round trip at most, and the log line is written after the lock
//! is released. Fixed mode skips the mutex.
//!
//! # Logs
//!
//! When the limit moved by at least 25% since the last line (at most one
//! line per second), or with a phase change, one `info` line:
//! `TapTalk concurrency limit changed` with numeric `limit` and `previous`
//! (the value of the previous line), `rtt_ms` and `baseline_ms`, and `phase`
//! and `reason`. The benchmark reads `limit` from these lines.

mod control;
mod settings;
mod slots;
mod window;

#[cfg(test)]
mod tests;

pub use control::Phase;
pub use settings::{Concurrency, InvalidLimitSettings, LimitSettings, MAX_LIMIT};

use super::TicketError;
use control::{Controller, LimitLog, Sample};
use slots::Slots;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a request ended, as far as TapTalk's load is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// TapTalk answered with a ticket: the round trip counts.
    Success,
    /// TapTalk could not serve it now: 429, 503 or another 5xx, a timeout, a
    /// refused or dropped connection, an answer that is not one.
    BackPressure,
    /// Says nothing about TapTalk's load: TapTalk rejected the event's own
    /// fields, refused the key, or the request was abandoned.
    Ignore,
}

impl Signal {
    /// The signal of one [`TaptalkClient`](super::TaptalkClient) result:
    /// a ticket is a success, [`TicketError::Transient`] back-pressure, and
    /// [`TicketError::Rejected`] and [`TicketError::Misconfigured`] are
    /// ignored (the breaker deals with the latter).
    pub fn of<T>(result: &Result<T, TicketError>) -> Signal {
        match result {
            Ok(_) => Signal::Success,
            Err(TicketError::Transient { .. }) => Signal::BackPressure,
            Err(TicketError::Rejected { .. } | TicketError::Misconfigured(_)) => Signal::Ignore,
        }
    }
}

/// The limit of TapTalk requests in flight for one replica; cheap to clone,
/// all clones share it.
#[derive(Clone)]
pub struct AdaptiveLimit {
    shared: Arc<Shared>,
}

struct Shared {
    slots: Slots,
    /// `None` in fixed mode.
    control: Option<Mutex<Controller>>,
    limit_tx: watch::Sender<usize>,
}

/// What the limiter currently believes, for metrics and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSnapshot {
    pub limit: usize,
    pub in_flight: usize,
    /// `None` in fixed mode.
    pub phase: Option<Phase>,
    /// The lowest mean round trip of the baseline window.
    pub baseline: Option<Duration>,
    /// The smoothed mean round trip.
    pub rtt: Option<Duration>,
    /// How often the limit was raised and cut.
    pub increases: u64,
    pub decreases: u64,
}

impl AdaptiveLimit {
    /// A limiter with these settings, adaptive or fixed.
    pub fn new(settings: &LimitSettings) -> Result<AdaptiveLimit, InvalidLimitSettings> {
        settings.validate()?;
        let limit = settings.starting_limit();
        let control = match settings.concurrency {
            Concurrency::Auto => Some(Mutex::new(Controller::new(settings, Instant::now()))),
            Concurrency::Fixed(_) => None,
        };
        Ok(AdaptiveLimit {
            shared: Arc::new(Shared {
                slots: Slots::new(limit),
                control,
                limit_tx: watch::Sender::new(limit),
            }),
        })
    }

    /// A fixed limit of `n` (at most [`MAX_LIMIT`]): a FIFO semaphore, no
    /// adaptation.
    pub fn fixed(n: NonZeroUsize) -> AdaptiveLimit {
        let n = n.get().min(MAX_LIMIT);
        AdaptiveLimit {
            shared: Arc::new(Shared {
                slots: Slots::new(n),
                control: None,
                limit_tx: watch::Sender::new(n),
            }),
        }
    }

    /// Waits for a slot (first come, first served) and takes it. Cancel-safe:
    /// dropping the future while it waits takes nothing.
    pub async fn acquire(&self) -> Permit {
        let (in_flight, waited) = self.shared.slots.acquire().await;
        let limit = self.shared.slots.limit();
        let saturated = waited || in_flight >= limit;
        Permit {
            shared: Arc::clone(&self.shared),
            started: Instant::now(),
            level: if waited {
                in_flight.max(limit)
            } else {
                in_flight
            },
            saturated,
            open: true,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.slots.limit()
    }

    /// Requests holding a slot now. It may briefly exceed [`Self::limit`]
    /// right after a cut, until enough of them finish.
    pub fn in_flight(&self) -> usize {
        self.shared.slots.in_flight()
    }

    /// The limit, updated whenever it changes (a few times per round trip at
    /// most, during slow start): for the consumer's prefetch to follow.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.shared.limit_tx.subscribe()
    }

    /// Whether the limit adapts (`false` in fixed mode).
    pub fn is_adaptive(&self) -> bool {
        self.shared.control.is_some()
    }

    pub fn snapshot(&self) -> LimitSnapshot {
        let state = self.shared.control.as_ref().map(|control| {
            control
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state()
        });
        LimitSnapshot {
            limit: self.limit(),
            in_flight: self.in_flight(),
            phase: state.map(|s| s.phase),
            baseline: state.and_then(|s| s.baseline),
            rtt: state.and_then(|s| s.rtt),
            increases: state.map_or(0, |s| s.increases),
            decreases: state.map_or(0, |s| s.decreases),
        }
    }
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("adaptive", &self.is_adaptive())
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Shared {
    fn finished(&self, sample: Sample) {
        if let Some(control) = &self.control {
            let log = {
                let mut control = control.lock().unwrap_or_else(PoisonError::into_inner);
                control.on_done(Instant::now(), sample).and_then(|outcome| {
                    if outcome.limit != self.slots.limit() {
                        self.slots.resize(outcome.limit);
                        self.limit_tx.send_replace(outcome.limit);
                    }
                    outcome.log
                })
            };
            if let Some(log) = log {
                emit(&log);
            }
        }
        self.slots.release();
    }
}

fn emit(log: &LimitLog) {
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0);
    tracing::info!(
        limit = log.limit as u64,
        previous = log.previous as u64,
        rtt_ms = ms(log.rtt),
        baseline_ms = ms(log.baseline),
        phase = log.phase.as_str(),
        reason = log.reason,
        "TapTalk concurrency limit changed"
    );
}

/// One slot of the limit, held by one request. Report how it ended with
/// [`Permit::done`]; dropping it releases the slot and counts as
/// [`Signal::Ignore`].
#[must_use = "a permit holds its slot until it is done or dropped"]
pub struct Permit {
    shared: Arc<Shared>,
    started: Instant,
    level: usize,
    saturated: bool,
    open: bool,
}

impl Permit {
    /// Releases the slot and tells the limiter how the request ended.
    pub fn done(mut self, signal: Signal) {
        self.finish(signal);
    }

    /// When the slot was taken: the start of the measured round trip.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn finish(&mut self, signal: Signal) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        self.shared.finished(Sample {
            started: self.started,
            level: self.level,
            in_flight: self.shared.slots.in_flight(),
            saturated: self.saturated,
            signal,
        });
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish(Signal::Ignore);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("level", &self.level)
            .field("saturated", &self.saturated)
            .finish_non_exhaustive()
    }
}
