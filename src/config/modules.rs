//! `modules:`: probe templates that a scrape of
//! `GET /probe?module=NAME&target=...` applies to a target, like
//! blackbox_exporter's modules. The target fills in what the template leaves
//! out: the URL (`http`, `exporter`), the channel (`command`), the guild
//! (`presence`). Targets are checked as strictly as config values, and
//! Discord modules accept only the channels or guilds they list, so a scrape
//! can never make the prober post anywhere else.

use std::collections::{BTreeMap, HashMap, HashSet};

use regex::Regex;
use serde_saphyr::Spanned;
use url::Url;

use super::raw::{RawModule, Text};
use super::validate::{
    Checker, ProbeContext, check_command, check_exporter, check_http, snowflake,
};
use super::{PresenceSpec, ProbeKind, ProbeSpec, Schedule};

/// The message for a target field written in a module.
pub(super) const TARGET_FIELD_IN_MODULE: &str =
    "a module's URL is the scrape's target (?target=...): remove url here";

/// Where a module's template points until a scrape gives the target (a
/// reserved name that never resolves).
pub(super) fn target_placeholder() -> Url {
    Url::parse("http://scrape-target.invalid/").expect("static URL")
}

/// A validated module.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    /// The probe with a placeholder target: the series (`probe` = the
    /// module's name) and status-page history its runs count under.
    pub template: ProbeSpec,
    pub targets: ModuleTargets,
}

/// Which targets a module accepts.
#[derive(Debug, Clone)]
pub enum ModuleTargets {
    /// `http`, `exporter`: an http(s) URL, matching `allow_targets` if set.
    Urls(Option<Regex>),
    /// `command`: one of these channels (with the guild, when given).
    Channels(Vec<(u64, Option<u64>)>),
    /// `presence`: one of these guilds.
    Guilds(Vec<u64>),
}

impl Module {
    pub fn kind(&self) -> &'static str {
        self.template.kind.name()
    }

    /// The probe this module makes of a scrape's `target`, or why the
    /// target is refused (a sentence for a 400 answer).
    pub fn probe_for(&self, target: &str) -> Result<ProbeSpec, String> {
        let mut spec = self.template.clone();
        let refuse = |why: String| Err(format!("module {:?}: {why}", self.name));
        match (&self.targets, &mut spec.kind) {
            (ModuleTargets::Urls(allow), ProbeKind::Http(_) | ProbeKind::Exporter(_)) => {
                // Not quoted back: URLs can carry credentials.
                if target.trim() != target {
                    return refuse("the target URL has surrounding spaces".into());
                }
                let url = match Url::parse(target) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
                    Ok(u) => {
                        return refuse(format!(
                            "unsupported URL scheme {:?} in the target (use http or https)",
                            u.scheme()
                        ));
                    }
                    Err(e) => return refuse(format!("the target is not a URL: {e}")),
                };
                if let Some(allow) = allow
                    && !allow.is_match(target)
                {
                    return refuse(format!(
                        "the target URL does not match modules.{}.allow_targets",
                        self.name
                    ));
                }
                match &mut spec.kind {
                    ProbeKind::Http(h) => h.url = url,
                    ProbeKind::Exporter(e) => e.url = url,
                    _ => unreachable!("matched above"),
                }
            }
            (ModuleTargets::Channels(allowed), ProbeKind::Command(c)) => {
                let (guild, channel) = match target.split_once('/') {
                    Some((g, ch)) => (Some(parse_id(g)?), parse_id(ch)?),
                    None => (None, parse_id(target)?),
                };
                let Some((_, listed_guild)) = allowed.iter().find(|(ch, _)| *ch == channel) else {
                    return refuse(format!(
                        "channel {channel} is not listed in modules.{}.command.channels: a scrape may only name a listed channel",
                        self.name
                    ));
                };
                if let (Some(g), Some(listed)) = (guild, listed_guild)
                    && g != *listed
                {
                    return refuse(format!(
                        "channel {channel} is listed with guild {listed}, not {g}"
                    ));
                }
                c.channel_id = channel;
                c.guild_id = listed_guild.or(guild);
            }
            (ModuleTargets::Guilds(allowed), ProbeKind::Presence(p)) => {
                let guild = parse_id(target)?;
                if !allowed.contains(&guild) {
                    return refuse(format!(
                        "guild {guild} is not listed in modules.{}.presence.guilds",
                        self.name
                    ));
                }
                p.guild_id = guild;
                p.shard = (guild >> 22) % p.shard_count;
                spec.labels.insert("shard".into(), p.shard.to_string());
            }
            _ => unreachable!("validation pairs each kind with its targets"),
        }
        Ok(spec)
    }
}

