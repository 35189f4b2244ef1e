//! Domain values: what a login event means once it has been checked.
//!
//! Each type here is parsed once, at the edge, and cannot hold an invalid value
//! afterwards: an [`EventId`] is a usable idempotency key, a [`TicketRequest`]
//! satisfies TapTalk's documented field rules, an [`AuthTicket`] cannot be
//! printed by accident.

mod event_id;
mod field;
pub mod text;
mod ticket;
mod ticket_request;

pub use event_id::EventId;
pub use field::Field;
pub use ticket::{AuthTicket, IssuedTicket, TICKET_LIFETIME, TicketRecord};
pub(crate) use ticket_request::json_kind;
pub use ticket_request::{FieldError, Platform, TicketRequest};
