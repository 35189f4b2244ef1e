//! The TapTalk.io server API as it appears on the wire, as
//! `../shared/taptalk-api.md` documents it: the auth-ticket endpoint and its
//! `Server-Key` header ([`wire`]), the request's fields and their documented
//! rules ([`Field`], [`TicketRequest`]), the response envelope, and the ticket
//! it returns ([`AuthTicket`]).
//!
//! The worker's client and the project's stand-in server both build on these
//! definitions, so the two cannot drift apart. This crate knows nothing of
//! RabbitMQ, Postgres, logging or the worker's configuration: it depends on
//! no other crate of the workspace.

mod field;
mod request;
mod ticket;
pub mod wire;

pub use field::Field;
pub use request::{FieldError, Platform, TicketRequest, json_kind};
pub use ticket::AuthTicket;
pub use wire::ServerKey;
