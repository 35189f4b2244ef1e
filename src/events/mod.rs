//! The wire formats on the bus: the login event the worker consumes and the
//! ticket events it publishes. Field names here are a contract with other
//! systems; docs/integrating.md documents them. [`MaskedBody`] shows a login event
//! to an operator without its personal data (`dlq list`).

mod login_event;
mod masking;
mod ticket_events;

pub use login_event::{
    BodyEventId, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_EVENT_BYTES, Envelope, InvalidEvent,
    LoginEvent, Problem,
};
pub use masking::{MaskedBody, hide_values, masked_texts};
pub use ticket_events::{FailureReason, TicketFailed, TicketReady};
