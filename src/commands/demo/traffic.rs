//! The demo's traffic: the login events it publishes (a few deliberately
//! bad), the ticket events it watches for on a private queue, and the
//! progress line while they flow.

use super::run_id::DemoRun;
use crate::broker::Topology;
use crate::shutdown::Shutdown;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How waiting for the answers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Answered,
    TimedOut,
    Interrupted,
}

/// Counts of the ticket events seen for the demo's own login events.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) ready: HashSet<String>,
    pub(super) failed: Vec<(String, String)>,
}

/// `count` login events as a login service would send them: a third as many
/// users as events (people log in more than once), all three platforms, and
/// about 1 in 50 deliberately bad (an unknown platform, caught by the worker;
/// a malformed e-mail, caught by TapTalk). Their ids are the run's.
pub(super) fn login_events(run: &DemoRun, count: usize) -> Vec<Value> {
    let mut rng = rand::rng();
    let users = (count / 3).max(1);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (0..count)
        .map(|i| {
            let user = rng.random_range(0..users);
            let mut event =
                fake_taptalk::logins::realistic_login_event(&mut rng, user, &run.event_id(), &now);
            match i % 50 {
                17 => event["userPlatform"] = json!("windows-phone"),
                42 => {
                    let first = event["fullName"].as_str().unwrap_or_default();
                    let first = first.split(' ').next().unwrap_or_default().to_lowercase();
                    event["email"] = json!(format!("{first}(at)example.com"));
                }
                _ => {}
            }
            event
        })
        .collect()
}

/// Consumes ticket events from a private queue, recording them in `seen`.
pub(super) async fn watch_ticket_events(
    channel: &Channel,
    topology: &Topology,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), lapin::Error> {
    let mut consumer =
        crate::broker::tap::subscribe(channel, topology.ticket_exchange.as_str()).await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
                continue;
            };
            let id = body["eventID"].as_str().unwrap_or_default().to_owned();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if delivery.routing_key.as_str() == "ticket.ready" {
                seen.ready.insert(id);
            } else {
                let reason = body["reason"].as_str().unwrap_or_default().to_owned();
                seen.failed.push((id, reason));
            }
        }
    });
    Ok(())
}

/// Publishes `events` to the login exchange with publisher confirms.
pub(super) async fn publish(
    channel: &Channel,
    topology: &Topology,
    events: &[Value],
) -> Result<(), lapin::Error> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for event in events {
        let id = event["eventID"].as_str().unwrap_or_default();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.into());
        channel
            .basic_publish(
                topology.login_exchange.as_str().into(),
                "login".into(),
                BasicPublishOptions::default(),
                event.to_string().as_bytes(),
                properties,
            )
            .await?;
    }
    channel.wait_for_confirms().await.map(|_| ())
}

/// Prints a progress line until every event is answered, the time is up or
/// the demo is interrupted (SIGINT, SIGTERM).
pub(super) async fn progress(
    seen: &Mutex<Seen>,
    ids: &HashSet<String>,
    started: Instant,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Progress {
    let total = ids.len();
    loop {
        let (ready, failed) = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            (
                seen.ready.iter().filter(|id| ids.contains(*id)).count(),
                seen.failed
                    .iter()
                    .filter(|(id, _)| ids.contains(id))
                    .map(|(id, _)| id)
                    .collect::<HashSet<_>>()
                    .len(),
            )
        };
        let rate = (ready + failed) as f64 / started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r  answered {:>4}/{total}  ready {ready:>4}  failed {failed:>3}  {rate:>6.0} events/s ",
            ready + failed
        );
        let _ = std::io::stderr().flush();
        let ended = if ready + failed >= total {
            Some(Progress::Answered)
        } else if started.elapsed() > timeout {
            Some(Progress::TimedOut)
        } else if shutdown.is_triggered() {
            Some(Progress::Interrupted)
        } else {
            None
        };
        if let Some(ended) = ended {
            eprintln!();
            return ended;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.triggered() => {}
        }
    }
}
