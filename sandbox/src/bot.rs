//! A simulated Twi Bot Shard: a real serenity client of the sandbox that
//! answers prefix commands like the real bot, with configurable latency,
//! errors, drops, typing and replies, and a prometheus_client-style exporter.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serenity::all::{
    Client, ClientBuilder, CommandInteraction, ConnectionStage, Context, CreateCommand,
    CreateEmbed, CreateInteractionResponse, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse, EditMessage, EventHandler, GatewayIntents, HttpBuilder, Interaction,
    Message, Ready, ShardManager,
};
use serenity::async_trait;

use super::config::humantime_serde_compat;

/// How the simulated bot behaves; every field can be changed at run time.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BotBehaviour {
    /// Time from seeing a command to replying.
    pub latency: Latency,
    /// Share of commands answered with the bot's error embed.
    pub error_rate: f64,
    /// Share of commands never answered.
    pub drop_rate: f64,
    /// Show typing before replying.
    pub typing: bool,
    /// Reply with a message reference (Discord's "reply") or a plain message.
    pub reply_with_reference: bool,
    /// Send a placeholder at once and edit it into the answer later.
    pub placeholder: bool,
    /// Release replies in bursts: each reply waits until the next multiple
    /// of this period after the bot's start, so replies to commands seen
    /// within one period go out together (a benchmark's worst case for a
    /// prober receiving them). `None`: each reply when it is ready.
    #[serde(
        default,
        with = "super::config::opt_humantime",
        skip_serializing_if = "Option::is_none"
    )]
    pub burst: Option<Duration>,
}

impl Default for BotBehaviour {
    fn default() -> Self {
        BotBehaviour {
            latency: Latency::default(),
            error_rate: 0.0,
            drop_rate: 0.0,
            typing: true,
            reply_with_reference: true,
            placeholder: false,
            burst: None,
        }
    }
}

/// How long [`SimBot::go_online`] waits for READY.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// A fixed latency (`median` alone) or a log-normal one with a long tail.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    #[serde(with = "humantime_serde_compat")]
    pub median: Duration,
    #[serde(
        default,
        with = "super::config::opt_humantime",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99: Option<Duration>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            median: Duration::from_millis(100),
            p99: None,
        }
    }
}

impl BotBehaviour {
    /// A bot as one meets it: mostly quick, with a long tail, an error reply
    /// now and then, and the odd command never answered.
    pub fn realistic() -> Self {
        BotBehaviour {
            latency: Latency {
                median: Duration::from_millis(250),
                p99: Some(Duration::from_millis(2500)),
            },
            error_rate: 0.02,
            drop_rate: 0.01,
            typing: true,
            reply_with_reference: true,
            placeholder: false,
            burst: None,
        }
    }
}

impl Latency {
    pub fn fixed(d: Duration) -> Self {
        Latency {
            median: d,
            p99: None,
        }
    }

    /// One sample. Log-normal: `median * exp(sigma * z)` with sigma chosen so
    /// that the 99th percentile is `p99` (z₀.₉₉ = 2.326).
    pub fn sample(&self) -> Duration {
        let Some(p99) = self.p99.filter(|p| *p > self.median) else {
            return self.median;
        };
        let sigma = (p99.as_secs_f64() / self.median.as_secs_f64()).ln() / 2.326;
        let mut rng = rand::rng();
        // Box–Muller for a standard normal sample.
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random_range(0.0..1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        Duration::from_secs_f64(self.median.as_secs_f64() * (sigma * z).exp())
    }
}

/// The bot's own metrics, as its prometheus_client exporter shows them.
#[derive(Debug)]
struct BotMetrics {
    start_time: f64,
    commands: BTreeMap<(String, bool), (u64, f64)>,
    latency: BTreeMap<String, Histogram>,
    users: HashSet<u64>,
}

/// prometheus_client's default buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    created: f64,
}

