//! The dead-letter queue, for the operator's `dlq list` and `dlq replay`:
//! what a dead letter says about itself ([`DeadLetter`], [`Reason`]),
//! reading the queue without consuming it ([`Browser`]), and the copy a
//! replay publishes to the login exchange ([`ReplayCopy`]).

mod browse;
mod letter;
mod replay;

pub use browse::{BrowseError, Browser};
pub use letter::{DeadLetter, Reason};
pub use replay::ReplayCopy;
