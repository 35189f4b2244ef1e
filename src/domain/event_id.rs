//! `EventId`: the idempotency key of a login event.

use std::fmt;

/// The identity of one login event: the body's `eventID`, or the AMQP
/// `message_id` when the body has none. One event yields at most one ticket.
///
/// Non-empty, at most [`EventId::MAX_BYTES`] bytes of UTF-8 (it travels as the
/// AMQP `correlation_id`, a short string), no control characters (Postgres
/// `text` cannot hold NUL, and ids end up in headers and logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    pub const MAX_BYTES: usize = 255;

    /// Parses an id, saying what is wrong with it otherwise.
    pub fn parse(raw: &str) -> Result<EventId, EventIdError> {
        if raw.trim().is_empty() {
            return Err(EventIdError::Empty);
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(EventIdError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(EventIdError::ControlCharacter);
        }
        Ok(EventId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a text is not an [`EventId`]. Worded as the end of a sentence that
/// starts with the id's name (`eventID must not be empty`); it never quotes
/// the id, which may be anything a publisher sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    /// Empty, or only whitespace.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`EventId::MAX_BYTES`] bytes of UTF-8.
    #[error("must be at most {} bytes", EventId::MAX_BYTES)]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        assert_eq!(
            EventId::parse("b7d4-1").map(|id| id.to_string()),
            Ok("b7d4-1".into())
        );
        assert!(EventId::parse(&"x".repeat(EventId::MAX_BYTES)).is_ok());
        assert!(EventId::parse(&"é".repeat(EventId::MAX_BYTES / 2 + 1)).is_err());
    }

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(EventId::parse(""), Err(EventIdError::Empty));
        assert_eq!(EventId::parse("   "), Err(EventIdError::Empty));
        assert_eq!(
            EventId::parse(&"x".repeat(EventId::MAX_BYTES + 1)),
            Err(EventIdError::TooLong)
        );
        assert_eq!(EventId::parse("a\0b"), Err(EventIdError::ControlCharacter));
        assert_eq!(EventId::parse("a\nb"), Err(EventIdError::ControlCharacter));
    }

    #[test]
    fn each_refusal_reads_after_the_ids_name() {
        assert_eq!(EventIdError::Empty.to_string(), "must not be empty");
        assert_eq!(
            EventIdError::TooLong.to_string(),
            "must be at most 255 bytes"
        );
        assert_eq!(
            EventIdError::ControlCharacter.to_string(),
            "must not contain control characters"
        );
    }
}
