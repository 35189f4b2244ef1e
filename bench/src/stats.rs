//! Figures from a phase's ledger: login-to-ready percentiles (exact,
//! nearest rank, over every answered event), throughput, and the timeline
//! the SVG plots: per second since the first publish, the answers that
//! arrived in it and their p50 and p99 login-to-ready.

use super::ledger::Answer;
use serde::Serialize;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// From microsecond values (sorted here).
    pub(crate) fn of_micros(mut values: Vec<u64>) -> Percentiles {
        values.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let sum: u128 = values.iter().map(|v| u128::from(*v)).sum();
        Percentiles {
            count: values.len(),
            p50_ms: ms(nearest_rank(&values, 0.50)),
            p95_ms: ms(nearest_rank(&values, 0.95)),
            p99_ms: ms(nearest_rank(&values, 0.99)),
            max_ms: ms(values.last().copied().unwrap_or(0)),
            mean_ms: if values.is_empty() {
                0.0
            } else {
                sum as f64 / values.len() as f64 / 1000.0
            },
        }
    }
}

/// The nearest-rank percentile of sorted values: the smallest value with
/// at least `quantile` of all values at or below it; 0 for none.
pub(crate) fn nearest_rank(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One second of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Second {
    /// Seconds since the first publish (this bucket is [at, at + 1)).
    pub at: u64,
    /// `ticket.ready` events that arrived in it.
    pub ready: usize,
    /// Every answer that arrived in it (ready and failed).
    pub answered: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What the ledger's rows come to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Flow {
    /// From the first publish to the last answer, in seconds.
    pub seconds: f64,
    /// Answered events over `seconds`.
    pub per_second: f64,
    pub login_to_ready: Percentiles,
    pub timeline: Vec<Second>,
}

/// From (published, answered, answer) rows in µs, and the first publish.
pub(crate) fn flow(rows: &[(u64, u64, Answer)], first_published: u64) -> Flow {
    let last = rows.iter().map(|r| r.1).max().unwrap_or(first_published);
    let seconds = last.saturating_sub(first_published) as f64 / 1e6;
    let ready_latencies: Vec<u64> = rows
        .iter()
        .filter(|r| r.2 == Answer::Ready)
        .map(|r| r.1.saturating_sub(r.0))
        .collect();
    let buckets = (last.saturating_sub(first_published) / 1_000_000) as usize + 1;
    let mut per_bucket: Vec<(usize, Vec<u64>)> = vec![(0, Vec::new()); buckets];
    for &(published, answered, answer) in rows {
        let bucket = (answered.saturating_sub(first_published) / 1_000_000) as usize;
        if let Some((all, ready)) = per_bucket.get_mut(bucket) {
            *all += 1;
            if answer == Answer::Ready {
                ready.push(answered.saturating_sub(published));
            }
        }
    }
    let timeline = per_bucket
        .into_iter()
        .enumerate()
        .map(|(at, (answered, mut ready))| {
            ready.sort_unstable();
            Second {
                at: at as u64,
                ready: ready.len(),
                answered,
                p50_ms: nearest_rank(&ready, 0.50) as f64 / 1000.0,
                p99_ms: nearest_rank(&ready, 0.99) as f64 / 1000.0,
            }
        })
        .collect();
    Flow {
        seconds,
        per_second: if seconds > 0.0 {
            rows.len() as f64 / seconds
        } else {
            0.0
        },
        login_to_ready: Percentiles::of_micros(ready_latencies),
        timeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 0.50), 50);
        assert_eq!(nearest_rank(&values, 0.99), 99);
        assert_eq!(nearest_rank(&values, 1.0), 100);
        assert_eq!(nearest_rank(&values, 0.0), 1);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
        assert_eq!(nearest_rank(&[], 0.5), 0);
        let p = Percentiles::of_micros(vec![3_000, 1_000, 2_000, 4_000]);
        assert_eq!((p.count, p.p50_ms, p.p99_ms, p.max_ms), (4, 2.0, 4.0, 4.0));
        assert_eq!(p.mean_ms, 2.5);
    }

    #[test]
    fn flow_buckets_answers_by_the_second_of_their_arrival() {
        // Published at 1 s; answered 0.5 s, 1.5 s and 2.2 s later; one failed.
        let rows = [
            (1_000_000, 1_500_000, Answer::Ready),
            (1_000_000, 2_500_000, Answer::Ready),
            (1_000_000, 3_200_000, Answer::Ready),
            (1_000_000, 3_300_000, Answer::Failed),
        ];
        let flow = flow(&rows, 1_000_000);
        assert!((flow.seconds - 2.3).abs() < 1e-9);
        assert!((flow.per_second - 4.0 / 2.3).abs() < 1e-9);
        assert_eq!(
            flow.login_to_ready.count, 3,
            "failed events have no ready time"
        );
        let ready: Vec<usize> = flow.timeline.iter().map(|s| s.ready).collect();
        assert_eq!(ready, [1, 1, 1]);
        assert_eq!(flow.timeline[2].answered, 2);
        assert_eq!(flow.timeline[1].p99_ms, 1_500.0);
    }
}
