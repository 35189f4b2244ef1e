//! How many unacknowledged messages RabbitMQ hands one replica: fixed
//! (`PREFETCH=N`), or, by default, following the TapTalk concurrency limit,
//! with room for the events that are in Postgres or being announced rather
//! than at TapTalk, and never below a floor that keeps batches large.
//!
//! RabbitMQ applies a new prefetch only to consumers started after it (and
//! quorum queues have no channel-wide prefetch), so following the limit means
//! starting a new consumer: the intake does that when the prefetch it wants
//! is a quarter away from the one it has, at most once per [`SETTLE`].

use std::str::FromStr;
use std::time::Duration;

/// The fewest messages a replica asks for: what lookups, saves,
/// announcements and acknowledgements hold while TapTalk answers others.
/// Batches grow with what is in flight, and bigger batches cost Postgres and
/// the broker less per event: the benchmark's instant-upstream burst ran at
/// ~2,000 events/s with a prefetch of ~250 and ~3,500/s with ~1,000.
pub(super) const FLOOR: usize = 1024;

/// The least time between two changes of the prefetch.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// `PREFETCH`: `auto` or a number of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// Follow the TapTalk concurrency limit ([`Prefetch::for_limit`]).
    #[default]
    Auto,
    Fixed(u16),
}

impl Prefetch {
    /// The prefetch for a TapTalk concurrency limit of `limit`: the limit
    /// and a quarter more (for the events in the other steps), and at least
    /// [`FLOOR`].
    pub fn for_limit(self, limit: usize) -> u16 {
        match self {
            Prefetch::Fixed(n) => n,
            Prefetch::Auto => {
                let wanted = limit.saturating_add(limit / 4).max(FLOOR);
                u16::try_from(wanted).unwrap_or(u16::MAX)
            }
        }
    }

    /// Whether a consumer with prefetch `current` should give way to one
    /// with `wanted`: it moved by a quarter or more.
    pub fn worth_changing(current: u16, wanted: u16) -> bool {
        let (current, wanted) = (u32::from(current), u32::from(wanted));
        wanted * 4 >= current * 5 || wanted * 4 <= current * 3
    }
}

/// A `PREFETCH` that is neither `auto` nor a number of messages RabbitMQ
/// takes (1 to 65535). The setting's name is said by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be `auto` or a number from 1 to 65535")]
pub struct PrefetchError;

impl FromStr for Prefetch {
    type Err = PrefetchError;

    fn from_str(text: &str) -> Result<Prefetch, PrefetchError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Prefetch::Auto);
        }
        match text.parse::<u16>() {
            Ok(n) if n > 0 => Ok(Prefetch::Fixed(n)),
            _ => Err(PrefetchError),
        }
    }
}

impl std::fmt::Display for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefetch::Auto => f.write_str("auto"),
            Prefetch::Fixed(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_limit_with_headroom() {
        assert_eq!(Prefetch::Auto.for_limit(64), 1024);
        assert_eq!(Prefetch::Auto.for_limit(1024), 1280);
        assert_eq!(Prefetch::Auto.for_limit(2048), 2560);
        assert_eq!(Prefetch::Auto.for_limit(1 << 20), u16::MAX);
        assert_eq!(Prefetch::Fixed(32).for_limit(1024), 32);
    }

    #[test]
    fn small_moves_are_not_worth_a_new_consumer() {
        assert!(!Prefetch::worth_changing(1024, 1100));
        assert!(!Prefetch::worth_changing(1024, 1250));
        assert!(Prefetch::worth_changing(1024, 1280));
        assert!(Prefetch::worth_changing(2048, 1500));
    }

    #[test]
    fn parses_auto_or_a_number() {
        assert_eq!("auto".parse(), Ok(Prefetch::Auto));
        assert_eq!(" AUTO ".parse(), Ok(Prefetch::Auto));
        assert_eq!("32".parse(), Ok(Prefetch::Fixed(32)));
        assert_eq!("0".parse::<Prefetch>(), Err(PrefetchError));
        assert_eq!("70000".parse::<Prefetch>(), Err(PrefetchError));
        assert_eq!("lots".parse::<Prefetch>(), Err(PrefetchError));
        assert_eq!(
            PrefetchError.to_string(),
            "must be `auto` or a number from 1 to 65535"
        );
    }
}
