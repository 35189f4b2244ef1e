//! Opening a RabbitMQ connection with a name operators can find it by, and
//! telling why one failed.

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// Opens one connection to `amqp_url` (plain `amqp://` or TLS `amqps://`,
/// verified against the system's trust store), named `name` in
/// `rabbitmqctl list_connections client_properties` and the management UI.
///
/// It does not retry; the worker's session loop does, with backoff.
#[tracing::instrument(name = "broker.connect", skip(amqp_url))]
pub async fn connect(amqp_url: &SecretString, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(amqp_url.expose_secret(), properties).await
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
