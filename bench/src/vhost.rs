//! Where on RabbitMQ a run happens. Preferably in a vhost of its own,
//! `bench-<id>`, made with `rabbitmqctl add_vhost` and opened to the user of
//! `AMQP_URL` (`set_permissions … ".*" ".*" ".*"`), deleted with
//! `delete_vhost` after: the workers use their default exchange and queue
//! names in it and nothing can mix with anything else. When `rabbitmqctl` is
//! missing, fails, or manages another broker than `AMQP_URL`'s (the vhost
//! made cannot be opened), the run uses names of its own in the configured
//! vhost (`taptalk.bench-<id>.logins`, …, passed to the workers as
//! `LOGIN_EXCHANGE`, `WORK_QUEUE`, …) and deletes those after.

use crate::error::VhostError;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::time::Duration;
use ticket_worker::broker::{Topology, connect};

/// How long one `rabbitmqctl` call may take.
const RABBITMQCTL_WITHIN: Duration = Duration::from_secs(30);

/// How the run is kept apart on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub(crate) enum Isolation {
    /// A vhost of its own.
    Vhost(String),
    /// Names of its own (this prefix) in the configured vhost.
    Names(String),
}

/// The names a run uses on the broker.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// `AMQP_URL`, with the run's vhost when it has one.
    pub amqp_url: SecretString,
    pub isolation: Isolation,
    /// What the workers declare and use.
    pub topology: Topology,
    /// The broker-only ceiling's queue of preloaded messages.
    pub ceiling_source: String,
    /// The exchange the ceiling publishes its replies to.
    pub ceiling_replies: String,
}

impl Place {
    /// The vhost `name` on the broker of `amqp_url`.
    fn in_vhost(amqp_url: &SecretString, name: &str, delivery_limit: u32) -> Option<Place> {
        let mut url = url::Url::parse(amqp_url.expose_secret()).ok()?;
        url.set_path(&format!("/{name}"));
        Some(Place {
            amqp_url: SecretString::from(url.to_string()),
            isolation: Isolation::Vhost(name.to_owned()),
            topology: Topology {
                delivery_limit,
                ..Topology::default()
            },
            ceiling_source: "bench.ceiling.source".into(),
            ceiling_replies: "bench.ceiling.replies".into(),
        })
    }

    /// Names of run `id`'s own in the configured vhost.
    pub(crate) fn with_names(amqp_url: &SecretString, id: &str, delivery_limit: u32) -> Place {
        let prefix = format!("taptalk.bench-{id}");
        let name = |rest: &str| format!("{prefix}.{rest}");
        Place {
            amqp_url: amqp_url.clone(),
            topology: Topology::scoped(&format!("bench-{id}"), delivery_limit),
            ceiling_source: name("ceiling.source"),
            ceiling_replies: name("ceiling.replies"),
            isolation: Isolation::Names(format!("{prefix}.*")),
        }
    }

    /// The topology settings to give the workers (none in a vhost of its
    /// own, where the defaults are the run's).
    pub(crate) fn topology_env(&self) -> Vec<(String, String)> {
        if matches!(self.isolation, Isolation::Vhost(_)) {
            return Vec::new();
        }
        let t = &self.topology;
        [
            ("LOGIN_EXCHANGE", &t.login_exchange),
            ("WORK_QUEUE", &t.work_queue),
            ("DEAD_LETTER_EXCHANGE", &t.dead_letter_exchange),
            ("DEAD_LETTER_QUEUE", &t.dead_letter_queue),
            ("TICKET_EXCHANGE", &t.ticket_exchange),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }
}

/// Makes the vhost `bench-<id>` for `user` and checks that `amqp_url`'s
/// broker opens it. `Err` says why not (the caller falls back to names);
/// `made` is set as soon as `add_vhost` may have made it, for the clean-up.
pub(crate) async fn make_vhost(
    amqp_url: &SecretString,
    user: Option<&str>,
    id: &str,
    delivery_limit: u32,
    made: &mut Option<String>,
) -> Result<Place, VhostError> {
    let user = user.ok_or(VhostError::NoUser)?;
    let name = format!("bench-{id}");
    let place =
        Place::in_vhost(amqp_url, &name, delivery_limit).ok_or(VhostError::NotReplaceable)?;
    *made = Some(name.clone());
    rabbitmqctl(&["add_vhost", &name]).await?;
    rabbitmqctl(&["set_permissions", "-p", &name, user, ".*", ".*", ".*"]).await?;
    let opened = tokio::time::timeout(
        Duration::from_secs(15),
        connect(&place.amqp_url, "ticket-bench (checking the vhost)"),
    )
    .await;
    match opened {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "vhost checked".into()).await;
            Ok(place)
        }
        Ok(Err(error)) => Err(VhostError::NotOpened { name, error }),
        Err(_) => Err(VhostError::OpenSlow { name }),
    }
}

/// Deletes the vhost (with everything in it).
pub(crate) async fn delete_vhost(name: &str) -> Result<(), VhostError> {
    rabbitmqctl(&["delete_vhost", name]).await
}

async fn rabbitmqctl(args: &[&str]) -> Result<(), VhostError> {
    run(args).await.map(|_| ())
}

/// Runs `rabbitmqctl -q <args>`; its stdout, or why it failed.
async fn run(args: &[&str]) -> Result<String, VhostError> {
    let first = || args.first().copied().unwrap_or_default().to_owned();
    let mut command = tokio::process::Command::new("rabbitmqctl");
    command.arg("-q").args(args).kill_on_drop(true);
    let output = tokio::time::timeout(RABBITMQCTL_WITHIN, command.output())
        .await
        .map_err(|_| VhostError::RabbitmqctlSlow { command: first() })?
        .map_err(VhostError::RabbitmqctlMissing)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message");
    Err(VhostError::RabbitmqctlFailed {
        command: first(),
        status: output.status,
        why: why.to_owned(),
    })
}
