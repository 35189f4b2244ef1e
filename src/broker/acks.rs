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
//! At moderate load the run at the front is one delivery long whenever it is
//! looked at: each event would be acknowledged alone, each acknowledgement
//! a turn of the connection's I/O loop and a write. So a run waits until
//! its oldest settlement is [`FOLD`] old, or until it holds a quarter of the
//! prefetch ([`Acks::window`]; the broker sends no more than the prefetch
//! unacknowledged, so a full run must not wait), whichever comes first.
//!
//! Nothing else may settle a delivery of this channel (a second settlement of
//! one tag is a protocol error that closes the channel).

use crate::broker::connection::within;
use crate::time::Later;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a delivery settled behind an unsettled one waits before it is
/// acknowledged alone.
pub const HOLD: Duration = Duration::from_millis(100);

/// How long a settled run at the front waits for more before it goes (unless
/// it is a quarter of the prefetch already). At 500 events a second it folds
/// about ten acknowledgements into one; a delivery stays unacknowledged this
/// much longer, which delays nothing but the broker forgetting it (a crash
/// meanwhile redelivers it, and idempotency makes that harmless).
pub const FOLD: Duration = Duration::from_millis(20);

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
    Window(u16),
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
        Acks::folding(channel, broken, FOLD)
    }

    /// The same, with runs waiting up to `fold` instead of [`FOLD`].
    pub fn folding(channel: Channel, broken: CancellationToken, fold: Duration) -> Acks {
        let (ops, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, receiver, broken, fold));
        Acks { ops }
    }

    /// The consumer's prefetch is now `prefetch`: a settled run a quarter
    /// that long goes at once. Until this is called, every run goes at once.
    pub fn window(&self, prefetch: u16) {
        let _ = self.ops.send(Op::Window(prefetch));
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
            // The acknowledger's own steps have deadlines; this one covers
            // a run of them.
            let _ = tokio::time::timeout(
                crate::broker::connection::BROKER_STEP.saturating_mul(2),
                flushed,
            )
            .await;
        }
    }
}

/// A registered delivery.
#[derive(Debug, Clone, Copy)]
enum Slot {
    InFlight,
    /// Settled at that instant, not sent yet.
    Settled(Settlement, Instant),
    /// Already acknowledged alone.
    Sent,
}

struct Ledger {
    channel: Channel,
    /// How long a settled run at the front may wait for more.
    fold: Duration,
    /// A settled run this long at the front goes at once.
    full_run: usize,
    /// Registered deliveries not yet covered by a settlement, oldest first.
    slots: VecDeque<(u64, Slot)>,
    /// Settlements in the order they were made (so, oldest first), to find
    /// those held too long without scanning the slots. An entry whose slot
    /// went out with a run meanwhile is skipped when reached.
    held: VecDeque<(u64, Instant)>,
}

