//! Discord's JSON objects as the sandbox sends them (API v10 shapes, with the
//! fields real libraries require: serenity, discord.py, discord.js).

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::world::{Account, Author, Channel, Guild, Message, Webhook, World};

/// ISO 8601 as Discord writes it: `2026-11-26T15:00:00.123000+00:00`.
pub fn timestamp(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

pub fn user(a: &Account) -> Value {
    json!({
        "id": a.id.to_string(),
        "username": a.name,
        "global_name": if a.bot { Value::Null } else { Value::String(a.name.clone()) },
        "discriminator": "0",
        "avatar": null,
        "bot": a.bot,
        "system": false,
        "public_flags": 0,
        "flags": 0,
        "banner": null,
        "accent_color": null,
        "avatar_decoration_data": null,
    })
}

/// `GET /users/@me` and READY's `user`.
pub fn current_user(a: &Account) -> Value {
    let mut u = user(a);
    let o = u.as_object_mut().expect("object");
    o.insert("verified".into(), json!(true));
    o.insert("mfa_enabled".into(), json!(false));
    o.insert("email".into(), Value::Null);
    o.insert("locale".into(), json!("en-US"));
    o.insert("premium_type".into(), json!(0));
    u
}

fn webhook_user(w: &Webhook) -> Value {
    json!({
        "id": w.id.to_string(),
        "username": w.name,
        "discriminator": "0000",
        "avatar": null,
        "bot": true,
        "global_name": null,
        "public_flags": 0,
        "flags": 0,
    })
}

pub fn member(g: &Guild, a: &Account) -> Value {
    json!({
        "user": user(a),
        "nick": null,
        "avatar": null,
        "banner": null,
        "roles": [],
        "joined_at": timestamp(g.joined_at),
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
    })
}

/// What an interaction response carries: sent by the application as a
/// webhook, with `interaction_metadata` and the older `interaction`.
fn interaction_fields(
    world: &World,
    i: &super::world::InteractionMeta,
    guild_id: u64,
    o: &mut serde_json::Map<String, Value>,
) {
    let user = world.account(i.user_id).map(user).unwrap_or(Value::Null);
    // Installed to the guild (integration type 0), as every sandbox app is.
    let owners = json!({"0": guild_id.to_string()});
    let mut metadata = json!({
        "id": i.id.to_string(),
        "type": 2,
        "user": user,
        "name": i.name,
        "authorizing_integration_owners": owners,
    });
    if let Some(original) = i.original_response {
        metadata["original_response_message_id"] = json!(original.to_string());
    }
    o.insert("interaction_metadata".into(), metadata);
    o.insert(
        "interaction".into(),
        json!({"id": i.id.to_string(), "type": 2, "name": i.name, "user": user}),
    );
    o.insert("application_id".into(), json!(i.application_id.to_string()));
    o.insert("webhook_id".into(), json!(i.application_id.to_string()));
}

/// A member without `user`, as inside MESSAGE_CREATE.
fn partial_member(g: &Guild) -> Value {
    json!({
        "nick": null,
        "avatar": null,
        "roles": [],
        "joined_at": timestamp(g.joined_at),
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
    })
}

pub fn channel(c: &Channel, with_guild_id: bool) -> Value {
    let mut v = json!({
        "id": c.id.to_string(),
        "type": 0,
        "name": c.name,
        "position": c.position,
        "permission_overwrites": [],
        "topic": null,
        "nsfw": false,
        "last_message_id": c.messages.keys().next_back().map(|id| id.to_string()),
        "rate_limit_per_user": 0,
        "parent_id": null,
        "last_pin_timestamp": null,
        "flags": 0,
    });
    if with_guild_id {
        v["guild_id"] = json!(c.guild_id.to_string());
    }
    v
}

/// @everyone's permissions: VIEW_CHANNEL, SEND_MESSAGES, READ_MESSAGE_HISTORY,
/// EMBED_LINKS, ADD_REACTIONS.
const EVERYONE_PERMISSIONS: u64 = (1 << 10) | (1 << 11) | (1 << 16) | (1 << 14) | (1 << 6);
/// ADMINISTRATOR, which a guild's owner implicitly has.
const ADMINISTRATOR: u64 = 1 << 3;

pub fn everyone_role(g: &Guild) -> Value {
    json!({
        "id": g.id.to_string(),
        "name": "@everyone",
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false,
        "icon": null,
        "unicode_emoji": null,
        "position": 0,
        "permissions": EVERYONE_PERMISSIONS.to_string(),
        "managed": false,
        "mentionable": false,
        "flags": 0,
    })
}

/// The guild object of `GET /guilds/{id}`.
pub fn guild(g: &Guild) -> Value {
    json!({
        "id": g.id.to_string(),
        "name": g.name,
        "icon": null,
        "icon_hash": null,
        "splash": null,
        "discovery_splash": null,
        "owner_id": g.owner_id.to_string(),
        "afk_channel_id": null,
        "afk_timeout": 300,
        "widget_enabled": false,
        "widget_channel_id": null,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": [everyone_role(g)],
        "emojis": [],
        "features": [],
        "mfa_level": 0,
        "application_id": null,
        "system_channel_id": null,
        "system_channel_flags": 0,
        "rules_channel_id": null,
        "max_presences": null,
        "max_members": 500000,
        "vanity_url_code": null,
        "description": null,
        "banner": null,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "public_updates_channel_id": null,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "approximate_member_count": null,
        "approximate_presence_count": null,
        "nsfw_level": 0,
        "stickers": [],
        "premium_progress_bar_enabled": false,
        "safety_alerts_channel_id": null,
    })
}

/// A guild in `GET /users/@me/guilds`, with the viewer's permissions and,
/// when asked, the approximate member and presence counts.
pub fn user_guild(g: &Guild, viewer: u64, online: Option<usize>) -> Value {
    let owner = g.owner_id == viewer;
    let permissions = if owner {
        EVERYONE_PERMISSIONS | ADMINISTRATOR
    } else {
        EVERYONE_PERMISSIONS
    };
    let mut v = json!({
        "id": g.id.to_string(),
        "name": g.name,
        "icon": null,
        "banner": null,
        "owner": owner,
        "permissions": permissions.to_string(),
        "features": [],
    });
    if let Some(online) = online {
        v["approximate_member_count"] = json!(g.members.len());
        v["approximate_presence_count"] = json!(online);
    }
    v
}

/// GUILD_CREATE for a session; presences only with GUILD_PRESENCES.
pub fn guild_create(world: &World, g: &Guild, presences: Option<Vec<Value>>) -> Value {
    let mut v = guild(g);
    let o = v.as_object_mut().expect("object");
    o.insert("joined_at".into(), json!(timestamp(g.joined_at)));
    o.insert("large".into(), json!(false));
    o.insert("unavailable".into(), json!(false));
    o.insert("member_count".into(), json!(g.members.len()));
    o.insert("voice_states".into(), json!([]));
    o.insert(
        "members".into(),
        Value::Array(
            g.members
                .iter()
                .filter_map(|id| world.account(*id))
                .map(|a| member(g, a))
                .collect(),
        ),
    );
    o.insert(
        "channels".into(),
        Value::Array(
            g.channels
                .iter()
                .filter_map(|id| world.channels.get(id))
                .map(|c| channel(c, false))
                .collect(),
        ),
    );
    o.insert("threads".into(), json!([]));
    o.insert(
        "presences".into(),
        Value::Array(presences.unwrap_or_default()),
    );
    o.insert("stage_instances".into(), json!([]));
    o.insert("guild_scheduled_events".into(), json!([]));
    o.insert("soundboard_sounds".into(), json!([]));
    v
}

/// Activities as Discord relays them in presences: what a bot may set (name,
/// type, url, state) plus `created_at`, when it was set (unix ms). Anything
/// else a client sends is dropped, as Discord drops it for bots.
pub fn activities(sent: &Value, now_ms: u64) -> Value {
    let list = sent.as_array().map(Vec::as_slice).unwrap_or_default();
    Value::Array(
        list.iter()
            .filter(|a| a["name"].is_string())
            .map(|a| {
                let mut out = json!({
                    "name": a["name"],
                    "type": a["type"].as_u64().unwrap_or(0),
                    "created_at": now_ms,
                });
                for key in ["url", "state"] {
                    if let Some(v) = a.get(key).filter(|v| !v.is_null()) {
                        out[key] = v.clone();
                    }
                }
                out
            })
            .collect(),
    )
}

pub fn presence(account: u64, status: &str, activities: &Value) -> Value {
    let client_status = if status == "offline" {
        json!({})
    } else {
        json!({"web": status})
    };
    json!({
        "user": {"id": account.to_string()},
        "status": status,
        "activities": activities,
        "client_status": client_status,
    })
}

pub fn presence_update(guild_id: u64, account: u64, status: &str, activities: &Value) -> Value {
    let mut p = presence(account, status, activities);
    p["guild_id"] = json!(guild_id.to_string());
    p
}

/// A message as `viewer` sees it. Without MESSAGE_CONTENT (and unless the
/// message is the viewer's own, mentions it or replies to it), content,
/// embeds, attachments and components are empty, as on Discord.
pub fn message(
    world: &World,
    m: &Message,
    viewer: u64,
    show_content: bool,
    in_dispatch: bool,
) -> Value {
    let author = match m.author {
        Author::Account(id) => world.account(id).map(user),
        Author::Webhook(id) => world.webhooks.get(&id).map(webhook_user),
    }
    .unwrap_or(Value::Null);
    let mentions: Vec<Value> = m
        .mentions
        .iter()
        .filter_map(|id| world.account(*id))
        .map(user)
        .collect();
    let mut v = json!({
        "id": m.id.to_string(),
        "channel_id": m.channel_id.to_string(),
        "author": author,
        "content": if show_content { m.content.clone() } else { String::new() },
        "timestamp": timestamp(m.created()),
        "edited_timestamp": m.edited.map(timestamp),
        "tts": m.tts,
        "mention_everyone": false,
        "mentions": mentions,
        "mention_roles": [],
        "attachments": [],
        "embeds": if show_content { Value::Array(m.embeds.clone()) } else { json!([]) },
        "pinned": false,
        "type": if m.interaction.is_some() { 20 } else if m.reference.is_some() { 19 } else { 0 },
        "flags": m.flags,
        "components": [],
    });
    let o = v.as_object_mut().expect("object");
    if !m.reactions.is_empty() {
        let reactions: Vec<Value> = m
            .reactions
            .iter()
            .map(|r| {
                json!({
                    "emoji": {"id": null, "name": r.emoji},
                    "count": r.users.len(),
                    "count_details": {"burst": 0, "normal": r.users.len()},
                    "me": r.users.contains(&viewer),
                    "me_burst": false,
                    "burst_colors": [],
                })
            })
            .collect();
        o.insert("reactions".into(), Value::Array(reactions));
    }
    if let Author::Webhook(id) = m.author {
        o.insert("webhook_id".into(), json!(id.to_string()));
    }
    if let Some(i) = &m.interaction {
        interaction_fields(world, i, m.guild_id, o);
    }
    if let Some(reference) = m.reference {
        o.insert(
            "message_reference".into(),
            json!({
                "type": 0,
                "message_id": reference.to_string(),
                "channel_id": m.channel_id.to_string(),
                "guild_id": m.guild_id.to_string(),
            }),
        );
        let referenced = world
            .message(m.channel_id, reference)
            .map(|r| message(world, r, viewer, show_content, false))
            .unwrap_or(Value::Null);
        o.insert("referenced_message".into(), referenced);
    }
    if in_dispatch {
        o.insert("guild_id".into(), json!(m.guild_id.to_string()));
        if let (Author::Account(_), Some(g)) = (m.author, world.guild(m.guild_id)) {
            o.insert("member".into(), partial_member(g));
        }
    }
    v
}

/// MESSAGE_REACTION_ADD / MESSAGE_REACTION_REMOVE (a normal reaction,
/// not a burst one); ADD carries the reacting member and the message's author.
pub fn reaction_event(world: &World, m: &Message, user_id: u64, emoji: &str, added: bool) -> Value {
    let mut d = json!({
        "user_id": user_id.to_string(),
        "channel_id": m.channel_id.to_string(),
        "message_id": m.id.to_string(),
        "guild_id": m.guild_id.to_string(),
        "emoji": {"id": null, "name": emoji},
        "burst": false,
        "type": 0,
    });
    if added {
        if let (Some(g), Some(a)) = (world.guild(m.guild_id), world.account(user_id)) {
            d["member"] = member(g, a);
        }
        d["message_author_id"] = json!(m.author.id().to_string());
        d["burst_colors"] = json!([]);
    }
    d
}

/// Embeds as Discord stores them: it fills in `type` ("rich" for what a
/// client sends) and each field's `inline` (false), which discord.js
/// compares against when it checks an edit.
pub fn normalise_embeds(embeds: &[Value]) -> Vec<Value> {
    embeds
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Some(o) = e.as_object_mut() {
                o.entry("type").or_insert_with(|| json!("rich"));
                if let Some(fields) = o.get_mut("fields").and_then(Value::as_array_mut) {
                    for f in fields.iter_mut().filter_map(Value::as_object_mut) {
                        f.entry("inline").or_insert(json!(false));
                    }
                }
            }
            e
        })
        .collect()
}

