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
type Answer = (Instant, Result<(), String>);

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
    pub async fn check(&self) -> Result<String, String> {
        if !self.metrics.is_running() {
            let state = self.metrics.intake_state();
            let why = match state {
                "paused_taptalk_outage" => "intake paused: TapTalk fails every request",
                "paused_taptalk_misconfigured" => {
                    "intake paused: TapTalk refuses the configuration (TAPTALK_SERVER_KEY_ID, TAPTALK_SERVER_KEY_SECRET, TAPTALK_BASE_URL)"
                }
                "paused_postgres_outage" => "intake paused: Postgres is unavailable",
                "paused_postgres_misconfigured" => {
                    "intake paused: Postgres refuses the configuration (DATABASE_URL)"
                }
                _ => "not consuming: no RabbitMQ session (connecting, or AMQP_URL refused)",
            };
            return Err(format!(
                "{why}; the log says more (ticket_worker_intake_state{{state=\"{state}\"}})"
            ));
        }
        self.postgres_answers().await?;
        Ok(match self.metrics.rabbitmq_node_now() {
            Some(node) => format!("consuming from RabbitMQ node {node}"),
            None => "consuming".to_owned(),
        })
    }

    async fn postgres_answers(&self) -> Result<(), String> {
        {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, answer)) = last.as_ref()
                && at.elapsed() < ASK_EVERY
            {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(ASK_WITHIN, self.postgres.probe()).await {
            Ok(None) => Ok(()),
            Ok(Some(Failure::Transient(reason))) => {
                Err(format!("Postgres is unavailable: {reason}"))
            }
            Ok(Some(Failure::Misconfigured(reason))) => {
                Err(format!("Postgres refuses the configuration: {reason}"))
            }
            Err(_) => Err(format!(
                "Postgres did not answer within {}",
                humantime::format_duration(ASK_WITHIN)
            )),
        };
        // The endpoint is unauthenticated: the driver's words go through the
        // same scrubbing as the logs (a password it echoes back, say).
        let answer = answer.map_err(|why| crate::observe::logs::scrub(&why));
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), answer.clone()));
        answer
    }
}
