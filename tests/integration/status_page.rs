//! The status page (`/`, `/probes/{name}`) and its JSON (`/api/v1/...`)
//! against `probe serve --sandbox`, the pages loaded in headless Chromium
//! (Debian's `chromium`, installed by scripts/test.sh).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::{Serve, total};

/// What the test makes "the bot" reply: markup and a script that would
/// leave traces in the DOM if the page did not escape it.
const PAYLOAD: &str = "<b id=pwn>x</b><script>document.title='pwned'</script>";
const CHANNEL: &str = "1020304050607080903";

const CONFIG: &str = r#"
target:
  name: twi-bot-shard
  user_id: "1020304050607080901"
  exporter_url: http://bot:8000/metrics
discord:
  token_env: PROBER_DISCORD_TOKEN
serve:
  history: 3
probes:
  - name: help-command
    every: 2s
    timeout: 1900ms
    command:
      channel_id: "1020304050607080903"
      guild_id: "1020304050607080902"
      message: "!help"
      expect:
        embed_title: "^Interactive Help System"
  - name: presence
    every: 1s
    timeout: 900ms
    presence:
      guilds: ["1020304050607080902"]
  - name: bot-exporter
    every: 1s
    timeout: 900ms
    exporter:
      min_uptime: 10m
"#;

const NAMES: [&str; 3] = ["help-command", "presence", "bot-exporter"];

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Polls `check` (bounded): across the process boundary there is no event
/// to await.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the screenshots go: kept after the run, for a human to look at.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Page {
    dom: String,
    /// Chromium's log: the page's console messages show as `:CONSOLE` lines.
    log: String,
}

