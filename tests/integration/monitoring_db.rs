//! monitoring/rules/system_database.yml end to end, on the real exporters
//! from Debian's packages: a throwaway PostgreSQL cluster (`postgresql`)
//! with pg_stat_statements, postgres_exporter
//! (`prometheus-postgres-exporter`) with monitoring/postgres_exporter/
//! queries.yaml, node_exporter (`prometheus-node-exporter`), and a real
//! Prometheus with the rules, their windows and `for:` cut short. Load
//! (slow statements on nearly every connection PostgreSQL allows) makes the
//! database alerts fire; they resolve when it stops; every dashboard query
//! about the machine or the database returns data.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use crate::monitoring::{
    Daemon, TempDir, dashboard_queries, monitoring, poll, prom_query, read,
    reads_system_or_database, replace, s, tool,
};
use crate::support::refused_addr;

/// PostgreSQL's server programs, newest major version (Debian puts them in
/// /usr/lib/postgresql/<major>/bin).
fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server is not installed (Debian package `postgresql`): run \
             scripts/test.sh, which installs it"
        )
    })
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {args:?}: {out:?}"))
}

/// Runs `command` and returns its stdout, or panics with everything it said.
fn output(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL cluster in a temporary directory, on 127.0.0.1 and a free
/// port, trusting local connections; stopped when dropped. PostgreSQL
/// refuses to run as root, so under root (as CI runs) the server runs as
/// `nobody`.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// (uid, gid) to run the server as, when the test runs as root.
    run_as: Option<(u32, u32)>,
}

/// At most 20 connections, none reserved for superusers: the load can
/// reach the critical 90 % with 19.
const MAX_CONNECTIONS: u32 = 20;