impl BotMetrics {
    fn new(started_ago: Duration) -> Self {
        BotMetrics {
            start_time: unix_now() - started_ago.as_secs_f64(),
            commands: BTreeMap::new(),
            latency: BTreeMap::new(),
            users: HashSet::new(),
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Python's repr of a float, as prometheus_client prints values.
fn py(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Shared between the serenity handler, the exporter and the control API.
pub struct SimBot {
    pub account_id: u64,
    token: String,
    rest_base: String,
    allowed_bots: Vec<u64>,
    behaviour: Mutex<BotBehaviour>,
    metrics: Mutex<BotMetrics>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Which message answered which command, newest last (the bot's own
    /// knowledge, for tests: Discord cannot tell for replies without a
    /// reference). The last `answers_kept` (`retention.truth_records`).
    answers: Mutex<std::collections::VecDeque<(u64, u64)>>,
    answers_kept: usize,
    /// When this simulated bot was made: the origin of `burst` periods.
    born: Instant,
    /// Commands being answered right now.
    busy: tokio::sync::watch::Sender<usize>,
    /// Whether its slash commands are registered (after its first READY).
    registered: tokio::sync::watch::Sender<bool>,
    /// How many READYs it has received (one per gateway session).
    readies: tokio::sync::watch::Sender<u64>,
    /// How many commands it has dropped (`drop_rate`).
    drops: tokio::sync::watch::Sender<u64>,
}

/// Counts a command as being answered while it lives.
struct Busy<'a>(&'a tokio::sync::watch::Sender<usize>);

impl<'a> Busy<'a> {
    fn start(counter: &'a tokio::sync::watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Busy(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

struct Running {
    shard_manager: Arc<ShardManager>,
    task: tokio::task::JoinHandle<()>,
}

impl SimBot {
    pub fn new(
        account_id: u64,
        token: String,
        rest_base: String,
        allowed_bots: Vec<u64>,
        behaviour: BotBehaviour,
        started_ago: Duration,
        answers_kept: usize,
    ) -> Arc<SimBot> {
        Arc::new(SimBot {
            account_id,
            token,
            rest_base,
            allowed_bots,
            behaviour: Mutex::new(behaviour),
            metrics: Mutex::new(BotMetrics::new(started_ago)),
            running: tokio::sync::Mutex::new(None),
            answers: Mutex::new(Default::default()),
            answers_kept: answers_kept.max(1),
            born: Instant::now(),
            busy: tokio::sync::watch::Sender::new(0),
            registered: tokio::sync::watch::Sender::new(false),
            readies: tokio::sync::watch::Sender::new(0),
            drops: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn behaviour(&self) -> BotBehaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The message that answered the command message `command_id` (for a
    /// placeholder, the placeholder it edited), once the answer is complete.
    pub fn answer_to(&self, command_id: u64) -> Option<u64> {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(c, _)| *c == command_id)
            .map(|(_, a)| *a)
    }

    /// Returns once no command is being answered (every answer so far is
    /// recorded for [`SimBot::answer_to`]).
    pub async fn idle(&self) {
        let mut busy = self.busy.subscribe();
        let _ = busy.wait_for(|n| *n == 0).await;
    }

    /// The count of commands dropped so far (`drop_rate`), to wait on: a
    /// command is dropped when the bot reads it, later than its REST send.
    pub fn drops(&self) -> tokio::sync::watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// Returns once its slash commands are registered, so users can run them.
    pub async fn slash_commands_ready(&self) {
        let mut registered = self.registered.subscribe();
        let _ = registered.wait_for(|r| *r).await;
    }

    fn answered(&self, command_id: u64, answer_id: u64) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        while answers.len() >= self.answers_kept {
            answers.pop_front();
        }
        answers.push_back((command_id, answer_id));
    }

    pub fn set_behaviour(&self, b: BotBehaviour) {
        *self.behaviour.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Connects to the sandbox's gateway (if not connected already) and
    /// returns once its session is READY, so that what follows (a probe's
    /// command, a test's request) finds the bot online. If READY does not
    /// come within [`READY_LIMIT`] it says so; the client keeps trying.
    pub async fn go_online(self: &Arc<Self>) -> Result<(), String> {
        let mut readies = self.readies.subscribe();
        let before = *readies.borrow_and_update();
        if !self.start_client().await? {
            return Ok(());
        }
        match tokio::time::timeout(READY_LIMIT, readies.wait_for(|n| *n > before)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "simulated bot: no READY within {} of connecting (it keeps trying)",
                humantime::format_duration(READY_LIMIT)
            )),
        }
    }

    /// Starts its client unless it is running; says whether it did.
    async fn start_client(self: &Arc<Self>) -> Result<bool, String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(false);
        }
        // The sandbox is reached through serenity's proxy setting, which
        // needs its ratelimiter off; the bot handles 429s by not retrying.
        let http = HttpBuilder::new(&self.token)
            .proxy(self.rest_base.clone())
            .ratelimiter_disabled(true)
            .build();
        let intents = GatewayIntents::GUILDS
            | GatewayIntents::GUILD_MESSAGES
            | GatewayIntents::MESSAGE_CONTENT;
        let mut client: Client = ClientBuilder::new_with_http(http, intents)
            .event_handler(Handler { bot: self.clone() })
            .await
            .map_err(|e| format!("simulated bot: cannot build its client: {e}"))?;
        let shard_manager = client.shard_manager.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = client.start().await {
                tracing::warn!(target: "twi_sandbox", "simulated bot stopped: {e}");
            }
        });
        *running = Some(Running {
            shard_manager,
            task,
        });
        Ok(true)
    }

    /// Closes its gateway connection cleanly (presence goes offline at once).
    pub async fn go_offline(&self) {
        let running = self.running.lock().await.take();
        if let Some(r) = running {
            // `stop`, not `shutdown_all`: the client may still be starting (patched serenity).
            r.shard_manager.stop().await;
            let _ = r.task.await;
        }
    }

    /// A process restart: offline, fresh metrics and start time, online.
    pub async fn restart(self: &Arc<Self>) -> Result<(), String> {
        self.go_offline().await;
        *self.metrics.lock().unwrap_or_else(|p| p.into_inner()) = BotMetrics::new(Duration::ZERO);
        self.go_online().await
    }

    pub async fn is_running(&self) -> bool {
        self.running.lock().await.is_some()
    }

    /// The exporter's text, shaped like Python's prometheus_client output.
    pub async fn render_metrics(&self) -> String {
        let (connected, latency) = match &*self.running.lock().await {
            Some(r) => {
                let runners = r.shard_manager.runners.lock().await;
                let info = runners.values().next();
                let connected = info.is_some_and(|i| matches!(i.stage, ConnectionStage::Connected));
                (connected, info.and_then(|i| i.latency))
            }
            None => (false, None),
        };
        let m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n");
        out.push_str("# TYPE process_start_time_seconds gauge\n");
        out.push_str(&format!(
            "process_start_time_seconds {}\n",
            py((m.start_time * 100.0).round() / 100.0)
        ));
        out.push_str("# HELP bot_commands_total Total commands processed\n# TYPE bot_commands_total counter\n");
        for ((command, success), (n, _)) in &m.commands {
            let s = if *success { "True" } else { "False" };
            out.push_str(&format!(
                "bot_commands_total{{command=\"{command}\",success=\"{s}\"}} {}\n",
                py(*n as f64)
            ));
        }
        out.push_str("# HELP bot_commands_created Total commands processed\n# TYPE bot_commands_created gauge\n");
        for ((command, success), (_, created)) in &m.commands {
            let s = if *success { "True" } else { "False" };
            out.push_str(&format!(
                "bot_commands_created{{command=\"{command}\",success=\"{s}\"}} {}\n",
                py(*created)
            ));
        }
        out.push_str("# HELP bot_command_latency_seconds Command processing time\n# TYPE bot_command_latency_seconds histogram\n");
        for (command, h) in &m.latency {
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                out.push_str(&format!("bot_command_latency_seconds_bucket{{command=\"{command}\",le=\"{le:?}\"}} {}\n", py(cumulative as f64)));
            }
            out.push_str(&format!(
                "bot_command_latency_seconds_bucket{{command=\"{command}\",le=\"+Inf\"}} {}\n",
                py(h.count as f64)
            ));
            out.push_str(&format!(
                "bot_command_latency_seconds_count{{command=\"{command}\"}} {}\n",
                py(h.count as f64)
            ));
            out.push_str(&format!(
                "bot_command_latency_seconds_sum{{command=\"{command}\"}} {}\n",
                py(h.sum)
            ));
        }
        out.push_str("# HELP bot_command_latency_seconds_created Command processing time\n# TYPE bot_command_latency_seconds_created gauge\n");
        for (command, h) in &m.latency {
            out.push_str(&format!(
                "bot_command_latency_seconds_created{{command=\"{command}\"}} {}\n",
                py(h.created)
            ));
        }
        out.push_str(
            "# HELP bot_active_users Number of active users\n# TYPE bot_active_users gauge\n",
        );
        out.push_str(&format!("bot_active_users {}\n", py(m.users.len() as f64)));
        out.push_str("# HELP discord_gateway_connected Whether the bot's gateway connection is up\n# TYPE discord_gateway_connected gauge\n");
        out.push_str(&format!(
            "discord_gateway_connected {}\n",
            py(f64::from(u8::from(connected)))
        ));
        out.push_str("# HELP discord_gateway_latency_seconds Heartbeat round trip of the bot's gateway connection\n# TYPE discord_gateway_latency_seconds gauge\n");
        out.push_str(&format!(
            "discord_gateway_latency_seconds {}\n",
            py(latency.map_or(0.0, |l| l.as_secs_f64()))
        ));
        out
    }

    fn record(&self, command: &str, success: bool, user: u64, took: Duration) {
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        m.commands
            .entry((command.to_string(), success))
            .or_insert((0, now))
            .0 += 1;
        let h = m.latency.entry(command.to_string()).or_insert(Histogram {
            counts: vec![0; BUCKETS.len()],
            count: 0,
            sum: 0.0,
            created: now,
        });
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += secs;
        m.users.insert(user);
    }
}

struct Handler {
    bot: Arc<SimBot>,
}

/// The slash commands the simulated bot registers: `/ping` and `/help`
/// answer at once, `/stats` defers ("is thinking…") and edits its answer in.
pub const SLASH_COMMANDS: [(&str, &str); 3] = [
    ("ping", "Bot latency information"),
    ("help", "Browse the commands by category"),
    ("stats", "Server statistics (takes a moment)"),
];

/// Discord's deadline for the first response is 3 s: a command that would
/// take longer than this defers first, as real bots do.
const DEFER_AFTER: Duration = Duration::from_millis(2000);

impl SimBot {
    /// Answers a slash command with the behaviour's latency, error and drop
    /// rates: directly, or deferred and edited when slow or `/stats`.
    async fn slash_command(&self, ctx: &Context, cmd: &CommandInteraction) {
        let started = Instant::now();
        let name = cmd.data.name.clone();
        let _busy = Busy::start(&self.busy);
        let behaviour = self.behaviour();
        let (drop, error) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(behaviour.drop_rate.clamp(0.0, 1.0)),
                rng.random_bool(behaviour.error_rate.clamp(0.0, 1.0)),
            )
        };
        if drop {
            tracing::info!(target: "twi_sandbox", "simulated bot drops /{name} (drop_rate)");
            self.drops.send_modify(|n| *n += 1);
            return;
        }
        let uptime = unix_now()
            - self
                .metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_time;
        let delay = behaviour.latency.sample();
        let embed = |started: Instant| {
            if error {
                error_embed()
            } else {
                answer(&name, started, uptime)
            }
        };
        let result = if name == "stats" || delay > DEFER_AFTER {
            match cmd.defer(&ctx.http).await {
                Ok(()) => {
                    tokio::time::sleep(delay).await;
                    cmd.edit_response(
                        &ctx.http,
                        EditInteractionResponse::new().embed(embed(started)),
                    )
                    .await
                    .map(|m| m.id)
                }
                Err(e) => Err(e),
            }
        } else {
            tokio::time::sleep(delay).await;
            let message = CreateInteractionResponseMessage::new().embed(embed(started));
            match cmd
                .create_response(&ctx.http, CreateInteractionResponse::Message(message))
                .await
            {
                Ok(()) => cmd.get_response(&ctx.http).await.map(|m| m.id),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(answer) => {
                self.answered(cmd.id.get(), answer.get());
                self.record(&name, !error, cmd.user.id.get(), started.elapsed());
            }
            Err(e) => {
                tracing::warn!(target: "twi_sandbox", "simulated bot could not answer /{name}: {e}")
            }
        }
    }
}

/// A command the bot knows, parsed from `!name` or `<@bot> name`.
fn parse_command(content: &str, bot_id: u64) -> Option<String> {
    let content = content.trim();
    let rest = if let Some(r) = content.strip_prefix('!') {
        r
    } else {
        let mention = format!("<@{bot_id}>");
        let mention_nick = format!("<@!{bot_id}>");
        content
            .strip_prefix(&mention)
            .or_else(|| content.strip_prefix(&mention_nick))?
            .trim_start()
    };
    let name = rest.split_whitespace().next()?.to_lowercase();
    matches!(name.as_str(), "help" | "ping" | "uptime").then_some(name)
}

fn answer(command: &str, started: Instant, uptime: f64) -> CreateEmbed {
    match command {
        "help" => CreateEmbed::new()
            .title("Interactive Help System")
            .description(
                "Twi Bot Shard is mostly slash commands. Use `/help` to browse them by category.",
            )
            .field(
                "Categories",
                "Gallery, Links, Stats, Summarization, The Wandering Inn",
                false,
            ),
        "ping" => CreateEmbed::new()
            .title("🏓 Bot Latency Information")
            .field(
                "Response time",
                format!("{} ms", started.elapsed().as_millis()),
                true,
            )
            .field("Status", "Online", true),
        "stats" => CreateEmbed::new()
            .title("📊 Server Statistics")
            .field("Members", "3", true)
            .field("Channels", "2", true),
        _ => CreateEmbed::new().title("⏱️ Uptime").description(format!(
            "Up for {}",
            humantime::format_duration(Duration::from_secs(uptime as u64))
        )),
    }
}

fn error_embed() -> CreateEmbed {
    CreateEmbed::new().title("❌ Error").description(
        "An unexpected error occurred while running this command. The error has been logged.",
    )
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        tracing::info!(target: "twi_sandbox", "simulated bot {} is ready", ready.user.name);
        self.bot.readies.send_modify(|n| *n += 1);
        // Registers its slash commands per guild, as `tree.sync(guild=...)` does.
        for g in &ready.guilds {
            let commands = SLASH_COMMANDS
                .iter()
                .map(|(name, description)| CreateCommand::new(*name).description(*description))
                .collect();
            if let Err(e) = g.id.set_commands(&ctx.http, commands).await {
                tracing::warn!(target: "twi_sandbox", "simulated bot could not register its slash commands: {e}");
                return;
            }
        }
        self.bot.registered.send_replace(true);
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        if let Interaction::Command(command) = interaction {
            self.bot.slash_command(&ctx, &command).await;
        }
    }

