//! The docs cannot rot: every ```sql and ```sh block of
//! `docs/integrating.md` and `docs/operating.md` is run here, in file order,
//! against real servers.
//!
//! - SQL blocks run with `psql -v ON_ERROR_STOP=1` as a superuser of a
//!   private Postgres ([`PrivatePostgres`]: the blocks create roles and
//!   databases, which are cluster-wide), in a database the worker's
//!   migrations were applied to. A block with `$1`, `$2` placeholders holds
//!   one statement, run as a prepared statement with text parameters
//!   ([`EXAMPLE_PARAMETERS`]).
//! - Shell blocks run with `bash -euo pipefail`, the built `ticket-worker` on
//!   `PATH`, in a RabbitMQ vhost of their own and a database of their own:
//!   the docs' spellings of the local defaults (`amqp://…/%2f`,
//!   `postgres://…/test`, `rabbitmqctl -p /`) are replaced by the test's.
//!
//! ```console`/```text blocks (output, long-running commands) are not run.
//! The README's SQL blocks are run as well.

use crate::support::private::PrivatePostgres;
use crate::support::{TestDb, amqp_url, unique};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The documents whose blocks are run.
const RUN: [&str; 2] = ["docs/integrating.md", "docs/operating.md"];

/// The README's SQL (its "check it worked" queries) is run too; its shell
/// block is the two Quick start commands, which CI runs as they are.
const RUN_SQL_TOO: [&str; 1] = ["README.md"];

/// What the placeholders of a prepared-statement block are bound to: a user
/// and a device, as in the docs' examples.
const EXAMPLE_PARAMETERS: [&str; 2] = ["cust-42", "A1B2-C3D4"];

/// The docs' spelling of the local broker and database.
const DOC_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DOC_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug)]
struct Block {
    file: &'static str,
    line: usize,
    lang: String,
    text: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced blocks of a Markdown file, with their info string's first word.
fn blocks(file: &'static str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    file,
                    line: n + 1,
                    lang: info.split_whitespace().next().unwrap_or("").to_owned(),
                    text: String::new(),
                });
            }
            (Some(_), Some(_)) => found.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{file}: a code block is not closed");
    found
}

fn of_lang(lang: &str) -> Vec<Block> {
    let files: Vec<&'static str> = match lang {
        "sql" => RUN.iter().chain(RUN_SQL_TOO.iter()).copied().collect(),
        _ => RUN.to_vec(),
    };
    files
        .into_iter()
        .flat_map(blocks)
        .filter(|b| b.lang == lang)
        .collect()
}

fn where_(block: &Block) -> String {
    format!("{}:{}", block.file, block.line)
}

/// Runs `command` with `stdin`, within `limit` (killed past it); `Err`
/// with its output when it failed.
async fn run(command: Command, stdin: &str, limit: Duration) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::from(command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(|e| format!("stdin: {e}"))?;
    }
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("still running after {limit:?}: killed"))?
        .map_err(|e| format!("wait: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The statement of a block with placeholders, as a prepared statement
/// executed with [`EXAMPLE_PARAMETERS`].
fn prepared(block: &Block) -> String {
    let statement: String = block
        .text
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let statement = statement.trim().trim_end_matches(';');
    assert!(
        !statement.contains(';'),
        "{}: a block with placeholders holds one statement",
        where_(block)
    );
    let count = (1..=9)
        .take_while(|n| statement.contains(&format!("${n}")))
        .count();
    let types = vec!["text"; count].join(", ");
    let values: Vec<String> = EXAMPLE_PARAMETERS
        .iter()
        .take(count)
        .map(|v| format!("'{v}'"))
        .collect();
    format!(
        "PREPARE docs_block({types}) AS {statement};\nEXECUTE docs_block({});\nDEALLOCATE docs_block;\n",
        values.join(", ")
    )
}

#[tokio::test]
async fn every_sql_block_of_the_integrating_and_operating_docs_runs() {
    let sql = of_lang("sql");
    assert!(sql.len() >= 5, "the docs' SQL blocks are found: {sql:?}");
    let postgres = PrivatePostgres::start();
    let db = TestDb::create_at(&postgres.primary.url("postgres")).await;
    ticket_worker::storage::MIGRATOR
        .run(&db.pool)
        .await
        .expect("migrate");
    let mut failed = Vec::new();
    for block in &sql {
        let text = if block.text.contains("$1") {
            prepared(block)
        } else {
            block.text.clone()
        };
        let mut psql = Command::new("psql");
        psql.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url,
            "-f",
            "-",
        ]);
        if let Err(e) = run(psql, &text, Duration::from_secs(30)).await {
            failed.push(format!("{}:\n{}\n{e}", where_(block), block.text));
        }
    }
    db.pool.close().await;
    assert!(
        failed.is_empty(),
        "SQL blocks that fail:\n\n{}",
        failed.join("\n\n")
    );
}

