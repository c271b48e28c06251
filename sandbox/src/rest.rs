//! REST v10 under `/api/v10/`: authentication, Discord's error shapes and
//! codes, rate limits with Discord's headers, and the routes clients use.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::hub::Core;
use super::intents;
use super::interactions;
use super::model;
use super::ratelimit::{Decision, Headers, RateLimiter};
use super::world::{Access, Author, Message, Reaction};

/// Discord's limit on message content, in characters.
const MAX_CONTENT: usize = 2000;
const MAX_EMBEDS: usize = 10;
/// Application commands per scope: slash commands, user and message menus.
const MAX_COMMANDS: [(u64, usize); 3] = [(1, 100), (2, 15), (3, 15)];
/// Routes without a stricter limit share this one per account.
const DEFAULT_ROUTE_LIMIT: (u32, Duration) = (50, Duration::from_secs(1));

pub struct Rest {
    pub core: Arc<Core>,
    pub limiter: RateLimiter,
}

/// An error answer in Discord's JSON shape.
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: u64, message: &str) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).expect("valid status"),
            body: json!({"message": message, "code": code}),
        }
    }

    pub(crate) fn form(field: &str, code: &str, message: &str) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {field: {"_errors": [{"code": code, "message": message}]}},
            }),
        }
    }

    /// A form error at a nested place in the body (`[]`: the body itself).
    fn form_at(path: &[&str], code: &str, message: &str) -> Self {
        let mut errors = json!({"_errors": [{"code": code, "message": message}]});
        for key in path.iter().rev() {
            errors = json!({ *key: errors });
        }
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"message": "Invalid Form Body", "code": 50035, "errors": errors}),
        }
    }

    fn unauthorized() -> Self {
        Self::new(401, 0, "401: Unauthorized")
    }
    fn not_found() -> Self {
        Self::new(404, 0, "404: Not Found")
    }
    fn unknown_channel() -> Self {
        Self::new(404, 10003, "Unknown Channel")
    }
    fn unknown_message() -> Self {
        Self::new(404, 10008, "Unknown Message")
    }
    fn missing_access() -> Self {
        Self::new(403, 50001, "Missing Access")
    }
    fn missing_permissions() -> Self {
        Self::new(403, 50013, "Missing Permissions")
    }
}

/// A parsed request.
pub(crate) struct Req<'a> {
    method: Method,
    segments: Vec<&'a str>,
    query: Vec<(String, String)>,
    body: Value,
    arrived: Instant,
}

impl Req<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// JSON with `Content-Type: application/json` exactly, as Discord sends it.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn no_content() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn add_rate_headers(r: &mut Response, h: &Headers) {
    let headers = r.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("x-ratelimit-limit", h.limit.to_string());
    put("x-ratelimit-remaining", h.remaining.to_string());
    put("x-ratelimit-reset", format!("{:.3}", h.reset));
    put("x-ratelimit-reset-after", format!("{:.3}", h.reset_after));
    put("x-ratelimit-bucket", h.bucket.clone());
}

fn too_many_requests(h: &Headers, retry_after: f64, global: bool) -> Response {
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": (retry_after * 1000.0).ceil() / 1000.0,
        "global": global,
        "code": 0,
    });
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    add_rate_headers(&mut r, h);
    let headers = r.headers_mut();
    headers.insert(
        "retry-after",
        HeaderValue::from_str(&(retry_after.ceil() as u64).max(1).to_string()).expect("digits"),
    );
    headers.insert("via", HeaderValue::from_static("1.1 google"));
    headers.insert(
        "x-ratelimit-scope",
        HeaderValue::from_static(if global { "global" } else { "user" }),
    );
    if global {
        headers.insert("x-ratelimit-global", HeaderValue::from_static("true"));
    }
    r
}

pub(crate) fn parse_id(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// A boolean query parameter as Discord reads it: `true`/`false` or `1`/`0`
/// (discord.py sends `wait=1`), in any case; anything else is a form error.
pub(crate) fn query_bool(req: &Req<'_>, name: &str) -> Result<Option<bool>, ApiError> {
    let Some(v) = req.query(name) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(Some(true)),
        "false" | "0" => Ok(Some(false)),
        _ => Err(ApiError::form(
            name,
            "BOOLEAN_TYPE_COERCE",
            &format!("Value \"{v}\" is not a valid boolean."),
        )),
    }
}

