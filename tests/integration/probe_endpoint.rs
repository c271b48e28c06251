//! `GET /probe` (the multi-target exporter pattern): `probe serve` in
//! process on 127.0.0.1:0 against the sandbox, asked over real HTTP and
//! scraped by a real Prometheus with file service discovery, using
//! monitoring/prometheus.multi-target.yml and its file_sd example.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use twi_probe::config::Secret;
use twi_probe::serve::{ServeOptions, Service};
use twi_sandbox::{BotBehaviour, Latency, Sandbox, SandboxConfig};

use crate::discord::start_sandbox;
use crate::monitoring::{Daemon, TempDir, monitoring, poll, prom_query, read, replace, tool};
use crate::serve::total;
use crate::support::{Reply, TestServer, refused_addr};

/// The sandbox, `probe serve` on it, and what the tests look at.
struct Rig {
    sb: Sandbox,
    service: std::sync::Arc<Service>,
    base: String,
    dir: TempDir,
    client: reqwest::Client,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
    prober: u64,
    probes_channel: u64,
    general_channel: u64,
    guild: String,
}

/// The modules and a scrape-only probe; `{...}` filled in from the sandbox.
const CONFIG: &str = r#"
target: {name: twi-bot-shard, user_id: "{bot}"}
discord: {token_env: UNUSED_IN_TESTS, api_base: "{api}", send_interval: 1s}
probes:
  - name: help-on-scrape
    every: never
    timeout: 5s
    command:
      channel_id: "{general}"
      guild_id: "{guild}"
      message: "!help"
      expect: {embed_title: "^Interactive Help System"}
modules:
  help_command:
    timeout: 5s
    command:
      channels: [{channel_id: "{probes}", guild_id: "{guild}"}]
      message: "!help"
      expect: {embed_title: "^Interactive Help System"}
  http_2xx:
    timeout: 10s
    allow_targets: 'http://127\.0\.0\.1:[0-9]+/.*'
    http: {expect_status: [2xx]}
"#;

