//! The worker replicas: separate processes of this same binary, each the
//! product's own `ticket-worker run` (`ticket-bench worker-run`, see
//! `main.rs`), or of the `--worker-bin` given (`<it> run`), started with
//! the run's connection settings and
//! otherwise the worker's defaults. Every setting the worker reads is
//! cleared from their environment (found by asking `RunArgs` itself, so
//! settings added later are cleared too), so that a `CONCURRENCY` or
//! `PREFETCH` in the user's shell does not leak in; `--worker-env` sets one
//! on purpose.
//!
//! Each replica runs in a process group of its own, so a Ctrl-C in the
//! terminal reaches the bench only, which then stops them in order. Their
//! stderr (JSON log lines) is read as it comes: the last lines are kept for
//! the error report should a replica die, and the adaptive concurrency
//! limit is picked out of `TapTalk concurrency limit changed` lines.

use clap::Args as _;
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Lines of stderr kept per replica.
const TAIL_LINES: usize = 30;
/// Longest line kept, in bytes.
const LONGEST_LINE: usize = 2_000;

/// The environment of every replica: what to clear, then what to set. It
/// holds secrets (the URLs, the key secret), so it has no `Debug`.
#[derive(Clone, Default)]
pub(crate) struct WorkerEnv {
    pub clear: Vec<String>,
    pub set: Vec<(String, String)>,
    /// The program to run (`--worker-bin`, as `<it> run`); `None`: this
    /// one, as `ticket-bench worker-run`.
    pub program: Option<std::path::PathBuf>,
    /// `--replica-logs`: a folder for each replica's whole log.
    pub logs: Option<std::path::PathBuf>,
}

impl WorkerEnv {
    /// `ours` (connection settings, keys, …) over the worker's defaults,
    /// then `overrides` (`--worker-env`) over both.
    pub(crate) fn new(ours: Vec<(String, String)>, overrides: &[(String, String)]) -> WorkerEnv {
        let mut set = ours;
        for (key, value) in overrides {
            set.retain(|(k, _)| k != key);
            set.push((key.clone(), value.clone()));
        }
        WorkerEnv {
            clear: worker_settings(),
            set,
            program: None,
            logs: None,
        }
    }

