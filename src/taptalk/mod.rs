//! TapTalk.io, the upstream: its wire format ([`api`]), the client the
//! worker calls it with ([`client`]), and the optional hard rate limit
//! toward it ([`rate`]).

pub mod api;
pub mod client;
pub mod rate;

pub use api::ServerKey;
pub use client::{TaptalkClient, TicketError};
pub use rate::RateLimit;
