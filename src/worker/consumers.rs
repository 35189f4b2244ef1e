//! The consumers of one session's channel, read as one stream.
//!
//! RabbitMQ applies a prefetch only to consumers started after it is set, so
//! changing the prefetch (to follow the TapTalk concurrency limit, or to
//! leave the quarantine) means starting a new consumer and cancelling the
//! old one. The old one's deliveries already on their way still arrive, and
//! are still handled: [`Consumers::next`] reads every consumer until each is
//! done. The new consumer starts before the old one stops, so intake never
//! waits.

use super::BROKER_STEP_TIMEOUT;
use crate::broker::connection::within;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tokio::time::Instant;

/// Starting or cancelling a consumer failed: the session is lost (its
/// channel cannot be trusted), and what it held is redelivered.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConsumerError {
    /// RabbitMQ refused `basic.qos`, `basic.consume` or `basic.cancel`, or
    /// did not answer it in time (lapin's words name the step).
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ did not confirm the consumer's cancellation")]
    CancelUnconfirmed,
}

pub(super) struct Consumers {
    streams: SelectAll<Consumer>,
    /// The consumer new deliveries go to; the others are cancelled.
    active: Option<ShortString>,
    prefetch: u16,
    /// When the active consumer started.
    started: Instant,
}

impl Consumers {
    pub(super) fn new() -> Consumers {
        Consumers {
            streams: SelectAll::new(),
            active: None,
            prefetch: 0,
            started: Instant::now(),
        }
    }

    /// The prefetch of the active consumer (0 when there is none).
    pub(super) fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// When the active consumer started.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// Starts a consumer of `queue` with `prefetch`, then cancels the one
    /// before it (whose deliveries in transit still come out of `next`).
    pub(super) async fn start(
        &mut self,
        channel: &Channel,
        queue: &str,
        prefetch: u16,
    ) -> Result<(), ConsumerError> {
        let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
        within("basic.qos", qos).await?;
        let consume = channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = within("basic.consume", consume).await?;
        let tag = consumer.tag();
        self.streams.push(consumer);
        let previous = self.active.replace(tag);
        self.prefetch = prefetch;
        self.started = Instant::now();
        if let Some(previous) = previous {
            cancel(channel, previous).await?;
        }
        Ok(())
    }

    /// Cancels the active consumer: `next` yields what is in transit, then
    /// `None`.
    pub(super) async fn stop(&mut self, channel: &Channel) -> Result<(), ConsumerError> {
        self.prefetch = 0;
        match self.active.take() {
            Some(tag) => cancel(channel, tag).await,
            None => Ok(()),
        }
    }

    /// The next delivery of any consumer; `None` once every consumer is done
    /// (cancelled and drained, or cancelled by RabbitMQ).
    pub(super) async fn next(&mut self) -> Option<Result<Delivery, lapin::Error>> {
        self.streams.next().await
    }
}

async fn cancel(channel: &Channel, tag: ShortString) -> Result<(), ConsumerError> {
    let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
    match tokio::time::timeout(BROKER_STEP_TIMEOUT, cancel).await {
        Ok(cancelled) => Ok(cancelled?),
        Err(_) => Err(ConsumerError::CancelUnconfirmed),
    }
}
