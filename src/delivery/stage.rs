//! Where a delivery's handling is ([`Stage`]), marked as it goes
//! ([`StageMark`]) so that a delivery in flight too long can say where it
//! was stuck.

use std::sync::atomic::{AtomicU8, Ordering};

/// Where a delivery's handling is: the `stage` of
/// `ticket_worker_deliveries_overdue_total`, and what the warning about an
/// overdue delivery names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Reading and checking the event.
    Checking = 0,
    /// Asking Postgres for an outcome already recorded.
    LookingUp = 1,
    /// Waiting to send the TapTalk request (a pause, the rate limit, a slot).
    AwaitingTaptalk = 2,
    /// A TapTalk request in flight, or its retries.
    RequestingTicket = 3,
    /// Saving the ticket or the failure in Postgres.
    Storing = 4,
    /// Publishing what was decided, and acknowledging.
    Settling = 5,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::Checking,
        Stage::LookingUp,
        Stage::AwaitingTaptalk,
        Stage::RequestingTicket,
        Stage::Storing,
        Stage::Settling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Checking => "checking",
            Stage::LookingUp => "postgres_lookup",
            Stage::AwaitingTaptalk => "taptalk_wait",
            Stage::RequestingTicket => "taptalk_request",
            Stage::Storing => "postgres_store",
            Stage::Settling => "rabbitmq_settle",
        }
    }

    /// In words, for a log line.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Checking => "checking the event",
            Stage::LookingUp => "looking up the event's outcome in Postgres",
            Stage::AwaitingTaptalk => {
                "waiting to send its TapTalk request (a Retry-After pause, the rate limit or a free slot)"
            }
            Stage::RequestingTicket => "requesting its ticket from TapTalk",
            Stage::Storing => "storing its outcome in Postgres",
            Stage::Settling => "publishing to RabbitMQ and acknowledging",
        }
    }
}

/// The stage one delivery is at, set as it goes; read when it is overdue.
#[derive(Debug, Default)]
pub struct StageMark(AtomicU8);

impl StageMark {
    pub fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Stage {
        let raw = self.0.load(Ordering::Relaxed);
        Stage::ALL
            .into_iter()
            .find(|s| *s as u8 == raw)
            .unwrap_or(Stage::Checking)
    }
}
