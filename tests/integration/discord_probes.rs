//! Command and presence probes against the sandbox, through the prober's
//! real serenity session.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serenity::all::{ChannelId, CreateEmbed, CreateMessage, Event, GatewayIntents};
use twi_probe::config::{Config, Secret};
use twi_probe::discord::{ConnectError, DiscordSession, SessionEvent};
use twi_probe::metrics::Metrics;
use twi_probe::probe::{Outcome, Probe, ProbeResult, run_once};
use twi_sandbox::{BotBehaviour, HttpFault, Latency, Sandbox, SandboxConfig};

use crate::discord::{EVENT_WAIT, TestClient, start_sandbox};
use crate::support::until_changed;

fn bot(latency_ms: u64) -> BotBehaviour {
    BotBehaviour {
        latency: Latency::fixed(Duration::from_millis(latency_ms)),
        ..BotBehaviour::default()
    }
}

pub(crate) fn sandbox_config(behaviour: BotBehaviour) -> SandboxConfig {
    let mut cfg = SandboxConfig::default();
    cfg.bot.behaviour = behaviour;
    cfg.bot.started_ago = Duration::from_secs(3600);
    cfg.accounts.push(twi_sandbox::config::AccountConfig {
        name: "impostor".into(),
        bot: true,
        id: None,
        token: None,
        privileged_intents: vec!["MESSAGE_CONTENT".into()],
    });
    cfg
}

/// A sandbox, the prober's session on it, and a config whose `{channel}`,
/// `{guild}`, `{base}` and `{exporter}` are filled in.
pub(crate) struct Rig {
    pub(crate) sb: Sandbox,
    pub(crate) config: Config,
    pub(crate) session: Arc<DiscordSession>,
    /// Probes keep state between runs (the exporter's start time).
    probes: std::sync::Mutex<std::collections::HashMap<String, Arc<Probe>>>,
}

fn yaml_for(sb: &Sandbox, probes: &str, discord_extra: &str) -> String {
    let d = sb.description();
    let bot = &sb.account("twi-bot-shard").unwrap().id;
    let text = format!(
        r#"
target: {{name: twi-bot-shard, user_id: "{bot}", exporter_url: "{exporter}"}}
discord:
  token_env: UNUSED_IN_TESTS
  api_base: "{base}"
  send_interval: 1s
{discord_extra}
probes:
{probes}
"#,
        exporter = d
            .exporter_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:9/metrics".into()),
        base = d.rest_base,
    );
    text.replace("{channel}", &sb.channel_id("probes").unwrap().to_string())
        .replace("{guild}", &d.guilds[0].id)
}

pub(crate) async fn rig(cfg: SandboxConfig, probes: &str) -> Rig {
    rig_with(cfg, probes, "").await
}

