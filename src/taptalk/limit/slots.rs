//! The slots: a FIFO semaphore whose size can change while slots are held.
//!
//! tokio's [`Semaphore`] gives the waiting (fair, first come first served,
//! cancel-safe, no allocation per acquire) but can only forget permits that
//! are free. A shrink that finds fewer free permits than it removes records
//! the rest as *debt*, paid by the next releases: a released slot then goes
//! away instead of back to the semaphore. Growing pays the debt first.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

#[derive(Debug)]
pub(super) struct Slots {
    semaphore: Semaphore,
    /// Slots still to remove, as holders release them.
    debt: AtomicUsize,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
}

impl Slots {
    pub(super) fn new(limit: usize) -> Slots {
        Slots {
            semaphore: Semaphore::new(limit),
            debt: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Waits for a slot, in arrival order. Returns how many are in flight,
    /// this one included, and whether it had to wait (no slot was free: demand
    /// had reached the limit). Dropping the future while it waits gives up
    /// its place and takes nothing.
    pub(super) async fn acquire(&self) -> (usize, bool) {
        // A free slot is taken with one compare-and-swap; while others wait,
        // none is free, so nobody overtakes them.
        let waited = match self.semaphore.try_acquire() {
            Ok(permit) => {
                permit.forget();
                false
            }
            Err(_) => {
                // The semaphore is private and never closed: this cannot fail.
                if let Ok(permit) = self.semaphore.acquire().await {
                    permit.forget();
                }
                true
            }
        };
        // Slots are returned by `release`, not by the permits' drop.
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        (in_flight, waited)
    }

    /// Gives a slot back (or pays one slot of debt with it).
    pub(super) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut debt = self.debt.load(Ordering::Acquire);
        loop {
            if debt == 0 {
                self.semaphore.add_permits(1);
                return;
            }
            match self.debt.compare_exchange_weak(
                debt,
                debt - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => debt = now,
            }
        }
    }

    /// Sets the number of slots. Callers serialise resizes (the controller's
    /// lock); releases may run concurrently.
    pub(super) fn resize(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::Relaxed);
        if limit > old {
            let mut grow = limit - old;
            let mut debt = self.debt.load(Ordering::Acquire);
            while debt > 0 && grow > 0 {
                let pay = debt.min(grow);
                match self.debt.compare_exchange_weak(
                    debt,
                    debt - pay,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        grow -= pay;
                        break;
                    }
                    Err(now) => debt = now,
                }
            }
            if grow > 0 {
                self.semaphore.add_permits(grow);
            }
        } else if limit < old {
            let shrink = old - limit;
            let forgotten = self.semaphore.forget_permits(shrink);
            if forgotten < shrink {
                self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    async fn can_acquire(slots: &Slots) -> bool {
        timeout(Duration::from_millis(10), slots.acquire())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_below_what_is_held_waits_for_releases() {
        let slots = Slots::new(4);
        for expected in 1..=4 {
            assert_eq!(slots.acquire().await, (expected, false));
        }
        slots.resize(2);
        assert_eq!(slots.limit(), 2);
        // Two releases pay the debt; the slots are still all taken.
        slots.release();
        slots.release();
        assert_eq!(slots.in_flight(), 2);
        assert!(!can_acquire(&slots).await);
        slots.release();
        assert!(can_acquire(&slots).await);
        assert!(!can_acquire(&slots).await);
    }

    #[tokio::test(start_paused = true)]
    async fn growing_pays_the_debt_first() {
        let slots = Slots::new(4);
        for _ in 0..4 {
            slots.acquire().await;
        }
        slots.resize(1); // 3 in debt
        slots.resize(3); // 1 in debt
        slots.release(); // pays it
        assert!(!can_acquire(&slots).await);
        slots.release();
        assert!(can_acquire(&slots).await);
        assert_eq!(slots.in_flight(), 3);
        assert!(!can_acquire(&slots).await);
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_go_at_once() {
        let slots = Slots::new(8);
        slots.acquire().await;
        slots.resize(2);
        assert!(can_acquire(&slots).await);
        assert!(!can_acquire(&slots).await);
        slots.resize(5);
        for _ in 0..3 {
            assert!(can_acquire(&slots).await);
        }
        assert!(!can_acquire(&slots).await);
        assert_eq!(slots.in_flight(), 5);
    }
}
