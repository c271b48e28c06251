//! The shared core: world, gateway sessions, and dispatch fan-out.
//!
//! One mutex guards the world and the sessions together, so an event is
//! created and queued to every session in one step: sequence numbers follow
//! creation order, and no session sees a message before it exists.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::SandboxConfig;
use super::faults::Faults;
use super::intents;
use super::model;
use super::truth::Truth;
use super::world::{Status, World, shard_of};
use crate::snowflake::Snowflakes;

/// What the connection task writes to its socket.
#[derive(Debug)]
pub enum Out {
    /// A payload; `truth` names the message (and event) whose dispatch this is.
    Frame {
        text: Arc<str>,
        truth: Option<(u64, &'static str)>,
    },
    /// Send op 9 INVALID_SESSION and forget the session on this connection.
    Invalidate,
    /// Close the socket with this code.
    Close(u16, String),
}

/// A gateway connection as the hub sees it: where its frames queue.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: u64,
    tx: mpsc::Sender<Out>,
    /// Cancelled when the queue overflowed: the connection's task drops
    /// the connection (its session stays resumable).
    pub overflow: CancellationToken,
}

/// How many frames may wait for one connection's socket: a whole replay
/// after RESUME (`replay_buffer`) and as many new dispatches. A client that
/// falls further behind is not reading; Discord documents no figure, but a
/// server cannot buffer for it without end, and every library treats a
/// dropped connection by resuming (or identifying again when it is further
/// behind than the replay buffer).
pub fn queue_capacity(replay_buffer: usize) -> usize {
    replay_buffer.saturating_mul(2).max(1)
}

impl Conn {
    /// A connection's end of the hub, and the queue its task writes from.
    pub fn new(id: u64, replay_buffer: usize) -> (Conn, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(queue_capacity(replay_buffer));
        let overflow = CancellationToken::new();
        (Conn { id, tx, overflow }, rx)
    }

    /// Queues `out` without waiting (the hub's lock is held); a full queue
    /// marks the connection to be dropped instead of growing.
    pub fn send(&self, out: Out) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(out) {
            self.overflow.cancel();
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub account_id: u64,
    pub shard: [u64; 2],
    pub intents: u64,
    pub status: Status,
    /// The activities of its last IDENTIFY presence or op 3, as Discord
    /// shows them (see `model::activities`).
    pub activities: Value,
    pub seq: u64,
    /// Recent dispatches for RESUME: (seq, payload).
    pub replay: VecDeque<(u64, Arc<str>)>,
    pub conn: Option<Conn>,
    /// Bumped on every detach, so a stale expiry timer does nothing.
    pub detach_generation: u64,
    /// When this session last asked for all members of a guild (op 8).
    pub all_members_requested: std::collections::HashMap<u64, std::time::Instant>,
}

impl Session {
    pub fn covers(&self, world: &World, guild_id: u64) -> bool {
        world.is_member(guild_id, self.account_id)
            && shard_of(guild_id, self.shard[1]) == self.shard[0]
    }
}

/// A status as shown to others, and the activities that go with it.
pub type Shown = (&'static str, Value);

pub struct State {
    pub world: World,
    pub sessions: HashMap<String, Session>,
    replay_cap: usize,
}

pub struct Core {
    pub cfg: SandboxConfig,
    pub ids: Snowflakes,
    state: Mutex<State>,
    pub truth: Truth,
    pub interactions: super::interactions::Interactions,
    pub faults: Faults,
    next_conn: AtomicU64,
    /// The gateway URL clients are told to use (set once bound).
    pub gateway_url: std::sync::OnceLock<String>,
}

impl Core {
    pub fn new(cfg: SandboxConfig) -> Result<Arc<Core>, String> {
        let ids = Snowflakes::default();
        let world = World::build(&cfg, &ids)?;
        let replay_cap = cfg.gateway.replay_buffer;
        let truth = Truth::new(cfg.retention.truth_records);
        let interactions = super::interactions::Interactions::new(cfg.retention.truth_records);
        Ok(Arc::new(Core {
            cfg,
            ids,
            state: Mutex::new(State {
                world,
                sessions: HashMap::new(),
                replay_cap,
            }),
            truth,
            interactions,
            faults: Faults::default(),
            next_conn: AtomicU64::new(1),
            gateway_url: std::sync::OnceLock::new(),
        }))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn gateway_url(&self) -> String {
        self.gateway_url.get().cloned().unwrap_or_default()
    }

    pub fn log_event(&self, what: &str) {
        tracing::info!(target: "twi_sandbox", "{what}");
    }
}

impl State {
    /// Appends a dispatch to a session's sequence and sends it if connected.
    pub fn enqueue(&mut self, session_id: &str, event: &'static str, d: Value) {
        let cap = self.replay_cap;
        if let Some(s) = self.sessions.get_mut(session_id) {
            push(s, event, d, None, cap);
        }
    }

    /// Sends a guild event to every session that covers the guild and holds
    /// `intent` (0: no intent needed). `build` shapes the payload for each
    /// recipient, or returns `None` to skip it.
    pub fn dispatch_guild(
        &mut self,
        guild_id: u64,
        event: &'static str,
        intent: u64,
        truth: Option<u64>,
        build: impl Fn(&World, &Session) -> Option<Value>,
    ) {
        let cap = self.replay_cap;
        let State {
            world, sessions, ..
        } = self;
        for s in sessions.values_mut() {
            if (intent == 0 || s.intents & intent != 0)
                && s.covers(world, guild_id)
                && let Some(d) = build(world, s)
            {
                push(s, event, d, truth, cap);
            }
        }
    }

    /// How `account` shows in `guild`: its best live or resumable session.
    pub fn shown_status(&self, account: u64, guild_id: u64) -> &'static str {
        self.shown(account, guild_id).0
    }

    /// The status and activities `account` shows in `guild`, from the
    /// session that decides its status.
    pub fn shown(&self, account: u64, guild_id: u64) -> Shown {
        let mut best: Shown = ("offline", Value::Array(Vec::new()));
        for s in self.sessions.values() {
            if s.account_id == account && s.covers(&self.world, guild_id) {
                let shown = s.status.shown();
                if best.0 == "offline" || (shown == "online" && best.0 != "online") {
                    let activities = if shown == "offline" {
                        Value::Array(Vec::new())
                    } else {
                        s.activities.clone()
                    };
                    best = (shown, activities);
                }
            }
        }
        best
    }

    /// The account's presence in each of its guilds, to diff after a change.
    pub fn presence_snapshot(&self, account: u64) -> Vec<(u64, Shown)> {
        self.world
            .guilds
            .iter()
            .filter(|g| g.members.contains(&account))
            .map(|g| (g.id, self.shown(account, g.id)))
            .collect()
    }

    /// Sends PRESENCE_UPDATE to the others in each guild where the account's
    /// status or activities changed since `before`.
    pub fn broadcast_presence(&mut self, account: u64, before: Vec<(u64, Shown)>) {
        for (guild_id, old) in before {
            let new = self.shown(account, guild_id);
            if new == old {
                continue;
            }
            let d = model::presence_update(guild_id, account, new.0, &new.1);
            self.dispatch_guild(
                guild_id,
                "PRESENCE_UPDATE",
                intents::GUILD_PRESENCES,
                None,
                |_, s| (s.account_id != account).then(|| d.clone()),
            );
        }
    }

    pub fn sessions_of(&self, account: u64) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.account_id == account)
            .map(|s| s.id.clone())
            .collect()
    }
}

