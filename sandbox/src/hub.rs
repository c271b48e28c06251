//! The shared core: world, gateway sessions, and dispatch fan-out.
//!
//! One mutex guards the world and the sessions together, so an event is
//! created and queued to every session in one step: sequence numbers follow
//! creation order, and no session sees a message before it exists.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
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
        text: Text,
        truth: Option<(u64, &'static str)>,
    },
    /// Send op 9 INVALID_SESSION and forget the session on this connection.
    Invalidate,
    /// Close the socket with this code.
    Close(u16, String),
}

/// A frame's text: whole, or a dispatch's, built when written so that a
/// queue (a replay after RESUME, a slow reader) holds shared payloads,
/// not copies.
#[derive(Debug)]
pub enum Text {
    Whole(Arc<str>),
    Dispatch(Kept),
}

impl Text {
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Text::Whole(t) => std::borrow::Cow::Borrowed(t),
            Text::Dispatch(k) => std::borrow::Cow::Owned(k.frame()),
        }
    }
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
    /// Recent dispatches for RESUME, oldest first.
    pub replay: VecDeque<Kept>,
    pub conn: Option<Conn>,
    /// Bumped on every detach, so a stale expiry timer does nothing.
    pub detach_generation: u64,
    /// When this session last asked for all members of a guild (op 8).
    pub all_members_requested: std::collections::HashMap<u64, std::time::Instant>,
}

/// A dispatch kept for RESUME. Its payload's text is shared with every
/// other session that got the same payload, and the frame is rebuilt when
/// sent: one guild event sent to several sessions is kept once, and a
/// session that starts anew (the bot after an outage) refills its buffer
/// with entries, not copies.
#[derive(Debug, Clone)]
pub struct Kept {
    pub seq: u64,
    pub event: &'static str,
    pub d: Arc<str>,
}

impl Kept {
    /// The frame as sent live and as replayed after RESUME.
    pub fn frame(&self) -> String {
        // Event names are fixed identifiers (`MESSAGE_CREATE`): no escaping.
        debug_assert!(
            self.event
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_')
        );
        format!(
            r#"{{"op":0,"t":"{}","s":{},"d":{}}}"#,
            self.event, self.seq, self.d
        )
    }
}

impl Session {
    /// The dispatches after `seq`, to replay after RESUME.
    pub fn replay_after(&self, seq: u64) -> impl Iterator<Item = &Kept> + '_ {
        self.replay.iter().filter(move |k| k.seq > seq)
    }

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
            push(s, event, d.to_string().into(), None, cap);
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
        // This event's payloads so far: most recipients get the same one.
        let mut texts: Vec<Arc<str>> = Vec::new();
        for s in sessions.values_mut() {
            if (intent == 0 || s.intents & intent != 0)
                && s.covers(world, guild_id)
                && let Some(d) = build(world, s)
            {
                let d = shared(&mut texts, &d);
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

    /// The replay buffers' size: dispatches kept for RESUME across all
    /// sessions, and their payloads' bytes, each shared text counted once.
    pub fn replay_size(&self) -> (usize, usize) {
        let mut seen = std::collections::HashSet::new();
        let kept = self.sessions.values().flat_map(|s| &s.replay);
        kept.fold((0, 0), |(n, bytes), k| {
            let new = seen.insert(Arc::as_ptr(&k.d) as *const u8);
            (n + 1, bytes + if new { k.d.len() } else { 0 })
        })
    }

    pub fn sessions_of(&self, account: u64) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.account_id == account)
            .map(|s| s.id.clone())
            .collect()
    }
}

/// `d` as text: an earlier recipient's text when equal, so they share it.
fn shared(texts: &mut Vec<Arc<str>>, d: &Value) -> Arc<str> {
    let text = d.to_string();
    if let Some(same) = texts.iter().find(|t| ***t == *text) {
        return same.clone();
    }
    let text: Arc<str> = text.into();
    texts.push(text.clone());
    text
}