/// A snowflake in a JSON body: a string, or a number (never through f64).
fn json_id(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

impl Rest {
    /// Handles any request under `/api/v10/`.
    pub async fn handle(
        self: Arc<Self>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let arrived = Instant::now();
        let path = uri.path().strip_prefix("/api/v10").unwrap_or(uri.path());
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let body = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"message": "400: Bad Request", "code": 50109}),
                    );
                }
            }
        };
        let req = Req {
            method,
            segments,
            query,
            body,
            arrived,
        };
        let (route, major) = route_of(&req);
        if let Some(status) = self.core.faults.http_status(req.method.as_str(), path) {
            self.core
                .log_event(&format!("rest: forced {status} on {} {path}", req.method));
            return self.forced(status, &route);
        }
        // Webhook execution authenticates with the token in the URL.
        let is_public = matches!(
            req.segments.as_slice(),
            ["gateway"] | ["webhooks", ..] | ["interactions", ..]
        );
        let account = match auth(&self.core, &headers) {
            Some(a) => Some(a),
            None if is_public => None,
            None => return json_response(StatusCode::UNAUTHORIZED, &ApiError::unauthorized().body),
        };
        let rate_key = account.unwrap_or(0);
        let global = self.core.cfg.rate_limits.global_per_second;
        // Interaction endpoints are not bound to the global rate limit.
        let interaction_route = match req.segments.as_slice() {
            ["interactions", ..] => true,
            ["webhooks", _, token, ..] => interactions::owns_token(&self.core, token),
            _ => false,
        };
        if !interaction_route
            && let Decision::Limited {
                headers,
                retry_after,
                ..
            } = self
                .limiter
                .check("global", "global", rate_key, global, Duration::from_secs(1))
        {
            return too_many_requests(&headers, retry_after, true);
        }
        let (limit, per) = self.route_limit(&route);
        let rate =
            match self
                .limiter
                .check(&route, &format!("{route}:{major}"), rate_key, limit, per)
            {
                Decision::Allowed(h) => h,
                Decision::Limited {
                    headers,
                    retry_after,
                    global,
                } => {
                    self.core
                        .log_event(&format!("rest: 429 on {route} for account {rate_key}"));
                    return too_many_requests(&headers, retry_after, global);
                }
            };
        let mut response = match self.route(&req, account) {
            Ok(r) => r,
            Err(e) => json_response(e.status, &e.body),
        };
        add_rate_headers(&mut response, &rate);
        response
    }

    /// The limit and window of a route's bucket.
    fn route_limit(&self, route: &str) -> (u32, Duration) {
        if route == "POST /channels/{id}/messages" || route == "POST /webhooks/{id}/{token}" {
            (
                self.core.cfg.rate_limits.messages_per_channel,
                self.core.cfg.rate_limits.messages_window,
            )
        } else {
            DEFAULT_ROUTE_LIMIT
        }
    }

    fn forced(&self, status: u16, route: &str) -> Response {
        if status == 429 {
            // The route's own bucket, as a real 429 names it: libraries key
            // their queues by X-RateLimit-Bucket (discord.js) and size them
            // by X-RateLimit-Limit.
            let (limit, _) = self.route_limit(route);
            let h = Headers {
                limit,
                remaining: 0,
                reset: SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
                    + 1.0,
                reset_after: 1.0,
                bucket: super::ratelimit::bucket_hash(route),
            };
            return too_many_requests(&h, 1.0, false);
        }
        let text = format!(
            "{status}: {}",
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Server Error")
        );
        json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &json!({"message": text, "code": 0}),
        )
    }

    fn route(&self, req: &Req<'_>, account: Option<u64>) -> Result<Response, ApiError> {
        let me = account.unwrap_or(0);
        let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
        if let Some(r) = self.route_interaction(req) {
            return r;
        }
        match (&req.method, req.segments.as_slice()) {
            (&Method::GET, ["gateway"]) => ok(json!({"url": self.core.gateway_url()})),
            (&Method::GET, ["gateway", "bot"]) => ok(json!({
                "url": self.core.gateway_url(),
                "shards": self.core.cfg.gateway.recommended_shards,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1},
            })),
            (&Method::GET, ["users", "@me"]) => {
                let state = self.core.state();
                let a = state.world.account(me).ok_or_else(ApiError::unauthorized)?;
                ok(model::current_user(a))
            }
            (&Method::GET, ["applications", "@me"] | ["oauth2", "applications", "@me"]) => {
                let state = self.core.state();
                let a = state.world.account(me).ok_or_else(ApiError::unauthorized)?;
                if !a.bot {
                    return Err(ApiError::new(401, 50001, "Missing Access"));
                }
                // The team owner: the first human account (discord.py needs one).
                let owner = state.world.accounts.iter().find(|x| !x.bot).unwrap_or(a);
                ok(model::application(a, owner))
            }
            (&Method::GET, ["users", "@me", "guilds"]) => ok(self.my_guilds(req, me)?),
            (&Method::GET, ["users", id]) => {
                let state = self.core.state();
                let a = parse_id(id)
                    .and_then(|id| state.world.account(id))
                    .ok_or_else(|| ApiError::new(404, 10013, "Unknown User"))?;
                ok(model::user(a))
            }
            (&Method::GET, ["channels", id]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                let state = self.core.state();
                check_access(state.world.access(cid, me, false))?;
                ok(model::channel(&state.world.channels[&cid], true))
            }
            (&Method::POST, ["channels", id, "messages"]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                let v = self.create_message(req, cid, Author::Account(me))?;
                ok(v)
            }
            (&Method::GET, ["channels", id, "messages"]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                ok(self.list_messages(req, cid, me)?)
            }
            // Nothing is ever pinned in the sandbox; both the current and the
            // older pins route answer in their own shape.
            (&Method::GET, ["channels", id, "messages", "pins"]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                check_access(self.core.state().world.access(cid, me, false))?;
                ok(json!({"items": [], "has_more": false}))
            }
            (&Method::GET, ["channels", id, "pins"]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                check_access(self.core.state().world.access(cid, me, false))?;
                ok(json!([]))
            }
            (&Method::GET, ["channels", id, "messages", mid]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                let state = self.core.state();
                check_access(state.world.access(cid, me, false))?;
                let m = parse_id(mid)
                    .and_then(|m| state.world.message(cid, m))
                    .ok_or_else(ApiError::unknown_message)?;
                ok(model::message(
                    &state.world,
                    m,
                    me,
                    self.rest_shows_content(&state.world, m, me),
                    false,
                ))
            }
            (&Method::PATCH, ["channels", id, "messages", mid]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                let mid = parse_id(mid).ok_or_else(ApiError::unknown_message)?;
                ok(self.edit_message(req, cid, mid, me)?)
            }
            (&Method::DELETE, ["channels", id, "messages", mid]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                let mid = parse_id(mid).ok_or_else(ApiError::unknown_message)?;
                self.delete_message(cid, mid, me)?;
                Ok(no_content())
            }
            (&Method::PUT, ["channels", id, "messages", mid, "reactions", emoji, "@me"]) => {
                let (cid, mid) = channel_and_message(id, mid)?;
                self.react(cid, mid, &decode_emoji(emoji)?, me, true)?;
                Ok(no_content())
            }
            (&Method::DELETE, ["channels", id, "messages", mid, "reactions", emoji, "@me"]) => {
                let (cid, mid) = channel_and_message(id, mid)?;
                self.react(cid, mid, &decode_emoji(emoji)?, me, false)?;
                Ok(no_content())
            }
            (&Method::GET, ["channels", id, "messages", mid, "reactions", emoji]) => {
                let (cid, mid) = channel_and_message(id, mid)?;
                let emoji = decode_emoji(emoji)?;
                let state = self.core.state();
                check_access(state.world.access(cid, me, false))?;
                let m = state
                    .world
                    .message(cid, mid)
                    .ok_or_else(ApiError::unknown_message)?;
                let users: Vec<Value> = m
                    .reactions
                    .iter()
                    .filter(|r| r.emoji == emoji)
                    .flat_map(|r| r.users.iter())
                    .filter_map(|u| state.world.account(*u))
                    .map(model::user)
                    .collect();
                ok(Value::Array(users))
            }
            (&Method::POST, ["channels", id, "typing"]) => {
                let cid = parse_id(id).ok_or_else(ApiError::unknown_channel)?;
                self.typing(cid, me)?;
                Ok(no_content())
            }
            (&Method::GET, ["guilds", id]) => {
                let state = self.core.state();
                let g = parse_id(id)
                    .and_then(|id| state.world.guild(id))
                    .ok_or_else(|| ApiError::new(404, 10004, "Unknown Guild"))?;
                if !g.members.contains(&me) {
                    return Err(ApiError::missing_access());
                }
                ok(model::guild(g))
            }
            (&Method::GET, ["guilds", id, "channels"]) => {
                let state = self.core.state();
                let g = parse_id(id)
                    .and_then(|id| state.world.guild(id))
                    .ok_or_else(|| ApiError::new(404, 10004, "Unknown Guild"))?;
                if !g.members.contains(&me) {
                    return Err(ApiError::missing_access());
                }
                let channels: Vec<Value> = g
                    .channels
                    .iter()
                    .filter_map(|c| state.world.channels.get(c))
                    .filter(|c| state.world.can_view(c, me))
                    .map(|c| model::channel(c, true))
                    .collect();
                ok(Value::Array(channels))
            }
            (&Method::GET, ["guilds", id, "roles"]) => {
                let state = self.core.state();
                let g = parse_id(id)
                    .and_then(|id| state.world.guild(id))
                    .ok_or_else(|| ApiError::new(404, 10004, "Unknown Guild"))?;
                if !g.members.contains(&me) {
                    return Err(ApiError::missing_access());
                }
                ok(json!([model::everyone_role(g)]))
            }
            (&Method::GET, ["applications", app, "commands"]) => {
                let mut state = self.core.state();
                let scope = command_scope(&state.world, app, None, me)?;
                ok(Value::Array(
                    state.world.commands.entry(scope).or_default().clone(),
                ))
            }
            (&Method::GET, ["applications", app, "guilds", gid, "commands"]) => {
                let mut state = self.core.state();
                let scope = command_scope(&state.world, app, Some(gid), me)?;
                ok(Value::Array(
                    state.world.commands.entry(scope).or_default().clone(),
                ))
            }
            (&Method::PUT, ["applications", app, "commands"]) => {
                ok(self.overwrite_commands(req, app, None, me)?)
            }
            (&Method::PUT, ["applications", app, "guilds", gid, "commands"]) => {
                ok(self.overwrite_commands(req, app, Some(gid), me)?)
            }
            (&Method::GET, ["guilds", id, "members"]) => ok(self.list_members(req, id, me)?),
            (&Method::GET, ["guilds", id, "members", uid]) => {
                let state = self.core.state();
                let g = parse_id(id)
                    .and_then(|id| state.world.guild(id))
                    .ok_or_else(|| ApiError::new(404, 10004, "Unknown Guild"))?;
                if !g.members.contains(&me) {
                    return Err(ApiError::missing_access());
                }
                let a = parse_id(uid)
                    .filter(|u| g.members.contains(u))
                    .and_then(|u| state.world.account(u))
                    .ok_or_else(|| ApiError::new(404, 10007, "Unknown Member"))?;
                ok(model::member(g, a))
            }
            (&Method::GET, ["webhooks", id, token]) => {
                let state = self.core.state();
                let w = webhook(&state.world, id, token)?;
                ok(model::webhook(w, true))
            }
            (&Method::POST, ["webhooks", id, token]) => {
                let (wid, cid) = {
                    let state = self.core.state();
                    let w = webhook(&state.world, id, token)?;
                    (w.id, w.channel_id)
                };
                let wait = query_bool(req, "wait")?.unwrap_or(false);
                let v = self.create_message(req, cid, Author::Webhook(wid))?;
                if wait { ok(v) } else { Ok(no_content()) }
            }
            _ => Err(ApiError::not_found()),
        }
    }

    /// Interaction callbacks, and the webhook routes when the token is an
    /// interaction's; `None` for anything else.
    fn route_interaction(&self, req: &Req<'_>) -> Option<Result<Response, ApiError>> {
        let core = &self.core;
        let with = |v: Option<Value>| match v {
            Some(v) => json_response(StatusCode::OK, &v),
            None => no_content(),
        };
        let r = match (&req.method, req.segments.as_slice()) {
            (&Method::POST, ["interactions", id, token, "callback"]) => {
                let with_response = match query_bool(req, "with_response") {
                    Ok(w) => w.unwrap_or(false),
                    Err(e) => return Some(Err(e)),
                };
                interactions::callback(core, id, token, &req.body, with_response).map(with)
            }
            (method, ["webhooks", app, token, "messages", which])
                if interactions::owns_token(core, token) =>
            {
                interactions::message_op(core, method, app, token, which, &req.body).map(with)
            }
            (&Method::POST, ["webhooks", app, token]) if interactions::owns_token(core, token) => {
                interactions::followup(core, app, token, &req.body).map(|v| with(Some(v)))
            }
            _ => return None,
        };
        Some(r)
    }

    /// Content over REST follows the account's approved intent (the portal toggle).
    fn rest_shows_content(&self, world: &super::world::World, m: &Message, viewer: u64) -> bool {
        world
            .account(viewer)
            .is_some_and(|a| a.privileged & intents::MESSAGE_CONTENT != 0)
            || world.content_visible_without_intent(m, viewer)
    }

    fn create_message(
        &self,
        req: &Req<'_>,
        channel_id: u64,
        author: Author,
    ) -> Result<Value, ApiError> {
        let body = &req.body;
        let (content, embeds) = message_body(body)?;
        let reference = match body.get("message_reference") {
            Some(r) if !r.is_null() => Some(json_id(&r["message_id"]).ok_or_else(|| {
                ApiError::form(
                    "message_reference",
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                )
            })?),
            _ => None,
        };
        let replied_user = body["allowed_mentions"]["replied_user"]
            .as_bool()
            .unwrap_or(true);

        let mut state = self.core.state();
        if let Author::Account(me) = author {
            check_access(state.world.access(channel_id, me, true))?;
        } else if !state.world.channels.contains_key(&channel_id) {
            return Err(ApiError::unknown_channel());
        }
        let nonce = body.get("nonce").filter(|n| !n.is_null()).cloned();
        if body["enforce_nonce"].as_bool() == Some(true)
            && let Some(n) = &nonce
            && let Some(earlier) = recent_with_nonce(&state.world, channel_id, author, n)
        {
            // Discord answers a repeated nonce with the message it already made.
            return Ok(with_nonce(
                model::message(&state.world, earlier, author.id(), true, false),
                earlier,
            ));
        }
        let guild_id = state.world.channels[&channel_id].guild_id;
        let mut mentions = mentioned_ids(&content, &state.world, guild_id);
        if let Some(r) = reference {
            let referenced = state.world.message(channel_id, r).ok_or_else(|| {
                ApiError::form(
                    "message_reference",
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                )
            })?;
            if let (true, Author::Account(replied)) = (replied_user, referenced.author)
                && Author::Account(replied) != author
                && !mentions.contains(&replied)
            {
                mentions.push(replied);
            }
        }
        let id = self.core.ids.next();
        let created = Instant::now();
        let message = Message {
            id,
            channel_id,
            guild_id,
            author,
            content,
            embeds: model::normalise_embeds(&embeds),
            mentions,
            reference,
            tts: body["tts"].as_bool().unwrap_or(false),
            nonce,
            edited: None,
            reactions: Vec::new(),
            interaction: None,
            flags: 0,
        };
        let author_id = match author {
            Author::Account(a) | Author::Webhook(a) => a,
        };
        self.core
            .truth
            .message_created(id, channel_id, author_id, req.arrived, created);
        let response = with_nonce(
            model::message(&state.world, &message, message.author.id(), true, false),
            &message,
        );
        state.world.store_message(message.clone());
        state.dispatch_guild(
            guild_id,
            "MESSAGE_CREATE",
            intents::GUILD_MESSAGES,
            Some(id),
            |world, s| {
                let show = s.intents & intents::MESSAGE_CONTENT != 0
                    || world.content_visible_without_intent(&message, s.account_id);
                Some(with_nonce(
                    model::message(world, &message, s.account_id, show, true),
                    &message,
                ))
            },
        );
        Ok(response)
    }

    /// `GET /users/@me/guilds`: the account's guilds by id, paged with
    /// `before`/`after` and `limit` (1-200, default 200).
    fn my_guilds(&self, req: &Req<'_>, me: u64) -> Result<Value, ApiError> {
        let limit = match req.query("limit") {
            None => 200,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=200).contains(&n) => n,
                _ => {
                    return Err(ApiError::form(
                        "limit",
                        "NUMBER_TYPE_MAX",
                        "int value should be between 1 and 200.",
                    ));
                }
            },
        };
        let with_counts = query_bool(req, "with_counts")?.unwrap_or(false);
        let after = req.query("after").and_then(parse_id);
        let before = req.query("before").and_then(parse_id);
        let state = self.core.state();
        let mut guilds: Vec<&super::world::Guild> = state
            .world
            .guilds
            .iter()
            .filter(|g| g.members.contains(&me))
            .filter(|g| after.is_none_or(|a| g.id > a) && before.is_none_or(|b| g.id < b))
            .collect();
        guilds.sort_by_key(|g| g.id);
        // With only `before`, the page is the one just before it.
        let skip = if before.is_some() && after.is_none() {
            guilds.len().saturating_sub(limit)
        } else {
            0
        };
        Ok(Value::Array(
            guilds
                .into_iter()
                .skip(skip)
                .take(limit)
                .map(|g| {
                    let online = with_counts.then(|| {
                        g.members
                            .iter()
                            .filter(|m| state.shown_status(**m, g.id) != "offline")
                            .count()
                    });
                    model::user_guild(g, me, online)
                })
                .collect(),
        ))
    }

    /// `GET /guilds/{id}/members`: by user id after `after`, `limit` 1-1000
    /// (default 1). Needs the GUILD_MEMBERS intent enabled for the account.
    fn list_members(&self, req: &Req<'_>, guild: &str, me: u64) -> Result<Value, ApiError> {
        let limit = match req.query("limit") {
            None => 1,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(ApiError::form(
                        "limit",
                        "NUMBER_TYPE_MAX",
                        "int value should be between 1 and 1000.",
                    ));
                }
            },
        };
        let after = req.query("after").and_then(parse_id).unwrap_or(0);
        let state = self.core.state();
        let g = parse_id(guild)
            .and_then(|id| state.world.guild(id))
            .ok_or_else(|| ApiError::new(404, 10004, "Unknown Guild"))?;
        let allowed = state
            .world
            .account(me)
            .is_some_and(|a| a.privileged & intents::GUILD_MEMBERS != 0);
        if !g.members.contains(&me) || !allowed {
            return Err(ApiError::missing_access());
        }
        let mut ids: Vec<u64> = g.members.iter().copied().filter(|m| *m > after).collect();
        ids.sort_unstable();
        Ok(Value::Array(
            ids.into_iter()
                .filter_map(|m| state.world.account(m))
                .take(limit)
                .map(|a| model::member(g, a))
                .collect(),
        ))
    }

    /// Bulk overwrite of application commands (what discord.py's
    /// `CommandTree.sync` sends): the list replaces the scope's commands; a
    /// command keeps its id (and version, if unchanged) across overwrites.
    fn overwrite_commands(
        &self,
        req: &Req<'_>,
        app: &str,
        guild: Option<&str>,
        me: u64,
    ) -> Result<Value, ApiError> {
        let mut state = self.core.state();
        let scope = command_scope(&state.world, app, guild, me)?;
        let Some(wanted) = req.body.as_array() else {
            return Err(ApiError::form_at(
                &[],
                "LIST_TYPE_CONVERT",
                "Only iterables may be used in a ListType",
            ));
        };
        let old = state
            .world
            .commands
            .get(&scope)
            .cloned()
            .unwrap_or_default();
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut new = Vec::with_capacity(wanted.len());
        for (i, body) in wanted.iter().enumerate() {
            let (kind, name) = check_command(body, i)?;
            if seen.contains(&(kind, name.clone())) {
                return Err(ApiError::form_at(
                    &[&i.to_string(), "name"],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    &format!("Application command names must be unique: {name}"),
                ));
            }
            seen.push((kind, name.clone()));
            if let Some((_, max)) = MAX_COMMANDS.iter().find(|(k, _)| *k == kind)
                && seen.iter().filter(|(k, _)| *k == kind).count() > *max
            {
                return Err(ApiError::new(
                    400,
                    30032,
                    &format!("Maximum number of application commands reached ({max})"),
                ));
            }
            let previous = old
                .iter()
                .find(|c| c["type"] == json!(kind) && c["name"] == json!(name));
            // Unchanged commands keep their version; changed ones get a new one.
            let command = match previous {
                Some(p) => {
                    let same = model::application_command(
                        body,
                        kind,
                        scope,
                        p["id"].clone(),
                        p["version"].clone(),
                    );
                    if &same == p {
                        same
                    } else {
                        let version = json!(self.core.ids.next().to_string());
                        model::application_command(body, kind, scope, p["id"].clone(), version)
                    }
                }
                None => {
                    let id = json!(self.core.ids.next().to_string());
                    model::application_command(body, kind, scope, id.clone(), id)
                }
            };
            new.push(command);
        }
        state.world.commands.insert(scope, new.clone());
        drop(state);
        self.core.log_event(&format!(
            "rest: application {} overwrote {} {} command(s)",
            scope.0,
            new.len(),
            match scope.1 {
                Some(g) => format!("guild {g}"),
                None => "global".to_string(),
            }
        ));
        Ok(Value::Array(new))
    }

    fn list_messages(&self, req: &Req<'_>, channel_id: u64, me: u64) -> Result<Value, ApiError> {
        let limit = match req.query("limit") {
            None => 50,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::form(
                        "limit",
                        "NUMBER_TYPE_MAX",
                        "int value should be between 1 and 100.",
                    ));
                }
            },
        };
        let state = self.core.state();
        check_access(state.world.access(channel_id, me, false))?;
        let messages = &state.world.channels[&channel_id].messages;
        let id_param = |name| req.query(name).and_then(parse_id);
        let picked: Vec<&Message> = if let Some(around) = id_param("around") {
            let before: Vec<&Message> = messages
                .range(..around)
                .rev()
                .take(limit / 2)
                .map(|(_, m)| m)
                .collect();
            let after: Vec<&Message> = messages
                .range(around..)
                .take(limit - before.len())
                .map(|(_, m)| m)
                .collect();
            let mut all: Vec<&Message> = after.into_iter().rev().collect();
            all.extend(before);
            all
        } else if let Some(after) = id_param("after") {
            let mut v: Vec<&Message> = messages
                .range(after + 1..)
                .take(limit)
                .map(|(_, m)| m)
                .collect();
            v.reverse();
            v
        } else if let Some(before) = id_param("before") {
            messages
                .range(..before)
                .rev()
                .take(limit)
                .map(|(_, m)| m)
                .collect()
        } else {
            messages.values().rev().take(limit).collect()
        };
        Ok(Value::Array(
            picked
                .into_iter()
                .map(|m| {
                    model::message(
                        &state.world,
                        m,
                        me,
                        self.rest_shows_content(&state.world, m, me),
                        false,
                    )
                })
                .collect(),
        ))
    }

    fn edit_message(
        &self,
        req: &Req<'_>,
        channel_id: u64,
        message_id: u64,
        me: u64,
    ) -> Result<Value, ApiError> {
        let mut state = self.core.state();
        check_access(state.world.access(channel_id, me, false))?;
        let guild_id = state.world.channels[&channel_id].guild_id;
        let m = state
            .world
            .channels
            .get_mut(&channel_id)
            .and_then(|c| c.messages.get_mut(&message_id))
            .ok_or_else(ApiError::unknown_message)?;
        if m.author != Author::Account(me) {
            return Err(ApiError::new(
                403,
                50005,
                "Cannot edit a message authored by another user",
            ));
        }
        if let Some(c) = req.body["content"].as_str() {
            if c.chars().count() > MAX_CONTENT {
                return Err(ApiError::form(
                    "content",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 2000 or fewer in length.",
                ));
            }
            m.content = c.to_string();
        }
        if let Some(e) = req.body["embeds"].as_array() {
            m.embeds = model::normalise_embeds(e);
        }
        m.edited = Some(SystemTime::now());
        let message = m.clone();
        let response = model::message(&state.world, &message, message.author.id(), true, false);
        state.dispatch_guild(
            guild_id,
            "MESSAGE_UPDATE",
            intents::GUILD_MESSAGES,
            Some(message_id),
            |world, s| {
                let show = s.intents & intents::MESSAGE_CONTENT != 0
                    || world.content_visible_without_intent(&message, s.account_id);
                Some(with_nonce(
                    model::message(world, &message, s.account_id, show, true),
                    &message,
                ))
            },
        );
        Ok(response)
    }

    /// Adds (or removes) `me`'s reaction; repeating either is a no-op with
    /// no event, as on Discord.
    fn react(
        &self,
        channel_id: u64,
        message_id: u64,
        emoji: &str,
        me: u64,
        add: bool,
    ) -> Result<(), ApiError> {
        let mut state = self.core.state();
        check_access(state.world.access(channel_id, me, false))?;
        let m = state
            .world
            .channels
            .get_mut(&channel_id)
            .and_then(|c| c.messages.get_mut(&message_id))
            .ok_or_else(ApiError::unknown_message)?;
        let at = m.reactions.iter().position(|r| r.emoji == emoji);
        let changed = match (add, at) {
            (true, Some(i)) if m.reactions[i].users.contains(&me) => false,
            (true, Some(i)) => {
                m.reactions[i].users.push(me);
                true
            }
            (true, None) => {
                m.reactions.push(Reaction {
                    emoji: emoji.to_string(),
                    users: vec![me],
                });
                true
            }
            (false, Some(i)) if m.reactions[i].users.contains(&me) => {
                m.reactions[i].users.retain(|u| *u != me);
                if m.reactions[i].users.is_empty() {
                    m.reactions.remove(i);
                }
                true
            }
            (false, _) => false,
        };
        if !changed {
            return Ok(());
        }
        let message = m.clone();
        let d = model::reaction_event(&state.world, &message, me, emoji, add);
        let event = if add {
            "MESSAGE_REACTION_ADD"
        } else {
            "MESSAGE_REACTION_REMOVE"
        };
        state.dispatch_guild(
            message.guild_id,
            event,
            intents::GUILD_MESSAGE_REACTIONS,
            None,
            |_, _| Some(d.clone()),
        );
        Ok(())
    }

    fn delete_message(&self, channel_id: u64, message_id: u64, me: u64) -> Result<(), ApiError> {
        let mut state = self.core.state();
        check_access(state.world.access(channel_id, me, false))?;
        let guild_id = state.world.channels[&channel_id].guild_id;
        let author = state
            .world
            .message(channel_id, message_id)
            .ok_or_else(ApiError::unknown_message)?
            .author;
        // Another's message needs Manage Messages: in the sandbox only the
        // guild's owner has it (ADMINISTRATOR; everyone else has
        // @everyone's permissions).
        let owner = state.world.guild(guild_id).map(|g| g.owner_id) == Some(me);
        if author != Author::Account(me) && !owner {
            return Err(ApiError::missing_permissions());
        }
        state.world.remove_message(channel_id, message_id);
        let d = json!({
            "id": message_id.to_string(),
            "channel_id": channel_id.to_string(),
            "guild_id": guild_id.to_string(),
        });
        state.dispatch_guild(
            guild_id,
            "MESSAGE_DELETE",
            intents::GUILD_MESSAGES,
            None,
            |_, _| Some(d.clone()),
        );
        Ok(())
    }

    fn typing(&self, channel_id: u64, me: u64) -> Result<(), ApiError> {
        let mut state = self.core.state();
        check_access(state.world.access(channel_id, me, true))?;
        let guild_id = state.world.channels[&channel_id].guild_id;
        let member = state
            .world
            .guild(guild_id)
            .zip(state.world.account(me))
            .map(|(g, a)| model::member(g, a));
        let d = json!({
            "channel_id": channel_id.to_string(),
            "guild_id": guild_id.to_string(),
            "user_id": me.to_string(),
            "timestamp": SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
            "member": member,
        });
        state.dispatch_guild(
            guild_id,
            "TYPING_START",
            intents::GUILD_MESSAGE_TYPING,
            None,
            |_, s| (s.account_id != me).then(|| d.clone()),
        );
        Ok(())
    }
}

