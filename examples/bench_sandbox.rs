//! Benchmark: does the sandbox distort what a prober measures?
//!
//! Measures, from the sandbox's own ground truth, the time from a message's
//! REST request arriving (`request_arrived`) to its MESSAGE_CREATE dispatch
//! being written to another account's gateway socket (`dispatches[].written`
//! for the reader), with many conversations in flight on loopback.
//!
//!     cargo run --release --example bench_sandbox [-- --conversations 50 --messages 40]
//!
//! Set-up: the simulated bot off, rate limits raised out of the way, one
//! channel per conversation. One reader (`twi-bot-shard`, a raw gateway
//! client asking for GUILDS | GUILD_MESSAGES) runs on its own thread so it
//! reads its socket promptly, and heartbeats as HELLO asks. Each conversation
//! POSTs its messages one after another as `prober`, waiting for each answer.
//! There is no warm-up and nothing is discarded.
//!
//! By default the sandbox runs on its own multi-thread tokio runtime with
//! tokio's default worker count (one per core), as `probe sandbox` does in its
//! own process; `--shared-runtime` puts it on the clients' runtime instead,
//! and `--sandbox-workers` changes its worker count.
//!
//! Exits non-zero only on errors (a lost message, a failed request), never
//! because a goal was missed.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as Ws;
use twi_sandbox::{Sandbox, SandboxConfig};

use common::{channel_name, sandbox_with_channels};

/// GUILDS | GUILD_MESSAGES.
const READER_INTENTS: u64 = (1 << 0) | (1 << 9);
const READER: &str = "twi-bot-shard";
const WRITER: &str = "prober";
/// Goals for the sandbox's own share of a measured latency.
const GOAL_P50_MS: f64 = 0.2;
const GOAL_P99_MS: f64 = 1.0;
/// A bound on waiting for the gateway, not a sleep: exceeding it is an error.
const WAIT_BOUND: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Sandbox latency benchmark: REST request arrival to gateway write")]
struct Args {
    /// Concurrent conversations, one channel each.
    #[arg(long, default_value_t = 50)]
    conversations: usize,
    /// Messages each conversation sends, one after another.
    #[arg(long, default_value_t = 40)]
    messages: usize,
    /// Pause between a conversation's messages, in ms (default 0: the next
    /// POST goes as soon as the answer is read, which saturates the machine).
    /// The conversations stay roughly in step, so requests come in bursts.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Run the sandbox on the clients' tokio runtime instead of its own.
    #[arg(long, conflicts_with = "sandbox_workers")]
    shared_runtime: bool,
    /// Worker threads of the sandbox's runtime (default: one per core).
    #[arg(long)]
    sandbox_workers: Option<usize>,
    /// Also write every sample to this CSV file (microseconds).
    #[arg(long)]
    csv: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_sandbox: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.conversations > 0 && args.messages > 0,
        "--conversations and --messages must be at least 1"
    );
    ensure!(
        args.sandbox_workers != Some(0),
        "--sandbox-workers must be at least 1"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-clients")
        .build()?;
    let own_runtime = if args.shared_runtime {
        None
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = args.sandbox_workers {
            b.worker_threads(n);
        }
        Some(b.enable_all().thread_name("bench-sandbox").build()?)
    };
    // The sandbox's tasks live on the runtime it is started (and stopped) on.
    let sandbox_rt = own_runtime.as_ref().unwrap_or(&clients);

    let mut cfg = config(args.conversations);
    // Every message's ground truth is read at the end.
    let total = args.conversations * args.messages;
    cfg.retention.truth_records = cfg.retention.truth_records.max(total);
    cfg.retention.messages = cfg.retention.messages.max(total);
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let sandbox = sandbox_rt
        .block_on(Sandbox::start(cfg, addr))
        .map_err(|e| anyhow!(e))?;

    println!(
        "bench_sandbox: REST request arrival -> MESSAGE_CREATE written to the reader's socket"
    );
    let runtime = match (args.shared_runtime, args.sandbox_workers) {
        (true, _) => "sandbox shares the clients' runtime".to_string(),
        (false, Some(n)) => format!("sandbox on its own runtime, {n} worker(s)"),
        (false, None) => format!("sandbox on its own runtime, {cores} worker(s) (default)"),
    };
    println!("cores: {cores}; {runtime}; reader on its own thread");
    println!(
        "conversations: {}; messages each: {}; think time: {} ms; warm-up: none, every sample kept",
        args.conversations, args.messages, args.think_ms
    );

    let result = clients.block_on(bench(&sandbox, args));
    sandbox_rt.block_on(sandbox.shutdown());
    result
}

