//! From raw YAML structs to the typed [`Config`], collecting every problem.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use regex::Regex;
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};
use url::Url;

use super::modules;
use super::raw::{self, RawConfig, RawProbe, Snowflake, StatusItem, Text};
use super::*;
use crate::probe::reply::ReplyMatch;

/// Label names that twi-probe sets itself, or that Prometheus sets at scrape
/// time; a static label with one of these names would clash.
const RESERVED_LABELS: &[&str] = &[
    "probe", "kind", "outcome", "phase", "le", "quantile", "version", "job", "instance",
];
/// Long label values are a sign of a mistake (a URL or a message pasted in).
const MAX_LABEL_VALUE_LEN: usize = 128;
/// How many future cron occurrences are looked at to find the shortest gap.
const CRON_LOOKAHEAD: usize = 32;

/// Step 1: YAML to raw structs. Stops at the first structural problem.
pub(super) fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
            path = user_path(e.path());
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // The message may quote the YAML: keep it on one line.
        let message = UserMessageFormatter
            .format_message(err.without_snippet())
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            path,
            message,
        }])
    })
}

/// The path as the user wrote it: `probes[0].http.url`. `Spanned` wraps
/// values in a `value` field that the user never sees, so those segments go.
fn user_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Collects errors while walking the raw config.
pub(super) struct Checker {
    pub(super) file: String,
    pub(super) errors: Vec<ConfigError>,
}

impl Checker {
    pub(super) fn error<T>(&mut self, at: &Spanned<T>, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, text: &Text, path: &str) -> Option<Duration> {
        match humantime::parse_duration(text.value.trim()) {
            Ok(d) if d.is_zero() => {
                self.error(text, path, "duration must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    text,
                    path,
                    format!("invalid duration {:?}: {e}", text.value),
                );
                None
            }
        }
    }

    /// A run interval, or `never`: the probe runs only when scraped.
    fn every(&mut self, text: &Text, path: &str) -> Option<Schedule> {
        if text.value.trim() == "never" {
            return Some(Schedule::OnScrape);
        }
        self.duration(text, path).map(Schedule::Every)
    }

    /// A size such as `16MiB`, `500 kB` or a number of bytes; at least 1 KiB.
    fn size(&mut self, text: &Text, path: &str) -> Option<u64> {
        match text.value.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() >= 1024 => Some(b.as_u64()),
            Ok(_) => {
                self.error(text, path, "size must be at least 1KiB");
                None
            }
            Err(_) => {
                self.error(
                    text,
                    path,
                    format!(
                        "invalid size {:?}: use a number of bytes or a unit such as 512KiB, 16MiB, 1GB",
                        text.value
                    ),
                );
                None
            }
        }
    }

    /// An http(s) URL. The value is not quoted back: URLs can carry credentials.
    pub(super) fn url(&mut self, text: &Text, path: &str) -> Option<Url> {
        match Url::parse(text.value.trim()) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Some(u),
            Ok(u) => {
                self.error(
                    text,
                    path,
                    format!(
                        "unsupported URL scheme \"{}\" (use http or https)",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                self.error(text, path, format!("invalid URL: {e}"));
                None
            }
        }
    }

    pub(super) fn regex(&mut self, text: &Text, path: &str) -> Option<Regex> {
        match Regex::new(&text.value) {
            Ok(r) => Some(r),
            Err(e) => {
                // regex's message spans several lines; keep the last, which says what is wrong.
                let reason = e.to_string();
                let reason = reason
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                self.error(
                    text,
                    path,
                    format!("invalid regex {:?}: {reason}", text.value),
                );
                None
            }
        }
    }

    fn cron(&mut self, text: &Text, path: &str) -> Option<Schedule> {
        let fields: Vec<&str> = text.value.split_whitespace().collect();
        let expression = match fields.len() {
            5 => format!("0 {}", fields.join(" ")),
            6 => fields.join(" "),
            n => {
                self.error(
                    text,
                    path,
                    format!(
                        "invalid cron expression {:?}: expected 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading seconds field, found {n}",
                        text.value
                    ),
                );
                return None;
            }
        };
        let cron = match croner::Cron::from_str(&expression) {
            Ok(c) => c,
            Err(e) => {
                self.error(
                    text,
                    path,
                    format!("invalid cron expression {:?}: {e}", text.value),
                );
                return None;
            }
        };
        let times: Vec<_> = cron
            .iter_after(chrono::Utc::now())
            .take(CRON_LOOKAHEAD)
            .collect();
        let min_interval = times
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).to_std().ok())
            .min();
        match min_interval {
            Some(min_interval) => Some(Schedule::Cron {
                expression,
                min_interval,
            }),
            None => {
                self.error(
                    text,
                    path,
                    format!("cron expression {:?} never fires", text.value),
                );
                None
            }
        }
    }

    pub(super) fn labels(&mut self, labels: &raw::Labels, path: &str) -> BTreeMap<String, String> {
        let name_re = Regex::new("^[a-zA-Z_][a-zA-Z0-9_]*$").expect("static regex");
        let mut entries: Vec<_> = labels.iter().collect();
        entries.sort_by_key(|(k, _)| (k.referenced.line(), k.referenced.column()));
        let mut out = BTreeMap::new();
        for (key, value) in entries {
            let here = format!("{path}.{}", key.value);
            if !name_re.is_match(&key.value) || key.value.starts_with("__") {
                self.error(
                    key,
                    &here,
                    format!(
                        "invalid label name {:?}: use letters, digits and underscores, not starting with a digit or \"__\"",
                        key.value
                    ),
                );
            } else if RESERVED_LABELS.contains(&key.value.as_str()) {
                self.error(
                    key,
                    &here,
                    format!(
                        "label name {:?} is reserved (twi-probe or Prometheus sets it)",
                        key.value
                    ),
                );
            } else if value.value.len() > MAX_LABEL_VALUE_LEN {
                self.error(
                    value,
                    &here,
                    format!("label value is longer than {MAX_LABEL_VALUE_LEN} characters"),
                );
            } else {
                out.insert(key.value.clone(), value.value.clone());
            }
        }
        out
    }
}

