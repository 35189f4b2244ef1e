//! The progress line on stderr, about once a second while a phase runs:
//! events published and answered, the answers of the last second, and the
//! time since the phase's first publish. At a terminal it rewrites one
//! line; into a file or pipe it writes one line each time.

use super::ledger::Ledger;
use super::table::thousands;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;
use ticket_worker::time::Later;

pub(crate) struct Progress {
    terminal: bool,
    /// When the rate was last taken, and the answers then.
    last: Option<(Duration, usize)>,
    rate: f64,
    written: bool,
}

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            rate: 0.0,
            written: false,
        }
    }

    /// Writes the line for `ledger` now.
    pub(crate) fn show(&mut self, phase: &str, ledger: &Ledger) {
        let now = ledger.now();
        let answered = ledger.answered_count();
        // The answers per second since the last line, taken over at least
        // half a second (the last line of a phase may come sooner).
        let since = ledger
            .first_published()
            .map(|first| now.saturating_sub(Duration::from_micros(first)))
            .unwrap_or_default();
        let (then, before) = self.last.unwrap_or((now.saturating_sub(since), 0));
        if now >= then.later_by(Duration::from_millis(500)) {
            self.rate =
                answered.saturating_sub(before) as f64 / now.saturating_sub(then).as_secs_f64();
            self.last = Some((now, answered));
        }
        let rate = self.rate;
        let line = format!(
            "  [{phase}] published {}/{}  answered {} (ready {}, failed {})  {}/s  {:.1} s",
            thousands(ledger.published_count.load(Ordering::Relaxed) as f64),
            thousands(ledger.events() as f64),
            thousands(answered as f64),
            thousands(ledger.ready.load(Ordering::Relaxed) as f64),
            thousands(ledger.failed.load(Ordering::Relaxed) as f64),
            thousands(rate),
            since.as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.written = true;
    }

    /// Ends the rewritten line.
    pub(crate) fn finish(&mut self) {
        if self.terminal && self.written {
            eprintln!();
        }
        self.written = false;
        self.last = None;
        self.rate = 0.0;
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