/// A new message's content and embeds, checked as Discord checks them.
pub(crate) fn message_body(body: &Value) -> Result<(String, Vec<Value>), ApiError> {
    let content = body["content"].as_str().unwrap_or("").to_string();
    let embeds: Vec<Value> = body["embeds"].as_array().cloned().unwrap_or_default();
    if content.chars().count() > MAX_CONTENT {
        return Err(ApiError::form(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 2000 or fewer in length.",
        ));
    }
    if embeds.len() > MAX_EMBEDS {
        return Err(ApiError::form(
            "embeds",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 10 or fewer in length.",
        ));
    }
    if content.trim().is_empty() && embeds.is_empty() {
        return Err(ApiError::new(400, 50006, "Cannot send an empty message"));
    }
    Ok((content, embeds))
}

/// The (application, guild) whose commands a request is about. An
/// application manages only its own commands, and guild commands only in
/// guilds it is in.
pub(crate) fn command_scope(
    world: &super::world::World,
    app: &str,
    guild: Option<&str>,
    me: u64,
) -> Result<(u64, Option<u64>), ApiError> {
    let app = parse_id(app).ok_or_else(|| ApiError::new(404, 10002, "Unknown Application"))?;
    if app != me {
        return Err(ApiError::missing_access());
    }
    let guild = match guild {
        None => None,
        Some(g) => {
            let g = parse_id(g)
                .and_then(|g| world.guild(g))
                .ok_or_else(|| ApiError::new(404, 10004, "Unknown Guild"))?;
            if !g.members.contains(&me) {
                return Err(ApiError::missing_access());
            }
            Some(g.id)
        }
    };
    Ok((app, guild))
}