/// Step 2: raw structs to the typed config.
pub(super) fn validate(raw: RawConfig, source: &Path) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        file: source.display().to_string(),
        errors: vec![],
    };

    let target = check_target(&mut c, &raw.target);
    let discord = raw.discord.as_ref().and_then(|d| check_discord(&mut c, d));

    let default_every = match &raw.defaults.every {
        Some(t) => c.every(t, "defaults.every"),
        None => Some(Schedule::Every(DEFAULT_EVERY)),
    };
    let default_timeout = match &raw.defaults.timeout {
        Some(t) => c.duration(t, "defaults.timeout"),
        None => Some(DEFAULT_TIMEOUT),
    };
    let labels = c.labels(&raw.labels, "labels");
    let serve = check_serve(&mut c, raw.serve.as_ref());

    let raw_probes: &[Spanned<RawProbe>] = raw.probes.as_ref().map_or(&[], |p| &p.value);
    if raw_probes.is_empty() && raw.modules.is_empty() {
        match &raw.probes {
            Some(p) => c.error(p, "probes", "no probes or modules are configured"),
            None => c.error(&raw.target, "probes", "no probes or modules are configured"),
        }
    }
    let mut seen_names = HashSet::new();
    let mut probes = Vec::new();
    for (i, probe) in raw_probes.iter().enumerate() {
        let path = format!("probes[{i}]");
        let name = &probe.value.name;
        if name.value.trim().is_empty() {
            c.error(name, &format!("{path}.name"), "probe name is empty");
        } else if !seen_names.insert(name.value.clone()) {
            c.error(
                name,
                &format!("{path}.name"),
                format!("duplicate probe name {:?}", name.value),
            );
        }
        let ctx = ProbeContext {
            target: &target,
            has_discord: raw.discord.is_some(),
            default_every: default_every.clone(),
            default_timeout,
            global_labels: &labels,
        };
        if let Some(specs) = check_probe(&mut c, probe, &path, &ctx) {
            probes.extend(specs);
        }
    }
    let ctx = ProbeContext {
        target: &target,
        has_discord: raw.discord.is_some(),
        default_every: None,
        default_timeout,
        global_labels: &labels,
    };
    let modules = modules::check_modules(&mut c, &raw.modules, &seen_names, &ctx);

    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(c.errors));
    }
    if let Some(d) = &discord {
        turns::assign_turn_waits(&mut probes, &modules, d.send_interval);
    }
    Ok(Config {
        source: source.to_path_buf(),
        target: target.expect("no errors means the target is valid"),
        discord,
        labels,
        serve,
        probes,
        modules,
    })
}