/// `GET /applications/@me` and `/oauth2/applications/@me`. Optional fields
/// Discord omits when unset (`install_params`) are left out, not null:
/// discord.js reads `install_params.scopes` whenever the key is present.
pub fn application(a: &Account, owner: &Account) -> Value {
    json!({
        "id": a.id.to_string(),
        "name": a.name,
        "icon": null,
        "description": "",
        "summary": "",
        "type": null,
        "bot_public": false,
        "bot_require_code_grant": false,
        "owner": user(owner),
        "verify_key": "0".repeat(64),
        "team": null,
        "flags": 0,
        "hook": true,
        "redirect_uris": [],
        "interactions_endpoint_url": null,
        "role_connections_verification_url": null,
        "tags": [],
        "approximate_guild_count": 1,
        "bot": user(a),
    })
}

/// An application command as Discord stores it, from the fields a client
/// sent (already checked); `scope` is (application, guild or `None`).
pub fn application_command(
    body: &Value,
    kind: u64,
    scope: (u64, Option<u64>),
    id: Value,
    version: Value,
) -> Value {
    let field = |name: &str, default: Value| match body.get(name) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    };
    let mut v = json!({
        "id": id,
        "application_id": scope.0.to_string(),
        "version": version,
        "type": kind,
        "name": body["name"],
        "name_localizations": field("name_localizations", Value::Null),
        "description": body["description"].as_str().unwrap_or(""),
        "description_localizations": field("description_localizations", Value::Null),
        "default_member_permissions": field("default_member_permissions", Value::Null),
        "nsfw": field("nsfw", json!(false)),
        "integration_types": field("integration_types", json!([0])),
        "contexts": field("contexts", Value::Null),
    });
    if let Some(options) = body["options"].as_array().filter(|o| !o.is_empty()) {
        v["options"] = Value::Array(options.clone());
    }
    match scope.1 {
        Some(guild) => v["guild_id"] = json!(guild.to_string()),
        None => v["dm_permission"] = field("dm_permission", json!(true)),
    }
    v
}

pub fn webhook(w: &Webhook, with_token: bool) -> Value {
    let mut v = json!({
        "id": w.id.to_string(),
        "type": 1,
        "guild_id": w.guild_id.to_string(),
        "channel_id": w.channel_id.to_string(),
        "name": w.name,
        "avatar": null,
        "application_id": null,
    });
    if with_token {
        v["token"] = json!(w.token);
    }
    v
}
