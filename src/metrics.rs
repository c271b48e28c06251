//! The metric families listed in the README's Metrics section (the
//! contract with the alert rules and dashboards; a test keeps the two
//! equal), in a registry owned by this struct.
//!
//! Label values come only from the configuration (probe names, kinds, static
//! labels) and closed sets (outcomes), so the number of series is fixed by
//! the config, never by what a target answers.
//!
//! A probe's series are keyed by its identity: name, kind and its own static
//! labels, held in one internal label (`__labels`) that rendering expands to
//! the label names the current config uses. So a reload that adds or drops a
//! label name (removing the only presence probe drops `shard`) changes only
//! the text, never the series, and unchanged probes keep their counters.

use std::sync::{Mutex, RwLock};
use std::time::UNIX_EPOCH;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, proto::LabelPair, proto::MetricFamily,
};

use crate::config::{Config, ProbeKind, ProbeSpec};
use crate::discord::{DiscordSession, SessionEvent};
use crate::probe::{InteractionObservation, Outcome, ProbeResult};

/// Latency buckets from 50 ms to 10 s, with edges at the monitoring guide's
/// thresholds (1 s warning, 3 s critical) so alerts can use them exactly.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
];

/// The internal label holding a probe's own static labels (see the module
/// comment); config label names cannot start with `__`.
const OWN_LABELS: &str = "__labels";

