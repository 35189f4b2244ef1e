//! `AMQP_URL` as a list of brokers: the nodes of a RabbitMQ cluster, tried
//! in turn, as Spring's `addresses` and Celery's failover list do.
//!
//! The list is comma-separated `amqp://` or `amqps://` URLs. The first names
//! the user, password, virtual host and query; a later one that leaves any of
//! them out takes the first's (`amqp://u:p@a:5672/%2f,amqp://b:5672,amqp://c`).
//! A comma inside a password must be percent-encoded (`%2C`).
//!
//! Each connection attempt goes through the nodes from a starting one; a
//! node whose host name resolves to several addresses is tried address by
//! address (plain `amqp://` only: with TLS the certificate names the host, so
//! the system resolver picks the address). A node that does not answer is
//! given up after [`ATTEMPT_WITHIN`], and the next is tried.

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use url::Url;

/// The longest one attempt at one address may take (a black-holed address
/// would hold a TCP connect for minutes).
pub const ATTEMPT_WITHIN: Duration = Duration::from_secs(10);

/// One broker of the list.
#[derive(Clone)]
pub struct Address {
    url: SecretString,
    /// `host:port` as configured, without credentials: for logs, `/readyz`
    /// and the `node` label of `ticket_worker_rabbitmq_node`.
    pub node: String,
    tls: bool,
    host: String,
    port: u16,
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Address").field("node", &self.node).finish()
    }
}

/// Every broker of `AMQP_URL`, in the order given.
#[derive(Debug, Clone)]
pub struct Addresses(Vec<Address>);

/// Why `AMQP_URL` is not a list of broker URLs: which entry, what is wrong
/// with it and how to write it. It never quotes the URL (its password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAddresses {
    #[error("{0} must start with amqp:// or amqps://")]
    Scheme(Entry),
    /// Not a URL at all (the parser's own message repeats the URL, password
    /// included, so it is not kept).
    #[error(
        "{0} is not a valid AMQP URL; expected amqp://user:password@host:5672/vhost (percent-encode special characters, %2f for the default vhost, %2C for a comma)"
    )]
    NotAUrl(Entry),
    #[error(
        "{0} holds a comma after its host: commas separate URLs in AMQP_URL, each starting with amqp:// or amqps:// (percent-encode a comma in a vhost, %2C)"
    )]
    CommaAfterHost(Entry),
    /// A URL, but not one lapin can connect to.
    #[error("{0} is not a valid AMQP URL; expected amqp://user:password@host:5672/vhost")]
    NotAmqp(Entry),
    #[error("{0} names no host")]
    NoHost(Entry),
}

/// Connecting with an `AMQP_URL` that is not a list of broker URLs fails as
/// lapin's I/O error, `AMQP_URL: …`, which holds the [`InvalidAddresses`]
/// itself (its `get_ref` downcasts to [`InAmqpUrl`]).
impl From<InvalidAddresses> for lapin::Error {
    fn from(error: InvalidAddresses) -> lapin::Error {
        std::io::Error::other(InAmqpUrl(error)).into()
    }
}

/// An [`InvalidAddresses`], said as a problem of the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AMQP_URL: {0}")]
pub struct InAmqpUrl(
    /// Said in the message itself, so not a `source` (it would be said twice).
    pub InvalidAddresses,
);

/// Which URL of `AMQP_URL` an [`InvalidAddresses`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `AMQP_URL` is one URL: "it".
    Only,
    /// The n-th of a list, from 1.
    Nth(usize),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Only => f.write_str("it"),
            Entry::Nth(n) => write!(f, "entry {n} of the list"),
        }
    }
}

