//! Interactions (slash commands), as Discord's "Receiving and Responding"
//! documents them: a human runs a command (control API), the application
//! gets INTERACTION_CREATE, answers with `POST /interactions/{id}/{token}/callback`
//! within 3 s, and manages its responses under `/webhooks/{app}/{token}`
//! for 15 minutes. Responses are messages with `interaction_metadata`.
//!
//! Everything kept per interaction is bounded: live tokens expire after 15
//! minutes (and at most [`MAX_LIVE`] are kept), ground truth keeps the
//! newest `retention.truth_records` records, as for messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use super::hub::{Core, State};
use super::intents;
use super::model;
use super::rest::ApiError;
use super::world::{Author, InteractionMeta, Message};

/// Discord: "you must send an initial response within 3 seconds".
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(3);
/// Discord: "Interaction tokens are valid for 15 minutes".
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Live interactions kept at most (the oldest go first).
const MAX_LIVE: usize = 10_000;
/// Edits remembered per record, and follow-ups per interaction.
const MAX_EDITS: usize = 100;

pub const EPHEMERAL: u64 = 1 << 6;
pub const LOADING: u64 = 1 << 7;

/// One interaction while its token is valid.
#[derive(Debug, Clone)]
struct Live {
    id: u64,
    application_id: u64,
    token: String,
    guild_id: u64,
    channel_id: u64,
    user_id: u64,
    name: String,
    created: SystemTime,
    acknowledged: bool,
    original: Option<u64>,
    /// Ephemeral responses live here, not in the channel: only the
    /// invoking user (and the token holder) ever sees them.
    ephemeral: Vec<Message>,
}

/// What really happened to one interaction; times are on the sandbox's clock.
#[derive(Debug, Clone)]
pub struct InteractionTruth {
    pub interaction_id: u64,
    pub application_id: u64,
    pub channel_id: u64,
    pub command: String,
    /// When it was created (its snowflake carries the same moment in ms).
    pub created: SystemTime,
    /// When the accepted callback arrived, and its type (4 or 5).
    pub callback: Option<(SystemTime, u64)>,
    pub response_message_id: Option<u64>,
    pub response_created: Option<SystemTime>,
    /// Each edit of the original response, in order.
    pub edits: Vec<SystemTime>,
    pub ephemeral: bool,
}

/// The same record with unix-epoch microseconds, for the control API.
#[derive(Debug, Clone, Serialize)]
pub struct InteractionTruthJson {
    pub interaction_id: String,
    pub application_id: String,
    pub channel_id: String,
    pub command: String,
    pub created_us: u64,
    pub callback_us: Option<u64>,
    pub callback_type: Option<u64>,
    pub response_message_id: Option<String>,
    pub response_created_us: Option<u64>,
    pub edits_us: Vec<u64>,
    pub ephemeral: bool,
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

impl InteractionTruth {
    pub fn to_json(&self) -> InteractionTruthJson {
        InteractionTruthJson {
            interaction_id: self.interaction_id.to_string(),
            application_id: self.application_id.to_string(),
            channel_id: self.channel_id.to_string(),
            command: self.command.clone(),
            created_us: unix_us(self.created),
            callback_us: self.callback.map(|c| unix_us(c.0)),
            callback_type: self.callback.map(|c| c.1),
            response_message_id: self.response_message_id.map(|m| m.to_string()),
            response_created_us: self.response_created.map(unix_us),
            edits_us: self.edits.iter().copied().map(unix_us).collect(),
            ephemeral: self.ephemeral,
        }
    }
}

#[derive(Default)]
struct Inner {
    live: HashMap<u64, Live>,
    /// Live interaction ids, oldest first, to expire them.
    order: VecDeque<u64>,
    truth: VecDeque<InteractionTruth>,
}

pub struct Interactions {
    inner: Mutex<Inner>,
    /// Ground-truth records kept at most (`retention.truth_records`; the
    /// oldest go first).
    truth_records: usize,
}

/// What a user asks the control API to run.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// The account name of the human running it.
    pub user: String,
    /// `channel` or `guild/channel`.
    pub channel: String,
    pub command: String,
    /// `{"name": value}`, or Discord's option objects as a list.
    #[serde(default)]
    pub options: Option<Value>,
}

