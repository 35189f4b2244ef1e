//! RabbitMQ: the connection ([`connection`]), the exchanges and queues the
//! worker declares ([`topology`]), and confirmed publishing of everything the
//! worker sends ([`publisher`]). Consuming lives in the worker.

pub mod connection;
pub mod publisher;
pub mod topology;

pub use connection::connect;
pub use publisher::{DeadLetterNote, PublishError, Publisher};
pub use topology::Topology;
