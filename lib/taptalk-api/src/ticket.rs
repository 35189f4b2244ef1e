//! The auth ticket TapTalk issues: a bearer credential that must never be
//! printed.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// An auth ticket. `Debug` and `Display` print `[REDACTED]`; the value is only
/// reachable through [`AuthTicket::expose`], which the storage layer calls.
#[derive(Clone)]
pub struct AuthTicket(SecretString);

impl AuthTicket {
    pub fn new(value: String) -> AuthTicket {
        AuthTicket(SecretString::from(value))
    }

    /// The ticket itself. Call it only to hand the value to its one destination.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AuthTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthTicket([REDACTED])")
    }
}

impl PartialEq for AuthTicket {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}