impl Interactions {
    pub fn new(truth_records: usize) -> Self {
        Interactions {
            inner: Mutex::default(),
            truth_records,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ground truth, oldest first.
    pub fn truth(&self) -> Vec<InteractionTruth> {
        self.lock().truth.iter().cloned().collect()
    }

    /// How many interactions are held live (for tests of the bound).
    pub fn live_count(&self) -> usize {
        let mut inner = self.lock();
        expire(&mut inner, SystemTime::now());
        inner.live.len()
    }

    fn record(&self, id: u64, f: impl FnOnce(&mut InteractionTruth)) {
        let mut inner = self.lock();
        if let Some(r) = inner
            .truth
            .iter_mut()
            .rev()
            .find(|r| r.interaction_id == id)
        {
            f(r);
        }
    }
}

/// Drops interactions whose token has expired, and the oldest beyond the cap.
fn expire(inner: &mut Inner, now: SystemTime) {
    while let Some(&id) = inner.order.front() {
        let old = inner
            .live
            .get(&id)
            .is_none_or(|l| now.duration_since(l.created).unwrap_or_default() >= TOKEN_LIFETIME);
        if old || inner.order.len() > MAX_LIVE {
            inner.order.pop_front();
            inner.live.remove(&id);
        } else {
            break;
        }
    }
}

/// A human runs a slash command: dispatches INTERACTION_CREATE to the
/// application that registered it. Returns the interaction's id.
pub fn run(core: &Core, cmd: &RunCommand) -> Result<u64, String> {
    let mut state = core.state();
    let user = state
        .world
        .accounts
        .iter()
        .find(|a| a.name == cmd.user)
        .cloned()
        .ok_or_else(|| format!("interactions: no account named {:?}", cmd.user))?;
    if user.bot {
        return Err(format!(
            "interactions: {:?} is a bot account; only users run slash commands",
            cmd.user
        ));
    }
    let channel = state
        .world
        .find_channel(&cmd.channel)
        .cloned()
        .ok_or_else(|| format!("interactions: no channel named {:?}", cmd.channel))?;
    if !state.world.can_view(&channel, user.id) {
        return Err(format!(
            "interactions: {:?} cannot see {:?}",
            cmd.user, cmd.channel
        ));
    }
    let guild = state
        .world
        .guild(channel.guild_id)
        .cloned()
        .ok_or("interactions: channel without guild")?;
    // The guild's own commands first, then global ones, of apps in the guild.
    let found = [Some(guild.id), None].iter().find_map(|scope| {
        state.world.commands.iter().find_map(|((app, g), list)| {
            (g == scope && guild.members.contains(app))
                .then(|| {
                    list.iter()
                        .find(|c| c["name"] == json!(cmd.command) && c["type"] == json!(1))
                })
                .flatten()
                .map(|c| (*app, c.clone()))
        })
    });
    let (app, command) = found.ok_or_else(|| {
        format!(
            "interactions: no application in {:?} registered /{}",
            guild.name, cmd.command
        )
    })?;
    let options = options_of(&command, cmd.options.as_ref())?;
    let created = SystemTime::now();
    let id = core.ids.next_at(created);
    let token = format!("aW50ZXJhY3Rpb246{id}:{}", uuid::Uuid::new_v4().simple());
    let mut data = json!({
        "id": command["id"],
        "name": cmd.command,
        "type": 1,
        "options": options,
    });
    if command.get("guild_id").is_some() {
        data["guild_id"] = json!(guild.id.to_string());
    }
    let mut member = model::member(&guild, &user);
    member["permissions"] = json!(ALL_PERMISSIONS);
    let d = json!({
        "id": id.to_string(),
        "application_id": app.to_string(),
        "type": 2,
        "token": token,
        "version": 1,
        "data": data,
        "guild_id": guild.id.to_string(),
        "guild": {"id": guild.id.to_string(), "locale": "en-US", "features": []},
        "guild_locale": "en-US",
        "channel_id": channel.id.to_string(),
        "channel": model::channel(&channel, true),
        "member": member,
        "app_permissions": ALL_PERMISSIONS,
        "locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": guild.id.to_string()},
        "context": 0,
        "attachment_size_limit": 10_485_760,
    });
    {
        let mut inner = core.interactions.lock();
        expire(&mut inner, created);
        inner.live.insert(
            id,
            Live {
                id,
                application_id: app,
                token,
                guild_id: guild.id,
                channel_id: channel.id,
                user_id: user.id,
                name: cmd.command.clone(),
                created,
                acknowledged: false,
                original: None,
                ephemeral: Vec::new(),
            },
        );
        inner.order.push_back(id);
        expire(&mut inner, created);
        inner.truth.push_back(InteractionTruth {
            interaction_id: id,
            application_id: app,
            channel_id: channel.id,
            command: cmd.command.clone(),
            created,
            callback: None,
            response_message_id: None,
            response_created: None,
            edits: Vec::new(),
            ephemeral: false,
        });
        while inner.truth.len() > core.interactions.truth_records {
            inner.truth.pop_front();
        }
    }
    // Interactions need no intent; they go to the application's sessions only.
    state.dispatch_guild(guild.id, "INTERACTION_CREATE", 0, None, |_, s| {
        (s.account_id == app).then(|| d.clone())
    });
    drop(state);
    core.log_event(&format!(
        "interactions: {} ran /{} in #{} ({id})",
        cmd.user, cmd.command, channel.name
    ));
    Ok(id)
}

/// Every permission bit Discord defines today, as the guild owner has them.
const ALL_PERMISSIONS: &str = "2251799813685247";

/// The options as Discord sends them: a list of `{name, type, value}`.
fn options_of(command: &Value, given: Option<&Value>) -> Result<Value, String> {
    match given {
        None | Some(Value::Null) => Ok(json!([])),
        Some(Value::Array(list)) => Ok(Value::Array(list.clone())),
        Some(Value::Object(map)) => {
            let declared = command["options"].as_array().cloned().unwrap_or_default();
            let mut out = Vec::new();
            for (name, value) in map {
                let kind = declared
                    .iter()
                    .find(|o| o["name"] == json!(name))
                    .and_then(|o| o["type"].as_u64())
                    .ok_or_else(|| {
                        format!(
                            "interactions: /{} has no option {name:?}",
                            command["name"].as_str().unwrap_or("")
                        )
                    })?;
                out.push(json!({"name": name, "type": kind, "value": value}));
            }
            Ok(Value::Array(out))
        }
        Some(_) => Err("interactions: options must be an object or a list".into()),
    }
}

fn unknown_interaction() -> ApiError {
    ApiError::new(404, 10062, "Unknown interaction")
}

fn unknown_webhook() -> ApiError {
    ApiError::new(404, 10015, "Unknown Webhook")
}

/// `POST /interactions/{id}/{token}/callback`: types 4 (a message) and 5
/// (deferred: a LOADING message edited later). Returns the callback
/// response when `with_response` is set (discord.py 2.7 always sets it).
pub fn callback(
    core: &Core,
    id: &str,
    token: &str,
    body: &Value,
    with_response: bool,
) -> Result<Option<Value>, ApiError> {
    let now = SystemTime::now();
    let id: u64 = id.parse().map_err(|_| unknown_interaction())?;
    let live = {
        let mut inner = core.interactions.lock();
        expire(&mut inner, now);
        let live = inner
            .live
            .get_mut(&id)
            .filter(|l| l.token == token)
            .ok_or_else(unknown_interaction)?;
        if now.duration_since(live.created).unwrap_or_default() > RESPONSE_DEADLINE
            && !live.acknowledged
        {
            return Err(unknown_interaction());
        }
        if live.acknowledged {
            return Err(ApiError::new(
                400,
                40060,
                "Interaction has already been acknowledged",
            ));
        }
        live.clone()
    };
    let kind = body["type"].as_u64().unwrap_or(0);
    let data = &body["data"];
    let flags = data["flags"].as_u64().unwrap_or(0);
    let ephemeral = flags & EPHEMERAL != 0;
    let (content, embeds) = match kind {
        4 => super::rest::message_body(data)?,
        5 => (String::new(), Vec::new()),
        _ => {
            return Err(ApiError::form(
                "type",
                "BASE_TYPE_CHOICES",
                "Value must be one of {4, 5}.",
            ));
        }
    };
    let message = {
        let mut state = core.state();
        let created = SystemTime::now();
        let mid = core.ids.next_at(created);
        let message = Message {
            id: mid,
            channel_id: live.channel_id,
            guild_id: live.guild_id,
            author: Author::Account(live.application_id),
            content,
            embeds: model::normalise_embeds(&embeds),
            mentions: Vec::new(),
            reference: None,
            tts: data["tts"].as_bool().unwrap_or(false),
            nonce: None,
            edited: None,
            reactions: Vec::new(),
            interaction: Some(InteractionMeta {
                id: live.id,
                application_id: live.application_id,
                user_id: live.user_id,
                name: live.name.clone(),
                original_response: None,
            }),
            flags: (flags & EPHEMERAL) | if kind == 5 { LOADING } else { 0 },
        };
        {
            let mut inner = core.interactions.lock();
            if let Some(l) = inner.live.get_mut(&id) {
                l.acknowledged = true;
                l.original = Some(mid);
                if ephemeral {
                    l.ephemeral.push(message.clone());
                }
            }
        }
        core.interactions.record(id, |r| {
            r.callback = Some((now, kind));
            r.response_message_id = Some(mid);
            r.response_created = Some(created);
            r.ephemeral = ephemeral;
        });
        publish(core, &mut state, &message, "MESSAGE_CREATE", live.user_id);
        message
    };
    core.log_event(&format!(
        "interactions: callback type {kind} for /{} ({id})",
        live.name
    ));
    if !with_response {
        return Ok(None);
    }
    let state = core.state();
    let shown = model::message(&state.world, &message, live.application_id, true, false);
    Ok(Some(json!({
        "interaction": {
            "id": id.to_string(),
            "type": 2,
            "response_message_id": message.id.to_string(),
            "response_message_loading": kind == 5,
            "response_message_ephemeral": ephemeral,
        },
        "resource": {"type": kind, "message": shown},
    })))
}

/// Stores a (non-ephemeral) message in its channel and dispatches `event`;
/// an ephemeral one goes to the invoking user's sessions only.
fn publish(core: &Core, state: &mut State, message: &Message, event: &'static str, user: u64) {
    if message.flags & EPHEMERAL != 0 {
        let d = model::message(&state.world, message, user, true, true);
        let sessions: Vec<String> = state
            .sessions
            .values()
            .filter(|s| s.account_id == user && s.covers(&state.world, message.guild_id))
            .map(|s| s.id.clone())
            .collect();
        for s in sessions {
            state.enqueue(&s, event, d.clone());
        }
        return;
    }
    if event == "MESSAGE_CREATE" {
        core.truth.message_created(
            message.id,
            message.channel_id,
            message.author.id(),
            std::time::Instant::now(),
            std::time::Instant::now(),
        );
    }
    // Through the world's store, so responses count against
    // `retention.messages` like any message (an edit replaces in place).
    state.world.store_message(message.clone());
    state.dispatch_guild(
        message.guild_id,
        event,
        intents::GUILD_MESSAGES,
        Some(message.id),
        |world, s| {
            let show = s.intents & intents::MESSAGE_CONTENT != 0
                || world.content_visible_without_intent(message, s.account_id);
            Some(model::message(world, message, s.account_id, show, true))
        },
    );
}

/// The live interaction behind an application id and token.
fn by_token(core: &Core, app: &str, token: &str) -> Result<Live, ApiError> {
    let app: u64 = app.parse().map_err(|_| unknown_webhook())?;
    let mut inner = core.interactions.lock();
    expire(&mut inner, SystemTime::now());
    inner
        .live
        .values()
        .find(|l| l.token == token && l.application_id == app)
        .cloned()
        .ok_or_else(unknown_webhook)
}

/// Whether `token` is a live interaction's (the webhook routes are shared
/// with real webhooks).
pub fn owns_token(core: &Core, token: &str) -> bool {
    token.starts_with("aW50ZXJhY3Rpb246")
        && core
            .interactions
            .lock()
            .live
            .values()
            .any(|l| l.token == token)
}

/// A response message by `@original` or id, wherever it lives.
fn find_message(core: &Core, live: &Live, which: &str) -> Result<Message, ApiError> {
    let id = if which == "@original" {
        live.original
            .ok_or_else(|| ApiError::new(404, 10008, "Unknown Message"))?
    } else {
        which
            .parse()
            .map_err(|_| ApiError::new(404, 10008, "Unknown Message"))?
    };
    if let Some(m) = live.ephemeral.iter().find(|m| m.id == id) {
        return Ok(m.clone());
    }
    core.state()
        .world
        .message(live.channel_id, id)
        .filter(|m| m.interaction.as_ref().is_some_and(|i| i.id == live.id))
        .cloned()
        .ok_or_else(|| ApiError::new(404, 10008, "Unknown Message"))
}

/// `GET|PATCH|DELETE /webhooks/{app}/{token}/messages/{@original|id}`.
pub fn message_op(
    core: &Core,
    method: &axum::http::Method,
    app: &str,
    token: &str,
    which: &str,
    body: &Value,
) -> Result<Option<Value>, ApiError> {
    let live = by_token(core, app, token)?;
    let mut m = find_message(core, &live, which)?;
    let viewer = live.application_id;
    match *method {
        axum::http::Method::GET => {
            let state = core.state();
            Ok(Some(model::message(&state.world, &m, viewer, true, false)))
        }
        axum::http::Method::PATCH => {
            edit(core, &live, &mut m, body)?;
            let state = core.state();
            Ok(Some(model::message(&state.world, &m, viewer, true, false)))
        }
        axum::http::Method::DELETE => {
            let mut inner = core.interactions.lock();
            if let Some(l) = inner.live.get_mut(&live.id) {
                l.ephemeral.retain(|e| e.id != m.id);
            }
            drop(inner);
            let mut state = core.state();
            state.world.remove_message(m.channel_id, m.id);
            if m.flags & EPHEMERAL == 0 {
                let d = json!({
                    "id": m.id.to_string(),
                    "channel_id": m.channel_id.to_string(),
                    "guild_id": m.guild_id.to_string(),
                });
                state.dispatch_guild(
                    m.guild_id,
                    "MESSAGE_DELETE",
                    intents::GUILD_MESSAGES,
                    None,
                    |_, _| Some(d.clone()),
                );
            }
            Ok(None)
        }
        _ => Err(ApiError::new(405, 0, "405: Method Not Allowed")),
    }
}

/// Edits a response: new content or embeds, LOADING cleared, `edited_timestamp` set.
fn edit(core: &Core, live: &Live, m: &mut Message, body: &Value) -> Result<(), ApiError> {
    if let Some(c) = body["content"].as_str() {
        if c.chars().count() > 2000 {
            return Err(ApiError::form(
                "content",
                "BASE_TYPE_MAX_LENGTH",
                "Must be 2000 or fewer in length.",
            ));
        }
        m.content = c.to_string();
    }
    if let Some(e) = body["embeds"].as_array() {
        m.embeds = model::normalise_embeds(e);
    }
    let mut state = core.state();
    let edited = SystemTime::now();
    m.edited = Some(edited);
    m.flags &= !LOADING;
    if Some(m.id) == live.original {
        core.interactions.record(live.id, |r| {
            if r.edits.len() < MAX_EDITS {
                r.edits.push(edited);
            }
        });
    }
    if m.flags & EPHEMERAL != 0 {
        let mut inner = core.interactions.lock();
        if let Some(l) = inner.live.get_mut(&live.id)
            && let Some(e) = l.ephemeral.iter_mut().find(|e| e.id == m.id)
        {
            *e = m.clone();
        }
    }
    publish(core, &mut state, m, "MESSAGE_UPDATE", live.user_id);
    Ok(())
}

/// `POST /webhooks/{app}/{token}`: a follow-up. While the original is still
/// loading, it edits the original instead, as Discord documents for
/// backwards compatibility.
pub fn followup(core: &Core, app: &str, token: &str, body: &Value) -> Result<Value, ApiError> {
    let live = by_token(core, app, token)?;
    if !live.acknowledged {
        return Err(unknown_webhook());
    }
    if let Ok(mut original) = find_message(core, &live, "@original")
        && original.flags & LOADING != 0
    {
        super::rest::message_body(body)?;
        edit(core, &live, &mut original, body)?;
        let state = core.state();
        return Ok(model::message(
            &state.world,
            &original,
            live.application_id,
            true,
            false,
        ));
    }
    let (content, embeds) = super::rest::message_body(body)?;
    let flags = body["flags"].as_u64().unwrap_or(0) & EPHEMERAL;
    let mut state = core.state();
    let created = SystemTime::now();
    let message = Message {
        id: core.ids.next_at(created),
        channel_id: live.channel_id,
        guild_id: live.guild_id,
        author: Author::Account(live.application_id),
        content,
        embeds: model::normalise_embeds(&embeds),
        mentions: Vec::new(),
        reference: None,
        tts: body["tts"].as_bool().unwrap_or(false),
        nonce: None,
        edited: None,
        reactions: Vec::new(),
        interaction: Some(InteractionMeta {
            id: live.id,
            application_id: live.application_id,
            user_id: live.user_id,
            name: live.name.clone(),
            original_response: live.original,
        }),
        flags,
    };
    if flags != 0 {
        let mut inner = core.interactions.lock();
        if let Some(l) = inner.live.get_mut(&live.id)
            && l.ephemeral.len() < MAX_EDITS
        {
            l.ephemeral.push(message.clone());
        }
    }
    publish(core, &mut state, &message, "MESSAGE_CREATE", live.user_id);
    Ok(model::message(
        &state.world,
        &message,
        live.application_id,
        true,
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: u64, created: SystemTime) -> Live {
        Live {
            id,
            application_id: 1,
            token: format!("t{id}"),
            guild_id: 2,
            channel_id: 3,
            user_id: 4,
            name: "ping".into(),
            created,
            acknowledged: false,
            original: None,
            ephemeral: Vec::new(),
        }
    }

    #[test]
    fn live_interactions_expire_with_their_token_and_are_capped() {
        let now = SystemTime::now();
        let mut inner = Inner::default();
        let add = |inner: &mut Inner, id: u64, created: SystemTime| {
            inner.live.insert(id, live(id, created));
            inner.order.push_back(id);
        };
        add(&mut inner, 1, now - TOKEN_LIFETIME);
        add(&mut inner, 2, now - TOKEN_LIFETIME + Duration::from_secs(1));
        expire(&mut inner, now);
        assert_eq!(inner.order, [2], "a token lives 15 minutes");
        assert!(!inner.live.contains_key(&1));
        for id in 3..(MAX_LIVE as u64 + 13) {
            add(&mut inner, id, now);
        }
        expire(&mut inner, now);
        assert_eq!(inner.live.len(), MAX_LIVE);
        assert_eq!(inner.order.len(), MAX_LIVE);
        assert_eq!(inner.order.front(), Some(&13), "the oldest go first");
    }
}
