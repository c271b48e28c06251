//! Shared helpers: a configurable HTTP server on 127.0.0.1:0 standing in for
//! a bot's exporter or a web site, and config building.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::StreamExt;
use twi_probe::config::Config;

/// What the server answers on `/metrics` (and `/page`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Reply {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
struct ServerState {
    reply: Arc<Mutex<Reply>>,
    methods: Arc<Mutex<Vec<Method>>>,
    /// (requests being answered now, the most at once so far)
    concurrent: Arc<Mutex<(usize, usize)>>,
    /// Bytes `/endless` has produced so far.
    endless_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// A real HTTP server on 127.0.0.1, port 0. Routes:
/// `/metrics` and `/page` answer the current [`Reply`]; `/old` redirects
/// (301) to `/page`; `/loop` redirects to itself; `/endless` streams valid
/// exposition lines forever (chunked); `/big` sends a large body with its
/// Content-Length.
pub struct TestServer {
    pub addr: SocketAddr,
    state: ServerState,
}

impl TestServer {
    pub async fn start(reply: Reply) -> TestServer {
        let state = ServerState {
            reply: Arc::new(Mutex::new(reply)),
            methods: Arc::new(Mutex::new(Vec::new())),
            concurrent: Arc::new(Mutex::new((0, 0))),
            endless_bytes: Default::default(),
        };
        let app = Router::new()
            .route("/metrics", any(answer))
            .route("/page", any(answer))
            .route(
                "/old",
                get(|| async { (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/page")]) }),
            )
            .route("/endless", get(endless))
            .route(
                "/big",
                get(|| async {
                    // 64 MiB of valid, distinct series, announced as such.
                    let lines: String = (0..1_500_000)
                        .map(|i| format!("s{{i=\"{i}\"}} 1\n"))
                        .collect();
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], lines)
                }),
            )
            .route(
                "/loop",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestServer { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = reply;
    }

    pub fn methods_seen(&self) -> Vec<Method> {
        self.state.methods.lock().unwrap().clone()
    }

    /// Bytes `/endless` has produced (at most a socket's buffers more than
    /// its client read).
    pub fn endless_bytes(&self) -> u64 {
        self.state
            .endless_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests this server was answering at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state.concurrent.lock().unwrap().1
    }
}

async fn answer(State(state): State<ServerState>, method: Method, _h: HeaderMap) -> Response {
    state.methods.lock().unwrap().push(method);
    {
        let mut c = state.concurrent.lock().unwrap();
        c.0 += 1;
        c.1 = c.1.max(c.0);
    }
    let reply = state.reply.lock().unwrap().clone();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    state.concurrent.lock().unwrap().0 -= 1;
    (
        StatusCode::from_u16(reply.status).unwrap(),
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        reply.body,
    )
        .into_response()
}

/// Valid, distinct series in 64 KiB chunks, forever.
async fn endless(State(state): State<ServerState>) -> Response {
    let counter = state.endless_bytes.clone();
    let chunks = futures_util::stream::iter(0u64..).map(move |n| {
        let chunk: String = (0..2000)
            .map(|i| format!("endless{{chunk=\"{n}\",line=\"{i}\"}} 1\n"))
            .collect();
        counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::convert::Infallible>(chunk)
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

pub fn config(yaml: &str) -> Config {
    match Config::from_yaml(yaml, Path::new("test.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("test config is invalid:\n{e}\n---\n{yaml}"),
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Exporter output shaped like Python's prometheus_client, for a process
/// that started at `start_time` (unix seconds).
pub fn python_exporter_body(start_time: f64, gateway_connected: u8) -> String {
    format!(
        r#"# HELP python_info Python platform information
# TYPE python_info gauge
python_info{{implementation="CPython",major="3",minor="12",patchlevel="3",version="3.12.3"}} 1.0
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 4.2057728e+08
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start_time:.2}
# HELP bot_commands_total Total commands processed
# TYPE bot_commands_total counter
bot_commands_total{{command="help",success="True"}} 12.0
bot_commands_total{{command="ping",success="False"}} 1.0
# HELP bot_commands_created Total commands processed
# TYPE bot_commands_created gauge
bot_commands_created{{command="help",success="True"}} 1.7e+09
# HELP bot_command_latency_seconds Command processing time
# TYPE bot_command_latency_seconds histogram
bot_command_latency_seconds_bucket{{command="help",le="0.1"}} 10.0
bot_command_latency_seconds_bucket{{command="help",le="+Inf"}} 12.0
bot_command_latency_seconds_count{{command="help"}} 12.0
bot_command_latency_seconds_sum{{command="help"}} 1.3
# HELP bot_active_users Number of active users
# TYPE bot_active_users gauge
bot_active_users 42.0
# HELP discord_gateway_connected Whether the gateway is connected
# TYPE discord_gateway_connected gauge
discord_gateway_connected {gateway_connected}.0
"#
    )
}

/// Waits (at most `limit`) until `holds` is true of the rendered metrics,
/// checking again each time they change (`Metrics::changes`): an awaited
/// event, not a polling loop. Returns the text that satisfied it.
pub async fn until_changed_within(
    metrics: &twi_probe::metrics::Metrics,
    what: &str,
    limit: std::time::Duration,
    holds: impl Fn(&str) -> bool,
) -> String {
    let mut changes = metrics.changes();
    tokio::time::timeout(limit, async {
        loop {
            let text = metrics.render();
            if holds(&text) {
                return text;
            }
            changes.changed().await.expect("the metrics live");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never happened:\n{}", metrics.render()))
}

/// [`until_changed_within`] ten seconds.
pub async fn until_changed(
    metrics: &twi_probe::metrics::Metrics,
    what: &str,
    holds: impl Fn(&str) -> bool,
) -> String {
    until_changed_within(metrics, what, std::time::Duration::from_secs(10), holds).await
}
