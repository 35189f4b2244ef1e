//! The alert rules and the Grafana dashboard that `deploy/` ships, checked
//! as an operator's Prometheus would use them: `promtool check rules` and
//! `promtool test rules` (with the series of
//! `deploy/prometheus/ticket-worker.rules.test.yml`), the PrometheusRule of
//! the Kubernetes manifests holding the same groups, and a real Prometheus
//! (Debian's `prometheus` package; `.ci/run` installs it) scraping a real
//! worker: every dashboard query and every alert expression names only
//! series that worker exports, and evaluates without error.

use crate::support::private::{Scratch, free_port};
use crate::support::*;
use fake_taptalk::Knobs;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn rules_file() -> PathBuf {
    deploy().join("prometheus/ticket-worker.rules.yml")
}

fn load_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove(0)
}

/// Runs a `promtool` subcommand in `deploy/prometheus`, panicking with its
/// output unless it succeeds.
fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("run promtool (Debian's prometheus package): {e}"));
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "ticket-worker.rules.yml"]);
    promtool(&["test", "rules", "ticket-worker.rules.test.yml"]);
}

#[test]
fn the_prometheus_rule_of_the_manifests_holds_the_same_groups() {
    let rules = load_yaml(&rules_file());
    let resource =
        load_yaml(&deploy().join("kubernetes/components/prometheus-rule/prometheusrule.yaml"));
    assert_eq!(resource["kind"].as_str(), Some("PrometheusRule"));
    assert!(!rules["groups"].is_badvalue(), "the rules file has groups");
    assert!(
        rules["groups"] == resource["spec"]["groups"],
        "components/prometheus-rule/prometheusrule.yaml must hold deploy/prometheus/ticket-worker.rules.yml's groups unchanged"
    );
}

/// Every alert expression of the rules file.
fn alert_expressions() -> Vec<(String, String)> {
    let rules = load_yaml(&rules_file());
    let mut found = Vec::new();
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name").to_owned();
            let expr = rule["expr"].as_str().expect("an expression").to_owned();
            found.push((name, expr));
        }
    }
    assert!(found.len() >= 6, "{found:?}");
    found
}

/// Every query of the dashboard, with Grafana's `$__rate_interval` as a
/// Prometheus duration.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = deploy().join("grafana/ticket-worker.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            found.push((title.to_owned(), expr.replace("$__rate_interval", "1m")));
        }
    }
    found
}

/// The series names an expression reads: identifiers outside strings, label
/// matchers, ranges and grouping lists that are neither functions nor
/// keywords.
fn series_names(expr: &str) -> BTreeSet<String> {
    // Grouping clauses: the list in parentheses after them is of labels.
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations too: `sum by (le) (…)` puts its grouping before `(`.
    const KEYWORDS: [&str; 19] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "Inf",
        "NaN",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Strings, `{…}` and `[…]` out.
    let mut plain = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                plain.push(' ');
            }
            '{' => {
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                }
                plain.push(' ');
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                plain.push(' ');
            }
            _ => plain.push(c),
        }
    }
    let bytes = plain.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"_:".contains(&bytes[i]))
            {
                i += 1;
            }
            let word = &plain[start..i];
            let rest = plain[i..].trim_start();
            if GROUPING.contains(&word) {
                skip_list = rest.starts_with('(');
            } else if !rest.starts_with('(')
                && !KEYWORDS.contains(&word)
                && !GROUPING.contains(&word)
            {
                names.insert(word.to_owned());
            }
        } else if c.is_ascii_digit() || c == b'.' {
            // A number, a duration or an exponent: not a name.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else if c == b'(' && skip_list {
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
            skip_list = false;
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn series_names_are_read_from_promql_as_prometheus_would() {
    let names = series_names(
        r#"histogram_quantile(0.99, sum by (le, instance) (rate(ticket_worker_login_to_ready_seconds_bucket{le!="+Inf",x=~"a|b"}[5m] offset 1h))) > 5e2 and on (instance) up{job="ticket-worker"} == bool 1"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "ticket_worker_login_to_ready_seconds_bucket".to_owned(),
            "up".to_owned()
        ])
    );
}

/// A Prometheus of the test's own, killed and removed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _scratch: Scratch,
}