fn check_serve(c: &mut Checker, raw: Option<&raw::RawServe>) -> ServeSettings {
    let mut s = ServeSettings {
        listen: DEFAULT_SERVE_LISTEN.parse().expect("static address"),
        max_concurrency: DEFAULT_MAX_CONCURRENCY,
        history: DEFAULT_HISTORY,
    };
    let Some(raw) = raw else {
        return s;
    };
    if let Some(l) = &raw.listen {
        match l.value.trim().parse() {
            Ok(addr) => s.listen = addr,
            Err(_) => c.error(
                l,
                "serve.listen",
                format!(
                    "invalid address {:?}: use IP:PORT, e.g. 0.0.0.0:9477",
                    l.value
                ),
            ),
        }
    }
    if let Some(n) = &raw.max_concurrency {
        if n.value == 0 || n.value > MAX_MAX_CONCURRENCY {
            c.error(
                n,
                "serve.max_concurrency",
                format!("must be between 1 and {MAX_MAX_CONCURRENCY}"),
            );
        } else {
            s.max_concurrency = n.value as usize;
        }
    }
    if let Some(n) = &raw.history {
        // Each run kept holds its detail (a short sentence): 10 000 runs of
        // 20 probes stay within a few tens of MB.
        if n.value == 0 || n.value > 10_000 {
            c.error(n, "serve.history", "must be between 1 and 10000");
        } else {
            s.history = n.value as usize;
        }
    }
    s
}

fn check_target(c: &mut Checker, t: &Spanned<raw::RawTarget>) -> Option<Target> {
    let raw = &t.value;
    let mut ok = true;
    if raw.name.value.trim().is_empty() {
        c.error(&raw.name, "target.name", "target name is empty");
        ok = false;
    }
    let user_id = match &raw.user_id {
        None => None,
        Some(id) => {
            let parsed = match &id.value {
                Snowflake::Number(n) => Some(*n),
                Snowflake::Text(s) => s.trim().parse::<u64>().ok(),
            };
            if parsed.is_none() {
                c.error(
                    id,
                    "target.user_id",
                    "user id must be a Discord snowflake (a positive integer)",
                );
                ok = false;
            }
            parsed
        }
    };
    let exporter_url = match &raw.exporter_url {
        None => None,
        Some(u) => {
            let url = c.url(u, "target.exporter_url");
            ok &= url.is_some();
            url
        }
    };
    ok.then(|| Target {
        name: raw.name.value.trim().to_string(),
        user_id,
        exporter_url,
    })
}

fn check_discord(c: &mut Checker, d: &Spanned<raw::RawDiscord>) -> Option<DiscordConnection> {
    let raw = &d.value;
    if let Some(inline) = &raw.token {
        c.error(
            inline,
            "discord.token",
            "a token written in the config file is refused: config files end up in version control, backups and logs; set token_env (an environment variable) or token_file (a file readable only by the prober) instead",
        );
        return None;
    }
    let token = match (&raw.token_env, &raw.token_file) {
        (Some(env), None) => {
            if env.value.trim().is_empty() {
                c.error(
                    env,
                    "discord.token_env",
                    "environment variable name is empty",
                );
                return None;
            }
            let name_re = Regex::new("^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex");
            if !name_re.is_match(env.value.trim()) {
                // Never echoed: it may be the token itself, pasted here.
                c.error(
                    env,
                    "discord.token_env",
                    "this is not an environment variable name (letters, digits and _, not starting with a digit), so it is not shown: if it is the token itself, revoke it and put the variable's name here instead",
                );
                return None;
            }
            TokenSource::Env(env.value.trim().to_string())
        }
        (None, Some(file)) => {
            if file.value.trim().is_empty() {
                c.error(file, "discord.token_file", "file name is empty");
                return None;
            }
            TokenSource::File(file.value.trim().into())
        }
        (Some(_), Some(file)) => {
            c.error(
                file,
                "discord.token_file",
                "set either token_env or token_file, not both",
            );
            return None;
        }
        (None, None) => {
            c.error(
                d,
                "discord",
                "the prober's token is not configured: set token_env (an environment variable) or token_file",
            );
            return None;
        }
    };
    let api_base = match &raw.api_base {
        Some(u) => c.url(u, "discord.api_base")?,
        None => Url::parse(DEFAULT_DISCORD_API_BASE).expect("static URL"),
    };
    let send_interval = match &raw.send_interval {
        Some(t) => {
            let d = c.duration(t, "discord.send_interval")?;
            if d < Duration::from_secs(1) {
                c.error(
                    t,
                    "discord.send_interval",
                    "must be at least 1s: Discord allows about 5 messages per 5 s in a channel, and the prober stays well below",
                );
                return None;
            }
            d
        }
        None => DEFAULT_SEND_INTERVAL,
    };
    Some(DiscordConnection {
        token,
        api_base,
        send_interval,
        message_content_intent: raw.message_content_intent,
    })
}

