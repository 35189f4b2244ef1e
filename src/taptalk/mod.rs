//! TapTalk.io, the upstream: its wire format ([`api`]), the client the worker
//! calls it with ([`client`]), and the breaker that notices when it is down for
//! everybody ([`breaker`]).

pub mod api;
pub mod breaker;
pub mod client;

pub use api::ServerKey;
pub use breaker::{Breaker, BreakerSettings, Health};
pub use client::{TaptalkClient, TicketError};
