//! monitoring/: the Prometheus, Alertmanager and Grafana files, checked by
//! the real tools from Debian's packages (`prometheus`: promtool and
//! prometheus; `prometheus-alertmanager`: amtool and the server), and end to
//! end: a real Prometheus scrapes `probe serve --sandbox`, the sandbox bot
//! goes offline, and a real Alertmanager posts the alert, then its
//! resolution, to the sandbox's Discord webhook.
//!
//! The system and database rules, with node_exporter, postgres_exporter and
//! a real PostgreSQL, are in monitoring_db.rs.
//!
//! A missing binary fails the test with a message to run scripts/test.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{Reply, TestServer, refused_addr};

// ---------------------------------------------------------------- helpers

/// A binary from Debian's packages: its Debian path, else from PATH.
pub(crate) fn tool(name: &str, package: &str) -> PathBuf {
    let debian = Path::new("/usr/bin").join(name);
    if debian.is_file() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (Debian package `{package}`): run scripts/test.sh, \
                 which installs it"
            )
        })
}

pub(crate) fn promtool() -> PathBuf {
    tool("promtool", "prometheus")
}

fn amtool() -> PathBuf {
    tool("amtool", "prometheus-alertmanager")
}

pub(crate) fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a command to completion: (success, stdout + stderr).
pub(crate) fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub(crate) fn run_ok(program: &Path, args: &[&str]) -> String {
    let (ok, text) = run(program, args);
    assert!(
        ok,
        "{} {} failed:\n{text}",
        program.display(),
        args.join(" ")
    );
    text
}