impl Cluster {
    async fn start(dir: &TempDir) -> Cluster {
        let bin = pg_bin_dir();
        let root = dir.path().join("pg");
        std::fs::create_dir_all(&root).unwrap();
        let run_as = (id(&["-u"]) == 0).then(|| (id(&["-u", "nobody"]), id(&["-g", "nobody"])));
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        let cluster = Cluster {
            bin,
            data: root.join("data"),
            port: refused_addr().await.port(),
            run_as,
        };
        output(
            "initdb",
            cluster
                .server_command("initdb")
                .arg("--pgdata")
                .arg(&cluster.data)
                .args([
                    "--username=postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={MAX_CONNECTIONS} \
             -c superuser_reserved_connections=0 -c shared_preload_libraries=pg_stat_statements \
             -c fsync=off",
            cluster.port,
            root.display()
        );
        // -w: pg_ctl returns once the server accepts connections.
        let started = cluster
            .server_command("pg_ctl")
            .arg("--pgdata")
            .arg(&cluster.data)
            .arg("--log")
            .arg(root.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default()
        );
        cluster
    }

    /// A server program, run as the cluster's owner.
    fn server_command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                ])
                .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Runs `sql` in `database` as the superuser `postgres`, over TCP.
    fn psql(&self, database: &str, sql: &str) -> String {
        output(
            &format!("psql {database}: {sql}"),
            Command::new(self.bin.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-c", sql])
                .stdin(Stdio::null()),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .server_command("pg_ctl")
            .arg("--pgdata")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Prometheus' alerts (pending and firing) with the given names.
async fn alerts(client: &reqwest::Client, base: &str, names: &[&str]) -> Option<Vec<Value>> {
    let body: Value = client
        .get(format!("{base}/api/v1/alerts"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        body["data"]["alerts"]
            .as_array()?
            .iter()
            .filter(|a| names.contains(&s(&a["labels"]["alertname"])))
            .cloned()
            .collect(),
    )
}

#[tokio::test]
async fn database_alerts_fire_under_load_on_real_postgresql_and_its_exporters_and_resolve() {
    // Fail at once, with the message, when a program is missing.
    let prometheus_bin = tool("prometheus", "prometheus");
    let node_exporter_bin = tool("prometheus-node-exporter", "prometheus-node-exporter");
    let pg_exporter_bin = tool(
        "prometheus-postgres-exporter",
        "prometheus-postgres-exporter",
    );
    let dir = TempDir::new("db");
    let client = reqwest::Client::new();

    // The bot's database, with pg_stat_statements, a table with an index,
    // and the exporter's role (pg_monitor reads every role's statements).
    let cluster = Cluster::start(&dir).await;
    cluster.psql("postgres", "CREATE DATABASE twi");
    cluster.psql(
        "postgres",
        "CREATE ROLE postgres_exporter LOGIN IN ROLE pg_monitor",
    );
    cluster.psql(
        "twi",
        "CREATE EXTENSION pg_stat_statements; \
         CREATE TABLE quotes (id integer PRIMARY KEY, body text); \
         INSERT INTO quotes SELECT g, 'quote ' || g FROM generate_series(1, 1000) g; \
         ANALYZE quotes",
    );

    // The exporters, as Debian runs them, on free ports.
    let pg_exporter_addr = refused_addr().await;
    let dsn = format!(
        "postgresql://postgres_exporter@127.0.0.1:{}/twi?sslmode=disable",
        cluster.port
    );
    let queries = monitoring().join("postgres_exporter/queries.yaml");
    let pg_exporter = Daemon::spawn_with_env(
        "postgres_exporter",
        &pg_exporter_bin,
        &[
            format!("--web.listen-address={pg_exporter_addr}"),
            format!("--extend.query-path={}", queries.display()),
        ],
        &[("DATA_SOURCE_NAME", &dsn)],
        dir.path(),
    );
    let node_exporter_addr = refused_addr().await;
    let node_exporter = Daemon::spawn(
        "node_exporter",
        &node_exporter_bin,
        &[format!("--web.listen-address={node_exporter_addr}")],
        dir.path(),
    );

    // Prometheus: the local copy on the test's addresses (the bot, the
    // prober and Alertmanager are not running), scraping and evaluating
    // every second; the rules with every `for:` cut to 2s and their
    // windows to 10s, so an alert resolves 10s after its cause is gone.
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    let for_clause = Regex::new(r"(?m)^(\s+)for: \S+$").unwrap();
    let window = Regex::new(r"\[(5m|10m)\]").unwrap();
    for entry in std::fs::read_dir(monitoring().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = read(&path);
        if path.file_name().unwrap() == "system_database.yml" {
            assert!(for_clause.is_match(&text) && window.is_match(&text));
            text = for_clause.replace_all(&text, "${1}for: 2s").into_owned();
            text = window.replace_all(&text, "[10s]").into_owned();
        }
        std::fs::write(rules_dir.join(path.file_name().unwrap()), text).unwrap();
    }
    let local = read(&monitoring().join("prometheus.local.yml"));
    let local = replace(&local, "scrape_interval: 15s", "scrape_interval: 1s");
    let local = replace(
        &local,
        "evaluation_interval: 15s",
        "evaluation_interval: 1s",
    );
    let mut local = local;
    for from in ["'127.0.0.1:9093'", "'127.0.0.1:8000'", "'127.0.0.1:9477'"] {
        local = replace(&local, from, &format!("'{}'", refused_addr().await));
    }
    let local = replace(
        &local,
        "'127.0.0.1:9100'",
        &format!("'{node_exporter_addr}'"),
    );
    let local = replace(&local, "'127.0.0.1:9187'", &format!("'{pg_exporter_addr}'"));
    let prom_config = dir.write("prometheus.yml", &local);
    let prom_addr = refused_addr().await;
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
    let base = format!("http://{prom_addr}");
    let pg_log = dir.path().join("pg/postgres.log");
    let pgbench_log = dir.path().join("pgbench.log");
    let explain = || {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "--- prometheus\n{}\n--- postgres_exporter\n{}\n--- node_exporter\n{}\n\
             --- postgres\n{}\n--- pgbench\n{}",
            prom.log_tail(),
            pg_exporter.log_tail(),
            node_exporter.log_tail(),
            tail(&pg_log),
            tail(&pgbench_log)
        )
    };

    // Both exporters scraped, PostgreSQL reachable, statements recorded.
    poll(
        "both exporters up and PostgreSQL reachable",
        Duration::from_secs(60),
        explain,
        || async {
            let up = prom_query(&client, &base, r#"up{job=~"node|postgres"} == 1"#)
                .await
                .ok()?;
            let pg_up = prom_query(&client, &base, "pg_up == 1").await.ok()?;
            let statements = prom_query(&client, &base, r#"pg_statements_calls{datname="twi"}"#)
                .await
                .ok()?;
            (up.len() == 2 && !pg_up.is_empty() && !statements.is_empty()).then_some(())
        },
    )
    .await;
    let names = ["PostgresQueryLatencyHigh", "PostgresConnectionsHigh"];
    assert_eq!(
        alerts(&client, &base, &names[1..]).await.unwrap(),
        Vec::<Value>::new(),
        "no connection alert before the load"
    );

    // Load: pgbench clients, each holding its connection and running a
    // 600 ms statement (through the index) again and again, enough of them
    // that with the connections already open (the exporter's) 19 of 20 are
    // in use (95 %); the bot's statements take 600 ms on average.
    let open: u32 = cluster
        .psql(
            "postgres",
            "SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .trim()
        .parse()
        .unwrap();
    let clients = (MAX_CONNECTIONS - 1)
        .checked_sub(open)
        .filter(|c| *c > 0)
        .unwrap_or_else(|| panic!("{open} connections open before the load"));
    let script = dir.write(
        "slow.sql",
        "SELECT pg_sleep(0.6) FROM quotes WHERE id = 42;\n",
    );
    let mut pgbench = tokio::process::Command::new(pg_bin_dir().join("pgbench"))
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "1",
            "-T",
            "600",
            "-f",
        ])
        .arg(&script)
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string()])
        .args(["-U", "postgres", "twi"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&pgbench_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Both critical alerts fire, labelled for routing and inhibition.
    let firing = poll(
        "PostgresQueryLatencyHigh and PostgresConnectionsHigh firing as critical",
        Duration::from_secs(90),
        explain,
        || async {
            let all = alerts(&client, &base, &names).await?;
            let critical = |name: &str| {
                all.iter()
                    .find(|a| {
                        s(&a["labels"]["alertname"]) == name
                            && s(&a["labels"]["severity"]) == "critical"
                            && s(&a["state"]) == "firing"
                    })
                    .cloned()
            };
            Some((critical(names[0])?, critical(names[1])?))
        },
    )
    .await;
    let (latency, connections) = firing;
    for alert in [&latency, &connections] {
        let labels = &alert["labels"];
        assert_eq!(
            (
                s(&labels["priority"]),
                s(&labels["signal"]),
                s(&labels["job"]),
                s(&labels["host"]),
            ),
            ("P2", "database", "postgres", "127.0.0.1"),
            "{alert}"
        );
    }
    assert_eq!(s(&latency["labels"]["datname"]), "twi", "{latency}");
    let mean: f64 = s(&latency["value"]).parse().unwrap();
    assert!((0.5..1.0).contains(&mean), "mean query time {mean}");
    let used: f64 = s(&connections["value"]).parse().unwrap();
    assert!(used > 0.9, "connections in use {used}");

    // Every dashboard query about the machine or the database finds data.
    let queries: Vec<_> = dashboard_queries()
        .into_iter()
        .filter(|(_, _, expr)| reads_system_or_database(expr))
        .collect();
    assert!(queries.len() >= 15, "{queries:#?}");
    let report = std::sync::Mutex::new(String::new());
    poll(
        "every system and database dashboard query returns data",
        Duration::from_secs(30),
        || format!("{}\n{}", report.lock().unwrap(), explain()),
        || async {
            let mut problems = Vec::new();
            for (file, title, expr) in &queries {
                match prom_query(&client, &base, expr).await {
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

    // The load stops: both alerts resolve (no longer pending or firing).
    pgbench.kill().await.unwrap();
    poll(
        "the database alerts resolved after the load",
        Duration::from_secs(60),
        explain,
        || async {
            alerts(&client, &base, &names)
                .await?
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// The network capacity an operator sets in rules/system_database.yml
/// applies to every link but loopback and container bridges, and wins over
/// the speed a link reports (the README's promise), checked by promtool on
/// the rules file with the capacity set.
#[test]
fn a_set_network_capacity_replaces_the_speed_links_report() {
    let dir = TempDir::new("netcap");
    let rules = read(&monitoring().join("rules/system_database.yml"));
    let rules = replace(
        &rules,
        "record: twi:network_link_capacity_set_bytes_per_second\n        expr: vector(0)",
        "record: twi:network_link_capacity_set_bytes_per_second\n        expr: vector(12500000)",
    );
    dir.write("rules.yml", &rules);
    let alert = |device: &str, severity: &str, priority: &str, pct: &str, threshold: &str| {
        let level = if severity == "warning" {
            "warning above"
        } else {
            "critical above"
        };
        format!(
            r#"
          - exp_labels: {{alertname: HostNetworkUsageHigh, severity: {severity}, priority: {priority}, signal: system, job: node, instance: "db:9100", host: db, device: {device}}}
            exp_annotations:
              summary: "db: {device} at {pct} of its capacity ({level} {threshold})"
              description: "The network link {device} of db has carried {pct} of its capacity over 5 minutes (the busier of receive and transmit), above the {threshold} {severity} threshold, for more than 10 minutes."
              runbook_url: "https://runbooks.example/RUNBOOK.md#hostnetworkusagehigh""#
        )
    };
    // 12.5 MB/s set: eth0 reports 1 Gbit/s but carries 97 % of the set
    // capacity; eth1 reports no speed and carries 85 %; lo is never checked.
    let tests = format!(
        r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    external_labels: {{runbook_base_url: "https://runbooks.example/RUNBOOK.md"}}
    input_series:
      - series: 'node_network_speed_bytes{{job="node", instance="db:9100", host="db", device="eth0"}}'
        values: '125000000x30'
      - series: 'node_network_receive_bytes_total{{job="node", instance="db:9100", host="db", device="eth0"}}'
        values: '0+727500000x30'
      - series: 'node_network_speed_bytes{{job="node", instance="db:9100", host="db", device="eth1"}}'
        values: '-125000x30'
      - series: 'node_network_transmit_bytes_total{{job="node", instance="db:9100", host="db", device="eth1"}}'
        values: '0+637500000x30'
      - series: 'node_network_receive_bytes_total{{job="node", instance="db:9100", host="db", device="eth1"}}'
        values: '0x30'
      - series: 'node_network_receive_bytes_total{{job="node", instance="db:9100", host="db", device="lo"}}'
        values: '0+727500000x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: HostNetworkUsageHigh
        exp_alerts:{}{}
"#,
        // No warning for eth0: warnings exclude their critical condition.
        alert("eth0", "critical", "P2", "97%", "95%"),
        alert("eth1", "warning", "P3", "85%", "80%"),
    );
    let file = dir.write("test.yml", &tests);
    let (ok, out) = crate::monitoring::run(
        &crate::monitoring::promtool(),
        &["test", "rules", file.to_str().unwrap()],
    );
    assert!(ok && out.contains("SUCCESS"), "{out}\n{tests}");
}