impl Prometheus {
    /// Starts Prometheus on `deploy/prometheus/prometheus.yml`, scraping and
    /// evaluating every second, with `target` as the worker's address.
    fn start(target: &str) -> Prometheus {
        let scratch = Scratch::new("ticket-worker-prometheus", None);
        let config = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml"))
            .expect("read the example prometheus.yml");
        assert!(config.contains("'127.0.0.1:8080'") && config.contains("15s"));
        let config = config
            .replace("'127.0.0.1:8080'", &format!("'{target}'"))
            .replace("15s", "1s")
            .replace(
                "- ticket-worker.rules.yml",
                &format!("- {}", rules_file().display()),
            );
        let config_path = scratch.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start prometheus (Debian's prometheus package): {e}"));
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _scratch: scratch,
        }
    }

    /// GET an API path; `None` until Prometheus answers.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.url), query).ok()?;
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_what_a_running_worker_exports() {
    let h = Harness::new(Knobs::default()).await;
    let mut settings = h.settings();
    settings.http_listen = Some(([127, 0, 0, 1], 0).into());
    let worker = TestWorker::spawn(settings);
    let target = worker
        .http_url()
        .await
        .trim_start_matches("http://")
        .to_owned();
    // Some traffic, a bad event among it, so that every family has moved.
    let mut bad = login_event(&format!("bad-{}", unique()));
    bad["userPlatform"] = "windows-phone".into();
    h.broker.publish_event(&bad).await;
    h.broker
        .publish_event(&login_event(&format!("user-{}", unique())))
        .await;
    h.tap
        .wait_for("ticket.ready", 1, Duration::from_secs(30))
        .await;
    h.tap
        .wait_for("ticket.failed", 1, Duration::from_secs(30))
        .await;

    let prometheus = Prometheus::start(&target);
    let names: BTreeSet<String> = eventually(
        Duration::from_secs(60),
        "Prometheus scrapes the worker",
        || async {
            let up = prometheus
                .api("/api/v1/query", &[("query", r#"up{job="ticket-worker"}"#)])
                .await?;
            let value = up["data"]["result"][0]["value"][1].as_str()?;
            if value != "1" {
                return None;
            }
            let names = prometheus.api("/api/v1/label/__name__/values", &[]).await?;
            let names: BTreeSet<String> = names["data"]
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            names
                .contains("ticket_worker_events_total")
                .then_some(names)
        },
    )
    .await;
    // Only the worker is scraped: what Prometheus knows is the worker's own
    // series, `up` and the scrape's own.
    let exported: BTreeSet<&String> = names
        .iter()
        .filter(|n| n.starts_with("ticket_worker_") || n.as_str() == "up")
        .collect();
    assert!(
        exported.len() > 20,
        "the worker's families reached Prometheus: {names:?}"
    );
    let unknown = |expr: &str| -> Vec<String> {
        series_names(expr)
            .into_iter()
            .filter(|n| !exported.contains(n))
            .collect()
    };
    // The check itself can fail: a misspelt series is caught.
    assert_eq!(
        unknown("sum(rate(ticket_worker_event_total[5m]))"),
        ["ticket_worker_event_total"]
    );

    let mut problems = Vec::new();
    let every = alert_expressions()
        .into_iter()
        .map(|(name, expr)| (format!("alert {name}"), expr))
        .chain(
            dashboard_queries()
                .into_iter()
                .map(|(title, expr)| (format!("panel {title:?}"), expr)),
        );
    for (what, expr) in every {
        if series_names(&expr).is_empty() {
            problems.push(format!("{what}: reads no series: {expr}"));
        }
        let missing = unknown(&expr);
        if !missing.is_empty() {
            problems.push(format!(
                "{what}: {missing:?} not exported by the worker: {expr}"
            ));
        }
        let answer = prometheus
            .api("/api/v1/query", &[("query", expr.as_str())])
            .await
            .unwrap_or_default();
        if answer["status"].as_str() != Some("success") {
            problems.push(format!("{what}: Prometheus says {answer}: {expr}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Prometheus itself loads and evaluates every rule without error.
    let expected = alert_expressions().len();
    let rules = eventually(
        Duration::from_secs(30),
        "Prometheus evaluates every rule",
        || async {
            let answer = prometheus.api("/api/v1/rules", &[]).await?;
            let rules: Vec<Value> = answer["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
            (rules.len() == expected && evaluated).then_some(rules)
        },
    )
    .await;
    for rule in &rules {
        assert_eq!(
            rule["health"].as_str(),
            Some("ok"),
            "rule {}: {}",
            rule["name"],
            rule["lastError"]
        );
    }
    worker.stop().await;
}
