//! Readiness, for `/readyz`: the worker takes work now. That is: it has a
//! RabbitMQ session and consumes (intake running: connected, not paused
//! because TapTalk or Postgres is down or refuses the configuration), and
//! Postgres answers. The intake state changes as the worker pauses and
//! resumes, so readiness follows within a second; Postgres is asked at most
//! once per [`ASK_EVERY`], so a busy scraper does not load it.

use super::{Failure, Probe};
use crate::observe::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long an answer from Postgres stands.
const ASK_EVERY: Duration = Duration::from_secs(2);

/// How long Postgres may take to answer.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// An answer from Postgres and when it was given.
type Answer = (Instant, Result<(), NotReady>);

/// Why the worker is not ready, as `/readyz` says it after `not ready: `.
/// The endpoint is unauthenticated: the driver's words in a reason have gone
/// through the same scrubbing as the logs (a password it echoes back, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Intake is not running: no RabbitMQ session, or paused because a
    /// dependency is down; `state` is the `ticket_worker_intake_state` label.
    #[error(
        "{}; the log says more (ticket_worker_intake_state{{state=\"{state}\"}})",
        not_consuming(state)
    )]
    NotConsuming { state: &'static str },
    #[error("Postgres is unavailable: {reason}")]
    PostgresUnavailable { reason: String },
    #[error("Postgres refuses the configuration: {reason}")]
    PostgresMisconfigured { reason: String },
    #[error(
        "Postgres did not answer within {}",
        humantime::format_duration(ASK_WITHIN)
    )]
    PostgresSilent,
}

/// Why intake in `state` takes no work, and what to check.
fn not_consuming(state: &str) -> &'static str {
    match state {
        "paused_taptalk_outage" => "intake paused: TapTalk fails every request",
        "paused_taptalk_misconfigured" => {
            "intake paused: TapTalk refuses the configuration (TAPTALK_SERVER_KEY_ID, TAPTALK_SERVER_KEY_SECRET, TAPTALK_BASE_URL)"
        }
        "paused_postgres_outage" => "intake paused: Postgres is unavailable",
        "paused_postgres_misconfigured" => {
            "intake paused: Postgres refuses the configuration (DATABASE_URL)"
        }
        _ => "not consuming: no RabbitMQ session (connecting, or AMQP_URL refused)",
    }
}

/// Decides readiness. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    metrics: Metrics,
    postgres: Arc<dyn Probe>,
    last: Arc<Mutex<Option<Answer>>>,
}

impl Readiness {
    pub fn new(metrics: Metrics, postgres: Arc<dyn Probe>) -> Readiness {
        Readiness {
            metrics,
            postgres,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// `Ok` with the RabbitMQ node it consumes from, when the worker takes
    /// work; otherwise why not.
    pub async fn check(&self) -> Result<String, NotReady> {
        if !self.metrics.is_running() {
            return Err(NotReady::NotConsuming {
                state: self.metrics.intake_state(),
            });
        }
        self.postgres_answers().await?;
        Ok(match self.metrics.rabbitmq_node_now() {
            Some(node) => format!("consuming from RabbitMQ node {node}"),
            None => "consuming".to_owned(),
        })
    }

    async fn postgres_answers(&self) -> Result<(), NotReady> {
        {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, answer)) = last.as_ref()
                && at.elapsed() < ASK_EVERY
            {
                return answer.clone();
            }
        }
        // The endpoint is unauthenticated: the driver's words go through the
        // same scrubbing as the logs (a password it echoes back, say).
        let scrub = crate::observe::logs::scrub;
        let answer = match tokio::time::timeout(ASK_WITHIN, self.postgres.probe()).await {
            Ok(None) => Ok(()),
            Ok(Some(Failure::Transient(reason))) => Err(NotReady::PostgresUnavailable {
                reason: scrub(&reason),
            }),
            Ok(Some(Failure::Misconfigured(reason))) => Err(NotReady::PostgresMisconfigured {
                reason: scrub(&reason),
            }),
            Err(_) => Err(NotReady::PostgresSilent),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_says_what_to_look_at() {
        let paused = NotReady::NotConsuming {
            state: "paused_postgres_misconfigured",
        };
        assert_eq!(
            paused.to_string(),
            "intake paused: Postgres refuses the configuration (DATABASE_URL); the log says more (ticket_worker_intake_state{state=\"paused_postgres_misconfigured\"})"
        );
        let unconnected = NotReady::NotConsuming {
            state: "disconnected",
        };
        assert!(
            unconnected.to_string().starts_with(
                "not consuming: no RabbitMQ session (connecting, or AMQP_URL refused); "
            ),
            "{unconnected}"
        );
        let down = NotReady::PostgresUnavailable {
            reason: "connection refused".into(),
        };
        assert_eq!(
            down.to_string(),
            "Postgres is unavailable: connection refused"
        );
        let refused = NotReady::PostgresMisconfigured {
            reason: "password authentication failed".into(),
        };
        assert_eq!(
            refused.to_string(),
            "Postgres refuses the configuration: password authentication failed"
        );
        assert_eq!(
            NotReady::PostgresSilent.to_string(),
            "Postgres did not answer within 2s"
        );
    }
}