/// Checks one command of a bulk overwrite as Discord does; returns its type
/// and name.
pub(crate) fn check_command(body: &Value, i: usize) -> Result<(u64, String), ApiError> {
    let at = i.to_string();
    let kind = match &body["type"] {
        Value::Null => 1,
        v => v.as_u64().filter(|k| (1..=3).contains(k)).ok_or_else(|| {
            ApiError::form_at(
                &[&at, "type"],
                "BASE_TYPE_CHOICES",
                "Value must be one of {1, 2, 3}.",
            )
        })?,
    };
    let name = body["name"].as_str().unwrap_or("");
    let length = name.chars().count();
    if !(1..=32).contains(&length) {
        return Err(ApiError::form_at(
            &[&at, "name"],
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 32 in length.",
        ));
    }
    let description = body["description"].as_str().unwrap_or("");
    if kind == 1 {
        // Slash command names are lowercase words: letters, digits, - and _.
        let valid = name.chars().all(|c| {
            (c.is_alphanumeric() && !c.is_uppercase()) || c == '-' || c == '_' || c == '\''
        });
        if !valid {
            return Err(ApiError::form_at(
                &[&at, "name"],
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid",
            ));
        }
        if !(1..=100).contains(&description.chars().count()) {
            return Err(ApiError::form_at(
                &[&at, "description"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            ));
        }
    } else if !description.is_empty() {
        return Err(ApiError::form_at(
            &[&at, "description"],
            "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
            "Context menu commands cannot have description",
        ));
    }
    Ok((kind, name.to_string()))
}

/// How long `enforce_nonce` remembers a nonce. Discord says "the past few
/// minutes" without a number.
const NONCE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The author's message in the channel with this nonce, made within
/// [`NONCE_WINDOW`]. Nonces compare as text: `"5"` and `5` are the same.
fn recent_with_nonce<'w>(
    world: &'w super::world::World,
    channel_id: u64,
    author: Author,
    nonce: &Value,
) -> Option<&'w Message> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let wanted = text(nonce);
    let since = SystemTime::now().checked_sub(NONCE_WINDOW)?;
    world
        .channels
        .get(&channel_id)?
        .messages
        .values()
        .rev()
        .take_while(|m| m.created() >= since)
        .find(|m| m.author == author && m.nonce.as_ref().is_some_and(|n| text(n) == wanted))
}

