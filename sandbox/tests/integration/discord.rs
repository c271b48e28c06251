//! Discord clients for tests against the sandbox: serenity (as a real bot
//! would use it) and a raw gateway client for wire-level checks.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use serenity::all::{
    Client, ClientBuilder, Context, Event, GatewayIntents, Http, HttpBuilder, RawEventHandler,
    ShardManager,
};
use serenity::async_trait;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use twi_sandbox::{Sandbox, SandboxConfig};

/// How long a test waits for an event before failing. A bound, not a sleep.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

pub async fn start_sandbox(cfg: SandboxConfig) -> Sandbox {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Sandbox::start(cfg, addr).await.expect("sandbox starts")
}

/// A sandbox with the simulated bot switched off.
pub fn quiet_config() -> SandboxConfig {
    let mut cfg = SandboxConfig::default();
    cfg.bot.enabled = false;
    cfg
}

struct Forward(mpsc::UnboundedSender<Event>);

#[async_trait]
impl RawEventHandler for Forward {
    async fn raw_event(&self, _ctx: Context, ev: Event) {
        let _ = self.0.send(ev);
    }
}

/// A serenity client logged in to the sandbox as one of its accounts, with
/// every gateway event forwarded to the test.
pub struct TestClient {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub http: Arc<Http>,
    pub shard_manager: Arc<ShardManager>,
    pub task: tokio::task::JoinHandle<Result<(), serenity::Error>>,
}

pub fn sandbox_http(sandbox: &Sandbox, account: &str) -> Http {
    let token = &sandbox.account(account).unwrap().token;
    HttpBuilder::new(token)
        .proxy(sandbox.description().rest_base.clone())
        .ratelimiter_disabled(true)
        .build()
}

impl TestClient {
    pub async fn connect(sandbox: &Sandbox, account: &str, intents: GatewayIntents) -> TestClient {
        let (tx, events) = mpsc::unbounded_channel();
        let mut client: Client =
            ClientBuilder::new_with_http(sandbox_http(sandbox, account), intents)
                .raw_event_handler(Forward(tx))
                .await
                .expect("client builds");
        let http = client.http.clone();
        let shard_manager = client.shard_manager.clone();
        let task = tokio::spawn(async move { client.start().await });
        TestClient {
            events,
            http,
            shard_manager,
            task,
        }
    }

    /// Waits for the first event `pick` accepts, failing after [`EVENT_WAIT`].
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if let Some(v) = pick(&ev) {
                        return v;
                    }
                }
                Ok(None) => panic!("client stopped while waiting for {what}"),
                Err(_) => panic!("no {what} within {EVENT_WAIT:?}"),
            }
        }
    }

    pub async fn ready(&mut self) -> serenity::all::Ready {
        self.wait_for("READY", |e| match e {
            Event::Ready(r) => Some(r.ready.clone()),
            _ => None,
        })
        .await
    }

    pub async fn stop(self) {
        self.shard_manager.stop().await;
        let _ = self.task.await;
    }
}

/// A bare gateway connection speaking JSON, optionally zlib-stream compressed.
pub struct RawGateway {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    inflate: Option<Decompress>,
    /// Every binary frame received, to check the zlib framing.
    pub binary_frames: Vec<Vec<u8>>,
}

impl RawGateway {
    pub async fn connect(sandbox: &Sandbox, query: &str) -> RawGateway {
        // As serenity does: parse, so the empty path becomes "/".
        let url =
            url::Url::parse(&format!("{}?{query}", sandbox.description().gateway_url)).unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("gateway connects");
        let inflate = query
            .contains("compress=zlib-stream")
            .then(|| Decompress::new(true));
        RawGateway {
            ws,
            inflate,
            binary_frames: Vec::new(),
        }
    }

    /// The next JSON payload, or the close code if the server closed.
    pub async fn recv(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let msg = tokio::time::timeout(EVENT_WAIT, self.ws.next())
                .await
                .expect("gateway answers in time");
            match msg {
                Some(Ok(Ws::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Ws::Binary(b))) => {
                    self.binary_frames.push(b.clone());
                    let z = self
                        .inflate
                        .as_mut()
                        .expect("binary frames only with compression");
                    let mut out = Vec::with_capacity(b.len() * 8 + 1024);
                    let before = z.total_in();
                    z.decompress_vec(&b, &mut out, FlushDecompress::Sync)
                        .unwrap();
                    assert_eq!(
                        (z.total_in() - before) as usize,
                        b.len(),
                        "frame fully consumed"
                    );
                    let mut text = String::new();
                    out.as_slice().read_to_string(&mut text).unwrap();
                    return Ok(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Ws::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Ws::Text(v.to_string())).await.unwrap();
    }

    pub async fn identify(&mut self, token: &str, intents: u64, shard: Option<[u64; 2]>) {
        let mut d = json!({
            "token": token,
            "intents": intents,
            "properties": {"os": "linux", "browser": "twi-probe-test", "device": "twi-probe-test"},
        });
        if let Some(s) = shard {
            d["shard"] = json!(s);
        }
        self.send(json!({"op": 2, "d": d})).await;
    }

    /// Reads until a dispatch of type `t`, returning its payload.
    pub async fn until_dispatch(&mut self, t: &str) -> Value {
        loop {
            let v = self
                .recv()
                .await
                .unwrap_or_else(|code| panic!("closed ({code:?}) before {t}"));
            if v["op"] == 0 && v["t"] == t {
                return v;
            }
        }
    }

    pub async fn close(mut self, code: u16) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: code.into(),
                reason: "test".into(),
            }))
            .await;
    }
}
