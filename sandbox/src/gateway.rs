//! Gateway v10 over WebSocket: HELLO, IDENTIFY, READY, heartbeats, RESUME,
//! presence, sharding, intents, and `compress=zlib-stream` / `zstd-stream`.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Message};
use tokio_util::sync::CancellationToken;

use super::hub::{Conn, Core, Out, Session, Text};
use super::intents;
use super::model;
use super::world::Status;

/// Accepts gateway connections until `shutdown` fires.
pub async fn serve(core: Arc<Core>, listener: TcpListener, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tasks.spawn(connection(core.clone(), stream, shutdown.clone()));
                }
            }
        }
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

/// Frames written with one flush at most.
const MAX_BATCH: usize = 256;

/// A close the server decides: code and reason.
struct Close(u16, &'static str);

/// How a connection ended, which decides the session's fate.
enum End {
    /// The client closed with this code (None: no code).
    ClientClosed(Option<u16>),
    ServerClosed(u16),
    Dropped,
}

/// Transport compression, chosen by the `compress` query parameter: one
/// stream per connection, every payload flushed into one binary message.
enum Transport {
    Plain,
    Zlib(ZlibEncoder<Vec<u8>>),
    Zstd(ZstdStream),
}

impl Transport {
    fn for_param(compress: Option<&str>) -> Transport {
        match compress {
            Some("zlib-stream") => {
                Transport::Zlib(ZlibEncoder::new(Vec::new(), Compression::default()))
            }
            Some("zstd-stream") => Transport::Zstd(ZstdStream::default()),
            _ => Transport::Plain,
        }
    }

    fn encode(&mut self, text: &str) -> Result<Message, ()> {
        Ok(match self {
            Transport::Plain => Message::Text(text.to_string()),
            Transport::Zlib(z) => {
                // A sync flush ends every message with 00 00 ff ff, as Discord does.
                z.write_all(text.as_bytes()).map_err(|_| ())?;
                z.flush().map_err(|_| ())?;
                Message::Binary(std::mem::take(z.get_mut()))
            }
            Transport::Zstd(z) => Message::Binary(z.message(text.as_bytes())),
        })
    }
}

/// `compress=zstd-stream`: one Zstandard frame (RFC 8878) per connection that
/// never ends; each payload is flushed as whole blocks into its own message,
/// so a streaming decompressor yields exactly one payload per message, as
/// with Discord. The blocks are stored (Raw_Block), not entropy-coded: the
/// format is what clients parse, the ratio does not matter on loopback, and
/// no zstd encoder is among the dependencies.
#[derive(Default)]
struct ZstdStream {
    started: bool,
}

impl ZstdStream {
    /// Zstandard's frame magic number, little-endian.
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    /// Window_Descriptor for a 128 KiB window (exponent 7: 2^(10+7)), the
    /// largest block size, so every block fits the window.
    const WINDOW_128K: u8 = 7 << 3;
    const MAX_BLOCK: usize = 128 * 1024;

    fn message(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 16);
        if !self.started {
            self.started = true;
            out.extend_from_slice(&Self::MAGIC);
            // Frame_Header_Descriptor 0: no content size (the stream is open
            // ended), not single-segment, no checksum, no dictionary.
            out.push(0);
            out.push(Self::WINDOW_128K);
        }
        for block in payload.chunks(Self::MAX_BLOCK) {
            // Block_Header: Last_Block 0, Block_Type 0 (Raw), Block_Size.
            let header = (block.len() as u32) << 3;
            out.extend_from_slice(&header.to_le_bytes()[..3]);
            out.extend_from_slice(block);
        }
        out
    }
}

/// Writes frames through the connection's transport compression.
struct Writer {
    sink: SplitSink<WebSocketStream<TcpStream>, WsMessage>,
    transport: Transport,
}