async fn rig_with(cfg: SandboxConfig, probes: &str, discord_extra: &str) -> Rig {
    let sb = start_sandbox(cfg).await;
    let yaml = yaml_for(&sb, probes, discord_extra);
    let config =
        Config::from_yaml(&yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let token = Secret::new(sb.account("prober").unwrap().token.clone());
    let session = Arc::new(
        DiscordSession::connect(&config, &token)
            .await
            .expect("the prober connects"),
    );
    Rig::new(sb, config, session)
}

const HELP: &str = r#"
  - name: help
    every: 1m
    timeout: 3s
    command:
      channel_id: "{channel}"
      guild_id: "{guild}"
      message: "!help"
      expect: {embed_title: "^Interactive Help System"}
      error_reply: {embed_title: "Error"}
"#;

impl Rig {
    fn new(sb: Sandbox, config: Config, session: Arc<DiscordSession>) -> Rig {
        Rig {
            sb,
            config,
            session,
            probes: Default::default(),
        }
    }

    fn probe(&self, name: &str) -> Arc<Probe> {
        let mut probes = self.probes.lock().unwrap();
        probes
            .entry(name.to_string())
            .or_insert_with(|| {
                let spec = self
                    .config
                    .probes
                    .iter()
                    .find(|p| p.name == name)
                    .unwrap()
                    .clone();
                Arc::new(Probe::new(spec, Some(&self.session)).unwrap())
            })
            .clone()
    }

    pub(crate) async fn run(&self, name: &str) -> ProbeResult {
        run_once(self.probe(name)).await
    }

    pub(crate) fn bot(&self) -> &Arc<twi_sandbox::bot::SimBot> {
        self.sb.control().bot().unwrap()
    }

    pub(crate) async fn stop(self) {
        self.session.shutdown().await;
        self.sb.shutdown().await;
    }
}

#[tokio::test]
async fn a_command_round_trip_succeeds_with_both_clocks() {
    let r = rig(sandbox_config(bot(150)), HELP).await;
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
    let latency = res.latency().unwrap();
    assert!(latency >= Duration::from_millis(150), "{latency:?}");
    let o = &res.observations;
    let discord = o.discord_reply.unwrap();
    assert!(
        discord >= Duration::from_millis(150) && discord <= latency + Duration::from_millis(2),
        "{discord:?} vs {latency:?}"
    );
    assert!(
        o.first_response.unwrap() < Duration::from_millis(150),
        "typing came first"
    );
    r.stop().await;
}

#[tokio::test]
async fn a_slow_reply_within_the_timeout_succeeds() {
    let r = rig(sandbox_config(bot(1500)), HELP).await;
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
    assert!(res.latency().unwrap() >= Duration::from_millis(1500));
    r.stop().await;
}

#[tokio::test]
async fn no_reply_is_a_timeout_that_says_the_bot_is_online() {
    let r = rig(
        sandbox_config(BotBehaviour {
            drop_rate: 1.0,
            ..bot(50)
        }),
        HELP,
    )
    .await;
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Timeout);
    assert_eq!(
        res.detail,
        "no reply within 3s; the bot is online but not answering"
    );
    r.stop().await;
}

#[tokio::test]
async fn wrong_and_error_replies_are_failures() {
    let probes = format!(
        "{HELP}{}",
        r#"
  - name: wants-ping
    every: 1m
    timeout: 3s
    command:
      channel_id: "{channel}"
      message: "!help"
      expect: {embed_title: "Bot Latency"}
"#
    );
    let r = rig(sandbox_config(bot(20)), &probes).await;
    let res = r.run("wants-ping").await;
    assert_eq!(res.outcome, Outcome::Failure);
    assert_eq!(
        res.detail,
        "the bot's reply did not match what was expected: \"[embed] Interactive Help System Twi Bot Shard is mostly slash commands. Use `/he…\""
    );
    r.bot().set_behaviour(BotBehaviour {
        error_rate: 1.0,
        ..bot(20)
    });
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Failure);
    assert!(
        res.detail
            .starts_with("the bot answered with its error reply: \"[embed] ❌ Error"),
        "{}",
        res.detail
    );
    r.stop().await;
}

#[tokio::test]
async fn replies_with_and_without_a_reference_both_match() {
    let r = rig(sandbox_config(bot(20)), HELP).await;
    assert_eq!(r.run("help").await.outcome, Outcome::Success);
    r.bot().set_behaviour(BotBehaviour {
        reply_with_reference: false,
        ..bot(20)
    });
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
    r.stop().await;
}

#[tokio::test]
async fn a_placeholder_edited_into_the_answer_gives_both_phases() {
    let r = rig(
        sandbox_config(BotBehaviour {
            placeholder: true,
            typing: false,
            ..bot(300)
        }),
        HELP,
    )
    .await;
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
    let o = &res.observations;
    assert!(o.first_response.unwrap() < Duration::from_millis(300));
    assert!(
        o.discord_reply.unwrap() >= Duration::from_millis(300),
        "the final edit counts"
    );
    assert!(res.latency().unwrap() >= Duration::from_millis(300));
    r.stop().await;
}

