//! `probe serve`: the scheduler's rules, and the service as a process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use twi_probe::exposition;
use twi_probe::metrics::Metrics;
use twi_probe::probe::Probe;
use twi_probe::schedule::{SlotStats, run_probe};

use crate::metrics::promtool_check_metrics;
use crate::support::{
    Reply, TestServer, config, python_exporter_body, unix_now, until_changed, until_changed_within,
};

pub(crate) fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition::parse(text)
        .unwrap()
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn a_probe_never_overlaps_itself_and_every_slot_is_a_run_or_a_skip() {
    // Each run takes 250 ms; slots come every 100 ms.
    let server = TestServer::start(Reply {
        status: 200,
        body: "ok".into(),
        delay: Duration::from_millis(250),
    })
    .await;
    let cfg = config(&format!(
        "target: {{name: bot}}\nprobes:\n  - name: slow\n    every: 100ms\n    timeout: 90ms\n    http: {{url: \"{}\"}}\n",
        server.url("/page")
    ));
    let mut spec = cfg.probes[0].clone();
    spec.timeout = Duration::from_millis(400); // longer than the interval, on purpose
    let metrics = Arc::new(Metrics::new(&cfg));
    let stats = Arc::new(SlotStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_probe(
        Arc::new(Probe::new(spec, None).unwrap()),
        metrics.clone(),
        Arc::new(Semaphore::new(8)),
        stop.clone(),
        stats.clone(),
        None,
        None,
    ));
    // Let a dozen slots come due; the scenario needs the time to pass.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    stop.cancel();
    task.await.unwrap();

    let (slots, runs, skips) = stats.snapshot();
    assert_eq!(slots, runs + skips, "every slot is one run or one skip");
    assert!(runs >= 2 && skips >= 2, "runs {runs}, skips {skips}");
    assert_eq!(
        server.max_concurrent(),
        1,
        "never two runs of the probe at once"
    );
    let text = metrics.render();
    assert_eq!(
        total(&text, "probe_runs_total", &[("probe", "slow")]),
        runs as f64
    );
    assert_eq!(
        total(&text, "probe_skipped_total", &[("probe", "slow")]),
        skips as f64
    );
}

pub(crate) struct Serve {
    pub(crate) child: tokio::process::Child,
    pub(crate) base: String,
    pub(crate) dir: std::path::PathBuf,
    /// The sandbox's control URL, with `--sandbox`.
    pub(crate) control: Option<String>,
    /// The child's last log lines, shown when a wait fails.
    log_tail: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    /// Bumped on every line the child logs.
    logged: tokio::sync::watch::Receiver<u64>,
}

/// How many of the child's last log lines a failed wait shows.
const LOG_TAIL_LINES: usize = 60;

impl Serve {
    async fn start(yaml: &str) -> Serve {
        Serve::start_with(yaml, &[]).await
    }

    /// `probe serve` with `extra` arguments, on a free port; waits for its banner.
    pub(crate) async fn start_with(yaml: &str, extra: &[&str]) -> Serve {
        Serve::start_with_env(yaml, extra, &[]).await
    }