fn config(conversations: usize) -> SandboxConfig {
    let mut cfg = sandbox_with_channels(conversations);
    cfg.bot.enabled = false;
    cfg
}

/// One message as a conversation saw it.
struct Sent {
    id: u64,
    /// When the POST started.
    at: Instant,
    /// Until its answer was read.
    round_trip: Duration,
}

async fn bench(sandbox: &Sandbox, args: &Args) -> anyhow::Result<()> {
    let total = args.conversations * args.messages;
    let reader_acc = sandbox.account(READER).context("no reader account")?;
    let reader_id: u64 = reader_acc.id.parse()?;
    let writer_acc = sandbox.account(WRITER).context("no writer account")?;
    let writer_id: u64 = writer_acc.id.parse()?;
    let channels = (0..args.conversations)
        .map(|i| {
            sandbox
                .channel_id(&channel_name(i))
                .with_context(|| format!("channel {} missing", channel_name(i)))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let channel_set: HashSet<u64> = channels.iter().copied().collect();

    let mut reader = Reader::start(
        sandbox.description().gateway_url.clone(),
        reader_acc.token.clone(),
        channel_set.clone(),
    )
    .await?;

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let api = sandbox.description().api_base.clone();
    let auth = format!("Bot {}", writer_acc.token);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, channel) in channels.iter().copied().enumerate() {
        let http = http.clone();
        let url = format!("{api}/channels/{channel}/messages");
        let auth = auth.clone();
        let n = args.messages;
        let think = Duration::from_millis(args.think_ms);
        tasks.spawn(async move {
            let mut sent = Vec::with_capacity(n);
            for j in 0..n {
                if j > 0 && !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
                let at = Instant::now();
                let resp = http
                    .post(&url)
                    .header("Authorization", &auth)
                    .json(&json!({"content": format!("bench conversation {i} message {j}")}))
                    .send()
                    .await
                    .with_context(|| format!("POST in conversation {i}"))?;
                let status = resp.status();
                let body: Value = resp.json().await.context("reading the answer")?;
                let round_trip = at.elapsed();
                if !status.is_success() {
                    bail!("conversation {i}, message {j}: HTTP {status}: {body}");
                }
                let id = body["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("no id in {body}"))?;
                sent.push(Sent { id, at, round_trip });
            }
            anyhow::Ok(sent)
        });
    }
    let mut sent: Vec<Sent> = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        sent.extend(done??);
    }
    let posting = started.elapsed();

    // Every MESSAGE_CREATE seen, then a heartbeat round trip on the same
    // connection: the server records `written` before it reads anything the
    // reader sends afterwards, so after the ACK every record is complete.
    reader.wait_for_count(total).await?;
    reader.sync().await?;
    let received = reader.stop().await?;

    let ids: HashSet<u64> = sent.iter().map(|s| s.id).collect();
    ensure!(
        ids.len() == total,
        "{} distinct ids for {total} messages",
        ids.len()
    );
    let truths: Vec<_> = sandbox
        .control()
        .truths(None)
        .into_iter()
        .filter(|t| channel_set.contains(&t.channel_id))
        .collect();
    ensure!(
        truths.len() == total,
        "{} truth records for {total} messages",
        truths.len()
    );
    let mut to_write = Vec::with_capacity(total);
    let mut to_create = Vec::with_capacity(total);
    let mut csv = match &args.csv {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            writeln!(
                w,
                "channel_id,message_id,arrived_us,created_us,written_us,reader_received_us"
            )?;
            Some(w)
        }
        None => None,
    };
    for t in &truths {
        ensure!(
            ids.contains(&t.message_id),
            "unexpected message {}",
            t.message_id
        );
        ensure!(
            t.author_id == writer_id,
            "message {} not by the writer",
            t.message_id
        );
        let mut writes = t
            .dispatches
            .iter()
            .filter(|d| d.account_id == reader_id && d.event == "MESSAGE_CREATE");
        let w = writes.next().with_context(|| {
            format!(
                "message {}: no dispatch written to the reader",
                t.message_id
            )
        })?;
        ensure!(
            writes.next().is_none(),
            "message {}: dispatched twice",
            t.message_id
        );
        to_write.push(w.written.duration_since(t.request_arrived));
        to_create.push(t.created.duration_since(t.request_arrived));
        if let Some(out) = &mut csv {
            // Offsets from the start of posting, on this process's clock.
            let us = |at: Instant| at.saturating_duration_since(started).as_micros();
            let got = received.get(&t.message_id).copied().map_or(0, us);
            writeln!(
                out,
                "{},{},{},{},{},{got}",
                t.channel_id,
                t.message_id,
                us(t.request_arrived),
                us(t.created),
                us(w.written),
            )?;
        }
    }
    if let Some(mut out) = csv {
        out.flush()?;
    }

    // Context only: what the clients saw, on this process's clock.
    let round_trips: Vec<Duration> = sent.iter().map(|s| s.round_trip).collect();
    let mut end_to_end = Vec::with_capacity(total);
    for s in &sent {
        let got = received
            .get(&s.id)
            .with_context(|| format!("message {} never reached the reader", s.id))?;
        end_to_end.push(got.duration_since(s.at));
    }

    println!(
        "posted {total} messages in {:.3} s ({:.0} messages/s)",
        posting.as_secs_f64(),
        total as f64 / posting.as_secs_f64()
    );
    println!();
    println!(
        "{:<44} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ms (nearest rank)", "count", "min", "p50", "p90", "p99", "max"
    );
    let main = summary("request_arrived -> written (reader)", to_write);
    summary("request_arrived -> created", to_create);
    summary("client: POST sent -> answer read", round_trips);
    summary("client: POST sent -> reader got dispatch", end_to_end);
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goal p50 <= {GOAL_P50_MS:.3} ms: {} (p50 {:.3} ms)",
        verdict(main.p50 <= GOAL_P50_MS),
        main.p50
    );
    println!(
        "goal p99 <= {GOAL_P99_MS:.3} ms: {} (p99 {:.3} ms)",
        verdict(main.p99 <= GOAL_P99_MS),
        main.p99
    );
    Ok(())
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn summary(label: &str, mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Nearest rank: the smallest sample with at least p% of them at or below it.
    let rank = |p: f64| {
        let r = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        ms(samples[r.clamp(1, samples.len()) - 1])
    };
    let (p50, p90, p99) = (rank(50.0), rank(90.0), rank(99.0));
    println!(
        "{label:<44} {:>6} {:>8.3} {p50:>8.3} {p90:>8.3} {p99:>8.3} {:>8.3}",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
    Stats { p50, p99 }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// When each MESSAGE_CREATE reached the reader, by message id.
type Received = HashMap<u64, Instant>;

/// A raw gateway client on its own thread (and current-thread runtime), so
/// the clients' tasks never delay its reads. It heartbeats as HELLO asks and
/// records when each MESSAGE_CREATE of the benchmark's channels arrived.
struct Reader {
    count: watch::Receiver<usize>,
    sync: mpsc::UnboundedSender<oneshot::Sender<()>>,
    stop: oneshot::Sender<()>,
    done: oneshot::Receiver<anyhow::Result<Received>>,
    thread: std::thread::JoinHandle<()>,
}

/// The reader thread's ends of the channels.
struct ReaderEnds {
    count: watch::Sender<usize>,
    sync: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    stop: oneshot::Receiver<()>,
}

impl Reader {
    /// Starts the thread; returns once READY has arrived.
    async fn start(
        gateway_url: String,
        token: String,
        channels: HashSet<u64>,
    ) -> anyhow::Result<Reader> {
        let (count_tx, count) = watch::channel(0usize);
        let (sync, sync_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        let (ready_tx, ready) = oneshot::channel::<anyhow::Result<()>>();
        let (done_tx, done) = oneshot::channel();
        let ends = ReaderEnds {
            count: count_tx,
            sync: sync_rx,
            stop: stop_rx,
        };
        let thread = std::thread::Builder::new()
            .name("bench-reader".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let session = match login(&gateway_url, &token).await {
                                Ok(v) => v,
                                Err(e) => {
                                    let _ = ready_tx.send(Err(e));
                                    return Ok(Received::new());
                                }
                            };
                            let _ = ready_tx.send(Ok(()));
                            read(session, &channels, ends).await
                        })
                    });
                let _ = done_tx.send(result);
            })
            .context("starting the reader thread")?;
        match ready.await {
            Ok(Ok(())) => Ok(Reader {
                count,
                sync,
                stop,
                done,
                thread,
            }),
            Ok(Err(e)) => Err(e.context("the reader could not log in")),
            Err(_) => match done.await {
                Ok(Err(e)) => Err(e.context("the reader failed")),
                _ => bail!("the reader thread ended before READY"),
            },
        }
    }

    async fn wait_for_count(&mut self, n: usize) -> anyhow::Result<()> {
        let waited = tokio::time::timeout(WAIT_BOUND, async {
            tokio::select! {
                seen = self.count.wait_for(|c| *c >= n) => seen.is_ok(),
                _ = &mut self.done => false,
            }
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => bail!("the reader stopped early (gateway closed or errored)"),
            Err(_) => bail!(
                "the reader saw {} of {n} MESSAGE_CREATE within {WAIT_BOUND:?}",
                *self.count.borrow()
            ),
        }
    }

    /// A heartbeat round trip: returns once the server has answered it.
    async fn sync(&mut self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.sync.send(tx).map_err(|_| anyhow!("reader stopped"))?;
        match tokio::time::timeout(WAIT_BOUND, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => bail!("the reader stopped before the heartbeat ACK"),
            Err(_) => bail!("no heartbeat ACK within {WAIT_BOUND:?}"),
        }
    }

    async fn stop(self) -> anyhow::Result<Received> {
        let _ = self.stop.send(());
        let received = self
            .done
            .await
            .map_err(|_| anyhow!("the reader thread panicked"))??;
        self.thread
            .join()
            .map_err(|_| anyhow!("the reader thread panicked"))?;
        Ok(received)
    }
}

