//! How the bench's own steps on RabbitMQ and Postgres fail: making and
//! deleting its vhost with `rabbitmqctl` (`vhost.rs`), and each step of the
//! clean-up (`environment.rs`, `database.rs`). Each says what failed in
//! words fit for the run's one-line report; none carries a URL.

use std::process::ExitStatus;
use ticket_worker::broker::ConnectError;

/// Why the run has no vhost of its own, or why one could not be deleted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VhostError {
    #[error("AMQP_URL logs in without a user name to give permissions to")]
    NoUser,
    #[error("AMQP_URL is not a URL whose vhost can be replaced")]
    NotReplaceable,
    #[error("rabbitmqctl {command} took more than 30 s")]
    RabbitmqctlSlow { command: String },
    #[error("cannot run rabbitmqctl: {0}")]
    RabbitmqctlMissing(#[source] std::io::Error),
    #[error("rabbitmqctl {command} failed ({status}): {why}")]
    RabbitmqctlFailed {
        command: String,
        status: ExitStatus,
        why: String,
    },
    #[error(
        "the vhost {name} was made, but AMQP_URL's broker does not open it ({error}); rabbitmqctl may manage another broker"
    )]
    NotOpened {
        name: String,
        #[source]
        error: ConnectError,
    },
    #[error("opening the vhost {name} took more than 15 s")]
    OpenSlow { name: String },
}

/// Why one step of the clean-up did not remove what it should have.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CleanUpError {
    #[error(transparent)]
    Vhost(#[from] VhostError),
    #[error("cannot connect: {0}")]
    Connect(#[source] ConnectError),
    #[error("{0}")]
    Delete(#[from] lapin::Error),
    /// A Postgres error, as `ticket_worker::storage::describe` words it.
    #[error("{0}")]
    Postgres(String),
    #[error("no answer within 30 s")]
    NoAnswer,
}
