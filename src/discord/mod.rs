//! The prober's own Discord session: one serenity client per process
//! (gateway and REST), shared by every Discord probe.
//!
//! It keeps what the probes need, all fed by gateway events: whether the
//! prober's gateway is connected (and how often it dropped), its heartbeat
//! latency, the target bot's presence per guild, and the channel watchers
//! that match replies to probes ([`correlate`]).

pub mod correlate;
pub mod interactions;
pub mod send_gate;
pub mod turns;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serenity::all::{ChunkGuildFilter, GuildId, ShardMessenger, UserId};
use serenity::all::{
    Client, ClientBuilder, ConnectionStage, Context, Event, EventHandler, GatewayIntents, Http,
    HttpBuilder, Message, OnlineStatus, RawEventHandler, ShardManager, ShardStageUpdateEvent,
};
use serenity::async_trait;
use tokio::sync::{broadcast, oneshot, watch};

use crate::config::{Config, ProbeKind, Secret};
use crate::probe::reply::{EmbedView, ReplyView};
use correlate::{Correlator, Incoming, LateReply};

/// How long `connect` waits for READY before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often serenity's heartbeat latency is read.
const SHARD_POLL: Duration = Duration::from_secs(1);

/// What a gateway round trip (op 8) came back with.
enum PingAnswer {
    /// The member chunk: the target's presence, if presence data came.
    Chunk(Option<bool>),
    /// Discord's RATE_LIMITED event for the request.
    RateLimited,
}

/// Why a gateway round trip did not give an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingError {
    /// No answer in time: the gateway is not delivering.
    NoAnswer,
    /// Discord refused the request for now: the gateway works.
    RateLimited,
}

/// Something metrics should know at once, not at the next probe run.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The target's presence in a guild changed (or became known).
    Presence { guild_id: u64, online: bool },
    /// A late reply to a probe that had timed out.
    LateReply { probe: String },
    /// The prober's gateway connection went up or down.
    Gateway { connected: bool },
    /// The prober got a 429.
    RateLimited,
    /// The session ended for good (see [`DiscordSession::ended`]).
    Ended { token_rejected: bool },
}

/// Why the session could not start; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Discord rejected the prober's token (gateway close 4004): check the token in {0}")]
    InvalidToken(String),
    #[error(
        "Discord refused the privileged intents {0} for the prober (gateway close 4014): enable {1} for the prober's application in the Discord developer portal (Bot → Privileged Gateway Intents)"
    )]
    DisallowedIntents(String, String),
    #[error("could not connect the prober to Discord's gateway: {0}")]
    Gateway(String),
    #[error("no READY from Discord's gateway within {0:?}")]
    Timeout(Duration),
}

/// What the configured probes need from the gateway.
pub fn intents_for(config: &Config) -> GatewayIntents {
    let mut intents = GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES;
    let mut content_needed = false;
    for p in config.specs_with_modules() {
        match &p.kind {
            ProbeKind::Command(c) => {
                intents |= GatewayIntents::GUILD_MESSAGE_TYPING;
                content_needed |= !c.expect.is_empty() || c.error_reply.is_some();
            }
            ProbeKind::Presence(_) => intents |= GatewayIntents::GUILD_PRESENCES,
            // Content only to check responses against error_reply.
            ProbeKind::Interactions(i) => content_needed |= i.error_reply.is_some(),
            _ => {}
        }
    }
    // Command probes also read the bot's presence for their timeout detail.
    if config
        .specs_with_modules()
        .any(|p| matches!(p.kind, ProbeKind::Command(_)))
    {
        intents |= GatewayIntents::GUILD_PRESENCES;
    }
    let wanted = config
        .discord
        .as_ref()
        .and_then(|d| d.message_content_intent)
        .unwrap_or(content_needed);
    if wanted {
        intents |= GatewayIntents::MESSAGE_CONTENT;
    }
    intents
}

