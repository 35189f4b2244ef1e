//! TapTalk.io, the upstream: its wire format ([`api`]), the client the
//! worker calls it with ([`client`]), and how hard the worker may call it:
//! the adaptive concurrency limit ([`limit`]) and the optional hard rate
//! limit ([`rate`]).

pub mod client;
pub mod limit;
pub mod pause;
pub mod quota;
pub mod rate;

pub use client::{ClientError, TaptalkClient, TicketError};
pub use limit::{AdaptiveLimit, LimitSettings, Permit, Signal};
pub use pause::UpstreamPause;
pub use rate::RateLimit;
pub use taptalk_api::ServerKey;
/// The wire format, in a crate of its own that the stand-in shares.
pub use taptalk_api::wire as api;

/// Registers the server key's secret, and the `Server-Key` header value that
/// embeds it, with the log redactor: from now on no log line shows them, in
/// any encoding.
pub fn register_with_logs(key: &ServerKey) {
    use secrecy::ExposeSecret as _;
    for spelling in key.secret_spellings() {
        crate::observe::register_secret(spelling.expose_secret());
    }
}
