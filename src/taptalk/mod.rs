//! TapTalk.io, the upstream: its wire format ([`api`]) and the client the
//! worker calls it with ([`client`]).

pub mod api;
pub mod client;

pub use api::ServerKey;
pub use client::{TaptalkClient, TicketError};
