//! probes.yaml: loading, validation and the typed configuration.
//!
//! Loading is two steps. `raw` deserializes the YAML into structs that reject
//! unknown fields (the first structural error stops it, with its position).
//! `validate` then turns the raw structs into the typed [`Config`], collecting
//! every semantic problem (durations, cron, regexes, URLs, names, labels) so a
//! user sees them all at once.

mod error;
pub mod modules;
mod raw;
mod secret;
pub mod turns;
mod validate;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use url::Url;

pub use error::{ConfigError, ConfigErrors};
pub use modules::{Module, ModuleTargets};
pub use secret::{Secret, TokenSource};

use crate::probe::assertion::Assertion;
use crate::probe::reply::ReplyMatch;

/// The largest probes.yaml read (a config with a thousand probes is ~300 KiB).
pub const MAX_CONFIG_SIZE: u64 = 4 * 1024 * 1024;

/// Built-in defaults used when `defaults:` does not set them.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_START_TIME_METRIC: &str = "process_start_time_seconds";
pub const DEFAULT_DISCORD_API_BASE: &str = "https://discord.com";
/// Shortest gap between two probe messages in one channel: Discord allows
/// about 5 messages per 5 s per channel; one per 2 s stays far below.
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_secs(2);
/// The most an `http` or `exporter` probe reads of a body unless its
/// `max_body_size` says otherwise (blackbox_exporter has no default limit;
/// an exporter's page is rarely above 1 MiB).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 * 1024 * 1024;

/// A validated probes.yaml.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, as given on the command line.
    pub source: PathBuf,
    pub target: Target,
    pub discord: Option<DiscordConnection>,
    /// Static labels added to every probe's series (e.g. `location`).
    pub labels: BTreeMap<String, String>,
    pub serve: ServeSettings,
    pub probes: Vec<ProbeSpec>,
    /// Probe templates for `GET /probe?module=NAME&target=...`, by name.
    pub modules: BTreeMap<String, Module>,
}

/// Settings of `probe serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSettings {
    pub listen: std::net::SocketAddr,
    pub max_concurrency: usize,
    /// Recent runs kept in memory per probe (the status page, `/api/v1`).
    pub history: usize,
}

/// The default address of `probe serve`'s `/metrics`: all interfaces (to be
/// scraped from elsewhere), on a port that does not collide with the bot's
/// exporter (8000), Prometheus (9090) or blackbox_exporter (9115).
pub const DEFAULT_SERVE_LISTEN: &str = "0.0.0.0:9477";
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// The largest `serve.max_concurrency`: far above what one process can run
/// at once (each run holds a socket), far below tokio's
/// `Semaphore::MAX_PERMITS`, which would panic.
pub const MAX_MAX_CONCURRENCY: u64 = 100_000;
pub const DEFAULT_HISTORY: usize = 100;

/// The bot being probed.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub user_id: Option<u64>,
    pub exporter_url: Option<Url>,
}

/// How the prober account reaches Discord.
#[derive(Debug, Clone)]
pub struct DiscordConnection {
    pub token: TokenSource,
    /// `https://discord.com` in production; the sandbox's URL in tests.
    pub api_base: Url,
    /// Shortest gap between two probe messages in one channel.
    pub send_interval: Duration,
    /// Explicit choice of the MESSAGE_CONTENT intent; `None`: when needed.
    pub message_content_intent: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// The configured name. Presence probes with several guilds share it:
    /// their series differ by the `shard` label.
    pub name: String,
    pub schedule: Schedule,
    pub timeout: Duration,
    /// The static labels of this probe: the global ones overlaid with its own.
    pub labels: BTreeMap<String, String>,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    /// A cron expression, normalised to six fields (seconds first).
    Cron {
        expression: String,
        /// The shortest gap between two runs, found over the next occurrences.
        min_interval: Duration,
    },
    /// `every: never`: no schedule; the probe runs only when Prometheus
    /// scrapes `GET /probe?probe=NAME` (or on `probe run`).
    OnScrape,
}

