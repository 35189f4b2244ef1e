//! One delivery as the pipeline decides about it and the broker settles it:
//! the [`Message`] the broker reads for the pipeline, where its handling is
//! ([`Stage`]), what the pipeline decides ([`Decision`]) and how the delivery
//! ended ([`Outcome`]). The vocabulary the two share, below both (and below
//! `observe`, which counts outcomes and stages), so that deciding stays apart
//! from settling and neither knows the other. No broker types: decisions can
//! be taken, and tested, without RabbitMQ.

mod decision;
mod message;
mod stage;

pub(crate) use decision::{DeadLetterNote, Decision, Outcome};
pub(crate) use message::{HeaderFrame, Message, UnreadableHeaders};
pub(crate) use stage::{Stage, StageMark};
