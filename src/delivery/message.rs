//! A message as the pipeline sees it: its bytes, its envelope, and what the
//! broker code read from its properties (a retry count it can trust, whether
//! its headers fill the frame). No broker types, so decisions can be tested
//! and taken without a broker.

use super::StageMark;
use crate::events::Envelope;

/// One message to decide on.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub body: &'a [u8],
    pub envelope: Envelope<'a>,
    /// Times the worker put this message back for its own failures; 0 unless
    /// the message is a copy the worker itself put back (a publisher's count
    /// is never believed).
    pub retries: u64,
    /// Set when its header frame nearly fills the broker's `frame_max`, so
    /// that a redelivery would no longer fit.
    pub oversized_headers: Option<HeaderFrame>,
    /// Set when its headers nest or number beyond what the AMQP parser
    /// decodes in full (see [`crate::broker::header_limits`]).
    pub unreadable_headers: Option<UnreadableHeaders>,
    /// Where its handling is, for a delivery that stays in flight too long.
    pub stage: &'a StageMark,
}

/// Why a message's headers cannot be read in full. The broker's
/// [`header_limits`](crate::broker::header_limits), which knows how far the
/// AMQP parser reads, finds these and words them (`Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadableHeaders {
    /// `header` nests tables or arrays down to `levels` (its own value: 1).
    TooDeep { header: String, levels: usize },
    /// The headers hold this many values, nested ones included.
    TooMany { values: usize },
}

/// The size of a message's header frame, against the connection's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFrame {
    pub bytes: usize,
    pub frame_max: u32,
}
