//! The metric families listed in the README's Metrics section (the
//! contract with the alert rules and dashboards; a test keeps the two
//! equal): the per-probe families in a compact store of our own
//! ([`series`]), the prober's own few series in a prometheus `Registry`.
//!
//! Label values come only from the configuration (probe names, kinds, static
//! labels) and closed sets (outcomes), so the number of series is fixed by
//! the config, never by what a target answers.
//!
//! A probe's series are keyed by its identity: name, kind and its own static
//! labels (encoded in one internal value), which rendering expands to the
//! label names the current config uses. So a reload that adds or drops a
//! label name (removing the only presence probe drops `shard`) changes only
//! the text, never the series, and unchanged probes keep their counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::UNIX_EPOCH;

use prometheus::{
    Encoder, Gauge, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::{Config, ProbeKind, ProbeSpec};
use crate::discord::{DiscordSession, SessionEvent};
use crate::probe::{InteractionObservation, Outcome, ProbeResult};

mod series;
use series::{DISCORD_PHASES, Family, Hist, ProbeSeries};

/// Latency buckets from 50 ms to 10 s, with edges at the monitoring guide's
/// thresholds (1 s warning, 3 s critical) so alerts can use them exactly.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
];

/// The families with a series per probe, sorted by name (the text's
/// order), each with how a probe's `Cells` are written.
const PROBE_FAMILIES: [Family; 14] = [
    Family {
        name: "probe_discord_latency_seconds",
        help: "Command reply latency by Discord's clock (phase=reply: reply minus probe snowflake time) and time to the bot's first sign of life (phase=first_response).",
        kind: "histogram",
        write: |w, c| {
            for (phase, h) in DISCORD_PHASES.iter().zip(&c.discord_latency) {
                if let Some(h) = h {
                    w.histogram(h, &[("phase", phase)]);
                }
            }
        },
    },
    Family {
        name: "probe_duration_seconds",
        help: "Duration of the probe's last run in seconds.",
        kind: "gauge",
        write: |w, c| w.float(&[], c.duration),
    },
    Family {
        name: "probe_interaction_latency_seconds",
        help: "Real users' slash commands by Discord's clock: phase=response is the response message's creation, phase=final a deferred response's final edit, each minus the interaction's creation.",
        kind: "histogram",
        write: |w, c| {
            for (command, phase, h) in &c.interaction_latency {
                w.histogram(h, &[("command", command), ("phase", phase)]);
            }
        },
    },
    Family {
        name: "probe_interactions_total",
        help: "Real users' slash-command responses seen, by outcome (failure: matched error_reply, or a deferred response never finished).",
        kind: "counter",
        write: |w, c| {
            for (command, outcome, n) in &c.interactions {
                w.int(&[("command", command), ("outcome", outcome)], Some(*n));
            }
        },
    },
    Family {
        name: "probe_last_success_timestamp_seconds",
        help: "Unix time of the probe's last successful run.",
        kind: "gauge",
        write: |w, c| w.float(&[], c.last_success),
    },
    Family {
        name: "probe_late_replies_total",
        help: "Replies from the target that arrived after their probe had timed out.",
        kind: "counter",
        write: |w, c| w.int(&[], c.late_replies),
    },
    Family {
        name: "probe_latency_seconds",
        help: "Latency of successful probe runs in seconds.",
        kind: "histogram",
        write: |w, c| {
            if let Some(h) = &c.latency {
                w.histogram(h, &[]);
            }
        },
    },
    Family {
        name: "probe_next_run_timestamp_seconds",
        help: "Unix time when the probe's next scheduled run is due (probe serve); far in the past means its schedule has stopped.",
        kind: "gauge",
        write: |w, c| w.float(&[], c.next_run),
    },
    Family {
        name: "probe_runs_total",
        help: "Probe runs, by outcome.",
        kind: "counter",
        write: |w, c| {
            for &i in OUTCOMES_BY_NAME.iter() {
                w.int(&[("outcome", Outcome::ALL[i].as_str())], c.runs[i]);
            }
        },
    },
    Family {
        name: "probe_skipped_total",
        help: "Scheduled runs skipped because the previous run of the probe was still going.",
        kind: "counter",
        write: |w, c| w.int(&[], c.skipped),
    },
    Family {
        name: "probe_success",
        help: "1 if the last conclusive run of the probe succeeded, else 0.",
        kind: "gauge",
        write: |w, c| w.float(&[], c.success),
    },
    Family {
        name: "probe_target_presence_online",
        help: "1 if Discord reports the target bot online in the probe's guild, else 0.",
        kind: "gauge",
        write: |w, c| w.float(&[], c.target_presence),
    },
    Family {
        name: "probe_target_restarts_total",
        help: "Restarts of the target seen by the probe (its start time moved forward).",
        kind: "counter",
        write: |w, c| w.int(&[], c.target_restarts),
    },
    Family {
        name: "probe_target_uptime_seconds",
        help: "The target's uptime, from process_start_time_seconds on its exporter.",
        kind: "gauge",
        write: |w, c| w.float(&[], c.target_uptime),
    },
];

