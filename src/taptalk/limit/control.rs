//! The control law, as a plain state machine: it sees each finished request
//! (when it started, how many were in flight then, how it ended) and answers
//! with the new limit. No clocks, locks or tasks here: the caller passes the
//! time, which keeps the law testable step by step. The module documentation
//! of [`crate::taptalk::limit`] explains the law and its parameters.

use super::Signal;
use super::settings::LimitSettings;
use super::window::WindowedMin;
use std::time::Duration;
use tokio::time::Instant;

/// Slow start adds this much to the limit per saturated success: ×1.5 per
/// round trip. ×2 (TCP's) overshoots a capacity-limited TapTalk to ~2.5× its
/// knee before the first slow answer is back; ×1.5 keeps that under ~1.9×.
const SLOW_START_GAIN: f64 = 0.5;
/// Slow start applies its growth in steps of 1/16 of the limit, so that the
/// limit (and everyone watching it) changes a few times per round trip, not
/// on every answer.
const SLOW_START_STEP: f64 = 1.0 / 16.0;
/// Gain of the per-answer round-trip and knee averages that end slow start
/// (an average over about the last 30 answers: smooth enough that one slow
/// answer does not end it, quick enough to see a queue within a round trip).
const RECENT_GAIN: f64 = 1.0 / 16.0;
/// Back-pressure acts only with at least this many such answers in the
/// current and the previous interval.
const MIN_PUSHED_BACK: u32 = 2;
/// Gain of the smoothed round trip that sets the control interval.
const SRTT_GAIN: f64 = 0.25;
/// An interval needs this many round trips to count (for the baseline and
/// for decisions); with fewer it runs on, up to [`MAX_STRETCH`] intervals.
const MIN_SAMPLES: u32 = 8;
const MAX_STRETCH: u32 = 4;
/// The control interval before the first round trip was measured.
const FIRST_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without reaching the limit, the next burst starts with
/// slow start again (TCP's restart after idle): a quiet period says nothing
/// about how much TapTalk can take now.
const RESTART_AFTER: Duration = Duration::from_secs(5);
/// Logging: a change of at least this share since the last logged value…
const LOG_CHANGE: f64 = 0.25;
/// …logged at most this often (phase changes are always logged).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Where the control law is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Growing ×1.5 per round trip until the first sign of congestion (or
    /// up to half the limit that last worked, after back-pressure).
    SlowStart,
    /// Near the knee: gentle growth, cuts on congestion.
    Avoidance,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::SlowStart => "slow_start",
            Phase::Avoidance => "avoidance",
        }
    }
}

/// One finished request, as the control law sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub started: Instant,
    /// The concurrency it ran at: the limit when it had to wait for its slot
    /// (demand was at the limit), else the requests in flight when it
    /// started, itself included.
    pub level: usize,
    /// Requests in flight when it finished, itself included.
    pub in_flight: usize,
    /// It had to wait for its slot, or took the last one: demand had
    /// reached the limit.
    pub saturated: bool,
    pub signal: Signal,
}

/// What a sample changed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outcome {
    pub limit: usize,
    pub log: Option<LimitLog>,
}

/// A change worth a log line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LimitLog {
    pub limit: usize,
    /// The value of the previous log line (or the starting limit).
    pub previous: usize,
    pub rtt: Option<Duration>,
    pub baseline: Option<Duration>,
    pub phase: Phase,
    pub reason: &'static str,
}

/// Counters and estimates, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct State {
    pub phase: Phase,
    pub baseline: Option<Duration>,
    pub rtt: Option<Duration>,
    pub increases: u64,
    pub decreases: u64,
}

/// Round trips of some successes.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    samples: u32,
    rtt_sum: f64,
    level_sum: f64,
    saturated: bool,
}

impl Stats {
    fn add(&mut self, rtt: f64, sample: &Sample) {
        self.samples += 1;
        self.rtt_sum += rtt;
        self.level_sum += sample.level as f64;
        self.saturated |= sample.saturated;
    }

    /// Mean round trip and mean level, once there are enough samples.
    fn means(&self) -> Option<(f64, f64)> {
        (self.samples >= MIN_SAMPLES).then(|| {
            let n = f64::from(self.samples);
            (self.rtt_sum / n, self.level_sum / n)
        })
    }
}

