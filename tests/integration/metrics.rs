//! Metrics after real probe runs: values, bounded labels, and promtool's verdict.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use twi_probe::exposition::{self, Sample};
use twi_probe::metrics::Metrics;
use twi_probe::probe::{Observations, Outcome, Probe, ProbeResult, run_once};

use crate::support::{Reply, TestServer, config, python_exporter_body, unix_now};

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
}

/// Runs `promtool check metrics` on `text`; returns its complaints, if any.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

#[tokio::test]
async fn metrics_follow_runs_and_pass_promtool() {
    let server = TestServer::start(Reply::ok(python_exporter_body(unix_now() - 7200.0, 1))).await;
    let cfg = config(&format!(
        r#"
target: {{name: bot, exporter_url: "{}"}}
labels: {{location: home}}
probes:
  - name: bot-exporter
    timeout: 1s
    exporter: {{min_uptime: 10m}}
  - name: site
    timeout: 1s
    labels: {{shard: "0"}}
    http: {{url: "{}", expect_status: [204]}}
"#,
        server.url("/metrics"),
        server.url("/page")
    ));
    let metrics = Metrics::new(&cfg);
    let exporter = Arc::new(Probe::new(cfg.probes[0].clone(), None).unwrap());
    let site = Arc::new(Probe::new(cfg.probes[1].clone(), None).unwrap());

    let before = exposition::parse(&metrics.render()).unwrap();
    assert_eq!(
        value(
            &before,
            "probe_runs_total",
            &[("probe", "site"), ("outcome", "timeout")]
        ),
        Some(0.0),
        "run counters start at zero for every outcome"
    );
    assert_eq!(value(&before, "probe_success", &[("probe", "site")]), None);

    let r = run_once(exporter.clone()).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    metrics.record(&cfg.probes[0], &r);
    server.set(Reply::ok(python_exporter_body(unix_now() - 3.0, 1)));
    let r = run_once(exporter.clone()).await;
    assert_eq!(r.outcome, Outcome::Failure);
    metrics.record(&cfg.probes[0], &r);
    let r = run_once(site.clone()).await;
    assert_eq!(r.outcome, Outcome::Failure, "200 is not the expected 204");
    metrics.record(&cfg.probes[1], &r);

    let text = metrics.render();
    let s = exposition::parse(&text).unwrap();
    let exp = [("probe", "bot-exporter"), ("kind", "exporter")];
    assert_eq!(
        value(&s, "probe_runs_total", &[exp[0], ("outcome", "success")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "probe_runs_total", &[exp[0], ("outcome", "failure")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "probe_target_restarts_total", &exp), Some(1.0));
    assert!(value(&s, "probe_target_uptime_seconds", &exp).unwrap() < 60.0);
    assert_eq!(value(&s, "probe_success", &exp), Some(0.0));
    assert_eq!(value(&s, "probe_latency_seconds_count", &exp), Some(1.0));
    assert!(value(&s, "probe_last_success_timestamp_seconds", &exp).unwrap() > unix_now() - 60.0);
    assert_eq!(
        value(
            &s,
            "probe_success",
            &[("probe", "site"), ("shard", "0"), ("location", "home")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "probe_success",
            &[("probe", "bot-exporter"), ("shard", "")]
        ),
        Some(0.0),
        "a static label a probe does not set is exported empty"
    );
    assert_eq!(
        value(
            &s,
            "prober_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "prober_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        !text.contains(&server.addr.to_string()),
        "no URL in any label"
    );

    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
}

#[tokio::test]
async fn an_inconclusive_run_does_not_move_probe_success() {
    let cfg = config(
        r#"
target: {name: bot}
probes:
  - name: site
    http: {url: "http://127.0.0.1:9/"}
"#,
    );
    let metrics = Metrics::new(&cfg);
    let result = |outcome| ProbeResult {
        probe: "site".into(),
        kind: "http",
        outcome,
        duration: Duration::from_millis(5),
        detail: String::new(),
        request_id: "r".into(),
        started_at: SystemTime::now(),
        observations: Observations::default(),
    };
    metrics.record(&cfg.probes[0], &result(Outcome::Success));
    metrics.record(&cfg.probes[0], &result(Outcome::Inconclusive));
    let s = exposition::parse(&metrics.render()).unwrap();
    assert_eq!(value(&s, "probe_success", &[("probe", "site")]), Some(1.0));
    assert_eq!(
        value(&s, "probe_runs_total", &[("outcome", "inconclusive")]),
        Some(1.0)
    );
}

/// The README's Metrics section is the metric contract (alert rules and
/// dashboards are written against it): exactly the families the prober
/// registers, no more, no fewer. Its Outcomes table is the closed set.
#[test]
fn the_readme_lists_every_metric_family_and_outcome() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = |heading: &str| -> Vec<String> {
        let start = readme
            .find(&format!("\n## {heading}\n"))
            .unwrap_or_else(|| panic!("README has a {heading} section"));
        let body = &readme[start + heading.len() + 5..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        body.lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| {
                let name = &l[..l.find('`').unwrap()];
                name.split('{').next().unwrap().to_string()
            })
            .collect()
    };
    let mut listed = section("Metrics");
    listed.retain(|m| m != "process_*");
    listed.sort();
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let mut registered: Vec<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            (s.starts_with("probe_") || s.starts_with("prober_"))
                && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    registered.sort();
    registered.dedup();
    assert_eq!(listed, registered, "README Metrics table vs src/metrics.rs");

    let outcomes = section("Outcomes");
    let all: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| o.as_str().to_string())
        .collect();
    assert_eq!(outcomes, all, "README Outcomes table vs Outcome::ALL");
}
