//! The async runtime every command runs on: Tokio's, with one worker thread
//! unless `TOKIO_WORKER_THREADS` asks for more, and the command on that
//! thread rather than on the process's main one.
//!
//! Why one: the worker's own work per event is small, and what it costs at
//! moderate load is mostly threads waking each other. With one thread, a
//! task woken by another (a delivery handed over by the connection's I/O
//! loop, itself a task here: see patches/README.md) waits in a local queue
//! instead of waking a parked thread: `ticket-bench --case paced` measured
//! less CPU per event with one, `--case instant` the same drain rate within
//! its noise (docs/performance.md). A replica that needs more scales out
//! (more replicas) or sets `TOKIO_WORKER_THREADS`.

use std::process::ExitCode;

/// The setting that chooses how many worker threads the runtime has.
pub const THREADS_SETTING: &str = "TOKIO_WORKER_THREADS";

/// Worker threads when [`THREADS_SETTING`] is not set.
const DEFAULT_THREADS: usize = 1;

/// The most worker threads the setting may ask for.
const MAX_THREADS: usize = 1024;

/// Runs `command` to its exit code on the runtime; a runtime that cannot
/// start (a bad `TOKIO_WORKER_THREADS`, no threads left) is an error line
/// and exit code 2 or 1.
pub fn block_on(command: impl Future<Output = ExitCode> + Send + 'static) -> ExitCode {
    let threads = match threads(std::env::var(THREADS_SETTING).ok().as_deref()) {
        Ok(threads) => threads,
        Err(problem) => {
            eprintln!("ticket-worker: {THREADS_SETTING}: {problem}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!(
                "ticket-worker: cannot start the async runtime with {threads} worker thread(s) ({THREADS_SETTING}): {error}"
            );
            return ExitCode::FAILURE;
        }
    };
    // Spawned, so that the command runs on a worker thread: `block_on`
    // polls its own future on this thread, and every task the command
    // started would then be woken across threads.
    runtime.block_on(async {
        tokio::spawn(command)
            .await
            // A panic was already reported by the panic hook.
            .unwrap_or(ExitCode::FAILURE)
    })
}

/// The worker threads `setting` (the value of [`THREADS_SETTING`]) asks for.
fn threads(setting: Option<&str>) -> Result<usize, String> {
    let Some(value) = setting else {
        return Ok(DEFAULT_THREADS);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{value:?} is not a whole number from 1 to {MAX_THREADS} (the async runtime's worker threads; unset: {DEFAULT_THREADS})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_unless_the_setting_asks_for_more() {
        assert_eq!(threads(None), Ok(1));
        assert_eq!(threads(Some("4")), Ok(4));
        assert_eq!(threads(Some(" 2 ")), Ok(2));
    }

    #[test]
    fn a_bad_thread_count_is_an_error_that_names_the_range_not_a_panic() {
        for bad in ["0", "-1", "two", "", "1025", "99999999999999999999999"] {
            let problem = threads(Some(bad)).expect_err(bad);
            assert!(problem.contains("from 1 to 1024"), "{problem}");
        }
    }
}