/// Loads `url` in a fresh headless Chromium; with `screenshot`, writes a
/// PNG at `size` (width, height) instead of dumping the DOM.
async fn chromium(url: &str, screenshot: Option<(&Path, (u32, u32))>, extra: &[&str]) -> Page {
    let profile = std::env::temp_dir().join(format!(
        "twi-probe-chromium-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .args(extra)
    .arg(format!("--user-data-dir={}", profile.display()))
    .kill_on_drop(true);
    match screenshot {
        Some((path, (w, h))) => {
            cmd.arg(format!("--screenshot={}", path.display()))
                .arg(format!("--window-size={w},{h}"))
                .arg("--hide-scrollbars");
        }
        None => {
            cmd.arg("--dump-dom");
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.arg(url).output())
        .await
        .expect("chromium finishes in time")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium ({e}): scripts/test.sh installs it (Debian package `chromium`)"
            )
        });
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Page {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn console_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// The `<tr id="probe-NAME">` row of the overview.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr id=\"probe-{name}\""))
        .unwrap_or_else(|| panic!("no row for {name}:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

/// Makes the test the bot's voice in `#probes`: the simulated bot stops
/// answering, and every probe message gets `PAYLOAD` as its reply.
async fn answer_with_html(control: String) -> tokio::task::JoinHandle<()> {
    let http = reqwest::Client::new();
    let (_, behaviour) = get_json(&format!("{control}/bot/behaviour")).await;
    let mut behaviour = behaviour["result"].clone();
    behaviour["drop_rate"] = json!(1.0);
    let set = http
        .post(format!("{control}/bot/behaviour"))
        .json(&behaviour)
        .send()
        .await
        .unwrap();
    assert!(set.status().is_success(), "{:?}", set.text().await);
    let (_, d) = get_json(&format!("{control}/describe")).await;
    let account = |name: &str| {
        d["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()
            .clone()
    };
    let prober = account("prober")["id"].as_str().unwrap().to_string();
    let bot_token = account("twi-bot-shard")["token"]
        .as_str()
        .unwrap()
        .to_string();
    let api = d["api_base"].as_str().unwrap().to_string();
    tokio::spawn(async move {
        let mut answered = std::collections::HashSet::new();
        loop {
            let (_, truths) =
                get_json(&format!("{control}/truth/messages?channel_id={CHANNEL}")).await;
            for t in truths.as_array().unwrap() {
                let id = t["message_id"].as_str().unwrap().to_string();
                if t["author_id"] != prober.as_str() || !answered.insert(id.clone()) {
                    continue;
                }
                let _ = http
                    .post(format!("{api}/channels/{CHANNEL}/messages"))
                    .header("Authorization", format!("Bot {bot_token}"))
                    .json(&json!({"content": PAYLOAD, "message_reference": {"message_id": id}}))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_probe_escapes_replies_and_renders_in_chromium() {
    let serve = Serve::start_with(CONFIG, &["--sandbox"]).await;
    let base = serve.base.clone();
    let answering = answer_with_html(serve.control.clone().expect("sandbox control URL")).await;

    // A run whose detail quotes the HTML reply, and every probe in a state.
    let api = until("an HTML reply in help-command's runs", async || {
        let (_, runs) = get_json(&format!("{base}/api/v1/probes/help-command/runs")).await;
        let html = runs["runs"].as_array().unwrap().iter().any(|r| {
            r["outcome"] == "failure" && r["detail"].as_str().unwrap().contains("<script>")
        });
        let (_, all) = get_json(&format!("{base}/api/v1/probes")).await;
        let stated = all["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["state"].is_null());
        (html && stated).then_some(all)
    })
    .await;

    // The overview: one row per configured probe, each with its state.
    let index = chromium(&format!("{base}/"), None, &[]).await;
    for p in api["probes"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let r = row(&index.dom, name);
        assert!(
            ["success", "failure", "timeout", "unreachable"]
                .iter()
                .any(|s| r.contains(&format!("class=\"state {s}\""))),
            "{name} shows no state: {r}"
        );
        assert!(r.contains(&format!("href=\"/probes/{name}\"")), "{r}");
    }
    assert_eq!(
        api["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        NAMES
    );
    assert!(row(&index.dom, "help-command").contains("class=\"state failure\""));

    // The probe page: its runs, each with its request id.
    let page = chromium(&format!("{base}/probes/help-command"), None, &[]).await;
    let (_, runs) = get_json(&format!("{base}/api/v1/probes/help-command/runs")).await;
    let oldest = runs["runs"].as_array().unwrap().last().unwrap();
    assert!(
        page.dom.contains(oldest["request_id"].as_str().unwrap()),
        "the probe page lacks a run:\n{}",
        page.dom
    );
    assert!(page.dom.contains("<svg"), "no chart:\n{}", page.dom);

    // The reply shows as text and runs nothing: no element, no script, no
    // title change, in either page.
    for p in [&index, &page] {
        assert!(
            p.dom.contains("&lt;b id=pwn&gt;x&lt;/b&gt;&lt;script&gt;"),
            "{}",
            p.dom
        );
        assert!(!p.dom.contains("id=\"pwn\""), "{}", p.dom);
        assert!(!p.dom.to_lowercase().contains("<script"), "{}", p.dom);
        assert!(!p.dom.contains("<title>pwned"), "{}", p.dom);
        // Self-contained: nothing loaded from elsewhere; refreshes itself;
        // sized for phones; light and dark.
        assert!(!p.dom.contains("src="), "{}", p.dom);
        assert!(!p.dom.contains("url("), "{}", p.dom);
        assert_eq!(p.dom.matches("<link").count(), 1, "only the empty icon");
        assert!(p.dom.contains(r#"<link rel="icon" href="data:,">"#));
        assert!(
            p.dom
                .contains(r#"<meta http-equiv="refresh" content="10">"#)
        );
        assert!(
            p.dom
                .contains(r#"content="width=device-width, initial-scale=1""#)
        );
        assert!(p.dom.contains("@media (prefers-color-scheme: dark)"));
        assert!(p.dom.contains("@media (max-width: 640px)"));
        assert_eq!(
            console_lines(&p.log),
            Vec::<&str>::new(),
            "console messages"
        );
    }
    // The console check can fail: a page that logs an error is caught.
    let noisy = chromium(
        "data:text/html,<script>console.error('noisy')</script>",
        None,
        &[],
    )
    .await;
    assert_eq!(console_lines(&noisy.log).len(), 1, "{}", noisy.log);

    // Screenshots, for a human: desktop, phone, and a probe's page.
    let dir = artefacts();
    // A reader who prefers dark.
    const DARK: [&str; 2] = [
        "--force-dark-mode",
        "--blink-settings=preferredColorScheme=0",
    ];
    for (file, url, size, extra) in [
        (
            "index-desktop.png",
            format!("{base}/"),
            (1280, 900),
            &[][..],
        ),
        ("index-phone.png", format!("{base}/"), (390, 844), &[]),
        ("index-dark.png", format!("{base}/"), (1280, 900), &DARK),
        (
            "probe-help-command.png",
            format!("{base}/probes/help-command"),
            (1280, 900),
            &[],
        ),
    ] {
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        let shot = chromium(&url, Some((&path, size)), extra).await;
        assert_eq!(console_lines(&shot.log), Vec::<&str>::new());
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{file} is not a PNG");
    }
    answering.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_keeps_a_bounded_ring_and_a_reload_keeps_unchanged_probes_history() {
    let serve = Serve::start_with(CONFIG, &["--sandbox", "--web.enable-lifecycle"]).await;
    let base = serve.base.clone();
    // More presence runs than the ring holds (history: 3).
    serve
        .until("five presence runs", |t| {
            total(t, "probe_runs_total", &[("probe", "presence")]) >= 5.0
                && total(t, "probe_runs_total", &[("probe", "bot-exporter")]) >= 1.0
        })
        .await;

    let (status, all) = get_json(&format!("{base}/api/v1/probes")).await;
    assert_eq!(status, 200);
    assert_eq!(all["target"], "twi-bot-shard");
    assert_eq!(all["gateway"]["state"], "connected");
    assert_eq!(all["config"]["file"], "probes.yaml");
    assert!(all["config"]["last_reload"].is_null());
    assert_eq!(all["history"], 3);
    let presence = &all["probes"][1];
    assert_eq!(presence["name"], "presence");
    assert_eq!(presence["kind"], "presence");
    assert_eq!(presence["state"], "success");
    assert_eq!(presence["success_rate"], 1.0);
    assert!(presence["latency_p50_seconds"].as_f64().unwrap() > 0.0);
    assert!(presence["next_run"].is_string());
    let last = &presence["last_run"];
    for key in [
        "started_at",
        "outcome",
        "duration_seconds",
        "latency_seconds",
        "detail",
        "request_id",
        "message_id",
    ] {
        assert!(last.get(key).is_some(), "last_run lacks {key}: {last}");
    }

    // The ring's bound: exactly 3 runs kept, newest first.
    let (status, runs) = get_json(&format!("{base}/api/v1/probes/presence/runs")).await;
    assert_eq!(status, 200);
    assert_eq!(runs["capacity"], 3);
    let kept = runs["runs"].as_array().unwrap();
    assert_eq!(kept.len(), 3, "{runs}");
    let started: Vec<&str> = kept
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    assert!(started.windows(2).all(|w| w[0] >= w[1]), "{started:?}");

    // Unknown probes are 404s, in JSON and HTML.
    let (status, err) = get_json(&format!("{base}/api/v1/probes/nope/runs")).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("nope"));
    let page = reqwest::get(format!("{base}/probes/nope")).await.unwrap();
    assert_eq!(page.status(), 404);

    // A reload that changes only bot-exporter: presence keeps its runs,
    // bot-exporter starts afresh.
    let ids = |v: &Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, exporter_before) = get_json(&format!("{base}/api/v1/probes/bot-exporter/runs")).await;
    let (_, presence_before) = get_json(&format!("{base}/api/v1/probes/presence/runs")).await;
    serve.write_config(&CONFIG.replace("min_uptime: 10m", "min_uptime: 5m"));
    let reloaded = reqwest::Client::new()
        .post(format!("{base}/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), 200);
    let (_, exporter_after) = get_json(&format!("{base}/api/v1/probes/bot-exporter/runs")).await;
    let (_, presence_after) = get_json(&format!("{base}/api/v1/probes/presence/runs")).await;
    assert!(
        ids(&presence_after).contains(&ids(&presence_before)[0]),
        "presence lost its history: {presence_before} then {presence_after}"
    );
    let old = ids(&exporter_before);
    assert!(!old.is_empty());
    assert!(
        ids(&exporter_after).iter().all(|id| !old.contains(id)),
        "bot-exporter kept its old runs: {exporter_before} then {exporter_after}"
    );
    let (_, all) = get_json(&format!("{base}/api/v1/probes")).await;
    assert_eq!(all["config"]["last_reload"]["ok"], true);
}
