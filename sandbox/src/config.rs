//! The sandbox's world and behaviour, from YAML or the built-in default.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bot::BotBehaviour;

/// A sandbox configuration. Every field has a default, so `{}` is valid and
/// gives: a guild "The Wandering Inn" with a `#probes` channel, a `prober`
/// bot account, a `twi-bot-shard` bot account, and a human user `erin`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub accounts: Vec<AccountConfig>,
    pub guilds: Vec<GuildConfig>,
    pub webhooks: Vec<WebhookConfig>,
    pub gateway: GatewayConfig,
    pub rate_limits: RateLimitConfig,
    pub bot: BotConfig,
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The account's username, also how the rest of this file refers to it.
    pub name: String,
    /// Bot account (default) or a human user.
    #[serde(default = "yes")]
    pub bot: bool,
    /// A fixed user id; generated when absent.
    #[serde(default)]
    pub id: Option<u64>,
    /// A fixed token; generated when absent.
    #[serde(default)]
    pub token: Option<String>,
    /// Privileged intents this account may ask for (as enabled in Discord's
    /// developer portal): any of `GUILD_MEMBERS`, `GUILD_PRESENCES`, `MESSAGE_CONTENT`.
    #[serde(default)]
    pub privileged_intents: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuildConfig {
    pub name: String,
    #[serde(default)]
    pub id: Option<u64>,
    /// Account names; the first is the owner. Default: every account.
    #[serde(default)]
    pub members: Option<Vec<String>>,
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    #[serde(default)]
    pub id: Option<u64>,
    /// Accounts that cannot see the channel (403 Missing Access).
    #[serde(default)]
    pub hidden_from: Vec<String>,
    /// Accounts that can read but not send (403 Missing Permissions).
    #[serde(default)]
    pub read_only_for: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// `guild/channel` or just the channel name (first match).
    pub channel: String,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// HELLO's heartbeat_interval. Discord uses 41.25 s.
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    /// How long a session whose connection dropped (or closed with a code
    /// other than 1000/1001) stays resumable, and its account online.
    /// Discord's Gateway documentation ("Initiating a disconnect"): "If you
    /// simply close the TCP connection or use a different close code, the
    /// session will remain active and timeout after a few minutes"; a
    /// 1000/1001 close makes the bot "appear offline" at once. A Discord
    /// engineer on the same (Just-Some-Bots/MusicBot#209): Discord "holds
    /// onto the session expecting a resume", so the bot stays in the member
    /// list; Discord.Net#2569 reports it online "for a few minutes". Discord
    /// publishes no exact figure: 3 minutes stands for "a few".
    #[serde(with = "humantime_serde_compat")]
    pub resume_window: Duration,
    /// The shard count `GET /gateway/bot` recommends.
    pub recommended_shards: u32,
    /// Dispatches kept per session for RESUME replay.
    pub replay_buffer: usize,
    /// The network round trip a client sees between a heartbeat and its
    /// HEARTBEAT_ACK (on Discord, tens of milliseconds). Only the ACK waits
    /// for it: dispatches go out as soon as they exist, so ground truth is
    /// untouched. discord.py 2.7 records a heartbeat's send time after the
    /// send completes, in another thread; an ACK faster than that is
    /// measured from the previous heartbeat (`bot.latency` of 41 s and
    /// "Can't keep up" warnings), which real Discord never causes.
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_round_trip: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_interval: Duration::from_millis(41_250),
            resume_window: Duration::from_secs(180),
            recommended_shards: 1,
            replay_buffer: 1000,
            heartbeat_round_trip: Duration::from_millis(40),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Messages one account may send in one channel per window (Discord: about 5 per 5 s).
    pub messages_per_channel: u32,
    #[serde(with = "humantime_serde_compat")]
    pub messages_window: Duration,
    /// Requests per second per account across all routes (Discord: 50).
    pub global_per_second: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            messages_per_channel: 5,
            messages_window: Duration::from_secs(5),
            global_per_second: 50,
        }
    }
}