pub(super) struct ProbeContext<'a> {
    pub(super) target: &'a Option<Target>,
    pub(super) has_discord: bool,
    pub(super) default_every: Option<Schedule>,
    pub(super) default_timeout: Option<Duration>,
    pub(super) global_labels: &'a BTreeMap<String, String>,
}

fn check_probe(
    c: &mut Checker,
    probe: &Spanned<RawProbe>,
    path: &str,
    ctx: &ProbeContext<'_>,
) -> Option<Vec<ProbeSpec>> {
    let p = &probe.value;
    let errors_before = c.errors.len();

    let schedule = match (&p.every, &p.cron) {
        (Some(_), Some(cron)) => {
            c.error(
                cron,
                &format!("{path}.cron"),
                "set either every or cron, not both",
            );
            None
        }
        (Some(every), None) => c.every(every, &format!("{path}.every")),
        (None, Some(cron)) => c.cron(cron, &format!("{path}.cron")),
        (None, None) => ctx.default_every.clone(),
    };
    let timeout = match &p.timeout {
        Some(t) => c.duration(t, &format!("{path}.timeout")),
        None => ctx.default_timeout,
    };
    if let (Some(interval), Some(timeout)) =
        (schedule.as_ref().and_then(Schedule::min_interval), timeout)
        && timeout >= interval
    {
        let message = format!(
            "timeout {} must be shorter than the interval between runs ({})",
            humantime::format_duration(timeout),
            humantime::format_duration(interval)
        );
        match (&p.timeout, &p.every, &p.cron) {
            (Some(t), _, _) => c.error(t, &format!("{path}.timeout"), message),
            (None, Some(e), _) => c.error(e, &format!("{path}.every"), message),
            (None, None, Some(cr)) => c.error(cr, &format!("{path}.cron"), message),
            (None, None, None) => c.error(probe, path, message),
        }
    }

    let mut labels = ctx.global_labels.clone();
    labels.extend(c.labels(&p.labels, &format!("{path}.labels")));

    let mut kinds = Vec::new();
    let mut note = |name: &'static str, line: u64, column: u64| kinds.push((name, line, column));
    if let Some(e) = &p.exporter {
        note("exporter", e.referenced.line(), e.referenced.column());
    }
    if let Some(h) = &p.http {
        note("http", h.referenced.line(), h.referenced.column());
    }
    if let Some(x) = &p.command {
        note("command", x.referenced.line(), x.referenced.column());
    }
    if let Some(x) = &p.presence {
        note("presence", x.referenced.line(), x.referenced.column());
    }
    if let Some(x) = &p.interactions {
        note("interactions", x.referenced.line(), x.referenced.column());
    }
    let kind_names = "exporter, http, command, presence, interactions";
    let kind = match kinds.len() {
        0 => {
            c.error(
                &p.name,
                path,
                format!("no probe kind: add exactly one of the sections {kind_names}"),
            );
            None
        }
        1 => {
            if kinds[0].0 != "exporter" && kinds[0].0 != "http" {
                let needs = |c: &mut Checker, what: &str| {
                    if !ctx.has_discord {
                        c.error(
                            &p.name,
                            path,
                            format!("{what} probes talk to Discord: add a discord section with the prober's token"),
                        );
                    }
                };
                needs(c, kinds[0].0);
            }
            if let Some(e) = &p.exporter {
                check_exporter(c, e, &format!("{path}.exporter"), ctx.target, false)
                    .map(|k| vec![ProbeKind::Exporter(k)])
            } else if let Some(h) = &p.http {
                check_http(c, h, &format!("{path}.http"), false).map(|k| vec![ProbeKind::Http(k)])
            } else if let Some(x) = &p.command {
                check_command(c, x, &format!("{path}.command"), ctx.target, false)
                    .map(|k| vec![ProbeKind::Command(k)])
            } else if let Some(x) = &p.presence {
                check_presence(c, x, &format!("{path}.presence"))
                    .map(|ks| ks.into_iter().map(ProbeKind::Presence).collect())
            } else if let Some(x) = &p.interactions {
                check_interactions(c, x, &format!("{path}.interactions"), ctx.target)
                    .map(|k| vec![ProbeKind::Interactions(k)])
            } else {
                None
            }
        }
        _ => {
            kinds.sort_by_key(|k| (k.1, k.2));
            let names: Vec<&str> = kinds.iter().map(|k| k.0).collect();
            let (_, line, column) = kinds[1];
            c.errors.push(ConfigError {
                file: c.file.clone(),
                line,
                column,
                path: format!("{path}.{}", kinds[1].0),
                message: format!(
                    "a probe has exactly one kind, found {}",
                    names.join(" and ")
                ),
            });
            None
        }
    };
    if p.presence.is_some() && labels.contains_key("shard") {
        c.error(
            &p.name,
            &format!("{path}.labels"),
            "presence probes set the shard label themselves",
        );
    }

    if c.errors.len() > errors_before {
        return None;
    }
    let (schedule, timeout) = (schedule?, timeout?);
    Some(
        kind?
            .into_iter()
            .map(|kind| {
                let mut labels = labels.clone();
                if let ProbeKind::Presence(ps) = &kind {
                    labels.insert("shard".into(), ps.shard.to_string());
                }
                ProbeSpec {
                    name: p.name.value.clone(),
                    schedule: schedule.clone(),
                    timeout,
                    labels,
                    kind,
                }
            })
            .collect(),
    )
}

