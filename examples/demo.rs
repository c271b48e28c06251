//! A zero-credential demonstration of `probe run`, until the Discord sandbox
//! lands: starts a local stand-in for Twi Bot Shard's Prometheus exporter
//! (shaped like Python's prometheus_client output) on 127.0.0.1, writes a
//! probes.yaml that points at it, and runs the probes a few times.
//!
//!     cargo run --release --example demo

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use twi_probe::config::Config;
use twi_probe::report::OutputFormat;
use twi_probe::run::{RunOptions, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    twi_probe::logging::init(twi_probe::logging::LogFormat::Text, "error");
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 3600.0;
    let exporter = Router::new().route(
        "/metrics",
        get(move || async move {
            format!(
                "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
                 # TYPE process_start_time_seconds gauge\n\
                 process_start_time_seconds {started:.2}\n\
                 # HELP discord_gateway_connected Whether the bot's gateway is connected\n\
                 # TYPE discord_gateway_connected gauge\n\
                 discord_gateway_connected 1.0\n\
                 # HELP bot_commands_total Total commands processed\n\
                 # TYPE bot_commands_total counter\n\
                 bot_commands_total{{command=\"help\",success=\"True\"}} 12.0\n"
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, exporter).await });

    let yaml = format!(
        r#"
target:
  name: twi-bot-shard
  exporter_url: http://{addr}/metrics
labels:
  location: demo
probes:
  - name: bot-exporter
    every: 30s
    timeout: 5s
    exporter:
      min_uptime: 10m
      assertions:
        - discord_gateway_connected >= 1
  - name: exporter-http
    every: 30s
    timeout: 5s
    http:
      url: http://{addr}/metrics
      body_regex: "process_start_time_seconds"
"#
    );
    println!("demo: a stand-in for the bot's exporter is on http://{addr}/metrics");
    println!("demo: probes.yaml used:{yaml}");
    let config =
        Config::from_yaml(&yaml, std::path::Path::new("demo.yaml")).expect("valid demo config");
    let options = RunOptions {
        probes: vec![],
        count: 5,
        interval: Duration::from_millis(200),
        format: OutputFormat::Text,
        metrics_file: None,
    };
    let status = run(&config, &options, &mut std::io::stdout())
        .await
        .expect("demo run");
    println!("demo: exit status {} ({status:?})", status.code());
    std::process::ExitCode::from(status.code())
}