#[tokio::test]
async fn spoofed_replies_from_another_account_or_a_webhook_never_count() {
    let r = rig(
        sandbox_config(BotBehaviour {
            drop_rate: 1.0,
            ..bot(20)
        }),
        HELP,
    )
    .await;
    let prober_id: u64 = sb_id(&r.sb, "prober");
    let mut impostor = TestClient::connect(
        &r.sb,
        "impostor",
        GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES | GatewayIntents::MESSAGE_CONTENT,
    )
    .await;
    impostor.ready().await;
    let run = tokio::spawn(run_once(r.probe("help")));
    let probe_msg = impostor
        .wait_for("the probe message", |e| match e {
            Event::MessageCreate(m) if m.message.author.id.get() == prober_id => {
                Some(m.message.clone())
            }
            _ => None,
        })
        .await;
    // The expected answer, from the wrong author, as a reply and via a webhook.
    let fake = CreateEmbed::new().title("Interactive Help System");
    ChannelId::new(r.sb.channel_id("probes").unwrap())
        .send_message(
            &impostor.http,
            CreateMessage::new()
                .embed(fake)
                .reference_message(&probe_msg),
        )
        .await
        .unwrap();
    reqwest::Client::new()
        .post(format!(
            "{}?wait=true",
            r.sb.description().webhook_url.clone().unwrap()
        ))
        .json(&serde_json::json!({"embeds": [{"title": "Interactive Help System"}]}))
        .send()
        .await
        .unwrap();
    let res = run.await.unwrap();
    assert_eq!(res.outcome, Outcome::Timeout, "{}", res.detail);
    assert!(
        res.detail
            .contains("2 messages from other accounts were ignored"),
        "{}",
        res.detail
    );
    impostor.stop().await;
    r.stop().await;
}

fn sb_id(sb: &Sandbox, account: &str) -> u64 {
    sb.account(account).unwrap().id.parse().unwrap()
}

const TWO_IN_ONE_CHANNEL: &str = r#"
  - name: short
    every: 1m
    timeout: 1s
    command:
      channel_id: "{channel}"
      message: "!help"
      expect: {embed_title: "^Interactive Help System"}
  - name: long
    every: 1m
    timeout: 4s
    command:
      channel_id: "{channel}"
      message: "!help"
      expect: {embed_title: "^Interactive Help System"}
"#;

/// `short` times out; its late reply arrives while `long` waits, and must
/// not be taken as `long`'s reply: with a reference `long` gets its own, and
/// without one `long` cannot tell them apart (inconclusive).
async fn late_reply_case(reference: bool) {
    let behaviour = BotBehaviour {
        reply_with_reference: reference,
        typing: false,
        ..bot(1500)
    };
    let r = rig(sandbox_config(behaviour), TWO_IN_ONE_CHANNEL).await;
    let metrics = Arc::new(Metrics::new(&r.config));
    let follower = metrics.follow_discord(&r.config, &r.session);
    let mut events = r.session.subscribe();
    let first = r.run("short").await;
    assert_eq!(first.outcome, Outcome::Timeout, "{}", first.detail);
    let second = r.run("long").await;
    if reference {
        assert_eq!(second.outcome, Outcome::Success, "{}", second.detail);
        assert!(
            second.latency().unwrap() >= Duration::from_millis(1500),
            "long matched its own reply, not the late one: {:?}",
            second.latency()
        );
    } else {
        // Without references the two replies cannot be told apart: long's
        // own reply may be the late one, so it is not taken as a success.
        assert_eq!(second.outcome, Outcome::Inconclusive, "{}", second.detail);
        assert!(
            second.detail.contains("could not be attributed"),
            "{}",
            second.detail
        );
    }
    let late = tokio::time::timeout(EVENT_WAIT, async {
        loop {
            if let Ok(SessionEvent::LateReply { probe }) = events.recv().await {
                return probe;
            }
        }
    })
    .await
    .expect("the late reply is recognised");
    assert_eq!(late, "short");
    // probe_late_replies_total counts it against the probe it answered.
    let text = until_changed(&metrics, "probe_late_replies_total counts it", |t| {
        value(t, "probe_late_replies_total", &[("probe", "short")]) == 1.0
    })
    .await;
    assert_eq!(
        value(&text, "probe_late_replies_total", &[("probe", "long")]),
        0.0
    );
    follower.abort();
    r.stop().await;
}