/// Indices into `Outcome::ALL`, by outcome name (the order series sort in).
static OUTCOMES_BY_NAME: std::sync::LazyLock<[usize; 5]> = std::sync::LazyLock::new(|| {
    let mut order = [0, 1, 2, 3, 4];
    order.sort_by_key(|i| Outcome::ALL[*i].as_str());
    order
});

pub struct Metrics {
    /// The prober's own families (one series each, or few).
    registry: Registry,
    /// Every family with a series per probe.
    probes: ProbeSeries,
    /// Whether the prober's gateway families are registered (only with
    /// Discord probes).
    discord_registered: Mutex<bool>,
    /// The last body's size: the next is written into a buffer this large.
    last_size: AtomicUsize,
    gateway_connected: IntGauge,
    token_rejected: IntGauge,
    gateway_latency: Gauge,
    gateway_disconnects: IntCounter,
    ratelimited: IntCounter,
    config_reload_ok: IntGauge,
    schedule_panics: IntCounter,
    lateness: prometheus::Histogram,
    in_flight: IntGauge,
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
        let registry = Registry::new();
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
            Box::new(build_info.clone()),
            Box::new(config_reload_ok.clone()),
            Box::new(lateness.clone()),
            Box::new(in_flight.clone()),
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
            probes: ProbeSeries::new(&config.static_label_names()),
            discord_registered: Mutex::new(false),
            last_size: AtomicUsize::new(0),
            gateway_connected,
            token_rejected,
            gateway_latency,
            gateway_disconnects,
            ratelimited,
            config_reload_ok,
            schedule_panics,
            lateness,
            in_flight,
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
        self.probes.set_static_names(&config.static_label_names());
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

