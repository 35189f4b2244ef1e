//! RabbitMQ settings: `AMQP_URL` (or `AMQP_URL_FILE`), the connection name,
//! and the names of the exchanges and queues the worker declares, checked
//! into the broker's [`BrokerSettings`] and [`Topology`].

use super::RECONNECT_PAUSES;
use super::errors::{ConfigError, ConfigErrors, Problems};
use super::values::secret;
use crate::broker::{BrokerSettings, Topology};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;

/// Where to find RabbitMQ, and the names of everything the worker declares.
#[derive(clap::Args, Clone)]
pub struct BrokerArgs {
    /// RabbitMQ URL, amqp://user:password@host:5672/vhost or amqps://…
    #[arg(
        long,
        env = "AMQP_URL",
        value_name = "AMQP_URL",
        hide_env_values = true
    )]
    pub amqp_url: Option<String>,
    /// File holding the RabbitMQ URL (instead of AMQP_URL)
    #[arg(long, env = "AMQP_URL_FILE", value_name = "AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,
    /// Connection name shown by RabbitMQ (rabbitmqctl list_connections client_properties)
    #[arg(
        long,
        env = "AMQP_CONNECTION_NAME",
        value_name = "AMQP_CONNECTION_NAME",
        default_value = "ticket-worker"
    )]
    pub amqp_connection_name: String,
    #[command(flatten)]
    pub names: TopologyArgs,
}

/// The exchanges and queues (defaults from the design; each configurable).
#[derive(clap::Args, Clone, Debug)]
pub struct TopologyArgs {
    /// Topic exchange the login service publishes login events to
    #[arg(
        long,
        env = "LOGIN_EXCHANGE",
        value_name = "LOGIN_EXCHANGE",
        default_value = "taptalk.logins"
    )]
    pub login_exchange: String,
    /// Quorum queue the workers consume, bound to the login exchange with '#'
    #[arg(
        long,
        env = "WORK_QUEUE",
        value_name = "WORK_QUEUE",
        default_value = "taptalk.logins.ticket-worker"
    )]
    pub work_queue: String,
    /// Exchange that receives dead letters
    #[arg(
        long,
        env = "DEAD_LETTER_EXCHANGE",
        value_name = "DEAD_LETTER_EXCHANGE",
        default_value = "taptalk.logins.dlx"
    )]
    pub dead_letter_exchange: String,
    /// Queue that keeps dead letters
    #[arg(
        long,
        env = "DEAD_LETTER_QUEUE",
        value_name = "DEAD_LETTER_QUEUE",
        default_value = "taptalk.logins.dead"
    )]
    pub dead_letter_queue: String,
    /// Topic exchange for ticket.ready and ticket.failed
    #[arg(
        long,
        env = "TICKET_EXCHANGE",
        value_name = "TICKET_EXCHANGE",
        default_value = "taptalk.tickets"
    )]
    pub ticket_exchange: String,
    /// Deliveries of one message before the broker dead-letters it (crash-loop backstop)
    #[arg(
        long,
        env = "DELIVERY_LIMIT",
        value_name = "DELIVERY_LIMIT",
        default_value_t = 20
    )]
    pub delivery_limit: u32,
}

impl BrokerSettings {
    /// `default_url` stands in for a missing AMQP_URL (the demo's local broker).
    /// Reports every problem of AMQP_URL, AMQP_CONNECTION_NAME and the topology.
    pub fn from_args(
        args: &BrokerArgs,
        default_url: Option<&str>,
    ) -> Result<BrokerSettings, ConfigErrors> {
        let mut problems = Problems::default();
        let amqp_url = problems.take(amqp_url(args, default_url));
        problems.require(
            !args.amqp_connection_name.trim().is_empty(),
            "AMQP_CONNECTION_NAME",
            "must not be empty",
        );
        let topology = problems.take(Topology::from_args(&args.names));
        match (amqp_url, topology) {
            (Some(amqp_url), Some(topology)) if problems.is_empty() => Ok(BrokerSettings {
                amqp_url,
                connection_name: args.amqp_connection_name.clone(),
                topology,
                reconnect: RECONNECT_PAUSES,
            }),
            _ => Err(problems.into_errors()),
        }
    }
}

/// AMQP_URL (or AMQP_URL_FILE), checked.
fn amqp_url(args: &BrokerArgs, default_url: Option<&str>) -> Result<SecretString, ConfigError> {
    let amqp_url = secret(
        "AMQP_URL",
        "--amqp-url",
        args.amqp_url.as_deref(),
        args.amqp_url_file.as_ref(),
        default_url,
    )?;
    crate::broker::addresses::Addresses::parse(amqp_url.expose_secret())
        .map_err(|e| ConfigError::new("AMQP_URL", e.to_string()))?;
    Ok(amqp_url)
}

impl Topology {
    /// Checks every name and DELIVERY_LIMIT, reporting every problem found.
    pub fn from_args(args: &TopologyArgs) -> Result<Topology, ConfigErrors> {
        let mut problems = Problems::default();
        let mut name = |setting: &'static str, value: &str| -> Option<String> {
            let ok = !value.trim().is_empty() && value.len() <= 255;
            problems.require(ok, setting, "must be a name of 1 to 255 bytes");
            ok.then(|| value.to_owned())
        };
        let names = (
            name("LOGIN_EXCHANGE", &args.login_exchange),
            name("WORK_QUEUE", &args.work_queue),
            name("DEAD_LETTER_EXCHANGE", &args.dead_letter_exchange),
            name("DEAD_LETTER_QUEUE", &args.dead_letter_queue),
            name("TICKET_EXCHANGE", &args.ticket_exchange),
        );
        problems.require(
            args.delivery_limit > 0,
            "DELIVERY_LIMIT",
            "must be at least 1",
        );
        match names {
            (
                Some(login_exchange),
                Some(work_queue),
                Some(dead_letter_exchange),
                Some(dead_letter_queue),
                Some(ticket_exchange),
            ) if problems.is_empty() => Ok(Topology {
                login_exchange,
                work_queue,
                dead_letter_exchange,
                dead_letter_queue,
                ticket_exchange,
                delivery_limit: args.delivery_limit,
            }),
            _ => Err(problems.into_errors()),
        }
    }
}
