//! A sandbox world built from a probes.yaml, so the same file serves
//! production and the sandbox (`probe run --sandbox`, `probe serve --sandbox`).

use url::Url;

use twi_sandbox::Description;
use twi_sandbox::config::{ChannelConfig, GuildConfig, SandboxConfig, WebhookConfig};

use crate::config::{Config, ModuleTargets, ProbeKind};

/// The sandbox for `config`: the target bot under its configured user id,
/// and every guild and channel the Discord probes name.
pub fn sandbox_for(config: &Config) -> SandboxConfig {
    let mut cfg = SandboxConfig::default();
    let target = config.target.name.clone();
    // The default accounts are prober, twi-bot-shard, erin: the target
    // takes the second one's place under its own name and id.
    cfg.accounts[1].name = target.clone();
    cfg.accounts[1].id = config.target.user_id;
    cfg.bot.account = target;
    // A bot that has been up a while, so uptime checks start green.
    cfg.bot.started_ago = std::time::Duration::from_secs(3600);

    let mut guilds: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut loose_channels = Vec::new();
    for p in &config.probes {
        match &p.kind {
            ProbeKind::Presence(ps) => add_guild(&mut guilds, ps.guild_id),
            ProbeKind::Command(c) => {
                add_channel(&mut guilds, &mut loose_channels, c.channel_id, c.guild_id)
            }
            ProbeKind::Interactions(i) => {
                for g in &i.guilds {
                    add_guild(&mut guilds, *g);
                }
                loose_channels.extend(i.channels.iter().copied());
            }
            _ => {}
        }
    }
    // What modules may name (GET /probe) exists too.
    for m in config.modules.values() {
        match &m.targets {
            ModuleTargets::Channels(list) => {
                for (channel, guild) in list {
                    add_channel(&mut guilds, &mut loose_channels, *channel, *guild);
                }
            }
            ModuleTargets::Guilds(list) => {
                for g in list {
                    add_guild(&mut guilds, *g);
                }
            }
            ModuleTargets::Urls(_) => {}
        }
    }
    if guilds.is_empty() && loose_channels.is_empty() {
        return cfg;
    }
    let default_guild = cfg.guilds[0].clone();
    cfg.guilds = guilds
        .iter()
        .enumerate()
        .map(|(i, (id, channels))| GuildConfig {
            name: if i == 0 {
                default_guild.name.clone()
            } else {
                format!("guild-{}", i + 1)
            },
            id: Some(*id),
            members: None,
            channels: channels
                .iter()
                .enumerate()
                .map(|(j, c)| channel(&format!("{i}-{j}"), Some(*c)))
                .collect(),
        })
        .collect();
    if cfg.guilds.is_empty() {
        cfg.guilds.push(GuildConfig {
            channels: vec![],
            ..default_guild
        });
    }
    for c in loose_channels {
        if !cfg.guilds[0].channels.iter().any(|x| x.id == Some(c)) {
            let n = cfg.guilds[0].channels.len();
            cfg.guilds[0]
                .channels
                .push(channel(&format!("0-{n}"), Some(c)));
        }
    }
    if cfg.guilds[0].channels.is_empty() {
        cfg.guilds[0].channels.push(channel("0-0", None));
    }
    // Name the first channel #probes, as people expect.
    cfg.guilds[0].channels[0].name = "probes".into();
    cfg.webhooks = vec![WebhookConfig {
        name: "alerts".into(),
        channel: "probes".into(),
        id: None,
        token: None,
    }];
    cfg
}

fn add_channel(
    guilds: &mut Vec<(u64, Vec<u64>)>,
    loose: &mut Vec<u64>,
    channel: u64,
    guild: Option<u64>,
) {
    match guild {
        Some(g) => {
            add_guild(guilds, g);
            let channels = &mut guilds.iter_mut().find(|(id, _)| *id == g).expect("added").1;
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        None => loose.push(channel),
    }
}

fn add_guild(guilds: &mut Vec<(u64, Vec<u64>)>, id: u64) {
    if !guilds.iter().any(|(g, _)| *g == id) {
        guilds.push((id, Vec::new()));
    }
}

fn channel(suffix: &str, id: Option<u64>) -> ChannelConfig {
    ChannelConfig {
        name: format!("probes-{suffix}"),
        id,
        hidden_from: vec![],
        read_only_for: vec![],
    }
}

/// `config` pointed at a running sandbox: Discord's base URL becomes the
/// sandbox's, and the bot's exporter URL the simulated bot's exporter.
pub fn point_at_sandbox(config: &Config, sandbox: &Description) -> Config {
    let mut config = config.clone();
    if let Some(d) = &mut config.discord
        && let Ok(base) = Url::parse(&sandbox.rest_base)
    {
        d.api_base = base;
    }
    let exporter = sandbox
        .exporter_url
        .as_deref()
        .and_then(|u| Url::parse(u).ok());
    if let Some(new) = exporter {
        let old = config.target.exporter_url.replace(new.clone());
        for p in &mut config.probes {
            if let ProbeKind::Exporter(e) = &mut p.kind
                && Some(&e.url) == old.as_ref()
            {
                e.url = new.clone();
            }
        }
    }
    config
}
