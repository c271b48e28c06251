//! The metric families of DESIGN.md §4, in a registry owned by this struct.
//!
//! Label values come only from the configuration (probe names, kinds, static
//! labels) and closed sets (outcomes), so the number of series is fixed by
//! the config, never by what a target answers.

use std::time::UNIX_EPOCH;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::{Config, ProbeSpec};
use crate::probe::{Outcome, ProbeResult};

/// Latency buckets from 50 ms to 10 s, with edges at the monitoring guide's
/// thresholds (1 s warning, 3 s critical) so alerts can use them exactly.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
];

pub struct Metrics {
    registry: Registry,
    /// Static label names after `probe` and `kind`, in series order.
    static_labels: Vec<String>,
    success: GaugeVec,
    duration: GaugeVec,
    runs: IntCounterVec,
    latency: HistogramVec,
    last_success: GaugeVec,
    target_uptime: GaugeVec,
    target_restarts: IntCounterVec,
    config_reload_ok: IntGauge,
}

impl Metrics {
    /// Registers every family and each configured probe's run counters (at
    /// zero for every outcome, so `rate()` and `increase()` work from the
    /// first scrape).
    pub fn new(config: &Config) -> Self {
        let static_labels = config.static_label_names();
        let mut names: Vec<&str> = vec!["probe", "kind"];
        names.extend(static_labels.iter().map(String::as_str));
        let mut with_outcome = names.clone();
        with_outcome.push("outcome");

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

        for collector in [
            Box::new(success.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(runs.clone()),
            Box::new(latency.clone()),
            Box::new(last_success.clone()),
            Box::new(target_uptime.clone()),
            Box::new(target_restarts.clone()),
            Box::new(build_info.clone()),
            Box::new(config_reload_ok.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        config_reload_ok.set(1);

        let metrics = Metrics {
            registry,
            static_labels,
            success,
            duration,
            runs,
            latency,
            last_success,
            target_uptime,
            target_restarts,
            config_reload_ok,
        };
        for spec in &config.probes {
            metrics.init_probe(spec);
        }
        metrics
    }

    fn label_values(&self, spec: &ProbeSpec) -> Vec<String> {
        let mut values = vec![spec.name.clone(), spec.kind.name().to_string()];
        values.extend(
            self.static_labels
                .iter()
                .map(|name| spec.labels.get(name).cloned().unwrap_or_default()),
        );
        values
    }

    fn init_probe(&self, spec: &ProbeSpec) {
        let values = self.label_values(spec);
        for outcome in Outcome::ALL {
            self.runs
                .with_label_values(&with(&values, outcome.as_str()))
                .reset();
        }
        if matches!(spec.kind, crate::config::ProbeKind::Exporter(_)) {
            self.target_restarts.with_label_values(&values).reset();
        }
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
    }

    pub fn set_config_reload_ok(&self, ok: bool) {
        self.config_reload_ok.set(i64::from(ok));
    }

    /// The Prometheus text exposition (format 0.0.4) of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text encoder writes UTF-8")
    }
}

fn with(values: &[String], last: &str) -> Vec<String> {
    let mut v = values.to_vec();
    v.push(last.to_string());
    v
}
