//! The sandbox's world: accounts, guilds, channels, messages, webhooks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use base64::Engine;
use serde_json::Value;

use super::config::SandboxConfig;
use super::intents;
use crate::snowflake::Snowflakes;

/// How an account shows itself (op 3 / IDENTIFY presence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Online,
    Idle,
    Dnd,
    Invisible,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "idle" => Some(Status::Idle),
            "dnd" => Some(Status::Dnd),
            "invisible" | "offline" => Some(Status::Invisible),
            _ => None,
        }
    }

    /// What others see: invisible reads as offline.
    pub fn shown(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Idle => "idle",
            Status::Dnd => "dnd",
            Status::Invisible => "offline",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: u64,
    pub name: String,
    pub bot: bool,
    pub token: String,
    /// Privileged intent bits this account may use.
    pub privileged: u64,
}

#[derive(Debug, Clone)]
pub struct Guild {
    pub id: u64,
    pub name: String,
    pub owner_id: u64,
    pub members: Vec<u64>,
    pub channels: Vec<u64>,
    pub joined_at: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: u64,
    pub guild_id: u64,
    pub name: String,
    pub position: u32,
    pub hidden_from: HashSet<u64>,
    pub read_only_for: HashSet<u64>,
    pub messages: BTreeMap<u64, Message>,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: u64,
    pub name: String,
    pub token: String,
    pub guild_id: u64,
    pub channel_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    Account(u64),
    Webhook(u64),
}

impl Author {
    /// The user id the author shows as (a webhook's own id for webhooks).
    pub fn id(&self) -> u64 {
        match *self {
            Author::Account(id) | Author::Webhook(id) => id,
        }
    }
}

/// One emoji's reactions on a message, in the order they were added.
#[derive(Debug, Clone)]
pub struct Reaction {
    /// A Unicode emoji (the sandbox's guilds have no custom emojis).
    pub emoji: String,
    pub users: Vec<u64>,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub channel_id: u64,
    pub guild_id: u64,
    pub author: Author,
    pub content: String,
    pub embeds: Vec<Value>,
    /// Ids of the accounts mentioned (including the author of a replied-to message).
    pub mentions: Vec<u64>,
    pub reference: Option<u64>,
    pub tts: bool,
    pub nonce: Option<Value>,
    pub edited: Option<SystemTime>,
    pub reactions: Vec<Reaction>,
    /// Set on interaction responses: what `interaction_metadata` shows.
    pub interaction: Option<InteractionMeta>,
    /// Message flags: 64 ephemeral, 128 loading (a deferred response).
    pub flags: u64,
}

/// The interaction a response message answers.
#[derive(Debug, Clone)]
pub struct InteractionMeta {
    pub id: u64,
    pub application_id: u64,
    pub user_id: u64,
    pub name: String,
    /// On follow-ups: the original response's id.
    pub original_response: Option<u64>,
}

impl Message {
    pub fn created(&self) -> SystemTime {
        crate::snowflake::timestamp(self.id)
    }
}

/// Why an account may not do something in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Ok,
    UnknownChannel,
    /// Cannot see the channel (Discord 50001 Missing Access).
    Missing,
    /// Can see it but not send (Discord 50013 Missing Permissions).
    ReadOnly,
}

#[derive(Debug, Default)]
pub struct World {
    pub accounts: Vec<Account>,
    pub guilds: Vec<Guild>,
    pub channels: HashMap<u64, Channel>,
    pub webhooks: HashMap<u64, Webhook>,
    /// Application commands as the last overwrite left them, by application
    /// and guild (`None`: global commands).
    pub commands: HashMap<(u64, Option<u64>), Vec<Value>>,
    /// Every stored message's channel, by message id (oldest first, as
    /// snowflakes grow), to drop the oldest past `message_cap`.
    message_index: BTreeMap<u64, u64>,
    /// `retention.messages`.
    message_cap: usize,
}