    /// A probe's identity, which keys its series: name, kind, and its own
    /// static labels in one value.
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
        self.probes.with(&self.label_values(spec), |c| {
            c.skipped.get_or_insert(0);
            for n in &mut c.runs {
                n.get_or_insert(0);
            }
            match &spec.kind {
                ProbeKind::Exporter(_) => {
                    c.target_restarts.get_or_insert(0);
                }
                ProbeKind::Command(_) => {
                    c.late_replies.get_or_insert(0);
                }
                ProbeKind::Interactions(i) => {
                    for command in i.command_labels() {
                        for outcome in ["failure", "success"] {
                            counter(&mut c.interactions, command, outcome);
                        }
                    }
                }
                _ => {}
            }
        });
    }

    /// A probe's schedule (or a run's task) panicked.
    pub fn schedule_panicked(&self) {
        self.schedule_panics.inc();
    }

    /// Records one run of `spec`.
    pub fn record(&self, spec: &ProbeSpec, result: &ProbeResult) {
        let o = &result.observations;
        let outcome = Outcome::ALL
            .iter()
            .position(|x| *x == result.outcome)
            .unwrap_or_default();
        self.probes.with(&self.label_values(spec), |c| {
            *c.runs[outcome].get_or_insert(0) += 1;
            c.duration = Some(result.duration.as_secs_f64());
            if result.outcome.is_conclusive() {
                let ok = result.outcome == Outcome::Success;
                c.success = Some(f64::from(u8::from(ok)));
            }
            if let Some(latency) = result.latency() {
                c.latency
                    .get_or_insert_default()
                    .observe(latency.as_secs_f64());
                let finished = result.started_at + result.duration;
                let ts = finished
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                c.last_success = Some(ts);
            }
            if let Some(uptime) = o.target_uptime_seconds {
                c.target_uptime = Some(uptime);
            }
            if o.target_restarts > 0 {
                *c.target_restarts.get_or_insert(0) += o.target_restarts;
            }
            if let Some(online) = o.target_online {
                c.target_presence = Some(f64::from(u8::from(online)));
            }
            for obs in &o.interactions {
                match obs {
                    InteractionObservation::Latency {
                        command,
                        phase,
                        latency,
                    } => {
                        let found = c
                            .interaction_latency
                            .iter()
                            .position(|(c, p, _)| **c == **command && p == phase);
                        let i = found.unwrap_or_else(|| {
                            // Sorted by command, then phase: the text's order.
                            let at = c.interaction_latency.partition_point(|(c, p, _)| {
                                (&**c, *p) < (command.as_str(), *phase)
                            });
                            let h = (command.as_str().into(), *phase, Hist::default());
                            c.interaction_latency.insert(at, h);
                            at
                        });
                        c.interaction_latency[i].2.observe(latency.as_secs_f64());
                    }
                    InteractionObservation::Outcome { command, failed } => {
                        let outcome = if *failed { "failure" } else { "success" };
                        *counter(&mut c.interactions, command, outcome) += 1;
                    }
                }
            }
            if result.outcome == Outcome::Success {
                for (h, value) in c
                    .discord_latency
                    .iter_mut()
                    .zip([o.discord_reply, o.first_response])
                {
                    if let Some(d) = value {
                        h.get_or_insert_default().observe(d.as_secs_f64());
                    }
                }
            }
        });
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
                                metrics.probes.with(&metrics.label_values(spec), |c| {
                                    c.target_presence = Some(f64::from(u8::from(online)));
                                });
                            }
                        }
                        Ok(SessionEvent::LateReply { probe }) => {
                            if let Some(spec) = commands.iter().find(|s| s.name == probe) {
                                metrics.probes.with(&metrics.label_values(spec), |c| {
                                    *c.late_replies.get_or_insert(0) += 1;
                                });
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
        self.probes.remove(&self.label_values(spec));
        self.changed();
    }

    pub fn record_skip(&self, spec: &ProbeSpec) {
        self.probes.with(&self.label_values(spec), |c| {
            *c.skipped.get_or_insert(0) += 1;
        });
        self.changed();
    }

    /// When the probe's next slot is due, as unix time.
    pub fn set_next_run(&self, spec: &ProbeSpec, at: std::time::SystemTime) {
        let unix = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.probes
            .with(&self.label_values(spec), |c| c.next_run = Some(unix));
        self.changed();
    }

    /// The probe has no next slot.
    pub fn clear_next_run(&self, spec: &ProbeSpec) {
        self.probes
            .with_existing(&self.label_values(spec), |c| c.next_run = None);
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

    /// The Prometheus text exposition (format 0.0.4) of every family: the
    /// probes' families (all named `probe_*`, so they sort first), then the
    /// registry's (`prober_*`, `process_*`), written into one buffer sized
    /// by the last body.
    pub fn render(&self) -> String {
        let mut body = String::with_capacity(self.last_size.load(Relaxed) + 4096);
        // Never drained: the whole body stays in `body`, written once.
        self.write(&mut body, usize::MAX, &mut |_| {});
        self.last_size.store(body.len(), Relaxed);
        body
    }

    /// The size of the last body rendered (0 before the first).
    pub fn last_render_size(&self) -> usize {
        self.last_size.load(Relaxed)
    }

    /// The same text as [`Metrics::render`], handed to `sink` in pieces of
    /// about `chunk` bytes, so that a body compressed as it is written is
    /// never whole in memory.
    pub fn render_in_chunks(&self, chunk: usize, sink: &mut dyn FnMut(&str)) {
        let mut size = 0;
        let mut buffer = String::with_capacity(chunk.min(self.last_size.load(Relaxed) + 4096));
        let mut drain = |text: &mut String| {
            size += text.len();
            sink(text);
            text.clear();
        };
        self.write(&mut buffer, chunk, &mut drain);
        drain(&mut buffer);
        self.last_size.store(size, Relaxed);
    }

    /// Writes the body into `out`, handing it to `drain` whenever it holds
    /// `chunk` bytes or more (the last piece stays in `out`).
    fn write(&self, out: &mut String, chunk: usize, drain: &mut dyn FnMut(&mut String)) {
        self.probes.render(&PROBE_FAMILIES, out, chunk, drain);
        let mut rest = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut rest)
            .expect("encoding to memory cannot fail");
        out.push_str(std::str::from_utf8(&rest).expect("the text encoder writes UTF-8"));
    }
}

