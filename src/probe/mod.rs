//! Probes: the outcome model, one file per kind, and the runner that turns a
//! probe run into exactly one [`ProbeResult`] whatever happens inside it.

pub mod assertion;
mod command;
mod exporter;
mod http;
mod interactions;
mod presence;
pub mod reply;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::Instrument;

use crate::config::{ProbeKind, ProbeSpec};
use crate::discord::DiscordSession;

pub use command::CommandProbe;
pub use exporter::ExporterProbe;
pub use http::HttpProbe;
pub use interactions::InteractionsProbe;
pub use presence::PresenceProbe;

/// The result of one probe run: a closed set (the README's Outcomes
/// table says what each means and whether it counts against the bot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The target did what was expected, in time.
    Success,
    /// The target answered, but wrongly.
    Failure,
    /// No answer within the probe's timeout.
    Timeout,
    /// The target could not be contacted.
    Unreachable,
    /// The prober itself could not run the probe; says nothing about the target.
    Inconclusive,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::Failure,
        Outcome::Timeout,
        Outcome::Unreachable,
        Outcome::Inconclusive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
            Outcome::Inconclusive => "inconclusive",
        }
    }

    /// Whether this outcome says something about the target.
    pub fn is_conclusive(self) -> bool {
        self != Outcome::Inconclusive
    }

    /// Whether this outcome counts against the target.
    pub fn counts_against_target(self) -> bool {
        matches!(
            self,
            Outcome::Failure | Outcome::Timeout | Outcome::Unreachable
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a probe kind reports about one run; timing is the runner's job.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub outcome: Outcome,
    /// A short human sentence for logs and `probe run`; never a metric label.
    pub detail: String,
    pub observations: Observations,
}

impl Check {
    pub fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Check {
            outcome,
            detail: detail.into(),
            observations: Observations::default(),
        }
    }
}

/// Facts about the target seen during a run, exported as metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    pub target_uptime_seconds: Option<f64>,
    /// Restarts noticed by this run (the start time moved forward).
    pub target_restarts: u64,
    /// End-to-end latency when it is not the whole run (command probes:
    /// from just before the send to the reply, without the prober's waits).
    pub latency: Option<Duration>,
    /// The reply's latency by Discord's clock (snowflake times).
    pub discord_reply: Option<Duration>,
    /// Time to the first sign of life (typing or a placeholder).
    pub first_response: Option<Duration>,
    /// The target's presence as Discord reports it.
    pub target_online: Option<bool>,
    /// How long the run waited before its clock started (a command probe's
    /// turn in its channel, the send budget): the prober's own delay, part
    /// of the run's duration but never of its latency.
    pub waited: Option<Duration>,
    /// A command probe's message id, once sent: ties the run to the message
    /// in Discord (never a metric label).
    pub probe_message_id: Option<u64>,
    /// An `interactions` probe's latencies and outcomes of real users'
    /// slash commands seen by this run.
    pub interactions: Vec<InteractionObservation>,
}

/// One observation of a real user's slash command; `command` is a label
/// value (a configured command or `other`).
#[derive(Debug, Clone, PartialEq)]
pub enum InteractionObservation {
    Latency {
        command: String,
        phase: &'static str,
        latency: Duration,
    },
    Outcome {
        command: String,
        failed: bool,
    },
}

impl InteractionObservation {
    pub fn latency(command: &str, phase: &'static str, latency: Duration) -> Self {
        InteractionObservation::Latency {
            command: command.to_string(),
            phase,
            latency,
        }
    }

    pub fn outcome(command: &str, failed: bool) -> Self {
        InteractionObservation::Outcome {
            command: command.to_string(),
            failed,
        }
    }
}

/// One probe run, as recorded in metrics and printed by `probe run`.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub probe: String,
    pub kind: &'static str,
    pub outcome: Outcome,
    /// Wall time of the whole run on the monotonic clock.
    pub duration: Duration,
    pub detail: String,
    /// One id per run, also in every log line of the run.
    pub request_id: String,
    /// When the run started.
    pub started_at: SystemTime,
    pub observations: Observations,
}

impl ProbeResult {
    /// The latency of a successful run; other outcomes have none.
    pub fn latency(&self) -> Option<Duration> {
        (self.outcome == Outcome::Success)
            .then(|| self.observations.latency.unwrap_or(self.duration))
    }
}

/// A configured probe, ready to run; it keeps whatever state its kind needs
/// between runs (the exporter's last start time).
#[derive(Debug)]
pub struct Probe {
    pub spec: ProbeSpec,
    kind: KindProbe,
    /// Set while a run goes, scheduled or scraped: a probe never overlaps itself.
    running: Arc<AtomicBool>,
}