async fn rig(bot_latency: Duration) -> Rig {
    let mut cfg = SandboxConfig::default();
    cfg.bot.behaviour = BotBehaviour {
        latency: Latency::fixed(bot_latency),
        ..BotBehaviour::default()
    };
    let sb = start_sandbox(cfg).await;
    let d = sb.description().clone();
    let probes_channel = sb.channel_id("probes").unwrap();
    let general_channel = sb.channel_id("general").unwrap();
    let guild = d.guilds[0].id.clone();
    let yaml = CONFIG
        .replace("{bot}", &sb.account("twi-bot-shard").unwrap().id)
        .replace("{api}", &d.rest_base)
        .replace("{probes}", &probes_channel.to_string())
        .replace("{general}", &general_channel.to_string())
        .replace("{guild}", &guild);
    let dir = TempDir::new("probe-endpoint");
    let path = dir.write("probes.yaml", &yaml);
    let token = Secret::new(sb.account("prober").unwrap().token.clone());
    let prober = sb.account("prober").unwrap().id.parse().unwrap();
    let service = Service::start(
        path,
        ServeOptions {
            token: Some(token),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("probe serve starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = tokio::spawn({
        let (stop, service) = (stop.clone(), service.clone());
        async move {
            twi_probe::serve::run(service, listener, stop)
                .await
                .unwrap();
        }
    });
    let client = reqwest::Client::new();
    // Discord connected before the first scrape.
    poll(
        "probe serve ready",
        Duration::from_secs(30),
        String::new,
        || async {
            let r = client.get(format!("{base}/ready")).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    Rig {
        sb,
        service,
        base,
        dir,
        client,
        stop,
        served,
        prober,
        probes_channel,
        general_channel,
        guild,
    }
}

impl Rig {
    /// `GET /probe` with `query` and Prometheus' timeout header.
    async fn scrape(&self, query: &[(&str, &str)], timeout: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}/probe", self.base))
            .query(query)
            .header("X-Prometheus-Scrape-Timeout-Seconds", timeout)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Messages the prober sent in `channel`, by the sandbox's ground truth.
    fn sent_in(&self, channel: u64) -> usize {
        self.sb
            .control()
            .truths(Some(channel))
            .iter()
            .filter(|t| t.author_id == self.prober)
            .count()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap();
    }
}

fn outcome_of(body: &str) -> String {
    for o in [
        "success",
        "failure",
        "timeout",
        "unreachable",
        "inconclusive",
    ] {
        if total(body, "probe_outcome", &[("outcome", o)]) == 1.0 {
            return o.into();
        }
    }
    panic!("no outcome in:\n{body}")
}

#[tokio::test]
async fn a_target_outside_the_module_is_refused_with_400_and_nothing_is_sent() {
    let r = rig(Duration::from_millis(50)).await;
    let general = r.general_channel.to_string();
    let with_guild = format!("{}/{}", r.guild, r.general_channel);
    let wrong_guild = format!("1/{}", r.probes_channel);
    for (query, why) in [
        (
            vec![("module", "help_command"), ("target", general.as_str())],
            "is not listed",
        ),
        (
            vec![("module", "help_command"), ("target", with_guild.as_str())],
            "is not listed",
        ),
        (
            vec![("module", "help_command"), ("target", wrong_guild.as_str())],
            "is listed with guild",
        ),
        (
            vec![("module", "help_command"), ("target", "#general")],
            "is not a Discord id",
        ),
        (
            vec![("module", "help_command"), ("target", "+123")],
            "is not a Discord id",
        ),
        (
            vec![("module", "nope"), ("target", "1")],
            "no module named \"nope\"",
        ),
        (vec![("probe", "nope")], "no probe named \"nope\""),
        (
            vec![("module", "http_2xx"), ("target", "http://example.org/")],
            "does not match modules.http_2xx.allow_targets",
        ),
        (
            vec![("module", "http_2xx"), ("target", "ftp://127.0.0.1:1/")],
            "unsupported URL scheme",
        ),
        (
            vec![("module", "http_2xx"), ("target", " http://127.0.0.1:1/")],
            "surrounding spaces",
        ),
    ] {
        let (status, body) = r.scrape(&query, "5").await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert!(body.contains(why), "{query:?}: {body}");
    }
    let (status, body) = r
        .scrape(&[("probe", "help-on-scrape")], "not-a-number")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("X-Prometheus-Scrape-Timeout-Seconds"),
        "{body}"
    );
    assert_eq!(r.sent_in(r.general_channel), 0, "nothing was sent");
    assert_eq!(r.sent_in(r.probes_channel), 0, "nothing was sent");

    // The listed channel works, with or without its guild.
    let target = format!("{}/{}", r.guild, r.probes_channel);
    let (status, body) = r
        .scrape(&[("module", "help_command"), ("target", &target)], "10")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(outcome_of(&body), "success", "{body}");
    assert_eq!(
        total(&body, "probe_success", &[("probe", "help_command")]),
        1.0
    );
    assert!(body.contains("probe_run_discord_latency_seconds{kind=\"command\",phase=\"reply\",probe=\"help_command\"}"), "{body}");
    crate::metrics::promtool_check_metrics(&body).expect("promtool check metrics passes");
    assert_eq!(r.sent_in(r.probes_channel), 1);
    assert_eq!(r.sent_in(r.general_channel), 0);

    // debug=true: the trace for a person, with the metrics.
    let (status, body) = r
        .scrape(
            &[
                ("module", "help_command"),
                ("target", &r.probes_channel.to_string()),
                ("debug", "true"),
            ],
            "10",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for part in [
        "Module \"help_command\"",
        "outcome      success",
        "replied in",
        "message id",
        "Metrics that would have been returned:",
        "probe_success{",
    ] {
        assert!(body.contains(part), "{part:?} in:\n{body}");
    }
    r.stop().await;
}

#[tokio::test]
async fn two_scrapes_of_one_channel_at_once_send_once_and_the_other_is_inconclusive() {
    // The bot takes 1.5 s, so the first run holds the channel's turn while
    // the second scrape arrives.
    let r = rig(Duration::from_millis(1500)).await;
    // The same target twice, and the same channel named with its guild:
    // one run sends; the others find the module's run, or the channel's
    // turn, taken.
    let target = r.probes_channel.to_string();
    let with_guild = format!("{}/{}", r.guild, r.probes_channel);
    let module = [("module", "help_command"), ("target", target.as_str())];
    let other = [("module", "help_command"), ("target", with_guild.as_str())];
    let ((_, a), (_, b), (_, c)) = tokio::join!(
        r.scrape(&module, "10"),
        r.scrape(&module, "10"),
        r.scrape(&other, "10")
    );
    let mut outcomes = [outcome_of(&a), outcome_of(&b), outcome_of(&c)];
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["inconclusive", "inconclusive", "success"],
        "{a}\n{b}\n{c}"
    );
    assert_eq!(r.sent_in(r.probes_channel), 1, "one send");
    // An inconclusive run says nothing about the bot: no probe_success.
    for body in [&a, &b, &c] {
        let success = outcome_of(body) == "success";
        assert_eq!(body.contains("probe_success{"), success, "{body}");
    }

    // A scrape-only probe: two scrapes at once are one run.
    let by_name = [("probe", "help-on-scrape")];
    let ((_, a), (_, b)) = tokio::join!(r.scrape(&by_name, "10"), r.scrape(&by_name, "10"));
    let mut outcomes = [outcome_of(&a), outcome_of(&b)];
    outcomes.sort();
    assert_eq!(outcomes, ["inconclusive", "success"], "{a}\n{b}");
    assert_eq!(r.sent_in(r.general_channel), 1, "one send");

    // Every answer counts as a run in the service's own /metrics and the
    // status page's history.
    let metrics = r
        .client
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (probe, inconclusive) in [("help_command", 2.0), ("help-on-scrape", 1.0)] {
        for (outcome, n) in [("success", 1.0), ("inconclusive", inconclusive)] {
            let runs = total(
                &metrics,
                "probe_runs_total",
                &[("probe", probe), ("outcome", outcome)],
            );
            assert_eq!(runs, n, "{probe} {outcome}:\n{metrics}");
        }
        let runs: Value = r
            .client
            .get(format!("{}/api/v1/probes/{probe}/runs", r.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kept = runs["runs"].as_array().unwrap().len();
        assert_eq!(kept as f64, 1.0 + inconclusive, "{runs}");
    }

    // A reload without the module: its series and history go.
    let path = r.dir.path().join("probes.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = &yaml[..yaml.find("  help_command:").unwrap()];
    std::fs::write(&path, format!("{without}  http_2xx:\n    http: {{}}\n")).unwrap();
    r.service.reload().await.expect("the reload succeeds");
    let metrics = r
        .client
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("probe=\"help_command\""), "{metrics}");
    assert!(metrics.contains("probe=\"help-on-scrape\""), "{metrics}");
    let gone = r
        .client
        .get(format!("{}/api/v1/probes/help_command/runs", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    r.stop().await;
}

#[tokio::test]
async fn prometheus_scrapes_probe_for_file_sd_targets_and_a_discord_module() {
    let r = rig(Duration::from_millis(50)).await;
    let ok = TestServer::start(Reply::ok("fine")).await;
    let broken = TestServer::start(Reply {
        status: 500,
        ..Reply::ok("broken")
    })
    .await;
    let slow = TestServer::start(Reply {
        delay: Duration::from_secs(8),
        ..Reply::ok("slow")
    })
    .await;
    let (a, b) = (ok.url("/page"), broken.url("/page"));

    // The shipped multi-target config, pointed at this prober, on short intervals.
    let prober_addr = r.base.trim_start_matches("http://").to_string();
    let shipped = read(&monitoring().join("prometheus.multi-target.yml"));
    let config = replace(&shipped, "prober:9477", &prober_addr);
    let config = replace(&config, "scrape_interval: 30s", "scrape_interval: 1s");
    let config = replace(&config, "scrape_timeout: 10s", "scrape_timeout: 1s");
    let config = replace(&config, "scrape_interval: 1m", "scrape_interval: 3s");
    let config = replace(&config, "scrape_timeout: 20s", "scrape_timeout: 3s");
    // One more job: a target slower than the scrape timeout (2 s) allows.
    let config = format!(
        "{config}\n  - job_name: slow\n    metrics_path: /probe\n    params: {{module: [http_2xx], target: ['{}']}}\n    scrape_interval: 3s\n    scrape_timeout: 2s\n    static_configs: [{{targets: ['{prober_addr}']}}]\n",
        slow.url("/page")
    );
    let sd = r.dir.path().join("file_sd");
    std::fs::create_dir_all(&sd).unwrap();
    // The shipped file_sd examples, with these targets.
    let write_sd = |name: &str, text: String| {
        let tmp = sd.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, sd.join(name)).unwrap();
    };
    let http_example = read(&monitoring().join("file_sd/http_targets.yml.example"));
    let http_targets = |targets: &[&str]| -> String {
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        replace(
            &http_example,
            "['https://twi-bot-shard.example.org/health', 'https://wiki.wanderinginn.example/']",
            &format!("[{list}]"),
        )
    };
    write_sd("http_targets.yml", http_targets(&[&a, &b]));
    let command_example = read(&monitoring().join("file_sd/command_targets.yml.example"));
    let channel_target = format!("{}/{}", r.guild, r.probes_channel);
    let outside = format!("{}/{}", r.guild, r.general_channel);
    let commands = replace(
        &command_example,
        "['1020304050607080902/1020304050607080903']",
        &format!("['{channel_target}', '{outside}']"),
    );
    write_sd("command_targets.yml", commands);
    let prom_config = r.dir.write("prometheus.yml", &config);
    let prom_addr = refused_addr().await;
    let prom = Daemon::spawn(
        "prometheus",
        &tool("prometheus", "prometheus"),
        &[
            format!("--config.file={}", prom_config.display()),
            format!(
                "--storage.tsdb.path={}",
                r.dir.path().join("prom-data").display()
            ),
            format!("--web.listen-address={prom_addr}"),
        ],
        r.dir.path(),
    );
    let prom_base = format!("http://{prom_addr}");
    let client = reqwest::Client::new();
    let explain = || prom.log_tail();
    // Instances of a query's series with their values.
    let series = |expr: String| {
        let (client, prom_base) = (client.clone(), prom_base.clone());
        async move {
            let mut found: Vec<(String, String)> = prom_query(&client, &prom_base, &expr)
                .await
                .ok()?
                .iter()
                .map(|s| {
                    (
                        s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                        s["value"][1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            found.sort();
            Some(found)
        }
    };

    // The http job's targets (instance) and their probe_success, until
    // they are `want` (in any order).
    let until_http = |what: &'static str, mut want: Vec<(String, String)>| {
        want.sort();
        let series = &series;
        async move {
            poll(what, Duration::from_secs(60), explain, || {
                let want = &want;
                async move {
                    let got = series("probe_success{job=\"twi_probe_http\"}".into()).await?;
                    (got == *want).then_some(())
                }
            })
            .await
        }
    };

    // http targets from file_sd: one per target, instance = the target.
    until_http(
        "both http targets probed",
        vec![(a.clone(), "1".to_string()), (b.clone(), "0".to_string())],
    )
    .await;

    // The Discord module: the listed channel answers; the other is refused
    // (a 400 fails the scrape: up 0) and the prober never posts there.
    poll(
        "the command module's series",
        Duration::from_secs(60),
        explain,
        || async {
            let got = series("probe_success{job=\"twi_probe_commands\"}".into()).await?;
            let up = series("up{job=\"twi_probe_commands\"}".into()).await?;
            let mut want_up = vec![
                (channel_target.clone(), "1".to_string()),
                (outside.clone(), "0".to_string()),
            ];
            want_up.sort();
            (got == vec![(channel_target.clone(), "1".to_string())] && up == want_up).then_some(())
        },
    )
    .await;
    assert_eq!(
        r.sent_in(r.general_channel),
        0,
        "never posts outside the list"
    );
    let reply = series(
        "probe_run_discord_latency_seconds{job=\"twi_probe_commands\",phase=\"reply\"}".into(),
    )
    .await
    .unwrap();
    assert_eq!(reply.len(), 1, "{reply:?}");

    // The slow target: the run is cut by the scrape's time (2 s - 0.5 s),
    // answers in time (up 1) with a timeout, not Prometheus' own failure.
    poll(
        "the slow target cut by the scrape timeout",
        Duration::from_secs(60),
        explain,
        || async {
            let timeout =
                series("probe_outcome{job=\"slow\",outcome=\"timeout\"} == 1".into()).await?;
            let duration = series("probe_duration_seconds{job=\"slow\"} < 1.9".into()).await?;
            let up = series("up{job=\"slow\"} == 1".into()).await?;
            (timeout.len() == 1 && duration.len() == 1 && up.len() == 1).then_some(())
        },
    )
    .await;

    // file_sd drops one target and adds another: series follow.
    let c = ok.url("/page?c");
    write_sd("http_targets.yml", http_targets(&[&b, &c]));
    until_http(
        "series follow the file_sd targets",
        vec![(b.clone(), "0".to_string()), (c.clone(), "1".to_string())],
    )
    .await;
    drop(prom);
    r.stop().await;
}

#[test]
fn the_multi_target_scrape_config_passes_promtool() {
    let path = monitoring().join("prometheus.multi-target.yml");
    let out = crate::monitoring::run_ok(
        &crate::monitoring::promtool(),
        &["check", "config", path.to_str().unwrap()],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test]
async fn a_slot_that_comes_due_during_a_scrapes_run_is_skipped() {
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    use twi_probe::metrics::Metrics;
    use twi_probe::probe::Probe;
    use twi_probe::schedule::{SlotStats, run_probe};

    let server = TestServer::start(Reply::ok("ok")).await;
    let cfg = crate::support::config(&format!(
        "target: {{name: bot}}\nprobes:\n  - name: p\n    every: 100ms\n    timeout: 90ms\n    http: {{url: \"{}\"}}\n",
        server.url("/page")
    ));
    let probe = Arc::new(Probe::new(cfg.probes[0].clone(), None).unwrap());
    // As a scrape's run of the probe holds it.
    let scrape_run = probe.try_begin().expect("no run yet");
    assert!(probe.try_begin().is_none(), "one run at a time");
    let stats = Arc::new(SlotStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_probe(
        probe.clone(),
        Arc::new(Metrics::new(&cfg)),
        Arc::new(Semaphore::new(4)),
        stop.clone(),
        stats.clone(),
        None,
        None,
    ));
    let stats_now = || stats.snapshot();
    poll(
        "slots skipped",
        Duration::from_secs(20),
        String::new,
        || async {
            let (_, runs, skips) = stats_now();
            assert_eq!(runs, 0, "no scheduled run during the scrape's");
            (skips >= 2).then_some(())
        },
    )
    .await;
    assert!(server.methods_seen().is_empty(), "nothing was fetched");
    drop(scrape_run);
    poll(
        "a run once the scrape's ended",
        Duration::from_secs(20),
        String::new,
        || async { (!server.methods_seen().is_empty()).then_some(()) },
    )
    .await;
    stop.cancel();
    task.await.unwrap();
    let (slots, runs, skips) = stats.snapshot();
    assert_eq!(slots, runs + skips);
}
