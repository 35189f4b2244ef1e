//! The ledger of one phase: for each event, when it was published and when
//! its `ticket.ready` or `ticket.failed` arrived, as microseconds since the
//! phase's clock started. The publisher and the ticket-event consumer write
//! it concurrently (atomics, no locks); the report reads it at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NOT_YET: u64 = u64::MAX;

/// How an event was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Ready,
    Failed,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    origin: Instant,
    ids: HashMap<String, usize>,
    published: Vec<AtomicU64>,
    answered: Vec<AtomicU64>,
    /// 0: not yet, 1: ready, 2: failed.
    outcome: Vec<AtomicU8>,
    pub published_count: AtomicUsize,
    pub confirmed: AtomicUsize,
    /// Refused by the broker or unroutable.
    pub refused: AtomicUsize,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    /// Answers for an event already answered.
    pub duplicates: AtomicUsize,
    /// Ticket events for no event of this phase.
    pub strangers: AtomicUsize,
}

impl Ledger {
    pub(crate) fn new(ids: HashMap<String, usize>) -> Ledger {
        let n = ids.len();
        let column = |_| AtomicU64::new(NOT_YET);
        Ledger {
            origin: Instant::now(),
            ids,
            published: (0..n).map(column).collect(),
            answered: (0..n).map(column).collect(),
            outcome: (0..n).map(|_| AtomicU8::new(0)).collect(),
            published_count: AtomicUsize::new(0),
            confirmed: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            strangers: AtomicUsize::new(0),
        }
    }

    pub(crate) fn events(&self) -> usize {
        self.published.len()
    }

    /// Time since the phase's clock started.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub(crate) fn mark_published(&self, index: usize, at: Duration) {
        if let Some(slot) = self.published.get(index) {
            slot.store(micros(at), Ordering::Release);
            self.published_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the answer for the event of id `id`, arrived now.
    pub(crate) fn mark_answered(&self, id: &str, answer: Answer) {
        let at = micros(self.now());
        let Some(&index) = self.ids.get(id) else {
            self.strangers.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let code = match answer {
            Answer::Ready => 1,
            Answer::Failed => 2,
        };
        if self.outcome[index]
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.answered[index].store(at, Ordering::Release);
        match answer {
            Answer::Ready => self.ready.fetch_add(1, Ordering::Relaxed),
            Answer::Failed => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn answered_count(&self) -> usize {
        self.ready.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Every answered event: (published, answered, answer), in µs since the
    /// clock started.
    pub(crate) fn rows(&self) -> Vec<(u64, u64, Answer)> {
        (0..self.events())
            .filter_map(|i| {
                let published = self.published[i].load(Ordering::Acquire);
                let answered = self.answered[i].load(Ordering::Acquire);
                let answer = match self.outcome[i].load(Ordering::Acquire) {
                    1 => Answer::Ready,
                    2 => Answer::Failed,
                    _ => return None,
                };
                (published != NOT_YET && answered != NOT_YET)
                    .then_some((published, answered, answer))
            })
            .collect()
    }

    /// The time of the first publish, in µs since the clock started.
    pub(crate) fn first_published(&self) -> Option<u64> {
        self.published
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .filter(|p| *p != NOT_YET)
            .min()
    }

    /// Ids of the events not answered (at most `limit` of them), and how
    /// many there are in all.
    pub(crate) fn missing(&self, limit: usize) -> (Vec<&str>, usize) {
        let mut by_index: Vec<(&str, usize)> = self
            .ids
            .iter()
            .filter(|(_, i)| self.outcome[**i].load(Ordering::Acquire) == 0)
            .map(|(id, i)| (id.as_str(), *i))
            .collect();
        by_index.sort_by_key(|(_, i)| *i);
        let total = by_index.len();
        (
            by_index.into_iter().take(limit).map(|(id, _)| id).collect(),
            total,
        )
    }
}

fn micros(at: Duration) -> u64 {
    u64::try_from(at.as_micros()).unwrap_or(NOT_YET - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_once_and_strangers_apart() {
        let ids: HashMap<String, usize> = (0..3).map(|i| (format!("e{i}"), i)).collect();
        let ledger = Ledger::new(ids);
        for i in 0..3 {
            ledger.mark_published(i, Duration::from_millis(i as u64));
        }
        ledger.mark_answered("e0", Answer::Ready);
        ledger.mark_answered("e0", Answer::Ready);
        ledger.mark_answered("e2", Answer::Failed);
        ledger.mark_answered("nobody", Answer::Ready);
        assert_eq!(ledger.answered_count(), 2);
        assert_eq!(ledger.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(ledger.strangers.load(Ordering::Relaxed), 1);
        assert_eq!(ledger.missing(10), (vec!["e1"], 1));
        assert_eq!(ledger.rows().len(), 2);
        assert_eq!(ledger.first_published(), Some(0));
    }
}