impl Addresses {
    /// Reads `AMQP_URL`: one URL, or several separated by commas.
    pub fn parse(raw: &str) -> Result<Addresses, InvalidAddresses> {
        let mut first: Option<Url> = None;
        let mut addresses = Vec::new();
        let parts = crate::observe::redact::url_list(raw);
        let several = parts.len() > 1;
        for (n, part) in parts.into_iter().enumerate() {
            let place = if several {
                Entry::Nth(n.saturating_add(1))
            } else {
                Entry::Only
            };
            if !(part.starts_with("amqp://") || part.starts_with("amqps://")) {
                return Err(InvalidAddresses::Scheme(place));
            }
            // The parser's message repeats the URL, password included: not shown.
            let mut url = Url::parse(part).map_err(|_| InvalidAddresses::NotAUrl(place))?;
            if url.path().contains(',') || url.query().is_some_and(|q| q.contains(',')) {
                return Err(InvalidAddresses::CommaAfterHost(place));
            }
            if let Some(first) = &first {
                inherit(&mut url, first);
            }
            let text = url.to_string();
            if <lapin::uri::AMQPUri as std::str::FromStr>::from_str(&text).is_err() {
                return Err(InvalidAddresses::NotAmqp(place));
            }
            let tls = url.scheme() == "amqps";
            let host = url.host_str().unwrap_or_default().to_owned();
            if host.is_empty() {
                return Err(InvalidAddresses::NoHost(place));
            }
            let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
            addresses.push(Address {
                url: SecretString::from(text),
                node: format!("{host}:{port}"),
                tls,
                host,
                port,
            });
            if first.is_none() {
                first = Some(url);
            }
        }
        Ok(Addresses(addresses))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nodes, `host:port` each, in the order given.
    pub fn nodes(&self) -> Vec<String> {
        self.0.iter().map(|a| a.node.clone()).collect()
    }

    /// The first URL (its user is the one every node logs in as).
    pub fn first_url(&self) -> Option<&SecretString> {
        self.0.first().map(|a| &a.url)
    }

    /// Connects to the first node that answers, starting at `start` and going
    /// round the list once; returns the connection and the node's index.
    pub async fn connect_from(
        &self,
        start: usize,
        name: &str,
    ) -> Result<(Connection, usize), ConnectError> {
        let mut failures = Vec::new();
        let count = self.0.len().max(1);
        for step in 0..count {
            let index = start.wrapping_add(step) % count;
            let Some(address) = self.0.get(index) else {
                continue;
            };
            match connect_to(address, name).await {
                Ok(connection) => return Ok((connection, index)),
                Err(error) => {
                    let cause = cause(&error);
                    if count > 1 {
                        tracing::info!(node = %address.node, %cause, "a RabbitMQ node of AMQP_URL cannot be reached; trying the next");
                    }
                    failures.push(NodeFailure {
                        node: address.node.clone(),
                        cause,
                    });
                }
            }
        }
        Err(ConnectError::Unreachable(failures))
    }
}

/// Why no connection to RabbitMQ could be opened, in the words every
/// command uses: the setting, the address tried, and what went wrong there
/// (`AMQP_URL → 127.0.0.1:5673: connection refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// `AMQP_URL` does not parse.
    Setting(InvalidAddresses),
    /// Every node was tried, and each failed.
    Unreachable(Vec<NodeFailure>),
}

/// One node that did not take a connection, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    pub node: String,
    pub cause: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Setting(problem) => write!(f, "AMQP_URL: {problem}"),
            ConnectError::Unreachable(failures) => match failures.as_slice() {
                [] => f.write_str("AMQP_URL names no RabbitMQ node"),
                [one] => write!(f, "AMQP_URL → {}: {}", one.node, one.cause),
                several => {
                    f.write_str("AMQP_URL → no node answered: ")?;
                    for (i, failure) in several.iter().enumerate() {
                        let sep = if i == 0 { "" } else { "; " };
                        write!(f, "{sep}{}: {}", failure.node, failure.cause)?;
                    }
                    Ok(())
                }
            },
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<ConnectError> for lapin::Error {
    fn from(error: ConnectError) -> lapin::Error {
        std::io::Error::other(error).into()
    }
}

/// What went wrong at one node, in an operator's words: the cause, not
/// lapin's wrapping of it, with what to check where the broker says.
pub fn cause(error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::IOError(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
            _ => match io.get_ref() {
                // Ours (a deadline), already in words.
                Some(inner) => inner.to_string(),
                None => io.to_string(),
            },
        },
        lapin::ErrorKind::ProtocolError(amqp) => {
            let what = amqp.get_message().as_str();
            match amqp.get_id() {
                403 => format!("{what}: check the user and password in AMQP_URL"),
                530 => format!("{what}: check the virtual host in AMQP_URL"),
                _ => what.to_owned(),
            }
        }
        _ => error.to_string(),
    }
}

/// What `url` leaves out, taken from `first`: the user and password, the
/// virtual host (the path), the query.
fn inherit(url: &mut Url, first: &Url) {
    if url.username().is_empty() && url.password().is_none() {
        let _ = url.set_username(first.username());
        let _ = url.set_password(first.password());
    }
    if url.path().is_empty() {
        url.set_path(first.path());
    }
    if url.query().is_none() {
        url.set_query(first.query());
    }
}

/// One node: address by address of its host, each within [`ATTEMPT_WITHIN`].
async fn connect_to(address: &Address, name: &str) -> Result<Connection, lapin::Error> {
    let properties = || ConnectionProperties::default().with_connection_name(name.into());
    let targets = resolved(address).await;
    let mut last = None;
    for target in &targets {
        let attempt = Connection::connect(target.expose_secret(), properties());
        match tokio::time::timeout(ATTEMPT_WITHIN, attempt).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => last = Some(error),
            Err(_) => last = Some(no_handshake()),
        }
    }
    Err(last.unwrap_or_else(no_handshake))
}

/// A node that took no connection within [`ATTEMPT_WITHIN`].
fn no_handshake() -> lapin::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no answer within {}s (a firewall, or the wrong host?)",
            ATTEMPT_WITHIN.as_secs()
        ),
    )
    .into()
}