    async fn message(&self, ctx: Context, msg: Message) {
        let bot = &self.bot;
        let started = Instant::now();
        if msg.author.id.get() == bot.account_id {
            return;
        }
        // discord.py ignores bots (webhooks included) unless they are allowed.
        if msg.author.bot && !bot.allowed_bots.contains(&msg.author.id.get()) {
            return;
        }
        let Some(command) = parse_command(&msg.content, bot.account_id) else {
            return;
        };
        let _busy = Busy::start(&bot.busy);
        let behaviour = bot.behaviour();
        let (drop, error) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(behaviour.drop_rate.clamp(0.0, 1.0)),
                rng.random_bool(behaviour.error_rate.clamp(0.0, 1.0)),
            )
        };
        if drop {
            tracing::info!(target: "twi_sandbox", "simulated bot drops !{command} (drop_rate)");
            bot.drops.send_modify(|n| *n += 1);
            return;
        }
        if behaviour.typing {
            let _ = msg.channel_id.broadcast_typing(&ctx.http).await;
        }
        let uptime = unix_now()
            - bot
                .metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_time;
        let reply = |embed: CreateEmbed| {
            let m = CreateMessage::new().embed(embed);
            if behaviour.reply_with_reference {
                m.reference_message(&msg)
            } else {
                m
            }
        };
        let mut delay = behaviour.latency.sample();
        if let Some(period) = behaviour.burst.filter(|p| !p.is_zero()) {
            // Out at the next multiple of `period` after the bot started.
            let ready = bot.born.elapsed() + delay;
            let periods = ready.as_nanos().div_ceil(period.as_nanos());
            let out = period.saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX));
            delay += out.saturating_sub(ready);
        }
        let final_embed = if error {
            error_embed()
        } else {
            answer(&command, started, uptime)
        };
        let sent = if behaviour.placeholder {
            let placeholder = reply(CreateEmbed::new().title("⏳ Working on it…"));
            match msg.channel_id.send_message(&ctx.http, placeholder).await {
                Ok(mut p) => {
                    tokio::time::sleep(delay).await;
                    p.edit(&ctx.http, EditMessage::new().embed(final_embed))
                        .await
                        .map(|_| p.id)
                }
                Err(e) => Err(e),
            }
        } else {
            tokio::time::sleep(delay).await;
            msg.channel_id
                .send_message(&ctx.http, reply(final_embed))
                .await
                .map(|m| m.id)
        };
        match sent {
            Ok(answer) => {
                bot.answered(msg.id.get(), answer.get());
                bot.record(&command, !error, msg.author.id.get(), started.elapsed())
            }
            Err(e) => {
                tracing::warn!(target: "twi_sandbox", "simulated bot could not answer !{command}: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_answers_kept_are_remembered() {
        let bot = SimBot::new(
            1,
            "token".into(),
            "http://127.0.0.1:9".into(),
            Vec::new(),
            BotBehaviour::default(),
            Duration::ZERO,
            3,
        );
        for command in 1..=10 {
            bot.answered(command, command + 100);
        }
        assert_eq!(bot.answers.lock().unwrap().len(), 3);
        assert_eq!(bot.answer_to(7), None);
        assert_eq!(bot.answer_to(8), Some(108));
        assert_eq!(bot.answer_to(10), Some(110));
    }

    #[test]
    fn commands_parse_with_prefix_or_mention() {
        assert_eq!(parse_command("!help", 5).as_deref(), Some("help"));
        assert_eq!(parse_command("  !PING now", 5).as_deref(), Some("ping"));
        assert_eq!(parse_command("<@5> help", 5).as_deref(), Some("help"));
        assert_eq!(parse_command("<@!5>uptime", 5).as_deref(), Some("uptime"));
        assert_eq!(parse_command("<@6> help", 5), None);
        assert_eq!(parse_command("!unknown", 5), None);
        assert_eq!(parse_command("help", 5), None);
    }

    #[test]
    fn lognormal_latency_has_the_asked_median_and_tail() {
        let l = Latency {
            median: Duration::from_millis(100),
            p99: Some(Duration::from_millis(1000)),
        };
        let mut samples: Vec<f64> = (0..20_000).map(|_| l.sample().as_secs_f64()).collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[10_000];
        let p99 = samples[19_800];
        assert!((0.09..0.11).contains(&median), "median {median}");
        assert!((0.8..1.25).contains(&p99), "p99 {p99}");
        assert_eq!(
            Latency::fixed(Duration::from_millis(7)).sample(),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn python_float_repr() {
        assert_eq!(py(3.0), "3.0");
        assert_eq!(py(0.25), "0.25");
    }
}
