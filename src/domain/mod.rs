//! Domain values: what a login event means once it has been checked.
//!
//! Each type here is parsed once, at the edge, and cannot hold an invalid value
//! afterwards: an [`EventId`] is a usable idempotency key, a [`TicketRequest`]
//! satisfies TapTalk's documented field rules, an [`AuthTicket`] cannot be
//! printed by accident.

mod event_id;
pub mod text;
mod ticket;

pub use event_id::{EventId, EventIdError};
pub(crate) use taptalk_api::json_kind;
/// TapTalk's request fields and their documented rules, from the wire crate.
pub use taptalk_api::{Field, FieldError, Platform, TicketRequest};
pub use ticket::{AuthTicket, IssuedTicket, TICKET_LIFETIME, TicketRecord};
