//! The passive `interactions` probe against the sandbox's ground truth:
//! real users' slash commands (simulated) answered by the simulated bot,
//! measured by Discord's clock from what the prober's gateway saw.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use twi_probe::exposition;
use twi_probe::metrics::Metrics;
use twi_probe::probe::{InteractionObservation, Outcome};
use twi_sandbox::{BotBehaviour, Latency, RunCommand};

use crate::discord::EVENT_WAIT;
use crate::discord_probes::{Rig, rig, sandbox_config};

const SLASH: &str = r#"
  - name: slash
    every: 1m
    timeout: 2s
    interactions:
      guilds: ["{guild}"]
      commands: [ping, stats]
      error_reply: {embed_title: "Error"}
"#;

fn behaviour(error_rate: f64) -> BotBehaviour {
    BotBehaviour {
        latency: Latency {
            median: Duration::from_millis(40),
            p99: Some(Duration::from_millis(300)),
        },
        error_rate,
        ..BotBehaviour::default()
    }
}

fn run_command(r: &Rig, user: &str, command: &str) -> u64 {
    r.sb.control()
        .run_command(&RunCommand {
            user: user.into(),
            channel: "probes".into(),
            command: command.into(),
            options: None,
        })
        .unwrap()
}

/// Waits (bounded) until the bot has answered every interaction in `ids`.
async fn all_answered(r: &Rig, ids: &[u64]) {
    let deadline = Instant::now() + EVENT_WAIT * 3;
    while !ids.iter().all(|id| r.bot().answer_to(*id).is_some()) {
        assert!(Instant::now() < deadline, "the bot answers every command");
        r.bot().idle().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latencies per (command label, phase) and outcomes per command label,
/// from probe runs until `expected` outcomes were seen (the prober's
/// gateway may still be delivering the last edits).
async fn observe(
    r: &Rig,
    metrics: &Metrics,
    expected: usize,
) -> (
    HashMap<(String, &'static str), Vec<Duration>>,
    HashMap<String, (usize, usize)>,
    Vec<Outcome>,
) {
    let mut latencies: HashMap<(String, &'static str), Vec<Duration>> = HashMap::new();
    let mut outcomes: HashMap<String, (usize, usize)> = HashMap::new();
    let mut runs = Vec::new();
    let spec = r.config.probes.iter().find(|p| p.name == "slash").unwrap();
    let deadline = Instant::now() + EVENT_WAIT;
    while outcomes.values().map(|(s, f)| s + f).sum::<usize>() < expected {
        assert!(Instant::now() < deadline, "the prober sees every response");
        let res = r.run("slash").await;
        metrics.record(spec, &res);
        runs.push(res.outcome);
        for o in &res.observations.interactions {
            match o {
                InteractionObservation::Latency {
                    command,
                    phase,
                    latency,
                } => latencies
                    .entry((command.clone(), *phase))
                    .or_default()
                    .push(*latency),
                InteractionObservation::Outcome { command, failed } => {
                    let e = outcomes.entry(command.clone()).or_default();
                    if *failed { e.1 += 1 } else { e.0 += 1 }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (latencies, outcomes, runs)
}

#[tokio::test]
async fn observed_latencies_equal_ground_truth_within_a_millisecond() {
    let r = rig(sandbox_config(behaviour(0.0)), SLASH).await;
    r.bot().slash_commands_ready().await;
    let metrics = Metrics::new(&r.config);
    let first = r.run("slash").await;
    assert_eq!(first.outcome, Outcome::Inconclusive, "{}", first.detail);
    assert!(first.detail.contains("no traffic"), "{}", first.detail);

    // 120 interactions, six at once: /ping and /help answer directly,
    // /stats defers and edits its answer in.
    let mut ids = Vec::new();
    for _ in 0..20 {
        for command in ["ping", "help", "stats", "ping", "help", "stats"] {
            ids.push(run_command(&r, "erin", command));
        }
        all_answered(&r, &ids[ids.len() - 6..]).await;
    }
    let (mut latencies, outcomes, runs) = observe(&r, &metrics, ids.len()).await;
    assert!(runs.contains(&Outcome::Success), "{runs:?}");
    assert_eq!(outcomes.get("ping"), Some(&(40, 0)));
    assert_eq!(outcomes.get("stats"), Some(&(40, 0)));
    assert_eq!(
        outcomes.get("other"),
        Some(&(40, 0)),
        "/help is not configured"
    );

    // Truth per (label, phase): creation to response creation, and to the
    // final edit for deferred responses.
    let mut truth: HashMap<(String, &'static str), Vec<Duration>> = HashMap::new();
    for t in r.sb.control().interaction_truths() {
        assert!(ids.contains(&t.interaction_id));
        let label = if t.command == "help" {
            "other".to_string()
        } else {
            t.command.clone()
        };
        let created = t.created;
        let response = t.response_created.expect("answered");
        truth
            .entry((label.clone(), "response"))
            .or_default()
            .push(response.duration_since(created).unwrap());
        if let Some(last) = t.edits.last() {
            truth
                .entry((label, "final"))
                .or_default()
                .push(last.duration_since(created).unwrap());
        }
    }
    let mut compared = 0;
    for (key, mut want) in truth {
        let mut got = latencies.remove(&key).unwrap_or_default();
        want.sort();
        got.sort();
        assert_eq!(got.len(), want.len(), "{key:?}");
        for (g, w) in got.iter().zip(&want) {
            let diff = if g > w { *g - *w } else { *w - *g };
            assert!(
                diff < Duration::from_millis(1),
                "{key:?}: observed {g:?}, truth {w:?}"
            );
            compared += 1;
        }
    }
    assert!(
        latencies.is_empty(),
        "nothing observed beyond the truth: {latencies:?}"
    );
    assert_eq!(compared, 160, "120 responses and 40 final edits");

    let series = exposition::parse(&metrics.render()).unwrap();
    let count = |command: &str, phase: &str| {
        series
            .iter()
            .find(|s| {
                s.name == "probe_interaction_latency_seconds_count"
                    && s.label("command") == Some(command)
                    && s.label("phase") == Some(phase)
            })
            .map(|s| s.value)
    };
    assert_eq!(count("ping", "response"), Some(40.0));
    assert_eq!(count("stats", "final"), Some(40.0));
    assert_eq!(count("other", "response"), Some(40.0));
    assert!(
        !series
            .iter()
            .any(|s| s.name.starts_with("probe_interaction")
                && s.label("command")
                    .is_some_and(|c| !["ping", "stats", "other"].contains(&c))),
        "command labels only from the configured list"
    );
    r.stop().await;
}

#[tokio::test]
async fn error_replies_fail_the_run_and_count_as_failures() {
    let r = rig(sandbox_config(behaviour(1.0)), SLASH).await;
    r.bot().slash_commands_ready().await;
    let metrics = Metrics::new(&r.config);
    r.run("slash").await;
    let ids: Vec<u64> = (0..3).map(|_| run_command(&r, "erin", "ping")).collect();
    all_answered(&r, &ids).await;
    let (_, outcomes, runs) = observe(&r, &metrics, 3).await;
    assert_eq!(outcomes.get("ping"), Some(&(0, 3)));
    assert!(runs.contains(&Outcome::Failure), "{runs:?}");
    let series = exposition::parse(&metrics.render()).unwrap();
    let failures = series
        .iter()
        .find(|s| {
            s.name == "probe_interactions_total"
                && s.label("command") == Some("ping")
                && s.label("outcome") == Some("failure")
        })
        .map(|s| s.value);
    assert_eq!(failures, Some(3.0));
    r.stop().await;
}