/// A run of one probe in progress; dropping it ends the run (see
/// [`Probe::try_begin`]).
#[derive(Debug)]
pub struct RunGuard(Arc<AtomicBool>);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Kept small (the larger kinds boxed, an http probe's spec read from its
/// `Probe`): there is one per configured probe.
#[derive(Debug)]
enum KindProbe {
    Exporter(Box<ExporterProbe>),
    Http(HttpProbe),
    Command(Box<CommandProbe>),
    Presence(PresenceProbe),
    Interactions(Box<InteractionsProbe>),
    /// A Discord probe that cannot run: the prober has no session.
    Unavailable(String),
    /// Test hook: runs that do what the test says (take long, hang, panic)
    /// with no network, so the scheduler can be checked on a paused clock.
    #[cfg(test)]
    Scripted(Script),
}

/// What each run of a scripted probe does (unit tests only).
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct Script(
    pub(crate) Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Check> + Send>> + Send + Sync>,
);

#[cfg(test)]
impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Script")
    }
}

impl Probe {
    /// A probe whose every run is `inconclusive` for `reason` (e.g. the
    /// prober could not connect to Discord): the target is not blamed.
    pub fn unavailable(spec: ProbeSpec, reason: String) -> Self {
        Probe {
            spec,
            kind: KindProbe::Unavailable(reason),
            running: Arc::default(),
        }
    }

    /// A probe whose runs do what `script` does (unit tests only).
    #[cfg(test)]
    pub(crate) fn scripted(spec: ProbeSpec, script: Script) -> Self {
        Probe {
            spec,
            running: Arc::default(),
            kind: KindProbe::Scripted(script),
        }
    }

    /// Starts a run unless one is going (the schedule's or a scrape's):
    /// `None` then, and the caller skips.
    pub fn try_begin(&self) -> Option<RunGuard> {
        self.running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            .then(|| RunGuard(self.running.clone()))
    }

    /// Builds the probe. Discord kinds need the prober's session. Fails
    /// only on a local problem (e.g. the TLS backend).
    pub fn new(spec: ProbeSpec, discord: Option<&Arc<DiscordSession>>) -> Result<Self, String> {
        let session = || {
            discord
                .cloned()
                .ok_or_else(|| "this probe needs the prober's Discord session".to_string())
        };
        let kind = match &spec.kind {
            ProbeKind::Exporter(e) => KindProbe::Exporter(Box::new(ExporterProbe::new(e.clone())?)),
            ProbeKind::Http(h) => KindProbe::Http(HttpProbe::new(h)?),
            ProbeKind::Command(c) => KindProbe::Command(Box::new(CommandProbe::new(
                spec.name.clone(),
                c.clone(),
                spec.timeout,
                session()?,
            ))),
            ProbeKind::Presence(p) => {
                KindProbe::Presence(PresenceProbe::new(p.clone(), spec.timeout, session()?))
            }
            ProbeKind::Interactions(i) => KindProbe::Interactions(Box::new(
                InteractionsProbe::new(i.clone(), spec.timeout, session()?),
            )),
        };
        Ok(Probe {
            spec,
            kind,
            running: Arc::default(),
        })
    }

    async fn check(&self) -> Check {
        match &self.kind {
            KindProbe::Exporter(p) => p.check().await,
            KindProbe::Http(p) => match &self.spec.kind {
                ProbeKind::Http(spec) => p.check(spec).await,
                _ => unreachable!("an http probe is built from an http spec"),
            },
            KindProbe::Command(p) => p.check().await,
            KindProbe::Presence(p) => p.check().await,
            KindProbe::Interactions(p) => p.check().await,
            KindProbe::Unavailable(reason) => Check::new(Outcome::Inconclusive, reason.clone()),
            #[cfg(test)]
            KindProbe::Scripted(script) => (script.0)().await,
        }
    }

    /// How long the runner lets a run go. Command probes time their own
    /// wait for the reply (and their queueing is the prober's, not the
    /// bot's), so for them this is only a safety net.
    fn run_limit(&self) -> (Duration, Outcome) {
        match &self.kind {
            KindProbe::Command(c) => (c.max_duration(), Outcome::Inconclusive),
            KindProbe::Presence(p) => (p.max_duration(), Outcome::Inconclusive),
            KindProbe::Interactions(p) => (p.max_duration(), Outcome::Inconclusive),
            _ => (self.spec.timeout, Outcome::Timeout),
        }
    }
}

