//! The exporter probe against a real HTTP server serving prometheus_client-style text.

use std::sync::Arc;
use std::time::Duration;

use twi_probe::probe::{Outcome, Probe, ProbeResult, run_once};

use crate::support::{Reply, TestServer, config, python_exporter_body, refused_addr, unix_now};

fn exporter_probe(url: &str, extra: &str) -> Arc<Probe> {
    let cfg = config(&format!(
        r#"
target: {{name: bot, exporter_url: "{url}"}}
probes:
  - name: bot-exporter
    every: 30s
    timeout: 1s
    exporter:
{extra}
"#
    ));
    Arc::new(Probe::new(cfg.probes[0].clone(), None).unwrap())
}

async fn run(probe: &Arc<Probe>) -> ProbeResult {
    run_once(probe.clone()).await
}

#[tokio::test]
async fn healthy_exporter_succeeds_and_reports_uptime() {
    let start = unix_now() - 3700.0;
    let server = TestServer::start(Reply::ok(python_exporter_body(start, 1))).await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    let uptime = r.observations.target_uptime_seconds.unwrap();
    assert!((3699.0..3800.0).contains(&uptime), "uptime {uptime}");
    assert!(r.detail.starts_with("uptime 1h"), "{}", r.detail);
    assert!(r.latency().is_some());
}

#[tokio::test]
async fn uptime_below_minimum_is_a_failure() {
    let server = TestServer::start(Reply::ok(python_exporter_body(unix_now() - 120.0, 1))).await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert!(r.detail.contains("below the minimum 10m"), "{}", r.detail);
    assert!(r.observations.target_uptime_seconds.unwrap() < 600.0);
}

#[tokio::test]
async fn a_restart_is_detected_between_runs() {
    let server = TestServer::start(Reply::ok(python_exporter_body(unix_now() - 7200.0, 1))).await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let first = run(&probe).await;
    assert_eq!(first.outcome, Outcome::Success, "{}", first.detail);
    assert_eq!(first.observations.target_restarts, 0);

    server.set(Reply::ok(python_exporter_body(unix_now() - 5.0, 1)));
    let second = run(&probe).await;
    assert_eq!(second.observations.target_restarts, 1);
    assert_eq!(second.outcome, Outcome::Failure, "uptime 5s < 10m");
    assert!(second.detail.contains("restarted"), "{}", second.detail);

    let third = run(&probe).await;
    assert_eq!(third.observations.target_restarts, 0, "counted once");
}

#[tokio::test]
async fn assertions_true_and_false() {
    let server = TestServer::start(Reply::ok(python_exporter_body(unix_now() - 3600.0, 1))).await;
    let ok = exporter_probe(
        &server.url("/metrics"),
        "      assertions:\n        - discord_gateway_connected >= 1\n        - bot_commands_total{command=\"help\",success=\"True\"} > 10",
    );
    let r = run(&ok).await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    assert!(r.detail.contains("2 assertions true"), "{}", r.detail);

    server.set(Reply::ok(python_exporter_body(unix_now() - 3600.0, 0)));
    let r = run(&ok).await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(
        r.detail,
        "assertion `discord_gateway_connected >= 1` is false: discord_gateway_connected = 0"
    );
}

#[tokio::test]
async fn exporter_down_is_unreachable() {
    let addr = refused_addr().await;
    let probe = exporter_probe(&format!("http://{addr}/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Unreachable, "{}", r.detail);
    assert!(r.detail.to_lowercase().contains("refused"), "{}", r.detail);
}

#[tokio::test]
async fn garbage_body_is_a_failure_naming_the_line() {
    let server =
        TestServer::start(Reply::ok("<html>\n<body>502 Bad Gateway</body>\n</html>\n")).await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(
        r.detail,
        "exporter output is not Prometheus text format: line 1: expected a metric name"
    );
}

#[tokio::test]
async fn missing_start_time_is_a_failure_naming_the_metric() {
    let server = TestServer::start(Reply::ok("bot_active_users 3\n")).await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(
        r.detail,
        "metric process_start_time_seconds is missing from the exporter output"
    );
}

#[tokio::test]
async fn http_error_from_the_exporter_is_a_failure() {
    let server = TestServer::start(Reply {
        status: 503,
        body: "unavailable".into(),
        delay: Duration::ZERO,
    })
    .await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.detail, "exporter answered HTTP 503");
}

#[tokio::test]
async fn slow_exporter_beyond_timeout_times_out() {
    let server = TestServer::start(Reply {
        status: 200,
        body: python_exporter_body(unix_now() - 3600.0, 1),
        delay: Duration::from_secs(30),
    })
    .await;
    let probe = exporter_probe(&server.url("/metrics"), "      min_uptime: 10m");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Timeout);
    assert_eq!(r.detail, "no answer within 1s");
    assert!(r.duration >= Duration::from_secs(1) && r.duration < Duration::from_secs(5));
}

#[tokio::test]
async fn a_huge_or_endless_exporter_body_is_a_failure_at_max_body_size() {
    let server = TestServer::start(Reply::ok("x")).await;
    let probe = exporter_probe(&server.url("/endless"), "      max_body_size: 2MiB");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Failure, "{}", r.detail);
    assert_eq!(
        r.detail,
        "exporter: the body is larger than max_body_size (2.0 MiB); it was not read further"
    );
    assert!(
        server.endless_bytes() < 16 << 20,
        "{}",
        server.endless_bytes()
    );
    let probe = exporter_probe(&server.url("/big"), "      min_uptime: 1s");
    let r = run(&probe).await;
    assert_eq!(r.outcome, Outcome::Failure, "{}", r.detail);
    assert!(r.detail.contains("(16.0 MiB)"), "{}", r.detail);
}

#[tokio::test]
async fn what_promtool_rejects_is_a_failure_naming_the_line() {
    let body = "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1\n\
                up 1\nup 1\n";
    let server = TestServer::start(Reply::ok(body)).await;
    let r = run(&exporter_probe(
        &server.url("/metrics"),
        "      min_uptime: 1s",
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Failure, "{}", r.detail);
    assert_eq!(
        r.detail,
        "exporter output is not Prometheus text format: line 4: the series up again (first on line 3)"
    );
}
