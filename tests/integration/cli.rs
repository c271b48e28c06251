//! The `probe` binary as a process: exit codes, output formats, logs.

use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

use crate::metrics::promtool_check_metrics;
use crate::support::{Reply, TestServer, python_exporter_body, unix_now};

fn probe_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
    cmd.env_remove("PROBE_CONFIG")
        .env_remove("PROBE_LOG")
        .env_remove("PROBER_DISCORD_TOKEN")
        .kill_on_drop(true);
    cmd
}

async fn probe(args: &[&str], cwd: &Path) -> Output {
    probe_bin()
        .args(args)
        .current_dir(cwd)
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temporary directory holding a probes.yaml, removed on drop.
struct ConfigDir(PathBuf);

impl ConfigDir {
    fn new(yaml: &str) -> ConfigDir {
        let dir = std::env::temp_dir().join(format!(
            "twi-probe-cli-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("probes.yaml"), yaml).unwrap();
        ConfigDir(dir)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A healthy exporter plus a probes.yaml with a passing and a failing probe.
async fn setup() -> (TestServer, ConfigDir) {
    let server = TestServer::start(Reply::ok(python_exporter_body(unix_now() - 3600.0, 1))).await;
    let dir = ConfigDir::new(&format!(
        r#"
target: {{name: twi-bot-shard, exporter_url: "{}"}}
discord: {{token_env: PROBER_DISCORD_TOKEN}}
probes:
  - name: bot-exporter
    timeout: 2s
    exporter:
      min_uptime: 10m
      assertions: ["discord_gateway_connected >= 1"]
  - name: wants-204
    timeout: 2s
    http: {{url: "{}", expect_status: [204]}}
"#,
        server.url("/metrics"),
        server.url("/page")
    ));
    (server, dir)
}

#[tokio::test]
async fn validate_prints_ok_and_a_line_per_probe() {
    let (_server, dir) = setup().await;
    let out = probe(&["validate"], &dir.0).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ok: probes.yaml (2 probes)"), "{text}");
    assert!(
        text.contains("bot-exporter") && text.contains("exporter"),
        "{text}"
    );
    assert!(text.contains("wants-204"), "{text}");
    assert!(
        stderr(&out).contains("warning: probes.yaml: discord.token_env: environment variable PROBER_DISCORD_TOKEN is not set"),
        "a missing secret is only a warning: {}",
        stderr(&out)
    );
}

#[tokio::test]
async fn validate_warns_when_probes_sharing_a_channel_cannot_fit_their_schedule() {
    let probe_yaml = |name: &str, every: &str, timeout: &str, channel: &str| {
        format!(
            "  - name: {name}\n    every: {every}\n    timeout: {timeout}\n    command:\n      \
             channel_id: \"{channel}\"\n      message: \"!help\"\n"
        )
    };
    let yaml = format!(
        "target: {{name: bot, user_id: \"1020304050607080901\"}}\n\
         discord: {{token_env: PROBER_DISCORD_TOKEN, send_interval: 2s}}\n\
         probes:\n{}{}{}{}",
        // 10 s + 2 s and 5 s + 2 s per round: more than the 15 s of `fast`.
        probe_yaml("slow", "1m", "10s", "1020304050607080903"),
        probe_yaml("fast", "15s", "5s", "1020304050607080903"),
        // Alone in its channel: fits.
        probe_yaml("alone", "5s", "4s", "1020304050607080904"),
        // Sharing a channel, but with time to spare.
        probe_yaml("roomy", "1m", "5s", "1020304050607080905")
            + &probe_yaml("roomy-too", "1m", "5s", "1020304050607080905"),
    );
    let dir = ConfigDir::new(&yaml);
    let out = probe(&["validate"], &dir.0).await;
    assert!(
        out.status.success(),
        "a warning, not an error: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    let crowded: Vec<&str> = err.lines().filter(|l| l.contains("take turns")).collect();
    assert_eq!(crowded.len(), 1, "{err}");
    assert!(
        crowded[0].starts_with(
            "warning: probes.yaml: channel 1020304050607080903: probes slow, fast take turns there and need up to 19s per round"
        ) && crowded[0].contains("more than the shortest schedule there (\"fast\", every 15s)"),
        "{err}"
    );
}

#[tokio::test]
async fn validate_prints_every_error_and_fails() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let out = probe(&["validate", "--config", "many_errors.yaml"], &fixtures).await;
    assert_eq!(out.status.code(), Some(1));
    let expected = std::fs::read_to_string(fixtures.join("many_errors.expected")).unwrap();
    assert_eq!(
        stderr(&out),
        format!("{}many_errors.yaml: 7 errors\n", expected)
    );
    assert!(stdout(&out).is_empty());
}

#[tokio::test]
async fn run_exit_codes_follow_nagios() {
    let (_server, dir) = setup().await;
    let ok = probe(&["run", "--probe", "bot-exporter"], &dir.0).await;
    assert_eq!(ok.status.code(), Some(0), "{}{}", stdout(&ok), stderr(&ok));
    let line = stdout(&ok);
    assert!(line.starts_with("bot-exporter"), "{line}");
    assert!(
        line.contains(" exporter ") && line.contains(" success "),
        "{line}"
    );

    let critical = probe(&["run"], &dir.0).await;
    assert_eq!(critical.status.code(), Some(2), "{}", stdout(&critical));
    let text = stdout(&critical);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("HTTP 200, expected 204"), "{text}");

    let unknown_probe = probe(&["run", "--probe", "nope"], &dir.0).await;
    assert_eq!(unknown_probe.status.code(), Some(3));
    assert!(
        stderr(&unknown_probe)
            .contains("no probe named \"nope\" (configured: bot-exporter, wants-204)"),
        "{}",
        stderr(&unknown_probe)
    );

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let bad = probe(&["run", "--config", "bad_cron.yaml"], &fixtures).await;
    assert_eq!(bad.status.code(), Some(3), "bad config is UNKNOWN");
    assert!(
        stderr(&bad).contains("bad_cron.yaml:5:11"),
        "{}",
        stderr(&bad)
    );
}

/// Every field of the JSON result line, as the README lists them: exactly
/// these keys, each with its type and meaning.
#[tokio::test]
async fn run_json_lines_parse_and_carry_the_fields() {
    let (_server, dir) = setup().await;
    let before = std::time::SystemTime::now();
    let out = probe(&["run", "--format", "json"], &dir.0).await;
    let after = std::time::SystemTime::now();
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2);
    let mut ids = std::collections::HashSet::new();
    for v in &lines {
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "detail",
                "duration_seconds",
                "kind",
                "latency_seconds",
                "outcome",
                "probe",
                "request_id",
                "timestamp",
                "type"
            ],
            "{v}"
        );
        assert_eq!(v["type"], "result");
        assert!(v["detail"].is_string(), "{v}");
        let duration = v["duration_seconds"].as_f64().unwrap();
        assert!(duration > 0.0 && duration < 10.0, "{v}");
        if let Some(latency) = v["latency_seconds"].as_f64() {
            assert!(latency > 0.0 && latency <= duration, "{v}");
        }
        let id = v["request_id"].as_str().unwrap();
        assert!(
            id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(ids.insert(id.to_string()), "request ids differ");
        // RFC 3339 in UTC with milliseconds: when the run started.
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
        let at = humantime::parse_rfc3339(ts).unwrap();
        let ms = std::time::Duration::from_millis(1);
        assert!(at + ms >= before && at <= after, "{ts}");
    }
    let exporter = lines.iter().find(|v| v["probe"] == "bot-exporter").unwrap();
    assert_eq!(exporter["kind"], "exporter");
    assert_eq!(exporter["outcome"], "success");
    assert!(exporter["latency_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        exporter["detail"].as_str().unwrap().starts_with("uptime "),
        "{exporter}"
    );
    let failing = lines.iter().find(|v| v["probe"] == "wants-204").unwrap();
    assert_eq!(failing["kind"], "http");
    assert_eq!(failing["outcome"], "failure");
    assert!(
        failing["latency_seconds"].is_null(),
        "a failed run has no latency"
    );
    assert!(
        failing["detail"].as_str().unwrap().contains("200"),
        "{failing}"
    );
}

#[tokio::test]
async fn count_prints_a_ping_like_summary() {
    let (_server, dir) = setup().await;
    let out = probe(
        &[
            "run",
            "--probe",
            "bot-exporter",
            "--count",
            "4",
            "--interval",
            "0s",
        ],
        &dir.0,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("bot-exporter"))
            .count(),
        4,
        "{text}"
    );
    assert!(
        text.contains("--- bot-exporter (exporter): 4 runs, 4 success, 0 failure, 0 timeout, 0 unreachable, 0 inconclusive, 100.0% success"),
        "{text}"
    );
    assert!(text.contains("latency min/p50/p90/p99/max = "), "{text}");

    let json = probe(
        &[
            "run",
            "-p",
            "bot-exporter",
            "-n",
            "3",
            "--interval",
            "0s",
            "-f",
            "json",
        ],
        &dir.0,
    )
    .await;
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&json).lines().last().unwrap()).unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["runs"], 3);
    assert_eq!(summary["success_rate"], 1.0);
    assert!(summary["latency_seconds"]["p99"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn json_logs_carry_the_guide_fields() {
    let (_server, dir) = setup().await;
    let out = probe(
        &[
            "--log-format",
            "json",
            "--log-level",
            "info",
            "run",
            "-p",
            "bot-exporter",
        ],
        &dir.0,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let logs = stderr(&out);
    let line = logs
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["message"] == "probe succeeded")
        .unwrap_or_else(|| panic!("no result log line in {logs}"));
    let ts = line["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["logger"], "twi_probe::probe");
    assert_eq!(line["probe"], "bot-exporter");
    assert_eq!(line["kind"], "exporter");
    assert_eq!(line["outcome"], "success");
    assert_eq!(line["request_id"].as_str().unwrap().len(), 12);
    assert!(line["execution_time_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn metrics_file_is_valid_prometheus_text() {
    let (_server, dir) = setup().await;
    let out = probe(&["run", "--metrics-file", "probe.prom"], &dir.0).await;
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(dir.0.join("probe.prom")).unwrap();
    assert!(
        text.contains(
            "probe_runs_total{kind=\"exporter\",outcome=\"success\",probe=\"bot-exporter\"} 1"
        ),
        "{text}"
    );
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}"));
}

#[tokio::test]
async fn help_mentions_no_secret() {
    let out = probe_bin()
        .env("PROBER_DISCORD_TOKEN", "sekrit-token-value")
        .args(["run", "--help"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(!stdout(&out).contains("sekrit"));
}

#[tokio::test]
async fn sandbox_describe_parses_its_urls_answer_and_sigterm_stops_it() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = ConfigDir::new("");
    let describe = dir.0.join("sandbox.json");
    let mut child = probe_bin()
        .args(["sandbox", "--listen", "127.0.0.1:0", "--describe"])
        .arg(&describe)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The banner is printed after the description is written.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("sandbox starts in time")
            .unwrap()
            .expect("sandbox printed its banner");
        if line.starts_with("sandbox: REST ") {
            break;
        }
    }
    let d: twi_sandbox::Description =
        serde_json::from_str(&std::fs::read_to_string(&describe).unwrap()).unwrap();
    assert_eq!(d.accounts.len(), 3);
    let gateway: serde_json::Value = reqwest::get(format!("{}/gateway", d.api_base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gateway["url"], d.gateway_url);
    let control: twi_sandbox::Description = reqwest::get(format!("{}/describe", d.control_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(control, d);
    let metrics = reqwest::get(d.exporter_url.clone().unwrap()).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let hook = reqwest::Client::new()
        .post(format!("{}?wait=true", d.webhook_url.clone().unwrap()))
        .json(&serde_json::json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 200);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn run_sandbox_shows_a_real_round_trip_with_the_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = probe(&["run", "--config", "probes.yaml", "--sandbox"], root).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let help = text
        .lines()
        .find(|l| l.starts_with("help-command"))
        .unwrap_or_else(|| panic!("no help-command line: {text}"));
    assert!(
        help.contains(" success ") && help.contains("replied in"),
        "{help}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("presence") && l.contains(" success ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("bot-exporter") && l.contains(" success ")),
        "{text}"
    );
}

/// The token in every form a log line could carry it: text, hex, and the
/// decimal byte list of a `Debug`-printed payload.
fn token_forms(token: &str) -> Vec<String> {
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    let decimal: Vec<String> = token.bytes().map(|b| b.to_string()).collect();
    vec![token.to_string(), hex, decimal.join(", ")]
}

#[tokio::test]
async fn no_token_in_any_log_at_trace_level_on_either_side() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = ConfigDir::new("");
    let describe = dir.0.join("sandbox.json");
    let mut sandbox = probe_bin()
        .args([
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "trace",
            "--describe",
        ])
        .arg(&describe)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its whole log is kept; the banner comes after the description.
    let (banner_tx, banner) = tokio::sync::oneshot::channel();
    let mut lines = BufReader::new(sandbox.stderr.take().unwrap()).lines();
    let reader = tokio::spawn(async move {
        let mut log = String::new();
        let mut banner_tx = Some(banner_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("sandbox: REST ")
                && let Some(tx) = banner_tx.take()
            {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    tokio::time::timeout(std::time::Duration::from_secs(30), banner)
        .await
        .expect("sandbox starts in time")
        .expect("sandbox printed its banner");
    let d: twi_sandbox::Description =
        serde_json::from_str(&std::fs::read_to_string(&describe).unwrap()).unwrap();
    let token = d
        .accounts
        .iter()
        .find(|a| a.name == "prober")
        .unwrap()
        .token
        .clone();
    let bot = &d
        .accounts
        .iter()
        .find(|a| a.name == "twi-bot-shard")
        .unwrap()
        .id;
    let probes = dir.0.join("probes.yaml");
    std::fs::write(
        &probes,
        format!(
            "target: {{name: twi-bot-shard, user_id: \"{bot}\"}}\n\
             discord: {{token_env: PROBER_DISCORD_TOKEN, api_base: \"{}\"}}\n\
             probes:\n  - name: help\n    timeout: 5s\n    command:\n      \
             channel_id: \"{}\"\n      message: \"!help\"\n",
            d.rest_base, d.guilds[0].channels[0].id
        ),
    )
    .unwrap();
    let out = probe_bin()
        .env("PROBER_DISCORD_TOKEN", &token)
        .args(["run", "--log-level", "trace", "--config"])
        .arg(&probes)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let _ = sandbox.kill().await;
    let prober_log = stderr(&out);
    let sandbox_log = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
        .await
        .expect("the sandbox's log ends when it exits")
        .unwrap();
    for (side, log) in [("prober", &prober_log), ("sandbox", &sandbox_log)] {
        assert!(
            log.contains("TRACE"),
            "{side}: the test must run at trace level"
        );
        for form in token_forms(&token) {
            assert!(
                !log.contains(&form),
                "{side}'s log shows the token ({form})"
            );
        }
        let wire = log.lines().find(|l| {
            (l.contains("TRACE") || l.contains("DEBUG"))
                && ["tungstenite", "hyper", "h2::", "reqwest", "rustls"]
                    .iter()
                    .any(|t| l.contains(&format!(" {t}")))
        });
        assert_eq!(wire, None, "{side}: wire-level lines are capped at info");
    }
}

#[tokio::test]
async fn an_invalid_log_level_is_an_error_not_silently_info() {
    let out = probe(
        &["validate", "--log-level", "twi_probe=loud"],
        Path::new("."),
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).starts_with("error: invalid log level \"twi_probe=loud\""),
        "{}",
        stderr(&out)
    );
}

/// `run --sandbox --probe nope` used to hang on most tries (the sandbox's
/// bot was stopped while its client was still starting). It must exit 3
/// with the name error every time, quickly.
#[tokio::test]
async fn run_sandbox_with_an_unknown_probe_exits_3_every_time() {
    let dir = ConfigDir::new(SANDBOX_CONFIG);
    for attempt in 0..20 {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            probe(&["run", "--sandbox", "--probe", "nope"], &dir.0),
        )
        .await
        .unwrap_or_else(|_| panic!("attempt {attempt}: still running after 20 s"));
        assert_eq!(out.status.code(), Some(3), "attempt {attempt}: {out:?}");
        assert!(
            stderr(&out).contains("no probe named \"nope\" (configured: help-command, presence)"),
            "attempt {attempt}: {}",
            stderr(&out)
        );
    }
}

/// A command and a presence probe, for `--sandbox` runs.
const SANDBOX_CONFIG: &str = r#"
target: {name: twi-bot-shard, user_id: "1020304050607080901"}
discord: {token_env: PROBER_DISCORD_TOKEN}
probes:
  - name: help-command
    timeout: 5s
    command:
      channel_id: "1020304050607080903"
      guild_id: "1020304050607080902"
      message: "!help"
  - name: presence
    timeout: 5s
    presence: {guilds: ["1020304050607080902"]}
"#;

/// `run --count`'s default interval fits the channel's send budget
/// (`discord.send_interval`, 2 s by default): no run waits for the budget
/// its previous run used. A shorter `--interval` makes the second run wait,
/// and its line says so.
#[tokio::test]
async fn run_count_default_interval_fits_the_send_interval() {
    let dir = ConfigDir::new(SANDBOX_CONFIG);
    let args = ["run", "--sandbox", "-p", "help-command", "--count", "2"];
    let out = probe(&args, &dir.0).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let runs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("help-command "))
        .collect();
    assert_eq!(runs.len(), 2, "{text}");
    assert!(runs.iter().all(|l| !l.contains("waited")), "{text}");

    let hurried = probe(&[&args[..], &["--interval", "100ms"]].concat(), &dir.0).await;
    let text = stdout(&hurried);
    let runs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("help-command "))
        .collect();
    assert_eq!(runs.len(), 2, "{text}");
    let waited = regex::Regex::new(r"\(waited ([0-9.]+)ms for its turn first\)$").unwrap();
    let ms: f64 = waited.captures(runs[1]).unwrap_or_else(|| panic!("{text}"))[1]
        .parse()
        .unwrap();
    assert!(
        ms > 1000.0,
        "the 2 s budget less 100 ms and the first run: {text}"
    );
}

/// `serve --sandbox`: the start-up lines say how often the simulated bot
/// has outages, each outage is logged as simulated, the libraries' info
/// lines (serenity's shard manager) are left out unless asked for,
/// durations are rounded to the microsecond, and at debug level an outage
/// logs the size of the sandbox's replay buffers.
#[tokio::test]
async fn serve_logs_its_own_lines_and_simulated_outages() {
    let dir = ConfigDir::new(
        r#"
target: {name: twi-bot-shard, user_id: "1020304050607080901"}
discord: {token_env: PROBER_DISCORD_TOKEN}
probes:
  - name: presence
    every: 1s
    timeout: 900ms
    presence: {guilds: ["1020304050607080902"]}
"#,
    );
    let lines_until = |extra: &'static [&'static str], done: fn(&[String]) -> bool| {
        let dir = dir.0.clone();
        async move {
            let mut child = probe_bin()
                .args(["serve", "--sandbox", "--listen", "127.0.0.1:0"])
                .args(["--sandbox-outages", "1s"])
                .args(extra)
                .current_dir(&dir)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
            let mut lines = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while !done(&lines) {
                match tokio::time::timeout_at(deadline, reader.next_line()).await {
                    Ok(Ok(Some(l))) => lines.push(l),
                    _ => panic!(
                        "serve stopped or 30 s passed; its lines:\n{}",
                        lines.join("\n")
                    ),
                }
            }
            let _ = child.kill().await;
            lines
        }
    };
    use tokio::io::AsyncBufReadExt;
    let result_and_outage = |lines: &[String]| {
        lines.iter().any(|l| l.contains("execution_time_ms="))
            && lines
                .iter()
                .any(|l| l.contains("simulated outage: the bot goes offline for"))
    };
    let lines = lines_until(&[], result_and_outage).await;
    let all = lines.join("\n");
    assert!(
        all.contains("sandbox: simulated outages: the bot goes offline on its own for 20-40 s about every 1s (500ms-1s 500ms apart;"),
        "{all}"
    );
    assert!(
        !all.contains("serenity"),
        "library lines at info by default:\n{all}"
    );
    assert!(!all.contains("control: bot offline"), "{all}");
    let ms = regex::Regex::new(r"execution_time_ms=([0-9.]+)").unwrap();
    for m in ms.captures_iter(&all) {
        let decimals = m[1].split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "{}", &m[0]);
    }

    // Asked for: serenity's own info lines are there.
    let lines = lines_until(&["--log-level", "info"], |lines| {
        lines.iter().any(|l| l.contains("serenity"))
    })
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("serenity"))
    );

    let replay = |lines: &[String]| lines.iter().any(|l| l.contains("replay buffers: "));
    let lines = lines_until(&["--log-level", "info,twi_sandbox=debug"], replay).await;
    let size =
        regex::Regex::new(r" DEBUG .*replay buffers: \d+ dispatches, \d+ bytes of payloads$")
            .unwrap();
    assert!(
        lines.iter().any(|l| size.is_match(l)),
        "{}",
        lines.join("\n")
    );
}