pub struct Metrics {
    registry: Registry,
    /// The static label names every probe series shows (the current config's).
    static_labels: RwLock<Vec<String>>,
    /// Whether the prober's gateway families are registered (only with
    /// Discord probes).
    discord_registered: Mutex<bool>,
    success: GaugeVec,
    duration: GaugeVec,
    runs: IntCounterVec,
    latency: HistogramVec,
    last_success: GaugeVec,
    target_uptime: GaugeVec,
    target_restarts: IntCounterVec,
    target_presence: GaugeVec,
    discord_latency: HistogramVec,
    late_replies: IntCounterVec,
    gateway_connected: IntGauge,
    token_rejected: IntGauge,
    gateway_latency: Gauge,
    gateway_disconnects: IntCounter,
    ratelimited: IntCounter,
    config_reload_ok: IntGauge,
    schedule_panics: IntCounter,
    skipped: IntCounterVec,
    lateness: prometheus::Histogram,
    in_flight: IntGauge,
    next_run: GaugeVec,
    interaction_latency: HistogramVec,
    interactions: IntCounterVec,
    /// Bumped after each change tests wait for (a run started or recorded,
    /// a skip, a next slot, a probe forgotten, a session event or gateway
    /// sample applied by `follow_discord`): tests await it instead of polling the registry.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Metrics {
    /// Registers every family and each configured probe's run counters (at
    /// zero for every outcome, so `rate()` and `increase()` work from the
    /// first scrape).
    pub fn new(config: &Config) -> Self {
        let static_labels = config.static_label_names();
        let names: Vec<&str> = vec!["probe", "kind", OWN_LABELS];
        let mut with_outcome = names.clone();
        with_outcome.push("outcome");
        let mut with_phase = names.clone();
        with_phase.push("phase");

        let mut with_command_phase = names.clone();
        with_command_phase.extend(["command", "phase"]);
        let mut with_command_outcome = names.clone();
        with_command_outcome.extend(["command", "outcome"]);
        let interaction_latency = HistogramVec::new(
            HistogramOpts::new(
                "probe_interaction_latency_seconds",
                "Real users' slash commands by Discord's clock: phase=response is the response message's creation, phase=final a deferred response's final edit, each minus the interaction's creation.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &with_command_phase,
        )
        .expect("valid metric");
        let interactions = IntCounterVec::new(
            Opts::new(
                "probe_interactions_total",
                "Real users' slash-command responses seen, by outcome (failure: matched error_reply, or a deferred response never finished).",
            ),
            &with_command_outcome,
        )
        .expect("valid metric");

        let registry = Registry::new();
        let success = GaugeVec::new(
            Opts::new(
                "probe_success",
                "1 if the last conclusive run of the probe succeeded, else 0.",
            ),
            &names,
        )
        .expect("valid metric");
        let duration = GaugeVec::new(
            Opts::new(
                "probe_duration_seconds",
                "Duration of the probe's last run in seconds.",
            ),
            &names,
        )
        .expect("valid metric");
        let runs = IntCounterVec::new(
            Opts::new("probe_runs_total", "Probe runs, by outcome."),
            &with_outcome,
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "probe_latency_seconds",
                "Latency of successful probe runs in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &names,
        )
        .expect("valid metric");
        let last_success = GaugeVec::new(
            Opts::new(
                "probe_last_success_timestamp_seconds",
                "Unix time of the probe's last successful run.",
            ),
            &names,
        )
        .expect("valid metric");
        let next_run = GaugeVec::new(
            Opts::new(
                "probe_next_run_timestamp_seconds",
                "Unix time when the probe's next scheduled run is due (probe serve); \
                 far in the past means its schedule has stopped.",
            ),
            &names,
        )
        .expect("valid metric");
        let target_uptime = GaugeVec::new(
            Opts::new(
                "probe_target_uptime_seconds",
                "The target's uptime, from process_start_time_seconds on its exporter.",
            ),
            &names,
        )
        .expect("valid metric");
        let target_restarts = IntCounterVec::new(
            Opts::new(
                "probe_target_restarts_total",
                "Restarts of the target seen by the probe (its start time moved forward).",
            ),
            &names,
        )
        .expect("valid metric");
        let target_presence = GaugeVec::new(
            Opts::new(
                "probe_target_presence_online",
                "1 if Discord reports the target bot online in the probe's guild, else 0.",
            ),
            &names,
        )
        .expect("valid metric");
        let discord_latency = HistogramVec::new(
            HistogramOpts::new(
                "probe_discord_latency_seconds",
                "Command reply latency by Discord's clock (phase=reply: reply minus probe snowflake time) and time to the bot's first sign of life (phase=first_response).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &with_phase,
        )
        .expect("valid metric");
        let late_replies = IntCounterVec::new(
            Opts::new(
                "probe_late_replies_total",
                "Replies from the target that arrived after their probe had timed out.",
            ),
            &names,
        )
        .expect("valid metric");
        let gateway_connected = IntGauge::new(
            "prober_gateway_connected",
            "1 while the prober's own Discord gateway connection is up.",
        )
        .expect("valid metric");
        let token_rejected = IntGauge::new(
            "prober_discord_token_rejected",
            "1 when Discord rejected the prober's token (gateway close 4004): the prober is blind until the token is fixed.",
        )
        .expect("valid metric");
        let gateway_latency = Gauge::new(
            "prober_gateway_latency_seconds",
            "Heartbeat round trip of the prober's own gateway connection.",
        )
        .expect("valid metric");
        let gateway_disconnects = IntCounter::new(
            "prober_gateway_disconnects_total",
            "Times the prober's own gateway connection was lost.",
        )
        .expect("valid metric");
        let ratelimited = IntCounter::new(
            "prober_ratelimited_total",
            "429 answers the prober received from Discord.",
        )
        .expect("valid metric");
        let skipped = IntCounterVec::new(
            Opts::new(
                "probe_skipped_total",
                "Scheduled runs skipped because the previous run of the probe was still going.",
            ),
            &names,
        )
        .expect("valid metric");
        let lateness = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "prober_schedule_lateness_seconds",
                "How late probe runs started after their scheduled time.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("prober_probes_in_flight", "Probe runs in progress.")
            .expect("valid metric");
        let schedule_panics = IntCounter::new(
            "prober_schedule_panics_total",
            "Probe schedules (or their runs' tasks) that panicked; a panicked schedule stops until the next reload changes the probe.",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "prober_build_info",
                "Always 1; the version label says which twi-probe is running.",
            ),
            &["version"],
        )
        .expect("valid metric");
        let config_reload_ok = IntGauge::new(
            "prober_config_last_reload_successful",
            "1 if the last configuration load succeeded, else 0.",
        )
        .expect("valid metric");

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(success.clone()),
            Box::new(duration.clone()),
            Box::new(runs.clone()),
            Box::new(latency.clone()),
            Box::new(last_success.clone()),
            Box::new(target_uptime.clone()),
            Box::new(target_restarts.clone()),
            Box::new(target_presence.clone()),
            Box::new(discord_latency.clone()),
            Box::new(late_replies.clone()),
            Box::new(build_info.clone()),
            Box::new(config_reload_ok.clone()),
            Box::new(skipped.clone()),
            Box::new(lateness.clone()),
            Box::new(in_flight.clone()),
            Box::new(next_run.clone()),
            Box::new(interaction_latency.clone()),
            Box::new(interactions.clone()),
            Box::new(schedule_panics.clone()),
        ];
        for collector in collectors {
            registry.register(collector).expect("unique metric names");
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        config_reload_ok.set(1);

        let metrics = Metrics {
            registry,
            static_labels: RwLock::new(static_labels),
            discord_registered: Mutex::new(false),
            success,
            duration,
            runs,
            latency,
            last_success,
            target_uptime,
            target_restarts,
            target_presence,
            discord_latency,
            late_replies,
            gateway_connected,
            token_rejected,
            gateway_latency,
            gateway_disconnects,
            ratelimited,
            config_reload_ok,
            schedule_panics,
            skipped,
            lateness,
            next_run,
            in_flight,
            interaction_latency,
            interactions,
            changes: tokio::sync::watch::Sender::new(0),
        };
        metrics.apply_config(config);
        for spec in &config.probes {
            metrics.init_probe(spec);
        }
        metrics
    }

    /// Follows a (re)loaded config: the label names series show, and the
    /// prober's gateway families, which exist only with Discord probes (a
    /// gauge stuck at 0 without them would read as a blind prober). Series
    /// and their values stay.
    pub fn apply_config(&self, config: &Config) {
        *self
            .static_labels
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.static_label_names();
        let mut registered = self
            .discord_registered
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *registered == config.needs_discord() {
            return;
        }
        let gateway: [Box<dyn prometheus::core::Collector>; 5] = [
            Box::new(self.gateway_connected.clone()),
            Box::new(self.token_rejected.clone()),
            Box::new(self.gateway_latency.clone()),
            Box::new(self.gateway_disconnects.clone()),
            Box::new(self.ratelimited.clone()),
        ];
        for collector in gateway {
            // Each is registered exactly when `registered` says so.
            let _ = if *registered {
                self.registry.unregister(collector)
            } else {
                self.registry.register(collector)
            };
        }
        *registered = !*registered;
    }

    /// The internal label values of a probe's series: its identity.
    pub fn label_values(&self, spec: &ProbeSpec) -> Vec<String> {
        vec![
            spec.name.clone(),
            spec.kind.name().to_string(),
            encode_labels(&spec.labels),
        ]
    }

    /// Adds the series of a probe (run counters at zero), keeping those it
    /// already has: a probe restarted with the same identity keeps counting.
    pub fn init_probe(&self, spec: &ProbeSpec) {
        let values = self.label_values(spec);
        self.skipped.with_label_values(&values);
        for outcome in Outcome::ALL {
            self.runs
                .with_label_values(&with(&values, outcome.as_str()));
        }
        match &spec.kind {
            ProbeKind::Exporter(_) => {
                self.target_restarts.with_label_values(&values);
            }
            ProbeKind::Command(_) => {
                self.late_replies.with_label_values(&values);
            }
            ProbeKind::Interactions(i) => {
                for command in i.command_labels() {
                    for outcome in ["success", "failure"] {
                        let mut w = values.clone();
                        w.extend([command.to_string(), outcome.to_string()]);
                        self.interactions.with_label_values(&w);
                    }
                }
            }
            _ => {}
        }
    }

    /// A probe's schedule (or a run's task) panicked.
    pub fn schedule_panicked(&self) {
        self.schedule_panics.inc();
    }

    /// Records one run of `spec`.
    pub fn record(&self, spec: &ProbeSpec, result: &ProbeResult) {
        let values = self.label_values(spec);
        let v = &values;
        self.runs
            .with_label_values(&with(v, result.outcome.as_str()))
            .inc();
        self.duration
            .with_label_values(v)
            .set(result.duration.as_secs_f64());
        if result.outcome.is_conclusive() {
            let ok = result.outcome == Outcome::Success;
            self.success
                .with_label_values(v)
                .set(f64::from(u8::from(ok)));
        }
        if let Some(latency) = result.latency() {
            self.latency
                .with_label_values(v)
                .observe(latency.as_secs_f64());
            let finished = result.started_at + result.duration;
            let ts = finished
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.last_success.with_label_values(v).set(ts);
        }
        if let Some(uptime) = result.observations.target_uptime_seconds {
            self.target_uptime.with_label_values(v).set(uptime);
        }
        if result.observations.target_restarts > 0 {
            self.target_restarts
                .with_label_values(v)
                .inc_by(result.observations.target_restarts);
        }
        if let Some(online) = result.observations.target_online {
            self.target_presence
                .with_label_values(v)
                .set(f64::from(u8::from(online)));
        }
        let o = &result.observations;
        for obs in &o.interactions {
            match obs {
                InteractionObservation::Latency {
                    command,
                    phase,
                    latency,
                } => {
                    let mut w = values.clone();
                    w.extend([command.clone(), phase.to_string()]);
                    self.interaction_latency
                        .with_label_values(&w)
                        .observe(latency.as_secs_f64());
                }
                InteractionObservation::Outcome { command, failed } => {
                    let mut w = values.clone();
                    let outcome = if *failed { "failure" } else { "success" };
                    w.extend([command.clone(), outcome.to_string()]);
                    self.interactions.with_label_values(&w).inc();
                }
            }
        }
        for (phase, value) in [
            ("reply", o.discord_reply),
            ("first_response", o.first_response),
        ] {
            if let (Some(d), true) = (value, result.outcome == Outcome::Success) {
                self.discord_latency
                    .with_label_values(&with(v, phase))
                    .observe(d.as_secs_f64());
            }
        }
    }

    /// Keeps the Discord metrics current from the session's events: the
    /// target's presence changes here within moments of Discord reporting
    /// it, not at the next probe run.
    pub fn follow_discord(
        self: &std::sync::Arc<Self>,
        config: &Config,
        session: &std::sync::Arc<DiscordSession>,
    ) -> tokio::task::JoinHandle<()> {
        let metrics = self.clone();
        let session = session.clone();
        let presence: Vec<(u64, ProbeSpec)> = config
            .probes
            .iter()
            .filter_map(|p| match &p.kind {
                ProbeKind::Presence(ps) => Some((ps.guild_id, p.clone())),
                _ => None,
            })
            .collect();
        let commands: Vec<ProbeSpec> = config
            .probes
            .iter()
            .filter(|p| matches!(p.kind, ProbeKind::Command(_)))
            .cloned()
            .collect();
        let mut events = session.subscribe();
        tokio::spawn(async move {
            metrics.sample_gateway(&session);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => metrics.sample_gateway(&session),
                    event = events.recv() => match event {
                        Ok(SessionEvent::Presence { guild_id, online }) => {
                            for (_, spec) in presence.iter().filter(|(g, _)| *g == guild_id) {
                                metrics
                                    .target_presence
                                    .with_label_values(&metrics.label_values(spec))
                                    .set(f64::from(u8::from(online)));
                            }
                        }
                        Ok(SessionEvent::LateReply { probe }) => {
                            if let Some(spec) = commands.iter().find(|s| s.name == probe) {
                                metrics.late_replies.with_label_values(&metrics.label_values(spec)).inc();
                            }
                        }
                        Ok(SessionEvent::Gateway { connected }) => {
                            metrics.gateway_connected.set(i64::from(connected));
                            if !connected {
                                metrics.gateway_disconnects.inc();
                            }
                        }
                        Ok(SessionEvent::RateLimited) => metrics.ratelimited.inc(),
                        Ok(SessionEvent::Ended { token_rejected }) => {
                            metrics.gateway_connected.set(0);
                            metrics.token_rejected.set(i64::from(token_rejected));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
                metrics.changed();
            }
        })
    }

    /// Changes after each change listed at `changes` (for tests: await
    /// it, then read the registry).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn sample_gateway(&self, session: &DiscordSession) {
        self.gateway_connected
            .set(i64::from(session.is_connected()));
        if let Some(l) = session.heartbeat_latency() {
            self.gateway_latency.set(l.as_secs_f64());
        }
    }

    /// Removes every series of a probe that is no longer configured.
    pub fn forget_probe(&self, spec: &ProbeSpec) {
        let values = self.label_values(spec);
        let v: Vec<&str> = values.iter().map(String::as_str).collect();
        let _ = self.success.remove_label_values(&v);
        let _ = self.duration.remove_label_values(&v);
        let _ = self.latency.remove_label_values(&v);
        let _ = self.last_success.remove_label_values(&v);
        let _ = self.target_uptime.remove_label_values(&v);
        let _ = self.target_restarts.remove_label_values(&v);
        let _ = self.target_presence.remove_label_values(&v);
        let _ = self.late_replies.remove_label_values(&v);
        let _ = self.skipped.remove_label_values(&v);
        let _ = self.next_run.remove_label_values(&v);
        for outcome in Outcome::ALL {
            let mut w = v.clone();
            w.push(outcome.as_str());
            let _ = self.runs.remove_label_values(&w);
        }
        for phase in ["reply", "first_response"] {
            let mut w = v.clone();
            w.push(phase);
            let _ = self.discord_latency.remove_label_values(&w);
        }
        if let ProbeKind::Interactions(i) = &spec.kind {
            for command in i.command_labels() {
                for last in ["success", "failure", "response", "final"] {
                    let mut w = v.clone();
                    w.extend([command, last]);
                    let _ = self.interactions.remove_label_values(&w);
                    let _ = self.interaction_latency.remove_label_values(&w);
                }
            }
        }
        self.changed();
    }

    pub fn record_skip(&self, spec: &ProbeSpec) {
        self.skipped
            .with_label_values(&self.label_values(spec))
            .inc();
        self.changed();
    }

    /// When the probe's next slot is due, as unix time.
    pub fn set_next_run(&self, spec: &ProbeSpec, at: std::time::SystemTime) {
        let unix = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.next_run
            .with_label_values(&self.label_values(spec))
            .set(unix);
        self.changed();
    }

    /// The probe has no next slot.
    pub fn clear_next_run(&self, spec: &ProbeSpec) {
        let values = self.label_values(spec);
        let v: Vec<&str> = values.iter().map(String::as_str).collect();
        let _ = self.next_run.remove_label_values(&v);
    }

    pub fn observe_lateness(&self, late: std::time::Duration) {
        self.lateness.observe(late.as_secs_f64());
    }

    pub fn run_started(&self) {
        self.in_flight.inc();
        self.changed();
    }

    /// The run's result is recorded (`record` comes first).
    pub fn run_finished(&self) {
        self.in_flight.dec();
        self.changed();
    }

    /// Process metrics (RSS, CPU, open fds, start time) of this process.
    pub fn with_process_metrics(self) -> Self {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        // Registering twice is the only failure, and this is called once.
        let _ = self.registry.register(Box::new(pc));
        self
    }

    pub fn set_config_reload_ok(&self, ok: bool) {
        self.config_reload_ok.set(i64::from(ok));
    }

    /// The Prometheus text exposition (format 0.0.4) of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let mut families = self.registry.gather();
        let names = self
            .static_labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        expand_own_labels(&mut families, &names);
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text encoder writes UTF-8")
    }
}

