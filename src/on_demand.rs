//! Runs driven by Prometheus' scrapes (`GET /probe`, the multi-target
//! exporter pattern): one run per scrape, within the scrape's time, under
//! the same guarantees as scheduled runs, and that run's metrics.
//!
//! - A configured probe (`?probe=NAME`) shares its [`Probe`] with its
//!   schedule: a scrape while a run of it is going does not start another
//!   (`inconclusive`, nothing sent), and a slot that comes due during a
//!   scrape's run is skipped.
//! - A module (`?module=NAME&target=...`) makes a probe of the target
//!   ([`Module::probe_for`]); one run per module and target at a time.
//! - A command run takes its channel's turn without queueing (busy:
//!   `inconclusive`, nothing sent), waits for the send budget, and waits for
//!   the reply only as long as the scrape's time leaves for it.
//! - Every run counts like a scheduled one in `/metrics` (a module's under
//!   its own name) and in the status page's history, and takes a permit of
//!   `serve.max_concurrency`.
//!
//! The HTTP side is `web/probe_endpoint.rs`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};
use tokio::time::Instant;

use crate::config::turns::GATEWAY_PROOF_WAIT;
use crate::config::{Module, ProbeKind, ProbeSpec};
use crate::discord::DiscordSession;
use crate::metrics::Metrics;
use crate::probe::{Check, Outcome, Probe, ProbeResult, run_guarded, run_within};
use crate::schedule::ResultSink;
use crate::serve::Service;

/// Taken off Prometheus' scrape timeout so the answer arrives before it
/// gives up (blackbox_exporter's default `--timeout-offset`).
pub const SCRAPE_MARGIN: Duration = Duration::from_millis(500);

/// A command run's allowance for its send inside a scrape's time.
const SEND_ALLOWANCE: Duration = Duration::from_millis(500);

/// The shortest reply wait worth sending a probe message for.
const MIN_REPLY_WAIT: Duration = Duration::from_millis(100);

/// What a scrape asks for.
#[derive(Debug, Clone)]
pub enum Request {
    /// A configured probe, by name (presence probes: every shard).
    Probe(String),
    /// A module applied to a target.
    Module { module: String, target: String },
}

/// One run of a scrape: the spec its series are labelled by, and its result.
pub struct Run {
    pub spec: ProbeSpec,
    pub result: ProbeResult,
}

/// State of scrape-driven runs, shared by every `/probe` request.
#[derive(Default)]
pub struct OnDemand {
    /// Module runs going, by module and target.
    running: Mutex<HashSet<(String, String)>>,
    /// Metrics registries (by address) where a module's run counters have
    /// been set up at zero, with the module's fingerprint.
    initialised: Mutex<HashSet<(usize, String)>>,
}

/// The time a scrape leaves for its run: Prometheus' scrape timeout (the
/// `X-Prometheus-Scrape-Timeout-Seconds` header) minus [`SCRAPE_MARGIN`];
/// half of it when it is under twice the margin. `None` without the header.
pub fn budget_from_header(value: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = value else { return Ok(None) };
    let seconds: f64 = v.trim().parse().map_err(|_| {
        format!("X-Prometheus-Scrape-Timeout-Seconds {v:?} is not a number of seconds")
    })?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!(
            "X-Prometheus-Scrape-Timeout-Seconds {v:?} is not a positive number of seconds"
        ));
    }
    let timeout = Duration::from_secs_f64(seconds);
    Ok(Some(if timeout > 2 * SCRAPE_MARGIN {
        timeout - SCRAPE_MARGIN
    } else {
        timeout / 2
    }))
}