/// One control interval: the successes answered in it, all of them (an
/// unbiased sample of round trips, for the baseline) and those sent after
/// the last cut (which describe the current limit, for decisions), and how
/// many answers were back-pressure.
#[derive(Debug)]
struct Interval {
    start: Instant,
    all: Stats,
    fresh: Stats,
    answers: u32,
    pushed_back: u32,
}

impl Interval {
    fn new(start: Instant) -> Interval {
        Interval {
            start,
            all: Stats::default(),
            fresh: Stats::default(),
            answers: 0,
            pushed_back: 0,
        }
    }
}

/// Little's law: requests at concurrency `level` that take `rtt` each are
/// served at `level / rtt` per second, which at the unloaded round trip
/// `base` needs `level × base / rtt` in flight: the knee. (Ratio of means,
/// not mean of ratios: per request the ratio is biased whenever some of a
/// batch queue and others do not.)
fn knee(level: f64, rtt: f64, base: f64) -> f64 {
    level * (base / rtt).min(1.0)
}

/// The adaptive limit's state. Times are seconds as `f64`.
#[derive(Debug)]
pub(super) struct Controller {
    min: usize,
    max: usize,
    tolerance: f64,
    slow_start_exit: f64,
    slack: f64,
    decrease: f64,
    share_threshold: f64,
    min_interval: f64,

    limit: usize,
    phase: Phase,
    /// Slow-start growth earned but not yet applied.
    credit: f64,
    /// After back-pressure, slow start may bring the limit back up to here
    /// (half the limit before the first cut, like TCP's ssthresh).
    recover_to: Option<usize>,
    /// The lowest mean round trip of an interval, over the baseline window.
    baseline: WindowedMin,
    /// Smoothed mean round trip of intervals: the control interval.
    srtt: Option<f64>,
    /// Per-answer averages of the round trip and of the level (slow start).
    recent_rtt: Option<f64>,
    recent_level: f64,
    interval: Interval,
    /// Answers and back-pressure of the interval before.
    before: (u32, u32),
    last_cut: Option<Instant>,
    unsaturated_since: Option<Instant>,
    reason: &'static str,
    logged: usize,
    logged_at: Option<Instant>,
    increases: u64,
    decreases: u64,
}

impl Controller {
    /// A controller for validated adaptive settings.
    pub(super) fn new(settings: &LimitSettings, now: Instant) -> Controller {
        let limit = settings.starting_limit();
        Controller {
            min: settings.min,
            max: settings.max,
            tolerance: settings.tolerance,
            slow_start_exit: settings.slow_start_exit,
            slack: settings.rtt_slack.as_secs_f64(),
            decrease: settings.decrease,
            share_threshold: settings.backpressure_share,
            min_interval: settings.min_interval.as_secs_f64(),
            limit,
            phase: if limit < settings.max {
                Phase::SlowStart
            } else {
                Phase::Avoidance
            },
            credit: 0.0,
            recover_to: None,
            baseline: WindowedMin::new(settings.baseline_window),
            srtt: None,
            recent_rtt: None,
            recent_level: limit as f64,
            interval: Interval::new(now),
            before: (0, 0),
            last_cut: None,
            unsaturated_since: None,
            reason: "start",
            logged: limit,
            logged_at: None,
            increases: 0,
            decreases: 0,
        }
    }

    #[cfg(test)]
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn state(&self) -> State {
        State {
            phase: self.phase,
            baseline: self.baseline.get().map(Duration::from_secs_f64),
            rtt: self.srtt.map(Duration::from_secs_f64),
            increases: self.increases,
            decreases: self.decreases,
        }
    }

    /// Takes in one finished request; `Some` when the limit changed or a log
    /// line is due.
    pub(super) fn on_done(&mut self, now: Instant, sample: Sample) -> Option<Outcome> {
        let (limit, phase) = (self.limit, self.phase);
        match sample.signal {
            Signal::Success => self.on_success(now, &sample),
            Signal::BackPressure => self.on_back_pressure(now, &sample),
            Signal::Ignore => {}
        }
        let elapsed = now
            .saturating_duration_since(self.interval.start)
            .as_secs_f64();
        let length = self.interval_length();
        if elapsed >= length
            && (self.interval.all.samples >= MIN_SAMPLES
                || elapsed >= length * f64::from(MAX_STRETCH))
        {
            self.end_interval(now);
        }
        let log = self.log_line(now, phase);
        (self.limit != limit || log.is_some()).then_some(Outcome {
            limit: self.limit,
            log,
        })
    }

