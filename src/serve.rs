//! `probe serve`: probes on schedule, reloads, and a draining shutdown.
//! The HTTP surface (`/metrics`, health, reload) is in src/web/.
//!
//! The caller binds the listener and owns shutdown (`run(listener, ...,
//! shutdown)`), so tests bind port 0. Scrapes are served from snapshots
//! rendered on a blocking thread (src/scrape.rs) while probes run on their
//! own tasks: neither waits for the other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ProbeSpec, Secret};
use crate::discord::{ConnectError, DiscordSession, SessionEvent, intents_for};
use crate::history::History;
use crate::metrics::Metrics;
use crate::probe::Probe;
use crate::schedule::{self, ResultSink, SlotStats, log_join};
use crate::scrape::ScrapeCache;

/// How often the prober checks its own gateway when no probe does.
const LIVENESS_EVERY: Duration = Duration::from_secs(15);
/// How often a failed start-up connection to Discord is retried.
const DISCORD_RETRY: Duration = Duration::from_secs(30);
/// How often a token Discord rejected is tried again (see
/// `Service::watch_session_end`).
const DISCORD_TOKEN_RETRY: Duration = Duration::from_secs(300);

/// Why the Discord session could not be (re)connected.
struct ConnectFailure {
    message: String,
    /// Discord unreachable, as opposed to a token or intent it refused.
    transient: bool,
}

impl From<String> for ConnectFailure {
    fn from(message: String) -> Self {
        ConnectFailure {
            message,
            transient: false,
        }
    }
}

/// Options that do not come from the config file.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// The prober's token given directly (the sandbox's), instead of read
    /// from the environment or a file.
    pub token: Option<Secret>,
    /// Rewrites every loaded config (pointing it at the sandbox).
    pub rewrite: Option<Arc<dyn Fn(Config) -> Config + Send + Sync>>,
    /// `POST /-/reload` works only when this is set
    /// (`--web.enable-lifecycle`, as Prometheus and Alertmanager do); SIGHUP
    /// always works.
    pub enable_lifecycle: bool,
    /// The HTTP listener's read timeout and connection limit.
    pub web: crate::web::listener::Limits,
}

struct Scheduled {
    /// Shared with scrapes of `GET /probe?probe=NAME` (its state, its runs);
    /// its `spec` is the schedule's (held once: memory per probe).
    probe: Arc<Probe>,
    sink: ResultSink,
    stop: CancellationToken,
    handle: JoinHandle<()>,
    stats: Arc<SlotStats>,
}

/// The running service; shared with the HTTP handlers.
pub struct Service {
    path: PathBuf,
    options: ServeOptions,
    config: RwLock<Config>,
    /// One for the service's life: reloads change its label names, never
    /// its series (see src/metrics.rs).
    metrics: Arc<Metrics>,
    session: Mutex<Option<(String, Arc<DiscordSession>)>>,
    follower: Mutex<Option<JoinHandle<()>>>,
    scheduled: Arc<tokio::sync::Mutex<HashMap<String, Scheduled>>>,
    limit: Arc<Semaphore>,
    /// The permits `limit` is meant to hold (`serve.max_concurrency`).
    limit_size: Mutex<usize>,
    /// Serializes reloads (SIGHUP and POST /-/reload may race).
    reloading: tokio::sync::Mutex<()>,
    /// Set when the Discord session was replaced or dropped.
    session_replaced: AtomicBool,
    /// Why Discord is not connected, while the start-up connection is retried.
    discord_down: Mutex<Option<String>>,
    /// Every task the service spawns besides the schedules themselves
    /// (Discord retries and watchers, drains of stopped schedules, limit
    /// shrinks): `shutdown` waits for all of them.
    tasks: TaskTracker,
    /// Cancelled by `shutdown`: retries and watchers end.
    stopping: CancellationToken,
    /// What `/metrics` serves.
    pub(crate) scrape: ScrapeCache,
    /// Recent runs per probe and the last reload (the status page).
    pub(crate) history: History,
}

