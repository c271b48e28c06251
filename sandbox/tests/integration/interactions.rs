//! Interactions on the wire: a user runs a slash command, the application
//! gets INTERACTION_CREATE and answers through the callback and webhook
//! routes, as Discord's "Receiving and Responding" documents them.

use reqwest::{Client, Method};
use serde_json::{Value, json};
use twi_sandbox::{RunCommand, Sandbox};

use crate::discord::{RawGateway, quiet_config, start_sandbox};

/// GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT.
const INTENTS: u64 = 1 | (1 << 9) | (1 << 15);

async fn call(
    sb: &Sandbox,
    auth: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Client::new().request(method, format!("{}{path}", sb.description().api_base));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn logged_in(sb: &Sandbox, account: &str) -> RawGateway {
    logged_in_with(sb, account, INTENTS).await
}

async fn logged_in_with(sb: &Sandbox, account: &str, intents: u64) -> RawGateway {
    let mut gw = RawGateway::connect(sb, "v=10&encoding=json").await;
    gw.recv().await.unwrap(); // HELLO
    gw.identify(&sb.account(account).unwrap().token, intents, None)
        .await;
    gw.until_dispatch("READY").await;
    gw
}

/// erin runs `command` in #probes; its interaction id.
pub(crate) fn run(sb: &Sandbox, command: &str) -> u64 {
    sb.control()
        .run_command(&RunCommand {
            user: "erin".into(),
            channel: "probes".into(),
            command: command.into(),
            options: None,
        })
        .unwrap()
}

/// Registers /ping, /help and /slow for the bot in the guild.
/// The token of the next INTERACTION_CREATE the bot gets.
async fn next_interaction_token(bot: &mut RawGateway) -> String {
    bot.until_dispatch("INTERACTION_CREATE").await["d"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn register(sb: &Sandbox) -> String {
    let bot = sb.account("twi-bot-shard").unwrap();
    let guild = &sb.description().guilds[0].id;
    let auth = format!("Bot {}", bot.token);
    let commands: Vec<Value> = ["ping", "help", "slow"]
        .iter()
        .map(|n| json!({"name": n, "description": format!("the {n} command"), "type": 1}))
        .collect();
    let (status, _) = call(
        sb,
        Some(&auth),
        Method::PUT,
        &format!("/applications/{}/guilds/{guild}/commands", bot.id),
        Some(Value::Array(commands)),
    )
    .await;
    assert_eq!(status, 200);
    bot.id.clone()
}

#[tokio::test]
async fn a_slash_command_is_answered_deferred_edited_and_followed_up() {
    let sb = start_sandbox(quiet_config()).await;
    let app = register(&sb).await;
    let mut bot = logged_in(&sb, "twi-bot-shard").await;
    let mut reader = logged_in(&sb, "prober").await;

    // An immediate answer.
    let id = run(&sb, "ping");
    let d = bot.until_dispatch("INTERACTION_CREATE").await["d"].clone();
    assert_eq!(d["id"], id.to_string());
    assert_eq!(d["type"], 2);
    assert_eq!(d["application_id"], app);
    assert_eq!(d["data"]["name"], "ping");
    assert_eq!(d["data"]["type"], 1);
    assert_eq!(d["data"]["guild_id"], sb.description().guilds[0].id);
    assert_eq!(
        d["channel_id"],
        sb.channel_id("probes").unwrap().to_string()
    );
    assert_eq!(d["channel"]["id"], d["channel_id"]);
    assert_eq!(d["member"]["user"]["username"], "erin");
    for field in [
        "token",
        "version",
        "app_permissions",
        "locale",
        "authorizing_integration_owners",
        "context",
        "attachment_size_limit",
    ] {
        assert!(d.get(field).is_some(), "INTERACTION_CREATE has {field}");
    }
    let token = d["token"].as_str().unwrap().to_string();
    let callback = format!("/interactions/{id}/{token}/callback");
    let (status, v) = call(
        &sb,
        None,
        Method::POST,
        &format!("{callback}?with_response=1"),
        Some(json!({"type": 4, "data": {"content": "pong", "embeds": [{"title": "🏓 Bot Latency Information"}]}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["interaction"]["id"], id.to_string());
    assert_eq!(v["interaction"]["response_message_loading"], false);
    let message = &v["resource"]["message"];
    assert_eq!(v["interaction"]["response_message_id"], message["id"]);
    assert_eq!(message["type"], 20);
    assert_eq!(message["interaction_metadata"]["id"], id.to_string());
    assert_eq!(message["interaction_metadata"]["name"], "ping");
    assert_eq!(message["interaction_metadata"]["user"]["username"], "erin");
    assert_eq!(message["interaction"]["name"], "ping");
    assert_eq!(message["author"]["id"], app);
    let (status, v) = call(
        &sb,
        None,
        Method::POST,
        &callback,
        Some(json!({"type": 4, "data": {"content": "again"}})),
    )
    .await;
    assert_eq!(
        (status, v["code"].clone()),
        (400, json!(40060)),
        "a second callback"
    );
    let seen = reader.until_dispatch("MESSAGE_CREATE").await["d"].clone();
    assert_eq!(seen["interaction_metadata"]["id"], id.to_string());
    assert_eq!(seen["embeds"][0]["title"], "🏓 Bot Latency Information");

    // A deferred answer: a LOADING message, edited later, then a follow-up.
    let id = run(&sb, "slow");
    let token = next_interaction_token(&mut bot).await;
    let (status, _) = call(
        &sb,
        None,
        Method::POST,
        &format!("/interactions/{id}/{token}/callback"),
        Some(json!({"type": 5})),
    )
    .await;
    assert_eq!(status, 204, "no body without with_response");
    let loading = reader.until_dispatch("MESSAGE_CREATE").await["d"].clone();
    assert_eq!(loading["flags"], 128);
    assert_eq!(loading["edited_timestamp"], Value::Null);
    let original = format!("/webhooks/{app}/{token}/messages/@original");
    let (status, v) = call(
        &sb,
        None,
        Method::PATCH,
        &original,
        Some(json!({"content": "done"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], loading["id"]);
    let edited = reader.until_dispatch("MESSAGE_UPDATE").await["d"].clone();
    assert_eq!(edited["flags"], 0);
    assert_eq!(edited["content"], "done");
    assert!(edited["edited_timestamp"].is_string());
    let (status, v) = call(&sb, None, Method::GET, &original, None).await;
    assert_eq!((status, v["content"].clone()), (200, json!("done")));
    let (status, v) = call(
        &sb,
        None,
        Method::POST,
        &format!("/webhooks/{app}/{token}"),
        Some(json!({"content": "more"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["interaction_metadata"]["original_response_message_id"],
        loading["id"]
    );
    let truth = sb.control().interaction_truths();
    let t = truth.iter().find(|t| t.interaction_id == id).unwrap();
    assert_eq!(t.callback.map(|c| c.1), Some(5));
    assert_eq!(
        t.response_message_id.map(|m| m.to_string()),
        loading["id"].as_str().map(String::from)
    );
    assert_eq!(t.edits.len(), 1);
    assert!(t.created <= t.response_created.unwrap() && t.response_created.unwrap() <= t.edits[0]);
    let json: Value = reqwest::get(format!(
        "{}/truth/interactions",
        sb.description().control_url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert!(
        json[1]["edits_us"][0].as_u64().unwrap()
            >= json[1]["response_created_us"].as_u64().unwrap()
    );
    let (status, _) = call(&sb, None, Method::DELETE, &original, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&sb, None, Method::GET, &original, None).await;
    assert_eq!(status, 404);
    sb.shutdown().await;
}

#[tokio::test]
async fn ephemeral_responses_are_seen_only_by_the_user() {
    let sb = start_sandbox(quiet_config()).await;
    let app = register(&sb).await;
    let mut bot = logged_in(&sb, "twi-bot-shard").await;
    // (A user account has no privileged intents to ask for.)
    let mut erin = logged_in_with(&sb, "erin", 1 | (1 << 9)).await;
    let id = run(&sb, "help");
    let token = next_interaction_token(&mut bot).await;
    let (status, _) = call(
        &sb,
        None,
        Method::POST,
        &format!("/interactions/{id}/{token}/callback"),
        Some(json!({"type": 4, "data": {"content": "secret", "flags": 64}})),
    )
    .await;
    assert_eq!(status, 204);
    let seen = erin.until_dispatch("MESSAGE_CREATE").await["d"].clone();
    assert_eq!(seen["flags"], 64);
    let prober = format!("Bot {}", sb.account("prober").unwrap().token);
    let (_, history) = call(
        &sb,
        Some(&prober),
        Method::GET,
        &format!("/channels/{}/messages", sb.channel_id("probes").unwrap()),
        None,
    )
    .await;
    assert!(
        history.as_array().unwrap().is_empty(),
        "not in the channel: {history}"
    );
    let (status, v) = call(
        &sb,
        None,
        Method::GET,
        &format!("/webhooks/{app}/{token}/messages/@original"),
        None,
    )
    .await;
    assert_eq!((status, v["content"].clone()), (200, json!("secret")));
    assert!(sb.control().interaction_truths()[0].ephemeral);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_late_callback_is_an_unknown_interaction() {
    let sb = start_sandbox(quiet_config()).await;
    register(&sb).await;
    let mut bot = logged_in(&sb, "twi-bot-shard").await;
    let id = run(&sb, "ping");
    let token = next_interaction_token(&mut bot).await;
    // Discord's deadline is the thing under test: wait past it.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (status, v) = call(
        &sb,
        None,
        Method::POST,
        &format!("/interactions/{id}/{token}/callback"),
        Some(json!({"type": 4, "data": {"content": "late"}})),
    )
    .await;
    assert_eq!((status, v["code"].clone()), (404, json!(10062)));
    let (status, v) = call(
        &sb,
        None,
        Method::POST,
        &format!("/interactions/{id}/wrong/callback"),
        Some(json!({"type": 4, "data": {"content": "x"}})),
    )
    .await;
    assert_eq!((status, v["code"].clone()), (404, json!(10062)));
    let err = sb
        .control()
        .run_command(&RunCommand {
            user: "erin".into(),
            channel: "probes".into(),
            command: "nope".into(),
            options: None,
        })
        .unwrap_err();
    assert!(err.contains("registered /nope"), "{err}");
    let err = sb
        .control()
        .run_command(&RunCommand {
            user: "prober".into(),
            channel: "probes".into(),
            command: "ping".into(),
            options: None,
        })
        .unwrap_err();
    assert!(err.contains("bot account"), "{err}");
    sb.shutdown().await;
}

#[tokio::test]
async fn interaction_ground_truth_keeps_the_newest_truth_records() {
    let mut cfg = quiet_config();
    cfg.retention.truth_records = 3;
    let sb = start_sandbox(cfg).await;
    register(&sb).await;
    let ids: Vec<u64> = (0..5).map(|_| run(&sb, "ping")).collect();
    let kept: Vec<u64> = sb
        .control()
        .interaction_truths()
        .iter()
        .map(|t| t.interaction_id)
        .collect();
    assert_eq!(kept, ids[2..], "the oldest go first");
}

#[tokio::test]
async fn interaction_responses_count_against_the_message_retention() {
    let mut cfg = quiet_config();
    cfg.retention.messages = 3;
    let sb = start_sandbox(cfg).await;
    let app = register(&sb).await;
    let mut bot = logged_in(&sb, "twi-bot-shard").await;
    let auth = format!("Bot {}", sb.account("twi-bot-shard").unwrap().token);
    let probes = sb.channel_id("probes").unwrap();
    let mut tokens = Vec::new();
    let answer = async |bot: &mut RawGateway, n: usize| {
        let id = run(&sb, "ping");
        let token = next_interaction_token(bot).await;
        let (status, v) = call(
            &sb,
            None,
            Method::POST,
            &format!("/interactions/{id}/{token}/callback"),
            Some(json!({"type": 4, "data": {"content": format!("pong {n}")}})),
        )
        .await;
        assert_eq!(status, 204, "{v}");
        token
    };
    for n in 0..5 {
        tokens.push(answer(&mut bot, n).await);
    }
    let contents = async || {
        let (status, v) = call(
            &sb,
            Some(&auth),
            Method::GET,
            &format!("/channels/{probes}/messages?limit=100"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(contents().await, ["pong 4", "pong 3", "pong 2"]);
    // The oldest response went as if deleted, although its token is valid.
    let original = |token: &str| format!("/webhooks/{app}/{token}/messages/@original");
    let (status, v) = call(&sb, None, Method::GET, &original(&tokens[0]), None).await;
    assert_eq!((status, v["code"].clone()), (404, json!(10008)));
    // A deleted response makes room: the next one drops nothing else.
    let (status, _) = call(&sb, None, Method::DELETE, &original(&tokens[4]), None).await;
    assert_eq!(status, 204);
    answer(&mut bot, 5).await;
    assert_eq!(contents().await, ["pong 5", "pong 3", "pong 2"]);
    sb.shutdown().await;
}
