//! twi-sandbox: a local Discord stand-in (REST v10 + Gateway v10) with a
//! simulated Twi Bot Shard, fault injection and ground truth. It uses
//! nothing of the prober; see README.md beside this crate.
//!
//! [`Sandbox::start`] binds its listeners on the address given (port 0 in
//! tests) and returns a handle with every URL and a control API as methods;
//! the same controls are served over HTTP under `/_sandbox/`.

pub mod bot;
pub mod config;
mod control;
mod faults;
mod gateway;
mod hub;
mod intents;
mod interactions;
mod model;
mod ratelimit;
mod rest;
pub mod snowflake;
mod truth;
mod world;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use bot::{BotBehaviour, Latency};
pub use config::SandboxConfig;
pub use control::Controls;
pub use faults::HttpFault;
pub use interactions::{InteractionTruth, InteractionTruthJson, RunCommand};
pub use truth::{DispatchTruth, MessageTruth, MessageTruthJson};

use hub::Core;
use rest::Rest;

/// How often the simulated bot of `probe serve --sandbox` has a
/// spontaneous outage: about every `Some(d)` (each gap drawn between d/2 and
/// 3d/2), or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageRate(pub Option<std::time::Duration>);

/// How long a spontaneous outage lasts, in seconds (drawn uniformly).
const OUTAGE_SECONDS: std::ops::Range<u64> = 20..41;

/// `--sandbox-outages`: `off`, or a duration of at least 1 s (`10m`).
pub fn parse_outage_rate(s: &str) -> Result<OutageRate, String> {
    if s == "off" {
        return Ok(OutageRate(None));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (or `off`)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("{s:?} is too often: at least 1s (or `off`)"));
    }
    Ok(OutageRate(Some(d)))
}

impl OutageRate {
    /// The start-up line of `probe serve --sandbox` that says so.
    pub fn describe(&self) -> String {
        match self.0 {
            None => "simulated outages off (--sandbox-outages)".to_string(),
            Some(d) => format!(
                "simulated outages: the bot goes offline on its own for {}-{} s about every {} ({}-{} apart; logged as \"simulated outage\"; --sandbox-outages DURATION or off)",
                OUTAGE_SECONDS.start,
                OUTAGE_SECONDS.end - 1,
                humantime::format_duration(d),
                humantime::format_duration(d / 2),
                humantime::format_duration(d * 3 / 2),
            ),
        }
    }
}

/// Takes the simulated bot offline for 20-40 s at about the given rate, as
/// real bots have short outages; each is logged as a simulated outage, never
/// as a control request (the task ends with the sandbox's runtime).
pub fn occasional_outages(controls: Arc<Controls>, rate: OutageRate) {
    let Some(every) = rate.0 else { return };
    tokio::spawn(async move {
        loop {
            let gap = every.mul_f64(rand::random_range(0.5..1.5));
            let outage = std::time::Duration::from_secs(rand::random_range(OUTAGE_SECONDS));
            tokio::time::sleep(gap).await;
            if controls.simulated_outage_start(outage).await.is_err() {
                return;
            }
            tokio::time::sleep(outage).await;
            let _ = controls.simulated_outage_end().await;
        }
    });
}

/// Simulated users running the simulated bot's slash commands at a steady
/// `per_minute` rate (the first at once, once the bot has registered them),
/// each a random human account in a random channel it can see, so a
/// passive `interactions` probe has real traffic to measure. The task ends
/// with the sandbox's runtime, or when the sandbox refuses commands.
pub fn simulated_users(controls: Arc<Controls>, per_minute: f64) {
    if per_minute <= 0.0 || !per_minute.is_finite() {
        return;
    }
    let every = std::time::Duration::from_secs_f64(60.0 / per_minute);
    tokio::spawn(async move {
        let Some(bot) = controls.bot().cloned() else {
            return;
        };
        bot.slash_commands_ready().await;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some((user, channel)) = controls.random_user_and_channel() else {
                return;
            };
            let i = rand::random_range(0..bot::SLASH_COMMANDS.len());
            let command = bot::SLASH_COMMANDS[i].0.to_string();
            let run = RunCommand {
                user,
                channel,
                command,
                options: None,
            };
            if let Err(e) = controls.run_command(&run) {
                tracing::warn!(target: "twi_sandbox", "simulated users stop: {e}");
                return;
            }
        }
    });
}

