//! The patched serenity stamps an event with the moment the socket read that
//! brought its frame returned (`vendor/serenity/PATCHES.md`, patch 5), not the
//! moment serenity took the frame out of the websocket: replies that arrive
//! together must not be stamped later and later as serenity handles the ones
//! before them. Checked against a raw gateway on 127.0.0.1 that writes two
//! MESSAGE_CREATEs with one write: both arrive in one read, so both carry the
//! same `Context::received_at`. Unpatched, each got its own (later) instant.

use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use serenity::all::{
    ClientBuilder, Context, EventHandler, GatewayIntents, HttpBuilder, Message as DiscordMessage,
};
use serenity::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);
const BOT: u64 = 1_000_000_000_000_000_001;
const AUTHOR: u64 = 1_000_000_000_000_000_002;
const CHANNEL: u64 = 1_000_000_000_000_000_003;

fn user(id: u64, name: &str) -> Value {
    json!({"id": id.to_string(), "username": name, "discriminator": "0", "avatar": null,
           "bot": true, "global_name": null, "public_flags": 0, "flags": 0})
}

fn dispatch(t: &str, s: u64, d: Value) -> String {
    json!({"op": 0, "t": t, "s": s, "d": d}).to_string()
}

fn message_create(id: u64, s: u64) -> String {
    let d = json!({
        "id": id.to_string(), "channel_id": CHANNEL.to_string(), "author": user(AUTHOR, "bot"),
        "content": format!("reply {id}"), "timestamp": "2026-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null, "tts": false, "mention_everyone": false, "mentions": [],
        "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0,
        "flags": 0, "components": [],
    });
    dispatch("MESSAGE_CREATE", s, d)
}

/// An unmasked text frame, as a server sends it.
fn text_frame(payload: &str) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![0x81];
    if len < 126 {
        f.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(payload.as_bytes());
    f
}

/// HELLO, then READY after IDENTIFY, then two MESSAGE_CREATEs in one write;
/// then holds the connection until the client closes it.
async fn raw_gateway(listener: TcpListener, url: String) {
    let (tcp, _) = listener.accept().await.expect("gateway accepts");
    let mut ws = tokio_tungstenite::accept_async(tcp)
        .await
        .expect("websocket handshake");
    let hello = json!({"op": 10, "d": {"heartbeat_interval": 45_000}}).to_string();
    ws.send(Message::text(hello)).await.expect("HELLO sent");
    loop {
        let frame = ws.next().await.expect("IDENTIFY").expect("read");
        let v: Value = serde_json::from_str(frame.to_text().unwrap_or("{}")).unwrap_or_default();
        if v["op"] == 2 {
            break;
        }
    }
    let ready = json!({
        "v": 10, "user": user(BOT, "prober"), "guilds": [], "session_id": "s1",
        "resume_gateway_url": url, "shard": [0, 1],
        "application": {"id": BOT.to_string(), "flags": 0},
    });
    ws.send(Message::text(dispatch("READY", 1, ready)))
        .await
        .expect("READY sent");
    let mut both = text_frame(&message_create(11, 2));
    both.extend(text_frame(&message_create(12, 3)));
    let tcp = ws.get_mut();
    tcp.write_all(&both).await.expect("one write");
    tcp.flush().await.expect("flush");
    while let Some(Ok(_)) = ws.next().await {}
}

struct Stamps(mpsc::UnboundedSender<(u64, Option<Instant>)>);

#[async_trait]
impl EventHandler for Stamps {
    async fn message(&self, ctx: Context, msg: DiscordMessage) {
        let _ = self.0.send((msg.id.get(), ctx.received_at));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_together_carry_the_same_arrival_stamp() {
    let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("ws://{}", gateway.local_addr().unwrap());
    let server = tokio::spawn(raw_gateway(gateway, gateway_url.clone()));

    // GET /api/v10/gateway, all serenity asks of REST before it connects.
    let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest_base = format!("http://{}", rest.local_addr().unwrap());
    let answer = json!({"url": gateway_url});
    let app = Router::new().route(
        "/api/v10/gateway",
        get(move || {
            let answer = answer.clone();
            async move { Json(answer) }
        }),
    );
    let rest_task = tokio::spawn(async move { axum::serve(rest, app).await });

    let http = HttpBuilder::new("Bot test-token")
        .proxy(rest_base)
        .ratelimiter_disabled(true)
        .build();
    let (tx, mut stamps) = mpsc::unbounded_channel();
    let intents = GatewayIntents::GUILD_MESSAGES | GatewayIntents::MESSAGE_CONTENT;
    let mut client = ClientBuilder::new_with_http(http, intents)
        .event_handler(Stamps(tx))
        .await
        .expect("client builds");
    let shard_manager = client.shard_manager.clone();
    let client_task = tokio::spawn(async move { client.start().await });

    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, stamps.recv()).await {
            Ok(Some(stamp)) => got.push(stamp),
            _ => panic!("only {got:?} of two MESSAGE_CREATEs within {WAIT:?}"),
        }
    }
    shard_manager.stop().await;
    let _ = client_task.await;
    server.abort();
    rest_task.abort();

    got.sort_by_key(|(id, _)| *id);
    let (first, second) = (got[0].1, got[1].1);
    assert!(first.is_some(), "no received_at on the first event");
    assert_eq!(
        first, second,
        "two frames that came in one read must carry that read's instant"
    );
}