/// What a reload does to each probe, by display name (sorted).
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Unchanged: the schedule runs on untouched.
    keep: Vec<String>,
    /// Changed settings, or a Discord probe on a replaced session: a new
    /// schedule takes over from the old one (phase and slot counts kept;
    /// series kept when name, kind and labels are the same).
    replace: Vec<String>,
    /// No longer configured.
    stop: Vec<String>,
    /// Newly configured.
    start: Vec<String>,
}

impl Plan {
    /// `running`: the scheduled probes' specs; `session_changed`: the
    /// Discord session they were built on is gone.
    fn new(running: &HashMap<String, ProbeSpec>, config: &Config, session_changed: bool) -> Plan {
        let wanted: HashMap<String, &ProbeSpec> = config
            .probes
            .iter()
            .map(|p| (p.display_name(), p))
            .collect();
        let mut plan = Plan::default();
        for (name, old) in running {
            match wanted.get(name) {
                None => plan.stop.push(name.clone()),
                Some(new) if fingerprint(new) != fingerprint(old) => {
                    plan.replace.push(name.clone())
                }
                Some(new) if session_changed && new.kind.needs_discord() => {
                    plan.replace.push(name.clone())
                }
                Some(_) => plan.keep.push(name.clone()),
            }
        }
        plan.start = wanted
            .keys()
            .filter(|name| !running.contains_key(*name))
            .cloned()
            .collect();
        for list in [
            &mut plan.keep,
            &mut plan.replace,
            &mut plan.stop,
            &mut plan.start,
        ] {
            list.sort();
        }
        plan
    }
}

impl Service {
    /// Loads the config, connects Discord if needed and starts every probe.
    /// A bad config or a rejected token fails here, before serving.
    pub async fn start(path: PathBuf, options: ServeOptions) -> Result<Arc<Service>, String> {
        let config = load(&path, &options)?;
        let metrics = Arc::new(Metrics::new(&config).with_process_metrics());
        let service = Arc::new(Service {
            path,
            limit: Arc::new(Semaphore::new(config.serve.max_concurrency)),
            limit_size: Mutex::new(config.serve.max_concurrency),
            options,
            config: RwLock::new(config.clone()),
            metrics,
            session: Mutex::new(None),
            follower: Mutex::new(None),
            scheduled: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            reloading: tokio::sync::Mutex::new(()),
            session_replaced: AtomicBool::new(false),
            discord_down: Mutex::new(None),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            scrape: ScrapeCache::default(),
            history: History::default(),
        });
        // Discord unreachable at start-up is not fatal: the Discord probes
        // run as `inconclusive` (the prober is blind, and says so) while the
        // connection is retried. A rejected token or intent is fatal.
        if let Err(e) = service.connect_discord(&config).await {
            if !e.transient {
                return Err(e.message);
            }
            tracing::error!("{}; retrying every {:?}", e.message, DISCORD_RETRY);
            *lock(&service.discord_down) = Some(e.message);
            service.retry_discord(DISCORD_RETRY);
        } else {
            service.watch_session_end();
        }
        service.reconcile(&config).await;
        Ok(service)
    }

