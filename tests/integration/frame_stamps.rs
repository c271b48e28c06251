//! The patched serenity stamps an event with the moment the bytes of its frame
//! reached the machine (`vendor/serenity/PATCHES.md`, patch 5), not the
//! moment serenity took the frame out of the websocket: replies that arrive
//! together must not be stamped later and later as serenity handles the ones
//! before them, and a frame is stamped when it arrives even while the client's
//! runtime is busy. Checked against a raw gateway on 127.0.0.1, run on a
//! runtime of its own: two MESSAGE_CREATEs written with one write arrive in
//! one read, so both carry the same `Context::received_at` (unpatched, each
//! got its own, later instant); a MESSAGE_CREATE written while the client's
//! only runtime thread is busy is stamped before that work ends (a reader on
//! the client's runtime could stamp it only after). And on Linux the stamp is
//! the kernel's receive time of the bytes, so a read that happens late (its
//! thread woken late, as an idle virtual CPU is) still carries when the bytes
//! arrived.

use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use serenity::all::{
    ClientBuilder, Context, EventHandler, GatewayIntents, HttpBuilder, Message as DiscordMessage,
    Ready,
};
use serenity::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
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

/// HELLO, then READY after IDENTIFY; then, once told to go, `frames` in one
/// write, reporting the instant just before it; then holds the connection
/// until the client closes it.
async fn raw_gateway(
    listener: TcpListener,
    url: String,
    go: oneshot::Receiver<()>,
    frames: Vec<u8>,
    writing: std::sync::mpsc::Sender<Instant>,
) {
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
    go.await.expect("told to go");
    let tcp = ws.get_mut();
    let _ = writing.send(Instant::now());
    tcp.write_all(&frames).await.expect("one write");
    tcp.flush().await.expect("flush");
    while let Some(Ok(_)) = ws.next().await {}
}

/// The gateway and the REST route serenity asks for before it connects
/// (`GET /api/v10/gateway`), on a runtime and thread of their own, so that
/// they keep going while the client's runtime is busy.
struct FakeDiscord {
    runtime: Option<tokio::runtime::Runtime>,
    rest_base: String,
}

impl FakeDiscord {
    fn start(
        go: oneshot::Receiver<()>,
        frames: Vec<u8>,
        writing: std::sync::mpsc::Sender<Instant>,
    ) -> Self {
        // Set up from a plain thread: the test's own runtime cannot block on another.
        std::thread::spawn(move || Self::start_here(go, frames, writing))
            .join()
            .unwrap()
    }