/// State shared with the event handler.
struct Shared {
    target_id: u64,
    prober_id: AtomicU64,
    connected: watch::Sender<bool>,
    /// Times the connection was lost since the first READY.
    disconnects: AtomicU64,
    ever_connected: AtomicBool,
    latency: Mutex<Option<Duration>>,
    /// guild → target online; absent until the guild's GUILD_CREATE.
    presence: Mutex<HashMap<u64, bool>>,
    /// channel → guild, from GUILD_CREATE.
    channel_guilds: Mutex<HashMap<u64, u64>>,
    correlator: Mutex<Correlator>,
    events: broadcast::Sender<SessionEvent>,
    ratelimited: AtomicU64,
    /// Sends gateway requests (op 8) on the prober's shard.
    messenger: Mutex<Option<ShardMessenger>>,
    /// Gateway pings awaiting their GUILD_MEMBERS_CHUNK, by nonce.
    pings: Mutex<HashMap<String, oneshot::Sender<PingAnswer>>>,
    /// The target's interaction responses, for `interactions` probes.
    interactions: Mutex<interactions::InteractionLog>,
    /// Woken on every entry added to `interactions`.
    interactions_seen: tokio::sync::Notify,
    /// Why the session ended for good (e.g. Discord rejected the token
    /// mid-session); `None` while it lives.
    ended: Mutex<Option<Ended>>,
    /// Set by `shutdown`: the client's end is then expected.
    shutting_down: AtomicBool,
    /// The client's shard manager, set before the client starts: a stage
    /// update is checked against the shard's stage now. Weak: the manager
    /// holds the handlers, which hold this.
    shard_manager: std::sync::OnceLock<std::sync::Weak<ShardManager>>,
    /// Taken by whatever marks the gateway up or down from serenity's
    /// events, which run as tasks of their own in no set order: a stage
    /// update reads the shard's stage and acts on it in one turn.
    up_down: tokio::sync::Mutex<()>,
}

/// Why a session ended for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: String,
    /// Discord rejected the prober's token (gateway close 4004).
    pub token_rejected: bool,
}

impl Shared {
    fn emit(&self, e: SessionEvent) {
        let _ = self.events.send(e);
    }

    fn set_connected(&self, up: bool) {
        let was = *self.connected.borrow();
        if was == up {
            return;
        }
        if !up {
            self.disconnects.fetch_add(1, Ordering::SeqCst);
        } else {
            self.ever_connected.store(true, Ordering::SeqCst);
        }
        // send_replace: the value must change even with no receiver left.
        self.connected.send_replace(up);
        self.emit(SessionEvent::Gateway { connected: up });
        if up {
            tracing::info!("prober gateway connected");
        } else {
            tracing::warn!("prober gateway disconnected");
        }
    }
}

/// A running session.
pub struct DiscordSession {
    shared: Arc<Shared>,
    pub http: Arc<Http>,
    shard_manager: Arc<ShardManager>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Probes sharing a channel take turns (see [`turns`]).
    pub(crate) turns: turns::ChannelTurns,
    pub send_interval: Duration,
    /// Spaces probe messages across channels (see [`send_gate`]).
    pub(crate) send_gate: send_gate::SendGate,
}

/// Stops a serenity client when dropped, unless disarmed (`manager` taken).
struct StopOnDrop {
    manager: Option<Arc<ShardManager>>,
    client: tokio::task::AbortHandle,
    shared: Arc<Shared>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(manager) = self.manager.take() else {
            return;
        };
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            // `DiscordSession::shutdown` has stopped the client already.
            self.client.abort();
            return;
        }
        let client = self.client.clone();
        // Stopping is async (it closes each shard with a 1000); a session
        // only exists inside a runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                manager.stop().await;
                client.abort();
            });
        } else {
            client.abort();
        }
    }
}

/// A session dropped without [`DiscordSession::shutdown`] still ends its
/// tasks, and so (see `StopOnDrop`) its serenity client.
impl Drop for DiscordSession {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl std::fmt::Debug for DiscordSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordSession")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

struct Handler {
    shared: Arc<Shared>,
}

fn view_of(m: &Message) -> ReplyView {
    ReplyView {
        content: m.content.clone(),
        embeds: m.embeds.iter().map(embed_view).collect(),
    }
}

fn embed_view(e: &serenity::all::Embed) -> EmbedView {
    EmbedView {
        title: e.title.clone().unwrap_or_default(),
        description: e.description.clone().unwrap_or_default(),
        fields: e
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.value.clone()))
            .collect(),
    }
}