/// Connects and identifies; returns at READY with the heartbeat interval
/// and the last sequence number.
async fn login(
    gateway_url: &str,
    token: &str,
) -> anyhow::Result<(WsStream, Duration, Option<u64>)> {
    let url = format!("{gateway_url}/?v=10&encoding=json");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("connecting to the gateway")?;
    let hello = next_json(&mut ws).await?;
    ensure!(hello["op"] == 10, "expected HELLO, got {hello}");
    let interval = Duration::from_millis(
        hello["d"]["heartbeat_interval"]
            .as_u64()
            .context("HELLO without heartbeat_interval")?,
    );
    let identify = json!({"op": 2, "d": {
        "token": token,
        "intents": READER_INTENTS,
        "properties": {"os": "linux", "browser": "twi-probe-bench", "device": "twi-probe-bench"},
    }});
    ws.send(Ws::Text(identify.to_string())).await?;
    loop {
        let v = next_json(&mut ws).await?;
        if v["op"] == 0 && v["t"] == "READY" {
            return Ok((ws, interval, v["s"].as_u64()));
        }
    }
}

async fn read(
    (mut ws, interval, mut seq): (WsStream, Duration, Option<u64>),
    channels: &HashSet<u64>,
    mut ends: ReaderEnds,
) -> anyhow::Result<Received> {
    let mut received = Received::new();
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // Heartbeats sent and ACKs received; the server answers them in order.
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut waiting: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => {
                let at = Instant::now();
                let text = match msg {
                    Some(Ok(Ws::Text(t))) => t,
                    Some(Ok(Ws::Close(f))) => bail!("gateway closed: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("gateway connection ended"),
                };
                let v: Value = serde_json::from_str(&text)?;
                if let Some(s) = v["s"].as_u64() {
                    seq = Some(s);
                }
                match v["op"].as_u64() {
                    Some(0) if v["t"] == "MESSAGE_CREATE" => {
                        let id = |f: &str| v["d"][f].as_str().and_then(|s| s.parse::<u64>().ok());
                        if id("channel_id").is_some_and(|c| channels.contains(&c)) {
                            let id = id("id").context("MESSAGE_CREATE without id")?;
                            ensure!(received.insert(id, at).is_none(), "message {id} received twice");
                            ends.count.send_replace(received.len());
                        }
                    }
                    Some(11) => {
                        acked += 1;
                        let (ready, rest): (Vec<_>, Vec<_>) =
                            waiting.drain(..).partition(|(n, _)| *n <= acked);
                        waiting = rest;
                        for (_, tx) in ready {
                            let _ = tx.send(());
                        }
                    }
                    // The server asks for a heartbeat now.
                    Some(1) => heartbeat.reset_immediately(),
                    Some(7 | 9) => bail!("gateway asked to reconnect: {v}"),
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                ws.send(Ws::Text(json!({"op": 1, "d": seq}).to_string())).await?;
                sent += 1;
            }
            Some(tx) = ends.sync.recv() => {
                ws.send(Ws::Text(json!({"op": 1, "d": seq}).to_string())).await?;
                sent += 1;
                waiting.push((sent, tx));
            }
            _ = &mut ends.stop => break,
        }
    }
    let _ = ws.close(None).await;
    Ok(received)
}

async fn next_json(ws: &mut WsStream) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT_BOUND, ws.next())
            .await
            .context("the gateway did not answer")?;
        match msg {
            Some(Ok(Ws::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Ws::Close(f))) => bail!("gateway closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("gateway connection ended"),
        }
    }
}