fn with(values: &[String], last: &str) -> Vec<String> {
    let mut v = values.to_vec();
    v.push(last.to_string());
    v
}

/// A probe's own static labels as one label value, unambiguous (each value
/// is length-prefixed; names cannot hold `=`). Empty values are left out: a
/// label set to "" and one not set are the same series in Prometheus.
fn encode_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, value) in labels.iter().filter(|(_, v)| !v.is_empty()) {
        out.push_str(&format!("{name}={}:{value}", value.len()));
    }
    out
}

fn decode_labels(mut text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    while let Some((name, rest)) = text.split_once('=')
        && let Some((len, rest)) = rest.split_once(':')
        && let Ok(len) = len.parse::<usize>()
        && let Some(value) = rest.get(..len)
    {
        out.push((name, value));
        text = &rest[len..];
    }
    out
}

/// Replaces each series' internal `__labels` with one label per current
/// static label name (empty when the probe does not set it), so every
/// series of a family has the same label names; then sorts labels and
/// series as the registry does.
fn expand_own_labels(families: &mut [MetricFamily], names: &[String]) {
    for family in families.iter_mut() {
        let mut touched = false;
        for metric in family.mut_metric().iter_mut() {
            let mut labels = metric.take_label();
            let Some(at) = labels.iter().position(|l| l.name() == OWN_LABELS) else {
                metric.set_label(labels);
                continue;
            };
            touched = true;
            let own = labels.swap_remove(at);
            let decoded = decode_labels(own.value());
            for name in names {
                let value = decoded
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or("", |(_, v)| v);
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.to_string());
                labels.push(pair);
            }
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            metric.set_label(labels);
        }
        if touched {
            // As the registry sorts, without allocating per comparison.
            family.mut_metric().sort_by(|a, b| {
                a.get_label()
                    .iter()
                    .map(|l| l.value())
                    .cmp(b.get_label().iter().map(|l| l.value()))
            });
        }
    }
}

#[cfg(test)]
mod own_label_tests {
    use super::*;

    #[test]
    fn own_labels_round_trip_whatever_the_values_hold() {
        let labels: std::collections::BTreeMap<String, String> =
            [("a", "x=1:y"), ("b", ""), ("c", "ü:=\u{0}")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let encoded = encode_labels(&labels);
        assert_eq!(
            decode_labels(&encoded),
            vec![("a", "x=1:y"), ("c", "ü:=\u{0}")]
        );
    }
}
