//! `probe serve`: probes on schedule, reloads, and a draining shutdown.
//! The HTTP surface (`/metrics`, health, reload) is in src/web/.
//!
//! The caller binds the listener and owns shutdown (`run(listener, ...,
//! shutdown)`), so tests bind port 0. Scrapes are served from snapshots
//! rendered on a blocking thread (src/scrape.rs) while probes run on their
//! own tasks: neither waits for the other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProbeSpec, Secret};
use crate::discord::{ConnectError, DiscordSession, SessionEvent, intents_for};
use crate::history::History;
use crate::metrics::Metrics;
use crate::probe::Probe;
use crate::schedule::{self, ResultSink, SlotStats};
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
}

struct Scheduled {
    spec: ProbeSpec,
    /// Shared with scrapes of `GET /probe?probe=NAME` (its state, its runs).
    probe: Arc<Probe>,
    sink: ResultSink,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    stats: Arc<SlotStats>,
}

/// The running service; shared with the HTTP handlers.
pub struct Service {
    path: PathBuf,
    options: ServeOptions,
    config: RwLock<Config>,
    metrics: RwLock<Arc<Metrics>>,
    session: Mutex<Option<(String, Arc<DiscordSession>)>>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    scheduled: Arc<tokio::sync::Mutex<HashMap<String, Scheduled>>>,
    limit: Arc<Semaphore>,
    /// Serializes reloads (SIGHUP and POST /-/reload may race).
    reloading: tokio::sync::Mutex<()>,
    /// Set when the Discord session was replaced or dropped.
    session_replaced: std::sync::atomic::AtomicBool,
    /// Why Discord is not connected, while the start-up connection is retried.
    discord_down: Mutex<Option<String>>,
    /// What `/metrics` serves.
    pub(crate) scrape: ScrapeCache,
    /// Recent runs per probe and the last reload (the status page).
    pub(crate) history: History,
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
            options,
            config: RwLock::new(config.clone()),
            metrics: RwLock::new(metrics),
            session: Mutex::new(None),
            follower: Mutex::new(None),
            scheduled: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            reloading: tokio::sync::Mutex::new(()),
            session_replaced: std::sync::atomic::AtomicBool::new(false),
            discord_down: Mutex::new(None),
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
            *service
                .discord_down
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(e.message);
            service.clone().retry_discord(DISCORD_RETRY);
        } else {
            service.watch_session_end();
        }
        service.reconcile(&config, true).await;
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
        tokio::spawn(async move {
            let token_rejected = loop {
                if let Some(ended) = session.ended() {
                    break ended.token_rejected;
                }
                match events.recv().await {
                    Ok(SessionEvent::Ended { token_rejected }) => break token_rejected,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            };
            let Some(service) = service.upgrade() else {
                return;
            };
            let reason = session.ended().map(|e| e.reason).unwrap_or_default();
            {
                let mut current = service.session.lock().unwrap_or_else(|p| p.into_inner());
                if !current
                    .as_ref()
                    .is_some_and(|(_, s)| Arc::ptr_eq(s, &session))
                {
                    return;
                }
                *current = None;
            }
            *service
                .discord_down
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(reason);
            service
                .session_replaced
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let every = if token_rejected {
                DISCORD_TOKEN_RETRY
            } else {
                DISCORD_RETRY
            };
            tracing::warn!("retrying the Discord connection every {every:?}");
            service.clone().retry_discord(every);
        });
    }

    /// Retries the Discord connection until it succeeds, then rebuilds the
    /// probes on the new session.
    fn retry_discord(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let config = self.config();
                if !config.needs_discord() || self.session().is_some() {
                    return;
                }
                let _one_at_a_time = self.reloading.lock().await;
                match self.connect_discord(&config).await {
                    Ok(()) => {
                        *self.discord_down.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        tracing::info!("the prober connected to Discord");
                        self.watch_session_end();
                        self.reconcile(&config, false).await;
                        return;
                    }
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
        self.metrics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn session(&self) -> Option<Arc<DiscordSession>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
    }

    /// Whether `POST /-/reload` may reload (see [`ServeOptions`]).
    pub fn lifecycle_enabled(&self) -> bool {
        self.options.enable_lifecycle
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
            None => Err(self
                .discord_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
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
            .filter(|s| s.spec.name == name)
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
        self.discord_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let metrics = self.metrics();
        self.history.record_reload(result.as_ref().err().cloned());
        match &result {
            Ok(()) => {
                metrics.set_config_reload_ok(true);
                tracing::info!(config = %self.path.display(), "configuration reloaded");
            }
            Err(e) => {
                metrics.set_config_reload_ok(false);
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
        let relabel = !self.metrics().fits(&config);
        if relabel {
            // Label names changed: fresh families, and every probe restarts.
            let metrics = Arc::new(Metrics::new(&config).with_process_metrics());
            *self.metrics.write().unwrap_or_else(|p| p.into_inner()) = metrics;
        }
        self.reconcile(&config, relabel).await;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// Connects (or reconnects, when its settings changed) the prober's
    /// Discord session; drops it when no probe needs Discord.
    async fn connect_discord(&self, config: &Config) -> Result<(), ConnectFailure> {
        if !config.needs_discord() {
            let old = self
                .session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some((_, s)) = old {
                self.session_replaced
                    .store(true, std::sync::atomic::Ordering::SeqCst);
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
        let same = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
        let old = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((fingerprint, session));
        if let Some((_, s)) = old {
            s.shutdown().await;
        }
        self.session_replaced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Starts, stops and restarts probe schedules to match `config`.
    async fn reconcile(&self, config: &Config, restart_all: bool) {
        let metrics = self.metrics();
        let session = self.session();
        let wanted: HashMap<String, &ProbeSpec> = config
            .probes
            .iter()
            .map(|p| (p.display_name(), p))
            .collect();
        let mut scheduled = self.scheduled.lock().await;
        // Probes built on a replaced session must be rebuilt.
        let session_changed = self
            .session_replaced
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        // Stop what is gone or changed.
        let old_config = self.config();
        // A module removed or changed: its series go, as a probe's do.
        for m in old_config.modules.values() {
            if config
                .modules
                .get(&m.name)
                .is_none_or(|new| fingerprint(&new.template) != fingerprint(&m.template))
            {
                metrics.forget_probe(&m.template);
            }
        }
        let stale: Vec<String> = scheduled
            .iter()
            .filter(|(name, s)| {
                restart_all
                    || session_changed
                    || wanted
                        .get(*name)
                        .is_none_or(|spec| fingerprint(spec) != fingerprint(&s.spec))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let removed = if wanted.contains_key(&name) {
                None
            } else {
                old_config
                    .probes
                    .iter()
                    .find(|p| p.display_name() == name)
                    .cloned()
            };
            if let Some(spec) = &removed {
                metrics.forget_probe(spec);
            }
            if let Some(s) = scheduled.remove(&name) {
                s.stop.cancel();
                // Its in-flight run finishes (within its limit) on its own
                // and records its result, which would bring a removed
                // probe's series back: forget them again after it, unless
                // a later reload configured the name anew meanwhile.
                let (metrics, all) = (metrics.clone(), self.scheduled.clone());
                tokio::spawn(async move {
                    let _ = s.handle.await;
                    let Some(spec) = removed else { return };
                    // Under the lock, so a reload cannot add the name back
                    // between the check and the forgetting. A probe of that
                    // name with other labels (another kind) does not clash.
                    let all = all.lock().await;
                    let clash = all.get(&name).is_some_and(|s| {
                        metrics.label_values(&s.spec) == metrics.label_values(&spec)
                    });
                    if !clash {
                        metrics.forget_probe(&spec);
                    }
                    drop(all);
                });
            }
        }
        // Modules' runs (scrapes of /probe) have rings under their names too.
        self.history
            .retain(|name| wanted.contains_key(name) || config.modules.contains_key(name));
        // Start what is new or changed.
        for (name, spec) in wanted {
            if scheduled.contains_key(&name) {
                continue;
            }
            metrics.init_probe(spec);
            let down = self
                .discord_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let built = match (&session, down) {
                (None, Some(why)) if spec.kind.needs_discord() => Ok(Probe::unavailable(
                    spec.clone(),
                    format!(
                        "the prober is not connected to Discord ({why}); the bot was not probed"
                    ),
                )),
                _ => Probe::new(spec.clone(), session.as_ref()),
            };
            let probe = match built {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    tracing::error!(probe = %name, "cannot start the probe: {e}");
                    continue;
                }
            };
            let stop = CancellationToken::new();
            let stats = Arc::new(SlotStats::default());
            let sink = self.history.track(spec, config.serve.history);
            let handle = tokio::spawn(schedule::run_probe(
                probe.clone(),
                metrics.clone(),
                self.limit.clone(),
                stop.clone(),
                stats.clone(),
                Some(sink.clone()),
            ));
            scheduled.insert(
                name,
                Scheduled {
                    spec: spec.clone(),
                    probe,
                    sink,
                    stop,
                    handle,
                    stats,
                },
            );
        }
        drop(scheduled);
        // The Discord metrics follow the current session and config.
        let mut follower = self.follower.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = follower.take() {
            f.abort();
        }
        if let Some(s) = &session {
            *follower = Some(metrics.follow_discord(config, s));
        }
    }

    /// Stops scheduling, lets in-flight runs finish (each within its own
    /// limit), and closes the Discord session.
    pub async fn shutdown(&self) {
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
            let _ = s.handle.await;
        }
        if let Some(f) = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            f.abort();
        }
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((_, s)) = session {
            s.shutdown().await;
        }
    }
}

fn fingerprint(spec: &ProbeSpec) -> String {
    format!("{spec:?}")
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
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|e| format!("HTTP server failed: {e}"))?;
    service.shutdown().await;
    let _ = refresher.await;
    Ok(())
}