#[tokio::test]
async fn a_late_referenced_reply_is_not_matched_to_the_next_probe() {
    late_reply_case(true).await;
}

#[tokio::test]
async fn a_late_unreferenced_reply_is_not_matched_to_the_next_probe() {
    late_reply_case(false).await;
}

const PRESENCE: &str = r#"
  - name: presence
    every: 30s
    timeout: 5s
    presence:
      guilds: ["{guild}"]
"#;

/// The sum of a family's samples whose labels include `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    crate::serve::total(text, name, labels)
}

#[tokio::test]
async fn bot_offline_shows_at_once_and_commands_say_so() {
    let probes = format!("{HELP}{PRESENCE}");
    let r = rig(sandbox_config(bot(20)), &probes).await;
    let metrics = Arc::new(Metrics::new(&r.config));
    let follower = metrics.follow_discord(&r.config, &r.session);
    assert_eq!(r.run("presence").await.outcome, Outcome::Success);
    let mut events = r.session.subscribe();

    r.sb.control().bot_offline().await.unwrap();
    // Event-driven: the gauge moves on the PRESENCE_UPDATE, with no probe run.
    tokio::time::timeout(EVENT_WAIT, async {
        while !matches!(
            events.recv().await,
            Ok(SessionEvent::Presence { online: false, .. })
        ) {}
    })
    .await
    .expect("offline presence arrives");
    until_changed(&metrics, "the gauge follows the event", |t| {
        value(t, "probe_target_presence_online", &[("probe", "presence")]) == 0.0
    })
    .await;

    let p = r.run("presence").await;
    assert_eq!(p.outcome, Outcome::Failure);
    assert!(p.detail.contains("offline"), "{}", p.detail);
    let c = r.run("help").await;
    assert_eq!(c.outcome, Outcome::Timeout);
    assert_eq!(c.detail, "no reply within 3s; the bot is offline");

    r.sb.control().bot_online().await.unwrap();
    tokio::time::timeout(EVENT_WAIT, async {
        while !matches!(
            events.recv().await,
            Ok(SessionEvent::Presence { online: true, .. })
        ) {}
    })
    .await
    .expect("online again");
    assert_eq!(r.run("help").await.outcome, Outcome::Success);
    follower.abort();
    r.stop().await;
}

#[tokio::test]
async fn a_bot_restart_is_seen_by_the_exporter_and_presence_probes() {
    let probes = format!(
        "{PRESENCE}{}",
        r#"
  - name: exporter
    every: 30s
    timeout: 5s
    exporter: {min_uptime: 10m}
"#
    );
    let r = rig(sandbox_config(bot(20)), &probes).await;
    let first = r.run("exporter").await;
    assert_eq!(first.outcome, Outcome::Success, "{}", first.detail);
    let mut events = r.session.subscribe();
    r.sb.control().bot_restart().await.unwrap();
    tokio::time::timeout(EVENT_WAIT, async {
        while !matches!(
            events.recv().await,
            Ok(SessionEvent::Presence { online: true, .. })
        ) {}
    })
    .await
    .expect("back online after the restart");
    let second = r.run("exporter").await;
    assert_eq!(
        second.outcome,
        Outcome::Failure,
        "uptime below 10m after a restart"
    );
    assert_eq!(second.observations.target_restarts, 1);
    assert_eq!(r.run("presence").await.outcome, Outcome::Success);
    r.stop().await;
}