/// A RabbitMQ vhost of the test's own, deleted when dropped.
struct Vhost(String);

impl Vhost {
    fn create() -> Vhost {
        let name = format!("docs-{}", unique());
        let ctl = |args: &[&str]| {
            Command::new("rabbitmqctl")
                .args(args)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(
            ctl(&["-q", "add_vhost", &name]),
            "rabbitmqctl add_vhost {name}"
        );
        let vhost = Vhost(name);
        assert!(
            ctl(&[
                "-q",
                "set_permissions",
                "-p",
                &vhost.0,
                "guest",
                ".*",
                ".*",
                ".*"
            ]),
            "rabbitmqctl set_permissions"
        );
        vhost
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.0])
            .stdout(Stdio::null())
            .status();
    }
}

/// The local-default URL of the test's broker, on `vhost`.
fn amqp_url_on(vhost: &str) -> String {
    let base = amqp_url();
    let Some(slash) = base.rfind('/') else {
        panic!("TEST_AMQP_URL has no vhost part: {base}");
    };
    format!("{}/{vhost}", &base[..slash])
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ticket-worker"))
        .parent()
        .expect("the binary's directory")
        .to_path_buf()
}

#[tokio::test]
async fn every_shell_block_of_the_integrating_and_operating_docs_runs() {
    let sh = of_lang("sh");
    assert!(!sh.is_empty(), "the docs' shell blocks are found");
    let vhost = Vhost::create();
    let db = TestDb::migrated().await;
    let amqp = amqp_url_on(&vhost.0);
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin:/usr/sbin:/sbin".into())
    );
    let mut failed = Vec::new();
    for block in &sh {
        let text = block
            .text
            .replace(DOC_AMQP_URL, &amqp)
            .replace(DOC_DATABASE_URL, &db.url)
            .replace(" -p / ", &format!(" -p {} ", vhost.0));
        assert!(
            !text.contains("cargo run"),
            "{}: these docs call the installed binary, `ticket-worker`",
            where_(block)
        );
        let mut bash = Command::new("bash");
        bash.args(["-euo", "pipefail", "-s"])
            .current_dir(root())
            .env("PATH", &path)
            .env("AMQP_URL", &amqp)
            .env("DATABASE_URL", &db.url)
            .env_remove("RUST_LOG");
        if let Err(e) = run(bash, &text, Duration::from_secs(60)).await {
            failed.push(format!("{}:\n{}\n{e}", where_(block), block.text));
        }
    }
    assert!(
        failed.is_empty(),
        "shell blocks that fail:\n\n{}",
        failed.join("\n\n")
    );
}

#[test]
fn a_block_with_placeholders_runs_as_a_prepared_statement() {
    let block = Block {
        file: "docs/x.md",
        line: 1,
        lang: "sql".into(),
        text: "-- newest ticket\nSELECT * FROM current_auth_ticket($1, $2);\n".into(),
    };
    assert_eq!(
        prepared(&block),
        "PREPARE docs_block(text, text) AS SELECT * FROM current_auth_ticket($1, $2);\n\
         EXECUTE docs_block('cust-42', 'A1B2-C3D4');\nDEALLOCATE docs_block;\n"
    );
}
