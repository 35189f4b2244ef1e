//! The Kubernetes manifests in `deploy/kubernetes/`, checked against the
//! worker itself, without a cluster: every YAML document of every file is
//! parsed, and what would go wrong only in production is asserted here.
//!
//! - every environment variable (and every ConfigMap key given through
//!   `envFrom`) is a setting of `ticket-worker run`, by the names in its clap
//!   definition, and the worker accepts the values (`Settings::from_args`);
//! - secrets come from files of a mounted Secret (`*_FILE`), never as values;
//! - the probes are `/healthz` and `/readyz` on the port of `HTTP_LISTEN`;
//! - `terminationGracePeriodSeconds` outlasts `SHUTDOWN_GRACE` + 10 s;
//! - KEDA scales this Deployment on the configured work queue;
//! - Services, the PodDisruptionBudget, spreading and the ServiceMonitor
//!   select the pods (or the Service) they are meant to;
//! - a NetworkPolicy lets only named sources reach the pods, and only on
//!   the HTTP port;
//! - the pods run as the image's user, locked down;
//! - resources are set, and the memory limit covers the worst case the
//!   settings and the broker's `max_message_size` allow;
//! - every file is listed in a kustomization, and example Secrets hold
//!   placeholders only.
//!
//! Settings are read from the manifests as the worker reads its environment,
//! so a setting the manifests leave out is checked at the worker's default.
// Test code: times here are the test's own, not input to guard against.
#![allow(clippy::arithmetic_side_effects)]

use clap::{Args, CommandFactory, FromArgMatches};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use ticket_worker::commands::Cli;
use ticket_worker::config::{RunArgs, Settings};
use ticket_worker::taptalk::limit::Concurrency;
use ticket_worker::worker::Prefetch;
use yaml_rust2::{Yaml, YamlLoader};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// Environment variables the worker reads outside its clap definition:
/// `RUST_LOG` by tracing-subscriber's `EnvFilter`, `SSL_CERT_FILE` by the
/// system trust store loader (docs/operating.md, Secrets and TLS).
const READ_OUTSIDE_CLAP: &[&str] = &["RUST_LOG", "SSL_CERT_FILE"];

/// After `SHUTDOWN_GRACE`, the worker waits at most this long for RabbitMQ to
/// confirm closing the connection (docs/scaling.md).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What a replica holds besides the messages: docs/operating.md's Production notes,
/// "about 30 MiB plus twice PREFETCH x the broker's max_message_size".
const BASE_MEMORY: u64 = 30 << 20;

/// The highest peak RSS the benchmarks measured (30-45 MiB with up to ~1,300
/// messages in flight): a memory request below it would under-reserve.
const MEASURED_PEAK_RSS: u64 = 45 << 20;

/// Kubernetes' default when a pod spec leaves it out.
const DEFAULT_TERMINATION_GRACE: i64 = 30;

/// Marks a placeholder in an example Secret.
const PLACEHOLDER: &str = "REPLACE_ME";

// ---------------------------------------------------------------------------
// The manifests

/// One YAML document, and the file it came from (relative to the folder).
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.yaml["metadata"]["name"].as_str().unwrap_or("")
    }
    fn what(&self) -> String {
        format!("{} {:?} ({})", self.kind(), self.name(), self.file)
    }
}

struct Manifests {
    root: PathBuf,
    docs: Vec<Doc>,
}

fn root() -> PathBuf {
    Path::new(CRATE).join("deploy/kubernetes")
}

fn manifests() -> Manifests {
    manifests_in(&root())
}

fn manifests_in(root: &Path) -> Manifests {
    let mut docs = Vec::new();
    for path in yaml_files(root) {
        let file = relative(root, &path);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let parsed =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        for yaml in parsed {
            // An empty document (a trailing `---`, a file of comments).
            if yaml.is_null() {
                continue;
            }
            assert!(
                yaml["apiVersion"].as_str().is_some() && yaml["kind"].as_str().is_some(),
                "{file}: a document without apiVersion and kind"
            );
            if !matches!(yaml["kind"].as_str(), Some("Kustomization" | "Component")) {
                assert!(
                    yaml["metadata"]["name"].as_str().is_some(),
                    "{file}: a {} without metadata.name",
                    yaml["kind"].as_str().unwrap_or("")
                );
            }
            docs.push(Doc {
                file: file.clone(),
                yaml,
            });
        }
    }
    assert!(!docs.is_empty(), "no manifests under {}", root.display());
    Manifests {
        root: root.to_owned(),
        docs,
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            found.extend(yaml_files(&path));
        } else if is_yaml(&path) {
            found.push(path);
        }
    }
    found
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

impl Manifests {
    fn of_kind(&self, kind: &str) -> Vec<&Doc> {
        self.docs.iter().filter(|d| d.kind() == kind).collect()
    }

