//! Opening a RabbitMQ connection with a name operators can find it by,
//! telling why one failed, and the deadline every step with the broker has.

use super::addresses::{Addresses, ConnectError, InAmqpUrl};
use lapin::Connection;
use secrecy::{ExposeSecret, SecretString};
use std::future::Future;
use std::time::Duration;

/// The longest one step with RabbitMQ may take: opening a connection (a
/// black-holed address would hold the TCP connect for minutes), declaring,
/// consuming, acknowledging, a publish and its confirm. A broker that does
/// not answer in that time is treated as gone: the session ends, and what it
/// held is redelivered. (A publish RabbitMQ holds back on purpose, during a
/// memory or disk alarm, waits for the alarm instead: see the publisher.)
pub const BROKER_STEP: Duration = Duration::from_secs(30);

/// Runs one step with the broker within [`BROKER_STEP`]; past it, an
/// `IOError` of kind `TimedOut` naming the step.
pub async fn within<T>(
    step: &str,
    answer: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    match tokio::time::timeout(BROKER_STEP, answer).await {
        Ok(answer) => answer,
        Err(_) => Err(no_answer(step)),
    }
}

/// The error of a step RabbitMQ did not answer in [`BROKER_STEP`].
pub fn no_answer(step: &str) -> lapin::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "RabbitMQ did not answer {step} within {}s",
            BROKER_STEP.as_secs()
        ),
    )
    .into()
}

/// Opens one connection to the first node of `amqp_url` (one URL, or a
/// list: see [`Addresses`]) that answers (plain `amqp://` or TLS `amqps://`,
/// verified against the system's trust store), named `name` in
/// `rabbitmqctl list_connections client_properties` and the management UI.
///
/// It does not retry; the worker's session loop does, with backoff.
#[tracing::instrument(name = "broker.connect", skip(amqp_url))]
pub async fn connect(amqp_url: &SecretString, name: &str) -> Result<Connection, ConnectError> {
    let addresses = Addresses::parse(amqp_url.expose_secret()).map_err(ConnectError::Setting)?;
    addresses.connect_from(0, name).await.map(|(c, _)| c)
}

/// A failed session start or broker step in words: a [`ConnectError`]
/// as it says itself (not behind lapin's "IO error"), anything else as
/// lapin says it.
pub fn describe(error: &lapin::Error) -> String {
    if let lapin::ErrorKind::IOError(io) = error.kind()
        && let Some(inner) = io.get_ref()
    {
        if let Some(connect) = inner.downcast_ref::<ConnectError>() {
            return connect.to_string();
        }
        if let Some(setting) = inner.downcast_ref::<InAmqpUrl>() {
            return setting.to_string();
        }
    }
    error.to_string()
}

/// Whether a connection failed because a frame was larger than `frame_max`
/// (AMQP FRAME_ERROR, 501): lapin refuses such a frame from RabbitMQ, and
/// RabbitMQ refuses one from us.
pub fn is_oversized_frame(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_id() == 501,
        _ => false,
    }
}