async fn run(
    channel: Channel,
    mut ops: mpsc::UnboundedReceiver<Op>,
    broken: CancellationToken,
    fold: Duration,
) {
    let mut ledger = Ledger {
        channel,
        fold,
        full_run: 1,
        slots: VecDeque::new(),
        held: VecDeque::new(),
    };
    // One timer, moved to the next deadline (the front run's, or the oldest
    // held settlement's) when that changes (not a new timer per round).
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = ledger.next_deadline();
        if deadline != armed {
            if let Some(at) = deadline {
                timer.as_mut().reset(at);
            }
            armed = deadline;
        }
        let op = tokio::select! {
            op = ops.recv() => op,
            _ = &mut timer, if armed.is_some() => {
                armed = None;
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

impl Ledger {
    fn apply(&mut self, op: Op, flushes: &mut Vec<oneshot::Sender<()>>) {
        match op {
            Op::Received(tag) => self.slots.push_back((tag, Slot::InFlight)),
            Op::Settled(tag, how) => {
                if let Some(i) = self.index(tag)
                    && matches!(self.slots[i].1, Slot::InFlight)
                {
                    let now = Instant::now();
                    self.slots[i].1 = Slot::Settled(how, now);
                    self.held.push_back((tag, now));
                } else {
                    tracing::error!(
                        delivery_tag = tag,
                        "a delivery was settled that was not registered or was settled before (a bug); the settlement is ignored"
                    );
                }
            }
            Op::Flush(done) => flushes.push(done),
            Op::Window(prefetch) => self.full_run = usize::from(prefetch / 4).max(1),
        }
    }

    /// Where a delivery's slot is, if it is still in the ledger.
    fn index(&self, tag: u64) -> Option<usize> {
        self.slots.binary_search_by_key(&tag, |(t, _)| *t).ok()
    }

    /// Where the first delivery still in flight is (all of them settled:
    /// past the end). What is settled before it is the run at the front.
    fn first_in_flight(&self) -> usize {
        self.slots
            .iter()
            .position(|(_, slot)| matches!(slot, Slot::InFlight))
            .unwrap_or(self.slots.len())
    }

    /// Whether a delivery is settled, not sent yet, and behind one still in
    /// flight (at `gap`): a settlement [`HOLD`] is for. One in the run at the
    /// front goes with the run instead, and never falls behind a gap again.
    fn held_behind(&self, tag: u64, gap: usize) -> Option<(usize, Settlement)> {
        let i = self.index(tag)?;
        match self.slots[i].1 {
            Slot::Settled(how, _) if i > gap => Some((i, how)),
            _ => None,
        }
    }

    /// When the oldest settlement still held behind an in-flight delivery
    /// was made (forgetting those that went out meanwhile, and those the
    /// run at the front carries).
    fn oldest_held(&mut self) -> Option<Instant> {
        let gap = self.first_in_flight();
        while let Some(&(tag, at)) = self.held.front() {
            if self.held_behind(tag, gap).is_some() {
                return Some(at);
            }
            self.held.pop_front();
        }
        None
    }

    /// How many settlements the run at the front holds, and when the oldest
    /// of them was made.
    fn front_run(&self) -> (usize, Option<Instant>) {
        let mut count = 0usize;
        let mut oldest: Option<Instant> = None;
        for &(_, slot) in &self.slots {
            match slot {
                Slot::InFlight => break,
                Slot::Sent => {}
                Slot::Settled(_, at) => {
                    count = count.saturating_add(1);
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        (count, oldest)
    }

    /// Whether the run at the front should go now: it is full, or its oldest
    /// settlement waited [`FOLD`].
    fn run_is_due(&self, now: Instant) -> bool {
        match self.front_run() {
            (0, _) | (_, None) => false,
            (count, Some(oldest)) => {
                count >= self.full_run || now.saturating_duration_since(oldest) >= self.fold
            }
        }
    }

    /// When something is due next: the front run, or the oldest settlement
    /// held behind a delivery still in flight.
    fn next_deadline(&mut self) -> Option<Instant> {
        let run = self.front_run().1.map(|at| at.later_by(self.fold));
        let held = self.oldest_held().map(|at| at.later_by(HOLD));
        match (run, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends the settled run at the front when it is due (see
    /// [`Ledger::run_is_due`]), and the settlements behind it that waited
    /// [`HOLD`]; or all of them, when `everything`.
    async fn send(&mut self, now: Instant, everything: bool) -> Result<(), lapin::Error> {
        if everything || self.run_is_due(now) {
            self.send_run().await?;
        }
        // What waited long enough behind a delivery still in flight goes
        // alone (what the run at the front carries waits for the run).
        let gap = self.first_in_flight();
        while let Some(&(tag, at)) = self.held.front() {
            if !everything && now.duration_since(at) < HOLD {
                break;
            }
            self.held.pop_front();
            if let Some((i, how)) = self.held_behind(tag, gap) {
                self.single(tag, how).await?;
                self.slots[i].1 = Slot::Sent;
            }
        }
        Ok(())
    }

    /// Sends the run of settled deliveries at the front.
    async fn send_run(&mut self) -> Result<(), lapin::Error> {
        let mut run_end = None;
        while let Some(&(tag, slot)) = self.slots.front() {
            match slot {
                Slot::InFlight => break,
                Slot::Sent => {}
                Slot::Settled(Settlement::Ack, _) => run_end = Some(tag),
                Slot::Settled(how, _) => {
                    if let Some(end) = run_end.take() {
                        self.ack(end, true).await?;
                    }
                    self.single(tag, how).await?;
                }
            }
            self.slots.pop_front();
        }
        if let Some(end) = run_end {
            self.ack(end, true).await?;
        }
        Ok(())
    }

    async fn ack(&self, tag: u64, multiple: bool) -> Result<(), lapin::Error> {
        let ack = self.channel.basic_ack(tag, BasicAckOptions { multiple });
        within("basic.ack", ack).await
    }

    async fn single(&self, tag: u64, how: Settlement) -> Result<(), lapin::Error> {
        match how {
            Settlement::Ack => self.ack(tag, false).await,
            Settlement::Requeue => {
                // basic.reject, not basic.nack: a requeue here spends one of
                // the message's deliveries on purpose (it is for messages the
                // worker cannot handle), and from RabbitMQ 4.3 on quorum
                // queues count basic.reject(requeue) towards the delivery
                // limit but no longer basic.nack(requeue).
                let reject = self
                    .channel
                    .basic_reject(tag, BasicRejectOptions { requeue: true });
                within("basic.reject", reject).await
            }
            Settlement::Reject => {
                let reject = self
                    .channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false });
                within("basic.reject", reject).await
            }
        }
    }
}