/// `text` with `from` replaced by `to`; `from` must be there, so a changed
/// production file cannot silently make a test copy diverge.
pub(crate) fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "expected {from:?} in the file being adapted for the test"
    );
    text.replace(from, to)
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "twi-probe-mon-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `monitoring/alertmanager_templates/` into `dir`, as deployed
/// beside alertmanager.yml.
fn copy_templates(dir: &Path) {
    let to = dir.join("alertmanager_templates");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(monitoring().join("alertmanager_templates")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// monitoring/alertmanager.yml deployed into `dir` the Debian 0.25 way: the
/// webhook URL in a file, the config rendered by render-alertmanager.sh.
/// `adapt` changes the committed text first (test timings).
fn deploy_alertmanager(
    dir: &TempDir,
    webhook_url: &str,
    adapt: impl Fn(&str) -> String,
) -> PathBuf {
    let url_file = dir.write("discord-webhook-url", &format!("{webhook_url}\n"));
    let committed = read(&monitoring().join("alertmanager.yml"));
    let source = adapt(&replace(
        &committed,
        "/etc/prometheus/discord-webhook-url",
        url_file.to_str().unwrap(),
    ));
    let source_path = dir.write("alertmanager.source.yml", &source);
    let rendered = run_ok(
        &monitoring().join("render-alertmanager.sh"),
        &[source_path.to_str().unwrap()],
    );
    copy_templates(dir.path());
    dir.write("alertmanager.yml", &rendered)
}

/// The `.yml` files of a monitoring/ directory (rules/, tests/), sorted.
fn yml_files(dir: &str) -> Vec<PathBuf> {
    let dir = monitoring().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .yml files in {}", dir.display());
    files
}

/// Every alerting rule of every file in monitoring/rules/.
fn alert_rules() -> Vec<Value> {
    yml_files("rules")
        .iter()
        .flat_map(|file| {
            yaml(file)["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .flat_map(|g| g["rules"].as_array().expect("rules").clone())
                .collect::<Vec<_>>()
        })
        .filter(|r| r.get("alert").is_some())
        .collect()
}

pub(crate) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The labels a rule gives its alerts, plus its alertname.
fn rule_labels(alertname: &str, severity: &str) -> BTreeMap<String, String> {
    let rule = alert_rules()
        .into_iter()
        .find(|r| s(&r["alert"]) == alertname && s(&r["labels"]["severity"]) == severity)
        .unwrap_or_else(|| panic!("no {severity} rule for {alertname}"));
    let mut labels: BTreeMap<String, String> = rule["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), s(v).to_string()))
        .collect();
    labels.insert("alertname".into(), alertname.into());
    labels
}

// ---------------------------------------------------------------- Prometheus

#[test]
fn prometheus_configs_pass_promtool_check_config() {
    // Every file in rules/ is loaded.
    let rule_files = format!("{} rule files found", yml_files("rules").len());
    for file in ["prometheus.yml", "prometheus.local.yml"] {
        let path = monitoring().join(file);
        let out = run_ok(&promtool(), &["check", "config", path.to_str().unwrap()]);
        assert!(out.contains(&rule_files), "{file}:\n{out}");
    }
}

#[test]
fn the_local_prometheus_config_differs_only_in_addresses() {
    let strip = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let production = strip(&read(&monitoring().join("prometheus.yml")));
    let local = read(&monitoring().join("prometheus.local.yml"));
    let local = replace(&local, "'127.0.0.1:9093'", "'alertmanager:9093'");
    let local = replace(&local, "'127.0.0.1:8000'", "'bot:8000'");
    let local = replace(&local, "'127.0.0.1:9477'", "'prober:9477'");
    // One machine runs the bot and the database.
    let local = replace(&local, "['127.0.0.1:9100']", "['bot:9100', 'db:9100']");
    let local = replace(&local, "'127.0.0.1:9187'", "'db:9187'");
    assert_eq!(strip(&local), production);
    let config = yaml(&monitoring().join("prometheus.yml"));
    let jobs: Vec<&str> = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| s(&j["job_name"]))
        .collect();
    assert_eq!(jobs, ["twi_bot_shard", "twi_probe", "node", "postgres"]);
    // Both exporters' series carry `host`, which HostDown and its
    // inhibition match on.
    for job in &config["scrape_configs"].as_array().unwrap()[2..] {
        let relabel = &job["relabel_configs"][0];
        assert_eq!(s(&relabel["target_label"]), "host", "{job}");
        assert_eq!(relabel["source_labels"], json!(["__address__"]), "{job}");
    }
    assert_eq!(
        s(&config["global"]["scrape_interval"]),
        "15s",
        "the guide's interval"
    );
}

#[test]
fn alert_rules_pass_promtool_check_rules_and_their_unit_tests() {
    for rules in yml_files("rules") {
        let out = run_ok(&promtool(), &["check", "rules", rules.to_str().unwrap()]);
        assert!(out.contains("SUCCESS"), "{out}");
    }
    for tests in yml_files("tests") {
        let out = run_ok(&promtool(), &["test", "rules", tests.to_str().unwrap()]);
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn every_alert_is_labelled_documented_and_unit_tested_both_ways() {
    let runbook = read(&monitoring().join("RUNBOOK.md"));
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let rules = alert_rules();
    assert!(rules.len() >= 13, "{} alert rules", rules.len());
    for rule in &rules {
        let name = s(&rule["alert"]);
        let labels = &rule["labels"];
        let severity = s(&labels["severity"]);
        let priority = s(&labels["priority"]);
        // The guide's incident levels: critical thresholds are P1 (outage)
        // or P2 (major functionality impaired), warnings P3 or P4.
        match severity {
            "critical" => assert!(["P1", "P2"].contains(&priority), "{name}: {priority}"),
            "warning" => assert!(["P3", "P4"].contains(&priority), "{name}: {priority}"),
            other => panic!("{name}: severity {other:?}"),
        }
        let signal = s(&labels["signal"]);
        assert!(
            [
                "probe",
                "bot_exporter",
                "prober",
                "system",
                "database",
                "exporter"
            ]
            .contains(&signal),
            "{name}: signal {signal:?}"
        );
        let annotations = &rule["annotations"];
        let (summary, description) = (s(&annotations["summary"]), s(&annotations["description"]));
        assert!(!summary.is_empty() && !description.is_empty(), "{name}");
        assert!(
            description.contains("$value") || description.contains("$labels"),
            "{name}: the description says nothing about what fired: {description}"
        );
        if signal == "probe" {
            assert!(
                summary.contains("$labels.probe"),
                "{name}: names no probe: {summary}"
            );
        }
        // node_exporter's and postgres_exporter's alerts name the machine
        // or the database they are about.
        if ["system", "database", "exporter"].contains(&signal) {
            assert!(
                ["$labels.host", "$labels.datname", "$labels.instance"]
                    .iter()
                    .any(|l| summary.contains(l)),
                "{name}: names no host or database: {summary}"
            );
        }
        // The operator's one base URL (an external label in
        // prometheus.yml) plus the alert's section; nothing without it.
        assert_eq!(
            s(&annotations["runbook_url"]),
            format!(
                "{{{{ with $externalLabels.runbook_base_url }}}}{{{{ . }}}}#{}{{{{ end }}}}",
                name.to_lowercase()
            ),
            "{name}"
        );
        assert!(
            headings.contains(name),
            "RUNBOOK.md has no \"## {name}\" section"
        );
    }

    // The guide's thresholds, where the rules put them.
    let expr_of = |name: &str, severity: &str| -> String {
        rules
            .iter()
            .filter(|r| s(&r["alert"]) == name && s(&r["labels"]["severity"]) == severity)
            .map(|r| {
                s(&r["expr"])
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" ; ")
    };
    for (name, severity, threshold) in [
        (
            "CommandLatencyHigh",
            "warning",
            "probe_latency_seconds_bucket{kind=\"command\"}[10m])) > 1",
        ),
        (
            "CommandLatencyHigh",
            "critical",
            "probe_latency_seconds_bucket{kind=\"command\"}[10m])) > 3",
        ),
        ("ProbeSuccessRateLow", "warning", "< 0.95"),
        ("ProbeSuccessRateLow", "critical", "< 0.90"),
        ("BotCommandLatencyHigh", "warning", "> 1"),
        ("BotCommandLatencyHigh", "critical", "> 3"),
        ("BotCommandSuccessRateLow", "warning", "< 0.95"),
        (
            "SlashCommandLatencyHigh",
            "warning",
            "rate(probe_interaction_latency_seconds_bucket[10m])))) > 1",
        ),
        (
            "SlashCommandLatencyHigh",
            "critical",
            "rate(probe_interaction_latency_seconds_bucket[10m])))) > 3",
        ),
        ("SlashCommandSuccessRateLow", "warning", "< 0.95"),
        ("SlashCommandSuccessRateLow", "critical", "< 0.90"),
        ("BotCommandSuccessRateLow", "critical", "< 0.90"),
        (
            "BotRestarted",
            "critical",
            "probe_target_uptime_seconds < 600",
        ),
        (
            "BotGatewayDisconnected",
            "critical",
            "discord_gateway_connected{job=\"twi_bot_shard\"} < 1",
        ),
        ("BotDown", "critical", "up{job=\"twi_bot_shard\"} == 0"),
        (
            "BotRateLimitHeadroomLow",
            "warning",
            "discord_ratelimit_remaining_ratio{job=\"twi_bot_shard\"} < 0.30",
        ),
        (
            "BotRateLimitHeadroomLow",
            "critical",
            "discord_ratelimit_remaining_ratio{job=\"twi_bot_shard\"} < 0.10",
        ),
        (
            "BotEventRateHigh",
            "warning",
            "rate(discord_events_total{job=\"twi_bot_shard\"}[5m])) > 100",
        ),
        (
            "BotEventRateHigh",
            "critical",
            "rate(discord_events_total{job=\"twi_bot_shard\"}[5m])) > 200",
        ),
        (
            "BotOffline",
            "critical",
            "probe_target_presence_online == 0",
        ),
        // The system and database tables (rules/system_database.yml).
        ("HostCpuUsageHigh", "warning", "[5m])) > 0.70"),
        ("HostCpuUsageHigh", "critical", "[5m])) > 0.90"),
        ("HostMemoryUsageHigh", "warning", "> 0.80"),
        ("HostMemoryUsageHigh", "critical", "> 0.95"),
        ("HostDiskSpaceLow", "warning", ") < 0.20"),
        ("HostDiskSpaceLow", "critical", ") < 0.10"),
        ("HostNetworkUsageHigh", "warning", "> 0.80"),
        ("HostNetworkUsageHigh", "critical", "> 0.95"),
        ("PostgresQueryLatencyHigh", "warning", "> 0.1"),
        ("PostgresQueryLatencyHigh", "critical", "> 0.5"),
        (
            "PostgresConnectionsHigh",
            "warning",
            "/ pg_settings_max_connections > 0.70",
        ),
        (
            "PostgresConnectionsHigh",
            "critical",
            "/ pg_settings_max_connections > 0.90",
        ),
        ("DatabasePoolUsageHigh", "warning", "> 0.70"),
        ("DatabasePoolUsageHigh", "critical", "> 0.90"),
        (
            "PostgresDatabaseSizeHigh",
            "warning",
            "twi:database_capacity_bytes > 0.80",
        ),
        (
            "PostgresDatabaseSizeHigh",
            "critical",
            "twi:database_capacity_bytes > 0.95",
        ),
        ("PostgresIndexHitRatioLow", "warning", "< 0.90"),
        ("PostgresIndexHitRatioLow", "critical", "< 0.80"),
        ("PostgresTransactionRateHigh", "warning", "> 100"),
        ("PostgresTransactionRateHigh", "critical", "> 200"),
        ("PostgresDown", "critical", "pg_up == 0"),
        (
            "PostgresExporterDown",
            "critical",
            "up{job=\"postgres\"} == 0",
        ),
        ("NodeExporterDown", "critical", "up{job=\"node\"} == 0"),
    ] {
        assert!(
            expr_of(name, severity).contains(threshold),
            "{name} ({severity}) should test {threshold:?}: {}",
            expr_of(name, severity)
        );
    }
    // Every warning excludes its critical condition in PromQL (the unit
    // tests show it): a bound at the critical threshold, or `unless` it.
    let threshold = Regex::new(r"[<>] ([0-9.]+)").unwrap();
    for warning in rules
        .iter()
        .filter(|r| s(&r["labels"]["severity"]) == "warning")
    {
        let name = s(&warning["alert"]);
        let critical = expr_of(name, "critical");
        if critical.is_empty() {
            continue;
        }
        let crit = threshold
            .captures_iter(critical.split(" unless ").next().unwrap())
            .last()
            .unwrap_or_else(|| panic!("{name}: no threshold in {critical}"))[1]
            .to_string();
        let expr = expr_of(name, "warning");
        assert!(
            expr.contains(&format!("<= {crit}"))
                || expr.contains(&format!(">= {crit}"))
                || (expr.contains("unless") && expr.contains(&format!("< {crit}"))),
            "{name}: the warning does not exclude the critical threshold {crit}: {expr}"
        );
    }
    for rule in rules
        .iter()
        .filter(|r| ["BotDown", "BotOffline", "BotGatewayDisconnected"].contains(&s(&r["alert"])))
    {
        assert_eq!(s(&rule["for"]), "1m", "the guide: down for 1 minute");
    }
    // Success rates never count inconclusive runs.
    for rule in rules
        .iter()
        .filter(|r| s(&r["alert"]) == "ProbeSuccessRateLow")
    {
        assert!(s(&rule["expr"]).contains("outcome=~\"success|failure|timeout|unreachable\""));
        assert!(!s(&rule["expr"]).contains("inconclusive"));
    }

    // Each (alert, severity) fires in some unit test; each alert also has a
    // unit test where it stays quiet.
    let tests: Vec<Value> = yml_files("tests")
        .iter()
        .flat_map(|f| yaml(f)["tests"].as_array().unwrap().clone())
        .collect();
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in &tests {
        for case in test["alert_rule_test"].as_array().unwrap() {
            let name = s(&case["alertname"]).to_string();
            let expected = case["exp_alerts"].as_array().unwrap();
            if expected.is_empty() {
                quiet.insert(name.clone());
            }
            for alert in expected {
                let labels = &alert["exp_labels"];
                assert_eq!(s(&labels["alertname"]), name);
                fired.insert((name.clone(), s(&labels["severity"]).to_string()));
            }
        }
    }
    for rule in &rules {
        let name = s(&rule["alert"]).to_string();
        let severity = s(&rule["labels"]["severity"]).to_string();
        assert!(
            quiet.contains(&name),
            "no unit test where {name} stays quiet"
        );
        assert!(
            fired.contains(&(name.clone(), severity.clone())),
            "no unit test where {name} fires as {severity}"
        );
    }
}

// ---------------------------------------------------------------- Alertmanager

/// The README's local recipe for Alertmanager without root: its shell lines
/// (all but starting Alertmanager), run as written with HOME in a temporary
/// directory, give a config that amtool accepts and that posts to the URL.
#[test]
fn the_readme_local_alertmanager_recipe_works_without_root() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let after = readme
        .split("render into a directory that has the templates beside it:\n```sh\n")
        .nth(1)
        .expect("the README's local Alertmanager recipe");
    let script: String = after
        .split("\n```")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("prometheus-alertmanager "))
        .map(|l| format!("{l}\n"))
        .collect();
    let home = TempDir::new("home");
    let url = "http://127.0.0.1:9/api/v10/webhooks/1/abc";
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", home.path())
        .env("WEBHOOK_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = home.path().join("twi-am/alertmanager.yml");
    let check = run_ok(&amtool(), &["check-config", config.to_str().unwrap()]);
    assert!(check.contains("1 templates"), "{check}");
    assert!(read(&config).contains(&format!("webhook_url: '{url}'")));
}

#[test]
fn alertmanager_config_keeps_the_guide_timing_and_the_webhook_out_of_the_file() {
    let config = yaml(&monitoring().join("alertmanager.yml"));
    let route = &config["route"];
    assert_eq!(route["group_by"], json!(["alertname"]));
    assert_eq!(s(&route["group_wait"]), "30s");
    assert_eq!(s(&route["group_interval"]), "5m");
    assert_eq!(s(&route["repeat_interval"]), "4h");
    let receivers = config["receivers"].as_array().unwrap();
    assert_eq!(receivers.len(), 1);
    assert_eq!(s(&route["receiver"]), s(&receivers[0]["name"]));
    assert!(
        receivers[0].get("webhook_configs").is_none(),
        "Discord rejects the generic webhook JSON"
    );
    let discord = &receivers[0]["discord_configs"][0];
    assert_eq!(discord["send_resolved"], json!(true));
    assert_eq!(
        s(&discord["webhook_url_file"]),
        "/etc/prometheus/discord-webhook-url"
    );
    assert!(discord.get("webhook_url").is_none(), "the URL is a secret");
    assert_eq!(config["inhibit_rules"].as_array().unwrap().len(), 5);

    // Debian 12's amtool (0.25) does not know webhook_url_file; a newer one
    // accepts the committed file as it is. Either way nothing else is wrong.
    let committed = monitoring().join("alertmanager.yml");
    let (ok, out) = run(&amtool(), &["check-config", committed.to_str().unwrap()]);
    if !ok {
        assert!(
            out.contains("field webhook_url_file not found"),
            "the committed alertmanager.yml has another problem:\n{out}"
        );
    }

    // Deployed the 0.25 way: rendered, it passes amtool, and differs from
    // the committed file in the webhook line alone.
    let dir = TempDir::new("amcheck");
    let rendered = deploy_alertmanager(
        &dir,
        "https://discord.com/api/webhooks/1/abc_DEF-123",
        |t| t.to_string(),
    );
    let out = run_ok(&amtool(), &["check-config", rendered.to_str().unwrap()]);
    assert!(
        out.contains("5 inhibit rules") && out.contains("1 templates"),
        "{out}"
    );
    let source = read(&dir.path().join("alertmanager.source.yml"));
    let rendered = read(&rendered);
    let differ: Vec<(&str, &str)> = source
        .lines()
        .zip(rendered.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(source.lines().count(), rendered.lines().count());
    assert_eq!(
        differ,
        [(
            format!(
                "      - webhook_url_file: {}",
                dir.path().join("discord-webhook-url").display()
            )
            .as_str(),
            "      - webhook_url: 'https://discord.com/api/webhooks/1/abc_DEF-123'"
        )]
    );

    // A file without a URL renders nothing.
    let bad = TempDir::new("ambad");
    let url_file = bad.write("url", "not a url\n");
    let source = bad.write(
        "am.yml",
        &replace(
            &read(&committed),
            "/etc/prometheus/discord-webhook-url",
            url_file.to_str().unwrap(),
        ),
    );
    let out = std::process::Command::new(monitoring().join("render-alertmanager.sh"))
        .arg(&source)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "a failed render writes nothing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold one http(s) URL"));
}

/// A process started for a test, killed when dropped; its output goes to a
/// log file shown when the test fails.
pub(crate) struct Daemon {
    _child: tokio::process::Child,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> Daemon {
        Daemon::spawn_with_env(name, program, args, &[], dir)
    }

    pub(crate) fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Daemon { _child: child, log }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Polls until `check` gives a value (bounded): there is no event to await
/// across these process boundaries, only HTTP APIs to ask.
pub(crate) async fn poll<T, F, Fut>(
    what: &str,
    limit: Duration,
    explain: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            explain()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

/// A real Alertmanager on 127.0.0.1 with `config`.
async fn start_alertmanager(dir: &TempDir, config: &Path) -> (Daemon, String) {
    let addr = refused_addr().await;
    let am = Daemon::spawn(
        "alertmanager",
        &tool("prometheus-alertmanager", "prometheus-alertmanager"),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.path().join("am-data").display()),
            format!("--web.listen-address={addr}"),
            // No HA cluster: it would listen on 9094.
            "--cluster.listen-address=".into(),
        ],
        dir.path(),
    );
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    poll(
        "Alertmanager ready",
        Duration::from_secs(30),
        || am.log_tail(),
        || async {
            let r = client.get(format!("{base}/-/ready")).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    (am, base)
}

#[tokio::test]
async fn alertmanager_inhibits_warnings_and_what_a_down_or_blind_prober_would_fake() {
    let dir = TempDir::new("inhibit");
    let sink = TestServer::start(Reply::ok("")).await;
    let config = deploy_alertmanager(&dir, &sink.url("/page"), |t| t.to_string());
    let (am, base) = start_alertmanager(&dir, &config).await;

    // Alerts labelled exactly as the rules label them, on three probers.
    let alert = |name: &str, severity: &str, extra: &[(&str, &str)]| -> Value {
        let mut labels = rule_labels(name, severity);
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        json!({"labels": labels, "annotations": {"summary": "test"}})
    };
    let on = |instance: &'static str, probe: &'static str, kind: &'static str| {
        vec![
            ("job", "twi_probe"),
            ("instance", instance),
            ("probe", probe),
            ("kind", kind),
        ]
    };
    let bot = [("job", "twi_bot_shard"), ("instance", "bot:8000")];
    // The exporters of a host, labelled as prometheus.yml labels them.
    let node = |host: &'static str| -> Vec<(&'static str, &'static str)> {
        let instance: &'static str = format!("{host}:9100").leak();
        vec![("job", "node"), ("instance", instance), ("host", host)]
    };
    let pg = |host: &'static str| -> Vec<(&'static str, &'static str)> {
        let instance: &'static str = format!("{host}:9187").leak();
        vec![("job", "postgres"), ("instance", instance), ("host", host)]
    };
    // (alert, expected to be inhibited)
    let cases = [
        // Critical inhibits the warning of the same condition and probe...
        (
            alert(
                "CommandLatencyHigh",
                "warning",
                &on("a:9477", "help", "command"),
            ),
            true,
        ),
        (
            alert(
                "CommandLatencyHigh",
                "critical",
                &on("a:9477", "help", "command"),
            ),
            false,
        ),
        // ...and of no other probe.
        (
            alert(
                "ProbeSuccessRateLow",
                "warning",
                &on("a:9477", "presence", "presence"),
            ),
            false,
        ),
        (
            alert(
                "BotOffline",
                "critical",
                &on("a:9477", "presence", "presence"),
            ),
            false,
        ),
        // A blind prober fakes its Discord probes' alerts, not its exporter
        // probe's, and not the bot's own exporter's.
        (
            alert(
                "ProberBlind",
                "critical",
                &[("job", "twi_probe"), ("instance", "b:9477")],
            ),
            false,
        ),
        (
            alert(
                "BotOffline",
                "critical",
                &on("b:9477", "presence", "presence"),
            ),
            true,
        ),
        (
            alert(
                "ProbeSuccessRateLow",
                "critical",
                &on("b:9477", "help", "command"),
            ),
            true,
        ),
        (
            alert("ProbesStale", "warning", &on("b:9477", "help", "command")),
            true,
        ),
        (
            alert(
                "ProbeSuccessRateLow",
                "critical",
                &on("b:9477", "bot-exporter", "exporter"),
            ),
            false,
        ),
        (alert("BotGatewayDisconnected", "critical", &bot), false),
        // A prober that is not scraped vouches for none of its probes.
        (
            alert(
                "ProberDown",
                "critical",
                &[("job", "twi_probe"), ("instance", "c:9477")],
            ),
            false,
        ),
        (
            alert(
                "ProbeSuccessRateLow",
                "critical",
                &on("c:9477", "bot-exporter", "exporter"),
            ),
            true,
        ),
        (
            alert(
                "BotRestarted",
                "critical",
                &on("c:9477", "bot-exporter", "exporter"),
            ),
            true,
        ),
        // A database host that is down: its system, database and exporter
        // alerts are held back; another host's are not.
        (alert("HostDown", "critical", &[("host", "db")]), false),
        (
            alert("PostgresConnectionsHigh", "critical", &pg("db")),
            true,
        ),
        (alert("HostCpuUsageHigh", "warning", &node("db")), true),
        (alert("NodeExporterDown", "critical", &node("db")), true),
        (alert("HostCpuUsageHigh", "critical", &node("bot")), false),
        // PostgreSQL unreachable: its other alerts are held back, not the
        // bot's own view of its pool.
        (alert("PostgresDown", "critical", &pg("db2")), false),
        (
            alert(
                "PostgresQueryLatencyHigh",
                "warning",
                &[pg("db2"), vec![("datname", "twi")]].concat(),
            ),
            true,
        ),
        (alert("DatabasePoolUsageHigh", "critical", &bot), false),
        // Critical inhibits warning for the same filesystem only.
        (
            alert(
                "HostDiskSpaceLow",
                "critical",
                &[node("c"), vec![("mountpoint", "/data")]].concat(),
            ),
            false,
        ),
        (
            alert(
                "HostDiskSpaceLow",
                "warning",
                &[node("c"), vec![("mountpoint", "/data")]].concat(),
            ),
            true,
        ),
        (
            alert(
                "HostDiskSpaceLow",
                "warning",
                &[node("c"), vec![("mountpoint", "/")]].concat(),
            ),
            false,
        ),
    ];
    let client = reqwest::Client::new();
    let posted: Vec<Value> = cases.iter().map(|(a, _)| a.clone()).collect();
    let r = client
        .post(format!("{base}/api/v2/alerts"))
        .json(&posted)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    let key = |labels: &Value| -> String {
        [
            "alertname",
            "severity",
            "instance",
            "probe",
            "host",
            "datname",
            "mountpoint",
        ]
        .iter()
        .map(|k| s(&labels[*k]).to_string())
        .collect::<Vec<_>>()
        .join("/")
    };
    let expected: BTreeMap<String, bool> = cases
        .iter()
        .map(|(a, inhibited)| (key(&a["labels"]), *inhibited))
        .collect();
    let last = std::sync::Mutex::new(String::new());
    poll(
        "Alertmanager's inhibition as designed",
        Duration::from_secs(30),
        || format!("{}\n{}", last.lock().unwrap(), am.log_tail()),
        || async {
            let alerts = get_json(&client, &format!("{base}/api/v2/alerts")).await?;
            let seen: BTreeMap<String, bool> = alerts
                .as_array()?
                .iter()
                .map(|a| {
                    let inhibited = !a["status"]["inhibitedBy"]
                        .as_array()
                        .is_none_or(|v| v.is_empty());
                    (key(&a["labels"]), inhibited)
                })
                .collect();
            *last.lock().unwrap() = format!("expected {expected:#?}\nseen {seen:#?}");
            (seen == expected).then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------- Grafana

/// Every panel (rows' nested panels too) of a dashboard.
fn all_panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p.clone());
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter().cloned());
        }
    }
    out
}

/// Whether a dashboard query reads node_exporter or postgres_exporter (the
/// end-to-end test in monitoring_db.rs checks those; the one here the rest).
pub(crate) fn reads_system_or_database(expr: &str) -> bool {
    Regex::new(r"\b(node|pg)_[a-z]|\btwi:")
        .unwrap()
        .is_match(expr)
}

/// Every PromQL expression of the dashboards, with Grafana's variables
/// replaced by concrete values: (dashboard file, panel title, expression).
pub(crate) fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = monitoring().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let dashboard: Value = serde_json::from_str(&read(&file)).unwrap();
        for panel in all_panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = s(&target["expr"])
                    .replace("${probe}", ".*")
                    .replace("$probe", ".*")
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                    .replace("$__range", "1h");
                assert!(!expr.contains('$'), "{name}: unknown variable in {expr}");
                out.push((name.clone(), s(&panel["title"]).to_string(), expr));
            }
        }
    }
    out
}