impl OnDemand {
    /// Runs what `request` names for one scrape. `Err` is a refused request
    /// (unknown probe or module, a target the module does not accept): a
    /// 400, and nothing ran.
    pub async fn run(
        &self,
        service: &Service,
        request: &Request,
        budget: Option<Duration>,
    ) -> Result<Vec<Run>, String> {
        let deadline = budget.map(|b| Instant::now() + b);
        match request {
            Request::Probe(name) => {
                let found = service.scrape_targets(name).await;
                if found.is_empty() {
                    return Err(format!("no probe named {name:?} is configured"));
                }
                let runs = found.into_iter().map(|(stored, sink)| async move {
                    let spec = stored.spec.clone();
                    let result = match stored.try_begin() {
                        Some(_guard) => {
                            let probe = fitted(&stored, deadline, service);
                            counted(service, &spec, &sink, deadline, probe).await
                        }
                        None => {
                            let result = refused(
                                &spec,
                                "a run of this probe (scheduled or for another scrape) is going; this scrape did not start another, nothing was sent",
                            )
                            .await;
                            record(service, &spec, &sink, &result);
                            result
                        }
                    };
                    Run { spec, result }
                });
                Ok(futures_util::future::join_all(runs).await)
            }
            Request::Module { module, target } => {
                let config = service.config();
                let Some(m) = config.modules.get(module) else {
                    return Err(format!("no module named {module:?} is configured"));
                };
                let spec = m.probe_for(target)?;
                self.init_series(&service.metrics(), m);
                let sink = service.history.track(&m.template, config.serve.history);
                let result = match self.begin(module, target) {
                    Some(_guard) => {
                        let probe = build(&spec, service);
                        let probe = fitted(&probe, deadline, service);
                        counted(service, &m.template, &sink, deadline, probe).await
                    }
                    None => {
                        let result = refused(
                            &spec,
                            "a run of this module for this target (for another scrape) is going; this scrape did not start another, nothing was sent",
                        )
                        .await;
                        record(service, &m.template, &sink, &result);
                        result
                    }
                };
                Ok(vec![Run { spec, result }])
            }
        }
    }

    fn begin(&self, module: &str, target: &str) -> Option<ModuleRun<'_>> {
        let key = (module.to_string(), target.to_string());
        let fresh = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        // Built only when it owns the key (its drop takes the lock).
        fresh.then(|| ModuleRun { owner: self, key })
    }

    /// A module's run counters start at zero in `/metrics`, once per
    /// registry (a reload that changes label names makes a new one).
    fn init_series(&self, metrics: &Arc<Metrics>, module: &Module) {
        let key = (
            Arc::as_ptr(metrics) as usize,
            format!("{:?}", module.template),
        );
        let mut initialised = self.initialised.lock().unwrap_or_else(|p| p.into_inner());
        // Only the current registry's entries matter.
        initialised.retain(|(registry, _)| *registry == key.0);
        let fresh = initialised.insert(key);
        drop(initialised);
        if fresh {
            metrics.init_probe(&module.template);
        }
    }
}

/// A module run in progress; dropping it ends it.
struct ModuleRun<'a> {
    owner: &'a OnDemand,
    key: (String, String),
}

impl Drop for ModuleRun<'_> {
    fn drop(&mut self) {
        self.owner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// A run that did not start: `inconclusive` (logged like any run; the
/// caller records it: every answer of `/probe` counts as one run).
async fn refused(spec: &ProbeSpec, why: &'static str) -> ProbeResult {
    run_guarded(
        spec.display_name(),
        spec.kind.name(),
        Duration::from_secs(1),
        Outcome::Inconclusive,
        async move { Check::new(Outcome::Inconclusive, why) },
    )
    .await
}

/// The probe for a module's target (Discord kinds on the prober's session).
fn build(spec: &ProbeSpec, service: &Service) -> Arc<Probe> {
    Arc::new(with_session(spec, service.session().as_ref(), service))
}

fn with_session(
    spec: &ProbeSpec,
    session: Option<&Arc<DiscordSession>>,
    service: &Service,
) -> Probe {
    if spec.kind.needs_discord() && session.is_none() {
        let why = service
            .discord_down()
            .unwrap_or_else(|| "no session".into());
        return Probe::unavailable(
            spec.clone(),
            format!("the prober is not connected to Discord ({why}); the bot was not probed"),
        );
    }
    Probe::new(spec.clone(), session)
        .unwrap_or_else(|e| Probe::unavailable(spec.clone(), format!("internal error: {e}")))
}

/// The probe to run for a scrape that must end by `deadline`. Command and
/// presence probes are rebuilt with waits that fit (they keep no state
/// between runs); other kinds keep their probe (and its state) and are cut
/// by the runner at the deadline.
fn fitted(probe: &Arc<Probe>, deadline: Option<Instant>, service: &Service) -> Arc<Probe> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut spec = probe.spec.clone();
    match &mut spec.kind {
        ProbeKind::Command(c) => {
            // A scrape never queues for a channel's turn.
            c.turn_wait = Duration::ZERO;
            if let Some(left) = left {
                spec.timeout = spec.timeout.min(reply_wait(left));
            }
        }
        ProbeKind::Presence(_) => {
            if let Some(left) = left {
                spec.timeout = spec.timeout.min(left.saturating_sub(SEND_ALLOWANCE));
            }
        }
        _ => return probe.clone(),
    }
    Arc::new(with_session(&spec, service.session().as_ref(), service))
}

/// How long a command run may wait for the reply when `left` remains: the
/// reply wait and the gateway proof after it (at most 5 s, at most the
/// wait) must fit, after the send.
fn reply_wait(left: Duration) -> Duration {
    let avail = left.saturating_sub(SEND_ALLOWANCE);
    (avail / 2).max(avail.saturating_sub(GATEWAY_PROOF_WAIT))
}