    /// The value this environment gives `key`, if any.
    #[cfg(test)]
    fn get(&self, key: &str) -> Option<&str> {
        self.set
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The name of every environment variable `ticket-worker run` reads.
pub(crate) fn worker_settings() -> Vec<String> {
    let command = ticket_worker::config::RunArgs::augment_args(clap::Command::new("run"));
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.extend(["LOG_FORMAT".to_owned(), "RUST_LOG".to_owned()]);
    names
}

/// What a replica's log said that the report wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplicaLog {
    pub tail: VecDeque<String>,
    /// The adaptive concurrency limit, as last reported and at its highest.
    pub limit_last: Option<f64>,
    pub limit_max: Option<f64>,
}

impl ReplicaLog {
    fn take(&mut self, line: &str) {
        if let Some(limit) = limit_of(line) {
            self.limit_last = Some(limit);
            self.limit_max = Some(self.limit_max.map_or(limit, |max| max.max(limit)));
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let mut end = line.len().min(LONGEST_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        self.tail.push_back(line[..end].to_owned());
    }
}

/// The `limit` of a `TapTalk concurrency limit changed` line from the
/// worker (`ticket_worker::…`), in either layout of the JSON formatter.
pub(crate) fn limit_of(line: &str) -> Option<f64> {
    if !line.contains("concurrency limit changed") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields").unwrap_or(&value);
    let message = fields
        .get("message")
        .or_else(|| value.get("message"))?
        .as_str()?;
    let ours = value
        .get("target")
        .and_then(|t| t.as_str())
        .is_none_or(|t| t.starts_with("ticket_worker"));
    if !(ours && message.contains("TapTalk concurrency limit changed")) {
        return None;
    }
    fields.get("limit").or_else(|| value.get("limit"))?.as_f64()
}

/// One running replica.
pub(crate) struct Replica {
    /// 1-based, as the report numbers them.
    pub number: usize,
    pub pid: u32,
    child: Child,
    log: Arc<Mutex<ReplicaLog>>,
    reader: JoinHandle<()>,
}

impl Replica {
    /// Starts `ticket-worker run` as replica `number`.
    pub(crate) fn spawn(number: usize, env: &WorkerEnv) -> anyhow::Result<Replica> {
        let (program, run) = match &env.program {
            Some(program) => (program.clone(), "run"),
            None => (
                std::env::current_exe().map_err(|e| {
                    anyhow::anyhow!(
                        "cannot find this program's own file to start worker replicas: {e}"
                    )
                })?,
                crate::WORKER_RUN,
            ),
        };
        let mut command = Command::new(&program);
        command.arg(run);
        for key in &env.clear {
            command.env_remove(key);
        }
        command
            .envs(env.set.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start worker replica {number} ({} {run}): {e}",
                program.display()
            )
        })?;
        let pid = child.id().unwrap_or_default();
        let log = Arc::new(Mutex::new(ReplicaLog::default()));
        let stderr = child.stderr.take();
        let into = Arc::clone(&log);
        let mut file = match &env.logs {
            Some(dir) => {
                let path = dir.join(format!("replica-{number}.log"));
                Some(std::fs::File::create(&path).map_err(|e| {
                    anyhow::anyhow!("cannot write replica logs to {}: {e}", path.display())
                })?)
            }
            None => None,
        };
        let reader = tokio::spawn(async move {
            let Some(stderr) = stderr else { return };
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = file.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(file, "{}", ticket_worker::observe::scrub(&line));
                }
                lock(&into).take(&line);
            }
        });
        Ok(Replica {
            number,
            pid,
            child,
            log,
            reader,
        })
    }

    /// The exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(crate) fn log(&self) -> ReplicaLog {
        lock(&self.log).clone()
    }

    /// Its last log lines, scrubbed, indented for an error message.
    pub(crate) fn tail_text(&self) -> String {
        let log = self.log();
        if log.tail.is_empty() {
            return "    (it wrote nothing)".into();
        }
        log.tail
            .iter()
            .map(|line| format!("    {}", ticket_worker::observe::scrub(line)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asks it to stop (SIGTERM), as an orchestrator would.
    pub(crate) fn terminate(&self) {
        if self.pid > 0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits for it to exit, killing it after `patience`. `true` if it
    /// stopped by itself.
    pub(crate) async fn wait(&mut self, patience: Duration) -> bool {
        let stopped = tokio::time::timeout(patience, self.child.wait()).await;
        let by_itself = matches!(stopped, Ok(Ok(_)));
        if !by_itself {
            let _ = self.child.kill().await;
        }
        // Its stderr ends with it; the reader then ends too.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.reader).await;
        by_itself
    }
}

/// Stops every replica: SIGTERM to all, then waits for each (killing it
/// after `patience`). Returns the numbers of those that had to be killed.
pub(crate) async fn stop_all(replicas: &mut [Replica], patience: Duration) -> Vec<usize> {
    for replica in replicas.iter() {
        replica.terminate();
    }
    let mut killed = Vec::new();
    for replica in replicas.iter_mut() {
        if !replica.wait(patience).await {
            killed.push(replica.number);
        }
    }
    killed
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_setting_is_cleared() {
        let names = worker_settings();
        for name in [
            "CONCURRENCY",
            "PREFETCH",
            "AMQP_URL",
            "AMQP_URL_FILE",
            "TAPTALK_SERVER_KEY_SECRET_FILE",
            "SKIP_MIGRATIONS",
            "WORK_QUEUE",
            "RUST_LOG",
            "LOG_FORMAT",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let env = WorkerEnv::new(
            vec![("SKIP_MIGRATIONS".into(), "true".into())],
            &[
                ("CONCURRENCY".into(), "256".into()),
                ("SKIP_MIGRATIONS".into(), "false".into()),
            ],
        );
        assert_eq!(env.get("CONCURRENCY"), Some("256"));
        assert_eq!(
            env.get("SKIP_MIGRATIONS"),
            Some("false"),
            "--worker-env wins"
        );
    }

    #[test]
    fn limit_lines_are_picked_out() {
        let flat = r#"{"timestamp":"t","level":"INFO","message":"TapTalk concurrency limit changed","limit":180,"target":"ticket_worker::taptalk::limit"}"#;
        let nested = r#"{"level":"INFO","fields":{"message":"TapTalk concurrency limit changed","limit":12.5},"target":"ticket_worker::limiter"}"#;
        let other =
            r#"{"message":"TapTalk concurrency limit changed","limit":5,"target":"someone_else"}"#;
        assert_eq!(limit_of(flat), Some(180.0));
        assert_eq!(limit_of(nested), Some(12.5));
        assert_eq!(limit_of(other), None);
        assert_eq!(limit_of(r#"{"message":"connected to RabbitMQ"}"#), None);
        assert_eq!(limit_of("concurrency limit changed, not JSON"), None);

        let mut log = ReplicaLog::default();
        for line in [flat, nested] {
            log.take(line);
        }
        assert_eq!((log.limit_last, log.limit_max), (Some(12.5), Some(180.0)));
        for i in 0..100 {
            log.take(&format!("line {i}"));
        }
        assert_eq!(log.tail.len(), TAIL_LINES);
        assert_eq!(log.tail.back().map(String::as_str), Some("line 99"));
    }
}