#[test]
fn grafana_dashboards_are_importable_and_every_query_is_valid_promql() {
    for entry in std::fs::read_dir(monitoring().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.display();
        assert!(
            !s(&dashboard["uid"]).is_empty() && !s(&dashboard["title"]).is_empty(),
            "{name}"
        );
        assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36, "{name}");
        assert!(
            dashboard.get("id").is_none_or(Value::is_null),
            "{name}: an id ties it to one Grafana"
        );
        let vars = dashboard["templating"]["list"].as_array().unwrap();
        let ds = vars
            .iter()
            .find(|v| s(&v["name"]) == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(
            (s(&ds["type"]), s(&ds["query"])),
            ("datasource", "prometheus")
        );
        for v in vars.iter().filter(|v| s(&v["type"]) == "query") {
            assert_eq!(
                s(&v["datasource"]["uid"]),
                "${datasource}",
                "{name}: variable {}",
                v["name"]
            );
        }
        let mut ids = BTreeSet::new();
        for panel in all_panels(&dashboard) {
            let title = s(&panel["title"]);
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: duplicate id at {title}"
            );
            assert!(panel["gridPos"]["w"].as_u64().is_some(), "{name}: {title}");
            if s(&panel["type"]) == "row" {
                continue;
            }
            assert_eq!(
                s(&panel["datasource"]["uid"]),
                "${datasource}",
                "{name}: {title}"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title} has no query");
            for t in targets {
                assert_eq!(
                    s(&t["datasource"]["uid"]),
                    "${datasource}",
                    "{name}: {title}"
                );
                assert!(!s(&t["expr"]).trim().is_empty(), "{name}: {title}");
            }
        }
    }

    // Every expression, checked by promtool's PromQL parser as a recording
    // rule (a JSON document is YAML).
    let queries = dashboard_queries();
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, _, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let dir = TempDir::new("dash");
    let file = dir.write(
        "dashboard_queries.yml",
        &serde_json::to_string_pretty(&json!({"groups": [{"name": "dashboards", "rules": rules}]}))
            .unwrap(),
    );
    let (ok, out) = run(&promtool(), &["check", "rules", file.to_str().unwrap()]);
    assert!(
        ok && out.contains(&format!("{} rules found", queries.len())),
        "{out}\n{queries:#?}"
    );

    // Provisioning.
    let prov = monitoring().join("grafana/provisioning");
    let ds = yaml(&prov.join("datasources/twi-bot-shard.yml"));
    assert_eq!(ds["apiVersion"], json!(1));
    assert_eq!(s(&ds["datasources"][0]["type"]), "prometheus");
    let dash = yaml(&prov.join("dashboards/twi-bot-shard.yml"));
    assert_eq!(dash["apiVersion"], json!(1));
    assert_eq!(s(&dash["providers"][0]["type"]), "file");
    assert!(!s(&dash["providers"][0]["options"]["path"]).is_empty());
}