impl World {
    /// Builds the world a config describes, generating missing ids and tokens.
    pub fn build(cfg: &SandboxConfig, ids: &Snowflakes) -> Result<World, String> {
        let now = SystemTime::now();
        let mut world = World {
            message_cap: cfg.retention.messages,
            ..World::default()
        };
        for a in &cfg.accounts {
            if world.accounts.iter().any(|x| x.name == a.name) {
                return Err(format!("accounts: duplicate account name {:?}", a.name));
            }
            let id = a.id.unwrap_or_else(|| ids.next());
            let mut privileged = 0;
            for name in &a.privileged_intents {
                let bit = intents::privileged_bit(name).ok_or_else(|| {
                    format!(
                        "accounts.{}: unknown privileged intent {name:?} (use GUILD_MEMBERS, GUILD_PRESENCES or MESSAGE_CONTENT)",
                        a.name
                    )
                })?;
                privileged |= bit;
            }
            let token = a.token.clone().unwrap_or_else(|| make_token(id));
            world.accounts.push(Account {
                id,
                name: a.name.clone(),
                bot: a.bot,
                token,
                privileged,
            });
        }
        for g in &cfg.guilds {
            let id = g.id.unwrap_or_else(|| ids.next());
            let members: Vec<u64> = match &g.members {
                Some(names) => names
                    .iter()
                    .map(|n| {
                        world
                            .account_id(n)
                            .ok_or(format!("guilds.{}: unknown account {n:?}", g.name))
                    })
                    .collect::<Result<_, _>>()?,
                None => world.accounts.iter().map(|a| a.id).collect(),
            };
            let owner_id = *members
                .first()
                .ok_or_else(|| format!("guilds.{}: a guild needs at least one member", g.name))?;
            let mut channel_ids = Vec::new();
            for (position, c) in g.channels.iter().enumerate() {
                let cid = c.id.unwrap_or_else(|| ids.next());
                let resolve = |names: &[String]| -> Result<HashSet<u64>, String> {
                    names
                        .iter()
                        .map(|n| {
                            world
                                .account_id(n)
                                .ok_or(format!("channel #{}: unknown account {n:?}", c.name))
                        })
                        .collect()
                };
                world.channels.insert(
                    cid,
                    Channel {
                        id: cid,
                        guild_id: id,
                        name: c.name.clone(),
                        position: position as u32,
                        hidden_from: resolve(&c.hidden_from)?,
                        read_only_for: resolve(&c.read_only_for)?,
                        messages: BTreeMap::new(),
                    },
                );
                channel_ids.push(cid);
            }
            world.guilds.push(Guild {
                id,
                name: g.name.clone(),
                owner_id,
                members,
                channels: channel_ids,
                joined_at: now,
            });
        }
        for w in &cfg.webhooks {
            let channel = world
                .find_channel(&w.channel)
                .ok_or_else(|| format!("webhooks.{}: unknown channel {:?}", w.name, w.channel))?;
            let (channel_id, guild_id) = (channel.id, channel.guild_id);
            let id = w.id.unwrap_or_else(|| ids.next());
            let token = w.token.clone().unwrap_or_else(|| random_string(68));
            world.webhooks.insert(
                id,
                Webhook {
                    id,
                    name: w.name.clone(),
                    token,
                    guild_id,
                    channel_id,
                },
            );
        }
        Ok(world)
    }

    pub fn account(&self, id: u64) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    pub fn account_id(&self, name: &str) -> Option<u64> {
        self.accounts.iter().find(|a| a.name == name).map(|a| a.id)
    }

