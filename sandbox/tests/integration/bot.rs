//! The simulated Twi Bot Shard: commands, behaviour knobs, faults, exporter.

use std::time::Duration;

use serenity::all::{
    ChannelId, CreateMessage, Event, GatewayIntents, Message, MessageId, OnlineStatus,
};
use twi_sandbox::{BotBehaviour, Latency, Sandbox, SandboxConfig};

use crate::discord::{TestClient, start_sandbox};

fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_PRESENCES
        | GatewayIntents::GUILD_MESSAGE_TYPING
}

struct World {
    sb: Sandbox,
    prober: TestClient,
    channel: ChannelId,
    bot_id: u64,
}

/// A sandbox with the simulated bot (fast replies) and a connected prober.
async fn world(behaviour: BotBehaviour) -> World {
    let mut cfg = SandboxConfig::default();
    cfg.bot.behaviour = behaviour;
    let sb = start_sandbox(cfg).await;
    let mut prober = TestClient::connect(&sb, "prober", intents()).await;
    prober.ready().await;
    let channel = ChannelId::new(sb.channel_id("probes").unwrap());
    let bot_id = sb.account("twi-bot-shard").unwrap().id.parse().unwrap();
    World {
        sb,
        prober,
        channel,
        bot_id,
    }
}

fn fast() -> BotBehaviour {
    BotBehaviour {
        latency: Latency::fixed(Duration::from_millis(20)),
        ..BotBehaviour::default()
    }
}

impl World {
    async fn send(&self, content: &str) -> Message {
        self.channel
            .send_message(&self.prober.http, CreateMessage::new().content(content))
            .await
            .unwrap()
    }

    /// The bot's next message in the channel.
    async fn bot_message(&mut self) -> Message {
        let bot = self.bot_id;
        self.prober
            .wait_for("a message from the bot", |e| match e {
                Event::MessageCreate(m) if m.message.author.id.get() == bot => {
                    Some(m.message.clone())
                }
                _ => None,
            })
            .await
    }

    async fn stop(self) {
        self.prober.stop().await;
        self.sb.shutdown().await;
    }
}

fn references(m: &Message, probe: MessageId) -> bool {
    m.message_reference.as_ref().and_then(|r| r.message_id) == Some(probe)
}

#[tokio::test]
async fn help_and_ping_answer_with_their_embeds_after_typing() {
    let mut w = world(fast()).await;
    let bot = w.bot_id;
    let probe = w.send("!help").await;
    let mut typed = false;
    let reply = w
        .prober
        .wait_for("typing then the reply", |e| match e {
            Event::TypingStart(t) if t.user_id.get() == bot => {
                typed = true;
                None
            }
            Event::MessageCreate(m) if m.message.author.id.get() == bot => Some(m.message.clone()),
            _ => None,
        })
        .await;
    assert!(typed, "the bot shows typing before replying");
    assert_eq!(
        reply.embeds[0].title.as_deref(),
        Some("Interactive Help System")
    );
    assert!(references(&reply, probe.id));

    let probe = w.send(&format!("<@{bot}> ping")).await;
    let reply = w.bot_message().await;
    assert_eq!(
        reply.embeds[0].title.as_deref(),
        Some("🏓 Bot Latency Information")
    );
    assert!(references(&reply, probe.id));
    w.stop().await;
}

#[tokio::test]
async fn behaviour_knobs_take_effect_at_once() {
    let mut w = world(fast()).await;
    let bot = w.sb.control().bot().unwrap().clone();

    bot.set_behaviour(BotBehaviour {
        error_rate: 1.0,
        ..fast()
    });
    w.send("!help").await;
    assert_eq!(
        w.bot_message().await.embeds[0].title.as_deref(),
        Some("❌ Error")
    );

    bot.set_behaviour(BotBehaviour {
        drop_rate: 1.0,
        ..fast()
    });
    let mut drops = bot.drops();
    w.send("!help").await; // dropped: never answered
    // The bot reads the behaviour when the command reaches it, later.
    drops.wait_for(|n| *n == 1).await.unwrap();
    bot.set_behaviour(BotBehaviour {
        reply_with_reference: false,
        typing: false,
        ..fast()
    });
    let ping = w.send("!ping").await;
    let reply = w.bot_message().await;
    assert_eq!(
        reply.embeds[0].title.as_deref(),
        Some("🏓 Bot Latency Information"),
        "the dropped !help got no answer"
    );
    assert!(
        reply.message_reference.is_none(),
        "a plain message, no reference"
    );
    assert!(reply.id > ping.id);

    bot.set_behaviour(BotBehaviour {
        placeholder: true,
        ..fast()
    });
    w.send("!help").await;
    let placeholder = w.bot_message().await;
    assert_eq!(
        placeholder.embeds[0].title.as_deref(),
        Some("⏳ Working on it…")
    );
    let edited = w
        .prober
        .wait_for("the edit", |e| match e {
            Event::MessageUpdate(u) if u.id == placeholder.id => u.embeds.clone(),
            _ => None,
        })
        .await;
    assert_eq!(edited[0].title.as_deref(), Some("Interactive Help System"));
    w.stop().await;
}