// ---------------------------------------------------------------- end to end

/// `probe serve --sandbox` with the shipped probes on short intervals.
struct Prober {
    _child: tokio::process::Child,
    metrics_addr: String,
    control_url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Prober {
    async fn start(dir: &TempDir) -> Prober {
        let shipped = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("probes.yaml"));
        let quick = replace(&shipped, "every: 1m", "every: 3s");
        let quick = replace(&quick, "every: 30s", "every: 1s");
        let quick = replace(&quick, "timeout: 10s", "timeout: 2s");
        let quick = replace(&quick, "timeout: 5s", "timeout: 900ms");
        dir.write("probes.yaml", &quick);
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(["serve", "--sandbox", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove("PROBE_CONFIG")
            .env_remove("PROBER_DISCORD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut control_url, mut metrics_addr) = (None, None);
        while metrics_addr.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("probe serve --sandbox starts in time")
                .unwrap()
                .expect("probe serve printed where it listens");
            if line.starts_with("sandbox: Discord stand-in at ") {
                let rest = line.split("(control ").nth(1).expect("the control URL");
                control_url = Some(rest.split(')').next().unwrap().to_string());
            }
            if let Some(rest) = line.strip_prefix("serving http://") {
                metrics_addr = Some(rest.split('/').next().unwrap().to_string());
            }
        }
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        // Keep draining stderr (the child must never block on a full pipe).
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = keep.lock().unwrap();
                l.push(line);
                let excess = l.len().saturating_sub(40);
                l.drain(..excess);
            }
        });
        Prober {
            _child: child,
            metrics_addr: metrics_addr.unwrap(),
            control_url: control_url.expect("the sandbox line comes before the serving line"),
            log,
        }
    }

    fn log_tail(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Prometheus' instant query: the result vector, or the error it reported.
pub(crate) async fn prom_query(
    client: &reqwest::Client,
    base: &str,
    expr: &str,
) -> Result<Vec<Value>, String> {
    let r = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if s(&body["status"]) != "success" {
        return Err(format!("{}: {}", s(&body["errorType"]), s(&body["error"])));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

#[tokio::test]
async fn an_offline_bot_reaches_discord_through_real_prometheus_and_alertmanager_and_resolves() {
    // Fail at once, with the message, when a server is missing.
    let prometheus_bin = tool("prometheus", "prometheus");
    tool("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = TempDir::new("e2e");
    let client = reqwest::Client::new();

    // The prober and its sandbox (the Discord stand-in with the simulated bot).
    let prober = Prober::start(&dir).await;
    let control = prober.control_url.clone();
    let describe = get_json(&client, &format!("{control}/describe"))
        .await
        .expect("GET {control_url}/describe");
    // A steady bot: the only alerts are the ones this test causes.
    let r = client
        .post(format!("{control}/bot/behaviour"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let webhook_url = s(&describe["webhook_url"]).to_string();
    let webhook_id = webhook_url.rsplit('/').nth(1).unwrap().to_string();
    let exporter = s(&describe["exporter_url"])
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let api_base = s(&describe["api_base"]).to_string();
    let prober_token = describe["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| s(&a["name"]) == "prober")
        .map(|a| s(&a["token"]).to_string())
        .unwrap();
    let channel = s(&describe["guilds"][0]["channels"][0]["id"]).to_string();

    // Alertmanager: the production file, rendered as on Debian, with the
    // guide's 30s / 5m cut to 1s / 2s.
    let am_config = deploy_alertmanager(&dir, &webhook_url, |t| {
        let t = replace(t, "group_wait: 30s", "group_wait: 1s");
        let t = replace(&t, "group_interval: 5m", "group_interval: 2s");
        replace(&t, "repeat_interval: 4h", "repeat_interval: 1h")
    });
    let (am, am_base) = start_alertmanager(&dir, &am_config).await;

    // Prometheus: the local copy on the test's addresses, scraping and
    // evaluating every second, and the rules (rules/ beside it) with
    // twi_bot_shard.yml's every `for:` cut to 5s.
    let for_clause = Regex::new(r"(?m)^(\s+)for: \S+$").unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    for file in yml_files("rules") {
        let mut rules = read(&file);
        if file.file_name().unwrap() == "twi_bot_shard.yml" {
            assert!(for_clause.is_match(&rules));
            rules = for_clause.replace_all(&rules, "${1}for: 5s").into_owned();
        }
        dir.write(
            &format!("rules/{}", file.file_name().unwrap().to_string_lossy()),
            &rules,
        );
    }
    let prom_addr = refused_addr().await;
    let local = read(&monitoring().join("prometheus.local.yml"));
    let local = replace(&local, "scrape_interval: 15s", "scrape_interval: 1s");
    let local = replace(
        &local,
        "evaluation_interval: 15s",
        "evaluation_interval: 1s",
    );
    // The runbook's base URL, set where the README says.
    let local = replace(
        &local,
        "  # external_labels:\n  #   runbook_base_url: https://git.example.org/you/twi-probe/src/branch/main/monitoring/RUNBOOK.md\n",
        "  external_labels:\n    runbook_base_url: https://runbooks.example/RUNBOOK.md\n",
    );
    let local = replace(
        &local,
        "'127.0.0.1:9093'",
        &format!("'{}'", am_base.trim_start_matches("http://")),
    );
    let local = replace(&local, "'127.0.0.1:8000'", &format!("'{exporter}'"));
    let local = replace(
        &local,
        "'127.0.0.1:9477'",
        &format!("'{}'", prober.metrics_addr),
    );
    let prom_config = dir.write("prometheus.yml", &local);
    let prom = Daemon::spawn(
        "prometheus",
        &prometheus_bin,
        &[
            format!("--config.file={}", prom_config.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom-data").display()
            ),
            format!("--web.listen-address={prom_addr}"),
        ],
        dir.path(),
    );
    let prom_base = format!("http://{prom_addr}");
    let explain = || {
        format!(
            "--- prometheus\n{}\n--- alertmanager\n{}\n--- probe serve\n{}",
            prom.log_tail(),
            am.log_tail(),
            prober.log_tail()
        )
    };

    // Both targets scraped and the bot seen online first.
    poll(
        "both targets up and the bot online",
        Duration::from_secs(60),
        explain,
        || async {
            let up = prom_query(
                &client,
                &prom_base,
                "up{job=~\"twi_bot_shard|twi_probe\"} == 1",
            )
            .await
            .ok()?;
            let online = prom_query(&client, &prom_base, "probe_target_presence_online == 1")
                .await
                .ok()?;
            (up.len() == 2 && !online.is_empty()).then_some(())
        },
    )
    .await;

    // Webhook messages in the probe channel, read as the prober over REST.
    let webhook_messages = || async {
        let r = client
            .get(format!("{api_base}/channels/{channel}/messages?limit=100"))
            .header("Authorization", format!("Bot {prober_token}"))
            .send()
            .await
            .ok()?;
        let list: Value = r.json().await.ok()?;
        Some(
            list.as_array()?
                .iter()
                .filter(|m| s(&m["webhook_id"]) == webhook_id)
                .cloned()
                .collect::<Vec<Value>>(),
        )
    };
    let titled = |messages: &[Value], prefix: &str| -> Option<Value> {
        messages
            .iter()
            .find(|m| s(&m["embeds"][0]["title"]).starts_with(prefix))
            .cloned()
    };

    // Offline: the alert fires and Alertmanager posts it to Discord.
    let r = client
        .post(format!("{control}/bot/offline"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let firing = poll(
        "the BotOffline message in Discord",
        Duration::from_secs(60),
        explain,
        || async { titled(&webhook_messages().await?, "[FIRING:1] BotOffline") },
    )
    .await;
    let embed = &firing["embeds"][0];
    assert_eq!(
        s(&firing["author"]["username"]),
        "alerts",
        "posted by the webhook"
    );
    assert_eq!(
        embed["color"],
        json!(0x992D22),
        "Alertmanager's red for firing"
    );
    let text = s(&embed["description"]);
    assert!(
        text.contains("**P1 critical**: presence: Discord reports the bot offline"),
        "{text}"
    );
    assert!(
        text.contains("Runbook: https://runbooks.example/RUNBOOK.md#botoffline"),
        "{text}"
    );
    assert_eq!(s(&embed["title"]), "[FIRING:1] BotOffline P1 critical");
    // Ground truth: the sandbox recorded it as the webhook's message.
    let truth = get_json(
        &client,
        &format!("{control}/truth/messages?channel_id={channel}"),
    )
    .await
    .unwrap();
    assert!(
        truth
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["message_id"] == firing["id"] && s(&t["author_id"]) == webhook_id),
        "{truth}"
    );

    // Online again: the resolved notification follows.
    let r = client
        .post(format!("{control}/bot/online"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let resolved = poll(
        "the resolved BotOffline message in Discord",
        Duration::from_secs(60),
        explain,
        || async { titled(&webhook_messages().await?, "[RESOLVED] BotOffline") },
    )
    .await;
    let embed = &resolved["embeds"][0];
    assert_eq!(
        embed["color"],
        json!(0x2ECC71),
        "Alertmanager's green for resolved"
    );
    assert!(
        s(&embed["description"])
            .contains("**Resolved** (P1): presence: Discord reports the bot offline")
    );

    // An alert without runbook_url (the README's route test) has no
    // Runbook line at all.
    let r = client
        .post(format!("{am_base}/api/v2/alerts"))
        .json(&json!([{
            "labels": {"alertname": "RouteTest", "severity": "warning", "priority": "P4"},
            "annotations": {"summary": "test: please ignore"}
        }]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let route_test = poll(
        "the RouteTest message in Discord",
        Duration::from_secs(60),
        explain,
        || async { titled(&webhook_messages().await?, "[FIRING:1] RouteTest") },
    )
    .await;
    let text = s(&route_test["embeds"][0]["description"]);
    assert!(
        text.contains("**P4 warning**: test: please ignore"),
        "{text}"
    );
    assert!(!text.contains("Runbook"), "{text}");

    // Every dashboard query runs on this Prometheus and finds data, but for
    // the exporters this test does not run (see monitoring_db.rs), and
    // bot_discord_api.json, on families only twi_probe_companion exports
    // (the simulated bot has none), checked the same way against a real
    // discord.py bot by companion/tests/test_monitoring.py.
    let queries: Vec<_> = dashboard_queries()
        .into_iter()
        .filter(|(file, _, expr)| file != "bot_discord_api.json" && !reads_system_or_database(expr))
        .collect();
    let report = std::sync::Mutex::new(String::new());
    poll(
        "every dashboard query returns data",
        Duration::from_secs(30),
        || format!("{}\n{}", report.lock().unwrap(), explain()),
        || async {
            let mut problems = Vec::new();
            for (file, title, expr) in &queries {
                match prom_query(&client, &prom_base, expr).await {
                    Ok(result) if result.is_empty() => {
                        problems.push(format!("{file}: {title}: no data: {expr}"))
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{file}: {title}: {e}: {expr}")),
                }
            }
            *report.lock().unwrap() = problems.join("\n");
            problems.is_empty().then_some(())
        },
    )
    .await;
}