    pub fn account_by_token(&self, token: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.token == token)
    }

    pub fn guild(&self, id: u64) -> Option<&Guild> {
        self.guilds.iter().find(|g| g.id == id)
    }

    pub fn is_member(&self, guild_id: u64, account: u64) -> bool {
        self.guild(guild_id)
            .is_some_and(|g| g.members.contains(&account))
    }

    /// `guild/channel` or a bare channel name (first match).
    pub fn find_channel(&self, spec: &str) -> Option<&Channel> {
        let (guild, name) = match spec.split_once('/') {
            Some((g, c)) => (Some(g), c),
            None => (None, spec),
        };
        let name = name.trim_start_matches('#');
        self.guilds
            .iter()
            .filter(|g| guild.is_none_or(|n| n == g.name))
            .flat_map(|g| g.channels.iter())
            .filter_map(|id| self.channels.get(id))
            .find(|c| c.name == name)
    }

    /// Guilds of an account that a shard `[id, count]` covers.
    pub fn shard_guilds(&self, account: u64, shard: [u64; 2]) -> Vec<u64> {
        self.guilds
            .iter()
            .filter(|g| g.members.contains(&account) && shard_of(g.id, shard[1]) == shard[0])
            .map(|g| g.id)
            .collect()
    }

    pub fn can_view(&self, channel: &Channel, account: u64) -> bool {
        self.is_member(channel.guild_id, account) && !channel.hidden_from.contains(&account)
    }

    pub fn access(&self, channel_id: u64, account: u64, send: bool) -> Access {
        let Some(channel) = self.channels.get(&channel_id) else {
            return Access::UnknownChannel;
        };
        if !self.can_view(channel, account) {
            Access::Missing
        } else if send && channel.read_only_for.contains(&account) {
            Access::ReadOnly
        } else {
            Access::Ok
        }
    }

    pub fn message(&self, channel_id: u64, message_id: u64) -> Option<&Message> {
        self.channels.get(&channel_id)?.messages.get(&message_id)
    }

    /// Stores a new message in its (existing) channel; past `message_cap`
    /// stored messages the oldest goes, across channels, as if deleted.
    pub fn store_message(&mut self, message: Message) {
        let (id, channel_id) = (message.id, message.channel_id);
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        channel.messages.insert(id, message);
        self.message_index.insert(id, channel_id);
        while self.message_index.len() > self.message_cap {
            let Some((old, channel_id)) = self.message_index.pop_first() else {
                break;
            };
            if let Some(c) = self.channels.get_mut(&channel_id) {
                c.messages.remove(&old);
            }
        }
    }

    /// Deletes a stored message.
    pub fn remove_message(&mut self, channel_id: u64, message_id: u64) -> Option<Message> {
        let removed = self
            .channels
            .get_mut(&channel_id)?
            .messages
            .remove(&message_id)?;
        self.message_index.remove(&message_id);
        Some(removed)
    }

    /// How many messages are stored, across channels.
    #[cfg(test)]
    pub fn stored_messages(&self) -> usize {
        self.message_index.len()
    }

    /// Whether `viewer` may read the content of `msg` without MESSAGE_CONTENT:
    /// its own messages, and messages that mention it or reply to it.
    pub fn content_visible_without_intent(&self, msg: &Message, viewer: u64) -> bool {
        // The message-content restriction is for apps: a user account
        // always sees content and embeds.
        if self.account(viewer).is_some_and(|a| !a.bot) {
            return true;
        }
        if msg.author == Author::Account(viewer) || msg.mentions.contains(&viewer) {
            return true;
        }
        msg.reference
            .and_then(|r| self.message(msg.channel_id, r))
            .is_some_and(|r| r.author == Author::Account(viewer))
    }
}

/// The shard a guild lives on: `(guild_id >> 22) % shard_count`.
pub fn shard_of(guild_id: u64, shard_count: u64) -> u64 {
    if shard_count == 0 {
        0
    } else {
        (guild_id >> 22) % shard_count
    }
}

/// A token shaped like Discord's: base64(user id) . 6 chars . 38 chars.
fn make_token(id: u64) -> String {
    let head = base64::engine::general_purpose::STANDARD_NO_PAD.encode(id.to_string());
    format!("{head}.{}.{}", random_string(6), random_string(38))
}

fn random_string(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;

    fn message(world: &World, id: u64, channel: &str) -> Message {
        let c = world.find_channel(channel).unwrap();
        Message {
            id,
            channel_id: c.id,
            guild_id: c.guild_id,
            author: Author::Account(world.accounts[0].id),
            content: format!("message {id}"),
            embeds: Vec::new(),
            mentions: Vec::new(),
            reference: None,
            tts: false,
            nonce: None,
            edited: None,
            reactions: Vec::new(),
            interaction: None,
            flags: 0,
        }
    }

    #[test]
    fn keeps_the_newest_messages_across_channels_dropping_the_oldest_first() {
        let mut cfg = SandboxConfig::default();
        cfg.guilds[0].channels.push(crate::config::ChannelConfig {
            name: "general".into(),
            id: None,
            hidden_from: Vec::new(),
            read_only_for: Vec::new(),
        });
        cfg.retention.messages = 3;
        let mut world = World::build(&cfg, &Snowflakes::default()).unwrap();
        let probes = world.find_channel("probes").unwrap().id;
        let general = world.find_channel("general").unwrap().id;
        for id in 1..=4 {
            let m = message(&world, id, if id % 2 == 0 { "general" } else { "probes" });
            world.store_message(m);
        }
        // 1 went; a deletion makes room without dropping another.
        assert!(world.message(probes, 1).is_none());
        assert_eq!(world.stored_messages(), 3);
        assert!(world.remove_message(general, 2).is_some());
        assert!(world.remove_message(general, 2).is_none());
        world.store_message(message(&world, 5, "probes"));
        let kept = |w: &World, c: u64| w.channels[&c].messages.keys().copied().collect::<Vec<_>>();
        assert_eq!(
            (kept(&world, probes), kept(&world, general)),
            (vec![3, 5], vec![4])
        );
        for id in 6..=100 {
            world.store_message(message(&world, id, "general"));
        }
        assert_eq!(world.stored_messages(), 3);
        assert_eq!(
            (kept(&world, probes), kept(&world, general)),
            (vec![], vec![98, 99, 100])
        );
    }
}