pub(super) fn snowflake(c: &mut Checker, v: &Spanned<Snowflake>, path: &str) -> Option<u64> {
    let parsed = match &v.value {
        Snowflake::Number(n) => Some(*n),
        Snowflake::Text(s) => s.trim().parse::<u64>().ok(),
    }
    .filter(|n| *n > 0);
    if parsed.is_none() {
        c.error(v, path, "expected a Discord snowflake (a positive integer)");
    }
    parsed
}

/// A `command` section. In a module (`module`) the channel comes from the
/// scrape's target (one of `channels`, which the caller checks): the spec's
/// `channel_id` is 0 until then.
pub(super) fn check_command(
    c: &mut Checker,
    x: &Spanned<raw::RawCommand>,
    path: &str,
    target: &Option<Target>,
    module: bool,
) -> Option<CommandSpec> {
    let raw = &x.value;
    let errors_before = c.errors.len();
    let channel_id = match (&raw.channel_id, module) {
        (Some(id), false) => snowflake(c, id, &format!("{path}.channel_id")),
        (None, false) => {
            c.error(
                x,
                &format!("{path}.channel_id"),
                "missing channel_id: the channel to send in",
            );
            None
        }
        (Some(id), true) => {
            c.error(
                id,
                &format!("{path}.channel_id"),
                "a module's channel is the scrape's target: list the channels it may use in channels instead",
            );
            None
        }
        (None, true) => Some(0),
    };
    if raw.channels.is_some() && !module {
        c.error(
            x,
            &format!("{path}.channels"),
            "channels is for modules; a probe names its channel_id",
        );
    }
    let guild_id = match (&raw.guild_id, module) {
        (Some(g), true) => {
            c.error(
                g,
                &format!("{path}.guild_id"),
                "a module's guilds go with its channels: channels: [{channel_id, guild_id}]",
            );
            None
        }
        (g, _) => g
            .as_ref()
            .and_then(|g| snowflake(c, g, &format!("{path}.guild_id"))),
    };
    let user_id = target.as_ref().and_then(|t| t.user_id);
    if user_id.is_none() {
        c.error(
            x,
            path,
            "command probes need target.user_id: only messages from that id count as the bot's replies",
        );
    }
    let message = raw
        .message
        .value
        .replace("{target}", &format!("<@{}>", user_id.unwrap_or(0)));
    if message.trim().is_empty() {
        c.error(
            &raw.message,
            &format!("{path}.message"),
            "the message is empty",
        );
    } else if message.chars().count() > 2000 {
        c.error(
            &raw.message,
            &format!("{path}.message"),
            "Discord messages are at most 2000 characters",
        );
    }
    let expect = match &raw.expect {
        Some(m) => check_match(c, m, &format!("{path}.expect")),
        None => Some(ReplyMatch::default()),
    };
    let error_reply = raw
        .error_reply
        .as_ref()
        .map(|m| check_match(c, m, &format!("{path}.error_reply")));
    if c.errors.len() > errors_before {
        return None;
    }
    Some(CommandSpec {
        channel_id: channel_id?,
        guild_id,
        message,
        expect: expect?,
        error_reply: error_reply.flatten(),
        cleanup: raw.cleanup.unwrap_or(false),
        turn_wait: Duration::ZERO,
    })
}

