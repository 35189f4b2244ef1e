//! RabbitMQ: the connection ([`connection`]), the exchanges and queues the
//! worker declares ([`topology`]), confirmed publishing of everything the
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
pub mod settle;
pub mod tap;
pub mod topology;

pub use addresses::ConnectError;
pub use connection::connect;
pub use publisher::{PublishError, Publisher};
pub use settle::Settler;
pub use topology::{Declared, Topology};

use lapin::types::ShortString;

/// An AMQP short string from any text, cut at 255 bytes on a character
/// boundary (converting longer text directly would panic).
pub fn short(value: &str) -> ShortString {
    let mut end = value.len().min(255);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_cut_on_a_character_boundary() {
        assert_eq!(short("abc").as_str(), "abc");
        let long = "é".repeat(200);
        let cut = short(&long);
        assert!(cut.as_str().len() <= 255);
        assert_eq!(cut.as_str().chars().count(), 127);
    }
}