    fn on_success(&mut self, now: Instant, sample: &Sample) {
        let rtt = now
            .saturating_duration_since(sample.started)
            .as_secs_f64()
            .max(1e-6);
        let recent = self
            .recent_rtt
            .map_or(rtt, |recent| recent + (rtt - recent) * RECENT_GAIN);
        self.recent_rtt = Some(recent);
        self.recent_level += (sample.level as f64 - self.recent_level) * RECENT_GAIN;
        self.interval.answers += 1;
        self.interval.all.add(rtt, sample);
        if !self.sent_before_last_cut(sample) {
            self.interval.fresh.add(rtt, sample);
        }

        if self.phase != Phase::SlowStart {
            return;
        }
        match self.baseline.get() {
            Some(base) if recent > self.threshold(base, self.slow_start_exit) => {
                self.phase = Phase::Avoidance;
                self.recover_to = None;
                let knee = knee(self.recent_level, recent, base);
                self.cut_to(now, knee, "queueing ended slow start");
            }
            // Without a baseline yet there is nothing to compare with: grow.
            _ if sample.saturated => self.grow_slowly_starting(),
            _ => {}
        }
    }

    fn on_back_pressure(&mut self, now: Instant, sample: &Sample) {
        self.interval.answers += 1;
        self.interval.pushed_back += 1;
        // Sent before the last cut: that cut already answered it (one cut per
        // round trip, however many answers of the same burst come back).
        if self.sent_before_last_cut(sample) {
            return;
        }
        if !self.pushed_back() || !self.may_cut(now) {
            return;
        }
        // Slow start may bring the limit back to half of what it was before
        // this series of cuts; pushed back again while doing so, to half of
        // that.
        let half = self.limit / 2;
        self.recover_to = Some(match (self.recover_to, self.phase) {
            (Some(target), Phase::Avoidance) => target,
            (Some(target), Phase::SlowStart) => target.min(half),
            (None, _) => half,
        });
        self.phase = Phase::Avoidance;
        // What TapTalk refused: the load when the request went out or when
        // the refusal came back, whichever was higher (TCP's flight size).
        let basis = sample.level.max(sample.in_flight).min(self.limit) as f64;
        let target = ((basis * self.decrease).floor() as usize).max(self.min);
        self.set_cut(now, target, "TapTalk pushed back");
    }

    fn end_interval(&mut self, now: Instant) {
        let interval = std::mem::replace(&mut self.interval, Interval::new(now));
        self.before = (interval.answers, interval.pushed_back);
        self.track_demand(now, interval.all.saturated);
        if interval.all.samples > 0 {
            let mean = interval.all.rtt_sum / f64::from(interval.all.samples);
            self.srtt = Some(
                self.srtt
                    .map_or(mean, |srtt| srtt + (mean - srtt) * SRTT_GAIN),
            );
        }
        if let Some((mean, _)) = interval.all.means() {
            self.update_baseline(now, mean);
        }
        let (Some((mean, level)), Some(base)) = (interval.fresh.means(), self.baseline.get())
        else {
            return;
        };
        if mean > self.threshold(base, self.tolerance) {
            if self.may_cut(now) {
                self.phase = Phase::Avoidance;
                self.recover_to = None;
                let knee = knee(level, mean, base);
                self.cut_to(now, knee, "round trips well above the baseline");
            }
            return;
        }
        let calm = interval.fresh.saturated && !self.pushed_back();
        if !calm || self.phase != Phase::Avoidance || self.limit >= self.max {
            return;
        }
        if self.recover_to.is_some_and(|target| self.limit < target) {
            self.phase = Phase::SlowStart;
            self.credit = 0.0;
            self.reason = "recovering after back-pressure";
            return;
        }
        let limit = self.limit as f64;
        let step = limit.sqrt().max(limit / 8.0).ceil() as usize;
        self.set_limit(
            (self.limit + step).min(self.max),
            "round trips near the baseline",
        );
        self.increases += 1;
    }