pub(super) fn check_match(
    c: &mut Checker,
    m: &Spanned<raw::RawMatch>,
    path: &str,
) -> Option<ReplyMatch> {
    let raw = &m.value;
    let errors_before = c.errors.len();
    let regex = |c: &mut Checker, t: &Option<Text>, field: &str| {
        t.as_ref()
            .and_then(|t| c.regex(t, &format!("{path}.{field}")))
    };
    let out = ReplyMatch {
        contains: raw.contains.as_ref().map(|t| t.value.clone()),
        regex: regex(c, &raw.regex, "regex"),
        embed_title: regex(c, &raw.embed_title, "embed_title"),
        embed_description: regex(c, &raw.embed_description, "embed_description"),
        embed_fields: raw
            .embed_fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let name = c.regex(&f.name, &format!("{path}.embed_fields[{i}].name"))?;
                let value = match &f.value {
                    Some(v) => Some(c.regex(v, &format!("{path}.embed_fields[{i}].value"))?),
                    None => None,
                };
                Some((name, value))
            })
            .collect(),
    };
    if out.is_empty() {
        c.error(
            m,
            path,
            "give at least one of contains, regex, embed_title, embed_description, embed_fields",
        );
    }
    (c.errors.len() == errors_before).then_some(out)
}

fn check_interactions(
    c: &mut Checker,
    x: &Spanned<raw::RawInteractions>,
    path: &str,
    target: &Option<Target>,
) -> Option<InteractionsSpec> {
    let raw = &x.value;
    let errors_before = c.errors.len();
    if target.as_ref().and_then(|t| t.user_id).is_none() {
        c.error(
            x,
            path,
            "interactions probes recognise the bot's responses by its user id: set target.user_id",
        );
    }
    if raw.guilds.is_empty() && raw.channels.is_empty() {
        c.error(
            x,
            path,
            "list the guilds or channels to watch (guilds: [...] or channels: [...])",
        );
    }
    let ids = |c: &mut Checker, list: &[Spanned<Snowflake>], field: &str| -> Vec<u64> {
        list.iter()
            .enumerate()
            .filter_map(|(i, g)| snowflake(c, g, &format!("{path}.{field}[{i}]")))
            .collect()
    };
    let guilds = ids(c, &raw.guilds, "guilds");
    let channels = ids(c, &raw.channels, "channels");
    let mut commands: Vec<String> = Vec::new();
    if raw.commands.is_empty() {
        c.error(
            x,
            &format!("{path}.commands"),
            "list the commands to measure one by one (others count as \"other\")",
        );
    }
    for (i, name) in raw.commands.iter().enumerate() {
        let here = format!("{path}.commands[{i}]");
        let n = name.value.trim_start_matches('/');
        let valid = (1..=32).contains(&n.chars().count())
            && n.chars()
                .all(|ch| (ch.is_alphanumeric() && !ch.is_uppercase()) || ch == '-' || ch == '_');
        if !valid {
            c.error(
                name,
                &here,
                format!(
                    "{:?} is not a slash command name (1-32 lowercase letters, digits, - or _)",
                    name.value
                ),
            );
        } else if n == "other" {
            c.error(
                name,
                &here,
                "\"other\" is the label of every command not listed: it cannot be listed",
            );
        } else if commands.iter().any(|x| x == n) {
            c.error(name, &here, format!("command {n:?} is listed twice"));
        } else {
            commands.push(n.to_string());
        }
    }
    let error_reply = raw
        .error_reply
        .as_ref()
        .map(|m| check_match(c, m, &format!("{path}.error_reply")));
    let max_latency = raw
        .max_latency
        .as_ref()
        .and_then(|t| c.duration(t, &format!("{path}.max_latency")));
    if c.errors.len() > errors_before {
        return None;
    }
    Some(InteractionsSpec {
        guilds,
        channels,
        commands,
        error_reply: error_reply.flatten(),
        max_latency,
    })
}

