//! TapTalk.io, the upstream: its wire format ([`api`]), the client the
//! worker calls it with ([`client`]), and how hard the worker may call it:
//! the adaptive concurrency limit ([`limit`]) and the optional hard rate
//! limit ([`rate`]).

pub mod api;
pub mod client;
pub mod limit;
pub mod pause;
pub mod quota;
pub mod rate;

pub use api::ServerKey;
pub use client::{TaptalkClient, TicketError};
pub use limit::{AdaptiveLimit, LimitSettings, Permit, Signal};
pub use pause::UpstreamPause;
pub use rate::RateLimit;