    fn one(&self, kind: &str) -> &Doc {
        match self.of_kind(kind).as_slice() {
            [one] => one,
            many => panic!(
                "expected exactly one {kind} in deploy/kubernetes/, found {}",
                many.len()
            ),
        }
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Doc> {
        self.docs
            .iter()
            .find(|d| d.kind() == kind && d.name() == name)
    }

    fn deployment(&self) -> &Doc {
        self.one("Deployment")
    }

    fn pod(&self) -> &Yaml {
        &self.deployment().yaml["spec"]["template"]["spec"]
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        string_map(&self.deployment().yaml["spec"]["template"]["metadata"]["labels"])
    }

    /// The worker's container: the Deployment has exactly one.
    fn container(&self) -> &Yaml {
        let containers = list(&self.pod()["containers"]);
        assert_eq!(
            containers.len(),
            1,
            "{}: expected one container, the worker",
            self.deployment().what()
        );
        &containers[0]
    }
}

// ---------------------------------------------------------------------------
// Reading YAML values

/// A scalar as text, whatever YAML typed it as (`"1"`, `1`, `true`).
fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn is_subset(part: &BTreeMap<String, String>, whole: &BTreeMap<String, String>) -> bool {
    part.iter().all(|(k, v)| whole.get(k) == Some(v))
}

/// A Kubernetes byte quantity: `256Mi`, `1Gi`, `500M`, `1048576`.
fn bytes(quantity: &str) -> u64 {
    let units: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            let n: f64 = number
                .parse()
                .unwrap_or_else(|_| panic!("{quantity:?} is not a quantity"));
            return (n * *factor as f64) as u64;
        }
    }
    quantity
        .parse()
        .unwrap_or_else(|_| panic!("{quantity:?} is not a quantity"))
}

/// A Kubernetes CPU quantity in millicores: `500m`, `1`, `1.5`.
fn millicores(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(m) => m
            .parse()
            .unwrap_or_else(|_| panic!("{quantity:?} is not a CPU quantity")),
        None => {
            let cores: f64 = quantity
                .parse()
                .unwrap_or_else(|_| panic!("{quantity:?} is not a CPU quantity"));
            (cores * 1000.0) as u64
        }
    }
}

fn mib(n: u64) -> String {
    format!("{:.0} MiB", n as f64 / f64::from(1 << 20))
}

// ---------------------------------------------------------------------------
// The worker's settings, from its clap definition

struct Setting {
    long: String,
    takes_value: bool,
    /// Its value is a secret (hidden from `--help`, and readable from a
    /// `*_FILE` too): give it as `*_FILE`. (TAPTALK_BASE_URL is hidden
    /// from `--help` in case it carries credentials, but has no file
    /// variant: it is configuration.)
    secret: bool,
}

/// Every environment variable `ticket-worker run` reads through clap: the
/// arguments of [`RunArgs`], and the global ones of the command line
/// (`LOG_FORMAT`).
fn run_settings() -> BTreeMap<String, Setting> {
    let run = RunArgs::augment_args(clap::Command::new("run"));
    let cli = Cli::command();
    let globals = cli.get_arguments().filter(|a| a.is_global_set());
    let mut settings = BTreeMap::new();
    let envs: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for arg in run.get_arguments().chain(globals) {
        let Some(env) = arg.get_env() else { continue };
        settings.insert(
            env.to_string_lossy().into_owned(),
            Setting {
                long: arg.get_long().expect("every setting has a flag").to_owned(),
                takes_value: arg.get_action().takes_values(),
                secret: arg.is_hide_env_values_set()
                    && envs.contains(&format!("{}_FILE", env.to_string_lossy())),
            },
        );
    }
    assert!(
        settings.contains_key("WORK_QUEUE") && settings.contains_key("LOG_FORMAT"),
        "the clap definition did not yield the worker's settings"
    );
    settings
}

