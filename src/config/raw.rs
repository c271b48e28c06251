//! probes.yaml as written: serde structs that reject unknown fields.
//!
//! Values that need checking (durations, cron, regexes, URLs, label names)
//! stay strings wrapped in `Spanned`, so that validation can report every
//! problem in one pass, each with its own line and column.

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

pub type Text = Spanned<String>;
pub type Labels = HashMap<Text, Text>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub target: Spanned<RawTarget>,
    pub discord: Option<Spanned<RawDiscord>>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub labels: Labels,
    pub serve: Option<RawServe>,
    /// May be absent when modules are configured.
    pub probes: Option<Spanned<Vec<Spanned<RawProbe>>>>,
    /// Probe templates applied to a target given by the scrape (`/probe`).
    #[serde(default)]
    pub modules: HashMap<Text, Spanned<RawModule>>,
}

/// A probe template for `GET /probe?module=NAME&target=...`: one kind
/// section, without the part the target fills in (`url`; for `command` the
/// channel, from the listed `channels`; for `presence` the guild, from the
/// listed `guilds`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModule {
    pub timeout: Option<Text>,
    /// http and exporter modules: a regex the whole target URL must match.
    pub allow_targets: Option<Text>,
    pub exporter: Option<Spanned<RawExporter>>,
    pub http: Option<Spanned<RawHttp>>,
    pub command: Option<Spanned<RawCommand>>,
    pub presence: Option<Spanned<RawPresence>>,
    pub interactions: Option<Spanned<RawInteractions>>,
}

/// One channel a command module may post in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub channel_id: Spanned<Snowflake>,
    pub guild_id: Option<Spanned<Snowflake>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServe {
    /// Address of `/metrics`; `--listen` overrides it.
    pub listen: Option<Text>,
    /// Probe runs allowed at the same time.
    pub max_concurrency: Option<Spanned<u64>>,
    /// Recent runs kept per probe for the status page and its API.
    pub history: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Text,
    /// A snowflake; YAML may carry it as a number or a string.
    pub user_id: Option<Spanned<Snowflake>>,
    pub exporter_url: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Snowflake {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscord {
    /// Refused: a token must not live in the file. Its value is never kept.
    pub token: Option<Spanned<IgnoredAny>>,
    pub token_env: Option<Text>,
    pub token_file: Option<Text>,
    pub api_base: Option<Text>,
    /// Shortest time between two probe messages in one channel.
    pub send_interval: Option<Text>,
    /// Ask for the privileged MESSAGE_CONTENT intent (default: when a
    /// command probe checks content or embeds).
    pub message_content_intent: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub every: Option<Text>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    pub name: Text,
    pub every: Option<Text>,
    pub cron: Option<Text>,
    pub timeout: Option<Text>,
    #[serde(default)]
    pub labels: Labels,
    // The kind sections: exactly one must be present.
    pub exporter: Option<Spanned<RawExporter>>,
    pub http: Option<Spanned<RawHttp>>,
    pub command: Option<Spanned<RawCommand>>,
    pub presence: Option<Spanned<RawPresence>>,
    pub interactions: Option<Spanned<RawInteractions>>,
}

/// Watches real users' slash commands (passively) in guilds or channels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInteractions {
    #[serde(default)]
    pub guilds: Vec<Spanned<Snowflake>>,
    #[serde(default)]
    pub channels: Vec<Spanned<Snowflake>>,
    /// The commands that get their own `command` label; others are `other`.
    pub commands: Vec<Text>,
    pub error_reply: Option<Spanned<RawMatch>>,
    pub max_latency: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    /// Required in probes; in modules the target names it (from `channels`).
    pub channel_id: Option<Spanned<Snowflake>>,
    /// Modules only: the channels a scrape may name as its target.
    pub channels: Option<Vec<Spanned<RawChannel>>>,
    /// The channel's guild: for presence-aware details and the sandbox.
    pub guild_id: Option<Spanned<Snowflake>>,
    /// What the prober sends; `{target}` becomes a mention of the bot.
    pub message: Text,
    pub expect: Option<Spanned<RawMatch>>,
    pub error_reply: Option<Spanned<RawMatch>>,
    pub cleanup: Option<bool>,
}

/// What a reply must (or, for `error_reply`, must not) look like; every
/// field given must match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub contains: Option<Text>,
    pub regex: Option<Text>,
    pub embed_title: Option<Text>,
    pub embed_description: Option<Text>,
    #[serde(default)]
    pub embed_fields: Vec<RawFieldMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldMatch {
    pub name: Text,
    pub value: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPresence {
    /// One guild per shard (or just one guild).
    pub guilds: Vec<Spanned<Snowflake>>,
    pub shard_count: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExporter {
    /// Defaults to `target.exporter_url`.
    pub url: Option<Text>,
    pub min_uptime: Option<Text>,
    pub start_time_metric: Option<Text>,
    #[serde(default)]
    pub assertions: Vec<Text>,
    pub max_body_size: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Required in probes; in modules the scrape's target is the URL.
    pub url: Option<Text>,
    pub method: Option<Text>,
    pub expect_status: Option<Vec<Spanned<StatusItem>>>,
    pub body_regex: Option<Text>,
    pub follow_redirects: Option<bool>,
    pub max_body_size: Option<Text>,
}

/// One `expect_status` item: a code or a class such as `"2xx"`. Written by
/// hand so that a wrong item says what is expected (serde's untagged enums
/// only say that no variant matched).
#[derive(Debug)]
pub enum StatusItem {
    Code(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for StatusItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusItem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an HTTP status code (100-599) or a class such as \"2xx\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusItem, E> {
                Ok(StatusItem::Code(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusItem, E> {
                u64::try_from(v)
                    .map(StatusItem::Code)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusItem, E> {
                Ok(StatusItem::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}
