//! The sandbox's REST API on the wire: auth, error shapes, rate limits, faults, truth.

use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use twi_sandbox::{HttpFault, Sandbox};

use crate::discord::{quiet_config, start_sandbox};

struct Api {
    base: String,
    token: String,
    client: Client,
}

impl Api {
    fn new(sb: &Sandbox, account: &str) -> Api {
        let a = sb.account(account).unwrap();
        let token = if a.bot {
            format!("Bot {}", a.token)
        } else {
            a.token.clone()
        };
        Api {
            base: sb.description().api_base.clone(),
            token,
            client: Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }
}

async fn json_of(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    assert_eq!(
        r.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "Content-Type is exactly application/json"
    );
    (status, r.json().await.unwrap())
}

fn sandbox_with_restricted_channels() -> twi_sandbox::SandboxConfig {
    let mut cfg = quiet_config();
    cfg.guilds[0]
        .channels
        .push(twi_sandbox::config::ChannelConfig {
            name: "staff".into(),
            id: None,
            hidden_from: vec!["prober".into()],
            read_only_for: vec![],
        });
    cfg.guilds[0]
        .channels
        .push(twi_sandbox::config::ChannelConfig {
            name: "announcements".into(),
            id: None,
            hidden_from: vec![],
            read_only_for: vec!["prober".into()],
        });
    cfg
}

#[tokio::test]
async fn rest_errors_use_discords_shapes_and_codes() {
    let sb = start_sandbox(sandbox_with_restricted_channels()).await;
    let api = Api::new(&sb, "prober");
    let probes = sb.channel_id("probes").unwrap();
    let staff = sb.channel_id("staff").unwrap();
    let announcements = sb.channel_id("announcements").unwrap();

    let mut bad = Api::new(&sb, "prober");
    bad.token = "Bot nope".into();
    let (s, v) = json_of(bad.call(Method::GET, "/users/@me", None).await).await;
    assert_eq!(
        (s.as_u16(), v),
        (401, json!({"message": "401: Unauthorized", "code": 0}))
    );
    // A bot token without the "Bot " prefix is refused too, as on Discord.
    bad.token = sb.account("prober").unwrap().token.clone();
    assert_eq!(
        bad.call(Method::GET, "/users/@me", None).await.status(),
        401
    );

    let cases = [
        (
            format!("/channels/{staff}/messages"),
            json!({"content": "x"}),
            403,
            50001,
            "Missing Access",
        ),
        (
            format!("/channels/{announcements}/messages"),
            json!({"content": "x"}),
            403,
            50013,
            "Missing Permissions",
        ),
        (
            "/channels/1234/messages".to_string(),
            json!({"content": "x"}),
            404,
            10003,
            "Unknown Channel",
        ),
        (
            format!("/channels/{probes}/messages"),
            json!({"content": ""}),
            400,
            50006,
            "Cannot send an empty message",
        ),
    ];
    for (path, body, status, code, message) in cases {
        let (s, v) = json_of(api.call(Method::POST, &path, Some(body)).await).await;
        assert_eq!(s.as_u16(), status, "{path}");
        assert_eq!(v["code"], code, "{path}: {v}");
        assert_eq!(v["message"], message, "{path}");
    }
    let (s, v) = json_of(
        api.call(
            Method::POST,
            &format!("/channels/{probes}/messages"),
            Some(json!({"content": "x".repeat(2001)})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["code"], 50035);
    assert_eq!(
        v["errors"]["content"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let (s, v) = json_of(
        api.call(
            Method::GET,
            &format!("/channels/{probes}/messages/99"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s.as_u16(), v["code"].clone()), (404, json!(10008)));
    sb.shutdown().await;
}

#[tokio::test]
async fn messages_can_be_created_listed_edited_and_deleted() {
    let sb = start_sandbox(quiet_config()).await;
    let api = Api::new(&sb, "prober");
    let probes = sb.channel_id("probes").unwrap();
    let path = format!("/channels/{probes}/messages");
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, v) = json_of(
            api.call(
                Method::POST,
                &path,
                Some(json!({"content": format!("m{i}")})),
            )
            .await,
        )
        .await;
        assert_eq!(s, 200);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // A reply, with its reference given as a JSON number above 2^53.
    let first: u64 = ids[0].parse().unwrap();
    let body = format!(r#"{{"content":"re","message_reference":{{"message_id":{first}}}}}"#);
    let reply = api
        .client
        .post(format!("{}{path}", api.base))
        .header("Authorization", &api.token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (_, reply) = json_of(reply).await;
    assert_eq!(reply["message_reference"]["message_id"], ids[0]);
    assert_eq!(reply["type"], 19);

    let (_, list) = json_of(
        api.call(Method::GET, &format!("{path}?limit=2"), None)
            .await,
    )
    .await;
    let got: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["re", "m2"], "newest first");
    let (_, list) = json_of(
        api.call(Method::GET, &format!("{path}?before={}", ids[2]), None)
            .await,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, list) = json_of(
        api.call(Method::GET, &format!("{path}?after={}", ids[0]), None)
            .await,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 3);

    let (s, edited) = json_of(
        api.call(
            Method::PATCH,
            &format!("{path}/{}", ids[1]),
            Some(json!({"content": "edited"})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(edited["content"], "edited");
    assert!(edited["edited_timestamp"].is_string());
    let other = Api::new(&sb, "twi-bot-shard");
    let (s, v) = json_of(
        other
            .call(
                Method::PATCH,
                &format!("{path}/{}", ids[1]),
                Some(json!({"content": "x"})),
            )
            .await,
    )
    .await;
    assert_eq!((s.as_u16(), v["code"].clone()), (403, json!(50005)));
    assert_eq!(
        api.call(Method::DELETE, &format!("{path}/{}", ids[1]), None)
            .await
            .status(),
        204
    );
    assert_eq!(
        api.call(Method::GET, &format!("{path}/{}", ids[1]), None)
            .await
            .status(),
        404
    );
    // Another's message needs Manage Messages: the bot (a plain member)
    // may not delete the prober's; the prober, the guild's owner here
    // (first member: ADMINISTRATOR), may delete the bot's.
    let (s, v) = json_of(
        other
            .call(Method::DELETE, &format!("{path}/{}", ids[2]), None)
            .await,
    )
    .await;
    assert_eq!((s.as_u16(), v["code"].clone()), (403, json!(50013)));
    let (s, bots) = json_of(
        other
            .call(Method::POST, &path, Some(json!({"content": "bot's"})))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let bots = format!("{path}/{}", bots["id"].as_str().unwrap());
    assert_eq!(api.call(Method::DELETE, &bots, None).await.status(), 204);
    assert_eq!(api.call(Method::GET, &bots, None).await.status(), 404);
    sb.shutdown().await;
}

#[tokio::test]
async fn message_rate_limit_is_real_with_discords_headers() {
    let sb = start_sandbox(quiet_config()).await;
    let api = Api::new(&sb, "prober");
    let path = format!("/channels/{}/messages", sb.channel_id("probes").unwrap());
    for i in 0..5u32 {
        let r = api
            .call(Method::POST, &path, Some(json!({"content": "x"})))
            .await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], (4 - i).to_string().as_str());
        assert!(
            h["x-ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
                > 1.7e9
        );
        assert!(
            h["x-ratelimit-reset-after"]
                .to_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
                <= 5.0
        );
        assert!(!h["x-ratelimit-bucket"].is_empty());
    }
    let r = api
        .call(Method::POST, &path, Some(json!({"content": "x"})))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("via"));
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let (_, v) = json_of(r).await;
    assert_eq!(v["global"], false);
    assert!(v["retry_after"].as_f64().unwrap() > 0.0);
    // Another account has its own bucket.
    let other = Api::new(&sb, "twi-bot-shard");
    assert_eq!(
        other
            .call(Method::POST, &path, Some(json!({"content": "x"})))
            .await
            .status(),
        200
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn forced_faults_answer_429_and_5xx_then_stop() {
    let mut cfg = quiet_config();
    cfg.rate_limits.messages_per_channel = 7;
    let sb = start_sandbox(cfg).await;
    let api = Api::new(&sb, "prober");
    let path = format!("/channels/{}/messages", sb.channel_id("probes").unwrap());
    sb.control()
        .force_http(HttpFault {
            method: Some("POST".into()),
            path: "/channels/*/messages".into(),
            status: 503,
            duration: None,
            count: Some(1),
        })
        .unwrap();
    let (s, _) = json_of(
        api.call(Method::POST, &path, Some(json!({"content": "x"})))
            .await,
    )
    .await;
    assert_eq!(s, 503);
    let real = api
        .call(Method::POST, &path, Some(json!({"content": "x"})))
        .await;
    assert_eq!(real.status(), 200);
    let header = |r: &Response, name: &str| {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_string()
    };

    // The same over the control API.
    let control = format!("{}/faults/http", sb.description().control_url);
    let r = reqwest::Client::new()
        .post(&control)
        .json(&json!({"method": "POST", "path": "/channels/*/messages", "status": 429, "duration": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api
        .call(Method::POST, &path, Some(json!({"content": "x"})))
        .await;
    assert_eq!(r.status(), 429);
    // A forced 429 names the route's real bucket and limit, as Discord's do.
    for name in ["x-ratelimit-bucket", "x-ratelimit-limit"] {
        assert_eq!(header(&r, name), header(&real, name), "{name}");
    }
    assert_eq!(header(&r, "x-ratelimit-limit"), "7");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let (_, v) = json_of(r).await;
    assert_eq!(v["message"], "You are being rate limited.");
    sb.control().clear_faults();
    assert_eq!(
        api.call(Method::POST, &path, Some(json!({"content": "x"})))
            .await
            .status(),
        200
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn webhooks_execute_with_wait_and_the_app_endpoints_answer() {
    let sb = start_sandbox(quiet_config()).await;
    let url = sb.description().webhook_url.clone().unwrap();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}?wait=true"))
        .json(&json!({"content": "[FIRING:1] BotDown", "embeds": [{"title": "BotDown", "description": "down"}]}))
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    assert!(v["webhook_id"].is_string());
    assert_eq!(v["embeds"][0]["title"], "BotDown");
    let r = client
        .post(&url)
        .json(&json!({"content": "no wait"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let bad = url.rsplit_once('/').unwrap().0.to_string() + "/wrong";
    let (s, v) = json_of(
        client
            .post(&bad)
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s.as_u16(), v["code"].clone()), (401, json!(50027)));

    let api = Api::new(&sb, "prober");
    for path in ["/oauth2/applications/@me", "/applications/@me"] {
        let (s, v) = json_of(api.call(Method::GET, path, None).await).await;
        assert_eq!(s, 200);
        for field in [
            "id",
            "name",
            "description",
            "icon",
            "bot_public",
            "bot_require_code_grant",
            "owner",
            "verify_key",
            "flags",
        ] {
            assert!(v.get(field).is_some(), "{path} lacks {field}");
        }
        // Omitted when unset, never null: discord.js reads its scopes.
        assert!(v.get("install_params").is_none(), "{path}: {v}");
    }
    let (_, gw) = json_of(api.call(Method::GET, "/gateway/bot", None).await).await;
    assert_eq!(gw["url"], sb.description().gateway_url);
    assert_eq!(gw["session_start_limit"]["max_concurrency"], 1);
    sb.shutdown().await;
}

/// Discord fills in an embed's `type` and its fields' `inline`; a user
/// account (not an app) reads content and embeds without any intent.
#[tokio::test]
async fn embeds_are_normalised_and_users_read_content() {
    let sb = start_sandbox(quiet_config()).await;
    let api = Api::new(&sb, "prober");
    let path = format!("/channels/{}/messages", sb.channel_id("probes").unwrap());
    let embed = json!({"title": "t", "fields": [{"name": "a", "value": "b"}, {"name": "c", "value": "d", "inline": true}]});
    let (s, created) = json_of(
        api.call(
            Method::POST,
            &path,
            Some(json!({"content": "hello", "embeds": [embed]})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let e = &created["embeds"][0];
    assert_eq!(e["type"], "rich");
    assert_eq!(e["fields"][0]["inline"], false);
    assert_eq!(e["fields"][1]["inline"], true);
    let id = created["id"].as_str().unwrap();
    let (_, edited) = json_of(
        api.call(
            Method::PATCH,
            &format!("{path}/{id}"),
            Some(json!({"embeds": [{"title": "u", "fields": [{"name": "x", "value": "y"}]}]})),
        )
        .await,
    )
    .await;
    assert_eq!(edited["embeds"][0]["type"], "rich");
    assert_eq!(edited["embeds"][0]["fields"][0]["inline"], false);

    // erin is a human account: no MESSAGE_CONTENT restriction.
    let human = Api::new(&sb, "erin");
    let (s, listed) = json_of(human.call(Method::GET, &path, None).await).await;
    assert_eq!(s, 200);
    let m = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .expect("listed");
    assert_eq!(m["content"], "hello");
    assert_eq!(m["embeds"][0]["title"], "u");
    sb.shutdown().await;
}

/// Reactions as discord.js's `message.react()` uses them: PUT/DELETE
/// `@me`, the reaction list, the message's `reactions`, and the gateway's
/// MESSAGE_REACTION_ADD / REMOVE (GUILD_MESSAGE_REACTIONS intent).
#[tokio::test]
async fn reactions_are_added_listed_removed_and_dispatched() {
    let sb = start_sandbox(quiet_config()).await;
    let api = Api::new(&sb, "prober");
    let prober = sb.account("prober").unwrap().clone();
    let mut gw = crate::discord::RawGateway::connect(&sb, "v=10&encoding=json").await;
    gw.recv().await.unwrap();
    gw.identify(&prober.token, 1 | (1 << 10), None).await;
    gw.until_dispatch("GUILD_CREATE").await;

    let path = format!("/channels/{}/messages", sb.channel_id("probes").unwrap());
    let (_, m) = json_of(
        api.call(Method::POST, &path, Some(json!({"content": "react to me"})))
            .await,
    )
    .await;
    let id = m["id"].as_str().unwrap();
    let thumbs = "%F0%9F%91%8D"; // 👍, percent-encoded as clients send it
    let me = format!("{path}/{id}/reactions/{thumbs}/@me");
    assert_eq!(api.call(Method::PUT, &me, None).await.status(), 204);
    let add = gw.until_dispatch("MESSAGE_REACTION_ADD").await;
    assert_eq!(add["d"]["user_id"], prober.id.as_str());
    assert_eq!(add["d"]["message_id"], id);
    assert_eq!(add["d"]["emoji"], json!({"id": null, "name": "👍"}));
    assert_eq!(add["d"]["member"]["user"]["id"], prober.id.as_str());
    assert_eq!(add["d"]["message_author_id"], prober.id.as_str());
    assert_eq!(add["d"]["burst"], false);
    // Reacting twice changes nothing.
    assert_eq!(api.call(Method::PUT, &me, None).await.status(), 204);

    let (_, seen) = json_of(api.call(Method::GET, &format!("{path}/{id}"), None).await).await;
    let r = &seen["reactions"][0];
    assert_eq!(
        (r["count"].clone(), r["me"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(r["emoji"]["name"], "👍");
    let human = Api::new(&sb, "erin");
    let (_, seen) = json_of(human.call(Method::GET, &format!("{path}/{id}"), None).await).await;
    assert_eq!(seen["reactions"][0]["me"], false);
    let (_, users) = json_of(
        api.call(
            Method::GET,
            &format!("{path}/{id}/reactions/{thumbs}"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(users[0]["id"], prober.id.as_str());

    assert_eq!(api.call(Method::DELETE, &me, None).await.status(), 204);
    let removed = gw.until_dispatch("MESSAGE_REACTION_REMOVE").await;
    assert_eq!(removed["d"]["user_id"], prober.id.as_str());
    assert_eq!(removed["d"]["emoji"]["name"], "👍");
    let (_, seen) = json_of(api.call(Method::GET, &format!("{path}/{id}"), None).await).await;
    assert!(seen.get("reactions").is_none(), "{seen}");

    let (s, v) = json_of(
        api.call(
            Method::PUT,
            &format!("{path}/{id}/reactions/thumbsup/@me"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s.as_u16(), v["code"].clone()), (400, json!(10014)));
    let (s, v) = json_of(
        api.call(
            Method::PUT,
            &format!("{path}/1/reactions/{thumbs}/@me"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!((s.as_u16(), v["code"].clone()), (404, json!(10008)));
    sb.shutdown().await;
}

#[tokio::test]
async fn ground_truth_orders_arrival_creation_and_dispatch() {
    let sb = start_sandbox(quiet_config()).await;
    let mut reader = crate::discord::TestClient::connect(
        &sb,
        "twi-bot-shard",
        serenity::all::GatewayIntents::GUILDS | serenity::all::GatewayIntents::GUILD_MESSAGES,
    )
    .await;
    reader.ready().await;
    let api = Api::new(&sb, "prober");
    let (_, v) = json_of(
        api.call(
            Method::POST,
            &format!("/channels/{}/messages", sb.channel_id("probes").unwrap()),
            Some(json!({"content": "t"})),
        )
        .await,
    )
    .await;
    let id: u64 = v["id"].as_str().unwrap().parse().unwrap();
    reader
        .wait_for("the dispatch", |e| match e {
            serenity::all::Event::MessageCreate(m) if m.message.id.get() == id => Some(()),
            _ => None,
        })
        .await;
    let t = sb.control().truth(id).expect("a record");
    assert!(t.request_arrived <= t.created);
    let bot: u64 = sb.account("twi-bot-shard").unwrap().id.parse().unwrap();
    let d = t
        .dispatches
        .iter()
        .find(|d| d.account_id == bot)
        .expect("dispatch to the reader");
    assert!(d.write_started >= t.created);
    assert!(d.written >= d.write_started, "a bracket");
    assert!(d.written - t.request_arrived < Duration::from_secs(1));

    let json: Value = reqwest::get(format!(
        "{}/truth/messages/{id}",
        sb.description().control_url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(json["message_id"], id.to_string());
    let started = json["dispatches"][0]["write_started_us"].as_u64().unwrap();
    assert!(started >= json["request_arrived_us"].as_u64().unwrap());
    assert!(json["dispatches"][0]["written_us"].as_u64().unwrap() >= started);
    reader.stop().await;
    sb.shutdown().await;
}