/// The nonce goes back only in the create answer and in MESSAGE_CREATE; a
/// message fetched later, or quoted as `referenced_message`, has none.
fn with_nonce(mut v: Value, m: &Message) -> Value {
    if let (Some(nonce), Some(o)) = (&m.nonce, v.as_object_mut()) {
        o.insert("nonce".into(), nonce.clone());
    }
    v
}

fn check_access(access: Access) -> Result<(), ApiError> {
    match access {
        Access::Ok => Ok(()),
        Access::UnknownChannel => Err(ApiError::unknown_channel()),
        Access::Missing => Err(ApiError::missing_access()),
        Access::ReadOnly => Err(ApiError::missing_permissions()),
    }
}

fn webhook<'w>(
    world: &'w super::world::World,
    id: &str,
    token: &str,
) -> Result<&'w super::world::Webhook, ApiError> {
    let w = parse_id(id)
        .and_then(|id| world.webhooks.get(&id))
        .ok_or_else(|| ApiError::new(404, 10015, "Unknown Webhook"))?;
    if w.token != token {
        return Err(ApiError::new(401, 50027, "Invalid Webhook Token"));
    }
    Ok(w)
}

/// The account behind an `Authorization` header: `Bot <token>` for bot
/// accounts, the bare token for user accounts, as Discord requires.
fn auth(core: &Core, headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let state = core.state();
    match value.strip_prefix("Bot ") {
        Some(token) => state
            .world
            .account_by_token(token)
            .filter(|a| a.bot)
            .map(|a| a.id),
        None => state
            .world
            .account_by_token(value)
            .filter(|a| !a.bot)
            .map(|a| a.id),
    }
}

