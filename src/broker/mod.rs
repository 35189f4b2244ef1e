//! RabbitMQ: where to find it ([`settings`]), the connection
//! ([`connection`]), the exchanges and queues the worker declares
//! ([`topology`]), confirmed publishing of everything the
//! worker sends ([`publisher`]), and keeping the copies it sends within
//! RabbitMQ's frame size ([`copies`]). Consuming lives in the worker. The
//! operator's view of the dead-letter queue, for `dlq list` and `dlq replay`,
//! is [`dead_letters`]; watching an exchange (the demo, the bench, tests) is
//! [`tap`].

pub mod acks;
pub mod addresses;
pub mod connection;
pub mod copies;
pub mod dead_letters;
pub mod header_limits;
pub mod inbound;
pub mod publisher;
pub mod settings;
pub mod settle;
pub mod tap;
pub mod topology;

pub use addresses::ConnectError;
pub use connection::connect;
pub use publisher::{PublishError, Publisher};
pub use settings::BrokerSettings;
pub use settle::Settler;
pub use topology::{Declared, Topology};

// An AMQP short string from any text: defined with the trace headers, the
// lowest code that writes AMQP strings; the broker's code and users reach it
// here.
pub use crate::observe::traces::short;