#[tokio::test]
async fn reply_latency_follows_the_setting_by_discords_clock() {
    let mut w = world(BotBehaviour {
        latency: Latency::fixed(Duration::from_millis(300)),
        ..BotBehaviour::default()
    })
    .await;
    let probe = w.send("!help").await;
    let reply = w.bot_message().await;
    let gap = twi_sandbox::snowflake::timestamp(reply.id.get())
        .duration_since(twi_sandbox::snowflake::timestamp(probe.id.get()))
        .unwrap();
    assert!(
        gap >= Duration::from_millis(300) && gap < Duration::from_secs(3),
        "{gap:?}"
    );
    w.stop().await;
}

#[tokio::test]
async fn other_bots_and_webhooks_are_ignored_like_discord_py() {
    let mut cfg = SandboxConfig::default();
    cfg.bot.allowed_bots.clear();
    cfg.bot.behaviour = fast();
    let sb = start_sandbox(cfg).await;
    let mut prober = TestClient::connect(&sb, "prober", intents()).await;
    prober.ready().await;
    let channel = ChannelId::new(sb.channel_id("probes").unwrap());
    channel
        .send_message(&prober.http, CreateMessage::new().content("!help"))
        .await
        .unwrap();
    let hook = sb.description().webhook_url.clone().unwrap();
    reqwest::Client::new()
        .post(format!("{hook}?wait=true"))
        .json(&serde_json::json!({"content": "!help"}))
        .send()
        .await
        .unwrap();
    // A human's command is answered; the ones before it were not. (A user
    // token has no "Bot " prefix, which serenity always adds: use reqwest.)
    let erin = sb.account("erin").unwrap().token.clone();
    let human: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/channels/{channel}/messages",
            sb.description().api_base
        ))
        .header("Authorization", erin)
        .json(&serde_json::json!({"content": "!ping"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let human_id = MessageId::new(human["id"].as_str().unwrap().parse().unwrap());
    let bot: u64 = sb.account("twi-bot-shard").unwrap().id.parse().unwrap();
    let reply = prober
        .wait_for("the bot's reply", |e| match e {
            Event::MessageCreate(m) if m.message.author.id.get() == bot => Some(m.message.clone()),
            _ => None,
        })
        .await;
    assert!(
        references(&reply, human_id),
        "only the human's !ping is answered"
    );
    prober.stop().await;
    sb.shutdown().await;
}

/// One exposition sample. The prober parses the exporter strictly (its
/// exporter probe runs against this bot in the prober's tests); here the
/// values are enough.
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        let start = self.labels.find(&format!("{name}=\""))? + name.len() + 2;
        let len = self.labels[start..].find('"')?;
        Some(&self.labels[start..start + len])
    }
}

async fn scrape(sb: &Sandbox) -> Vec<Sample> {
    let text = reqwest::get(sb.description().exporter_url.clone().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value: value.parse().unwrap_or_else(|e| panic!("{l}: {e}")),
            }
        })
        .collect()
}

fn value(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value)
}

#[tokio::test]
async fn offline_online_and_restart_show_in_presence_and_exporter() {
    let mut w = world(fast()).await;
    let bot = w.bot_id;
    w.send("!help").await;
    w.bot_message().await;
    let before = scrape(&w.sb).await;
    assert_eq!(value(&before, "discord_gateway_connected"), Some(1.0));
    let counted = before
        .iter()
        .find(|s| s.name == "bot_commands_total" && s.label("command") == Some("help"))
        .map(|s| s.value);
    assert_eq!(counted, Some(1.0));
    let started = value(&before, "process_start_time_seconds").unwrap();

    w.sb.control().bot_offline().await.unwrap();
    let status = w
        .prober
        .wait_for("offline presence", |e| match e {
            Event::PresenceUpdate(p) if p.presence.user.id.get() == bot => Some(p.presence.status),
            _ => None,
        })
        .await;
    assert_eq!(status, OnlineStatus::Offline);
    assert_eq!(
        value(&scrape(&w.sb).await, "discord_gateway_connected"),
        Some(0.0)
    );

    w.sb.control().bot_restart().await.unwrap();
    let status = w
        .prober
        .wait_for("online presence", |e| match e {
            Event::PresenceUpdate(p) if p.presence.user.id.get() == bot => Some(p.presence.status),
            _ => None,
        })
        .await;
    assert_eq!(status, OnlineStatus::Online);
    let after = scrape(&w.sb).await;
    assert!(value(&after, "process_start_time_seconds").unwrap() > started);
    assert!(
        !after.iter().any(|s| s.name == "bot_commands_total"),
        "counters reset on restart"
    );
    w.stop().await;
}

/// A sandbox stopped right after it started (its simulated bot's client
/// still connecting) stops every time: upstream serenity's `shutdown_all`
/// did nothing before the first shard runner existed, and `Sandbox::shutdown`
/// then waited forever (issue 16: `probe run --sandbox --probe nope` hung).
#[tokio::test]
async fn a_sandbox_stopped_at_once_stops_every_time() {
    for attempt in 0..30 {
        let sb = start_sandbox(SandboxConfig::default()).await;
        tokio::time::timeout(Duration::from_secs(10), sb.shutdown())
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt}: shutdown still waiting after 10 s"));
    }
}

