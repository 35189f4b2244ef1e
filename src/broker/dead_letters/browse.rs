//! Reading the dead-letter queue without consuming it.
//!
//! [`Browser`] takes the messages that were in the queue when it opened, one
//! `basic.get` at a time, and acknowledges none of them: each stays the
//! queue's until [`Browser::remove`] acknowledges it (a replayed dead letter)
//! or [`Browser::give_back`] returns every other one with one `basic.nack`
//! (requeue). RabbitMQ keeps the order of what is given back this way (a
//! closed channel returns its messages in no particular order); messages
//! that arrived meanwhile come before them.
//!
//! Held messages are not delivered again while the browser holds them, and
//! it stops after as many as the queue held at the start, so nothing is read
//! twice and a queue that keeps filling does not keep it going. Should the
//! process die, RabbitMQ returns everything it held: nothing is lost.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Longest wait for the queue to count what was given back.
pub(super) const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// Longest wait for RabbitMQ's answer to one step (a `basic.get`, an ack).
pub(super) const STEP_WITHIN: Duration = Duration::from_secs(30);

/// Why reading the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// No answer in [`STEP_WITHIN`], or the channel closed while waiting
    /// (lapin closes the connection on a frame it refuses, such as one over
    /// `frame_max`, without failing what waits on it).
    #[error(
        "RabbitMQ did not answer {step} ({why}); the dead letters go back to the queue by themselves"
    )]
    NoAnswer {
        step: &'static str,
        why: &'static str,
    },
}

impl BrowseError {
    /// The broker's own error, when it gave one.
    pub fn broker(&self) -> Option<&lapin::Error> {
        match self {
            BrowseError::Broker(error) => Some(error),
            BrowseError::NoAnswer { .. } => None,
        }
    }
}

/// Reads one queue without consuming it; see the module documentation.
pub struct Browser {
    channel: Channel,
    queue: String,
    /// Messages the queue held at the start and not yet taken.
    left: u32,
    /// Delivery tags taken and neither removed nor given back.
    held: BTreeSet<u64>,
}

impl Browser {
    /// Opens a channel of its own on `connection` and notes how many messages
    /// `queue` holds. Fails when the queue does not exist.
    pub async fn open(connection: &Connection, queue: &str) -> Result<Browser, BrowseError> {
        let channel = tokio::time::timeout(STEP_WITHIN, connection.create_channel())
            .await
            .map_err(|_| BrowseError::NoAnswer {
                step: "channel.open",
                why: "timed out",
            })??;
        let mut browser = Browser {
            channel,
            queue: queue.to_owned(),
            left: 0,
            held: BTreeSet::new(),
        };
        browser.left = browser.ready().await?;
        Ok(browser)
    }

    /// How many messages are still to be read of those the queue held when
    /// the browser opened.
    pub fn left(&self) -> u32 {
        self.left
    }

    /// The next message, held until it is removed or given back; `None`
    /// when every message the queue held at the start has been read (or the
    /// queue ran empty sooner: something else took some).
    pub async fn next(&mut self) -> Result<Option<Delivery>, BrowseError> {
        if self.left == 0 {
            return Ok(None);
        }
        let get = self.channel.basic_get(
            self.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let got = self.within("basic.get", get).await?;
        let Some(got) = got else {
            self.left = 0;
            return Ok(None);
        };
        self.left -= 1;
        self.held.insert(got.delivery.delivery_tag);
        Ok(Some(got.delivery))
    }

    /// Removes a held message from the queue for good (acknowledges it).
    pub async fn remove(&mut self, delivery: &Delivery) -> Result<(), BrowseError> {
        let ack = self
            .channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false });
        self.within("basic.ack", ack).await?;
        self.held.remove(&delivery.delivery_tag);
        Ok(())
    }

    /// Returns every held message to the queue, in the order they were read,
    /// and closes the channel. A quorum queue takes them back a moment after
    /// the nack (which has no answer): this waits, up to [`SETTLE_WITHIN`],
    /// until the queue counts them again, so that whoever looks next (another
    /// `dlq list`, say) sees them.
    pub async fn give_back(mut self) -> Result<(), BrowseError> {
        if let Some(last) = self.held.last().copied() {
            let nack = self.channel.basic_nack(
                last,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            );
            self.within("basic.nack", nack).await?;
            let returned = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
            self.held.clear();
            let started = Instant::now();
            while self.ready().await? < returned && started.elapsed() < SETTLE_WITHIN {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Closing ends the channel's status as it should: only the deadline.
        let close = self.channel.close(200, "dead letters given back".into());
        match tokio::time::timeout(STEP_WITHIN, close).await {
            Ok(closed) => Ok(closed?),
            Err(_) => Err(BrowseError::NoAnswer {
                step: "channel.close",
                why: "timed out",
            }),
        }
    }

    /// Messages ready in the queue now.
    async fn ready(&self) -> Result<u32, BrowseError> {
        let declare = self.channel.queue_declare(
            self.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        let declared = self.within("queue.declare", declare).await?;
        Ok(declared.message_count())
    }

    /// Waits for one step's answer, at most [`STEP_WITHIN`], and no longer
    /// than the channel stays open.
    async fn within<T>(
        &self,
        step: &'static str,
        answer: impl std::future::Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, BrowseError> {
        let closed = async {
            while self.channel.status().connected() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            answer = tokio::time::timeout(STEP_WITHIN, answer) => match answer {
                Ok(answer) => Ok(answer?),
                Err(_) => Err(BrowseError::NoAnswer { step, why: "timed out" }),
            },
            () = closed => Err(BrowseError::NoAnswer {
                step,
                why: "the connection closed; lapin logs why, such as a frame larger than frame_max",
            }),
        }
    }
}
