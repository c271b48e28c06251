//! The sandbox's gateway, as serenity and a raw client see it.

use std::time::{Duration, Instant};

use serde_json::json;
use serenity::all::{CreateMessage, Event, GatewayIntents, OnlineStatus};

use crate::discord::{RawGateway, TestClient, quiet_config, start_sandbox};

const BASIC: GatewayIntents = GatewayIntents::GUILDS.union(GatewayIntents::GUILD_MESSAGES);

fn all_intents() -> GatewayIntents {
    BASIC
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_PRESENCES
        | GatewayIntents::GUILD_MESSAGE_TYPING
}

#[tokio::test]
async fn serenity_gets_ready_and_guild_create_and_exchanges_messages() {
    let sb = start_sandbox(quiet_config()).await;
    let prober_id: u64 = sb.account("prober").unwrap().id.parse().unwrap();
    let channel = sb.channel_id("probes").unwrap();

    let mut prober = TestClient::connect(&sb, "prober", all_intents()).await;
    let ready = prober.ready().await;
    assert_eq!(ready.user.id.get(), prober_id);
    assert_eq!(ready.guilds.len(), 1);
    let guild = prober
        .wait_for("GUILD_CREATE", |e| match e {
            Event::GuildCreate(g) => Some(g.guild.clone()),
            _ => None,
        })
        .await;
    assert_eq!(guild.name, "The Wandering Inn");
    assert_eq!(guild.members.len(), 3);
    assert!(guild.channels.values().any(|c| c.name == "probes"));

    let mut other = TestClient::connect(&sb, "twi-bot-shard", all_intents()).await;
    other.ready().await;
    let sent = serenity::all::ChannelId::new(channel)
        .send_message(
            &prober.http,
            CreateMessage::new().content("hello from the prober"),
        )
        .await
        .unwrap();
    let got = other
        .wait_for("MESSAGE_CREATE", |e| match e {
            Event::MessageCreate(m) if m.message.id == sent.id => Some(m.message.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got.content, "hello from the prober");
    assert_eq!(got.author.id.get(), prober_id);
    assert_eq!(got.guild_id.map(|g| g.get()), Some(guild.id.get()));
    // The snowflake's time is when the sandbox created the message.
    let age = std::time::SystemTime::now()
        .duration_since(twi_sandbox::snowflake::timestamp(sent.id.get()))
        .unwrap();
    assert!(age < Duration::from_secs(5), "{age:?}");

    prober.stop().await;
    other.stop().await;
    sb.shutdown().await;
}

/// Activities set in IDENTIFY and op 3 reach others, as Discord relays
/// them (what bots may set, with `created_at`).
#[tokio::test]
async fn presence_activities_are_relayed() {
    let sb = start_sandbox(quiet_config()).await;
    let bot_id: u64 = sb.account("twi-bot-shard").unwrap().id.parse().unwrap();
    let mut prober = TestClient::connect(&sb, "prober", all_intents()).await;
    prober.ready().await;
    let mut presence = async |what: &str| {
        prober
            .wait_for(what, |e| match e {
                Event::PresenceUpdate(p) if p.presence.user.id.get() == bot_id => {
                    Some(p.presence.clone())
                }
                _ => None,
            })
            .await
    };

    let token = sb.account("twi-bot-shard").unwrap().token.clone();
    let mut bot = RawGateway::connect(&sb, "v=10&encoding=json").await;
    assert_eq!(bot.recv().await.unwrap()["op"], 10);
    bot.send(json!({"op": 2, "d": {
        "token": token, "intents": 1,
        "properties": {"os": "linux", "browser": "test", "device": "test"},
        "presence": {"status": "online", "since": null, "afk": false,
                     "activities": [{"name": "the inn", "type": 3}]},
    }}))
    .await;
    bot.until_dispatch("READY").await;
    let p = presence("online with an activity").await;
    assert_eq!(p.status, OnlineStatus::Online);
    assert_eq!(p.activities.len(), 1);
    assert_eq!(p.activities[0].name, "the inn");
    assert_eq!(p.activities[0].kind, serenity::all::ActivityType::Watching);

    bot.send(
        json!({"op": 3, "d": {"status": "idle", "since": null, "afk": false,
        "activities": [{"name": "!help", "type": 0}]}}),
    )
    .await;
    let p = presence("idle with a new activity").await;
    assert_eq!(p.status, OnlineStatus::Idle);
    assert_eq!(p.activities[0].name, "!help");
    assert_eq!(p.activities[0].kind, serenity::all::ActivityType::Playing);
    assert!(p.activities[0].created_at > 0);
    bot.close(1000).await;
    prober.stop().await;
    sb.shutdown().await;
}

/// A connection that drops without a close keeps its session, and so its
/// presence, until the session can no longer be resumed (Discord: "a few
/// minutes"; here the configured resume window).
#[tokio::test]
async fn a_dropped_connection_stays_online_for_the_resume_window() {
    let mut cfg = quiet_config();
    let window = Duration::from_millis(1500);
    cfg.gateway.resume_window = window;
    let sb = start_sandbox(cfg).await;
    let bot_id: u64 = sb.account("twi-bot-shard").unwrap().id.parse().unwrap();
    let mut prober = TestClient::connect(&sb, "prober", all_intents()).await;
    prober.ready().await;
    let token = sb.account("twi-bot-shard").unwrap().token.clone();
    let mut bot = RawGateway::connect(&sb, "v=10&encoding=json").await;
    bot.recv().await.unwrap();
    bot.identify(&token, 1, None).await;
    bot.until_dispatch("READY").await;
    let mut status = async |what: &str| {
        prober
            .wait_for(what, |e| match e {
                Event::PresenceUpdate(p) if p.presence.user.id.get() == bot_id => {
                    Some(p.presence.status)
                }
                _ => None,
            })
            .await
    };
    assert_eq!(status("online").await, OnlineStatus::Online);

    drop(bot); // the TCP connection ends without a close frame
    let dropped = Instant::now();
    assert_eq!(status("offline").await, OnlineStatus::Offline);
    assert!(
        dropped.elapsed() >= window - Duration::from_millis(50),
        "offline after {:?}, before the {window:?} resume window ended",
        dropped.elapsed()
    );
    prober.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn presence_changes_are_seen_by_others() {
    let sb = start_sandbox(quiet_config()).await;
    let bot_id: u64 = sb.account("twi-bot-shard").unwrap().id.parse().unwrap();
    let mut prober = TestClient::connect(&sb, "prober", all_intents()).await;
    prober.ready().await;

    let bot = TestClient::connect(&sb, "twi-bot-shard", BASIC).await;
    let online = prober
        .wait_for("PRESENCE_UPDATE online", |e| match e {
            Event::PresenceUpdate(p) if p.presence.user.id.get() == bot_id => {
                Some(p.presence.status)
            }
            _ => None,
        })
        .await;
    assert_eq!(online, OnlineStatus::Online);

    bot.stop().await; // a clean 1000 close ends the session at once
    let offline = prober
        .wait_for("PRESENCE_UPDATE offline", |e| match e {
            Event::PresenceUpdate(p) if p.presence.user.id.get() == bot_id => {
                Some(p.presence.status)
            }
            _ => None,
        })
        .await;
    assert_eq!(offline, OnlineStatus::Offline);
    prober.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn serenity_resumes_after_a_dropped_connection_and_gets_missed_messages() {
    let sb = start_sandbox(quiet_config()).await;
    let channel = sb.channel_id("probes").unwrap();
    let mut prober = TestClient::connect(&sb, "prober", all_intents()).await;
    prober.ready().await;
    let other = TestClient::connect(&sb, "twi-bot-shard", BASIC).await;

    // 4000 keeps the session resumable; the message is sent meanwhile.
    assert_eq!(sb.control().close_gateway("prober", 4000).unwrap(), 1);
    let sent = serenity::all::ChannelId::new(channel)
        .send_message(
            &other.http,
            CreateMessage::new().content("while you were away"),
        )
        .await
        .unwrap();
    let mut resumed = false;
    let mut got = 0;
    prober
        .wait_for("RESUMED and the missed message", |e| {
            match e {
                Event::Resumed(_) => resumed = true,
                Event::MessageCreate(m) if m.message.id == sent.id => got += 1,
                Event::Ready(_) => panic!("serenity identified again instead of resuming"),
                _ => {}
            }
            (resumed && got > 0).then_some(())
        })
        .await;
    assert_eq!(got, 1);
    prober.stop().await;
    other.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn serenity_reconnects_after_op7_and_reidentifies_after_op9() {
    let sb = start_sandbox(quiet_config()).await;
    let mut prober = TestClient::connect(&sb, "prober", BASIC).await;
    let first = prober.ready().await;

    assert_eq!(sb.control().send_reconnect("prober").unwrap(), 1);
    prober
        .wait_for("RESUMED after op 7", |e| {
            matches!(e, Event::Resumed(_)).then_some(())
        })
        .await;

    assert_eq!(sb.control().invalidate_session("prober").unwrap(), 1);
    let again = prober.ready().await;
    assert_ne!(
        again.session_id, first.session_id,
        "a new session after op 9"
    );
    prober.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn withheld_heartbeat_acks_make_serenity_reconnect() {
    let mut cfg = quiet_config();
    cfg.gateway.heartbeat_interval = Duration::from_millis(300);
    let sb = start_sandbox(cfg).await;
    let mut prober = TestClient::connect(&sb, "prober", BASIC).await;
    prober.ready().await;
    sb.control().set_heartbeat_acks("prober", false).unwrap();
    // serenity notices the missing ACK at its next heartbeat and reconnects.
    prober
        .wait_for("a new session after the zombie connection", |e| {
            matches!(e, Event::Resumed(_) | Event::Ready(_)).then_some(())
        })
        .await;
    sb.control().set_heartbeat_acks("prober", true).unwrap();
    prober.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn zlib_stream_frames_are_one_stream_with_sync_flush() {
    let sb = start_sandbox(quiet_config()).await;
    let token = sb.account("prober").unwrap().token.clone();
    let mut gw = RawGateway::connect(&sb, "v=10&encoding=json&compress=zlib-stream").await;
    let hello = gw.recv().await.unwrap();
    assert_eq!(hello["op"], 10);
    assert!(hello["d"]["heartbeat_interval"].as_u64().unwrap() > 0);
    gw.identify(&token, 1 | (1 << 9), None).await;
    let ready = gw.until_dispatch("READY").await;
    assert_eq!(ready["s"], 1);
    assert_eq!(ready["d"]["v"], 10);
    let guild = gw.until_dispatch("GUILD_CREATE").await;
    assert_eq!(guild["d"]["name"], "The Wandering Inn");
    assert!(gw.binary_frames.len() >= 3);
    for f in &gw.binary_frames {
        assert!(
            f.ends_with(&[0, 0, 0xff, 0xff]),
            "every frame ends with a sync flush"
        );
    }
    gw.send(json!({"op": 1, "d": 2})).await;
    assert_eq!(gw.recv().await.unwrap()["op"], 11);
    sb.shutdown().await;
}

/// The heartbeat ACK comes a network round trip after the heartbeat, as on
/// Discord; dispatches do not wait for it.
#[tokio::test]
async fn heartbeat_acks_wait_the_round_trip_and_dispatches_do_not() {
    let mut cfg = quiet_config();
    cfg.gateway.heartbeat_round_trip = Duration::from_millis(800);
    let sb = start_sandbox(cfg).await;
    let token = sb.account("prober").unwrap().token.clone();
    let mut gw = RawGateway::connect(&sb, "v=10&encoding=json").await;
    assert_eq!(gw.recv().await.unwrap()["op"], 10);
    gw.identify(&token, 1 | (1 << 9), None).await;
    gw.until_dispatch("GUILD_CREATE").await;

    let beat = Instant::now();
    gw.send(json!({"op": 1, "d": 2})).await;
    let channel = sb.channel_id("probes").unwrap();
    let sent = reqwest::Client::new()
        .post(format!(
            "{}/channels/{channel}/messages",
            sb.description().api_base
        ))
        .header("Authorization", format!("Bot {token}"))
        .json(&json!({"content": "during the round trip"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let first = gw.recv().await.unwrap();
    assert_eq!(first["t"], "MESSAGE_CREATE", "{first}");
    assert!(beat.elapsed() < Duration::from_millis(800));
    assert_eq!(gw.recv().await.unwrap()["op"], 11);
    assert!(beat.elapsed() >= Duration::from_millis(800));
    sb.shutdown().await;
}

#[tokio::test]
async fn plain_connections_get_text_frames() {
    let sb = start_sandbox(quiet_config()).await;
    let mut gw = RawGateway::connect(&sb, "v=10&encoding=json").await;
    assert_eq!(gw.recv().await.unwrap()["op"], 10);
    assert!(gw.binary_frames.is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn identify_errors_close_with_discords_codes() {
    let sb = start_sandbox(quiet_config()).await;
    let prober = sb.account("prober").unwrap().token.clone();
    let erin = sb.account("erin").unwrap().token.clone();

    /// (what, token, intents, shard, expected close code)
    type Case<'a> = (&'a str, String, u64, Option<[u64; 2]>, u16);
    let cases: Vec<Case> = vec![
        ("bad token", "not-a-token".into(), 1, None, 4004),
        ("undefined intent bit", prober.clone(), 1 << 40, None, 4013),
        // erin may not use GUILD_MEMBERS.
        (
            "disallowed privileged intent",
            erin.clone(),
            1 | (1 << 1),
            None,
            4014,
        ),
        (
            "shard id out of range",
            prober.clone(),
            1,
            Some([2, 2]),
            4010,
        ),
        ("zero shards", prober.clone(), 1, Some([0, 0]), 4010),
    ];
    for (what, token, intents, shard, code) in cases {
        let mut gw = RawGateway::connect(&sb, "v=10&encoding=json").await;
        gw.recv().await.unwrap();
        gw.identify(&token, intents, shard).await;
        let closed = loop {
            match gw.recv().await {
                Ok(_) => continue,
                Err(code) => break code,
            }
        };
        assert_eq!(closed, Some(code), "{what}");
    }
    let mut gw = RawGateway::connect(&sb, "v=6&encoding=json").await;
    assert_eq!(gw.recv().await.unwrap_err(), Some(4012), "old API version");
    sb.shutdown().await;
}

#[tokio::test]
async fn guilds_are_routed_to_their_shard() {
    let mut cfg = quiet_config();
    // (id >> 22) % 2 == 1: this guild lives on shard 1 of 2.
    let guild_id: u64 = (12_345 << 22) | 7;
    cfg.guilds[0].id = Some(guild_id);
    let sb = start_sandbox(cfg).await;
    let token = sb.account("prober").unwrap().token.clone();
    for (shard, expected) in [([0, 2], 0), ([1, 2], 1), ([0, 1], 1)] {
        let mut gw = RawGateway::connect(&sb, "v=10&encoding=json").await;
        gw.recv().await.unwrap();
        gw.identify(&token, 1, Some(shard)).await;
        let ready = gw.until_dispatch("READY").await;
        assert_eq!(ready["d"]["shard"], json!(shard));
        let guilds = ready["d"]["guilds"].as_array().unwrap();
        assert_eq!(guilds.len(), expected, "shard {shard:?}");
        if expected == 1 {
            assert_eq!(guilds[0]["id"], guild_id.to_string());
        }
        gw.close(1000).await;
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn intents_filter_dispatches_and_message_content_is_privileged() {
    let sb = start_sandbox(quiet_config()).await;
    let channel = sb.channel_id("probes").unwrap();
    let prober_id = sb.account("prober").unwrap().id.clone();
    // The bot account reads without MESSAGE_CONTENT, and without presences.
    let mut reader = TestClient::connect(&sb, "twi-bot-shard", BASIC).await;
    reader.ready().await;
    let writer = TestClient::connect(&sb, "prober", all_intents()).await;
    let bot_id = sb.account("twi-bot-shard").unwrap().id.clone();

    let ch = serenity::all::ChannelId::new(channel);
    let plain = ch
        .send_message(&writer.http, CreateMessage::new().content("secret words"))
        .await
        .unwrap();
    let mention = ch
        .send_message(
            &writer.http,
            CreateMessage::new().content(format!("<@{bot_id}> !help")),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    reader
        .wait_for("both messages", |e| {
            match e {
                Event::MessageCreate(m) => seen.push((m.message.id, m.message.content.clone())),
                Event::PresenceUpdate(_) => panic!("no GUILD_PRESENCES, no presence updates"),
                _ => {}
            }
            (seen.len() == 2).then_some(())
        })
        .await;
    assert_eq!(
        seen[0],
        (plain.id, String::new()),
        "content hidden without MESSAGE_CONTENT"
    );
    assert_eq!(
        seen[1],
        (mention.id, format!("<@{bot_id}> !help")),
        "visible when mentioned"
    );
    assert_eq!(
        plain.content, "secret words",
        "the author sees its own content"
    );
    let _ = prober_id;
    reader.stop().await;
    writer.stop().await;
    sb.shutdown().await;
}

#[tokio::test]
async fn asking_for_all_members_twice_in_30s_is_rate_limited_like_discord() {
    let sb = start_sandbox(quiet_config()).await;
    // This account may use GUILD_MEMBERS.
    let token = sb.account("twi-bot-shard").unwrap().token.clone();
    let guild = sb.description().guilds[0].id.clone();
    let mut gw = RawGateway::connect(&sb, "v=10&encoding=json").await;
    gw.recv().await.unwrap();
    gw.identify(&token, 1 | (1 << 1), None).await;
    gw.until_dispatch("READY").await;
    let all = |nonce: &str| json!({"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0, "nonce": nonce}});
    gw.send(all("first")).await;
    let chunk = gw.until_dispatch("GUILD_MEMBERS_CHUNK").await;
    assert_eq!(chunk["d"]["nonce"], "first");
    assert_eq!(chunk["d"]["members"].as_array().unwrap().len(), 3);
    gw.send(all("second")).await;
    let limited = gw.until_dispatch("RATE_LIMITED").await;
    assert_eq!(limited["d"]["opcode"], 8);
    assert_eq!(limited["d"]["meta"]["nonce"], "second");
    assert!(limited["d"]["retry_after"].as_f64().unwrap() > 0.0);
    // Asking for given users is not limited.
    let bot = sb.account("twi-bot-shard").unwrap().id.clone();
    gw.send(json!({"op": 8, "d": {"guild_id": guild, "user_ids": [bot], "presences": false, "nonce": "third"}}))
        .await;
    let chunk = gw.until_dispatch("GUILD_MEMBERS_CHUNK").await;
    assert_eq!(chunk["d"]["nonce"], "third");
    sb.shutdown().await;
}

/// A client that stops reading is dropped, without a close frame, once
/// `2 × replay_buffer` frames wait for it (hub::queue_capacity), also while
/// the sandbox's write is blocked on its full socket; its session is kept
/// (a RESUME finds it: too far behind, 4007, where an ended session would
/// get op 9).
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_session_kept() {
    let mut cfg = quiet_config();
    cfg.gateway.replay_buffer = 32;
    cfg.rate_limits.messages_per_channel = 1_000_000;
    cfg.rate_limits.global_per_second = 1_000_000;
    let sb = start_sandbox(cfg).await;
    let prober = sb.account("prober").unwrap().token.clone();
    let mut stalled = RawGateway::connect(&sb, "v=10&encoding=json").await;
    stalled.recv().await.unwrap(); // HELLO
    // GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT
    stalled
        .identify(&prober, 1 | (1 << 9) | (1 << 15), None)
        .await;
    let ready = stalled.until_dispatch("READY").await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_string();
    assert!(sb.control().is_connected("prober").unwrap());

    // From now on nothing reads `stalled`: large messages fill the socket
    // buffers, then the queue.
    let http = crate::discord::sandbox_http(&sb, "twi-bot-shard");
    let channel = serenity::all::ChannelId::new(sb.channel_id("probes").unwrap());
    let content = "x".repeat(2000);
    let mut sent = 0;
    while sb.control().is_connected("prober").unwrap() {
        assert!(
            sent < 6_000,
            "still connected after {sent} messages of 2 KB it never read"
        );
        // About 1,400 are needed on loopback; 8 at a time keeps this short,
        // and far below the 64 frames a reading client may have queued.
        let batch =
            (0..8).map(|_| channel.send_message(&http, CreateMessage::new().content(&content)));
        for result in futures_util::future::join_all(batch).await {
            result.unwrap();
        }
        sent += 8;
    }

    let mut again = RawGateway::connect(&sb, "v=10&encoding=json").await;
    again.recv().await.unwrap(); // HELLO
    let resume =
        json!({"op": 6, "d": {"token": prober, "session_id": session_id, "seq": ready["s"]}});
    again.send(resume).await;
    assert_eq!(
        again.recv().await.err(),
        Some(Some(4007)),
        "the session is still there, and the client far behind its replay buffer"
    );
    // What reached its socket before the drop, then no close frame (1006).
    let mut frames = 0;
    let end = loop {
        match stalled.recv().await {
            Ok(_) => frames += 1,
            Err(code) => break code,
        }
        assert!(frames <= sent + 10, "the stalled connection never ends");
    };
    assert_eq!(end, None, "dropped, not closed with a code");
    sb.shutdown().await;
}
