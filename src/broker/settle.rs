//! Settling a delivery with the broker once the pipeline has decided what
//! becomes of it: publish what the decision announces (ticket events, a dead
//! letter, a copy put back for later), each with a publisher confirm, and only
//! then acknowledge the delivery. A crash anywhere in between repeats work,
//! never loses it.

use super::acks::{Acks, Settlement};
use super::{PublishError, Publisher};
use crate::delivery::{Decision, Outcome};
use crate::events::TicketReady;
use crate::observe::metrics::Metrics;
use crate::storage::Announced;
use chrono::Utc;
use lapin::message::Delivery;

/// Carries decisions out on one session's channels. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Settler {
    publisher: Publisher,
    /// Events whose ticket event RabbitMQ confirmed: their outbox rows can go.
    announced: Announced,
    /// Acknowledges the consuming channel's deliveries, in bulk.
    acks: Acks,
    metrics: Metrics,
}

impl Settler {
    pub fn new(
        publisher: Publisher,
        announced: Announced,
        acks: Acks,
        metrics: Metrics,
    ) -> Settler {
        Settler {
            publisher,
            announced,
            acks,
            metrics,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn acks(&self) -> &Acks {
        &self.acks
    }

    /// Carries `decision` out and settles `delivery` (ack, nack or reject).
    pub async fn settle(&self, delivery: &Delivery, decision: Decision) -> Outcome {
        let bus = &self.publisher;
        // Whose trace the ticket events carry on (see `observe::traces`).
        let login = delivery.properties.headers().as_ref();
        let published = match decision {
            Decision::Ready {
                record,
                outcome,
                encoded,
                occurred_at,
            } => {
                let event_id = record.event_id.as_str();
                let published = match encoded {
                    Some(body) => bus.ticket_ready_encoded(event_id, &body, login).await,
                    None => {
                        bus.ticket_ready(&TicketReady::for_record(&record), login)
                            .await
                    }
                };
                published.map(|()| {
                    self.announced.push(event_id);
                    if let Some(ago) = occurred_at
                        .and_then(|at| Utc::now().signed_duration_since(at).to_std().ok())
                    {
                        self.metrics.login_to_ready(ago);
                    }
                    outcome
                })
            }
            Decision::Fail {
                failed,
                dead_letter,
                outcome,
                recorded,
            } => {
                Box::pin(async {
                    if let Some(failed) = failed {
                        bus.ticket_failed(&failed, login).await?;
                        if recorded {
                            self.announced.push(&failed.event_id);
                        }
                    }
                    if let Some(note) = dead_letter {
                        match bus.dead_letter(delivery, &note).await {
                            Err(PublishError::DoesNotFit(error)) => {
                                // Not even a trimmed copy fits: drop it, loudly.
                                tracing::error!(%error, reason = note.reason, "the message cannot be dead-lettered and is dropped");
                            }
                            other => other?,
                        }
                    }
                    Ok(outcome)
                })
                .await
            }
            Decision::RetryLater { count } => Box::pin(bus.retry_later(delivery, count))
                .await
                .map(|()| Outcome::RetryLater),
            Decision::Defuse => match Box::pin(bus.retry_later(delivery, false)).await {
                Err(error) if !error.is_broker_failure() => {
                    tracing::error!(%error, "RabbitMQ refused the trimmed copy; the message is rejected, and dead-lettered by RabbitMQ");
                    return self.reject(delivery);
                }
                other => other.map(|()| Outcome::RetryLater),
            },
            Decision::Requeue => return self.requeue(delivery),
        };
        match published {
            Ok(outcome) => {
                self.acks.settle(delivery.delivery_tag, Settlement::Ack);
                outcome
            }
            Err(error) if error.is_broker_failure() => abandoned(&error.to_string()),
            Err(error) => {
                // The broker is fine but refused this message: try it again later.
                tracing::warn!(%error, "publishing for this delivery failed; it goes back to the queue");
                self.requeue(delivery)
            }
        }
    }

    /// Returns a delivery to the queue, spending one of its deliveries.
    pub fn requeue(&self, delivery: &Delivery) -> Outcome {
        self.acks.settle(delivery.delivery_tag, Settlement::Requeue);
        Outcome::Requeued
    }

    /// Rejects a delivery without requeueing it: the work queue's dead-letter
    /// exchange receives it, with RabbitMQ's `x-death` header.
    fn reject(&self, delivery: &Delivery) -> Outcome {
        self.acks.settle(delivery.delivery_tag, Settlement::Reject);
        Outcome::Rejected
    }
}

fn abandoned(why: &str) -> Outcome {
    tracing::warn!(
        why,
        "could not settle the delivery; RabbitMQ will redeliver it"
    );
    Outcome::Abandoned
}
