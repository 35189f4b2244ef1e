//! Registering a command's secrets with the log redactor as soon as its
//! settings are read, before anything connects or logs.

use crate::config::{BrokerSettings, DatabaseSettings};
use crate::observe;
use secrecy::ExposeSecret;

/// The password in `AMQP_URL`, in every spelling the redactor knows.
pub(super) fn register_broker(broker: &BrokerSettings) {
    observe::register_url(broker.amqp_url.expose_secret());
}

/// The password in `DATABASE_URL`.
pub(super) fn register_database(database: &DatabaseSettings) {
    observe::register_url(database.url.expose_secret());
}