    /// Notices when the current Discord session ends for good (the client
    /// stopped: e.g. Discord rejected the token mid-session): the prober is
    /// then blind, says why (`/ready`, the log, `prober_discord_token_rejected`),
    /// keeps the Discord probes `inconclusive`, and retries, slowly when the
    /// token was rejected (each retry is an IDENTIFY, and Discord allows
    /// 1,000 a day); a fixed token file is read again at each retry.
    fn watch_session_end(self: &Arc<Self>) {
        let Some(session) = self.session() else {
            return;
        };
        let mut events = session.subscribe();
        let service = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            let ended = async {
                loop {
                    if let Some(ended) = session.ended() {
                        return Some(ended.token_rejected);
                    }
                    match events.recv().await {
                        Ok(SessionEvent::Ended { token_rejected }) => return Some(token_rejected),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            };
            let token_rejected = tokio::select! {
                _ = stopping.cancelled() => return,
                ended = ended => match ended {
                    Some(t) => t,
                    None => return,
                },
            };
            let Some(service) = service.upgrade() else {
                return;
            };
            let reason = session.ended().map(|e| e.reason).unwrap_or_default();
            {
                let mut current = lock(&service.session);
                if !current
                    .as_ref()
                    .is_some_and(|(_, s)| Arc::ptr_eq(s, &session))
                {
                    return;
                }
                *current = None;
            }
            *lock(&service.discord_down) = Some(reason);
            service.session_replaced.store(true, Ordering::SeqCst);
            let every = if token_rejected {
                DISCORD_TOKEN_RETRY
            } else {
                DISCORD_RETRY
            };
            tracing::warn!("retrying the Discord connection every {every:?}");
            service.retry_discord(every);
        });
    }