/// The values a global argument accepts (`LOG_FORMAT`: text, json).
fn possible_values(env: &str) -> Vec<String> {
    Cli::command()
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .map(|a| {
            a.get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One variable of the container's environment.
#[derive(Debug, Clone)]
enum Value {
    /// Known from the manifests (a literal, or a ConfigMap key).
    Known(String),
    /// Set by Kubernetes at run time (`fieldRef`, `resourceFieldRef`).
    AtRunTime(String),
    /// From a Secret key (`secretKeyRef`, or `envFrom` a Secret).
    FromSecret { secret: String, key: String },
}

/// The container's environment as Kubernetes builds it: `envFrom` first,
/// then `env`, which wins. Each entry says where it came from.
fn environment(m: &Manifests) -> BTreeMap<String, (Value, String)> {
    let container = m.container();
    let mut env = BTreeMap::new();
    for source in list(&container["envFrom"]) {
        let prefix = source["prefix"].as_str().unwrap_or("");
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let map = m.named("ConfigMap", name).unwrap_or_else(|| {
                panic!("envFrom names ConfigMap {name:?}, which deploy/kubernetes/ does not define")
            });
            for (key, value) in string_map(&map.yaml["data"]) {
                let origin = format!("key {key:?} of {}", map.what());
                env.insert(format!("{prefix}{key}"), (Value::Known(value), origin));
            }
        } else if let Some(name) = source["secretRef"]["name"].as_str() {
            let secret = m.named("Secret", name).unwrap_or_else(|| {
                panic!("envFrom names Secret {name:?}, and no example of it shows its keys")
            });
            for key in string_map(&secret.yaml["stringData"]).into_keys() {
                let origin = format!("key {key:?} of {}", secret.what());
                let value = Value::FromSecret {
                    secret: name.to_owned(),
                    key: key.clone(),
                };
                env.insert(format!("{prefix}{key}"), (value, origin));
            }
        } else {
            panic!("an envFrom entry of neither a ConfigMap nor a Secret");
        }
    }
    for var in list(&container["env"]) {
        let name = var["name"].as_str().expect("an env entry without a name");
        let origin = format!("env {name} of {}", m.deployment().what());
        let from = &var["valueFrom"];
        let value = if let Some(value) = text(&var["value"]) {
            Value::Known(value)
        } else if let Some(map) = from["configMapKeyRef"]["name"].as_str() {
            let key = from["configMapKeyRef"]["key"].as_str().unwrap_or("");
            let data = m
                .named("ConfigMap", map)
                .map(|d| string_map(&d.yaml["data"]))
                .unwrap_or_default();
            let value = data.get(key).unwrap_or_else(|| {
                panic!("{origin}: ConfigMap {map:?} has no key {key:?} in deploy/kubernetes/")
            });
            Value::Known(value.clone())
        } else if let Some(secret) = from["secretKeyRef"]["name"].as_str() {
            Value::FromSecret {
                secret: secret.to_owned(),
                key: from["secretKeyRef"]["key"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            }
        } else if !from["fieldRef"].is_badvalue() || !from["resourceFieldRef"].is_badvalue() {
            Value::AtRunTime(format!("{name}-set-by-kubernetes"))
        } else {
            Value::Known(String::new())
        };
        env.insert(name.to_owned(), (value, origin));
    }
    env
}

fn known(env: &BTreeMap<String, (Value, String)>, name: &str) -> Option<String> {
    match env.get(name) {
        Some((Value::Known(v), _)) => Some(v.clone()),
        _ => None,
    }
}

/// Where a file path in the container comes from: the Secret and key that a
/// mounted secret volume puts there.
fn secret_file(m: &Manifests, path: &str) -> Result<(String, String), String> {
    let container = m.container();
    let mount = list(&container["volumeMounts"])
        .iter()
        .find(|mount| {
            mount["mountPath"]
                .as_str()
                .is_some_and(|dir| path.starts_with(&format!("{}/", dir.trim_end_matches('/'))))
        })
        .ok_or_else(|| format!("{path} is not inside any volumeMount of the container"))?;
    let dir = mount["mountPath"].as_str().unwrap_or("");
    let inside = path[dir.trim_end_matches('/').len() + 1..].to_owned();
    let volume_name = mount["name"].as_str().unwrap_or("");
    let volume = list(&m.pod()["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .ok_or_else(|| format!("the volume {volume_name:?} mounted at {dir} is not defined"))?;
    let secret_name = volume["secret"]["secretName"]
        .as_str()
        .ok_or_else(|| format!("{path}: the volume mounted at {dir} is not a Secret"))?;
    let items = list(&volume["secret"]["items"]);
    let key = if items.is_empty() {
        inside.clone()
    } else {
        items
            .iter()
            .find(|item| item["path"].as_str() == Some(inside.as_str()))
            .and_then(|item| item["key"].as_str())
            .ok_or_else(|| {
                format!("{path}: the Secret volume at {dir} projects no item at {inside:?}")
            })?
            .to_owned()
    };
    let example = m.named("Secret", secret_name).ok_or_else(|| {
        format!("{path}: no example of Secret {secret_name:?} shows its keys (components/example-secret)")
    })?;
    if !string_map(&example.yaml["stringData"]).contains_key(&key) {
        return Err(format!("{path}: {} has no key {key:?}", example.what()));
    }
    Ok((secret_name.to_owned(), key))
}

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A value of an example Secret (`stringData`).
fn example_value(m: &Manifests, secret: &str, key: &str) -> Option<String> {
    string_map(&m.named("Secret", secret)?.yaml["stringData"]).remove(key)
}

/// The settings the worker would run with in the container: the manifests'
/// environment, given to `ticket-worker run`'s own parser as flags (the test
/// process's environment is ignored), secret files written from the example
/// Secrets, then checked by `Settings::from_args` like at start.
fn settings_of(m: &Manifests) -> Result<Settings, String> {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kubernetes-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let settings = parse_settings(m, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    settings
}

fn parse_settings(m: &Manifests, scratch: &Path) -> Result<Settings, String> {
    let known_settings = run_settings();
    let mut argv = vec!["run".to_owned()];
    for (name, (value, origin)) in environment(m) {
        let Some(setting) = known_settings.get(&name) else {
            continue;
        };
        if name == "LOG_FORMAT" {
            // Global to the command line, not one of RunArgs: checked on its own.
            continue;
        }
        let mut value = match value {
            Value::Known(v) | Value::AtRunTime(v) => v,
            Value::FromSecret { secret, key } => {
                example_value(m, &secret, &key).ok_or_else(|| {
                    format!("{origin}: no example of Secret {secret:?} with key {key:?}")
                })?
            }
        };
        if name.ends_with("_FILE") {
            // The file the mounted Secret would put there, with the example's content.
            let (secret, key) = secret_file(m, &value).map_err(|e| format!("{name}: {e}"))?;
            let content = example_value(m, &secret, &key).expect("secret_file checked the key");
            let file = scratch.join(format!("{secret}-{key}"));
            std::fs::write(&file, content).map_err(|e| e.to_string())?;
            value = file.to_string_lossy().into_owned();
        }
        if setting.takes_value {
            argv.push(format!("--{}={value}", setting.long));
        } else {
            match value.as_str() {
                "true" => argv.push(format!("--{}", setting.long)),
                "false" => {}
                other => {
                    return Err(format!(
                        "{origin}: {name} must be true or false, not {other:?}"
                    ));
                }
            }
        }
    }
    // The manifests' environment only: none of the test process's.
    let command = RunArgs::augment_args(clap::Command::new("run")).mut_args(|a| a.env(None));
    let matches = command
        .try_get_matches_from(&argv)
        .map_err(|e| format!("`ticket-worker run` refuses the manifests' settings: {e}"))?;
    let args = RunArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Settings::from_args(&args)
        .map_err(|e| format!("the worker refuses the manifests' settings: {e}"))
}

fn settings(m: &Manifests) -> Settings {
    settings_of(m).unwrap_or_else(|e| panic!("{e}"))
}

/// The most messages one replica can hold at once under these settings: a
/// fixed PREFETCH; or, with PREFETCH=auto, the prefetch at the highest
/// TapTalk concurrency, twice over while a new consumer replaces the old one
/// (which only happens when the concurrency adapts).
fn most_messages_held(settings: &Settings) -> u64 {
    match settings.prefetch {
        Prefetch::Fixed(n) => u64::from(n),
        Prefetch::Auto => match settings.limit.concurrency {
            Concurrency::Fixed(n) => u64::from(Prefetch::Auto.for_limit(n.get())),
            Concurrency::Auto => 2 * u64::from(Prefetch::Auto.for_limit(settings.limit.max)),
        },
    }
}

/// `max_message_size` from a RabbitMQ configuration (rabbitmq.conf syntax).
fn max_message_size(conf: &str) -> Option<u64> {
    conf.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "max_message_size").then(|| value.trim().parse().ok())?
    })
}

fn broker_max_message_size() -> u64 {
    let file = Path::new(CRATE).join("deploy/rabbitmq/ticket-worker.conf");
    let conf = std::fs::read_to_string(&file).expect("deploy/rabbitmq/ticket-worker.conf");
    max_message_size(&conf).expect("deploy/rabbitmq/ticket-worker.conf sets max_message_size")
}

/// The UID the image runs as, from the Dockerfile's last stage.
fn image_uid() -> i64 {
    let dockerfile = std::fs::read_to_string(Path::new(CRATE).join("Dockerfile")).unwrap();
    let last_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("the Dockerfile has a FROM");
    let base = last_stage.lines().next().unwrap_or("");
    let user = last_stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile's last stage sets USER");
    let user = user.split(':').next().unwrap_or("").trim();
    if let Ok(uid) = user.parse() {
        return uid;
    }
    // distroless images' /etc/passwd: nonroot:x:65532:65532.
    assert!(
        user == "nonroot" && base.contains("distroless"),
        "cannot tell the UID of USER {user} on {base}; write it as a number in the Dockerfile"
    );
    65532
}

// ---------------------------------------------------------------------------
// The checks

#[test]
fn every_yaml_file_is_listed_in_a_kustomization() {
    check_kustomizations(&root()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_kustomizations(root: &Path) -> Result<(), String> {
    let top = std::fs::read_to_string(root.join("kustomization.yaml"))
        .map_err(|e| format!("deploy/kubernetes/kustomization.yaml: {e}"))?;
    let top_yaml = &YamlLoader::load_from_str(&top).map_err(|e| e.to_string())?[0];
    if top_yaml["kind"].as_str() != Some("Kustomization") {
        return Err("deploy/kubernetes/kustomization.yaml is not a Kustomization".into());
    }
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if is_yaml(&path) {
                files.push(path);
            }
        }
        let here = relative(root, &dir);
        let kustomization = dir.join("kustomization.yaml");
        if files.is_empty() {
            continue;
        }
        if !kustomization.is_file() {
            return Err(format!(
                "deploy/kubernetes/{here} has YAML files but no kustomization.yaml"
            ));
        }
        let yaml = &YamlLoader::load_from_str(&std::fs::read_to_string(&kustomization).unwrap())
            .map_err(|e| format!("{here}/kustomization.yaml: {e}"))?[0];
        let listed: BTreeSet<String> = list(&yaml["resources"])
            .iter()
            .chain(list(&yaml["components"]))
            .filter_map(|e| e.as_str().map(|s| s.trim_end_matches('/').to_owned()))
            .collect();
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name != "kustomization.yaml" && !listed.contains(&name) {
                return Err(format!(
                    "deploy/kubernetes/{} is not listed in {}kustomization.yaml (resources:), so `kubectl apply -k` would leave it out",
                    relative(root, file),
                    if here.is_empty() {
                        String::new()
                    } else {
                        format!("{here}/")
                    }
                ));
            }
        }
        for entry in &listed {
            if !dir.join(entry).exists() {
                return Err(format!(
                    "deploy/kubernetes/{}kustomization.yaml lists {entry}, which does not exist",
                    if here.is_empty() {
                        String::new()
                    } else {
                        format!("{here}/")
                    }
                ));
            }
        }
        if dir != root {
            // A folder of its own is an opt-in Component the top-level
            // kustomization names (listed, or in its comment of opt-ins).
            if yaml["kind"].as_str() != Some("Component") {
                return Err(format!(
                    "{here}/kustomization.yaml: a folder below deploy/kubernetes/ must be a kustomize Component"
                ));
            }
            if !top.contains(&here) {
                return Err(format!(
                    "the component {here} is not named in deploy/kubernetes/kustomization.yaml"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn env_names_are_settings_of_run() {
    check_env_names(&manifests()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_env_names(m: &Manifests) -> Result<(), String> {
    let settings = run_settings();
    for (name, (_, origin)) in environment(m) {
        if !settings.contains_key(&name) && !READ_OUTSIDE_CLAP.contains(&name.as_str()) {
            return Err(format!(
                "{origin}: {name} is not a setting of `ticket-worker run` (the worker would ignore it); its settings: {}",
                settings.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

#[test]
fn the_worker_accepts_the_manifests_settings() {
    settings(&manifests());
}

#[test]
fn secrets_come_from_mounted_secret_files() {
    check_secret_files(&manifests()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_secret_files(m: &Manifests) -> Result<(), String> {
    let settings = run_settings();
    let env = environment(m);
    for (name, setting) in &settings {
        if !setting.secret {
            continue;
        }
        if let Some((_, origin)) = env.get(name) {
            return Err(format!(
                "{origin}: {name} is a secret; give it as {name}_FILE, a file of a mounted Secret"
            ));
        }
        if !env.contains_key(&format!("{name}_FILE")) {
            return Err(format!(
                "the container sets neither {name} nor {name}_FILE; the worker would not start"
            ));
        }
    }
    for (name, (value, origin)) in &env {
        if !name.ends_with("_FILE") || !settings.contains_key(name) {
            continue;
        }
        let Value::Known(path) = value else {
            return Err(format!(
                "{origin}: {name} must be a path written in the manifest"
            ));
        };
        secret_file(m, path).map_err(|e| format!("{origin}: {e}"))?;
    }
    Ok(())
}

#[test]
fn logs_are_json() {
    let m = manifests();
    let format = known(&environment(&m), "LOG_FORMAT");
    assert!(
        possible_values("LOG_FORMAT").contains(&"json".to_owned()),
        "LOG_FORMAT no longer offers json"
    );
    assert_eq!(
        format.as_deref(),
        Some("json"),
        "LOG_FORMAT must be json in the manifests, for the cluster's log collector"
    );
}

#[test]
fn probes_are_healthz_and_readyz_on_the_http_listen_port() {
    let m = manifests();
    check_probes(&m, &settings(&m)).unwrap_or_else(|e| panic!("{e}"));
}

/// A probe's or Service's port, by number or by the container port's name.
fn container_port(m: &Manifests, port: &Yaml) -> Result<i64, String> {
    if let Some(number) = port.as_i64() {
        return Ok(number);
    }
    let name = port
        .as_str()
        .ok_or("a port that is neither a number nor a name")?;
    list(&m.container()["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .ok_or_else(|| format!("the container has no port named {name:?}"))
}

fn check_probes(m: &Manifests, settings: &Settings) -> Result<(), String> {
    let listen = settings
        .http_listen
        .ok_or("HTTP_LISTEN is off, but the probes and /metrics need the HTTP server")?;
    let port = i64::from(listen.port());
    let container = m.container();
    let declared: Vec<i64> = list(&container["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    if !declared.contains(&port) {
        return Err(format!(
            "HTTP_LISTEN listens on {port}, but the container declares ports {declared:?}"
        ));
    }
    for (probe, path, required) in [
        ("livenessProbe", "/healthz", true),
        ("readinessProbe", "/readyz", true),
        // A startup probe on /readyz would restart a replica that waits for
        // a dependency at start, which restarting cannot fix.
        ("startupProbe", "/healthz", false),
    ] {
        let get = &container[probe]["httpGet"];
        if container[probe].is_badvalue() {
            if required {
                return Err(format!("the container has no {probe}"));
            }
            continue;
        }
        if get["path"].as_str() != Some(path) {
            return Err(format!(
                "{probe} must get {path}, not {:?}",
                text(&get["path"]).unwrap_or_default()
            ));
        }
        let probed = container_port(m, &get["port"]).map_err(|e| format!("{probe}: {e}"))?;
        if probed != port {
            return Err(format!(
                "{probe} probes port {probed}, but HTTP_LISTEN listens on {port}"
            ));
        }
        if get["scheme"].as_str().is_some_and(|s| s != "HTTP") {
            return Err(format!("{probe}: the worker serves plain HTTP"));
        }
    }
    for service in m.of_kind("Service") {
        for p in list(&service.yaml["spec"]["ports"]) {
            let target = if p["targetPort"].is_badvalue() {
                &p["port"]
            } else {
                &p["targetPort"]
            };
            let target =
                container_port(m, target).map_err(|e| format!("{}: {e}", service.what()))?;
            if target != port {
                return Err(format!(
                    "{} sends to port {target}, but HTTP_LISTEN listens on {port}",
                    service.what()
                ));
            }
        }
        let annotated = &service.yaml["metadata"]["annotations"]["prometheus.io/port"];
        if let Some(annotated) = text(annotated)
            && annotated != port.to_string()
        {
            return Err(format!(
                "{}: prometheus.io/port says {annotated}, HTTP_LISTEN listens on {port}",
                service.what()
            ));
        }
    }
    Ok(())
}

#[test]
fn the_grace_period_outlasts_shutdown_grace() {
    let m = manifests();
    check_grace(&m, &settings(&m)).unwrap_or_else(|e| panic!("{e}"));
}

fn check_grace(m: &Manifests, settings: &Settings) -> Result<(), String> {
    let period = m.pod()["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(DEFAULT_TERMINATION_GRACE);
    let needed = settings.shutdown_grace + CLOSE_WAIT;
    if u64::try_from(period).unwrap_or(0) <= needed.as_secs() {
        return Err(format!(
            "terminationGracePeriodSeconds is {period}, but the worker needs more than SHUTDOWN_GRACE ({}) + {} s = {} s to stop; killed sooner, its in-flight events go back to the queue",
            humantime::format_duration(settings.shutdown_grace),
            CLOSE_WAIT.as_secs(),
            needed.as_secs()
        ));
    }
    Ok(())
}

#[test]
fn keda_scales_the_deployment_on_the_work_queue() {
    let m = manifests();
    check_keda(&m, &settings(&m)).unwrap_or_else(|e| panic!("{e}"));
}

fn check_keda(m: &Manifests, settings: &Settings) -> Result<(), String> {
    let scaled = m.one("ScaledObject");
    let spec = &scaled.yaml["spec"];
    let deployment = m.deployment();
    let target = &spec["scaleTargetRef"];
    if target["name"].as_str() != Some(deployment.name())
        || target["kind"].as_str().is_some_and(|k| k != "Deployment")
    {
        return Err(format!(
            "{} scales {} {:?}, not the Deployment {:?}",
            scaled.what(),
            text(&target["kind"]).unwrap_or_else(|| "Deployment".into()),
            text(&target["name"]).unwrap_or_default(),
            deployment.name()
        ));
    }
    if !deployment.yaml["spec"]["replicas"].is_badvalue() {
        return Err(format!(
            "{} sets replicas; KEDA owns the count, and every `kubectl apply` would reset it",
            deployment.what()
        ));
    }
    let min = spec["minReplicaCount"].as_i64().unwrap_or(0);
    let max = spec["maxReplicaCount"].as_i64().unwrap_or(100);
    let max_unavailable = m.one("PodDisruptionBudget").yaml["spec"]["maxUnavailable"]
        .as_i64()
        .unwrap_or(0);
    if min <= max_unavailable {
        return Err(format!(
            "minReplicaCount {min} lets a drain (PodDisruptionBudget maxUnavailable {max_unavailable}) stop every replica; a cold start would delay logins"
        ));
    }
    if max < min {
        return Err(format!(
            "maxReplicaCount {max} is below minReplicaCount {min}"
        ));
    }
    let triggers: Vec<&Yaml> = list(&spec["triggers"])
        .iter()
        .filter(|t| t["type"].as_str() == Some("rabbitmq"))
        .collect();
    let [trigger] = triggers.as_slice() else {
        return Err(format!("{} needs one rabbitmq trigger", scaled.what()));
    };
    let meta = &trigger["metadata"];
    let queue = &settings.broker.topology.work_queue;
    if meta["queueName"].as_str() != Some(queue.as_str()) {
        return Err(format!(
            "the KEDA trigger watches queue {:?}, but the workers consume WORK_QUEUE {queue:?}",
            text(&meta["queueName"]).unwrap_or_default()
        ));
    }
    for (key, wanted) in [("mode", "QueueLength"), ("protocol", "amqp")] {
        if meta[key].as_str() != Some(wanted) {
            return Err(format!("the KEDA trigger's {key} must be {wanted}"));
        }
    }
    text(&meta["value"])
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .ok_or("the KEDA trigger needs a value, messages per replica, above 0")?;
    text(&meta["activationValue"])
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 0.0)
        .ok_or("the KEDA trigger needs an activationValue of 0 or more")?;
    if !meta["host"].is_badvalue() {
        return Err("the KEDA trigger's host holds credentials: take it from a Secret through the TriggerAuthentication".into());
    }
    let auth_name = trigger["authenticationRef"]["name"].as_str().unwrap_or("");
    let auth = m.named("TriggerAuthentication", auth_name).ok_or_else(|| {
        format!("the KEDA trigger's authenticationRef names no TriggerAuthentication {auth_name:?}")
    })?;
    let host = list(&auth.yaml["spec"]["secretTargetRef"])
        .iter()
        .find(|r| r["parameter"].as_str() == Some("host"))
        .ok_or_else(|| format!("{} gives no `host` parameter", auth.what()))?;
    let (secret, key) = (
        host["name"].as_str().unwrap_or(""),
        host["key"].as_str().unwrap_or(""),
    );
    let url = example_value(m, secret, key).ok_or_else(|| {
        format!(
            "{}: no example of Secret {secret:?} with key {key:?}",
            auth.what()
        )
    })?;
    if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
        return Err(format!(
            "Secret {secret:?} key {key:?}: KEDA's host must be an AMQP URL, amqp://user:password@host:5672/vhost"
        ));
    }
    Ok(())
}

#[test]
fn a_network_policy_lets_only_the_scraper_reach_the_http_port() {
    let m = manifests();
    let policy = m.one("NetworkPolicy");
    let spec = &policy.yaml["spec"];
    let selector = string_map(&spec["podSelector"]["matchLabels"]);
    assert!(
        !selector.is_empty() && is_subset(&selector, &m.pod_labels()),
        "{} selects the worker's pods ({selector:?})",
        policy.what()
    );
    let types: Vec<String> = list(&spec["policyTypes"]).iter().filter_map(text).collect();
    assert!(
        types.contains(&"Ingress".to_owned()),
        "it restricts ingress: {types:?}"
    );
    let rules = list(&spec["ingress"]);
    assert!(!rules.is_empty(), "an ingress rule for the scraper");
    for rule in rules {
        let from = list(&rule["from"]);
        assert!(
            !from.is_empty(),
            "every rule names its sources (no allow-all)"
        );
        for source in from {
            let named = |s: &Yaml| !string_map(&s["matchLabels"]).is_empty();
            assert!(
                named(&source["podSelector"]) || named(&source["namespaceSelector"]),
                "a source selects by labels, not everything: {source:?}"
            );
            assert!(source["ipBlock"].is_badvalue(), "no address ranges");
        }
        let ports = list(&rule["ports"]);
        assert!(!ports.is_empty(), "every rule names its ports");
        for port in ports {
            assert_eq!(
                text(&port["port"]).as_deref(),
                Some("http"),
                "only the HTTP port"
            );
        }
    }
}

#[test]
fn services_budgets_and_spreading_select_the_pods() {
    check_selectors(&manifests()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_selectors(m: &Manifests) -> Result<(), String> {
    let pod = m.pod_labels();
    let deployment = m.deployment();
    let selects = |what: String, selector: &Yaml| -> Result<(), String> {
        let selector = string_map(selector);
        if selector.is_empty() {
            return Err(format!(
                "{what} has an empty selector (it would select every pod)"
            ));
        }
        if !is_subset(&selector, &pod) {
            return Err(format!(
                "{what} selects {selector:?}, but the Deployment's pods are labelled {pod:?}"
            ));
        }
        Ok(())
    };
    selects(
        deployment.what(),
        &deployment.yaml["spec"]["selector"]["matchLabels"],
    )?;
    let services = m.of_kind("Service");
    if services.is_empty() {
        return Err("no Service for the metrics".into());
    }
    for service in &services {
        selects(service.what(), &service.yaml["spec"]["selector"])?;
        let named_http = list(&service.yaml["spec"]["ports"])
            .iter()
            .any(|p| p["name"].as_str() == Some("http"));
        if !named_http {
            return Err(format!("{} needs a port named http", service.what()));
        }
    }
    let pdb = m.one("PodDisruptionBudget");
    selects(pdb.what(), &pdb.yaml["spec"]["selector"]["matchLabels"])?;
    if pdb.yaml["spec"]["maxUnavailable"].is_badvalue()
        && pdb.yaml["spec"]["minAvailable"].is_badvalue()
    {
        return Err(format!(
            "{} sets neither maxUnavailable nor minAvailable",
            pdb.what()
        ));
    }
    for constraint in list(&m.pod()["topologySpreadConstraints"]) {
        selects(
            format!("a topologySpreadConstraint of {}", deployment.what()),
            &constraint["labelSelector"]["matchLabels"],
        )?;
        if constraint["whenUnsatisfiable"].as_str() != Some("ScheduleAnyway") {
            return Err("topology spreading must be a preference (ScheduleAnyway), or replicas KEDA asks for stay pending".into());
        }
    }
    for monitor in m.of_kind("ServiceMonitor") {
        let selector = string_map(&monitor.yaml["spec"]["selector"]["matchLabels"]);
        let service = services
            .iter()
            .find(|s| is_subset(&selector, &string_map(&s.yaml["metadata"]["labels"])))
            .filter(|_| !selector.is_empty())
            .ok_or_else(|| format!("{} selects no Service ({selector:?})", monitor.what()))?;
        let ports: Vec<String> = list(&service.yaml["spec"]["ports"])
            .iter()
            .filter_map(|p| text(&p["name"]))
            .collect();
        for endpoint in list(&monitor.yaml["spec"]["endpoints"]) {
            let port = text(&endpoint["port"]).unwrap_or_default();
            if !ports.contains(&port) {
                return Err(format!(
                    "{} scrapes port {port:?}; {} has {ports:?}",
                    monitor.what(),
                    service.what()
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn pods_run_as_the_image_user_locked_down() {
    check_security(&manifests(), image_uid()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_security(m: &Manifests, uid: i64) -> Result<(), String> {
    let pod = m.pod();
    let container = m.container();
    let (pod_sc, sc) = (&pod["securityContext"], &container["securityContext"]);
    // The container's value wins over the pod's.
    let effective = |key: &str| -> &Yaml {
        if sc[key].is_badvalue() {
            &pod_sc[key]
        } else {
            &sc[key]
        }
    };
    let expect = |what: &str, ok: bool| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("{}: {what}", m.deployment().what()))
        }
    };
    expect(
        "runAsNonRoot must be true",
        effective("runAsNonRoot").as_bool() == Some(true),
    )?;
    expect(
        &format!("runAsUser must be the image's UID, {uid} (Dockerfile)"),
        effective("runAsUser").as_i64() == Some(uid),
    )?;
    expect(
        "seccompProfile must be RuntimeDefault",
        effective("seccompProfile")["type"].as_str() == Some("RuntimeDefault"),
    )?;
    expect(
        "readOnlyRootFilesystem must be true",
        sc["readOnlyRootFilesystem"].as_bool() == Some(true),
    )?;
    expect(
        "allowPrivilegeEscalation must be false",
        sc["allowPrivilegeEscalation"].as_bool() == Some(false),
    )?;
    expect(
        "privileged must not be set",
        sc["privileged"].as_bool() != Some(true),
    )?;
    expect(
        "capabilities must drop ALL",
        list(&sc["capabilities"]["drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL")),
    )?;
    expect(
        "capabilities must add none",
        list(&sc["capabilities"]["add"]).is_empty(),
    )?;
    expect(
        "automountServiceAccountToken must be false (the worker does not use the API)",
        pod["automountServiceAccountToken"].as_bool() == Some(false),
    )?;
    let account = pod["serviceAccountName"].as_str().unwrap_or("default");
    let account = m.named("ServiceAccount", account).ok_or_else(|| {
        format!("the pods run as ServiceAccount {account:?}, which is not defined")
    })?;
    expect(
        &format!("{} must not automount its token", account.what()),
        account.yaml["automountServiceAccountToken"].as_bool() == Some(false),
    )?;
    // Secret files are root's; the worker's user reads them through the
    // group (fsGroup) or not at all.
    let fs_group = pod_sc["fsGroup"].as_i64();
    for volume in list(&pod["volumes"]) {
        if volume["secret"].is_badvalue() {
            continue;
        }
        let default = volume["secret"]["defaultMode"].as_i64().unwrap_or(0o644);
        let modes = std::iter::once(default).chain(
            list(&volume["secret"]["items"])
                .iter()
                .filter_map(|i| i["mode"].as_i64()),
        );
        for mode in modes {
            let readable = mode & 0o004 != 0 || (mode & 0o040 != 0 && fs_group.is_some());
            expect(
                &format!(
                    "uid {uid} cannot read the files of secret volume {:?} (mode {mode:o}{})",
                    text(&volume["name"]).unwrap_or_default(),
                    if fs_group.is_some() {
                        ""
                    } else {
                        ", no fsGroup"
                    }
                ),
                readable,
            )?;
        }
    }
    Ok(())
}

#[test]
fn resources_are_set_and_the_memory_limit_covers_the_worst_case() {
    let m = manifests();
    check_resources(&m, &settings(&m), broker_max_message_size()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_resources(m: &Manifests, settings: &Settings, message_size: u64) -> Result<(), String> {
    let resources = &m.container()["resources"];
    let quantity = |section: &str, key: &str| -> Result<String, String> {
        text(&resources[section][key])
            .ok_or_else(|| format!("the container sets no resources.{section}.{key}"))
    };
    let (cpu_request, cpu_limit) = (
        millicores(&quantity("requests", "cpu")?),
        millicores(&quantity("limits", "cpu")?),
    );
    let (memory_request, memory_limit) = (
        bytes(&quantity("requests", "memory")?),
        bytes(&quantity("limits", "memory")?),
    );
    if cpu_request > cpu_limit || memory_request > memory_limit {
        return Err("a resource request is above its limit".into());
    }
    if memory_request < MEASURED_PEAK_RSS {
        return Err(format!(
            "the memory request {} is below the peak RSS the benchmarks measured ({})",
            mib(memory_request),
            mib(MEASURED_PEAK_RSS)
        ));
    }
    // Every RabbitmqCluster example must configure the size the bound uses.
    for cluster in m.of_kind("RabbitmqCluster") {
        let conf = cluster.yaml["spec"]["rabbitmq"]["additionalConfig"]
            .as_str()
            .unwrap_or("");
        if max_message_size(conf) != Some(message_size) {
            return Err(format!(
                "{} must set max_message_size = {message_size} in additionalConfig, as deploy/rabbitmq/ticket-worker.conf does (it bounds worker memory)",
                cluster.what()
            ));
        }
    }
    let held = most_messages_held(settings);
    let bound = BASE_MEMORY + 2 * held * message_size;
    if memory_limit < bound {
        return Err(format!(
            "the memory limit {} is below the worst case of these settings: 30 MiB + 2 x {held} messages x max_message_size {message_size} B = {}; pin a lower PREFETCH / CONCURRENCY_MAX or raise the limit",
            mib(memory_limit),
            mib(bound)
        ));
    }
    Ok(())
}

#[test]
fn example_secrets_hold_placeholders_only() {
    check_placeholders(&manifests()).unwrap_or_else(|e| panic!("{e}"));
}

fn check_placeholders(m: &Manifests) -> Result<(), String> {
    let top = std::fs::read_to_string(m.root.join("kustomization.yaml")).unwrap();
    let top = &YamlLoader::load_from_str(&top).map_err(|e| e.to_string())?[0];
    let applied: Vec<String> = list(&top["resources"])
        .iter()
        .chain(list(&top["components"]))
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    for secret in m.of_kind("Secret") {
        if !secret.yaml["data"].is_badvalue() {
            return Err(format!(
                "{}: use stringData with visible placeholders, not data",
                secret.what()
            ));
        }
        for (key, value) in string_map(&secret.yaml["stringData"]) {
            if !value.contains(PLACEHOLDER) {
                return Err(format!(
                    "{}: {key} must be a placeholder containing {PLACEHOLDER}, never a real value",
                    secret.what()
                ));
            }
        }
        if applied
            .iter()
            .any(|entry| Path::new(&secret.file).starts_with(entry))
        {
            return Err(format!(
                "{} is applied by default: `kubectl apply -k` would overwrite the real Secret with placeholders",
                secret.what()
            ));
        }
    }
    // No credentials in plain settings either.
    for (name, (value, origin)) in environment(m) {
        if let Value::Known(value) = value {
            let userinfo = value
                .split_once("://")
                .and_then(|(_, rest)| rest.split('/').next())
                .is_some_and(|authority| authority.contains('@'));
            if userinfo {
                return Err(format!(
                    "{origin}: {name} holds a URL with credentials; put it in a Secret"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_image_is_built_from_everything_the_build_reads() {
    // Every path Cargo.toml builds from (the package's own files, the
    // workspace's members, and the patched crates of [patch.crates-io]) must
    // be copied into the build
    // stage, or the image fails to build (or someone drops the patch).
    let dockerfile =
        std::fs::read_to_string(Path::new(CRATE).join("Dockerfile")).expect("the Dockerfile");
    let copied: BTreeSet<String> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len().saturating_sub(1)]
                .iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let manifest =
        std::fs::read_to_string(Path::new(CRATE).join("Cargo.toml")).expect("Cargo.toml");
    let mut needed: BTreeSet<String> =
        ["Cargo.toml", "Cargo.lock", "build.rs", "src", "migrations"]
            .map(str::to_owned)
            .into();
    for line in manifest.lines() {
        // Cargo loads every member of the workspace, built or not.
        if let Some(list) = line.trim().strip_prefix("members = [") {
            for member in list.trim_end_matches(']').split(',') {
                let member = member.trim().trim_matches('"');
                let top = member.split('/').next().unwrap_or_default();
                if !top.is_empty() && top != "." {
                    needed.insert(top.to_owned());
                }
            }
        }
        if let Some(rest) = line.split("path = \"").nth(1) {
            let path = rest.split('"').next().unwrap_or_default();
            let top = path.split('/').next().unwrap_or_default();
            needed.insert(top.to_owned());
        }
    }
    let missing: Vec<&String> = needed.iter().filter(|n| !copied.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile does not copy {missing:?} (copies {copied:?})"
    );
}

#[test]
fn the_image_carries_no_stand_in() {
    // The TapTalk stand-in and the commands that drive it (demo,
    // fake-taptalk) are behind the `stand-in` feature: the production image
    // builds the product alone, without its default features.
    let dockerfile =
        std::fs::read_to_string(Path::new(CRATE).join("Dockerfile")).expect("the Dockerfile");
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile runs cargo build");
    assert!(
        build.contains("--no-default-features") && build.contains("-p taptalk-ticket-worker"),
        "the image must build the product alone, without the stand-in: {build}"
    );
    let manifest =
        std::fs::read_to_string(Path::new(CRATE).join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("stand-in = [\"dep:fake-taptalk\"]")
            && manifest.contains("optional = true"),
        "the stand-in is an optional dependency of the product"
    );
}
