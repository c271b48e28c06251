//! `probe serve` reloads: what a reload keeps (series, counters, schedule
//! phase, probe state), what it forgets (series of probes whose name, kind
//! or labels changed), the run limit, and a shutdown that leaves no task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use twi_probe::config::Secret;
use twi_probe::discord::DiscordSession;
use twi_probe::exposition;
use twi_probe::serve::{ServeOptions, Service};

use crate::discord::start_sandbox;
use crate::serve::total;
use crate::support::{Reply, TestServer};

/// A config file in its own directory, removed on drop.
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(yaml: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!(
            "twi-probe-reload-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probes.yaml");
        std::fs::write(&path, yaml).unwrap();
        ConfigFile { dir, path }
    }

    fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Renders `/metrics` until `ok` holds (10 s at most) and returns the text.
async fn until(service: &Service, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = service.metrics().render();
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never: {what}\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn runs(text: &str, probe: &str) -> f64 {
    total(text, "probe_runs_total", &[("probe", probe)])
}

fn value(text: &str, name: &str, probe: &str) -> Option<f64> {
    exposition::parse(text)
        .unwrap()
        .into_iter()
        .find(|s| s.name == name && s.label("probe") == Some(probe))
        .map(|s| s.value)
}

/// The next slot is kept: equal up to the clock reads that turn the
/// schedule's monotonic instant into wall time (a moved phase lands
/// anywhere in the probe's interval, here an hour).
fn assert_same_slot(next: Option<f64>, phase: f64) {
    let next = next.expect("steady has a next slot");
    assert!(
        (next - phase).abs() < 0.05,
        "steady's next slot moved: {phase} -> {next}"
    );
}

fn http_probe(name: &str, every: &str, timeout: &str, url: &str, labels: &str) -> String {
    format!(
        "  - name: {name}\n    every: {every}\n    timeout: {timeout}\n    http: {{url: \"{url}\"}}\n{labels}"
    )
}

/// Removing the only probe with a label name (as removing the only presence
/// probe drops `shard`) and adding it back changes every family's label
/// names; the unchanged probes keep their counters and their schedule's
/// phase, even with a changed setting (timeout), and the prober's own
/// histogram keeps counting.
#[tokio::test]
async fn unchanged_probes_keep_counters_and_phase_when_label_names_change() {
    let site = TestServer::start(Reply::ok("ok")).await;
    let url = site.url("/page");
    let labelled = http_probe(
        "located",
        "1h",
        "1s",
        &url,
        "    labels: {location: home}\n",
    );
    let busy = |timeout| http_probe("busy", "50ms", timeout, &url, "");
    let steady = |timeout| http_probe("steady", "1h", timeout, &url, "");
    let yaml = |probes: &[String]| format!("target: {{name: bot}}\nprobes:\n{}", probes.concat());
    let file = ConfigFile::new(&yaml(&[busy("40ms"), steady("1s"), labelled.clone()]));
    let service = Service::start(file.path.clone(), ServeOptions::default())
        .await
        .unwrap();
    let before = until(&service, "busy ran 3 times", |t| runs(t, "busy") >= 3.0).await;
    assert!(before.contains("location=\"home\""));
    let phase = value(&before, "probe_next_run_timestamp_seconds", "steady").unwrap();
    let lateness = total(&before, "prober_schedule_lateness_seconds_count", &[]);

    // `located` goes, and with it the `location` label name.
    file.write(&yaml(&[busy("30ms"), steady("800ms")]));
    service.reload().await.unwrap();
    let after = service.metrics().render();
    assert!(!after.contains("location"), "{after}");
    assert!(
        runs(&after, "busy") >= runs(&before, "busy"),
        "busy's counters went back: {} -> {}",
        runs(&before, "busy"),
        runs(&after, "busy")
    );
    assert!(total(&after, "prober_schedule_lateness_seconds_count", &[]) >= lateness);
    // Once busy has run again, steady's new schedule has started too (the
    // test's waits let every ready task run): it kept the next slot.
    let counted = runs(&after, "busy");
    let after = until(&service, "busy ran again", |t| runs(t, "busy") > counted).await;
    assert_same_slot(
        value(&after, "probe_next_run_timestamp_seconds", "steady"),
        phase,
    );

    // Back again: the label name returns, and the counters go on.
    let counted = runs(&after, "busy");
    file.write(&yaml(&[busy("30ms"), steady("800ms"), labelled]));
    service.reload().await.unwrap();
    let again = service.metrics().render();
    assert!(again.contains("location=\"home\""));
    assert!(runs(&again, "busy") >= counted);
    let counted = runs(&again, "busy");
    let again = until(&service, "busy ran again", |t| runs(t, "busy") > counted).await;
    assert_same_slot(
        value(&again, "probe_next_run_timestamp_seconds", "steady"),
        phase,
    );
    crate::metrics::promtool_check_metrics(&again).unwrap();
    service.shutdown().await;
}

/// A probe whose label values change is, for Prometheus, another series:
/// the old ones go (no ghost `probe_next_run_timestamp_seconds` to set off
/// ProbeScheduleStalled), even with a run in flight during the reload.
#[tokio::test]
async fn a_probe_whose_labels_change_leaves_no_ghost_series() {
    let slow = TestServer::start(Reply {
        status: 200,
        body: "ok".into(),
        delay: Duration::from_millis(300),
    })
    .await;
    let url = slow.url("/page");
    let yaml = |location: &str| {
        format!(
            "target: {{name: bot}}\nprobes:\n{}",
            http_probe(
                "site",
                "400ms",
                "350ms",
                &url,
                &format!("    labels: {{location: {location}}}\n")
            )
        )
    };
    let file = ConfigFile::new(&yaml("home"));
    let service = Service::start(file.path.clone(), ServeOptions::default())
        .await
        .unwrap();
    until(&service, "a run of site in flight", |t| {
        total(t, "prober_probes_in_flight", &[]) >= 1.0
    })
    .await;
    file.write(&yaml("away"));
    service.reload().await.unwrap();
    let home = |t: &str| t.lines().any(|l| l.contains("location=\"home\""));
    assert!(!home(&service.metrics().render()));
    // The new schedule's first run comes after the old one's last run ended
    // and was forgotten.
    let text = until(&service, "a run with the new labels", |t| {
        total(t, "probe_runs_total", &[("location", "away")]) >= 1.0
    })
    .await;
    assert!(
        !home(&text),
        "ghost series:\n{}",
        text.lines()
            .filter(|l| l.contains("home"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    service.shutdown().await;
}

/// `serve.max_concurrency` applies on reload (it was read once): when it
/// grows, at once; when it shrinks, as the runs in flight end.
#[tokio::test]
async fn a_reload_applies_max_concurrency() {
    // 4 runs of 100 ms every 300 ms keep a limit of 1 busy. The timeout
    // leaves a wide margin: a run that timed out would free its permit
    // while the server still counted its request.
    let slow = TestServer::start(Reply {
        status: 200,
        body: "ok".into(),
        delay: Duration::from_millis(100),
    })
    .await;
    let url = slow.url("/page");
    let yaml_at = |url: &str, limit: usize| {
        let probes: String = (0..4)
            .map(|i| http_probe(&format!("p{i}"), "300ms", "290ms", url, ""))
            .collect();
        format!("target: {{name: bot}}\nserve: {{max_concurrency: {limit}}}\nprobes:\n{probes}")
    };
    let yaml = |limit: usize| yaml_at(&url, limit);
    let file = ConfigFile::new(&yaml(1));
    let service = Service::start(file.path.clone(), ServeOptions::default())
        .await
        .unwrap();
    let text = until(&service, "runs of every probe", |t| {
        (0..4).all(|i| runs(t, &format!("p{i}")) >= 1.0)
    })
    .await;
    assert_eq!(slow.max_concurrent(), 1, "{text}");
    file.write(&yaml(4));
    service.reload().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.max_concurrent() < 2 {
        assert!(Instant::now() < deadline, "the new limit never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Back to 1, the probes now on another server (so its count of
    // requests at once starts afresh): while the runs in flight on the
    // first end, no two runs go at once on the second.
    let other = TestServer::start(Reply {
        status: 200,
        body: "ok".into(),
        delay: Duration::from_millis(100),
    })
    .await;
    file.write(&yaml_at(&other.url("/page"), 1));
    service.reload().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while other.methods_seen().len() < 8 {
        assert!(Instant::now() < deadline, "too few runs after shrinking");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(other.max_concurrent(), 1, "the limit did not shrink");
    service.shutdown().await;
}

/// When the Discord session is replaced (a Discord setting changed), only
/// the Discord probes are rebuilt: the exporter probe keeps its state, so a
/// restart of the bot after the reload is still seen as one.
#[tokio::test]
async fn a_new_discord_session_leaves_exporter_probes_and_their_state_alone() {
    let sb = start_sandbox(crate::discord_probes::sandbox_config(Default::default())).await;
    let d = sb.description().clone();
    let bot = sb.account("twi-bot-shard").unwrap().id.clone();
    let channel = sb.channel_id("probes").unwrap();
    let yaml = |send_interval: &str| {
        format!(
            r#"
target: {{name: twi-bot-shard, user_id: "{bot}", exporter_url: "{exporter}"}}
discord: {{token_env: UNUSED_IN_TESTS, api_base: "{base}", send_interval: {send_interval}}}
probes:
  - name: help
    every: 1h
    timeout: 3s
    command: {{channel_id: "{channel}", message: "!help"}}
  - name: up
    every: 2s
    timeout: 1s
    exporter: {{}}
"#,
            exporter = d.exporter_url.clone().unwrap(),
            base = d.rest_base,
        )
    };
    let file = ConfigFile::new(&yaml("1s"));
    let options = ServeOptions {
        token: Some(Secret::new(sb.account("prober").unwrap().token.clone())),
        ..Default::default()
    };
    let service = Service::start(file.path.clone(), options).await.unwrap();
    // A restart is seen by comparing with the previous run's start time:
    // a rebuilt probe (whose first slot is anywhere in its 2 s) would have
    // none when the restart below comes.
    let before = until(&service, "up ran", |t| runs(t, "up") >= 1.0).await;
    file.write(&yaml("2s"));
    service.reload().await.unwrap();
    assert!(runs(&service.metrics().render(), "up") >= runs(&before, "up"));
    sb.control().bot_restart().await.unwrap();
    until(&service, "the restart seen", |t| {
        total(t, "probe_target_restarts_total", &[("probe", "up")]) >= 1.0
    })
    .await;
    service.shutdown().await;
    sb.shutdown().await;
}

/// Every task the service starts ends with `shutdown`: the Discord retry
/// loop of a blind start (it sleeps 30 s between tries), the drain of a
/// probe removed mid-run. Nothing is
/// left holding the service.
#[tokio::test]
async fn shutdown_leaves_no_task_behind() {
    let nothing = crate::support::refused_addr().await;
    let slow = TestServer::start(Reply {
        status: 200,
        body: "ok".into(),
        delay: Duration::from_millis(300),
    })
    .await;
    let token = ConfigFile::new("not-used");
    let discord = format!(
        "target: {{name: bot, user_id: \"1234567890123456789\"}}\ndiscord: {{token_file: \"{}\", api_base: \"http://{nothing}\"}}\nprobes:\n  - name: help\n    every: 1h\n    timeout: 1s\n    command: {{channel_id: \"1234567890123456790\", message: \"!help\"}}\n",
        token.path.display()
    );
    let keep = http_probe("keep", "1h", "1s", &slow.url("/page"), "");
    let file = ConfigFile::new(&format!(
        "{discord}{keep}{}",
        http_probe("slow", "400ms", "350ms", &slow.url("/page"), "")
    ));
    let service = Service::start(file.path.clone(), ServeOptions::default())
        .await
        .unwrap();
    until(&service, "a run of slow in flight", |t| {
        total(t, "prober_probes_in_flight", &[]) >= 1.0
    })
    .await;
    // `slow` goes mid-run (its drain is a task), and so does Discord (a
    // reload needs no connection then); the retry loop sleeps on.
    file.write(&format!("target: {{name: bot}}\nprobes:\n{keep}"));
    service.reload().await.unwrap();
    assert!(service.tasks_running() >= 1);
    service.shutdown().await;
    assert_eq!(service.tasks_running(), 0);
    assert_eq!(
        Arc::strong_count(&service),
        1,
        "a task still holds the service"
    );
}

/// A Discord session dropped without `shutdown` (its owner went away) stops
/// its serenity client: the prober's account leaves the gateway.
#[tokio::test]
async fn a_dropped_discord_session_leaves_the_gateway() {
    let sb = start_sandbox(crate::discord_probes::sandbox_config(Default::default())).await;
    let d = sb.description().clone();
    let config = twi_probe::config::Config::from_yaml(
        &format!(
            "target: {{name: bot, user_id: \"{}\"}}\ndiscord: {{token_env: UNUSED_IN_TESTS, api_base: \"{}\"}}\nprobes:\n  - name: help\n    command: {{channel_id: \"{}\", message: \"!help\"}}\n",
            sb.account("twi-bot-shard").unwrap().id,
            d.rest_base,
            sb.channel_id("probes").unwrap()
        ),
        Path::new("t.yaml"),
    )
    .unwrap();
    let token = Secret::new(sb.account("prober").unwrap().token.clone());
    let session = DiscordSession::connect(&config, &token).await.unwrap();
    assert!(sb.control().is_connected("prober").unwrap());
    drop(session);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sb.control().is_connected("prober").unwrap() {
        assert!(
            Instant::now() < deadline,
            "the dropped session is still connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sb.shutdown().await;
}