fn push(s: &mut Session, event: &'static str, d: Arc<str>, truth: Option<u64>, cap: usize) {
    s.seq += 1;
    let kept = Kept {
        seq: s.seq,
        event,
        d,
    };
    if let Some(conn) = &s.conn {
        let truth = truth.map(|id| (id, event));
        conn.send(Out::Frame {
            text: Text::Dispatch(kept.clone()),
            truth,
        });
    }
    s.replay.push_back(kept);
    while s.replay.len() > cap {
        s.replay.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(conn: Conn) -> Session {
        session_of("s", 1, conn)
    }

    fn session_of(id: &str, account_id: u64, conn: Conn) -> Session {
        Session {
            id: id.into(),
            account_id,
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
            push(&mut s, "TYPING_START", "{}".into(), None, replay);
        }
        assert!(!overflow.is_cancelled(), "a full queue is still kept");
        push(&mut s, "TYPING_START", "{}".into(), None, replay);
        assert!(overflow.is_cancelled(), "one more frame overflows");
        for _ in 0..100 {
            push(&mut s, "TYPING_START", "{}".into(), None, replay);
        }
        assert_eq!(rx.len(), queue_capacity(replay), "the queue never grows");
        assert_eq!(s.replay.len(), replay, "nor the replay buffer");
        assert_eq!(s.replay.back().map(|k| k.seq), Some(s.seq));
        // The frames already queued are still in order.
        let Ok(Out::Frame { text, .. }) = rx.try_recv() else {
            panic!("a frame")
        };
        let text = text.text();
        assert!(text.contains(r#""s":1"#), "{text}");
    }

    /// What a connection's queue holds: the frames' texts.
    fn frames(rx: &mut mpsc::Receiver<Out>) -> Vec<String> {
        std::iter::from_fn(|| match rx.try_recv().ok()? {
            Out::Frame { text, .. } => Some(text.text().into_owned()),
            other => panic!("a frame, not {other:?}"),
        })
        .collect()
    }

    #[test]
    fn sessions_given_the_same_payload_keep_it_once_and_replay_what_was_sent() {
        let cfg = SandboxConfig::default();
        let world = World::build(&cfg, &Snowflakes::default()).unwrap();
        let guild = world.guilds[0].id;
        let account = |name: &str| world.accounts.iter().find(|a| a.name == name).unwrap().id;
        let (prober, bot) = (account("prober"), account("twi-bot-shard"));
        let mut state = State {
            world,
            sessions: HashMap::new(),
            replay_cap: 10,
        };
        let (conn_a, mut rx_a) = Conn::new(1, 10);
        let (conn_b, mut rx_b) = Conn::new(2, 10);
        state
            .sessions
            .insert("a".into(), session_of("a", prober, conn_a));
        state
            .sessions
            .insert("b".into(), session_of("b", bot, conn_b));
        state.enqueue("a", "READY", json!({"v": 10}));
        let same = json!({"id": "1", "content": "!help \"quoted\" \u{1f3d3}"});
        state.dispatch_guild(guild, "MESSAGE_CREATE", 0, Some(1), |_, _| {
            Some(same.clone())
        });
        // As without MESSAGE_CONTENT: one recipient's payload differs.
        state.dispatch_guild(guild, "MESSAGE_UPDATE", 0, None, |_, s| {
            Some(json!({"id": "1", "content": if s.id == "a" { "" } else { "x" }}))
        });

        let a = &state.sessions["a"];
        let b = &state.sessions["b"];
        assert_eq!((a.seq, b.seq), (3, 2));
        let created = (&a.replay[1], &b.replay[0]);
        assert_eq!(
            (created.0.event, created.1.event),
            ("MESSAGE_CREATE", "MESSAGE_CREATE")
        );
        assert!(Arc::ptr_eq(&created.0.d, &created.1.d), "one text for both");
        let same_text = created.0.d.clone();
        assert!(
            !Arc::ptr_eq(&a.replay[2].d, &b.replay[1].d),
            "different payloads"
        );

        // Replay after RESUME: the frames sent live after that seq, the same text.
        for (s, rx) in [(a, &mut rx_a), (b, &mut rx_b)] {
            let live = frames(rx);
            assert_eq!(live.len() as u64, s.seq);
            for seq in 0..=s.seq {
                let replayed: Vec<_> = s.replay_after(seq).map(Kept::frame).collect();
                assert_eq!(replayed, live[seq as usize..], "{} after {seq}", s.id);
            }
            for (i, text) in live.iter().enumerate() {
                let v: Value = serde_json::from_str(text).expect("valid JSON");
                assert_eq!(
                    (v["op"].as_u64(), v["s"].as_u64()),
                    (Some(0), Some(i as u64 + 1))
                );
                assert_eq!(v["t"], json!(s.replay[i].event));
                assert_eq!(
                    v["d"],
                    serde_json::from_str::<Value>(&s.replay[i].d).unwrap()
                );
            }
        }
        let bytes: usize = [&a.replay[0].d, &same_text, &a.replay[2].d, &b.replay[1].d]
            .iter()
            .map(|d| d.len())
            .sum();
        assert_eq!(state.replay_size(), (5, bytes), "shared text counted once");
        let v: Value = serde_json::from_str(&a.replay[1].frame()).unwrap();
        assert_eq!(v["d"], same, "the payload comes through unchanged");
    }
}