/// How much the sandbox remembers, so that a sandbox running for weeks
/// (`probe serve --sandbox`) keeps bounded memory. Everything else it keeps
/// is bounded by Discord's own rules: replay by `gateway.replay_buffer` and
/// the resume window, rate-limit windows until they reset.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Messages kept, across all channels; past it the oldest goes, as if
    /// deleted (404 10008 Unknown Message, no MESSAGE_DELETE). Discord keeps
    /// messages forever; clients of a sandbox look at recent ones (a history
    /// page is at most 100), and a bot's replies that nobody deletes would
    /// otherwise pile up for as long as it runs.
    pub messages: usize,
    /// Ground-truth records kept (one per message, with its dispatches),
    /// and the simulated bot's command → answer pairs; oldest dropped first.
    pub truth_records: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            messages: 1000,
            truth_records: 2000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BotConfig {
    /// Run the simulated Twi Bot Shard. Off lets an external bot use the account.
    pub enabled: bool,
    /// The account it logs in as.
    pub account: String,
    /// Bot accounts whose commands it answers. discord.py ignores bots by
    /// default, so the real bot must allow the prober explicitly too.
    pub allowed_bots: Vec<String>,
    pub behaviour: BotBehaviour,
    /// How long ago the simulated bot's process "started" (its exporter's
    /// process_start_time_seconds); a restart sets it to now.
    #[serde(with = "humantime_serde_compat")]
    pub started_ago: Duration,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            enabled: true,
            account: "twi-bot-shard".into(),
            allowed_bots: vec!["prober".into()],
            behaviour: BotBehaviour::default(),
            started_ago: Duration::ZERO,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            accounts: vec![
                AccountConfig {
                    name: "prober".into(),
                    bot: true,
                    id: None,
                    token: None,
                    privileged_intents: vec!["GUILD_PRESENCES".into(), "MESSAGE_CONTENT".into()],
                },
                AccountConfig {
                    name: "twi-bot-shard".into(),
                    bot: true,
                    id: None,
                    token: None,
                    privileged_intents: vec![
                        "GUILD_MEMBERS".into(),
                        "GUILD_PRESENCES".into(),
                        "MESSAGE_CONTENT".into(),
                    ],
                },
                AccountConfig {
                    name: "erin".into(),
                    bot: false,
                    id: None,
                    token: None,
                    privileged_intents: vec![],
                },
            ],
            guilds: vec![GuildConfig {
                name: "The Wandering Inn".into(),
                id: None,
                members: None,
                channels: vec![
                    ChannelConfig {
                        name: "probes".into(),
                        id: None,
                        hidden_from: vec![],
                        read_only_for: vec![],
                    },
                    ChannelConfig {
                        name: "general".into(),
                        id: None,
                        hidden_from: vec![],
                        read_only_for: vec![],
                    },
                ],
            }],
            webhooks: vec![WebhookConfig {
                name: "alerts".into(),
                channel: "probes".into(),
                id: None,
                token: None,
            }],
            gateway: GatewayConfig::default(),
            rate_limits: RateLimitConfig::default(),
            bot: BotConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl SandboxConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Durations as humantime strings (`41.25s`, `60s`) in YAML.
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// Optional durations as humantime strings.
pub(crate) mod opt_humantime {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            humantime::parse_duration(&t)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}")))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in README.md is a valid configuration whose gateway
    /// and rate-limit values are the defaults it claims they are.
    #[test]
    fn the_readme_example_parses_and_states_the_defaults() {
        let readme = include_str!("../README.md");
        let yaml = readme
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a yaml block in README.md");
        let cfg: SandboxConfig = serde_saphyr::from_str(yaml).unwrap();
        let defaults = SandboxConfig::default();
        let g = (&cfg.gateway, &defaults.gateway);
        assert_eq!(g.0.heartbeat_interval, g.1.heartbeat_interval);
        assert_eq!(g.0.heartbeat_round_trip, g.1.heartbeat_round_trip);
        assert_eq!(g.0.resume_window, g.1.resume_window);
        assert_eq!(g.0.recommended_shards, g.1.recommended_shards);
        assert_eq!(g.0.replay_buffer, g.1.replay_buffer);
        let r = (&cfg.rate_limits, &defaults.rate_limits);
        assert_eq!(r.0.messages_per_channel, r.1.messages_per_channel);
        assert_eq!(r.0.messages_window, r.1.messages_window);
        assert_eq!(r.0.global_per_second, r.1.global_per_second);
        assert_eq!(cfg.bot.account, defaults.bot.account);
        assert_eq!(cfg.bot.allowed_bots, defaults.bot.allowed_bots);
        let k = (&cfg.retention, &defaults.retention);
        assert_eq!(k.0.messages, k.1.messages);
        assert_eq!(k.0.truth_records, k.1.truth_records);
    }
}
