//! Acknowledging deliveries in bulk. Every delivery of the consuming channel
//! is registered here when it arrives and settled here once its work is done
//! (ack, nack back to the queue, or reject). A task sends the settlements:
//! the longest run of settled deliveries at the front goes as one
//! `basic.ack` with `multiple` set, a nack or reject in it as a frame of its
//! own; a delivery settled behind one still in flight waits a little
//! ([`HOLD`]) for the gap to close, then is acknowledged alone. So a busy
//! worker sends a few acknowledgements per batch instead of one per message,
//! and a slow event never holds up the acknowledgement of the others for long.
//!
//! Nothing else may settle a delivery of this channel (a second settlement of
//! one tag is a protocol error that closes the channel).

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a delivery settled behind an unsettled one waits before it is
/// acknowledged alone.
pub const HOLD: Duration = Duration::from_millis(25);

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done: the broker forgets it.
    Ack,
    /// Back to the queue, spending one of its deliveries.
    Requeue,
    /// Rejected without requeueing: the queue's dead-letter exchange gets it.
    Reject,
}

enum Op {
    Received(u64),
    Settled(u64, Settlement),
    Flush(oneshot::Sender<()>),
}

/// The settling side of one consuming channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Acks {
    ops: mpsc::UnboundedSender<Op>,
}

impl Acks {
    /// Starts settling for `channel`. The task cancels `broken` when the
    /// channel refuses a settlement (the session is then lost, and RabbitMQ
    /// redelivers what was not settled); it ends when every handle is gone.
    pub fn start(channel: Channel, broken: CancellationToken) -> Acks {
        let (ops, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, receiver, broken));
        Acks { ops }
    }

    /// A delivery arrived (call in the order deliveries arrive, before it is settled).
    pub fn received(&self, delivery_tag: u64) {
        let _ = self.ops.send(Op::Received(delivery_tag));
    }

    /// A delivery's work is done; it will be settled as `how`.
    pub fn settle(&self, delivery_tag: u64, how: Settlement) {
        let _ = self.ops.send(Op::Settled(delivery_tag, how));
    }

    /// Sends every settlement made so far, without holding any back, and
    /// waits until they are written (before a pause or a close).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.ops.send(Op::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// A registered delivery.
#[derive(Debug, Clone, Copy)]
enum Slot {
    InFlight,
    Settled(Settlement, Instant),
    /// Already acknowledged alone.
    Sent,
}

struct Ledger {
    channel: Channel,
    /// Registered deliveries not yet covered by a settlement, oldest first.
    slots: VecDeque<(u64, Slot)>,
    /// How many of them are `Settled` (not sent yet): when none is, nothing
    /// is held and the ledger need not be scanned.
    settled: usize,
}

async fn run(channel: Channel, mut ops: mpsc::UnboundedReceiver<Op>, broken: CancellationToken) {
    let mut ledger = Ledger {
        channel,
        slots: VecDeque::new(),
        settled: 0,
    };
    loop {
        let next_hold = ledger.oldest_held().map(|at| at + HOLD);
        let op = tokio::select! {
            op = ops.recv() => op,
            _ = sleep_until(next_hold) => {
                if ledger.send(Instant::now(), false).await.is_err() {
                    broken.cancel();
                    return;
                }
                continue;
            }
        };
        let Some(op) = op else {
            let _ = ledger.send(Instant::now(), true).await;
            return;
        };
        let mut flushes = Vec::new();
        ledger.apply(op, &mut flushes);
        // Fold everything else already queued into this round.
        while let Ok(op) = ops.try_recv() {
            ledger.apply(op, &mut flushes);
        }
        let sent = ledger.send(Instant::now(), !flushes.is_empty()).await;
        for done in flushes {
            let _ = done.send(());
        }
        if sent.is_err() {
            broken.cancel();
            return;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Ledger {
    fn apply(&mut self, op: Op, flushes: &mut Vec<oneshot::Sender<()>>) {
        match op {
            Op::Received(tag) => self.slots.push_back((tag, Slot::InFlight)),
            Op::Settled(tag, how) => {
                if let Ok(i) = self.slots.binary_search_by_key(&tag, |(t, _)| *t)
                    && matches!(self.slots[i].1, Slot::InFlight)
                {
                    self.slots[i].1 = Slot::Settled(how, Instant::now());
                    self.settled += 1;
                } else {
                    tracing::error!(
                        delivery_tag = tag,
                        "a delivery was settled that was not registered or was settled before (a bug); the settlement is ignored"
                    );
                }
            }
            Op::Flush(done) => flushes.push(done),
        }
    }

    /// When the oldest settlement held behind an in-flight delivery was made.
    fn oldest_held(&self) -> Option<Instant> {
        if self.settled == 0 {
            return None;
        }
        self.slots
            .iter()
            .filter_map(|(_, slot)| match slot {
                Slot::Settled(_, at) => Some(*at),
                _ => None,
            })
            .min()
    }

    /// Sends the settled run at the front, and the settlements behind it
    /// that waited [`HOLD`] (or all of them, when `everything`).
    async fn send(&mut self, now: Instant, everything: bool) -> Result<(), lapin::Error> {
        let mut run_end = None;
        while let Some(&(tag, slot)) = self.slots.front() {
            match slot {
                Slot::InFlight => break,
                Slot::Sent => {}
                Slot::Settled(Settlement::Ack, _) => {
                    run_end = Some(tag);
                    self.settled -= 1;
                }
                Slot::Settled(how, _) => {
                    if let Some(end) = run_end.take() {
                        self.ack(end, true).await?;
                    }
                    self.single(tag, how).await?;
                    self.settled -= 1;
                }
            }
            self.slots.pop_front();
        }
        if let Some(end) = run_end {
            self.ack(end, true).await?;
        }
        if self.settled == 0 {
            return Ok(());
        }
        for i in 0..self.slots.len() {
            let (tag, slot) = self.slots[i];
            if let Slot::Settled(how, at) = slot
                && (everything || now.duration_since(at) >= HOLD)
            {
                self.single(tag, how).await?;
                self.slots[i].1 = Slot::Sent;
                self.settled -= 1;
            }
        }
        Ok(())
    }

    async fn ack(&self, tag: u64, multiple: bool) -> Result<(), lapin::Error> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
    }

    async fn single(&self, tag: u64, how: Settlement) -> Result<(), lapin::Error> {
        match how {
            Settlement::Ack => self.ack(tag, false).await,
            Settlement::Requeue => {
                self.channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        },
                    )
                    .await
            }
            Settlement::Reject => {
                self.channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await
            }
        }
    }
}