/// A snowflake in a target: digits only, positive.
fn parse_id(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "the target {:?} is not a Discord id (digits only; GUILD/CHANNEL for a channel with its guild)",
            text.chars().take(40).collect::<String>()
        )
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(bad)
}

/// Checks every module; names must not repeat a probe's (both are the
/// `probe` label of their series).
pub(super) fn check_modules(
    c: &mut Checker,
    raw: &HashMap<Text, Spanned<RawModule>>,
    probe_names: &HashSet<String>,
    ctx: &ProbeContext<'_>,
) -> BTreeMap<String, Module> {
    let mut entries: Vec<_> = raw.iter().collect();
    entries.sort_by_key(|(k, _)| (k.referenced.line(), k.referenced.column()));
    let mut out = BTreeMap::new();
    for (name, module) in entries {
        let path = format!("modules.{}", name.value);
        if name.value.trim().is_empty() {
            c.error(name, &path, "module name is empty");
            continue;
        }
        if probe_names.contains(&name.value) {
            c.error(
                name,
                &path,
                format!(
                    "{:?} is also a probe's name: modules and probes share the probe label, so their names must differ",
                    name.value
                ),
            );
            continue;
        }
        if let Some(m) = check_module(c, &name.value, module, &path, ctx) {
            out.insert(name.value.clone(), m);
        }
    }
    out
}