#[tokio::test]
async fn the_probers_own_gateway_down_is_inconclusive_then_recovers() {
    let probes = format!("{HELP}{PRESENCE}");
    let r = rig(sandbox_config(bot(20)), &probes).await;
    let mut events = r.session.subscribe();
    // The prober's gateway is cut (its REST still works): the bot answers,
    // but the prober cannot see it, so nothing may be blamed on the bot.
    r.sb.control().set_gateway_outage("prober", true).unwrap();
    let help = r.run("help").await;
    assert_eq!(help.outcome, Outcome::Inconclusive, "{}", help.detail);
    assert!(
        help.detail.contains("the prober's own gateway"),
        "{}",
        help.detail
    );
    let presence = r.run("presence").await;
    assert_eq!(
        presence.outcome,
        Outcome::Inconclusive,
        "{}",
        presence.detail
    );
    assert!(
        presence.detail.contains("the prober's own gateway"),
        "{}",
        presence.detail
    );
    assert!(
        !r.session.is_connected(),
        "the failed round trip marks the gateway down"
    );

    r.sb.control().set_gateway_outage("prober", false).unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !matches!(
            events.recv().await,
            Ok(SessionEvent::Gateway { connected: true })
        ) {}
    })
    .await
    .expect("the session recovers");
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
    assert_eq!(r.run("presence").await.outcome, Outcome::Success);
    r.stop().await;
}

#[tokio::test]
async fn a_429_on_the_send_is_inconclusive_and_counted() {
    let r = rig(sandbox_config(bot(20)), HELP).await;
    let metrics = Arc::new(Metrics::new(&r.config));
    let follower = metrics.follow_discord(&r.config, &r.session);
    r.sb.control()
        .force_http(HttpFault {
            method: Some("POST".into()),
            path: "/channels/*/messages".into(),
            status: 429,
            duration: None,
            count: Some(1),
        })
        .unwrap();
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Inconclusive);
    assert!(res.detail.contains("rate-limited"), "{}", res.detail);
    assert_eq!(r.session.ratelimited_total(), 1);
    until_changed(&metrics, "prober_ratelimited_total counts it", |t| {
        value(t, "prober_ratelimited_total", &[]) == 1.0
    })
    .await;
    assert_eq!(
        r.run("help").await.outcome,
        Outcome::Success,
        "the next send goes through"
    );
    follower.abort();
    r.stop().await;
}