    fn start_here(
        go: oneshot::Receiver<()>,
        frames: Vec<u8>,
        writing: std::sync::mpsc::Sender<Instant>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rest_base = runtime.block_on(async move {
            let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let gateway_url = format!("ws://{}", gateway.local_addr().unwrap());
            tokio::spawn(raw_gateway(
                gateway,
                gateway_url.clone(),
                go,
                frames,
                writing,
            ));
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
            tokio::spawn(async move { axum::serve(rest, app).await });
            rest_base
        });
        FakeDiscord {
            runtime: Some(runtime),
            rest_base,
        }
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A serenity client of the fake Discord whose handler reports READY and
/// each message's id and `received_at`.
async fn client(
    discord: &FakeDiscord,
    ready: oneshot::Sender<()>,
) -> (
    mpsc::UnboundedReceiver<(u64, Option<Instant>)>,
    std::sync::Arc<serenity::all::ShardManager>,
    tokio::task::JoinHandle<serenity::Result<()>>,
) {
    let http = HttpBuilder::new("Bot test-token")
        .proxy(discord.rest_base.clone())
        .ratelimiter_disabled(true)
        .build();
    let (tx, stamps) = mpsc::unbounded_channel();
    let intents = GatewayIntents::GUILD_MESSAGES | GatewayIntents::MESSAGE_CONTENT;
    let mut client = ClientBuilder::new_with_http(http, intents)
        .event_handler(Stamps {
            messages: tx,
            ready: std::sync::Mutex::new(Some(ready)),
        })
        .await
        .expect("client builds");
    let shard_manager = client.shard_manager.clone();
    let task = tokio::spawn(async move { client.start().await });
    (stamps, shard_manager, task)
}

struct Stamps {
    messages: mpsc::UnboundedSender<(u64, Option<Instant>)>,
    ready: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

#[async_trait]
impl EventHandler for Stamps {
    async fn ready(&self, _: Context, _: Ready) {
        if let Some(ready) = self.ready.lock().unwrap().take() {
            let _ = ready.send(());
        }
    }

    async fn message(&self, ctx: Context, msg: DiscordMessage) {
        let _ = self.messages.send((msg.id.get(), ctx.received_at));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_together_carry_the_same_arrival_stamp() {
    let (go, go_rx) = oneshot::channel();
    go.send(()).unwrap();
    let mut both = text_frame(&message_create(11, 2));
    both.extend(text_frame(&message_create(12, 3)));
    let (writing, _) = std::sync::mpsc::channel();
    let discord = FakeDiscord::start(go_rx, both, writing);
    let (ready, _) = oneshot::channel();
    let (mut stamps, shard_manager, client_task) = client(&discord, ready).await;

    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, stamps.recv()).await {
            Ok(Some(stamp)) => got.push(stamp),
            _ => panic!("only {got:?} of two MESSAGE_CREATEs within {WAIT:?}"),
        }
    }
    shard_manager.stop().await;
    let _ = client_task.await;

    got.sort_by_key(|(id, _)| *id);
    let (first, second) = (got[0].1, got[1].1);
    assert!(first.is_some(), "no received_at on the first event");
    assert_eq!(
        first, second,
        "two frames that came in one read must carry that read's instant"
    );
}

/// How long the client's runtime is kept busy after the frame was written.
const BUSY: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "current_thread")]
async fn a_frame_is_stamped_when_it_arrives_even_while_the_clients_runtime_is_busy() {
    let (go, go_rx) = oneshot::channel();
    let (writing, writing_rx) = std::sync::mpsc::channel();
    let discord = FakeDiscord::start(go_rx, text_frame(&message_create(21, 2)), writing);
    let (ready, ready_rx) = oneshot::channel();
    let (mut stamps, shard_manager, client_task) = client(&discord, ready).await;
    tokio::time::timeout(WAIT, ready_rx)
        .await
        .expect("READY within the wait")
        .unwrap();

    // The runtime's only thread is busy (blocked, as by heavy work) from
    // before the frame is written until BUSY after.
    go.send(()).unwrap();
    let written = writing_rx.recv().expect("the gateway writes");
    std::thread::sleep(BUSY);
    let busy_ended = Instant::now();

    let (id, stamp) = tokio::time::timeout(WAIT, stamps.recv())
        .await
        .expect("the MESSAGE_CREATE within the wait")
        .unwrap();
    shard_manager.stop().await;
    let _ = client_task.await;

    assert_eq!(id, 21);
    let stamp = stamp.expect("received_at");
    assert!(stamp >= written, "stamped before it was written");
    assert!(
        stamp < busy_ended,
        "stamped {:?} after it was written, when the busy runtime got to it ({:?}): the read waited for the runtime",
        stamp - written,
        busy_ended - written
    );
}

/// How late the read comes after the bytes arrived.
const LATE: Duration = Duration::from_millis(200);

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_read_made_late_carries_when_its_bytes_arrived() {
    use serenity::gateway::ReceiveTimes;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut writer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (reader, _) = listener.accept().await.unwrap();
    let mut times = ReceiveTimes::new(&reader);
    let mut buf = [0; 64];
    // The kernel turns receive times on in the background after the first
    // socket asks: wait until a byte comes with one.
    let deadline = Instant::now() + WAIT;
    loop {
        writer.write_all(b"w").await.unwrap();
        reader.readable().await.unwrap();
        let got = times.read(&reader, &mut buf).expect("the byte is there");
        assert_eq!(got.len, 1);
        if got.kernel_time {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no kernel receive time within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let written = Instant::now();
    writer.write_all(b"a frame").await.unwrap();
    reader.readable().await.unwrap();
    // The reader is late: the bytes wait in the kernel.
    std::thread::sleep(LATE);
    let reading = Instant::now();
    let got = times.read(&reader, &mut buf).expect("the bytes are there");
    let (n, at) = (got.len, got.at);

    assert_eq!(&buf[..n], b"a frame");
    assert!(
        at >= written,
        "stamped {:?} before it was written",
        written - at
    );
    assert!(
        at < reading,
        "stamped {:?} after it was written, when it was read ({:?}): not the kernel's receive time",
        at - written,
        reading - written
    );
}

/// The kernel's receive time is a wall-clock time moved onto the monotonic
/// clock; `arrival` keeps it honest (vendor/serenity/PATCHES.md, patch 5).
#[test]
fn a_kernel_time_is_used_only_within_what_the_clocks_and_reads_prove() {
    use serenity::gateway::{Clocks, arrival};
    use std::time::SystemTime;

    let ms = Duration::from_millis;
    let last = Clocks {
        wall: SystemTime::now(),
        mono: Instant::now(),
    };
    // A second later by both clocks.
    let now = Clocks {
        wall: last.wall + ms(1000),
        mono: last.mono + ms(1000),
    };
    let before = Some((last.mono, last));

    // Bytes that reached the machine 5 ms before the read returned.
    assert_eq!(
        arrival(Some(now.wall - ms(5)), now, before),
        Some(now.mono - ms(5))
    );
    // No time given, or one later than the read's return: not used.
    assert_eq!(arrival(None, now, before), None);
    assert_eq!(arrival(Some(now.wall + ms(1)), now, before), None);
    // Never earlier than the read before's stamp: later bytes of the stream.
    let stamped_before = Some((now.mono - ms(10), last));
    assert_eq!(
        arrival(Some(now.wall - ms(50)), now, stamped_before),
        Some(now.mono - ms(10))
    );
    // The wall clock stepped 200 ms forward (or back) between the reads: the
    // bytes' age cannot be known, so the kernel's time is not used.
    for stepped in [now.wall + ms(200), now.wall - ms(200)] {
        let now = Clocks {
            wall: stepped,
            mono: now.mono,
        };
        assert_eq!(arrival(Some(now.wall - ms(5)), now, before), None);
    }
    // A slew within NTP's 500 ppm (0.4 ms in a second) is not a step.
    let slewed = Clocks {
        wall: now.wall + Duration::from_micros(400),
        mono: now.mono,
    };
    assert_eq!(
        arrival(Some(slewed.wall - ms(5)), slewed, before),
        Some(slewed.mono - ms(5))
    );
}

/// A packet that came out of order waits, with its early receive time, for
/// the one before it: a read that ends with it would look early by the
/// retransmission's delay, so the kernel's time is trusted only while the
/// connection's out-of-order count stands still, and only for times after
/// the count was last seen to move (vendor/serenity/PATCHES.md, patch 5).
#[test]
fn a_kernel_time_is_not_trusted_around_packets_that_came_out_of_order() {
    use serenity::gateway::OutOfOrderGuard;
    use std::time::SystemTime;

    let ms = Duration::from_millis;
    let t0 = SystemTime::now();
    let mut guard = OutOfOrderGuard::new(Some(0));
    assert!(guard.knows_count());
    // In order: the kernel's time is the bytes' arrival.
    assert_eq!(guard.trusted(Some(t0), Some(0), t0 + ms(1)), Some(t0));
    assert_eq!(guard.trusted(None, Some(0), t0 + ms(2)), None);
    // The count moved during this read: its time may be a held packet's.
    let moved = t0 + ms(100);
    assert_eq!(guard.trusted(Some(t0 + ms(50)), Some(1), moved), None);
    // Steady again, but the read's time is from before the move was seen:
    // the packet that waited for the retransmission.
    assert_eq!(
        guard.trusted(Some(t0 + ms(60)), Some(1), t0 + ms(110)),
        None
    );
    assert_eq!(guard.trusted(Some(moved), Some(1), t0 + ms(120)), None);
    // After the move, steady: trusted again.
    let later = moved + ms(30);
    assert_eq!(
        guard.trusted(Some(later), Some(1), later + ms(1)),
        Some(later)
    );
    // A kernel that cannot tell the count (before 5.4): never trusted.
    let mut blind = OutOfOrderGuard::new(None);
    assert!(!blind.knows_count());
    assert_eq!(blind.trusted(Some(t0), None, t0 + ms(1)), None);
    // A count that cannot be read any more: never trusted from then on.
    assert_eq!(guard.trusted(Some(later), None, later + ms(2)), None);
    assert!(!guard.knows_count());
    assert_eq!(guard.trusted(Some(later), Some(1), later + ms(3)), None);
}