impl Writer {
    async fn send(&mut self, text: &str) -> Result<(), ()> {
        let msg = self.transport.encode(text)?;
        self.sink.send(msg).await.map_err(|_| ())
    }

    /// Queues a frame without flushing; [`Writer::flush`] sends the batch.
    async fn feed(&mut self, text: &str) -> Result<(), ()> {
        let msg = self.transport.encode(text)?;
        self.sink.feed(msg).await.map_err(|_| ())
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.sink.flush().await.map_err(|_| ())
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

/// Per-connection state.
struct Ctx {
    conn: Conn,
    session: Option<String>,
    account: Option<u64>,
}

/// Carries out an `Out` other than a frame (frames are written in
/// batches by the caller); `Some` when it ends the connection.
async fn control(out: Out, writer: &mut Writer, ctx: &mut Ctx) -> Option<End> {
    match out {
        Out::Invalidate => {
            ctx.session = None;
            let op9 = json!({"op": 9, "d": false, "s": null, "t": null});
            writer
                .send(&op9.to_string())
                .await
                .is_err()
                .then_some(End::Dropped)
        }
        Out::Close(code, reason) => {
            writer.close(code, &reason).await;
            Some(End::ServerClosed(code))
        }
        Out::Frame { .. } => None,
    }
}

// The handshake callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn connection(core: Arc<Core>, stream: TcpStream, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let mut query = String::new();
    let ws = match tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or("").to_string();
        Ok(resp)
    })
    .await
    {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (sink, mut source) = ws.split();
    let mut writer = Writer {
        sink,
        transport: Transport::for_param(params.get("compress").map(String::as_str)),
    };
    if let Some(Close(code, reason)) = check_params(&params) {
        writer.close(code, reason).await;
        return;
    }

    let heartbeat = core.cfg.gateway.heartbeat_interval;
    let hello = json!({"op": 10, "d": {"heartbeat_interval": heartbeat.as_millis() as u64}, "s": null, "t": null});
    if writer.send(&hello.to_string()).await.is_err() {
        return;
    }
    let (conn, mut rx) = Conn::new(core.next_conn_id(), core.cfg.gateway.replay_buffer);
    let overflow = conn.overflow.clone();
    let mut ctx = Ctx {
        conn,
        session: None,
        account: None,
    };
    // Discord closes a connection whose heartbeats stop; allow 1.5 intervals.
    let allowance = heartbeat + heartbeat / 2;
    let mut deadline = tokio::time::Instant::now() + allowance;
    // HEARTBEAT_ACKs waiting out the configured round trip, oldest first.
    let round_trip = core.cfg.gateway.heartbeat_round_trip;
    let mut acks_due: VecDeque<tokio::time::Instant> = VecDeque::new();

    let run = async {
        loop {
            tokio::select! {
                biased;
                out = rx.recv() => match out {
                    Some(Out::Frame { text, truth }) => {
                        // Everything already queued goes out with one flush: a
                        // frame-by-frame writer falls behind under load.
                        let write_started = Instant::now();
                        let mut written = vec![truth];
                        let mut fed = writer.feed(&text.text()).await;
                        let mut next = None;
                        while fed.is_ok() && written.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(Out::Frame { text, truth }) => {
                                    written.push(truth);
                                    fed = writer.feed(&text.text()).await;
                                }
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if fed.is_err() || writer.flush().await.is_err() {
                            break End::Dropped;
                        }
                        let at = Instant::now();
                        if let Some(account) = ctx.account {
                            for (message_id, event) in written.into_iter().flatten() {
                                core.truth.dispatch_written(message_id, event, account, ctx.conn.id, write_started, at);
                            }
                        }
                        if let Some(out) = next
                            && let Some(end) = control(out, &mut writer, &mut ctx).await
                        {
                            break end;
                        }
                    }
                    Some(out) => {
                        if let Some(end) = control(out, &mut writer, &mut ctx).await {
                            break end;
                        }
                    }
                    None => break End::Dropped,
                },
                msg = source.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        match on_payload(&core, &mut ctx, &text) {
                            Ok(Reply::None) => {}
                            Ok(Reply::Send(v)) => {
                                if writer.send(&v.to_string()).await.is_err() {
                                    break End::Dropped;
                                }
                            }
                            Ok(Reply::Heartbeat(ack)) => {
                                let now = tokio::time::Instant::now();
                                deadline = now + allowance;
                                if ack {
                                    acks_due.push_back(now + round_trip);
                                }
                            }
                            Err(Close(code, reason)) => {
                                writer.close(code, reason).await;
                                break End::ServerClosed(code);
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        writer.close(4002, "Decode error").await;
                        break End::ServerClosed(4002);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        // Completes the closing handshake (tungstenite queued the reply).
                        let _ = writer.sink.close().await;
                        break End::ClientClosed(frame.map(|f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break End::Dropped,
                },
                _ = tokio::time::sleep_until(acks_due.front().copied().unwrap_or(deadline)), if !acks_due.is_empty() => {
                    acks_due.pop_front();
                    let ack = json!({"op": 11, "d": null, "s": null, "t": null});
                    if writer.send(&ack.to_string()).await.is_err() {
                        break End::Dropped;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    writer.close(4009, "Session timed out").await;
                    break End::ServerClosed(4009);
                }
                _ = shutdown.cancelled() => {
                    writer.close(1001, "Going away").await;
                    break End::Dropped;
                }
            }
        }
    };
    // A client that stopped reading fills its queue (`hub::queue_capacity`);
    // this also interrupts a write that waits on its full socket.
    let end = tokio::select! {
        end = run => end,
        _ = overflow.cancelled() => {
            core.log_event(&format!(
                "gateway: connection {} dropped: the client is not reading ({} frames waiting)",
                ctx.conn.id,
                rx.len()
            ));
            End::Dropped
        }
    };
    if let Some(session_id) = ctx.session {
        connection_ended(&core, &session_id, ctx.conn.id, end);
    }
}

fn check_params(params: &HashMap<String, String>) -> Option<Close> {
    match params.get("v").map(String::as_str) {
        None | Some("10") => {}
        Some(_) => return Some(Close(4012, "Invalid API version")),
    }
    match params.get("encoding").map(String::as_str) {
        None | Some("json") => {}
        // etf is Discord's other encoding; the sandbox speaks JSON only.
        Some(_) => {
            return Some(Close(
                4002,
                "Decode error: the sandbox supports encoding=json only",
            ));
        }
    }
    match params.get("compress").map(String::as_str) {
        None | Some("zlib-stream" | "zstd-stream") => None,
        Some(_) => Some(Close(
            4000,
            "Unknown error: compress must be zlib-stream or zstd-stream",
        )),
    }
}

enum Reply {
    None,
    Send(Value),
    /// A heartbeat arrived; send an ACK if `true`.
    Heartbeat(bool),
}

fn on_payload(core: &Arc<Core>, ctx: &mut Ctx, text: &str) -> Result<Reply, Close> {
    let payload: Value = serde_json::from_str(text).map_err(|_| Close(4002, "Decode error"))?;
    let op = payload["op"].as_u64().ok_or(Close(4002, "Decode error"))?;
    let d = &payload["d"];
    match op {
        1 => {
            let ack = ctx.account.is_none_or(|a| core.faults.acks_heartbeats(a));
            Ok(Reply::Heartbeat(ack))
        }
        2 => identify(core, ctx, d).map(|()| Reply::None),
        3 => {
            let session = ctx
                .session
                .clone()
                .ok_or(Close(4003, "Not authenticated"))?;
            let status = d["status"]
                .as_str()
                .and_then(Status::parse)
                .ok_or(Close(4002, "Decode error"))?;
            let activities = model::activities(&d["activities"], unix_ms());
            set_status(core, &session, status, activities);
            Ok(Reply::None)
        }
        6 => resume(core, ctx, d),
        8 => {
            ctx.session
                .as_ref()
                .ok_or(Close(4003, "Not authenticated"))?;
            request_members(core, ctx, d);
            Ok(Reply::None)
        }
        4 | 31 => {
            // Voice state and soundboard requests: accepted and ignored.
            ctx.session
                .as_ref()
                .ok_or(Close(4003, "Not authenticated"))?;
            Ok(Reply::None)
        }
        _ => Err(Close(4001, "Unknown opcode")),
    }
}

fn identify(core: &Arc<Core>, ctx: &mut Ctx, d: &Value) -> Result<(), Close> {
    if ctx.session.is_some() {
        return Err(Close(4005, "Already authenticated"));
    }
    let token = d["token"].as_str().ok_or(Close(4002, "Decode error"))?;
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    let wanted = d["intents"]
        .as_u64()
        .ok_or(Close(4013, "Invalid intent(s)"))?;
    if wanted & !intents::ALL_KNOWN != 0 {
        return Err(Close(4013, "Invalid intent(s)"));
    }
    let shard = match d.get("shard") {
        None | Some(Value::Null) => [0, 1],
        Some(v) => {
            let pair = v.as_array().filter(|a| a.len() == 2);
            let pair = pair.ok_or(Close(4010, "Invalid shard"))?;
            let id = pair[0].as_u64().ok_or(Close(4010, "Invalid shard"))?;
            let count = pair[1].as_u64().ok_or(Close(4010, "Invalid shard"))?;
            if count == 0 || id >= count {
                return Err(Close(4010, "Invalid shard"));
            }
            [id, count]
        }
    };
    let status = d["presence"]["status"]
        .as_str()
        .and_then(Status::parse)
        .unwrap_or(Status::Online);

    let mut state = core.state();
    let account = state
        .world
        .account_by_token(token)
        .cloned()
        .ok_or(Close(4004, "Authentication failed"))?;
    if core.faults.gateway_refused(account.id) {
        return Err(Close(
            4000,
            "Unknown error (sandbox: gateway outage for this account)",
        ));
    }
    if wanted & intents::PRIVILEGED & !account.privileged != 0 {
        core.log_event(&format!(
            "gateway: {} asked for privileged intents it may not use: {:?}",
            account.name,
            intents::privileged_names(wanted & intents::PRIVILEGED & !account.privileged)
        ));
        return Err(Close(4014, "Disallowed intent(s)"));
    }
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let before = state.presence_snapshot(account.id);
    state.sessions.insert(
        session_id.clone(),
        Session {
            id: session_id.clone(),
            account_id: account.id,
            shard,
            intents: wanted,
            status,
            activities: model::activities(&d["presence"]["activities"], unix_ms()),
            seq: 0,
            replay: Default::default(),
            conn: Some(ctx.conn.clone()),
            detach_generation: 0,
            all_members_requested: Default::default(),
        },
    );
    let guilds = state.world.shard_guilds(account.id, shard);
    let ready = json!({
        "v": 10,
        "user": model::current_user(&account),
        "guilds": guilds.iter().map(|id| json!({"id": id.to_string(), "unavailable": true})).collect::<Vec<_>>(),
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": core.gateway_url(),
        "shard": shard,
        "application": {"id": account.id.to_string(), "flags": 0},
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": [],
        "user_settings": {},
        "_trace": ["[\"twi-probe-sandbox\"]"],
    });
    state.enqueue(&session_id, "READY", ready);
    if wanted & intents::GUILDS != 0 {
        for guild_id in guilds {
            let Some(g) = state.world.guild(guild_id).cloned() else {
                continue;
            };
            let presences = (wanted & intents::GUILD_PRESENCES != 0).then(|| {
                g.members
                    .iter()
                    .map(|m| (*m, state.shown(*m, guild_id)))
                    .filter(|(_, s)| s.0 != "offline")
                    .map(|(m, s)| model::presence(m, s.0, &s.1))
                    .collect()
            });
            let d = model::guild_create(&state.world, &g, presences);
            state.enqueue(&session_id, "GUILD_CREATE", d);
        }
    }
    state.broadcast_presence(account.id, before);
    drop(state);
    core.log_event(&format!(
        "gateway: {} identified (shard {:?}, intents {wanted})",
        account.name, shard
    ));
    ctx.session = Some(session_id);
    ctx.account = Some(account.id);
    Ok(())
}

fn resume(core: &Arc<Core>, ctx: &mut Ctx, d: &Value) -> Result<Reply, Close> {
    if ctx.session.is_some() {
        return Err(Close(4005, "Already authenticated"));
    }
    let token = d["token"].as_str().ok_or(Close(4002, "Decode error"))?;
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    let session_id = d["session_id"]
        .as_str()
        .ok_or(Close(4002, "Decode error"))?;
    let seq = d["seq"].as_u64().unwrap_or(0);
    let invalid = Reply::Send(json!({"op": 9, "d": false, "s": null, "t": null}));

    let mut state = core.state();
    let Some(account) = state.world.account_by_token(token).map(|a| a.id) else {
        return Err(Close(4004, "Authentication failed"));
    };
    if core.faults.gateway_refused(account) {
        return Err(Close(
            4000,
            "Unknown error (sandbox: gateway outage for this account)",
        ));
    }
    let Some(session) = state.sessions.get_mut(session_id) else {
        return Ok(invalid);
    };
    if session.account_id != account {
        return Ok(invalid);
    }
    // Dispatches after `seq` must all still be in the buffer.
    let oldest_kept = session
        .replay
        .front()
        .map(|k| k.seq)
        .unwrap_or(session.seq + 1);
    if seq > session.seq || seq + 1 < oldest_kept {
        return Err(Close(4007, "Invalid seq"));
    }
    if let Some(old) = session.conn.take() {
        old.send(Out::Close(4009, "Session resumed elsewhere".into()));
    }
    session.detach_generation += 1;
    session.conn = Some(ctx.conn.clone());
    for kept in session.replay_after(seq) {
        let text = Text::Dispatch(kept.clone());
        ctx.conn.send(Out::Frame { text, truth: None });
    }
    let replayed = session.seq - seq;
    state.enqueue(session_id, "RESUMED", json!({}));
    drop(state);
    core.log_event(&format!(
        "gateway: session {session_id} resumed, {replayed} dispatches replayed"
    ));
    ctx.session = Some(session_id.to_string());
    ctx.account = Some(account);
    Ok(Reply::None)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn set_status(core: &Arc<Core>, session_id: &str, status: Status, activities: Value) {
    let mut state = core.state();
    let Some(account) = state.sessions.get(session_id).map(|s| s.account_id) else {
        return;
    };
    let before = state.presence_snapshot(account);
    if let Some(s) = state.sessions.get_mut(session_id) {
        s.status = status;
        s.activities = activities;
    }
    state.broadcast_presence(account, before);
}

/// op 8: one GUILD_MEMBERS_CHUNK (the guilds are small): the members asked
/// for by `user_ids` (all of them otherwise), with their presences when
/// asked and the session holds GUILD_PRESENCES, as on Discord.
fn request_members(core: &Arc<Core>, ctx: &Ctx, d: &Value) {
    let Some(session_id) = &ctx.session else {
        return;
    };
    let id_of = |v: &Value| match v {
        Value::String(s) => s.parse::<u64>().ok(),
        v => v.as_u64(),
    };
    let guild_id = id_of(&d["guild_id"]);
    let wanted: Option<Vec<u64>> = match &d["user_ids"] {
        Value::Array(ids) => Some(ids.iter().filter_map(id_of).collect()),
        Value::Null => None,
        one => id_of(one).map(|id| vec![id]),
    };
    let mut state = core.state();
    let Some(g) = guild_id.and_then(|id| state.world.guild(id)).cloned() else {
        return;
    };
    let intents = state.sessions.get(session_id).map_or(0, |s| s.intents);
    // Discord (since 2025-08): asking for ALL members (query "", limit 0)
    // is limited to once per guild per session every 30 s; the answer to
    // an excess request is a RATE_LIMITED dispatch.
    let all = wanted.is_none() && d["query"].as_str() == Some("") && d["limit"].as_u64() == Some(0);
    if all && let Some(s) = state.sessions.get_mut(session_id) {
        let now = std::time::Instant::now();
        if let Some(last) = s.all_members_requested.get(&g.id)
            && now.duration_since(*last) < ALL_MEMBERS_EVERY
        {
            let retry_after = (ALL_MEMBERS_EVERY - now.duration_since(*last)).as_secs_f64();
            let d = json!({
                "opcode": 8,
                "retry_after": (retry_after * 1000.0).ceil() / 1000.0,
                "meta": {"guild_id": g.id.to_string(), "nonce": d.get("nonce").cloned().unwrap_or(Value::Null)},
            });
            state.enqueue(session_id, "RATE_LIMITED", d);
            return;
        }
        s.all_members_requested.insert(g.id, now);
    }
    let ids: Vec<u64> = match &wanted {
        Some(ids) => ids.clone(),
        None => g.members.clone(),
    };
    let members: Vec<Value> = ids
        .iter()
        .filter(|id| g.members.contains(id))
        .filter_map(|id| state.world.account(*id))
        .map(|a| model::member(&g, a))
        .collect();
    let not_found: Vec<String> = ids
        .iter()
        .filter(|id| !g.members.contains(id))
        .map(|id| id.to_string())
        .collect();
    let mut chunk = json!({
        "guild_id": g.id.to_string(),
        "members": members,
        "chunk_index": 0,
        "chunk_count": 1,
        "not_found": not_found,
    });
    if d["presences"].as_bool() == Some(true) && intents & intents::GUILD_PRESENCES != 0 {
        let presences: Vec<Value> = ids
            .iter()
            .filter(|id| g.members.contains(id))
            .map(|id| (*id, state.shown(*id, g.id)))
            .filter(|(_, s)| s.0 != "offline")
            .map(|(id, s)| model::presence(id, s.0, &s.1))
            .collect();
        chunk["presences"] = Value::Array(presences);
    }
    if let Some(nonce) = d.get("nonce").filter(|n| !n.is_null()) {
        chunk["nonce"] = nonce.clone();
    }
    state.enqueue(session_id, "GUILD_MEMBERS_CHUNK", chunk);
}

/// How often one session may request all members of one guild.
const ALL_MEMBERS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Close codes after which Discord does not let a session resume.
fn ends_session(code: u16) -> bool {
    matches!(code, 4004 | 4007 | 4009 | 4010..=4014)
}

fn connection_ended(core: &Arc<Core>, session_id: &str, conn_id: u64, end: End) {
    let terminate = match end {
        // A clean close ends the session (and the presence) at once.
        End::ClientClosed(Some(1000 | 1001)) => true,
        End::ServerClosed(code) => ends_session(code),
        End::ClientClosed(_) | End::Dropped => false,
    };
    let mut state = core.state();
    let Some(session) = state.sessions.get_mut(session_id) else {
        return;
    };
    if session.conn.as_ref().is_some_and(|c| c.id != conn_id) {
        return; // Already resumed on another connection.
    }
    session.conn = None;
    session.detach_generation += 1;
    let generation = session.detach_generation;
    if terminate {
        end_session(&mut state, session_id);
        return;
    }
    drop(state);
    let window = core.cfg.gateway.resume_window;
    let core = core.clone();
    let session_id = session_id.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        let mut state = core.state();
        let expired = state
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.conn.is_none() && s.detach_generation == generation);
        if expired {
            end_session(&mut state, &session_id);
        }
    });
}

/// Removes a session; its account's presence changes where it was the last.
pub(crate) fn end_session(state: &mut super::hub::State, session_id: &str) {
    let Some(account) = state.sessions.get(session_id).map(|s| s.account_id) else {
        return;
    };
    let before = state.presence_snapshot(account);
    state.sessions.remove(session_id);
    state.broadcast_presence(account, before);
}

/// Control: closes every connection of `account` with `code`.
pub fn close_account(core: &Core, account: u64, code: u16) -> usize {
    send_to_account(core, account, || {
        Out::Close(code, format!("closed by the sandbox control ({code})"))
    })
}

/// Control: op 7 RECONNECT to every connection of `account`.
pub fn reconnect_account(core: &Core, account: u64) -> usize {
    let text: Arc<str> = json!({"op": 7, "d": null, "s": null, "t": null})
        .to_string()
        .into();
    send_to_account(core, account, || Out::Frame {
        text: Text::Whole(text.clone()),
        truth: None,
    })
}

/// Control: op 9 INVALID_SESSION (not resumable) to every session of `account`.
pub fn invalidate_account(core: &Core, account: u64) -> usize {
    let mut state = core.state();
    let ids = state.sessions_of(account);
    for id in &ids {
        if let Some(conn) = state.sessions.get(id).and_then(|s| s.conn.clone()) {
            conn.send(Out::Invalidate);
        }
        end_session(&mut state, id);
    }
    ids.len()
}

fn send_to_account(core: &Core, account: u64, out: impl Fn() -> Out) -> usize {
    let state = core.state();
    let mut n = 0;
    for s in state.sessions.values().filter(|s| s.account_id == account) {
        if let Some(conn) = &s.conn {
            conn.send(out());
            n += 1;
        }
    }
    n
}

/// Whether `account` has a live gateway connection.
pub fn is_connected(core: &Core, account: u64) -> bool {
    core.state()
        .sessions
        .values()
        .any(|s| s.account_id == account && s.conn.is_some())
}

#[cfg(test)]
mod tests {
    use super::ZstdStream;

    /// Splits one message into its Raw blocks, checking the framing.
    fn raw_blocks(mut b: &[u8]) -> Vec<&[u8]> {
        let mut blocks = Vec::new();
        while !b.is_empty() {
            let header = u32::from_le_bytes([b[0], b[1], b[2], 0]);
            assert_eq!(header & 1, 0, "Last_Block: the frame stays open");
            assert_eq!((header >> 1) & 3, 0, "Raw_Block");
            let size = (header >> 3) as usize;
            assert!(size <= 128 * 1024, "Block_Size within the window");
            blocks.push(&b[3..3 + size]);
            b = &b[3 + size..];
        }
        blocks
    }

    #[test]
    fn zstd_stream_opens_one_frame_and_flushes_whole_blocks_per_message() {
        let mut z = ZstdStream::default();
        let first = z.message(br#"{"op":10}"#);
        assert_eq!(first[..4], [0x28, 0xb5, 0x2f, 0xfd], "magic number");
        assert_eq!(first[4], 0, "no content size, no checksum, no dictionary");
        assert_eq!(first[5], 7 << 3, "128 KiB window");
        assert_eq!(raw_blocks(&first[6..]), [br#"{"op":10}"#]);

        let second = z.message(b"{}");
        assert_eq!(raw_blocks(&second), [b"{}"], "no second frame header");

        let big = vec![b'x'; 300 * 1024];
        let third = z.message(&big);
        let blocks = raw_blocks(&third);
        assert_eq!(
            blocks.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [128 * 1024, 128 * 1024, 44 * 1024]
        );
        assert_eq!(blocks.concat(), big);
    }
}