/// The same, with the bot taken offline (a control call) at once.
#[tokio::test]
async fn the_bot_goes_offline_at_once_after_start() {
    for attempt in 0..30 {
        let sb = start_sandbox(SandboxConfig::default()).await;
        tokio::time::timeout(Duration::from_secs(10), sb.control().bot_offline())
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt}: bot_offline still waiting after 10 s"))
            .unwrap();
        sb.shutdown().await;
    }
}

/// `POST /bot/behaviour` changes only the fields it names: slowing the bot
/// down keeps its error and drop rates (it reset them to 0 before).
#[tokio::test]
async fn posting_a_behaviour_changes_only_the_given_fields() {
    let mut cfg = SandboxConfig::default();
    cfg.bot.behaviour = BotBehaviour {
        error_rate: 0.25,
        drop_rate: 0.5,
        placeholder: true,
        ..fast()
    };
    let sb = start_sandbox(cfg).await;
    let url = format!("{}/bot/behaviour", sb.description().control_url);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| http.post(&url).json(&body).send();

    let r = post(serde_json::json!({"latency": {"median": "300ms"}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let now = sb.control().bot().unwrap().behaviour();
    assert_eq!(
        now,
        BotBehaviour {
            latency: Latency::fixed(Duration::from_millis(300)),
            error_rate: 0.25,
            drop_rate: 0.5,
            placeholder: true,
            ..fast()
        }
    );
    // What GET shows is what is in force.
    let shown: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["result"]["error_rate"], 0.25, "{shown}");
    assert_eq!(shown["result"]["drop_rate"], 0.5, "{shown}");

    // A later change of one field keeps the latency just set.
    post(serde_json::json!({"drop_rate": 0.0})).await.unwrap();
    let now = sb.control().bot().unwrap().behaviour();
    assert_eq!(now.drop_rate, 0.0);
    assert_eq!(now.latency, Latency::fixed(Duration::from_millis(300)));
    assert_eq!(now.error_rate, 0.25);

    // A field the bot does not have is refused, and changes nothing.
    let r = post(serde_json::json!({"error_rate": 1.0, "speed": 3}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("speed"), "{body}");
    assert_eq!(sb.control().bot().unwrap().behaviour().error_rate, 0.25);
    sb.shutdown().await;
}

/// `Sandbox::start`, a restart and coming back online return only once the
/// simulated bot's session is READY: a command sent right after finds it
/// listening (it used to connect in the background, so a probe sent at once
/// could be posted before the bot was there to see it).
#[tokio::test]
async fn the_bot_is_online_when_start_and_restart_return() {
    let sb = start_sandbox(SandboxConfig::default()).await;
    let control = sb.control();
    assert!(
        control.is_connected("twi-bot-shard").unwrap(),
        "after start"
    );
    control.bot_restart().await.unwrap();
    assert!(
        control.is_connected("twi-bot-shard").unwrap(),
        "after a restart"
    );
    control.bot_offline().await.unwrap();
    assert!(!control.is_connected("twi-bot-shard").unwrap(), "offline");
    control.bot_online().await.unwrap();
    assert!(
        control.is_connected("twi-bot-shard").unwrap(),
        "back online"
    );
    sb.shutdown().await;
}

/// The simulated bot answers a slash command directly, unless it takes
/// over 2 s (Discord wants a first response within 3 s): then it defers
/// (a LOADING message) and edits its answer in, whatever the command.
#[tokio::test]
async fn a_slash_command_slower_than_two_seconds_is_deferred() {
    use crate::interactions::run;
    use serenity::all::MessageFlags;

    let mut w = world(BotBehaviour {
        latency: Latency::fixed(Duration::from_millis(2100)),
        ..BotBehaviour::default()
    })
    .await;
    let control = w.sb.control().clone();
    control.bot().unwrap().slash_commands_ready().await;
    let callback_type = |id: u64| {
        control
            .interaction_truths()
            .into_iter()
            .find(|t| t.interaction_id == id)
            .and_then(|t| t.callback)
            .map(|(_, kind)| kind)
    };
    let loading = |m: &Message| m.flags.is_some_and(|f| f.contains(MessageFlags::LOADING));

    let slow = run(&w.sb, "ping");
    let first = w.bot_message().await;
    assert!(loading(&first), "a slow /ping is deferred: {first:?}");
    assert_eq!(callback_type(slow), Some(5));
    let edited = w
        .prober
        .wait_for("the deferred answer's edit", |e| match e {
            Event::MessageUpdate(u) if u.id == first.id => Some(u.clone()),
            _ => None,
        })
        .await;
    assert!(
        edited.embeds.as_ref().is_some_and(|e| !e.is_empty()),
        "{edited:?}"
    );

    control.set_bot_behaviour(fast()).unwrap();
    let quick = run(&w.sb, "ping");
    let answer = w.bot_message().await;
    assert!(!loading(&answer), "a quick /ping is answered directly");
    assert_eq!(callback_type(quick), Some(4));
    w.stop().await;
}