/// `<@id>` and `<@!id>` mentions of members of the guild.
fn mentioned_ids(content: &str, world: &super::world::World, guild_id: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let digits = rest.trim_start_matches('!');
        let end = digits.find('>').unwrap_or(0);
        if let Ok(id) = digits[..end].parse::<u64>()
            && world.is_member(guild_id, id)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

fn channel_and_message(channel: &str, message: &str) -> Result<(u64, u64), ApiError> {
    let channel = parse_id(channel).ok_or_else(ApiError::unknown_channel)?;
    let message = parse_id(message).ok_or_else(ApiError::unknown_message)?;
    Ok((channel, message))
}

/// A reaction's emoji from its URL segment: a percent-encoded Unicode
/// emoji. `name:id` (a custom emoji) and plain text are unknown emojis here,
/// as the sandbox's guilds have none.
fn decode_emoji(segment: &str) -> Result<String, ApiError> {
    let decoded: String = url::form_urlencoded::parse(format!("e={segment}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if decoded.is_empty() || decoded.contains(':') || decoded.is_ascii() {
        return Err(ApiError::new(400, 10014, "Unknown Emoji"));
    }
    Ok(decoded)
}

/// The rate-limit route of a request and its major parameter.
fn route_of(req: &Req<'_>) -> (String, String) {
    let s = &req.segments;
    let (template, major): (String, String) = match s.as_slice() {
        ["channels", id, rest @ ..] => {
            // One bucket per route, whichever message or emoji.
            let rest: Vec<&str> = rest
                .iter()
                .enumerate()
                .map(|(i, p)| match i {
                    1 => "{id}",
                    3 if rest.get(2) == Some(&"reactions") => "{emoji}",
                    _ => *p,
                })
                .collect();
            let tail = if rest.is_empty() {
                String::new()
            } else {
                format!("/{}", rest.join("/"))
            };
            (format!("/channels/{{id}}{tail}"), id.to_string())
        }
        ["guilds", id, rest @ ..] => (
            format!("/guilds/{{id}}/{}", rest.first().unwrap_or(&"")),
            id.to_string(),
        ),
        ["webhooks", id, _token, ..] => ("/webhooks/{id}/{token}".to_string(), id.to_string()),
        other => (format!("/{}", other.join("/")), String::new()),
    };
    (format!("{} {template}", req.method), major)
}