/// Runs a probe once under its timeout. Always returns a result.
pub async fn run_once(probe: Arc<Probe>) -> ProbeResult {
    let name = probe.spec.display_name();
    let kind = probe.spec.kind.name();
    let (limit, on_limit) = probe.run_limit();
    run_guarded(
        name,
        kind,
        limit,
        on_limit,
        async move { probe.check().await },
    )
    .await
}

/// Runs a probe once within `budget` (a scrape's: Prometheus' scrape
/// timeout minus a margin) or its own limit, whichever is shorter. Cut by
/// the budget, an `http` or `exporter` run is a `timeout` (the budget is its
/// timeout then); a Discord run is `inconclusive`: its own waits were cut by
/// the scrape, not by the bot.
pub async fn run_within(probe: Arc<Probe>, budget: Duration) -> ProbeResult {
    let name = probe.spec.display_name();
    let kind = probe.spec.kind.name();
    let (own, on_limit) = probe.run_limit();
    let limit = own.min(budget);
    let cut = move |limit: Duration| match on_limit {
        Outcome::Timeout => Check::new(
            Outcome::Timeout,
            format!("no answer within {}", humantime::format_duration(limit)),
        ),
        _ => Check::new(
            Outcome::Inconclusive,
            format!(
                "the scrape's time ({}: Prometheus' scrape timeout minus a margin) ran out before the result was decided; the bot is not blamed",
                humantime::format_duration(limit)
            ),
        ),
    };
    run_limited(name, kind, limit, cut, async move { probe.check().await }).await
}

/// Runs one check under a timeout in its own task, so that a timeout
/// becomes `timeout` and a panic becomes `inconclusive` for this run only,
/// never taking the process or other probes down.
pub async fn run_guarded<F>(
    name: String,
    kind: &'static str,
    timeout: Duration,
    on_timeout: Outcome,
    check: F,
) -> ProbeResult
where
    F: Future<Output = Check> + Send + 'static,
{
    let on_limit = move |timeout: Duration| {
        if on_timeout == Outcome::Timeout {
            Check::new(
                Outcome::Timeout,
                format!("no answer within {}", humantime::format_duration(timeout)),
            )
        } else {
            Check::new(
                on_timeout,
                format!(
                    "internal error: the probe overran its {} limit",
                    humantime::format_duration(timeout)
                ),
            )
        }
    };
    run_limited(name, kind, timeout, on_limit, check).await
}

/// [`run_guarded`] with the check a run cut at `timeout` ends as.
async fn run_limited<F>(
    name: String,
    kind: &'static str,
    timeout: Duration,
    on_limit: impl FnOnce(Duration) -> Check,
    check: F,
) -> ProbeResult
where
    F: Future<Output = Check> + Send + 'static,
{
    let request_id = new_request_id();
    let span = tracing::info_span!("probe_run", request_id = %request_id, probe = %name, kind);
    let started_at = SystemTime::now();
    let start = Instant::now();

    let task = tokio::spawn(tokio::time::timeout(timeout, check).instrument(span.clone()));
    let check = match task.await {
        Ok(Ok(check)) => check,
        Ok(Err(_elapsed)) => on_limit(timeout),
        Err(join_error) => Check::new(
            Outcome::Inconclusive,
            format!("internal error: {}", panic_message(join_error)),
        ),
    };
    let duration = start.elapsed();

    let result = ProbeResult {
        probe: name,
        kind,
        outcome: check.outcome,
        duration,
        detail: check.detail,
        request_id,
        started_at,
        observations: check.observations,
    };
    span.in_scope(|| log_result(&result));
    result
}

fn log_result(r: &ProbeResult) {
    // Rounded to the microsecond: more digits are noise in a log line.
    let execution_time_ms = (r.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let outcome = r.outcome.as_str();
    match r.outcome {
        Outcome::Success => {
            tracing::info!(outcome, execution_time_ms, detail = %r.detail, "probe succeeded")
        }
        Outcome::Inconclusive => {
            tracing::warn!(outcome, execution_time_ms, detail = %r.detail, "probe inconclusive (prober-side problem)")
        }
        _ => tracing::warn!(outcome, execution_time_ms, detail = %r.detail, "probe failed"),
    }
}

fn panic_message(err: tokio::task::JoinError) -> String {
    if err.is_cancelled() {
        return "probe task was cancelled".into();
    }
    let payload = err.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("probe panicked: {text}")
}

/// A short random id (12 hex digits) tying a run's log lines together.
fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The HTTP client shared by every `http` and `exporter` probe with the
/// same redirect policy (per-probe clients cost ~50 KB each: half the RSS
/// with 1,000 probes).
///
/// It keeps no idle connections: every run connects anew, like
/// blackbox_exporter, so a run measures and checks what a new client meets
/// (DNS, TCP, TLS and its certificate, a listener that still accepts), not
/// a connection kept warm by an earlier run or another probe. Requests say
/// `Connection: close`, so the target closes first and the prober's ports
/// do not pile up in TIME_WAIT at high probe rates.
pub(crate) fn shared_http_client(follow_redirects: bool) -> Result<reqwest::Client, String> {
    static FOLLOWING: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    static NOT_FOLLOWING: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    let cell = if follow_redirects {
        &FOLLOWING
    } else {
        &NOT_FOLLOWING
    };
    cell.get_or_init(|| {
        let redirects = if follow_redirects {
            reqwest::redirect::Policy::limited(MAX_REDIRECTS)
        } else {
            reqwest::redirect::Policy::none()
        };
        reqwest::Client::builder()
            .user_agent(concat!("twi-probe/", env!("CARGO_PKG_VERSION")))
            .redirect(redirects)
            .pool_max_idle_per_host(0)
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::CONNECTION,
                reqwest::header::HeaderValue::from_static("close"),
            )]))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))
    })
    .clone()
}