    /// Retries the Discord connection until it succeeds, then rebuilds the
    /// Discord probes on the new session. Ends at shutdown; holds the
    /// service only while trying.
    fn retry_discord(self: &Arc<Self>, every: Duration) {
        let service = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(service) = service.upgrade() else {
                    return;
                };
                let config = service.config();
                if !config.needs_discord() || service.session().is_some() {
                    return;
                }
                let attempt = async {
                    let _one_at_a_time = service.reloading.lock().await;
                    let connected = service.connect_discord(&config).await;
                    if connected.is_ok() {
                        *lock(&service.discord_down) = None;
                        tracing::info!("the prober connected to Discord");
                        service.watch_session_end();
                        service.reconcile(&config).await;
                    }
                    connected
                };
                // A shutdown drops an attempt midway; a session being
                // built stops with it (DiscordSession::connect).
                let connected = tokio::select! {
                    _ = stopping.cancelled() => return,
                    connected = attempt => connected,
                };
                match connected {
                    Ok(()) => return,
                    Err(e) => tracing::warn!("{}; retrying", e.message),
                }
            }
        });
    }

    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(crate) fn session(&self) -> Option<Arc<DiscordSession>> {
        lock(&self.session).as_ref().map(|(_, s)| s.clone())
    }

    /// Whether `POST /-/reload` may reload (see [`ServeOptions`]).
    pub fn lifecycle_enabled(&self) -> bool {
        self.options.enable_lifecycle
    }

    /// Tasks of the service still running besides the schedules (for
    /// tests: none after [`Service::shutdown`]).
    pub fn tasks_running(&self) -> usize {
        self.tasks.len()
    }

    /// Ready: the config is loaded and, with Discord probes, the prober's
    /// gateway is connected.
    pub fn ready(&self) -> Result<(), String> {
        if !self.config().needs_discord() {
            return Ok(());
        }
        match self.session() {
            Some(s) if let Some(ended) = s.ended() => Err(ended.reason),
            Some(s) if s.is_connected() => Ok(()),
            Some(_) => Err("the prober's Discord gateway is not connected".into()),
            None => Err(lock(&self.discord_down)
                .clone()
                .unwrap_or_else(|| "the prober has no Discord session".into())),
        }
    }

    /// What a scrape of `GET /probe?probe=NAME` runs: every spec of that
    /// name (presence: one per shard) with its probe and history sink.
    pub(crate) async fn scrape_targets(&self, name: &str) -> Vec<(Arc<Probe>, ResultSink)> {
        let scheduled = self.scheduled.lock().await;
        let mut found: Vec<_> = scheduled
            .values()
            .filter(|s| s.probe.spec.name == name)
            .map(|s| (s.probe.clone(), s.sink.clone()))
            .collect();
        found.sort_by_key(|(p, _)| p.spec.display_name());
        found
    }

    /// The permits that bound runs at once (`serve.max_concurrency`).
    pub(crate) fn run_permits(&self) -> Arc<Semaphore> {
        self.limit.clone()
    }

    /// Why the Discord session is missing, when it is.
    pub(crate) fn discord_down(&self) -> Option<String> {
        lock(&self.discord_down).clone()
    }

    /// Slot counts per probe (display name), for the slot invariant.
    pub async fn slot_stats(&self) -> HashMap<String, Arc<SlotStats>> {
        self.scheduled
            .lock()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.stats.clone()))
            .collect()
    }

    /// Re-reads the config file. On any error the running config stays and
    /// `prober_config_last_reload_successful` goes to 0.
    pub async fn reload(&self) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        self.history.record_reload(result.as_ref().err().cloned());
        match &result {
            Ok(()) => {
                self.metrics.set_config_reload_ok(true);
                tracing::info!(config = %self.path.display(), "configuration reloaded");
            }
            Err(e) => {
                self.metrics.set_config_reload_ok(false);
                tracing::error!(config = %self.path.display(), "reload failed, the previous configuration keeps running: {e}");
            }
        }
        // The next scrape shows the reload's outcome, not a snapshot from before.
        self.scrape.invalidate();
        result
    }

    async fn try_reload(&self) -> Result<(), String> {
        let config = load(&self.path, &self.options)?;
        self.connect_discord(&config).await.map_err(|e| e.message)?;
        self.metrics.apply_config(&config);
        self.resize_limit(config.serve.max_concurrency).await;
        self.reconcile(&config).await;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// Gives the run limit `size` permits: more at once, fewer as runs in
    /// flight release theirs.
    async fn resize_limit(&self, size: usize) {
        let held = {
            let mut current = lock(&self.limit_size);
            let held = if size > *current {
                self.limit.add_permits(size - *current);
                0
            } else {
                let fewer = *current - size;
                fewer - self.limit.forget_permits(fewer)
            };
            *current = size;
            held
        };
        if held == 0 {
            return;
        }
        // Held by runs in flight: taken (and dropped) as they end. The
        // config caps the limit far below u32::MAX.
        let held = u32::try_from(held).unwrap_or(u32::MAX);
        take_back(&self.limit, held, &self.tasks, self.stopping.clone()).await;
    }

    /// Connects (or reconnects, when its settings changed) the prober's
    /// Discord session; drops it when no probe needs Discord.
    async fn connect_discord(&self, config: &Config) -> Result<(), ConnectFailure> {
        if !config.needs_discord() {
            let old = lock(&self.session).take();
            if let Some((_, s)) = old {
                self.session_replaced.store(true, Ordering::SeqCst);
                s.shutdown().await;
            }
            return Ok(());
        }
        let fingerprint = format!(
            "{:?}|{:?}|{:?}",
            config.discord,
            intents_for(config),
            config.target.user_id
        );
        let same = lock(&self.session)
            .as_ref()
            .is_some_and(|(f, _)| *f == fingerprint);
        if same {
            return Ok(());
        }
        let token = match &self.options.token {
            Some(t) => t.clone(),
            None => config.discord_token()?,
        };
        let session = match DiscordSession::connect(config, &token).await {
            Ok(s) => Arc::new(s),
            Err(e @ (ConnectError::InvalidToken(_) | ConnectError::DisallowedIntents(..))) => {
                return Err(e.to_string().into());
            }
            Err(e) => {
                return Err(ConnectFailure {
                    message: e.to_string(),
                    transient: true,
                });
            }
        };
        session.watch_liveness(LIVENESS_EVERY);
        let old = lock(&self.session).replace((fingerprint, session));
        if let Some((_, s)) = old {
            s.shutdown().await;
        }
        self.session_replaced.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Starts, stops and replaces probe schedules to match `config` (see
    /// [`Plan`]), then points the Discord metrics at the current session.
    async fn reconcile(&self, config: &Config) {
        let session = self.session();
        let session_changed = self.session_replaced.swap(false, Ordering::SeqCst);
        let mut scheduled = self.scheduled.lock().await;
        let running: HashMap<String, ProbeSpec> = scheduled
            .iter()
            .map(|(name, s)| (name.clone(), s.probe.spec.clone()))
            .collect();
        let plan = Plan::new(&running, config, session_changed);
        let wanted: HashMap<String, &ProbeSpec> = config
            .probes
            .iter()
            .map(|p| (p.display_name(), p))
            .collect();
        // A module removed or changed: its series go, as a probe's do
        // (`self.config()` is still the config being replaced).
        let old_config = self.config();
        for m in old_config.modules.values() {
            if config
                .modules
                .get(&m.name)
                .is_none_or(|new| fingerprint(&new.template) != fingerprint(&m.template))
            {
                self.metrics.forget_probe(&m.template);
            }
        }
        for name in &plan.stop {
            if let Some(old) = scheduled.remove(name) {
                self.retire(old, None);
            }
        }
        for name in plan.replace.iter().chain(&plan.start) {
            let Some(spec) = wanted.get(name) else {
                continue;
            };
            let (predecessor, stats) = match scheduled.remove(name) {
                Some(old) => {
                    let stats = old.stats.clone();
                    (Some(self.retire(old, Some(spec))), Some(stats))
                }
                None => (None, None),
            };
            if let Some(s) = self.start_schedule(spec, config, session.as_ref(), predecessor, stats)
            {
                scheduled.insert(name.clone(), s);
            }
        }
        drop(scheduled);
        // Modules' runs (scrapes of /probe) have rings under their names too.
        self.history
            .retain(|name| wanted.contains_key(name) || config.modules.contains_key(name));
        self.follow_discord(config, session.as_ref());
    }

    /// Stops a schedule. Its series are forgotten unless `successor` has the
    /// same name, kind and labels; they are forgotten again once its last run
    /// (which finishes within its limit, and records) has ended, unless a
    /// probe with the same series is configured by then. Returns the drain
    /// task, which the successor waits for before its first run.
    fn retire(&self, old: Scheduled, successor: Option<&ProbeSpec>) -> JoinHandle<()> {
        old.stop.cancel();
        let metrics = self.metrics.clone();
        let same_series = successor
            .is_some_and(|s| metrics.label_values(s) == metrics.label_values(&old.probe.spec));
        let forget = (!same_series).then(|| old.probe.spec.clone());
        if let Some(spec) = &forget {
            metrics.forget_probe(spec);
        }
        let all = self.scheduled.clone();
        self.tasks.spawn(async move {
            log_join(old.handle.await, &old.probe.spec.display_name(), &metrics);
            let Some(spec) = forget else { return };
            // Under the lock, so a reload cannot add the series back between
            // the check and the forgetting.
            let all = all.lock().await;
            let clash = all
                .values()
                .any(|s| metrics.label_values(&s.probe.spec) == metrics.label_values(&spec));
            if !clash {
                metrics.forget_probe(&spec);
            }
        })
    }

    /// Builds a probe and starts its schedule; `predecessor` and `stats` come
    /// from the schedule it replaces.
    fn start_schedule(
        &self,
        spec: &ProbeSpec,
        config: &Config,
        session: Option<&Arc<DiscordSession>>,
        predecessor: Option<JoinHandle<()>>,
        stats: Option<Arc<SlotStats>>,
    ) -> Option<Scheduled> {
        let name = spec.display_name();
        self.metrics.init_probe(spec);
        let down = lock(&self.discord_down).clone();
        let built = match (session, down) {
            (None, Some(why)) if spec.kind.needs_discord() => Ok(Probe::unavailable(
                spec.clone(),
                format!("the prober is not connected to Discord ({why}); the bot was not probed"),
            )),
            _ => Probe::new(spec.clone(), session),
        };
        let probe = match built {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(probe = %name, "cannot start the probe: {e}");
                if let Some(h) = predecessor {
                    let metrics = self.metrics.clone();
                    self.tasks
                        .spawn(async move { log_join(h.await, &name, &metrics) });
                }
                return None;
            }
        };
        let stop = CancellationToken::new();
        let stats = stats.unwrap_or_default();
        let sink = self.history.track(spec, config.serve.history);
        let handle = tokio::spawn(supervise(
            name,
            self.metrics.clone(),
            schedule::run_probe(
                probe.clone(),
                self.metrics.clone(),
                self.limit.clone(),
                stop.clone(),
                stats.clone(),
                Some(sink.clone()),
                predecessor,
            ),
        ));
        Some(Scheduled {
            probe,
            sink,
            stop,
            handle,
            stats,
        })
    }

    /// The Discord metrics follow the current session and config.
    fn follow_discord(&self, config: &Config, session: Option<&Arc<DiscordSession>>) {
        let mut follower = lock(&self.follower);
        if let Some(f) = follower.take() {
            f.abort();
        }
        if let Some(s) = session {
            *follower = Some(self.metrics.follow_discord(config, s));
        }
    }

    /// Stops scheduling and retrying, lets in-flight runs finish (each
    /// within its own limit), closes the Discord session, and waits for
    /// every task the service started.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        // A reload in progress finishes first; retries give up at once.
        let _no_more_reloads = self.reloading.lock().await;
        let scheduled: Vec<Scheduled> = self
            .scheduled
            .lock()
            .await
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in &scheduled {
            s.stop.cancel();
        }
        for s in scheduled {
            log_join(s.handle.await, &s.probe.spec.display_name(), &self.metrics);
        }
        let follower = lock(&self.follower).take();
        if let Some(f) = follower {
            f.abort();
            let _ = f.await;
        }
        let session = lock(&self.session).take();
        if let Some((_, s)) = session {
            s.shutdown().await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Runs a probe's schedule; a panic is logged and counted
/// (`prober_schedule_panics_total`) instead of ending it silently.
async fn supervise(name: String, metrics: Arc<Metrics>, schedule: impl Future<Output = ()>) {
    if let Err(panic) = std::panic::AssertUnwindSafe(schedule).catch_unwind().await {
        metrics.schedule_panicked();
        tracing::error!(probe = %name, "the probe's schedule panicked and stopped (a reload that changes the probe starts it again): {}", schedule::panic_text(panic));
    }
}

/// A spec's every setting (ProbeSpec has no `PartialEq`: regexes).
fn fingerprint(spec: &ProbeSpec) -> String {
    format!("{spec:?}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn load(path: &std::path::Path, options: &ServeOptions) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let config = match &options.rewrite {
        Some(f) => f(config),
        None => config,
    };
    if options.token.is_none()
        && config.needs_discord()
        && let Some(problem) = config.secret_problems().into_iter().next()
    {
        return Err(format!("{}: {problem}", config.source.display()));
    }
    Ok(config)
}

/// Serves until `shutdown`, then drains. SIGHUP handling is the caller's
/// (it calls [`Service::reload`]).
pub async fn run(
    service: Arc<Service>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let app = crate::web::router(service.clone());
    let refresher = {
        let service = service.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let source = service.clone();
            service.scrape.refresh(|| source.metrics(), stop).await;
        })
    };
    // Started: what only start-up ran need not stay resident.
    tokio::task::spawn_blocking(|| match crate::startup_pages::let_go() {
        Some(done) => tracing::debug!(
            "start-up over: {} read-only file mappings dropped from the process, {} KiB resident before, {} KiB after (the pages stay in the page cache)",
            done.mappings,
            done.before_kib,
            done.after_kib
        ),
        None => tracing::debug!(
            "start-up over: read-only file mappings left as they are (not Linux, no /proc/self/smaps, or madvise refused)"
        ),
    });
    crate::web::listener::serve(listener, app, service.options.web, shutdown.clone()).await;
    service.shutdown().await;
    let _ = refresher.await;
    Ok(())
}

/// Takes `n` permits out of `limit` for good as runs in flight release
/// them. The taker queues at the semaphore (which is fair: first come,
/// first served) before this returns, so no run that asks for a permit
/// afterwards can take one that was meant to go away; a task that first
/// queued when the runtime got to it could come after such runs.
async fn take_back(
    limit: &Arc<Semaphore>,
    n: u32,
    tasks: &TaskTracker,
    stopping: CancellationToken,
) {
    let mut taking = Box::pin(limit.clone().acquire_many_owned(n));
    // One poll joins the queue (or takes the permits at once).
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(taking.as_mut(), cx))
    })
    .await;
    if let std::task::Poll::Ready(permits) = first {
        if let Ok(p) = permits {
            p.forget();
        }
        return;
    }
    tasks.spawn(async move {
        tokio::select! {
            _ = stopping.cancelled() => {}
            permits = taking => {
                if let Ok(p) = permits {
                    p.forget();
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_taken_back_go_away_before_any_later_run_gets_one() {
        let limit = Arc::new(Semaphore::new(2));
        let tasks = TaskTracker::new();
        // Two runs in flight hold both permits; the limit shrinks to 0.
        let run_a = limit.clone().acquire_owned().await.unwrap();
        let run_b = limit.clone().acquire_owned().await.unwrap();
        take_back(&limit, 2, &tasks, CancellationToken::new()).await;
        // The old runs end before the runtime ever ran the taker's task
        // (this test does not yield): their permits must not become free
        // for a run of the new configuration.
        drop(run_a);
        drop(run_b);
        assert_eq!(
            limit.available_permits(),
            0,
            "a permit taken back was free for a later run"
        );
        assert!(limit.clone().try_acquire_owned().is_err());
        tasks.close();
        tasks.wait().await;
        assert_eq!(limit.available_permits(), 0);
    }

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    fn running(config: &Config) -> HashMap<String, ProbeSpec> {
        config
            .probes
            .iter()
            .map(|p| (p.display_name(), p.clone()))
            .collect()
    }

    const OLD: &str = r#"
target: {name: bot, user_id: "1234567890123456789", exporter_url: "http://127.0.0.1:9/metrics"}
discord: {token_env: T}
probes:
  - name: same
    http: {url: "http://127.0.0.1:9/"}
  - name: slower
    timeout: 1s
    http: {url: "http://127.0.0.1:9/"}
  - name: gone
    exporter: {}
  - name: help
    command: {channel_id: "1234567890123456790", message: "!help"}
"#;

    #[test]
    fn a_plan_keeps_the_unchanged_and_replaces_only_what_changed() {
        let old = config(OLD);
        let new = config(&OLD.replace("timeout: 1s", "timeout: 2s").replace(
            "  - name: gone\n    exporter: {}\n",
            "  - name: new\n    exporter: {}\n",
        ));
        let plan = Plan::new(&running(&old), &new, false);
        assert_eq!(
            plan,
            Plan {
                keep: vec!["help".into(), "same".into()],
                replace: vec!["slower".into()],
                stop: vec!["gone".into()],
                start: vec!["new".into()],
            }
        );
    }

    #[test]
    fn a_new_discord_session_replaces_only_the_discord_probes() {
        let old = config(OLD);
        let plan = Plan::new(&running(&old), &old, true);
        assert_eq!(plan.replace, vec!["help".to_string()]);
        assert_eq!(plan.keep, vec!["gone", "same", "slower"]);
        assert!(plan.stop.is_empty() && plan.start.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_schedule_is_logged_and_counted() {
        let metrics = Arc::new(Metrics::new(&config(OLD)));
        let count = |m: &Metrics| {
            crate::exposition::parse(&m.render())
                .unwrap()
                .iter()
                .find(|s| s.name == "prober_schedule_panics_total")
                .map(|s| s.value)
        };
        assert_eq!(count(&metrics), Some(0.0));
        supervise("p".into(), metrics.clone(), async { panic!("boom") }).await;
        assert_eq!(count(&metrics), Some(1.0));
        // A run's task that panicked, seen when its schedule awaits it.
        let run = tokio::spawn(async { panic!("bang") });
        log_join(run.await, "p", &metrics);
        assert_eq!(count(&metrics), Some(2.0));
    }
}