fn incoming(m: &Message) -> Incoming {
    Incoming {
        id: m.id.get(),
        author_id: m.author.id.get(),
        from_webhook: m.webhook_id.is_some(),
        nonce: m.nonce.as_ref().map(|n| match n {
            serenity::all::Nonce::String(s) => s.clone(),
            serenity::all::Nonce::Number(n) => n.to_string(),
        }),
        reference: m
            .message_reference
            .as_ref()
            .and_then(|r| r.message_id.map(|id| id.get())),
        view: view_of(m),
        edited_at: m.edited_timestamp.map(|t| SystemTime::from(*t)),
    }
}

fn is_online(status: OnlineStatus) -> bool {
    !matches!(status, OnlineStatus::Offline | OnlineStatus::Invisible)
}

#[async_trait]
impl RawEventHandler for Handler {
    async fn raw_event(&self, ctx: Context, ev: Event) {
        // The moment the event's frame reached the machine (see
        // vendor/serenity/PATCHES.md), before it was read, parsed and dispatched:
        // replies that arrive together do not wait for each other.
        let at = ctx.received_at.unwrap_or_else(Instant::now);
        let s = &self.shared;
        match ev {
            Event::GuildMembersChunk(c) => {
                let Some(nonce) = c.nonce.clone() else {
                    return;
                };
                let Some(reply) = s
                    .pings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&nonce)
                else {
                    return;
                };
                let online = c.presences.as_ref().map(|ps| {
                    ps.iter()
                        .any(|p| p.user.id.get() == s.target_id && is_online(p.status))
                });
                let _ = reply.send(PingAnswer::Chunk(online));
            }
            // Discord's RATE_LIMITED (newer than serenity 0.12) for an op 8.
            Event::Unknown(u) if u.kind == "RATE_LIMITED" => {
                let Some(nonce) = u.value["meta"]["nonce"].as_str() else {
                    return;
                };
                if let Some(reply) = s
                    .pings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(nonce)
                {
                    let _ = reply.send(PingAnswer::RateLimited);
                }
            }
            Event::Ready(r) => {
                *s.messenger.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.shard.clone());
                s.prober_id.store(r.ready.user.id.get(), Ordering::SeqCst);
                s.correlator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_prober_id(r.ready.user.id.get());
                // A new session: presences are re-learnt from GUILD_CREATE.
                s.presence.lock().unwrap_or_else(|p| p.into_inner()).clear();
                // A second READY means the connection was lost (and the
                // session with it), seen or not.
                let _turn = s.up_down.lock().await;
                if s.ever_connected.load(Ordering::SeqCst) {
                    s.set_connected(false);
                }
                s.set_connected(true);
            }
            Event::Resumed(_) => {
                // A connection lost and resumed before the stage change was
                // seen (a 4000 close, op 7) is a lost connection all the same.
                let _turn = s.up_down.lock().await;
                s.set_connected(false);
                s.set_connected(true);
            }
            Event::GuildCreate(g) => {
                let guild = g.guild;
                let online = guild
                    .presences
                    .get(&serenity::all::UserId::new(s.target_id))
                    .is_some_and(|p| is_online(p.status));
                {
                    let mut cg = s.channel_guilds.lock().unwrap_or_else(|p| p.into_inner());
                    for id in guild.channels.keys() {
                        cg.insert(id.get(), guild.id.get());
                    }
                }
                s.presence
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(guild.id.get(), online);
                s.emit(SessionEvent::Presence {
                    guild_id: guild.id.get(),
                    online,
                });
            }
            Event::PresenceUpdate(p) => {
                let p = p.presence;
                if p.user.id.get() != s.target_id {
                    return;
                }
                let Some(guild) = p.guild_id else {
                    return;
                };
                let online = is_online(p.status);
                s.presence
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(guild.get(), online);
                s.emit(SessionEvent::Presence {
                    guild_id: guild.get(),
                    online,
                });
            }
            Event::MessageCreate(m) => {
                if m.message.author.id.get() == s.target_id
                    && let Some(r) = interactions::from_message(&m.message, view_of(&m.message))
                {
                    s.interactions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(r);
                    s.interactions_seen.notify_waiters();
                }
                let late = s
                    .correlator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_message(m.message.channel_id.get(), incoming(&m.message), at, false);
                report_late(s, late);
            }
            Event::MessageUpdate(u) => {
                // MESSAGE_UPDATE carries the whole message on v10.
                let (Some(author), Some(content)) = (u.author.clone(), u.content.clone()) else {
                    return;
                };
                if author.id.get() == s.target_id
                    && let Some(r) = interactions::from_update(
                        &u,
                        ReplyView {
                            content: content.clone(),
                            embeds: u.embeds.iter().flatten().map(embed_view).collect(),
                        },
                    )
                {
                    s.interactions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(r);
                    s.interactions_seen.notify_waiters();
                }
                let message = Incoming {
                    id: u.id.get(),
                    author_id: author.id.get(),
                    from_webhook: u.webhook_id.flatten().is_some(),
                    nonce: None,
                    reference: u
                        .message_reference
                        .clone()
                        .flatten()
                        .and_then(|r| r.message_id.map(|id| id.get())),
                    view: ReplyView {
                        content,
                        embeds: u.embeds.iter().flatten().map(embed_view).collect(),
                    },
                    edited_at: u.edited_timestamp.map(|t| SystemTime::from(*t)),
                };
                let late = s
                    .correlator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_message(u.channel_id.get(), message, at, true);
                report_late(s, late);
            }
            Event::TypingStart(t) => {
                s.correlator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_typing(t.channel_id.get(), t.user_id.get(), at);
            }
            _ => {}
        }
    }
}

