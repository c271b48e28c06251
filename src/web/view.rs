//! What the status page and the JSON API show, gathered once from the
//! service: both render the same facts.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::history::Reload;
use crate::probe::{Outcome, ProbeResult};
use crate::report::Summary;
use crate::serve::Service;

pub struct Overview {
    pub target: String,
    /// `connected`, `disconnected` or `unused` (no Discord probes).
    pub gateway: &'static str,
    pub gateway_detail: Option<String>,
    pub config_file: String,
    pub started: SystemTime,
    pub last_reload: Option<Reload>,
    pub history: usize,
    pub probes: Vec<ProbeView>,
}

pub struct ProbeView {
    pub name: String,
    pub kind: &'static str,
    pub schedule: String,
    /// The last conclusive outcome and since when.
    pub state: Option<(Outcome, SystemTime)>,
    /// Recent runs, newest first.
    pub runs: Vec<ProbeResult>,
    pub capacity: usize,
    pub success_rate: Option<f64>,
    pub p50: Option<Duration>,
    pub p90: Option<Duration>,
    pub next_run: Option<SystemTime>,
}

impl ProbeView {
    pub fn last(&self) -> Option<&ProbeResult> {
        self.runs.first()
    }
}

/// Every configured probe (presence probes once per shard), in config
/// order, then every module.
pub async fn overview(service: &Service) -> Overview {
    let config = service.config();
    let slots = service.slot_stats().await;
    let (gateway, gateway_detail) = if !config.needs_discord() {
        ("unused", None)
    } else {
        match service.ready() {
            Ok(()) => ("connected", None),
            Err(e) => ("disconnected", Some(e)),
        }
    };
    // Modules' runs (scrapes of /probe) show under the module's name.
    let probes = config
        .probes
        .iter()
        .chain(config.modules.values().map(|m| &m.template))
        .map(|spec| {
            let name = spec.display_name();
            let (runs, state, capacity) = service
                .history
                .with(&name, |r| (r.runs(), r.state(), r.capacity()))
                .unwrap_or((Vec::new(), None, config.serve.history));
            let summary = Summary::of(&runs);
            ProbeView {
                kind: spec.kind.name(),
                schedule: spec.schedule.to_string(),
                state,
                capacity,
                success_rate: summary.as_ref().and_then(Summary::success_rate),
                p50: summary.as_ref().and_then(|s| s.percentile(50.0)),
                p90: summary.as_ref().and_then(|s| s.percentile(90.0)),
                next_run: slots.get(&name).and_then(|s| s.next_run()),
                runs,
                name,
            }
        })
        .collect();
    Overview {
        target: config.target.name.clone(),
        gateway,
        gateway_detail,
        config_file: config.source.display().to_string(),
        started: service.history.started(),
        last_reload: service.history.last_reload(),
        history: config.serve.history,
        probes,
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One run as JSON (the shape is documented in the README).
pub fn run_json(r: &ProbeResult) -> Value {
    json!({
        "started_at": rfc3339(r.started_at),
        "outcome": r.outcome,
        "duration_seconds": r.duration.as_secs_f64(),
        "latency_seconds": r.latency().map(|d| d.as_secs_f64()),
        "detail": r.detail,
        "request_id": r.request_id,
        "message_id": r.observations.probe_message_id.map(|id| id.to_string()),
    })
}

pub fn overview_json(o: &Overview) -> Value {
    let probes: Vec<Value> = o
        .probes
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "kind": p.kind,
                "schedule": p.schedule,
                "state": p.state.map(|(o, _)| o),
                "state_since": p.state.map(|(_, t)| rfc3339(t)),
                "runs": p.runs.len(),
                "success_rate": p.success_rate,
                "latency_p50_seconds": p.p50.map(|d| d.as_secs_f64()),
                "latency_p90_seconds": p.p90.map(|d| d.as_secs_f64()),
                "last_run": p.last().map(run_json),
                "next_run": p.next_run.map(rfc3339),
            })
        })
        .collect();
    json!({
        "target": o.target,
        "gateway": {"state": o.gateway, "detail": o.gateway_detail},
        "config": {
            "file": o.config_file,
            "started_at": rfc3339(o.started),
            "last_reload": o.last_reload.as_ref().map(|r| json!({
                "at": rfc3339(r.at),
                "ok": r.error.is_none(),
                "error": r.error,
            })),
        },
        "history": o.history,
        "probes": probes,
    })
}