/// A probe's interactions counter for (command, outcome), added at zero
/// when new (kept sorted by command, then outcome: the text's order).
fn counter<'a>(
    counters: &'a mut Vec<(Box<str>, &'static str, u64)>,
    command: &str,
    outcome: &'static str,
) -> &'a mut u64 {
    let at = counters.partition_point(|(c, o, _)| (&**c, *o) < (command, outcome));
    if counters
        .get(at)
        .is_none_or(|(c, o, _)| (&**c, *o) != (command, outcome))
    {
        counters.insert(at, (command.into(), outcome, 0));
    }
    &mut counters[at].2
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Observations;

    #[test]
    fn a_render_in_chunks_is_the_render_cut_into_pieces() {
        let mut yaml = String::from("target: {name: bot}\nlabels: {env: test}\nprobes:\n");
        for i in 0..40 {
            yaml.push_str(&format!(
                "  - {{name: p{i}, labels: {{env: \"e{i}\"}}, http: {{url: \"http://127.0.0.1:9/\"}}}}\n"
            ));
        }
        let config = Config::from_yaml(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let metrics = Metrics::new(&config);
        let outcomes = [Outcome::Success, Outcome::Failure, Outcome::Timeout];
        // Some probes never ran: families with no line for them.
        for (i, spec) in config.probes.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            metrics.record(
                spec,
                &ProbeResult {
                    probe: spec.display_name(),
                    kind: "http",
                    outcome: outcomes[(i / 3) % outcomes.len()],
                    duration: std::time::Duration::from_millis(i as u64),
                    detail: String::new(),
                    request_id: String::new(),
                    started_at: std::time::SystemTime::now(),
                    observations: Observations::default(),
                },
            );
        }
        let whole = metrics.render();
        assert!(whole.contains("probe_latency_seconds_bucket{"));
        for chunk in [1, 7, 100, 1000, 4096, 64 * 1024, usize::MAX] {
            let mut pieces = Vec::new();
            metrics.render_in_chunks(chunk, &mut |piece| pieces.push(piece.to_string()));
            assert_eq!(pieces.concat(), whole, "cut at {chunk}");
            // A piece is drained once it reaches `chunk`: it holds at most
            // one probe's lines of one family more.
            for piece in &pieces[..pieces.len() - 1] {
                assert!(
                    piece.len() < chunk.saturating_add(2000),
                    "{chunk}: {}",
                    piece.len()
                );
            }
            if chunk <= 1000 {
                assert!(pieces.len() > 10, "{chunk}: not cut");
            }
        }
    }
}