#[async_trait]
impl EventHandler for Handler {
    // Stage changes reach only plain event handlers, not raw ones.
    async fn shard_stage_update(&self, _ctx: Context, u: ShardStageUpdateEvent) {
        let s = &self.shared;
        if !s.ever_connected.load(Ordering::SeqCst) {
            return;
        }
        let _turn = s.up_down.lock().await;
        let now = match s.shard_manager.get().and_then(std::sync::Weak::upgrade) {
            Some(m) => m.runners.lock().await.get(&u.shard_id).map(|r| r.stage),
            None => None,
        };
        if stage_update_means_down(u.new, now) {
            s.set_connected(false);
        }
    }
}

/// Whether a shard stage update to `new` marks the prober's gateway down,
/// given the shard's stage in the shard manager `now`. Only the way down:
/// "up" is known for sure from READY, RESUMED or an answered gateway round
/// trip (serenity reports stages loosely). And not when the shard is
/// connected now: serenity hands each stage update and each event to a
/// task of its own, so a busy runtime can run an update to "resuming"
/// after the RESUMED that ended it, which would mark a connection that is
/// up as down (and count a second loss). The shard runner records each
/// stage in the manager before it hands out that stage's update or any
/// later event, so the manager's stage is at least as new as the update.
fn stage_update_means_down(new: ConnectionStage, now: Option<ConnectionStage>) -> bool {
    !matches!(new, ConnectionStage::Connected) && now != Some(ConnectionStage::Connected)
}

fn report_late(s: &Shared, late: Option<LateReply>) {
    if let Some(l) = late {
        tracing::warn!(probe = %l.probe, "late reply from the target to a probe that had timed out");
        s.emit(SessionEvent::LateReply { probe: l.probe });
    }
}