/// A running sandbox. Dropping it does not stop it: call [`Sandbox::shutdown`].
pub struct Sandbox {
    core: Arc<Core>,
    controls: Arc<Controls>,
    description: Description,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// What `probe sandbox --describe` writes: everything a client needs.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Description {
    /// Base URL to give a Discord library instead of `https://discord.com`.
    pub rest_base: String,
    /// `{rest_base}/api/v10`.
    pub api_base: String,
    pub gateway_url: String,
    pub control_url: String,
    /// The simulated bot's Prometheus exporter (absent when the bot is off).
    pub exporter_url: Option<String>,
    /// A webhook that posts into `#probes` (Discord's execute-webhook URL).
    pub webhook_url: Option<String>,
    pub accounts: Vec<AccountDescription>,
    pub guilds: Vec<GuildDescription>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AccountDescription {
    pub name: String,
    pub id: String,
    pub token: String,
    pub bot: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct GuildDescription {
    pub name: String,
    pub id: String,
    pub channels: Vec<ChannelDescription>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ChannelDescription {
    pub name: String,
    pub id: String,
}

impl Sandbox {
    /// Starts the REST/control server on `listen`, the gateway and the bot's
    /// exporter on the same IP with ports chosen by the system.
    pub async fn start(cfg: SandboxConfig, listen: SocketAddr) -> Result<Sandbox, String> {
        let core = Core::new(cfg)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("sandbox: cannot listen on {addr}: {e}"))
        };
        let rest_listener = bind(listen).await?;
        let rest_addr = rest_listener.local_addr().map_err(|e| e.to_string())?;
        let gateway_listener = bind(SocketAddr::new(listen.ip(), 0)).await?;
        let gateway_addr = gateway_listener.local_addr().map_err(|e| e.to_string())?;
        let rest_base = format!("http://{rest_addr}");
        let gateway_url = format!("ws://{gateway_addr}");
        let _ = core.gateway_url.set(gateway_url.clone());

        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();

        let bot = if core.cfg.bot.enabled {
            let state = core.state();
            let account = state
                .world
                .accounts
                .iter()
                .find(|a| a.name == core.cfg.bot.account)
                .cloned()
                .ok_or_else(|| {
                    format!("bot.account: no account named {:?}", core.cfg.bot.account)
                })?;
            let allowed = core
                .cfg
                .bot
                .allowed_bots
                .iter()
                .map(|n| {
                    state
                        .world
                        .account_id(n)
                        .ok_or(format!("bot.allowed_bots: no account named {n:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            drop(state);
            Some(bot::SimBot::new(
                account.id,
                account.token,
                rest_base.clone(),
                allowed,
                core.cfg.bot.behaviour.clone(),
                core.cfg.bot.started_ago,
                core.cfg.retention.truth_records,
            ))
        } else {
            None
        };
        let exporter_url = match &bot {
            Some(bot) => {
                let listener = bind(SocketAddr::new(listen.ip(), 0)).await?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                let bot = bot.clone();
                let app = Router::new().route(
                    "/metrics",
                    get(move || {
                        let bot = bot.clone();
                        async move {
                            (
                                [(
                                    axum::http::header::CONTENT_TYPE,
                                    "text/plain; version=0.0.4; charset=utf-8",
                                )],
                                bot.render_metrics().await,
                            )
                        }
                    }),
                );
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                });
                Some(format!("http://{addr}/metrics"))
            }
            None => None,
        };

        let description = describe(&core, &rest_base, &gateway_url, exporter_url);
        let controls = Arc::new(Controls {
            core: core.clone(),
            bot: bot.clone(),
        });
        let rest = Arc::new(Rest {
            core: core.clone(),
            limiter: Default::default(),
        });
        let app = Router::new()
            .route(
                "/api/v10/{*path}",
                any(move |method, uri, headers, body| {
                    rest.clone().handle(method, uri, headers, body)
                }),
            )
            .nest(
                "/_sandbox",
                control::router(controls.clone(), description.clone()),
            );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _ = axum::serve(rest_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        tasks.spawn(gateway::serve(
            core.clone(),
            gateway_listener,
            shutdown.clone(),
        ));

        if let Some(bot) = &bot {
            bot.go_online().await?;
        }
        core.log_event(&format!(
            "sandbox: REST on {rest_base}, gateway on {gateway_url}"
        ));
        Ok(Sandbox {
            core,
            controls,
            description,
            shutdown,
            tasks,
        })
    }

    pub fn description(&self) -> &Description {
        &self.description
    }

    /// An account's id and token by name.
    pub fn account(&self, name: &str) -> Option<&AccountDescription> {
        self.description.accounts.iter().find(|a| a.name == name)
    }

    /// A channel id by name (`probes`, or `guild/channel`).
    pub fn channel_id(&self, name: &str) -> Option<u64> {
        self.core.state().world.find_channel(name).map(|c| c.id)
    }

    /// Fault injection and ground truth; also served under `/_sandbox/`.
    pub fn control(&self) -> &Arc<Controls> {
        &self.controls
    }

    /// Stops every server and the simulated bot.
    pub async fn shutdown(mut self) {
        if let Some(bot) = &self.controls.bot {
            bot.go_offline().await;
        }
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn describe(
    core: &Core,
    rest_base: &str,
    gateway_url: &str,
    exporter_url: Option<String>,
) -> Description {
    let state = core.state();
    let w = &state.world;
    let webhook_url = w
        .webhooks
        .values()
        .next()
        .map(|h| format!("{rest_base}/api/v10/webhooks/{}/{}", h.id, h.token));
    Description {
        rest_base: rest_base.to_string(),
        api_base: format!("{rest_base}/api/v10"),
        gateway_url: gateway_url.to_string(),
        control_url: format!("{rest_base}/_sandbox"),
        exporter_url,
        webhook_url,
        accounts: w
            .accounts
            .iter()
            .map(|a| AccountDescription {
                name: a.name.clone(),
                id: a.id.to_string(),
                token: a.token.clone(),
                bot: a.bot,
            })
            .collect(),
        guilds: w
            .guilds
            .iter()
            .map(|g| GuildDescription {
                name: g.name.clone(),
                id: g.id.to_string(),
                channels: g
                    .channels
                    .iter()
                    .filter_map(|c| w.channels.get(c))
                    .map(|c| ChannelDescription {
                        name: c.name.clone(),
                        id: c.id.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