fn check_presence(
    c: &mut Checker,
    x: &Spanned<raw::RawPresence>,
    path: &str,
) -> Option<Vec<PresenceSpec>> {
    let raw = &x.value;
    let errors_before = c.errors.len();
    let shard_count = match &raw.shard_count {
        Some(n) if n.value == 0 => {
            c.error(
                n,
                &format!("{path}.shard_count"),
                "shard_count must be at least 1",
            );
            1
        }
        Some(n) => n.value,
        None => 1,
    };
    if raw.guilds.is_empty() {
        c.error(
            x,
            &format!("{path}.guilds"),
            "list at least one guild the prober shares with the bot",
        );
    }
    let mut specs: Vec<PresenceSpec> = Vec::new();
    for (i, g) in raw.guilds.iter().enumerate() {
        let here = format!("{path}.guilds[{i}]");
        let Some(guild_id) = snowflake(c, g, &here) else {
            continue;
        };
        let shard = (guild_id >> 22) % shard_count;
        if let Some(other) = specs.iter().find(|s| s.shard == shard) {
            c.error(
                g,
                &here,
                format!(
                    "guild {guild_id} is on shard {shard}, like guild {}: list one guild per shard",
                    other.guild_id
                ),
            );
            continue;
        }
        specs.push(PresenceSpec {
            guild_id,
            shard,
            shard_count,
        });
    }
    (c.errors.len() == errors_before).then_some(specs)
}

/// An `exporter` section; in a module (`module`) the URL is the scrape's target.
pub(super) fn check_exporter(
    c: &mut Checker,
    e: &Spanned<raw::RawExporter>,
    path: &str,
    target: &Option<Target>,
    module: bool,
) -> Option<ExporterSpec> {
    let raw = &e.value;
    let errors_before = c.errors.len();
    let url = match &raw.url {
        Some(u) if module => {
            c.error(u, &format!("{path}.url"), modules::TARGET_FIELD_IN_MODULE);
            None
        }
        None if module => Some(modules::target_placeholder()),
        Some(u) => c.url(u, &format!("{path}.url")),
        None => match target.as_ref().and_then(|t| t.exporter_url.clone()) {
            Some(u) => Some(u),
            None => {
                c.error(
                    e,
                    &format!("{path}.url"),
                    "no exporter URL: set url here or target.exporter_url",
                );
                None
            }
        },
    };
    let min_uptime = raw
        .min_uptime
        .as_ref()
        .and_then(|t| c.duration(t, &format!("{path}.min_uptime")));
    let start_time_metric = match &raw.start_time_metric {
        Some(m) => {
            let name_re = Regex::new("^[a-zA-Z_:][a-zA-Z0-9_:]*$").expect("static regex");
            if !name_re.is_match(&m.value) {
                c.error(
                    m,
                    &format!("{path}.start_time_metric"),
                    format!("invalid metric name {:?}", m.value),
                );
            }
            m.value.clone()
        }
        None => DEFAULT_START_TIME_METRIC.to_string(),
    };
    let mut assertions = Vec::new();
    for (i, a) in raw.assertions.iter().enumerate() {
        match Assertion::parse(&a.value) {
            Ok(parsed) => assertions.push(parsed),
            Err(why) => c.error(
                a,
                &format!("{path}.assertions[{i}]"),
                format!("invalid assertion {:?}: {why}", a.value),
            ),
        }
    }
    let max_body_size = match &raw.max_body_size {
        Some(t) => c.size(t, &format!("{path}.max_body_size")),
        None => Some(DEFAULT_MAX_BODY_SIZE),
    };
    if c.errors.len() > errors_before {
        return None;
    }
    Some(ExporterSpec {
        url: url?,
        min_uptime,
        start_time_metric,
        assertions,
        max_body_size: max_body_size?,
    })
}