/// The URLs to try for one node: for `amqp://`, one per address its host
/// resolves to (in the resolver's order); otherwise the URL as it is.
async fn resolved(address: &Address) -> Vec<SecretString> {
    let as_is = || vec![address.url.clone()];
    if address.tls || address.host.parse::<std::net::IpAddr>().is_ok() {
        return as_is();
    }
    let host = address.host.trim_start_matches('[').trim_end_matches(']');
    let lookup = tokio::net::lookup_host((host, address.port));
    let Ok(Ok(found)) = tokio::time::timeout(ATTEMPT_WITHIN, lookup).await else {
        return as_is();
    };
    let mut seen = Vec::new();
    for socket in found {
        if !seen.contains(&socket.ip()) {
            seen.push(socket.ip());
        }
    }
    if seen.len() <= 1 {
        return as_is();
    }
    seen.into_iter()
        .filter_map(|ip| {
            let mut url = Url::parse(address.url.expose_secret()).ok()?;
            url.set_ip_host(ip).ok()?;
            Some(SecretString::from(url.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_connection_names_the_setting_the_address_and_the_cause() {
        let refused: lapin::Error =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(cause(&refused), "connection refused");
        assert_eq!(
            cause(&no_handshake()),
            "no answer within 10s (a firewall, or the wrong host?)"
        );
        let one = ConnectError::Unreachable(vec![NodeFailure {
            node: "127.0.0.1:5673".into(),
            cause: cause(&refused),
        }]);
        assert_eq!(
            one.to_string(),
            "AMQP_URL → 127.0.0.1:5673: connection refused"
        );
        let two = ConnectError::Unreachable(vec![
            NodeFailure {
                node: "a:5672".into(),
                cause: "connection refused".into(),
            },
            NodeFailure {
                node: "b:5672".into(),
                cause: "connection reset".into(),
            },
        ]);
        assert_eq!(
            two.to_string(),
            "AMQP_URL → no node answered: a:5672: connection refused; b:5672: connection reset"
        );
        // Through lapin and back, in the same words.
        let wrapped = lapin::Error::from(one.clone());
        assert_eq!(
            super::super::connection::describe(&wrapped),
            one.to_string()
        );
    }

    #[test]
    fn later_entries_take_what_they_leave_out_from_the_first() {
        let list = Addresses::parse(
            "amqp://ops:pw%2C1@a.example:5672/prod?heartbeat=10, amqp://b.example:5673,amqp://c.example, amqp://other:x@d:5672/%2f",
        )
        .expect("a list");
        assert_eq!(
            list.nodes(),
            [
                "a.example:5672",
                "b.example:5673",
                "c.example:5672",
                "d:5672"
            ]
        );
        let urls: Vec<String> = list
            .0
            .iter()
            .map(|a| a.url.expose_secret().to_owned())
            .collect();
        assert_eq!(
            urls[1],
            "amqp://ops:pw%2C1@b.example:5673/prod?heartbeat=10"
        );
        assert_eq!(urls[2], "amqp://ops:pw%2C1@c.example/prod?heartbeat=10");
        assert_eq!(
            urls[3], "amqp://other:x@d:5672/%2f?heartbeat=10",
            "its own user and vhost stay; the query it leaves out is the first's"
        );
    }

    #[test]
    fn one_url_is_a_list_of_one_and_bad_entries_are_named_without_the_password() {
        let one = Addresses::parse("amqps://u:p@rabbit:5671/%2f").expect("one");
        assert_eq!(one.nodes(), ["rabbit:5671"]);
        for (raw, says) in [
            (
                "amqp://u:p@a/%2f,http://b",
                "entry 2 of the list must start with amqp://",
            ),
            (
                "amqp://u:secret-Zz@a/%2f,amqp://[bad",
                "entry 2 of the list is not a valid AMQP URL",
            ),
            ("postgres://x", "it must start with amqp://"),
        ] {
            let error = Addresses::parse(raw).expect_err(raw).to_string();
            assert!(error.contains(says), "{raw}: {error}");
            assert!(!error.contains("secret-Zz"), "{error}");
        }
    }

    #[test]
    fn connecting_with_a_bad_list_names_the_setting_and_keeps_the_reason() {
        let error = lapin::Error::from(InvalidAddresses::NoHost(Entry::Only));
        assert!(
            error.to_string().contains("AMQP_URL: it names no host"),
            "{error}"
        );
        let lapin::ErrorKind::IOError(io) = error.kind() else {
            panic!("an I/O error: {error:?}");
        };
        let kept = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<InAmqpUrl>());
        assert_eq!(
            kept,
            Some(&InAmqpUrl(InvalidAddresses::NoHost(Entry::Only)))
        );
    }

    #[test]
    fn each_refusal_names_its_entry() {
        assert_eq!(
            InvalidAddresses::NoHost(Entry::Only).to_string(),
            "it names no host"
        );
        assert_eq!(
            InvalidAddresses::Scheme(Entry::Nth(3)).to_string(),
            "entry 3 of the list must start with amqp:// or amqps://"
        );
        assert_eq!(
            Addresses::parse("amqp://a/%2f,amqp://b/x,y").map(|_| ()),
            Err(InvalidAddresses::CommaAfterHost(Entry::Nth(2)))
        );
    }
}