fn push(s: &mut Session, event: &'static str, d: Value, truth: Option<u64>, cap: usize) {
    s.seq += 1;
    let text: Arc<str> = json!({"op": 0, "t": event, "s": s.seq, "d": d})
        .to_string()
        .into();
    s.replay.push_back((s.seq, text.clone()));
    while s.replay.len() > cap {
        s.replay.pop_front();
    }
    if let Some(conn) = &s.conn {
        let truth = truth.map(|id| (id, event));
        conn.send(Out::Frame { text, truth });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(conn: Conn) -> Session {
        Session {
            id: "s".into(),
            account_id: 1,
            shard: [0, 1],
            intents: 0,
            status: Status::Online,
            activities: Value::Array(Vec::new()),
            seq: 0,
            replay: VecDeque::new(),
            conn: Some(conn),
            detach_generation: 0,
            all_members_requested: HashMap::new(),
        }
    }

    #[test]
    fn a_connection_that_does_not_read_is_dropped_when_its_queue_is_full() {
        let replay = 3;
        let (conn, mut rx) = Conn::new(1, replay);
        let overflow = conn.overflow.clone();
        let mut s = session(conn);
        for _ in 0..queue_capacity(replay) {
            push(&mut s, "TYPING_START", json!({}), None, replay);
        }
        assert!(!overflow.is_cancelled(), "a full queue is still kept");
        push(&mut s, "TYPING_START", json!({}), None, replay);
        assert!(overflow.is_cancelled(), "one more frame overflows");
        for _ in 0..100 {
            push(&mut s, "TYPING_START", json!({}), None, replay);
        }
        assert_eq!(rx.len(), queue_capacity(replay), "the queue never grows");
        assert_eq!(s.replay.len(), replay, "nor the replay buffer");
        assert_eq!(s.replay.back().map(|r| r.0), Some(s.seq));
        // The frames already queued are still in order.
        let Ok(Out::Frame { text, .. }) = rx.try_recv() else {
            panic!("a frame")
        };
        assert!(text.contains(r#""s":1"#), "{text}");
    }
}