    fn update_baseline(&mut self, now: Instant, mean: f64) {
        let old = self.baseline.get();
        self.baseline.push(now, mean);
        // The old baseline left the window and TapTalk is slower for good
        // (not queueing: that would have been seen as it built up). The knee
        // learnt against the old baseline means nothing now: slow start.
        let moved_up = match (old, self.baseline.get()) {
            (Some(old), Some(new)) => new > old * self.slow_start_exit,
            _ => false,
        };
        if moved_up && self.phase == Phase::Avoidance && self.limit < self.max {
            self.phase = Phase::SlowStart;
            self.credit = 0.0;
            self.recover_to = None;
            self.reason = "TapTalk's unloaded round trip changed";
        }
    }

    /// Slow start again after a long time below the limit.
    fn track_demand(&mut self, now: Instant, saturated: bool) {
        if saturated {
            self.unsaturated_since = None;
            return;
        }
        let since = *self.unsaturated_since.get_or_insert(now);
        if self.phase == Phase::Avoidance
            && self.limit < self.max
            && now.saturating_duration_since(since) >= RESTART_AFTER
        {
            self.phase = Phase::SlowStart;
            self.credit = 0.0;
            self.reason = "demand stayed below the limit";
        }
    }

    fn grow_slowly_starting(&mut self) {
        self.credit += SLOW_START_GAIN;
        let step = (self.limit as f64 * SLOW_START_STEP).max(1.0);
        if self.credit < step {
            return;
        }
        let add = self.credit.floor();
        self.credit -= add;
        let limit = (self.limit + add as usize).min(self.max);
        self.increases += 1;
        if limit == self.max {
            self.phase = Phase::Avoidance;
            self.recover_to = None;
            self.set_limit(limit, "slow start reached the maximum");
        } else if self.recover_to.is_some_and(|target| limit >= target) {
            self.phase = Phase::Avoidance;
            self.recover_to = None;
            self.set_limit(limit, "recovered half the limit before back-pressure");
        } else {
            self.set_limit(limit, "slow start");
        }
    }

    /// Back to the estimated knee: at most halving, never below the minimum.
    fn cut_to(&mut self, now: Instant, knee: f64, reason: &'static str) {
        let floor = (self.limit / 2).max(self.min);
        let ceiling = self.limit.saturating_sub(1).max(self.min);
        let target = (knee.max(0.0).floor() as usize).clamp(floor, ceiling);
        self.set_cut(now, target, reason);
    }

    fn set_cut(&mut self, now: Instant, target: usize, reason: &'static str) {
        self.last_cut = Some(now);
        self.credit = 0.0;
        // The interval's fresh round trips so far described the old limit.
        self.interval.fresh = Stats::default();
        if target < self.limit {
            self.decreases += 1;
            self.set_limit(target, reason);
        }
    }

    fn set_limit(&mut self, limit: usize, reason: &'static str) {
        self.limit = limit;
        self.reason = reason;
    }

    /// Back-pressure is more than its share of the answers of this interval
    /// and the one before (about the last round trip or two).
    fn pushed_back(&self) -> bool {
        let answers = self.before.0 + self.interval.answers;
        let pushed_back = self.before.1 + self.interval.pushed_back;
        pushed_back >= MIN_PUSHED_BACK
            && f64::from(pushed_back) > self.share_threshold * f64::from(answers)
    }

    fn sent_before_last_cut(&self, sample: &Sample) -> bool {
        self.last_cut.is_some_and(|cut| sample.started < cut)
    }

    /// At most one cut per control interval.
    fn may_cut(&self, now: Instant) -> bool {
        self.last_cut.is_none_or(|cut| {
            now.saturating_duration_since(cut).as_secs_f64() >= self.interval_length()
        })
    }

    fn interval_length(&self) -> f64 {
        self.srtt
            .unwrap_or(FIRST_INTERVAL.as_secs_f64())
            .max(self.min_interval)
    }

    /// Round trips above this mean queueing: `ratio` × the baseline, and at
    /// least the slack above it.
    fn threshold(&self, base: f64, ratio: f64) -> f64 {
        (base * ratio).max(base + self.slack)
    }