impl Schedule {
    /// The shortest time between two scheduled runs; `None` without a schedule.
    pub fn min_interval(&self) -> Option<Duration> {
        match self {
            Schedule::Every(d) => Some(*d),
            Schedule::Cron { min_interval, .. } => Some(*min_interval),
            Schedule::OnScrape => None,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron { expression, .. } => write!(f, "cron \"{expression}\""),
            Schedule::OnScrape => f.write_str("on scrape only"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ProbeKind {
    Exporter(ExporterSpec),
    Http(HttpSpec),
    Command(CommandSpec),
    Presence(PresenceSpec),
    Interactions(InteractionsSpec),
}

/// Real users' slash commands, watched passively: the target's interaction
/// responses in these guilds or channels.
#[derive(Debug, Clone)]
pub struct InteractionsSpec {
    pub guilds: Vec<u64>,
    pub channels: Vec<u64>,
    /// The only `command` label values besides `other`.
    pub commands: Vec<String>,
    pub error_reply: Option<ReplyMatch>,
    /// A response slower than this makes the run a `failure`.
    pub max_latency: Option<Duration>,
}

impl InteractionsSpec {
    /// The `command` label of a command name: configured names, else `other`.
    pub fn command_label(&self, name: &str) -> &str {
        self.commands
            .iter()
            .find(|c| *c == name)
            .map(String::as_str)
            .unwrap_or("other")
    }

    /// Every `command` label value this probe can export.
    pub fn command_labels(&self) -> impl Iterator<Item = &str> {
        self.commands
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("other"))
    }
}

impl ProbeSpec {
    /// The name with what tells same-named specs apart (`presence[shard 1]`).
    pub fn display_name(&self) -> String {
        match &self.kind {
            ProbeKind::Presence(p) if p.shard_count > 1 => {
                format!("{}[shard {}]", self.name, p.shard)
            }
            _ => self.name.clone(),
        }
    }
}

impl ProbeKind {
    /// The `kind` label value: a closed set.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Exporter(_) => "exporter",
            ProbeKind::Http(_) => "http",
            ProbeKind::Command(_) => "command",
            ProbeKind::Presence(_) => "presence",
            ProbeKind::Interactions(_) => "interactions",
        }
    }

    /// Whether this kind talks to Discord (and so needs the prober's token).
    pub fn needs_discord(&self) -> bool {
        match self {
            ProbeKind::Exporter(_) | ProbeKind::Http(_) => false,
            ProbeKind::Command(_) | ProbeKind::Presence(_) | ProbeKind::Interactions(_) => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExporterSpec {
    pub url: Url,
    pub min_uptime: Option<Duration>,
    pub start_time_metric: String,
    pub assertions: Vec<Assertion>,
    /// Bodies larger than this are a `failure`, read no further.
    pub max_body_size: u64,
}

/// Send a message and check the target bot's reply.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    /// The message to send, with `{target}` already replaced by a mention.
    pub message: String,
    pub expect: ReplyMatch,
    pub error_reply: Option<ReplyMatch>,
    /// Delete the probe message (and the reply, when allowed) after the run.
    pub cleanup: bool,
    /// The longest this probe waits for its turn in the channel: the longest
    /// turns of the other probes there (see [`turns`]).
    pub turn_wait: Duration,
}

/// The target's presence in one guild; one spec per guild (shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceSpec {
    pub guild_id: u64,
    pub shard: u64,
    pub shard_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
}

#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub url: Url,
    pub method: HttpMethod,
    pub expect_status: StatusSet,
    pub body_regex: Option<Regex>,
    pub follow_redirects: bool,
    /// Bodies larger than this are a `failure`, read no further.
    pub max_body_size: u64,
}

/// Accepted HTTP statuses: exact codes and classes such as `2xx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    pub codes: Vec<u16>,
    /// Classes by first digit: 2 for `2xx`.
    pub classes: Vec<u16>,
}

impl StatusSet {
    pub fn any_2xx() -> Self {
        StatusSet {
            codes: vec![],
            classes: vec![2],
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        self.codes.contains(&status) || self.classes.contains(&(status / 100))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .classes
            .iter()
            .map(|c| format!("{c}xx"))
            .chain(self.codes.iter().map(|c| c.to_string()))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

impl Config {
    /// Reads and validates a probes.yaml. Every problem found is returned.
    /// Only a regular file of at most [`MAX_CONFIG_SIZE`] is read: a device
    /// such as /dev/zero would never end, and a FIFO with no writer would
    /// block forever.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let fail = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                path: String::new(),
                message,
            }])
        };
        let meta =
            std::fs::metadata(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        if !meta.is_file() {
            return Err(fail(
                "not a regular file (a directory, device or pipe): give the path of a probes.yaml"
                    .into(),
            ));
        }
        let too_big = || {
            fail(format!(
                "the file is larger than {} KiB; a probes.yaml is a few KiB",
                MAX_CONFIG_SIZE / 1024
            ))
        };
        if meta.len() > MAX_CONFIG_SIZE {
            return Err(too_big());
        }
        // Bounded even if the file grows after the check.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_SIZE + 1).read_to_end(&mut bytes))
            .map_err(|e| fail(format!("cannot read the file: {e}")))?;
        if bytes.len() as u64 > MAX_CONFIG_SIZE {
            return Err(too_big());
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| fail(format!("the file is not UTF-8 text: {e}")))?;
        Self::from_yaml(&text, path)
    }

    /// Validates YAML text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
        let raw = validate::parse(text, &source.display().to_string())?;
        validate::validate(raw, source)
    }

    /// The label names every probe series carries besides `probe` and `kind`:
    /// the union of all static label names, sorted. Probes that do not set one
    /// export it as the empty string, so every series of a family has the
    /// same label names.
    pub fn static_label_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .probes
            .iter()
            .flat_map(|p| p.labels.keys().cloned())
            .chain(self.labels.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Problems with secrets that `validate` reports as warnings and that
    /// `run`/`serve` treat as errors when a selected probe needs Discord.
    pub fn secret_problems(&self) -> Vec<String> {
        match &self.discord {
            Some(d) => d.token.check().err().into_iter().collect(),
            None => vec![],
        }
    }

    pub fn probe(&self, name: &str) -> Option<&ProbeSpec> {
        self.probes.iter().find(|p| p.name == name)
    }

    /// The probes and the modules' templates: what the Discord session
    /// must serve (intents, connection).
    pub fn specs_with_modules(&self) -> impl Iterator<Item = &ProbeSpec> {
        self.probes
            .iter()
            .chain(self.modules.values().map(|m| &m.template))
    }

    /// Reads the prober's token; the error names the file, variable or file.
    pub fn discord_token(&self) -> Result<Secret, String> {
        self.discord
            .as_ref()
            .ok_or_else(|| {
                format!(
                    "{}: Discord probes need a discord section",
                    self.source.display()
                )
            })?
            .token
            .read()
            .map_err(|e| format!("{}: {e}", self.source.display()))
    }

    /// Whether any probe or module talks to Discord.
    pub fn needs_discord(&self) -> bool {
        self.specs_with_modules().any(|p| p.kind.needs_discord())
    }
}