/// An `http` section; in a module (`module`) the URL is the scrape's target.
pub(super) fn check_http(
    c: &mut Checker,
    h: &Spanned<raw::RawHttp>,
    path: &str,
    module: bool,
) -> Option<HttpSpec> {
    let raw = &h.value;
    let errors_before = c.errors.len();
    let url = match (&raw.url, module) {
        (Some(u), false) => c.url(u, &format!("{path}.url")),
        (None, false) => {
            c.error(h, &format!("{path}.url"), "missing url: the URL to probe");
            None
        }
        (Some(u), true) => {
            c.error(u, &format!("{path}.url"), modules::TARGET_FIELD_IN_MODULE);
            None
        }
        (None, true) => Some(modules::target_placeholder()),
    };
    let method = match &raw.method {
        None => HttpMethod::Get,
        Some(m) => match m.value.to_ascii_uppercase().as_str() {
            "GET" => HttpMethod::Get,
            "HEAD" => HttpMethod::Head,
            _ => {
                c.error(
                    m,
                    &format!("{path}.method"),
                    format!("unsupported method {:?} (use GET or HEAD)", m.value),
                );
                HttpMethod::Get
            }
        },
    };
    let expect_status = match &raw.expect_status {
        None => StatusSet::any_2xx(),
        Some(items) => check_statuses(c, items, &format!("{path}.expect_status")),
    };
    let body_regex = match &raw.body_regex {
        None => None,
        Some(r) => {
            if method == HttpMethod::Head {
                c.error(
                    r,
                    &format!("{path}.body_regex"),
                    "body_regex needs a body, but HEAD responses have none: use method GET",
                );
            }
            c.regex(r, &format!("{path}.body_regex"))
        }
    };
    let max_body_size = match &raw.max_body_size {
        Some(t) => c.size(t, &format!("{path}.max_body_size")),
        None => Some(DEFAULT_MAX_BODY_SIZE),
    };
    if c.errors.len() > errors_before {
        return None;
    }
    Some(HttpSpec {
        url: url?,
        method,
        expect_status,
        body_regex,
        max_body_size: max_body_size?,
        follow_redirects: raw.follow_redirects.unwrap_or(true),
    })
}

fn check_statuses(c: &mut Checker, items: &[Spanned<StatusItem>], path: &str) -> StatusSet {
    let class_re = Regex::new("^([1-5])[xX][xX]$").expect("static regex");
    let mut set = StatusSet {
        codes: vec![],
        classes: vec![],
    };
    if items.is_empty() {
        set.classes.push(2);
    }
    for (i, item) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        match &item.value {
            StatusItem::Code(code) if (100..=599).contains(code) => set.codes.push(*code as u16),
            StatusItem::Text(t) if class_re.is_match(t.trim()) => {
                let digit = t.trim().as_bytes()[0] - b'0';
                set.classes.push(u16::from(digit));
            }
            StatusItem::Text(t)
                if t.trim()
                    .parse::<u16>()
                    .is_ok_and(|n| (100..=599).contains(&n)) =>
            {
                set.codes.push(t.trim().parse().expect("checked above"));
            }
            _ => c.error(
                item,
                &here,
                "expected an HTTP status code (100-599) or a class such as \"2xx\"",
            ),
        }
    }
    set
}