    /// The same, with `env` set for the child.
    pub(crate) async fn start_with_env(yaml: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let dir = std::env::temp_dir().join(format!(
            "twi-probe-serve-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("probes.yaml"), yaml).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_probe"))
            .args([
                "serve",
                "--config",
                "probes.yaml",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .current_dir(&dir)
            .env_remove("PROBE_CONFIG")
            .env_remove("PROBER_DISCORD_TOKEN")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut control = None;
        let base = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("serve starts in time")
                .unwrap()
                .expect("serve printed where it listens");
            if let Some((_, rest)) = line.split_once("(control ") {
                control = rest.split(')').next().map(str::to_string);
            }
            if let Some(rest) = line.strip_prefix("serving http://") {
                break format!("http://{}", rest.split('/').next().unwrap());
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe,
        // keeping the last lines for a failure's message.
        let log_tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let tail = log_tail.clone();
        let (lines_logged, logged) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == LOG_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                lines_logged.send_modify(|n| *n += 1);
            }
        });
        Serve {
            child,
            base,
            dir,
            control,
            log_tail,
            logged,
        }
    }

    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls /metrics until `ok` holds (bounded): there is no event to await
    /// across the process boundary.
    pub(crate) async fn until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.until_within(what, Duration::from_secs(20), ok).await
    }

    pub(crate) async fn until_within(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.metrics().await;
            if ok(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} never happened:\n{text}\nthe prober's last log lines:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first of the child's last log lines that contains `text`, once
    /// logged (bounded: 20 s).
    pub(crate) async fn until_logged(&self, text: &str) -> String {
        let mut logged = self.logged.clone();
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(line) = self.log_tail().lines().find(|l| l.contains(text)) {
                    return Some(line.to_string());
                }
                logged.changed().await.ok()?;
            }
        })
        .await;
        found.ok().flatten().unwrap_or_else(|| {
            panic!(
                "serve never logged {text:?}; its last log lines:\n{}",
                self.log_tail()
            )
        })
    }

    /// The child's last log lines, one per line.
    pub(crate) fn log_tail(&self) -> String {
        let tail = self.log_tail.lock().unwrap();
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn write_config(&self, yaml: &str) {
        std::fs::write(self.dir.join("probes.yaml"), yaml).unwrap();
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn yaml(exporter: &str, sites: &[(&str, &str)]) -> String {
    let mut y = format!(
        "target: {{name: bot, exporter_url: \"{exporter}\"}}\nprobes:\n  - name: bot-exporter\n    every: 300ms\n    timeout: 250ms\n    exporter: {{min_uptime: 10m}}\n"
    );
    for (name, url) in sites {
        y.push_str(&format!(
            "  - name: {name}\n    every: 300ms\n    timeout: 250ms\n    http: {{url: \"{url}\"}}\n"
        ));
    }
    y
}

/// One http probe of `url`, every second.
fn one_site(url: &str) -> String {
    format!(
        "target: {{name: bot}}\nprobes:\n  - name: site\n    every: 1s\n    timeout: 500ms\n    http: {{url: \"{url}\"}}\n"
    )
}

#[tokio::test]
async fn serve_as_a_process_scrapes_reloads_and_drains() {
    let exporter = TestServer::start(Reply::ok(python_exporter_body(unix_now() - 7200.0, 1))).await;
    let site = TestServer::start(Reply::ok("hello")).await;
    let serve = Serve::start_with(
        &yaml(&exporter.url("/metrics"), &[("site", &site.url("/page"))]),
        &["--web.enable-lifecycle"],
    )
    .await;

    // Values move as probes run.
    let text = serve
        .until("two successful exporter runs", |t| {
            total(
                t,
                "probe_runs_total",
                &[("probe", "bot-exporter"), ("outcome", "success")],
            ) >= 2.0
        })
        .await;
    assert_eq!(
        total(&text, "prober_config_last_reload_successful", &[]),
        1.0
    );
    assert!(total(&text, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(total(&text, "prober_schedule_lateness_seconds_count", &[]) >= 2.0);
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    // A scraper asking as Prometheus 2.42 does (OpenMetrics preferred,
    // gzip) gets the same exposition in the text format, gzipped.
    let gz = reqwest::Client::new()
        .get(format!("{}/metrics", serve.base))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(
        gz.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&gz.bytes().await.unwrap()[..]),
        &mut unzipped,
    )
    .unwrap();
    assert!(total(&unzipped, "probe_runs_total", &[("probe", "bot-exporter")]) >= 2.0);
    promtool_check_metrics(&unzipped).unwrap_or_else(|e| panic!("promtool: {e}\n{unzipped}"));
    for path in ["/healthz", "/ready"] {
        let r = reqwest::get(format!("{}{path}", serve.base)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // A good reload (SIGHUP): `site` goes, `site-2` comes.
    serve.write_config(&yaml(
        &exporter.url("/metrics"),
        &[("site-2", &site.url("/page"))],
    ));
    serve.signal("-HUP");
    let text = serve
        .until(
            "the new probe runs and the removed one's series are gone",
            |t| {
                total(t, "probe_runs_total", &[("probe", "site-2")]) >= 1.0
                    && !t.contains("probe=\"site\"")
            },
        )
        .await;
    assert_eq!(
        total(&text, "prober_config_last_reload_successful", &[]),
        1.0
    );

    // A bad reload (POST /-/reload): refused, the old config keeps running.
    serve.write_config("target: {name: bot}\nprobes:\n  - name: x\n    every: soon\n");
    let r = reqwest::Client::new()
        .post(format!("{}/-/reload", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("probes.yaml:4:12: probes[0].every: invalid duration \"soon\""),
        "{body}"
    );
    let before = total(
        &serve.metrics().await,
        "probe_runs_total",
        &[("probe", "site-2")],
    );
    let text = serve
        .until("the old probes keep running", |t| {
            total(t, "probe_runs_total", &[("probe", "site-2")]) > before
        })
        .await;
    assert_eq!(
        total(&text, "prober_config_last_reload_successful", &[]),
        0.0
    );

    // SIGTERM drains and exits 0.
    let mut serve = serve;
    serve.signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), serve.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_fails_fast_on_a_bad_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_probe"))
        .args([
            "serve",
            "--config",
            "bad_cron.yaml",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_cron.yaml:5:11"));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn serve_lets_go_of_the_pages_only_start_up_used() {
    let site = TestServer::start(Reply::ok("ok")).await;
    let serve = Serve::start_with(
        &one_site(&site.url("/")),
        &["--log-level", "info,twi_probe::serve=debug"],
    )
    .await;
    let line = serve.until_logged("start-up over: ").await;
    // "... mappings dropped from the process, B KiB resident before, A KiB after"
    let kib = |before: &str| -> u64 {
        let text = line.split(before).next().unwrap();
        text.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (before, after) = (kib(" KiB resident before"), kib(" KiB after"));
    assert!(after < before / 4, "{line}");
    // It stays so once running: what comes back is what runs.
    serve
        .until("a run after start-up", |t| {
            total(t, "probe_runs_total", &[]) >= 2.0
        })
        .await;
    let pid = serve.child.id().unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let now = twi_probe::startup_pages::droppable_resident_kib(&smaps);
    assert!(
        now < before,
        "{now} KiB resident again, {before} KiB before: {line}"
    );
}

/// glibc's thread arenas are reservations of 64 MiB each (HEAP_MAX_SIZE);
/// with one arena there are none, only the main heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_arenas(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| l.split_whitespace().nth(5).is_none())
        .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
        .filter_map(|(a, b)| {
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .filter(|size| *size >= 32 << 20)
        .count()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn serve_allocates_from_one_arena_unless_the_operator_says_otherwise() {
    let site = TestServer::start(Reply::ok("ok")).await;
    let yaml = one_site(&site.url("/"));
    for (env, arenas_expected) in [
        (None, false),
        (Some(("MALLOC_ARENA_MAX", "4")), true),
        (Some(("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")), true),
        // Any tunable: glibc cuts the variable as it parses it, so
        // whether it names arena_max further on cannot be seen.
        (
            Some(("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")),
            true,
        ),
    ] {
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let serve = Serve::start_with_env(&yaml, &[], &env).await;
        // Runs on the workers and renders on the blocking thread: every
        // thread of the process has allocated by then.
        serve
            .until("two runs", |t| total(t, "probe_runs_total", &[]) >= 2.0)
            .await;
        serve.metrics().await;
        let arenas = thread_arenas(serve.child.id().unwrap());
        assert_eq!(
            arenas > 0,
            arenas_expected,
            "{arenas} thread arenas with {env:?}"
        );
    }
}

#[tokio::test]
async fn serve_sandbox_probes_the_simulated_bot_and_its_series_move() {
    // The shipped probe set, on short intervals so the test is quick.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("probes.yaml")).unwrap();
    let quick = shipped
        .replace("every: 1m", "every: 2s")
        .replace("every: 30s", "every: 1s")
        .replace("timeout: 10s", "timeout: 1900ms")
        .replace("timeout: 5s", "timeout: 900ms");
    let serve = Serve::start_with(&quick, &["--sandbox"]).await;
    let text = serve
        .until("successes of every probe", |t| {
            let ok = |probe| {
                total(
                    t,
                    "probe_runs_total",
                    &[("probe", probe), ("outcome", "success")],
                ) >= 1.0
            };
            ok("help-command") && ok("presence") && ok("bot-exporter")
        })
        .await;
    assert_eq!(total(&text, "prober_gateway_connected", &[]), 1.0);
    assert_eq!(
        total(
            &text,
            "probe_target_presence_online",
            &[("probe", "presence")]
        ),
        1.0
    );
    assert!(
        total(
            &text,
            "probe_discord_latency_seconds_count",
            &[("phase", "reply")]
        ) >= 1.0
    );
    let ready = reqwest::get(format!("{}/ready", serve.base)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let mut serve = serve;
    serve.signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), serve.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The shipped probes.yaml, unchanged: the simulated users' slash commands
/// show in `probe_interaction_latency_seconds` within a minute of starting,
/// and each seen response is counted once it is complete. A deferred
/// response (`/stats`, or any command slower than 2 s) shows its `response`
/// latency at once and its outcome only at a later run, once edited: the
/// probe runs every 30 s, so both are in within 70 s.
#[tokio::test]
async fn serve_sandbox_exports_real_users_slash_command_latency_within_a_minute() {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("probes.yaml")).unwrap();
    let serve = Serve::start_with(&shipped, &["--sandbox"]).await;
    let response = |t: &str, command: Option<&str>| {
        let mut labels = vec![("probe", "slash-commands"), ("phase", "response")];
        labels.extend(command.map(|c| ("command", c)));
        total(t, "probe_interaction_latency_seconds_count", &labels)
    };
    serve
        .until_within("a slash-command latency", Duration::from_secs(60), |t| {
            response(t, None) >= 1.0
        })
        .await;
    let text = serve
        .until_within("a slash-command outcome", Duration::from_secs(70), |t| {
            total(
                t,
                "probe_interactions_total",
                &[("probe", "slash-commands")],
            ) >= 1.0
        })
        .await;
    // An outcome is counted only for a response seen: never more outcomes
    // than responses, command by command.
    for command in ["ping", "help", "stats", "other"] {
        let outcomes = total(
            &text,
            "probe_interactions_total",
            &[("probe", "slash-commands"), ("command", command)],
        );
        assert!(
            outcomes <= response(&text, Some(command)),
            "/{command}: {outcomes} outcomes without as many responses:\n{text}"
        );
    }
}

#[tokio::test]
async fn serve_starts_blind_when_discord_is_unreachable_and_says_so() {
    let nothing = crate::support::refused_addr().await;
    let token = std::env::temp_dir().join(format!("twi-probe-token-{}", std::process::id()));
    std::fs::write(&token, "not-used").unwrap();
    let serve = Serve::start(&format!(
        r#"
target: {{name: bot, user_id: "1234567890123456789"}}
discord: {{token_file: "{}", api_base: "http://{nothing}"}}
probes:
  - name: help
    every: 300ms
    timeout: 250ms
    command: {{channel_id: "1234567890123456790", message: "!help"}}
"#,
        token.display()
    ))
    .await;
    let text = serve
        .until("inconclusive Discord runs", |t| {
            total(
                t,
                "probe_runs_total",
                &[("probe", "help"), ("outcome", "inconclusive")],
            ) >= 2.0
        })
        .await;
    for outcome in ["failure", "timeout", "unreachable", "success"] {
        assert_eq!(
            total(
                &text,
                "probe_runs_total",
                &[("probe", "help"), ("outcome", outcome)]
            ),
            0.0,
            "a blind prober never blames the bot ({outcome})"
        );
    }
    let ready = reqwest::get(format!("{}/ready", serve.base)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let _ = std::fs::remove_file(&token);
}

fn gauge_of(text: &str, name: &str) -> f64 {
    total(text, name, &[])
}

#[tokio::test]
async fn a_probe_removed_while_its_run_is_in_flight_does_not_come_back() {
    // Each run of `slow` takes 800 ms; the reload removes it mid-run.
    let server = TestServer::start(Reply {
        status: 200,
        body: "ok".into(),
        delay: Duration::from_millis(800),
    })
    .await;
    let fast = TestServer::start(Reply::ok("ok")).await;
    let dir = std::env::temp_dir().join(format!("twi-probe-removed-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("probes.yaml");
    let keep = format!(
        "  - name: keep\n    every: 1h\n    timeout: 1s\n    http: {{url: \"{}\"}}\n",
        fast.url("/page")
    );
    std::fs::write(
        &path,
        format!(
            "target: {{name: bot}}\nprobes:\n  - name: slow\n    every: 2s\n    timeout: 1500ms\n    http: {{url: \"{}\"}}\n{keep}",
            server.url("/page")
        ),
    )
    .unwrap();
    let service = twi_probe::serve::Service::start(path.clone(), Default::default())
        .await
        .unwrap();
    // Each probe says when its next run is due: for `keep` (every 1h) its
    // first slot, within the first 5 minutes (set once its timer task runs).
    let metrics = service.metrics();
    let next_run = |t: &str| total(t, "probe_next_run_timestamp_seconds", &[("probe", "keep")]);
    let text = until_changed(&metrics, "the next-run gauge", |t| next_run(t) > 0.0).await;
    let next = next_run(&text);
    let now = unix_now();
    assert!(
        next > now - 1.0 && next <= now + 301.0,
        "next run {next}, now {now}"
    );
    // Wait for a run of `slow` to be in flight.
    until_changed(&metrics, "a run of slow in flight", |t| {
        gauge_of(t, "prober_probes_in_flight") >= 1.0
    })
    .await;
    std::fs::write(&path, format!("target: {{name: bot}}\nprobes:\n{keep}")).unwrap();
    service.reload().await.unwrap();
    let text = service.metrics().render();
    assert_eq!(total(&text, "probe_runs_total", &[("probe", "slow")]), 0.0);
    assert!(
        gauge_of(&text, "prober_probes_in_flight") >= 1.0,
        "the run is still going"
    );
    // The run ends (recorded before it stops counting as in flight)...
    until_changed(&metrics, "the run's end", |t| {
        gauge_of(t, "prober_probes_in_flight") == 0.0
    })
    .await;
    // ...and its result must not bring the removed probe's series back
    // (they are forgotten once it is recorded).
    until_changed_within(
        &metrics,
        "the removed probe's series gone",
        Duration::from_secs(2),
        |t| !t.contains("probe=\"slow\""),
    )
    .await;
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Discord rejects the prober's token mid-session (close 4004): the
/// prober does not stay silently blind. `/ready` says why, a metric says
/// so, and the Discord probes are inconclusive (never the bot's fault).
#[tokio::test]
async fn a_token_rejected_mid_session_is_said_everywhere() {
    let sb = crate::discord::start_sandbox(twi_sandbox::SandboxConfig::default()).await;
    let path = presence_config(&sb, "twi-probe-4004", "1h", "2s");
    let options = twi_probe::serve::ServeOptions {
        token: Some(twi_probe::config::Secret::new(
            sb.account("prober").unwrap().token.clone(),
        )),
        rewrite: None,
        enable_lifecycle: false,
        web: Default::default(),
    };
    let service = twi_probe::serve::Service::start(path.clone(), options)
        .await
        .unwrap();
    assert_eq!(service.ready(), Ok(()));
    sb.control().close_gateway("prober", 4004).unwrap();
    // The metric follows the session's end; /ready says why at the latest
    // by the follower's next gateway sample (each second).
    let said_why = || service.ready().is_err_and(|why| why.contains("4004"));
    until_changed(&service.metrics(), "/ready saying why", |t| {
        gauge_of(t, "prober_discord_token_rejected") == 1.0 && said_why()
    })
    .await;
    let why = service.ready().unwrap_err();
    assert!(
        why.starts_with("Discord rejected the prober's token mid-session (gateway close 4004)"),
        "{why}"
    );
    let text = service.metrics().render();
    assert_eq!(
        gauge_of(&text, "prober_discord_token_rejected"),
        1.0,
        "{text}"
    );
    assert_eq!(gauge_of(&text, "prober_gateway_connected"), 0.0);
    service.shutdown().await;
    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// `POST /-/reload` is refused (403) unless `--web.enable-lifecycle` is
/// given, as in Prometheus: any page a browser opens could post to it.
#[tokio::test]
async fn reload_over_http_needs_the_lifecycle_flag() {
    let site = TestServer::start(Reply::ok("hello")).await;
    let serve = Serve::start(&format!(
        "target: {{name: bot}}\nprobes:\n  - name: site\n    every: 1h\n    timeout: 1s\n    http: {{url: \"{}\"}}\n",
        site.url("/page")
    ))
    .await;
    serve.write_config("target: {name: bot}\nprobes:\n  - name: x\n    every: soon\n");
    let r = reqwest::Client::new()
        .post(format!("{}/-/reload", serve.base))
        .header("Origin", "http://elsewhere.example")
        .header("Content-Type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("--web.enable-lifecycle"), "{body}");
    // Nothing was reloaded: the old probe is still there.
    assert!(serve.metrics().await.contains("probe=\"site\""));
}

/// A prober started while Discord cannot be reached (its gateway URL
/// request fails) is blind: its Discord probes are `inconclusive`, never
/// the bot's fault. When Discord comes up it connects (the retry, every
/// 30 s) and the same probes succeed. The wait is the retry's period.
#[tokio::test]
async fn a_prober_started_blind_connects_when_discord_comes_up() {
    let sb = crate::discord::start_sandbox(twi_sandbox::SandboxConfig::default()).await;
    for path in ["/gateway", "/gateway/bot"] {
        sb.control()
            .force_http(twi_sandbox::HttpFault {
                method: Some("GET".into()),
                path: path.into(),
                status: 502,
                duration: None,
                count: None,
            })
            .unwrap();
    }
    let path = presence_config(&sb, "twi-probe-blind", "1s", "900ms");
    let options = twi_probe::serve::ServeOptions {
        token: Some(twi_probe::config::Secret::new(
            sb.account("prober").unwrap().token.clone(),
        )),
        ..Default::default()
    };
    let service = twi_probe::serve::Service::start(path.clone(), options)
        .await
        .expect("an unreachable Discord is not fatal");
    assert!(service.ready().is_err(), "blind, and /ready says so");
    let metrics = service.metrics();
    let runs = |t: &str, outcome| {
        total(
            t,
            "probe_runs_total",
            &[("probe", "presence"), ("outcome", outcome)],
        )
    };
    until_changed(&metrics, "inconclusive runs while blind", |t| {
        runs(t, "inconclusive") >= 1.0
    })
    .await;

    sb.control().clear_faults();
    let text = until_changed_within(
        &metrics,
        "a successful run after Discord came up",
        Duration::from_secs(60),
        |t| runs(t, "success") >= 1.0,
    )
    .await;
    for outcome in ["failure", "timeout", "unreachable"] {
        assert_eq!(
            runs(&text, outcome),
            0.0,
            "never the bot's fault ({outcome})"
        );
    }
    assert_eq!(service.ready(), Ok(()));
    service.shutdown().await;
    sb.shutdown().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A probes.yaml with one presence probe against `sb`, in a temp dir of its
/// own (for the in-process `Service` tests).
fn presence_config(sb: &twi_sandbox::Sandbox, tag: &str, every: &str, timeout: &str) -> PathBuf {
    let d = sb.description();
    let bot = &sb.account("twi-bot-shard").unwrap().id;
    let dir = std::env::temp_dir().join(format!("{tag}-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("probes.yaml");
    std::fs::write(
        &path,
        format!(
            "target: {{name: twi-bot-shard, user_id: \"{bot}\"}}\n\
             discord: {{token_env: UNUSED_IN_TESTS, api_base: \"{}\"}}\n\
             probes:\n  - name: presence\n    every: {every}\n    timeout: {timeout}\n    \
             presence: {{guilds: [\"{}\"]}}\n",
            d.rest_base, d.guilds[0].id
        ),
    )
    .unwrap();
    path
}