fn check_module(
    c: &mut Checker,
    name: &str,
    m: &Spanned<RawModule>,
    path: &str,
    ctx: &ProbeContext<'_>,
) -> Option<Module> {
    let raw = &m.value;
    let errors_before = c.errors.len();
    let timeout = match &raw.timeout {
        Some(t) => c.duration(t, &format!("{path}.timeout")),
        None => ctx.default_timeout,
    };
    // Checked as written, then anchored: the whole target must match.
    let allow = raw.allow_targets.as_ref().and_then(|t| {
        c.regex(t, &format!("{path}.allow_targets"))?;
        Regex::new(&format!("^(?:{})$", t.value)).ok()
    });
    let sections = [
        raw.http.as_ref().map(|_| "http"),
        raw.exporter.as_ref().map(|_| "exporter"),
        raw.command.as_ref().map(|_| "command"),
        raw.presence.as_ref().map(|_| "presence"),
        raw.interactions.as_ref().map(|_| "interactions"),
    ];
    let given: Vec<&str> = sections.into_iter().flatten().collect();
    if given.len() != 1 {
        c.error(
            m,
            path,
            format!(
                "a module has exactly one kind (http, exporter, command, presence), found {}",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(" and ")
                }
            ),
        );
        return None;
    }
    if raw.allow_targets.is_some() && raw.http.is_none() && raw.exporter.is_none() {
        c.error(
            m,
            &format!("{path}.allow_targets"),
            "allow_targets is for http and exporter modules; Discord modules list their channels or guilds",
        );
    }
    if (raw.command.is_some() || raw.presence.is_some()) && !ctx.has_discord {
        c.error(
            m,
            path,
            format!(
                "{} modules talk to Discord: add a discord section with the prober's token",
                given[0]
            ),
        );
    }
    let (kind, targets) = if let Some(h) = &raw.http {
        let spec = check_http(c, h, &format!("{path}.http"), true);
        (spec.map(ProbeKind::Http), ModuleTargets::Urls(allow))
    } else if let Some(e) = &raw.exporter {
        let spec = check_exporter(c, e, &format!("{path}.exporter"), ctx.target, true);
        (spec.map(ProbeKind::Exporter), ModuleTargets::Urls(allow))
    } else if let Some(x) = &raw.command {
        let here = format!("{path}.command");
        let spec = check_command(c, x, &here, ctx.target, true);
        let mut channels = Vec::new();
        match &x.value.channels {
            Some(list) if !list.is_empty() => {
                for (i, ch) in list.iter().enumerate() {
                    let at = format!("{here}.channels[{i}]");
                    let id = snowflake(c, &ch.value.channel_id, &format!("{at}.channel_id"));
                    let guild = ch
                        .value
                        .guild_id
                        .as_ref()
                        .and_then(|g| snowflake(c, g, &format!("{at}.guild_id")));
                    if let Some(id) = id {
                        if channels.iter().any(|(c, _)| *c == id) {
                            c.error(ch, &at, format!("channel {id} is listed twice"));
                        }
                        channels.push((id, guild));
                    }
                }
            }
            _ => c.error(
                x,
                &format!("{here}.channels"),
                "list the channels this module may post in (channels: [{channel_id, guild_id}]): a scrape can name only those",
            ),
        }
        (
            spec.map(ProbeKind::Command),
            ModuleTargets::Channels(channels),
        )
    } else if let Some(p) = &raw.presence {
        let here = format!("{path}.presence");
        let shard_count = match &p.value.shard_count {
            Some(n) if n.value == 0 => {
                c.error(
                    n,
                    &format!("{here}.shard_count"),
                    "shard_count must be at least 1",
                );
                1
            }
            Some(n) => n.value,
            None => 1,
        };
        if p.value.guilds.is_empty() {
            c.error(
                p,
                &format!("{here}.guilds"),
                "list the guilds a scrape may name (guilds the prober shares with the bot)",
            );
        }
        let guilds = p
            .value
            .guilds
            .iter()
            .enumerate()
            .filter_map(|(i, g)| snowflake(c, g, &format!("{here}.guilds[{i}]")))
            .collect();
        let spec = PresenceSpec {
            guild_id: 0,
            shard: 0,
            shard_count,
        };
        (
            Some(ProbeKind::Presence(spec)),
            ModuleTargets::Guilds(guilds),
        )
    } else {
        let x = raw.interactions.as_ref().expect("the one kind given");
        c.error(
            x,
            &format!("{path}.interactions"),
            "interactions probes watch passively and take no target: configure one under probes",
        );
        return None;
    };
    if c.errors.len() > errors_before {
        return None;
    }
    Some(Module {
        name: name.to_string(),
        template: ProbeSpec {
            name: name.to_string(),
            schedule: Schedule::OnScrape,
            timeout: timeout?,
            labels: ctx.global_labels.clone(),
            kind: kind?,
        },
        targets,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ProbeKind, Schedule};

    const YAML: &str = r#"
target: {name: bot, user_id: "10"}
discord: {token_env: T}
defaults: {every: never}
probes:
  - name: on-scrape
    http: {url: "http://bot/"}
  - name: timed
    every: 1m
    command: {channel_id: "5", message: "!help"}
modules:
  web:
    timeout: 3s
    allow_targets: 'https://[a-z.]+/health'
    http: {}
  help:
    command:
      channels: [{channel_id: "5", guild_id: "4"}, {channel_id: "6"}]
      message: "!help"
  online:
    presence: {guilds: ["4194304"], shard_count: 2}
"#;

    fn config() -> Config {
        Config::from_yaml(YAML, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_never_means_on_scrape_only() {
        let c = config();
        assert_eq!(c.probe("on-scrape").unwrap().schedule, Schedule::OnScrape);
        assert_eq!(c.probe("on-scrape").unwrap().schedule.min_interval(), None);
        assert_eq!(
            c.probe("timed").unwrap().schedule,
            Schedule::Every(std::time::Duration::from_secs(60))
        );
        // The module's scrapes take turns in channel 5: the timed probe may
        // wait for one of them.
        let ProbeKind::Command(timed) = &c.probe("timed").unwrap().kind else {
            panic!("command")
        };
        assert!(!timed.turn_wait.is_zero());
    }

    #[test]
    fn targets_are_checked_strictly() {
        let c = config();
        let web = &c.modules["web"];
        assert_eq!(web.template.timeout, std::time::Duration::from_secs(3));
        let spec = web.probe_for("https://bot.example/health").unwrap();
        let ProbeKind::Http(h) = &spec.kind else {
            panic!("http")
        };
        assert_eq!(h.url.as_str(), "https://bot.example/health");
        // Anchored: a prefix or a suffix does not do.
        for bad in [
            "https://bot.example/health/x",
            "xhttps://bot.example/health",
            "http://bot.example/health",
        ] {
            assert!(web.probe_for(bad).is_err(), "{bad}");
        }
        let help = &c.modules["help"];
        let ProbeKind::Command(cmd) = help.probe_for("5").unwrap().kind else {
            panic!()
        };
        assert_eq!((cmd.channel_id, cmd.guild_id), (5, Some(4)));
        let ProbeKind::Command(cmd) = help.probe_for("9/6").unwrap().kind else {
            panic!()
        };
        assert_eq!((cmd.channel_id, cmd.guild_id), (6, Some(9)));
        for bad in [
            "7",
            "3/5",
            "05x",
            "",
            "0",
            "-5",
            "5/",
            "18446744073709551616",
        ] {
            assert!(help.probe_for(bad).is_err(), "{bad:?}");
        }
        let online = &c.modules["online"];
        let spec = online.probe_for("4194304").unwrap();
        assert_eq!(spec.labels.get("shard").map(String::as_str), Some("1"));
        assert!(online.probe_for("4194305").is_err());
    }

    #[test]
    fn the_sandbox_world_has_what_modules_may_name() {
        let world = crate::sandbox::sandbox_for(&config());
        let channels: Vec<u64> = world
            .guilds
            .iter()
            .flat_map(|g| g.channels.iter().filter_map(|c| c.id))
            .collect();
        assert!(
            channels.contains(&5) && channels.contains(&6),
            "{channels:?}"
        );
        assert!(world.guilds.iter().any(|g| g.id == Some(4194304)));
    }
}