    fn log_line(&mut self, now: Instant, phase: Phase) -> Option<LimitLog> {
        if self.limit == self.logged {
            return None;
        }
        let moved = self.limit.abs_diff(self.logged) as f64 >= LOG_CHANGE * self.logged as f64;
        let quiet = self
            .logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        if !(self.phase != phase || (moved && quiet)) {
            return None;
        }
        let line = LimitLog {
            limit: self.limit,
            previous: self.logged,
            rtt: self.srtt.map(Duration::from_secs_f64),
            baseline: self.baseline.get().map(Duration::from_secs_f64),
            phase: self.phase,
            reason: self.reason,
        };
        self.logged = self.limit;
        self.logged_at = Some(now);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Later;

    struct Bench {
        control: Controller,
        t0: Instant,
    }

    impl Bench {
        fn new() -> Bench {
            let t0 = Instant::now();
            Bench {
                control: Controller::new(&LimitSettings::default(), t0),
                t0,
            }
        }

        /// A request sent at `sent` ms at `level`, answered at `at` ms.
        fn answer(&mut self, sent: u64, at: u64, level: usize, signal: Signal) {
            let sample = Sample {
                started: self.t0.later_by(Duration::from_millis(sent)),
                level,
                in_flight: level,
                saturated: level >= self.control.limit(),
                signal,
            };
            self.control
                .on_done(self.t0.later_by(Duration::from_millis(at)), sample);
        }

        /// `rounds` round trips of 100 ms, each with `per_round` saturated
        /// successes of `rtt` ms.
        fn rounds(&mut self, from_ms: u64, rounds: u64, per_round: u64, rtt: u64) -> u64 {
            let mut now = from_ms;
            for _ in 0..rounds {
                for i in 0..per_round {
                    let at = now + i * 100 / per_round;
                    let limit = self.control.limit();
                    self.answer(at.saturating_sub(rtt), at, limit, Signal::Success);
                }
                now += 100;
            }
            now
        }
    }

    #[test]
    fn slow_start_grows_by_half_per_round_trip() {
        let mut bench = Bench::new();
        bench.rounds(100, 1, 64, 100);
        let before = bench.control.limit();
        bench.rounds(200, 1, before as u64, 100);
        let after = bench.control.limit();
        assert!(
            after as f64 >= before as f64 * 1.4 && after as f64 <= before as f64 * 1.6,
            "{before} -> {after}"
        );
        assert_eq!(bench.control.state().phase, Phase::SlowStart);
    }

    #[test]
    fn queueing_ends_slow_start_at_the_knee() {
        let mut bench = Bench::new();
        let now = bench.rounds(100, 3, 64, 100);
        assert_eq!(bench.control.state().phase, Phase::SlowStart);
        // TapTalk serves 100 at once: with 200 in flight a round trip takes 200 ms.
        for i in 0..100 {
            bench.answer(now + i - 200, now + i, 200, Signal::Success);
        }
        let state = bench.control.state();
        assert_eq!(state.phase, Phase::Avoidance);
        let limit = bench.control.limit();
        assert!((100..=130).contains(&limit), "{limit}");
        assert_eq!(state.decreases, 1);
    }

    #[test]
    fn stray_back_pressure_does_not_cut() {
        let mut bench = Bench::new();
        let now = bench.rounds(100, 3, 64, 100);
        let limit = bench.control.limit();
        // One failure in fifty answers.
        for i in 0..500 {
            let signal = if i % 50 == 0 {
                Signal::BackPressure
            } else {
                Signal::Success
            };
            bench.answer(now + i - 100, now + i, limit / 2, signal);
        }
        assert_eq!(bench.control.state().decreases, 0);
    }

    #[test]
    fn answers_to_requests_sent_before_a_cut_do_not_cut_again() {
        let mut bench = Bench::new();
        let now = bench.rounds(100, 3, 64, 100);
        let limit = bench.control.limit();
        // A burst of 429s for requests all sent before the first one came back.
        for i in 0..300 {
            bench.answer(now - 100, now + 200 + i, limit, Signal::BackPressure);
        }
        let state = bench.control.state();
        assert_eq!(state.decreases, 1);
        assert_eq!(bench.control.limit(), limit * 3 / 4);
        // A request sent after the cut, answered 429 a round trip later: the
        // next cut.
        bench.answer(now + 300, now + 400, limit, Signal::BackPressure);
        assert_eq!(bench.control.state().decreases, 2);
    }
}