impl DiscordSession {
    /// Connects the prober and waits for READY. `api_base` is Discord's
    /// (`https://discord.com`) or the sandbox's base URL.
    pub async fn connect(config: &Config, token: &Secret) -> Result<DiscordSession, ConnectError> {
        let discord = config
            .discord
            .as_ref()
            .ok_or_else(|| ConnectError::Gateway("no discord section in the config".into()))?;
        let target_id = config.target.user_id.unwrap_or(0);
        let intents = intents_for(config);
        let base = discord.api_base.as_str().trim_end_matches('/').to_string();
        // The ratelimiter stays off on purpose: it would wait (and retry)
        // inside the send and so hide delays inside the measured latency.
        // The prober sends far below Discord's limits, and a 429 is reported.
        let mut http = HttpBuilder::new(token.expose()).ratelimiter_disabled(true);
        if base != crate::config::DEFAULT_DISCORD_API_BASE {
            // serenity falls back to Discord's real gateway when it cannot
            // fetch the gateway URL; with another base (the sandbox) that
            // would silently probe the wrong Discord, so check it first.
            let url = format!("{base}/api/v10/gateway");
            let answer = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            if let Err(e) = answer {
                return Err(ConnectError::Gateway(format!(
                    "cannot reach the Discord API at {base}: {}",
                    crate::probe::describe_http_error(&e)
                )));
            }
            http = http.proxy(base);
        }
        let (connected, _) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            target_id,
            prober_id: AtomicU64::new(0),
            connected,
            disconnects: AtomicU64::new(0),
            ever_connected: AtomicBool::new(false),
            latency: Mutex::new(None),
            presence: Mutex::new(HashMap::new()),
            channel_guilds: Mutex::new(HashMap::new()),
            correlator: Mutex::new(Correlator::new(target_id, 0)),
            events,
            ratelimited: AtomicU64::new(0),
            messenger: Mutex::new(None),
            pings: Mutex::new(HashMap::new()),
            interactions: Mutex::new(Default::default()),
            interactions_seen: tokio::sync::Notify::new(),
            ended: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            shard_manager: std::sync::OnceLock::new(),
            up_down: tokio::sync::Mutex::new(()),
        });
        let mut client: Client = ClientBuilder::new_with_http(http.build(), intents)
            .raw_event_handler(Handler {
                shared: shared.clone(),
            })
            .event_handler(Handler {
                shared: shared.clone(),
            })
            .await
            .map_err(|e| ConnectError::Gateway(e.to_string()))?;
        let http = client.http.clone();
        let shard_manager = client.shard_manager.clone();
        let _ = shared.shard_manager.set(Arc::downgrade(&shard_manager));
        let mut ready = shared.connected.subscribe();
        let mut client_task = tokio::spawn(async move { client.start().await });
        // From here until the session is shut down, dropping this (a caller
        // dropped `connect` midway, the wrapper task below was aborted, the
        // session was dropped) stops the client: its shard runners are tasks
        // of their own that would stay connected to Discord.
        let stop_on_drop = StopOnDrop {
            manager: Some(shard_manager.clone()),
            client: client_task.abort_handle(),
            shared: shared.clone(),
        };

        let token_source = discord.token.to_string();
        let outcome = tokio::time::timeout(CONNECT_TIMEOUT, async {
            tokio::select! {
                r = ready.wait_for(|up| *up) => r.map(|_| ()).map_err(|_| ConnectError::Gateway("session ended".into())),
                ended = &mut client_task => Err(match ended {
                    Ok(Err(serenity::Error::Gateway(serenity::gateway::GatewayError::InvalidAuthentication))) => {
                        ConnectError::InvalidToken(token_source.clone())
                    }
                    Ok(Err(serenity::Error::Gateway(serenity::gateway::GatewayError::DisallowedGatewayIntents))) => {
                        let privileged = intents & (GatewayIntents::GUILD_PRESENCES | GatewayIntents::MESSAGE_CONTENT | GatewayIntents::GUILD_MEMBERS);
                        let names: Vec<&str> = privileged.iter_names().map(|(n, _)| n).collect();
                        let fixes: Vec<&str> = privileged
                            .iter_names()
                            .map(|(n, _)| match n {
                                "GUILD_PRESENCES" => "the Presence Intent",
                                "MESSAGE_CONTENT" => "the Message Content Intent",
                                _ => "the Server Members Intent",
                            })
                            .collect();
                        ConnectError::DisallowedIntents(names.join(", "), fixes.join(" and "))
                    }
                    Ok(Err(e)) => ConnectError::Gateway(e.to_string()),
                    Ok(Ok(())) => ConnectError::Gateway("the client stopped".into()),
                    Err(e) => ConnectError::Gateway(e.to_string()),
                }),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shard_manager.stop().await;
                return Err(e);
            }
            Err(_) => {
                shard_manager.stop().await;
                client_task.abort();
                return Err(ConnectError::Timeout(CONNECT_TIMEOUT));
            }
        }
        let client_task = {
            let shared = shared.clone();
            let token_source = discord.token.to_string();
            tokio::spawn(async move {
                let mut stop_on_drop = stop_on_drop;
                let ended = client_task.await;
                // The client has returned: nothing left to stop.
                stop_on_drop.manager = None;
                if shared.shutting_down.load(Ordering::SeqCst) {
                    return;
                }
                // The client never returns while the session lives: any end
                // leaves the prober blind, and must be seen.
                let (reason, token_rejected) = match ended {
                    Ok(Err(serenity::Error::Gateway(
                        serenity::gateway::GatewayError::InvalidAuthentication,
                    ))) => (
                        format!(
                            "Discord rejected the prober's token mid-session (gateway close 4004): check the token in {token_source}"
                        ),
                        true,
                    ),
                    Ok(Err(e)) => (format!("the prober's Discord client stopped: {e}"), false),
                    Ok(Ok(())) => ("the prober's Discord client stopped".to_string(), false),
                    Err(e) => (format!("the prober's Discord client failed: {e}"), false),
                };
                tracing::error!("{reason}");
                *shared.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ended {
                    reason,
                    token_rejected,
                });
                shared.set_connected(false);
                shared.emit(SessionEvent::Ended { token_rejected });
            })
        };
        let latency_task = {
            let shared = shared.clone();
            let manager = shard_manager.clone();
            tokio::spawn(async move {
                loop {
                    // Only the latency: the runner's stage is updated too
                    // rarely to tell whether the connection is up.
                    let latency = manager
                        .runners
                        .lock()
                        .await
                        .values()
                        .next()
                        .and_then(|r| r.latency);
                    if latency.is_some() {
                        *shared.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
                    }
                    tokio::time::sleep(SHARD_POLL).await;
                }
            })
        };
        let session = DiscordSession {
            shared,
            http,
            shard_manager,
            tasks: Mutex::new(vec![client_task, latency_task]),
            turns: turns::ChannelTurns::default(),
            send_interval: discord.send_interval,
            send_gate: send_gate::SendGate::default(),
        };
        Ok(session)
    }

    /// A round trip through the prober's gateway: asks Discord (op 8) for
    /// the target's member entry and presence in `guild_id` and waits for
    /// the answer. `Ok` proves the gateway delivers events right now, and
    /// carries the target's presence (`None` without presence data); `Err`
    /// means no answer within `wait`, and marks the gateway as down.
    pub async fn gateway_ping(
        &self,
        guild_id: u64,
        wait: Duration,
    ) -> Result<Option<bool>, PingError> {
        let s = &self.shared;
        let Some(messenger) = s
            .messenger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Err(PingError::NoAnswer);
        };
        let nonce = format!("ping-{}", rand::random::<u64>() >> 1);
        let (tx, rx) = oneshot::channel();
        s.pings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(nonce.clone(), tx);
        messenger.chunk_guild(
            GuildId::new(guild_id),
            None,
            true,
            ChunkGuildFilter::UserIds(vec![UserId::new(s.target_id.max(1))]),
            Some(nonce.clone()),
        );
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(PingAnswer::RateLimited)) => {
                // An answer all the same: the gateway delivers.
                s.set_connected(true);
                self.note_ratelimited();
                Err(PingError::RateLimited)
            }
            Ok(Ok(PingAnswer::Chunk(online))) => {
                s.set_connected(true);
                if let Some(online) = online {
                    let changed = s
                        .presence
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(guild_id, online)
                        != Some(online);
                    if changed {
                        s.emit(SessionEvent::Presence { guild_id, online });
                    }
                }
                Ok(online)
            }
            _ => {
                s.pings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&nonce);
                s.set_connected(false);
                Err(PingError::NoAnswer)
            }
        }
    }

    /// A guild the prober is in, for gateway pings.
    pub fn any_guild(&self) -> Option<u64> {
        self.shared
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .next()
            .copied()
    }

    /// Pings the gateway every `every`, so an outage shows in
    /// `prober_gateway_connected` even when no probe runs.
    pub fn watch_liveness(self: &Arc<Self>, every: Duration) {
        let session = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = session.upgrade() else {
                    return;
                };
                if let Some(guild) = s.any_guild() {
                    let _ = s
                        .gateway_ping(guild, every.min(Duration::from_secs(10)))
                        .await;
                }
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Why the session ended for good, if it did: it will not reconnect.
    pub fn ended(&self) -> Option<Ended> {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Times the gateway connection was lost so far.
    pub fn disconnects(&self) -> u64 {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    pub fn heartbeat_latency(&self) -> Option<Duration> {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn prober_id(&self) -> u64 {
        self.shared.prober_id.load(Ordering::SeqCst)
    }

    /// The target's presence in a guild: `None` until the guild is known.
    pub fn target_online(&self, guild_id: u64) -> Option<bool> {
        self.shared
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&guild_id)
            .copied()
    }

    pub fn guild_of_channel(&self, channel_id: u64) -> Option<u64> {
        self.shared
            .channel_guilds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&channel_id)
            .copied()
    }

    /// Interaction responses `reader` has not seen after `cursor`, the new
    /// cursor, and how many were lost to the log's bound (see
    /// [`interactions::InteractionLog`]).
    pub fn interactions_since(
        &self,
        reader: &InteractionReader,
        cursor: u64,
    ) -> (Vec<interactions::SeenResponse>, u64, u64) {
        self.shared
            .interactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(reader.id, cursor)
    }

    /// Completes when an interaction response is next added to the log
    /// (create it, then check the log, then await it: nothing is missed).
    pub fn interaction_seen(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.interactions_seen.notified()
    }

    /// A new reader of the interaction log, starting at its current end; the
    /// log keeps entries until every reader (dropped ones aside) read them.
    pub fn interactions_reader(&self) -> InteractionReader {
        let (id, start) = self
            .shared
            .interactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_reader();
        InteractionReader {
            shared: self.shared.clone(),
            id,
            start,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.shared.events.subscribe()
    }

    pub fn ratelimited_total(&self) -> u64 {
        self.shared.ratelimited.load(Ordering::SeqCst)
    }

    pub(crate) fn note_ratelimited(&self) {
        self.shared.ratelimited.fetch_add(1, Ordering::SeqCst);
        self.shared.emit(SessionEvent::RateLimited);
    }

    pub(crate) fn correlator(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.shared
            .correlator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn report_late(&self, late: Vec<LateReply>) {
        for l in late {
            report_late(&self.shared, Some(l));
        }
    }

    /// Closes the gateway connection cleanly (a 1000 close, so Discord ends
    /// the session at once).
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shard_manager.stop().await;
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// One reader of the interaction log (an `interactions` probe); dropping it
/// lets the log forget what only this reader had left to read.
pub struct InteractionReader {
    shared: Arc<Shared>,
    id: u64,
    /// The log's end when the reader was made: where it starts reading.
    pub start: u64,
}

impl std::fmt::Debug for InteractionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InteractionReader")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for InteractionReader {
    fn drop(&mut self) {
        self.shared
            .interactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_reader(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_update_marks_the_gateway_down_only_while_the_shard_is_not_connected() {
        use ConnectionStage::*;
        for new in [Disconnected, Connecting, Handshake, Identifying, Resuming] {
            // The shard is still on its way back: down.
            for now in [Some(new), Some(Resuming), Some(Disconnected), None] {
                assert!(stage_update_means_down(new, now), "{new:?} with {now:?}");
            }
            // Run late, after the shard had resumed: not down.
            assert!(!stage_update_means_down(new, Some(Connected)), "{new:?}");
        }
        for now in [Some(Connected), Some(Resuming), None] {
            assert!(!stage_update_means_down(Connected, now), "{now:?}");
        }
    }
}
