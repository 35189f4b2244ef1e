//! Servers of a test's own: RabbitMQ nodes (one, or a cluster), a Postgres
//! primary with a streaming standby, PgBouncer and HAProxy, each on ports and
//! in a data directory of its own, started by the test and removed when it
//! is dropped (also when the test fails). A test that stops, kills, fills or
//! reconfigures a server does it to one of these, never to the machine's own
//! RabbitMQ and Postgres, which other work shares.
//!
//! They run from Debian's packages: `rabbitmq-server` (run as root, with a
//! cookie and an empty plugin list of its own), PostgreSQL's `initdb`,
//! `pg_ctl` and `pg_basebackup` (as the `postgres` user, which they require),
//! `pgbouncer` (as `postgres` too: it refuses root) and `haproxy`.
//! `.ci/run` installs the last two.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked: bound and released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A scratch directory, removed on drop; `owner` (a system user) may own it.
pub(crate) struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub(crate) fn new(prefix: &str, owner: Option<&str>) -> Scratch {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", super::unique()));
        std::fs::create_dir_all(&path).expect("scratch directory");
        if let Some(owner) = owner {
            run("chown", &["-R", owner, &path.display().to_string()]);
        }
        Scratch { path }
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until `ready` says yes, or panics naming `what`.
fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tcp_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

// ---------------------------------------------------------------- RabbitMQ

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// One node of a private RabbitMQ.
pub(crate) struct RabbitNode {
    /// `tw-<id>-<n>@localhost`.
    pub name: String,
    pub port: u16,
    dist_port: u16,
    base: PathBuf,
    config: PathBuf,
    process: Option<Child>,
}

/// A private RabbitMQ: one node or a cluster of several, every node with
/// `config` (rabbitmq.conf lines) on top of what the harness sets.
pub(crate) struct PrivateRabbit {
    pub nodes: Vec<RabbitNode>,
    scratch: Scratch,
}

impl PrivateRabbit {
    /// Starts `count` nodes and clusters them (the first is the seed).
    pub(crate) fn start(count: usize, config: &str) -> PrivateRabbit {
        let scratch = Scratch::new("tw-rabbit", None);
        let cookie = scratch.join(".erlang.cookie");
        std::fs::write(
            &cookie,
            format!("TWCOOKIE{}", super::unique().to_uppercase()),
        )
        .expect("cookie");
        run("chmod", &["600", &cookie.display().to_string()]);
        std::fs::write(scratch.join("enabled_plugins"), "[].\n").expect("plugins file");
        let id = super::unique();
        let mut rabbit = PrivateRabbit {
            nodes: Vec::new(),
            scratch,
        };
        for n in 0..count {
            let port = free_port();
            let base = rabbit.scratch.join(&format!("node-{n}"));
            std::fs::create_dir_all(&base).expect("node directory");
            let config_path = base.join("rabbitmq.conf");
            std::fs::write(
                &config_path,
                format!(
                    "listeners.tcp.default = {port}\nloopback_users = none\n\
                     cluster_partition_handling = pause_minority\n{config}\n"
                ),
            )
            .expect("node config");
            let node = RabbitNode {
                name: format!("tw-{id}-{n}@localhost"),
                port,
                dist_port: free_port(),
                base,
                config: config_path,
                process: None,
            };
            rabbit.nodes.push(node);
        }
        for n in 0..count {
            rabbit.boot(n);
        }
        for n in 1..count {
            let node = rabbit.nodes[n].name.clone();
            let seed = rabbit.nodes[0].name.clone();
            assert!(rabbit.ctl(n, &["stop_app"]), "stop_app on {node}");
            assert!(
                rabbit.ctl(n, &["join_cluster", &seed]),
                "{node} joins {seed}"
            );
            assert!(rabbit.ctl(n, &["start_app"]), "start_app on {node}");
        }
        rabbit
    }

    /// Starts node `n` (again) and waits until it serves.
    pub(crate) fn boot(&mut self, n: usize) {
        let home = self.scratch.path.clone();
        let node = &mut self.nodes[n];
        let log = std::fs::File::create(node.base.join("console.log")).expect("console log");
        let child = Command::new(RABBITMQ_SERVER)
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.base.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                home.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", &node.config)
            .env("RABBITMQ_PID_FILE", node.base.join("pid"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server");
        node.process = Some(child);
        let name = node.name.clone();
        let port = node.port;
        wait_until(
            &format!("RabbitMQ node {name} serves"),
            Duration::from_secs(90),
            || self.ctl(n, &["await_startup", "--timeout", "5"]) && tcp_open(port),
        );
    }

    /// `rabbitmqctl -n <node n> <args>`; whether it succeeded.
    pub(crate) fn ctl(&self, n: usize, args: &[&str]) -> bool {
        self.ctl_output(n, args).is_some()
    }

    /// `rabbitmqctl -n <node n> -q <args>`: its output when it succeeded.
    pub(crate) fn ctl_output(&self, n: usize, args: &[&str]) -> Option<String> {
        let output = Command::new(RABBITMQCTL)
            .env("HOME", &self.scratch.path)
            .args(["-n", &self.nodes[n].name, "-q"])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// SIGKILLs node `n` (the Erlang VM), as a crash would.
    pub(crate) fn kill(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        if let Ok(pid) = std::fs::read_to_string(node.base.join("pid")) {
            run("kill", &["-KILL", pid.trim()]);
        }
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = node.port;
        wait_until(
            "the killed node's port closes",
            Duration::from_secs(30),
            || !tcp_open(port),
        );
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `n`.
    pub(crate) fn amqp_url(&self, n: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[n].port)
    }

    /// Every node's URL, comma-separated (the worker's address list).
    pub(crate) fn amqp_urls(&self) -> String {
        (0..self.nodes.len())
            .map(|n| self.amqp_url(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node (index) that leads quorum queue `queue`, by its name.
    pub(crate) fn leader_of(&self, queue: &str) -> Option<usize> {
        (0..self.nodes.len()).find_map(|asked| {
            let listing = self.ctl_output(asked, &["list_queues", "name", "leader"])?;
            let leader = listing.lines().find_map(|line| {
                let (name, leader) = line.split_once(char::is_whitespace)?;
                (name == queue).then(|| leader.trim().to_owned())
            })?;
            self.nodes.iter().position(|n| n.name == leader)
        })
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            if let Ok(pid) = std::fs::read_to_string(self.nodes[n].base.join("pid")) {
                run("kill", &["-KILL", pid.trim()]);
            }
            if let Some(mut child) = self.nodes[n].process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------- Postgres

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One Postgres server of a test's own.
pub(crate) struct PgServer {
    pub port: u16,
    data: PathBuf,
}

impl PgServer {
    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.data.display().to_string();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        as_postgres("pg_ctl", &all)
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.parent().unwrap_or(Path::new("/tmp")).display()
        );
        let log = self.data.with_extension("log").display().to_string();
        assert!(
            self.pg_ctl(&["-o", &options, "-l", &log, "-w", "-t", "60", "start"]),
            "start Postgres on port {} (log: {log})",
            self.port
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

/// A private Postgres: a primary, and optionally a streaming standby of it.
pub(crate) struct PrivatePostgres {
    pub primary: PgServer,
    pub standby: Option<PgServer>,
    _scratch: Scratch,
}

impl PrivatePostgres {
    /// A primary alone.
    pub(crate) fn start() -> PrivatePostgres {
        PrivatePostgres::start_with(false)
    }

    /// A primary and a standby that replicates it synchronously (a commit
    /// returns once the standby has it, so promoting it loses nothing).
    pub(crate) fn with_standby() -> PrivatePostgres {
        PrivatePostgres::start_with(true)
    }

    fn start_with(standby: bool) -> PrivatePostgres {
        let scratch = Scratch::new("tw-postgres", Some("postgres"));
        let primary = PgServer {
            port: free_port(),
            data: scratch.join("primary"),
        };
        let data = primary.data.display().to_string();
        assert!(
            as_postgres("initdb", &["-D", &data, "--auth=trust", "-U", "postgres"]),
            "initdb"
        );
        let mut conf = String::from("fsync = off\nfull_page_writes = off\n");
        if standby {
            conf.push_str(
                "wal_level = replica\nmax_wal_senders = 4\nsynchronous_standby_names = '*'\n",
            );
        }
        append(&primary.data.join("postgresql.conf"), &conf);
        append(
            &primary.data.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        );
        primary.start();
        let standby = standby.then(|| {
            let standby = PgServer {
                port: free_port(),
                data: scratch.join("standby"),
            };
            let port = primary.port.to_string();
            let data = standby.data.display().to_string();
            assert!(
                as_postgres(
                    "pg_basebackup",
                    &[
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port,
                        "-U",
                        "postgres",
                        "-D",
                        &data,
                        "-R",
                        "-X",
                        "stream"
                    ]
                ),
                "pg_basebackup"
            );
            // Promoted, it stands alone: it must not wait for a standby of its own.
            append(
                &standby.data.join("postgresql.conf"),
                "synchronous_standby_names = ''\n",
            );
            standby.start();
            standby
        });
        PrivatePostgres {
            primary,
            standby,
            _scratch: scratch,
        }
    }

    /// Kills the primary at once, as a crash would (`pg_ctl stop -m immediate`).
    pub(crate) fn kill_primary(&self) {
        assert!(
            self.primary.pg_ctl(&["-m", "immediate", "stop"]),
            "kill the primary"
        );
    }

    /// Restarts the primary (a fast shutdown, then a start).
    pub(crate) fn restart_primary(&self) {
        assert!(
            self.primary.pg_ctl(&["-m", "fast", "-w", "stop"]),
            "stop the primary"
        );
        self.primary.start();
    }

    /// Promotes the standby to primary and waits until it accepts writes.
    pub(crate) fn promote_standby(&self) {
        let standby = self.standby.as_ref().expect("a standby");
        assert!(standby.pg_ctl(&["-w", "promote"]), "promote the standby");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        for server in std::iter::once(&self.primary).chain(self.standby.as_ref()) {
            let _ = server.pg_ctl(&["-m", "immediate", "stop"]);
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open to append");
    file.write_all(text.as_bytes()).expect("append");
}

// ---------------------------------------------------------------- PgBouncer

/// A PgBouncer in transaction pooling mode in front of `127.0.0.1:<port>`,
/// trusting every client (as the Postgres behind it does in the tests).
pub(crate) struct PgBouncer {
    pub port: u16,
    process: Child,
    _scratch: Scratch,
}

impl PgBouncer {
    pub(crate) fn start(upstream_port: u16, pool_size: u32) -> PgBouncer {
        let scratch = Scratch::new("tw-pgbouncer", Some("postgres"));
        let port = free_port();
        let config = scratch.join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {auth}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\n\
                 logfile = {log}\npidfile = {pid}\n",
                auth = scratch.join("users.txt").display(),
                log = scratch.join("pgbouncer.log").display(),
                pid = scratch.join("pgbouncer.pid").display(),
            ),
        )
        .expect("pgbouncer.ini");
        std::fs::write(scratch.join("users.txt"), "\"postgres\" \"\"\n").expect("users");
        run(
            "chown",
            &["-R", "postgres", &scratch.path.display().to_string()],
        );
        let process = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "pgbouncer",
                &config.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        wait_until("PgBouncer listens", Duration::from_secs(30), || {
            tcp_open(port)
        });
        PgBouncer {
            port,
            process,
            _scratch: scratch,
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>` through the pooler.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// What PgBouncer logged.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._scratch.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self._scratch.join("pgbouncer.pid")) {
            run("kill", &["-KILL", pid.trim()]);
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

// ---------------------------------------------------------------- HAProxy

/// HAProxy balancing TCP over `backends` (ports on 127.0.0.1), with health
/// checks, as a Kubernetes Service in front of a RabbitMQ cluster would.
pub(crate) struct HaProxy {
    pub port: u16,
    process: Child,
    _scratch: Scratch,
}

impl HaProxy {
    pub(crate) fn start(backends: &[u16]) -> HaProxy {
        let scratch = Scratch::new("tw-haproxy", None);
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!("    server node{i} 127.0.0.1:{b} check inter 500ms fall 2 rise 2\n")
            })
            .collect();
        let config = scratch.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 2000\ndefaults\n    mode tcp\n    timeout connect 2s\n\
                 timeout client 3h\n    timeout server 3h\nfrontend amqp\n    bind 127.0.0.1:{port}\n\
                 default_backend nodes\nbackend nodes\n    balance roundrobin\n{servers}"
            ),
        )
        .expect("haproxy.cfg");
        let process = Command::new("haproxy")
            .args(["-db", "-f", &config.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        wait_until("HAProxy listens", Duration::from_secs(30), || {
            tcp_open(port)
        });
        HaProxy {
            port,
            process,
            _scratch: scratch,
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` through the balancer.
    pub(crate) fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
