//! A message as the pipeline sees it: its bytes, its envelope, and what the
//! broker code read from its properties (a retry count it can trust, whether
//! its headers fill the frame). No broker types, so decisions can be tested
//! and taken without a broker.

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
}

/// The size of a message's header frame, against the connection's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFrame {
    pub bytes: usize,
    pub frame_max: u32,
}