/// One run, counted as the schedule counts its runs: a permit of
/// `serve.max_concurrency`, `prober_probes_in_flight`, the metrics under
/// `series`, the history sink.
async fn counted(
    service: &Service,
    series: &ProbeSpec,
    sink: &ResultSink,
    deadline: Option<Instant>,
    probe: Arc<Probe>,
) -> ProbeResult {
    let permits = service.run_permits();
    let permit = match deadline {
        Some(d) => tokio::time::timeout_at(d, permits.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
        None => permits.acquire_owned().await.ok(),
    };
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let result = match (&probe.spec.kind, left) {
        _ if permit.is_none() => {
            refused(
                &probe.spec,
                "the prober was running serve.max_concurrency probes for the whole scrape; nothing was sent",
            )
            .await
        }
        (ProbeKind::Command(_), Some(left)) if reply_wait(left) < MIN_REPLY_WAIT => {
            refused(
                &probe.spec,
                "the scrape's time is too short to wait for a reply (see X-Prometheus-Scrape-Timeout-Seconds); nothing was sent",
            )
            .await
        }
        _ => {
            let metrics = service.metrics();
            metrics.run_started();
            let result = run_within(probe, left.unwrap_or(Duration::MAX)).await;
            // In flight until its result is recorded, as scheduled runs.
            metrics.record(series, &result);
            metrics.run_finished();
            sink(&result);
            drop(permit);
            return result;
        }
    };
    record(service, series, sink, &result);
    result
}

/// Counts a run in `/metrics` (under `series`) and the history.
fn record(service: &Service, series: &ProbeSpec, sink: &ResultSink, result: &ProbeResult) {
    service.metrics().record(series, result);
    sink(result);
}

/// The metrics of one scrape's runs, in the text format 0.0.4: blackbox
/// exporter's `probe_success` (absent after an `inconclusive` run, which
/// says nothing about the target) and `probe_duration_seconds`, the outcome,
/// and what the kind observed. Labels: `probe`, `kind` and the probe's
/// static labels; Prometheus adds `instance` (the target) and `job`.
pub fn render(runs: &[Run]) -> String {
    let mut names: Vec<String> = vec!["probe".into(), "kind".into()];
    for run in runs {
        for label in run.spec.labels.keys() {
            if !names.contains(label) {
                names.push(label.clone());
            }
        }
    }
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut with_outcome = names_ref.clone();
    with_outcome.push("outcome");
    let mut with_phase = names_ref.clone();
    with_phase.push("phase");
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
    };
    let success = gauge(
        "probe_success",
        "1 if this scrape's run succeeded, 0 if it failed, timed out or was unreachable; absent when it was inconclusive.",
        &names_ref,
    );
    let duration = gauge(
        "probe_duration_seconds",
        "How long this scrape's run took.",
        &names_ref,
    );
    let outcome = gauge(
        "probe_outcome",
        "1 for this scrape's run's outcome, 0 for the four others.",
        &with_outcome,
    );
    let latency = gauge(
        "probe_run_latency_seconds",
        "Latency of this scrape's run when it succeeded (command probes: from the send to the reply).",
        &names_ref,
    );
    let discord = gauge(
        "probe_run_discord_latency_seconds",
        "Command probes, when the run succeeded: the reply (phase=reply) and the first sign of life (phase=first_response) by Discord's clock.",
        &with_phase,
    );
    let uptime = gauge(
        "probe_target_uptime_seconds",
        "The bot's uptime, from its exporter (exporter probes).",
        &names_ref,
    );
    let presence = gauge(
        "probe_target_presence_online",
        "1/0: the bot's presence as Discord reports it (presence probes).",
        &names_ref,
    );
    for run in runs {
        let values: Vec<String> = names
            .iter()
            .map(|n| match n.as_str() {
                "probe" => run.spec.name.clone(),
                "kind" => run.spec.kind.name().to_string(),
                other => run.spec.labels.get(other).cloned().unwrap_or_default(),
            })
            .collect();
        let v: Vec<&str> = values.iter().map(String::as_str).collect();
        let r = &run.result;
        if r.outcome.is_conclusive() {
            success
                .with_label_values(&v)
                .set(f64::from(u8::from(r.outcome == Outcome::Success)));
        }
        duration.with_label_values(&v).set(r.duration.as_secs_f64());
        for o in Outcome::ALL {
            let mut w = v.clone();
            w.push(o.as_str());
            outcome
                .with_label_values(&w)
                .set(f64::from(u8::from(o == r.outcome)));
        }
        if let Some(l) = r.latency() {
            latency.with_label_values(&v).set(l.as_secs_f64());
        }
        let o = &r.observations;
        if r.outcome == Outcome::Success {
            for (phase, value) in [
                ("reply", o.discord_reply),
                ("first_response", o.first_response),
            ] {
                if let Some(d) = value {
                    let mut w = v.clone();
                    w.push(phase);
                    discord.with_label_values(&w).set(d.as_secs_f64());
                }
            }
        }
        if let Some(u) = o.target_uptime_seconds {
            uptime.with_label_values(&v).set(u);
        }
        if let Some(online) = o.target_online {
            presence
                .with_label_values(&v)
                .set(f64::from(u8::from(online)));
        }
    }
    let registry = Registry::new();
    for family in [
        success, duration, outcome, latency, discord, uptime, presence,
    ] {
        registry
            .register(Box::new(family))
            .expect("unique metric names");
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encoding to memory cannot fail");
    String::from_utf8(buf).expect("the text encoder writes UTF-8")
}

/// `&debug=true`: what happened, for a person (blackbox_exporter's debug
/// output): the request, the time it had, each run's outcome, detail and
/// observations, then the metrics the scrape would have returned.
pub fn debug_trace(request: &Request, budget: Option<Duration>, runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = match request {
        Request::Probe(name) => writeln!(out, "Probe {name:?} (from probes.yaml)"),
        Request::Module { module, .. } => writeln!(out, "Module {module:?} applied to the target"),
    };
    let _ = match budget {
        Some(b) => writeln!(
            out,
            "Time for the run: {} (Prometheus' scrape timeout minus {})",
            humantime::format_duration(round_ms(b)),
            humantime::format_duration(SCRAPE_MARGIN)
        ),
        None => writeln!(
            out,
            "Time for the run: the probe's own (no X-Prometheus-Scrape-Timeout-Seconds header)"
        ),
    };
    for run in runs {
        let r = &run.result;
        let _ = writeln!(out, "\nRun of {} ({}):", r.probe, r.kind);
        let _ = writeln!(out, "  request id   {}", r.request_id);
        let started: chrono::DateTime<chrono::Utc> = r.started_at.into();
        let _ = writeln!(
            out,
            "  started at   {}",
            started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let _ = writeln!(
            out,
            "  timeout      {}",
            humantime::format_duration(run.spec.timeout)
        );
        let _ = writeln!(out, "  outcome      {}", r.outcome);
        let _ = writeln!(
            out,
            "  duration     {}",
            crate::report::format_seconds(r.duration)
        );
        let _ = writeln!(out, "  detail       {}", r.detail);
        let o = &r.observations;
        let lines = [
            ("waited", o.waited),
            ("latency", r.latency()),
            ("by Discord", o.discord_reply),
            ("first sign", o.first_response),
        ];
        for (what, d) in lines {
            if let Some(d) = d {
                let _ = writeln!(out, "  {what:<12} {}", crate::report::format_seconds(d));
            }
        }
        if let Some(id) = o.probe_message_id {
            let _ = writeln!(out, "  message id   {id}");
        }
        if let Some(u) = o.target_uptime_seconds {
            let _ = writeln!(out, "  bot uptime   {u:.0}s");
        }
        if let Some(online) = o.target_online {
            let _ = writeln!(
                out,
                "  presence     {}",
                if online { "online" } else { "offline" }
            );
        }
    }
    let _ = writeln!(out, "\nMetrics that would have been returned:");
    out.push_str(&render(runs));
    out
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_scrape_timeout_minus_the_margin() {
        assert_eq!(budget_from_header(None), Ok(None));
        assert_eq!(
            budget_from_header(Some("10")),
            Ok(Some(Duration::from_millis(9500)))
        );
        assert_eq!(
            budget_from_header(Some("0.8")),
            Ok(Some(Duration::from_millis(400)))
        );
        for bad in ["", "ten", "-1", "0", "NaN", "inf"] {
            assert!(budget_from_header(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_command_run_leaves_room_for_the_gateway_proof() {
        // 9.5 s left: 0.5 s to send, 4.5 s to wait, 4.5 s of proof.
        assert_eq!(
            reply_wait(Duration::from_millis(9500)),
            Duration::from_millis(4500)
        );
        assert_eq!(
            reply_wait(Duration::from_secs(20)),
            Duration::from_millis(14_500)
        );
        assert_eq!(
            reply_wait(Duration::from_secs(2)),
            Duration::from_millis(750)
        );
        assert_eq!(reply_wait(Duration::from_millis(300)), Duration::ZERO);
    }
}