#[tokio::test]
async fn missing_access_and_permissions_are_unreachable_naming_the_fix() {
    let mut cfg = sandbox_config(bot(20));
    for (name, hidden, read_only) in [("staff", true, false), ("announcements", false, true)] {
        cfg.guilds[0]
            .channels
            .push(twi_sandbox::config::ChannelConfig {
                name: name.into(),
                id: None,
                hidden_from: if hidden {
                    vec!["prober".into()]
                } else {
                    vec![]
                },
                read_only_for: if read_only {
                    vec!["prober".into()]
                } else {
                    vec![]
                },
            });
    }
    let sb = start_sandbox(cfg).await;
    let probes = format!(
        r#"
  - name: hidden
    timeout: 2s
    command: {{channel_id: "{}", message: "!help"}}
  - name: readonly
    timeout: 2s
    command: {{channel_id: "{}", message: "!help"}}
"#,
        sb.channel_id("staff").unwrap(),
        sb.channel_id("announcements").unwrap()
    );
    let yaml = yaml_for(&sb, &probes, "");
    let config = Config::from_yaml(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let token = Secret::new(sb.account("prober").unwrap().token.clone());
    let session = Arc::new(DiscordSession::connect(&config, &token).await.unwrap());
    let r = Rig::new(sb, config, session);
    let hidden = r.run("hidden").await;
    assert_eq!(hidden.outcome, Outcome::Unreachable);
    assert!(
        hidden.detail.contains("403 Missing Access") && hidden.detail.contains("View Channel"),
        "{}",
        hidden.detail
    );
    let ro = r.run("readonly").await;
    assert_eq!(ro.outcome, Outcome::Unreachable);
    assert!(
        ro.detail.contains("403 Missing Permissions") && ro.detail.contains("Send Messages"),
        "{}",
        ro.detail
    );
    r.stop().await;
}

#[tokio::test]
async fn an_invalid_token_is_a_clear_startup_error() {
    let sb = start_sandbox(sandbox_config(bot(20))).await;
    let yaml = yaml_for(&sb, HELP, "");
    let config = Config::from_yaml(&yaml, Path::new("t.yaml")).unwrap();
    let err = DiscordSession::connect(&config, &Secret::new("not.a.token".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidToken(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("environment variable UNUSED_IN_TESTS"),
        "{text}"
    );
    assert!(!text.contains("not.a.token"), "the token never appears");
    sb.shutdown().await;
}

#[tokio::test]
async fn a_disallowed_intent_names_the_portal_fix() {
    let mut cfg = sandbox_config(bot(20));
    cfg.accounts[0].privileged_intents = vec!["MESSAGE_CONTENT".into()];
    let sb = start_sandbox(cfg).await;
    let config = Config::from_yaml(&yaml_for(&sb, PRESENCE, ""), Path::new("t.yaml")).unwrap();
    let token = Secret::new(sb.account("prober").unwrap().token.clone());
    let err = DiscordSession::connect(&config, &token).await.unwrap_err();
    assert!(matches!(err, ConnectError::DisallowedIntents(..)), "{err}");
    assert!(
        err.to_string()
            .contains("enable the Presence Intent for the prober"),
        "{err}"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn without_message_content_an_unreadable_reply_is_inconclusive_not_a_mismatch() {
    let mut cfg = sandbox_config(BotBehaviour {
        reply_with_reference: false,
        ..bot(20)
    });
    cfg.accounts[0].privileged_intents = vec!["GUILD_PRESENCES".into()];
    let r = rig_with(cfg, HELP, "  message_content_intent: false").await;
    let res = r.run("help").await;
    assert_eq!(res.outcome, Outcome::Inconclusive, "{}", res.detail);
    assert!(res.detail.contains("MESSAGE_CONTENT"), "{}", res.detail);
    // A reply that references the prober's message is readable without it.
    r.bot().set_behaviour(bot(20));
    assert_eq!(r.run("help").await.outcome, Outcome::Success);
    r.stop().await;
}

/// A gateway that accepts connections and closes them at once (an outage
/// answering 4000): the prober backs off (1 s doubling to 60 s, with
/// jitter) instead of reconnecting thousands of times a second, and comes
/// back when the outage ends.
#[tokio::test]
async fn reconnects_back_off_during_a_gateway_outage() {
    let r = rig(sandbox_config(bot(20)), PRESENCE).await;
    let mut events = r.session.subscribe();
    let control = r.sb.control();
    control.set_gateway_outage("prober", true).unwrap();
    // A measuring window, not synchronisation: attempts 0 s, 0.5-1 s,
    // 1.5-3 s and 3.5-7 s after the loss fit in 4 s at most.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = control.refused_attempts("prober").unwrap().unwrap();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} reconnection attempts in 4 s"
    );
    control.set_gateway_outage("prober", false).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !matches!(
            events.recv().await,
            Ok(SessionEvent::Gateway { connected: true })
        ) {}
    })
    .await
    .expect("the session comes back after the outage");
    r.stop().await;
}

/// A connection lost and resumed within milliseconds (op 7) still counts
/// as a lost connection.
#[tokio::test]
async fn a_connection_lost_and_resumed_at_once_is_counted() {
    let r = rig(sandbox_config(bot(20)), PRESENCE).await;
    let mut events = r.session.subscribe();
    let before = r.session.disconnects();
    r.sb.control().send_reconnect("prober").unwrap();
    lost_and_back(&mut events, "op 7").await;
    assert_eq!(r.session.disconnects(), before + 1);
    r.stop().await;
}

/// Waits for the prober's gateway to go down and come back up.
async fn lost_and_back(events: &mut tokio::sync::broadcast::Receiver<SessionEvent>, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut down = false;
        loop {
            match events.recv().await {
                Ok(SessionEvent::Gateway { connected: false }) => down = true,
                Ok(SessionEvent::Gateway { connected: true }) if down => return,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the loss and the return are both seen"));
}

/// The prober's own gateway in its metrics: every lost connection counts
/// in `prober_gateway_disconnects_total`, also one lost and resumed
/// within milliseconds (a close with 4000, an op 7 RECONNECT), and
/// `prober_gateway_latency_seconds` is the heartbeat's round trip.
#[tokio::test]
async fn the_probers_gateway_metrics_count_every_loss_and_the_heartbeat() {
    let mut cfg = sandbox_config(bot(20));
    // Heartbeats every 200 ms (Discord: 41.25 s), each acknowledged 40 ms
    // later, so the round trip is known and soon measured.
    cfg.gateway.heartbeat_interval = Duration::from_millis(200);
    cfg.gateway.heartbeat_round_trip = Duration::from_millis(40);
    let r = rig(cfg, PRESENCE).await;
    let metrics = Arc::new(Metrics::new(&r.config));
    let follower = metrics.follow_discord(&r.config, &r.session);
    let text = until_changed(&metrics, "the heartbeat round trip is exported", |t| {
        value(t, "prober_gateway_latency_seconds", &[]) > 0.0
    })
    .await;
    let latency = value(&text, "prober_gateway_latency_seconds", &[]);
    assert!(
        (0.04..1.0).contains(&latency),
        "a 40 ms round trip, not {latency} s"
    );
    assert_eq!(value(&text, "prober_gateway_connected", &[]), 1.0);
    assert_eq!(value(&text, "prober_gateway_disconnects_total", &[]), 0.0);

    let mut events = r.session.subscribe();
    r.sb.control().close_gateway("prober", 4000).unwrap();
    lost_and_back(&mut events, "close 4000").await;
    until_changed(&metrics, "a close with 4000 counts once", |t| {
        value(t, "prober_gateway_disconnects_total", &[]) == 1.0
            && value(t, "prober_gateway_connected", &[]) == 1.0
    })
    .await;

    r.sb.control().send_reconnect("prober").unwrap();
    lost_and_back(&mut events, "op 7").await;
    let text = until_changed(&metrics, "an op 7 counts once more", |t| {
        value(t, "prober_gateway_disconnects_total", &[]) == 2.0
            && value(t, "prober_gateway_connected", &[]) == 1.0
    })
    .await;
    assert_eq!(r.session.disconnects(), 2, "{text}");
    follower.abort();
    r.stop().await;
}

const MENTION: &str = r#"
  - name: mention
    every: 1m
    timeout: 3s
    command:
      channel_id: "{channel}"
      cleanup: true
      message: "{target} help"
      expect: {embed_title: "^Interactive Help System"}
"#;

/// Runs the `mention` probe; returns whether its message and the bot's
/// reply are still there afterwards.
async fn mention_and_clean_up(r: &Rig) -> (bool, bool) {
    let res = r.run("mention").await;
    assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
    let probe_id = res.observations.probe_message_id.expect("sent");
    let reply = r.bot().answer_to(probe_id).expect("the bot answered");
    let channel = ChannelId::new(r.sb.channel_id("probes").unwrap());
    // The deletes are part of the run: done once it has returned.
    let exists = async |id: u64| match channel.message(&r.session.http, id).await {
        Ok(_) => true,
        Err(e) if e.to_string().contains("Unknown Message") => false,
        Err(e) => panic!("{e}"),
    };
    (exists(probe_id).await, exists(reply).await)
}

/// `{target}` in a probe's message becomes a mention of the bot (the
/// simulated bot answers `<@its id> help`, not the text `{target}`), and
/// `cleanup: true` deletes the probe's message and the bot's reply.
#[tokio::test]
async fn a_target_mention_is_sent_and_cleanup_deletes_both_messages() {
    let r = rig(sandbox_config(bot(20)), MENTION).await;
    let bot_id = sb_id(&r.sb, "twi-bot-shard");
    let twi_probe::config::ProbeKind::Command(c) = &r.config.probes[0].kind else {
        panic!("a command probe");
    };
    assert_eq!(c.message, format!("<@{bot_id}> help"));
    // The prober owns the sandbox's guild here, so it has Manage Messages.
    assert_eq!(mention_and_clean_up(&r).await, (false, false));
    r.stop().await;
}

/// Without Manage Messages the bot's reply stays (and the log says so);
/// the probe's own message is deleted all the same, and the run's outcome
/// is the bot's.
#[tokio::test]
async fn without_manage_messages_cleanup_deletes_the_probe_message_only() {
    let mut cfg = sandbox_config(bot(20));
    // The bot owns the guild: the prober is a plain member.
    cfg.guilds[0].members = Some(vec![
        "twi-bot-shard".into(),
        "prober".into(),
        "erin".into(),
        "impostor".into(),
    ]);
    let r = rig(cfg, MENTION).await;
    // The log, captured on this thread (the test's runtime runs the
    // probe's tasks here too).
    let log = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let writer = {
        let log = log.clone();
        move || LogBuf(log.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    assert_eq!(mention_and_clean_up(&r).await, (false, true));
    drop(guard);
    let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("cleanup could not delete the bot's reply")
            && log.contains("403 Missing Permissions"),
        "{log}"
    );
    r.stop().await;
}

struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `shard_count`: a presence probe over a sharded bot's guilds (one per
/// shard) runs once per guild, each run's series carries `shard` =
/// `(guild_id >> 22) % shard_count`, and its detail names the shard; two
/// guilds on one shard are refused.
#[tokio::test]
async fn presence_per_shard_carries_the_shard_label() {
    // Guild ids on shards 1 and 3 of 4.
    let on_shard = |shard: u64, n: u64| ((n * 4 + shard) << 22) | 0x2a;
    let (g1, g3) = (on_shard(1, 250_000_000), on_shard(3, 250_000_001));
    let mut cfg = sandbox_config(bot(20));
    cfg.guilds[0].id = Some(g1);
    let mut second = cfg.guilds[0].clone();
    second.name = "Second shard".into();
    second.id = Some(g3);
    for (i, c) in second.channels.iter_mut().enumerate() {
        c.name = format!("second-{i}");
        c.id = None;
    }
    cfg.guilds.push(second);
    let probes = format!(
        r#"
  - name: presence
    every: 30s
    timeout: 5s
    presence:
      guilds: ["{g1}", "{g3}"]
      shard_count: 4
"#
    );
    let r = rig(cfg, &probes).await;
    let specs: Vec<_> = r
        .config
        .probes
        .iter()
        .filter(|p| p.name == "presence")
        .cloned()
        .collect();
    let shards: Vec<(&str, String)> = specs
        .iter()
        .map(|s| (s.labels["shard"].as_str(), s.display_name()))
        .collect();
    assert_eq!(
        shards,
        [
            ("1", "presence[shard 1]".to_string()),
            ("3", "presence[shard 3]".to_string())
        ]
    );
    let metrics = Metrics::new(&r.config);
    for spec in &specs {
        let probe = Arc::new(Probe::new(spec.clone(), Some(&r.session)).unwrap());
        let res = run_once(probe).await;
        assert_eq!(res.outcome, Outcome::Success, "{}", res.detail);
        let guild = if spec.labels["shard"] == "1" { g1 } else { g3 };
        assert_eq!(
            res.detail,
            format!(
                "the bot is online in guild {guild} (shard {} of 4)",
                spec.labels["shard"]
            )
        );
        metrics.record(spec, &res);
    }
    let text = metrics.render();
    for shard in ["1", "3"] {
        let labels = [("probe", "presence"), ("shard", shard)];
        assert_eq!(value(&text, "probe_success", &labels), 1.0, "{text}");
        assert_eq!(
            value(
                &text,
                "probe_runs_total",
                &[labels[0], labels[1], ("outcome", "success")]
            ),
            1.0
        );
    }
    assert!(!text.contains("shard=\"0\""), "{text}");

    let clash = format!(
        "target: {{name: bot, user_id: \"1\"}}\ndiscord: {{token_env: T}}\nprobes:\n  - name: presence\n    every: 30s\n    timeout: 5s\n    presence: {{guilds: [\"{g1}\", \"{}\"], shard_count: 4}}\n",
        on_shard(1, 7)
    );
    let err = Config::from_yaml(&clash, Path::new("clash.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "is on shard 1, like guild {g1}: list one guild per shard"
        )),
        "{err}"
    );
    r.stop().await;
}
