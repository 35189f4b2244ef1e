//! Where to find RabbitMQ and what to declare there: the settings the
//! broker's users (the worker, `dlq`, `publish`) connect with. `config`
//! checks them (`BrokerSettings::from_args`); this module only holds them.

use super::Topology;
use crate::observe::redact_url;
use crate::retry::RetryPolicy;
use secrecy::{ExposeSecret, SecretString};
use std::str::FromStr;

/// Broker settings, validated.
#[derive(Clone)]
pub struct BrokerSettings {
    pub amqp_url: SecretString,
    pub connection_name: String,
    pub topology: Topology,
    /// Pauses between reconnect attempts.
    pub reconnect: RetryPolicy,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("amqp_url", &redact_url(self.amqp_url.expose_secret()))
            .field("connection_name", &self.connection_name)
            .field("topology", &self.topology)
            .finish()
    }
}

impl BrokerSettings {
    /// The RabbitMQ user the worker logs in as, when it uses a user name and
    /// password (not `auth_mechanism=external` or `anonymous`): the `user_id` RabbitMQ lets
    /// the worker put on the messages it publishes.
    pub fn login_user(&self) -> Option<String> {
        let addresses =
            crate::broker::addresses::Addresses::parse(self.amqp_url.expose_secret()).ok()?;
        let uri = lapin::uri::AMQPUri::from_str(addresses.first_url()?.expose_secret()).ok()?;
        use lapin::uri::SASLMechanism;
        let by_password = matches!(
            uri.query.auth_mechanism,
            None | Some(SASLMechanism::Plain | SASLMechanism::AMQPlain)
        );
        by_password.then_some(uri.authority.userinfo.username)
    }
}
