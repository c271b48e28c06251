//! Real Discord libraries against the sandbox, as separate processes, with
//! nothing changed but their base URL: discord.py (the library of the real
//! Twi Bot Shard) probes `!help` and gets the simulated bot's answer over
//! both gateway compressions it may choose; discord.js 14 goes through what
//! a bot does with a message, a presence, a resume, a 429 and its
//! application. (serenity is the sandbox's in-process client everywhere.)
//!
//! These tests need python3 with discord.py and zstandard, and node with
//! discord.js installed in `tests/compat/discordjs`; they fail (never skip)
//! without them. `scripts/test.sh` installs all of it. The wire details
//! discord.py relies on are also checked in-process at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use twi_sandbox::{Sandbox, SandboxConfig};

use crate::discord::{quiet_config, start_sandbox};

const SETUP_HINT: &str = "run scripts/test.sh, which installs them with pip";
/// The script bounds itself to 30 s; this only guards against a hung interpreter.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);
// (The sandbox closes a session after 1.5 intervals without a heartbeat: not
// so short that a loaded machine trips it.)
const HEARTBEAT: Duration = Duration::from_millis(1500);

/// A sandbox with its default world (as `probe sandbox` runs it) and its
/// description file, which the client scripts read, in a temporary
/// directory (removed on drop).
struct DescribedSandbox {
    sb: Sandbox,
    _dir: TempDir,
    describe: PathBuf,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl DescribedSandbox {
    async fn start() -> DescribedSandbox {
        let mut cfg = SandboxConfig::default();
        // Short enough that the script sees several keep-alive heartbeats.
        cfg.gateway.heartbeat_interval = HEARTBEAT;
        DescribedSandbox::with(cfg).await
    }

    async fn with(cfg: SandboxConfig) -> DescribedSandbox {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "twi-sandbox-compat-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let describe = dir.join("sandbox.json");
        let sb = start_sandbox(cfg).await;
        std::fs::write(
            &describe,
            serde_json::to_string_pretty(sb.description()).unwrap(),
        )
        .unwrap();
        DescribedSandbox {
            sb,
            _dir: TempDir(dir),
            describe,
        }
    }
}

/// Fails the test, with what to do, unless python3 can import `modules`.
async fn require_python(modules: &str, what: &str) {
    let out = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .await;
    match out {
        Err(e) => panic!(
            "python3 cannot be run ({e}); these tests need python3 with {what}: {SETUP_HINT}"
        ),
        Ok(o) if !o.status.success() => panic!(
            "python3 cannot import {modules}; these tests need {what}: {SETUP_HINT}\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

/// Runs `tests/compat/discordpy_client.py` against the sandbox and returns its
/// JSON result line after checking that it succeeded.
async fn discordpy_client(sb: &DescribedSandbox, compress: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/discordpy_client.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(&sb.describe)
        .arg("prober")
        .args(["--compress", compress])
        // discord.py's own cache and bytecode stay out of the work tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("DISCORDPY_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .expect("the discord.py client ends in time")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = || {
        format!(
            "exit {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status.code()
        )
    };
    if out.status.code() == Some(2) {
        panic!(
            "the discord.py client could not run (missing dependency?): {SETUP_HINT}\n{}",
            context()
        );
    }
    assert!(
        out.status.success(),
        "discord.py failed against the sandbox\n{}",
        context()
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not a JSON line\n{}", context()))
}

fn assert_help_answer(result: &Value, key: &str) {
    let help = &result[key];
    assert_eq!(help["embed_title"], "Interactive Help System", "{result}");
    assert_eq!(help["author"], "twi-bot-shard", "{result}");
    assert_eq!(help["type"], "reply", "{result}");
    assert_eq!(help["mentions_prober"], true, "{result}");
}

async fn discordpy_round_trip(compress: &str) {
    require_python("discord", "discord.py >= 2.7").await;
    if compress == "zstd-stream" {
        require_python(
            "zstandard",
            "the zstandard module (as discord.py[speed] installs it)",
        )
        .await;
    }
    let sb = DescribedSandbox::start().await;
    let d = sb.sb.description().clone();
    let result = discordpy_client(&sb, compress).await;

    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["compress"], compress, "{result}");
    assert_eq!(result["logged_in_as"]["name"], "prober", "{result}");
    assert_eq!(
        result["gateway_bot"]["url"],
        d.gateway_url.as_str(),
        "{result}"
    );
    assert_eq!(result["guild"]["name"], "The Wandering Inn", "{result}");
    assert_help_answer(&result, "help");
    assert_eq!(result["resumed"], true, "{result}");
    assert_help_answer(&result, "help_after_resume");
    assert_eq!(result["closed_cleanly"], true, "{result}");
    assert_eq!(result["library_warnings"], json!([]), "{result}");
    // bot.latency is the gateway's round trip, as on Discord. (An instant
    // ACK can beat discord.py 2.7's bookkeeping of the send, which runs in
    // its keep-alive thread after the send completes, when a busy event loop
    // holds the GIL: bot.latency then reads a whole heartbeat interval. That
    // race is not reproducible on demand; the round trip rules it out.)
    let round_trip = SandboxConfig::default()
        .gateway
        .heartbeat_round_trip
        .as_secs_f64();
    let latencies = result["heartbeat_latencies"].as_array().expect("latencies");
    assert_eq!(latencies.len(), 3, "{result}");
    for l in latencies {
        let l = l.as_f64().unwrap();
        assert!(
            // discord.py notes the send up to a GIL switch (5 ms) late.
            l >= round_trip - 0.01 && l < round_trip + 0.2,
            "bot.latency {l} s, expected the {round_trip} s round trip: {result}"
        );
    }
    sb.sb.shutdown().await;
}

#[tokio::test]
async fn discordpy_logs_in_and_probes_help_over_zlib_stream() {
    discordpy_round_trip("zlib-stream").await;
}

/// discord.py picks zstd-stream whenever `zstandard` (discord.py[speed]) or
/// Python 3.14's `compression.zstd` is importable.
#[tokio::test]
async fn discordpy_logs_in_and_probes_help_over_zstd_stream() {
    discordpy_round_trip("zstd-stream").await;
}

/// Fails the test, with what to do, unless discord.js is installed in
/// `tests/compat/discordjs` (by `npm ci` there; scripts/test.sh does it).
fn require_discordjs(dir: &Path) {
    let installed = dir.join("node_modules/discord.js/package.json");
    assert!(
        installed.is_file(),
        "{} is missing; these tests need node and discord.js 14: run scripts/test.sh, \
         which runs npm ci in {}",
        installed.display(),
        dir.display()
    );
}

/// discord.js 14 (its own REST queue and @discordjs/ws, without zlib-sync)
/// logs in, replies with an embed, reacts, edits, deletes, sets an activity,
/// resumes after a 4000 close, retries through a forced 429 and fetches its
/// application, with nothing changed but `rest.api`.
#[tokio::test]
async fn discordjs_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/discordjs");
    require_discordjs(&dir);
    let mut cfg = SandboxConfig::default();
    // A bot that watches presences, to see the activity discord.js sets.
    cfg.accounts.push(twi_sandbox::config::AccountConfig {
        name: "observer".into(),
        bot: true,
        id: None,
        token: None,
        privileged_intents: vec!["GUILD_PRESENCES".into()],
    });
    let sb = DescribedSandbox::with(cfg).await;
    let mut observer = crate::discord::TestClient::connect(
        &sb.sb,
        "observer",
        serenity::all::GatewayIntents::GUILDS | serenity::all::GatewayIntents::GUILD_PRESENCES,
    )
    .await;
    observer.ready().await;

    let run = Command::new("node")
        .arg(dir.join("client.js"))
        .arg(&sb.describe)
        .arg("prober")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .expect("the discord.js client ends in time")
        .unwrap_or_else(|e| panic!("node cannot be run ({e}): install nodejs"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "discord.js failed against the sandbox: exit {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.code()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: not a JSON line\n{stdout}\n{stderr}"));
    let prober = sb.sb.account("prober").unwrap().clone();
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        result["discord_js"].as_str().unwrap().starts_with("14."),
        "{result}"
    );
    assert_eq!(result["help_title"], "Interactive Help System", "{result}");
    assert_eq!(
        result["reply_embed"],
        json!({"fields": [{"inline": false, "name": "latency", "value": "fine"}], "title": "Seen", "type": "rich"}),
        "{result}"
    );
    assert_eq!(
        result["reaction"],
        json!({"emoji": "👍", "count": 1, "me": true}),
        "{result}"
    );
    assert_eq!(result["reaction_removed"], true, "{result}");
    assert_eq!(result["edited"], "edited", "{result}");
    assert_eq!(result["deleted"], true, "{result}");
    assert_eq!(result["resumed"], true, "{result}");
    assert_eq!(result["sent_after_resume"], "after the resume", "{result}");
    assert_eq!(
        result["statuses_for_that_send"],
        json!(["POST 429", "POST 200"]),
        "{result}"
    );
    assert_eq!(result["sent_after_429"], "after a 429", "{result}");
    assert_eq!(result["application"]["id"], prober.id.as_str(), "{result}");
    assert_eq!(result["library_warnings"], json!([]), "{result}");

    // The activity discord.js set reached others.
    let activity = observer
        .wait_for("the prober's activity", |e| match e {
            serenity::all::Event::PresenceUpdate(p)
                if p.presence.user.id.to_string() == prober.id
                    && !p.presence.activities.is_empty() =>
            {
                Some(p.presence.activities[0].name.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(activity, "the sandbox");
    observer.stop().await;
    sb.sb.shutdown().await;
}

// The wire behaviour above that discord.py depends on, checked in-process
// (no Python needed), so a regression names itself.

/// discord.py executes webhooks with `?wait=1`, not `?wait=true`.
#[tokio::test]
async fn webhook_wait_takes_discords_boolean_spellings() {
    let sb = start_sandbox(quiet_config()).await;
    let url = sb.description().webhook_url.clone().unwrap();
    let client = reqwest::Client::new();
    let post = |wait: &str| {
        client
            .post(format!("{url}?wait={wait}"))
            .json(&json!({"content": "hook"}))
            .send()
    };
    // Five sends: the webhook's rate limit is 5 per 5 s ("true" is the
    // spelling every other test uses).
    for (wait, expected) in [("1", 200), ("True", 200), ("0", 204), ("false", 204)] {
        let r = post(wait).await.unwrap();
        assert_eq!(r.status().as_u16(), expected, "wait={wait}");
        if expected == 200 {
            let m: Value = r.json().await.unwrap();
            assert_eq!(m["content"], "hook", "wait={wait}: {m}");
        }
    }
    let bad = post("maybe").await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], 50035, "{body}");
    assert_eq!(
        body["errors"]["wait"]["_errors"][0]["code"], "BOOLEAN_TYPE_COERCE",
        "{body}"
    );
    sb.shutdown().await;
}

/// discord.py sends every message with a nonce and `enforce_nonce: true`: a
/// retried send must not post twice. The nonce comes back in the create
/// answer only, not when the message is fetched later.
#[tokio::test]
async fn enforce_nonce_returns_the_earlier_message() {
    let sb = start_sandbox(quiet_config()).await;
    let token = format!("Bot {}", sb.account("prober").unwrap().token);
    let messages = format!(
        "{}/channels/{}/messages",
        sb.description().api_base,
        sb.channel_id("probes").unwrap()
    );
    let client = reqwest::Client::new();
    let send = |body: Value| {
        let req = client
            .post(&messages)
            .header("Authorization", &token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first =
        send(json!({"content": "one", "nonce": "1450000000000000001", "enforce_nonce": true}))
            .await;
    assert_eq!(first["nonce"], "1450000000000000001", "{first}");
    let again =
        send(json!({"content": "two", "nonce": "1450000000000000001", "enforce_nonce": true}))
            .await;
    assert_eq!(
        again["id"], first["id"],
        "the same nonce answers the earlier message"
    );
    assert_eq!(again["content"], "one");
    let unenforced = send(json!({"content": "three", "nonce": "1450000000000000001"})).await;
    assert_ne!(
        unenforced["id"], first["id"],
        "without enforce_nonce a nonce is not checked"
    );
    let other = send(json!({"content": "four", "nonce": "other", "enforce_nonce": true})).await;
    assert_ne!(other["id"], first["id"]);

    let fetched: Value = client
        .get(format!("{messages}/{}", first["id"].as_str().unwrap()))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["content"], "one");
    assert!(fetched.get("nonce").is_none(), "{fetched}");
    let history: Value = client
        .get(format!("{messages}?limit=10"))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contents: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["four", "three", "one"]);
    sb.shutdown().await;
}

/// REST calls as an account makes them: (status, JSON body or null).
struct Rest {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Rest {
    fn new(sb: &Sandbox, account: &str) -> Rest {
        Rest {
            base: sb.description().api_base.clone(),
            token: format!("Bot {}", sb.account(account).unwrap().token),
            client: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
}

/// discord.py's `CommandTree.sync()`, which a slash-command bot such as Twi
/// Bot Shard runs at start-up: a bulk overwrite, global or per guild, that
/// keeps the ids of commands it already had; and `fetch_commands()`.
#[tokio::test]
async fn application_commands_sync_like_discord() {
    let sb = start_sandbox(quiet_config()).await;
    let bot = Rest::new(&sb, "twi-bot-shard");
    let app = &sb.account("twi-bot-shard").unwrap().id;
    let guild = &sb.description().guilds[0].id;
    let global = format!("/applications/{app}/commands");
    let tree = json!([
        {"name": "ping", "description": "Shows the bot's latency", "type": 1},
        {"name": "help", "description": "Interactive help", "options": [
            {"type": 3, "name": "category", "description": "A category", "required": false}
        ]},
        {"name": "Quote Message", "type": 3},
    ]);
    let (status, first) = bot.put(&global, tree.clone()).await;
    assert_eq!(status, 200, "{first}");
    let first = first.as_array().unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0]["application_id"], app.as_str());
    assert_eq!(first[1]["options"][0]["name"], "category");
    assert_eq!(first[2]["description"], "");
    assert!(first[0].get("guild_id").is_none());

    let (_, again) = bot.put(&global, tree).await;
    assert_eq!(
        again.as_array().unwrap(),
        first,
        "an unchanged sync changes nothing"
    );
    let (_, changed) = bot
        .put(&global, json!([{"name": "ping", "description": "Latency"}]))
        .await;
    assert_eq!(changed[0]["id"], first[0]["id"], "a command keeps its id");
    assert_ne!(
        changed[0]["version"], first[0]["version"],
        "a change is a new version"
    );
    let (status, listed) = bot.get(&global).await;
    assert_eq!(status, 200);
    assert_eq!(listed, changed, "the overwrite replaced the list");

    let in_guild = format!("/applications/{app}/guilds/{guild}/commands");
    let (status, guild_cmds) = bot
        .put(
            &in_guild,
            json!([{"name": "ping", "description": "Latency"}]),
        )
        .await;
    assert_eq!(status, 200, "{guild_cmds}");
    assert_eq!(guild_cmds[0]["guild_id"], guild.as_str());
    assert_ne!(
        guild_cmds[0]["id"], changed[0]["id"],
        "guild and global commands differ"
    );

    for (bad, field, code) in [
        (
            json!([{"name": "Ping", "description": "x"}]),
            "name",
            "APPLICATION_COMMAND_INVALID_NAME",
        ),
        (
            json!([{"name": "ping"}]),
            "description",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            json!([{"name": "Menu", "type": 2, "description": "x"}]),
            "description",
            "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
        ),
    ] {
        let (status, body) = bot.put(&global, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert_eq!(
            body["errors"]["0"][field]["_errors"][0]["code"], code,
            "{body}"
        );
    }
    let (status, body) = bot.put(&global, json!({"name": "ping"})).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(50035)),
        "{body}"
    );

    // Only an application's own commands.
    let prober = Rest::new(&sb, "prober");
    let (status, body) = prober.get(&global).await;
    assert_eq!(
        (status, body["code"].clone()),
        (403, json!(50001)),
        "{body}"
    );
    sb.shutdown().await;
}

/// Read routes discord.py wraps: `fetch_guilds`, `Guild.fetch_roles`,
/// `TextChannel.pins`, `Guild.fetch_members` (which needs GUILD_MEMBERS).
#[tokio::test]
async fn guild_listing_roles_pins_and_members_answer_like_discord() {
    let sb = start_sandbox(quiet_config()).await;
    let prober = Rest::new(&sb, "prober");
    let d = sb.description().clone();
    let guild = &d.guilds[0].id;

    let (status, guilds) = prober
        .get("/users/@me/guilds?limit=200&with_counts=1")
        .await;
    assert_eq!(status, 200, "{guilds}");
    assert_eq!(guilds[0]["id"], guild.as_str());
    assert_eq!(guilds[0]["name"], "The Wandering Inn");
    assert_eq!(guilds[0]["owner"], true, "the first member owns the guild");
    assert_eq!(guilds[0]["approximate_member_count"], 3);
    let (_, after) = prober
        .get(&format!("/users/@me/guilds?after={guild}"))
        .await;
    assert_eq!(after, json!([]));

    let (status, roles) = prober.get(&format!("/guilds/{guild}/roles")).await;
    assert_eq!(status, 200);
    assert_eq!(roles[0]["name"], "@everyone");
    assert_eq!(roles[0]["id"], guild.as_str());

    let channel = sb.channel_id("probes").unwrap();
    let (status, pins) = prober
        .get(&format!("/channels/{channel}/messages/pins"))
        .await;
    assert_eq!(
        (status, pins),
        (200, json!({"items": [], "has_more": false}))
    );
    let (status, pins) = prober.get(&format!("/channels/{channel}/pins")).await;
    assert_eq!((status, pins), (200, json!([])));

    let (status, body) = prober
        .get(&format!("/guilds/{guild}/members?limit=10"))
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (403, json!(50001)),
        "the prober lacks GUILD_MEMBERS: {body}"
    );
    let bot = Rest::new(&sb, "twi-bot-shard");
    let (status, members) = bot.get(&format!("/guilds/{guild}/members?limit=10")).await;
    assert_eq!(status, 200, "{members}");
    let ids: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let sorted = {
        let mut s = ids.clone();
        s.sort_by_key(|id| id.parse::<u64>().unwrap());
        s
    };
    assert_eq!(ids, sorted, "members come in user id order");
    let (_, one) = bot.get(&format!("/guilds/{guild}/members")).await;
    assert_eq!(one.as_array().unwrap().len(), 1, "limit defaults to 1");
    sb.shutdown().await;
}

/// discord.py 2.7's `app_commands`, unmodified but for the base URL and
/// gateway: syncs a guild tree, answers `/ping` directly, defers `/slow` and
/// edits it, answers `/help` and sends a follow-up; the sandbox's truth
/// agrees with what discord.py saw.
#[tokio::test]
async fn discordpy_app_commands_sync_answer_defer_and_follow_up() {
    require_python("discord", "discord.py >= 2.7").await;
    let mut cfg = SandboxConfig::default();
    cfg.bot.enabled = false;
    cfg.gateway.heartbeat_interval = HEARTBEAT;
    let sb = DescribedSandbox::with(cfg).await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/discordpy_app_commands.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(&sb.describe)
        .args(["twi-bot-shard", "erin"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .expect("the discord.py bot ends in time")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "exit {:?}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "discord.py app_commands failed\n{context}"
    );
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}\n{context}"));
    assert_eq!(r["synced"], json!(["help", "ping", "slow"]), "{context}");
    assert_eq!(r["ping"]["title"], "🏓 Bot Latency Information");
    assert_eq!(r["slow"]["content"], "done thinking");
    assert_eq!(r["slow"]["edited"], true);
    assert_eq!(r["help"]["topic"], "ranks");

    let truth = sb.sb.control().interaction_truths();
    let of = |name: &str| {
        truth
            .iter()
            .find(|t| t.command == name)
            .unwrap_or_else(|| panic!("truth for /{name}"))
    };
    assert_eq!(of("ping").callback.map(|c| c.1), Some(4));
    assert_eq!(
        of("ping").response_message_id.map(|m| m.to_string()),
        r["ping"]["message_id"].as_str().map(String::from)
    );
    assert_eq!(of("slow").callback.map(|c| c.1), Some(5));
    assert_eq!(of("slow").edits.len(), 1);
    assert_eq!(of("help").callback.map(|c| c.1), Some(4));
    let followup: u64 = r["help"]["followup_id"].as_str().unwrap().parse().unwrap();
    let channel = sb.sb.channel_id("probes").unwrap();
    assert!(
        sb.sb
            .control()
            .truth(followup)
            .is_some_and(|t| t.channel_id == channel),
        "the follow-up is a message in #probes"
    );
}