/// Why a response body was not read whole.
pub(crate) enum BodyError {
    /// Larger than the probe's `max_body_size`: reading stopped there.
    TooLarge(u64),
    Read(reqwest::Error),
}

impl BodyError {
    /// What went wrong, for a `failure`'s detail.
    pub(crate) fn detail(&self) -> String {
        match self {
            BodyError::TooLarge(limit) => format!(
                "the body is larger than max_body_size ({}); it was not read further",
                bytesize::ByteSize(*limit).display().iec()
            ),
            BodyError::Read(e) => format!("reading the body failed: {}", describe_http_error(e)),
        }
    }
}

/// Reads a body as a stream, at most `limit` bytes: a body announced or
/// found to be larger is never read whole (an endless or huge body must not
/// take the prober's memory).
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Runs CPU-heavy work on a body (parsing, regex matching) on tokio's
/// blocking threads, never on the runtime threads that schedule probes and
/// answer HTTP. Inside a run, it counts within the probe's timeout.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("internal error: {e}"))
}

/// How many redirects are followed when following is on (reqwest's default).
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Describes a reqwest error by its innermost cause, without the URL (URLs
/// can carry credentials, and the probe name already says what was fetched).
pub(crate) fn describe_http_error(err: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.is_empty() {
        "request failed".into()
    } else {
        text
    }
}

/// Whether an error comes from the prober's own resource limits (file
/// descriptors, memory, socket buffers): then the target was not probed.
fn prober_resource_error(err: &(dyn std::error::Error + 'static)) -> bool {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS on Linux.
    const OWN_LIMITS: [i32; 4] = [24, 23, 12, 105];
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.raw_os_error().is_some_and(|c| OWN_LIMITS.contains(&c))
                || io.kind() == std::io::ErrorKind::OutOfMemory)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Sorts a reqwest send error into the outcome it means for the target.
/// The prober's own exhausted resources are its problem: `inconclusive`.
pub(crate) fn classify_send_error(err: &reqwest::Error) -> Outcome {
    if prober_resource_error(err) {
        Outcome::Inconclusive
    } else if err.is_timeout() {
        Outcome::Timeout
    } else if err.is_builder() {
        Outcome::Inconclusive
    } else if err.is_connect() || err.is_request() {
        Outcome::Unreachable
    } else {
        Outcome::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_check_is_inconclusive() {
        let r = run_guarded(
            "p".into(),
            "http",
            Duration::from_secs(5),
            Outcome::Timeout,
            async {
                panic!("boom");
            },
        )
        .await;
        assert_eq!(r.outcome, Outcome::Inconclusive);
        assert_eq!(r.detail, "internal error: probe panicked: boom");
        assert_eq!(r.latency(), None);
    }

    #[tokio::test]
    async fn a_slow_check_times_out() {
        let r = run_guarded(
            "p".into(),
            "http",
            Duration::from_millis(20),
            Outcome::Timeout,
            async { std::future::pending::<Check>().await },
        )
        .await;
        assert_eq!(r.outcome, Outcome::Timeout);
        assert_eq!(r.detail, "no answer within 20ms");
        assert!(r.duration >= Duration::from_millis(20));
    }

    #[test]
    fn the_probers_own_exhausted_resources_are_recognised() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connect failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        for code in [24, 23, 12, 105] {
            let e = Wrapper(std::io::Error::from_raw_os_error(code));
            assert!(prober_resource_error(&e), "os error {code}");
        }
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!prober_resource_error(&refused));
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
        assert_eq!(new_request_id().len(), 12);
    }
}
