//! Opening a RabbitMQ connection with a name operators can find it by.

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
