//! Recent runs per probe, kept in memory for the status page and its API
//! (src/web/): what happened in a run, which metrics cannot say (their
//! labels stay bounded, so details never reach Prometheus).
//!
//! Each probe has a ring of its last `serve.history` results. A reload keeps
//! the ring of a probe whose spec did not change (even when its schedule
//! task restarts); a changed probe starts a fresh one, a removed probe's is
//! dropped. A run still in flight when its probe changed or went away
//! records into the old ring, which nothing shows any more.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::ProbeSpec;
use crate::probe::{Outcome, ProbeResult};
use crate::schedule::ResultSink;

/// One probe's recent runs and its state.
#[derive(Debug, Default)]
pub struct Ring {
    capacity: usize,
    /// Oldest first.
    runs: VecDeque<ProbeResult>,
    /// The last conclusive outcome and when the probe entered it (the start
    /// of the first run with that outcome); inconclusive runs say nothing
    /// about the target, so they leave it.
    state: Option<(Outcome, SystemTime)>,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            capacity: capacity.max(1),
            ..Ring::default()
        }
    }

    pub fn push(&mut self, result: &ProbeResult) {
        if result.outcome.is_conclusive() && self.state.is_none_or(|(o, _)| o != result.outcome) {
            self.state = Some((result.outcome, result.started_at));
        }
        self.runs.push_back(result.clone());
        while self.runs.len() > self.capacity {
            self.runs.pop_front();
        }
    }

    /// Newest first.
    pub fn runs(&self) -> Vec<ProbeResult> {
        self.runs.iter().rev().cloned().collect()
    }

    pub fn state(&self) -> Option<(Outcome, SystemTime)> {
        self.state
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The last reload of the config, for the status page.
#[derive(Debug, Clone)]
pub struct Reload {
    pub at: SystemTime,
    /// The error, when the reload failed (the previous config kept running).
    pub error: Option<String>,
}

struct Tracked {
    fingerprint: String,
    ring: Arc<Mutex<Ring>>,
}

/// Every probe's ring, by display name, and the service's own facts.
pub struct History {
    probes: Mutex<HashMap<String, Tracked>>,
    started: SystemTime,
    last_reload: Mutex<Option<Reload>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            probes: Mutex::default(),
            started: SystemTime::now(),
            last_reload: Mutex::default(),
        }
    }
}

impl History {
    /// Where `spec`'s results go. Keeps its ring when the spec is unchanged
    /// (resized to `capacity`), starts a fresh one when it changed.
    pub fn track(&self, spec: &ProbeSpec, capacity: usize) -> ResultSink {
        let fingerprint = format!("{spec:?}");
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let tracked = probes
            .entry(spec.display_name())
            .and_modify(|t| {
                if t.fingerprint != fingerprint {
                    *t = Tracked {
                        fingerprint: fingerprint.clone(),
                        ring: Arc::new(Mutex::new(Ring::new(capacity))),
                    };
                }
            })
            .or_insert_with(|| Tracked {
                fingerprint: fingerprint.clone(),
                ring: Arc::new(Mutex::new(Ring::new(capacity))),
            });
        {
            let mut ring = tracked.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.capacity = capacity.max(1);
            while ring.runs.len() > ring.capacity {
                ring.runs.pop_front();
            }
        }
        let ring = tracked.ring.clone();
        Arc::new(move |result: &ProbeResult| {
            ring.lock().unwrap_or_else(|p| p.into_inner()).push(result);
        })
    }

    /// Drops the rings of probes no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| keep(name));
    }

    /// Reads one probe's ring.
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&Ring) -> T) -> Option<T> {
        let ring = self
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)?
            .ring
            .clone();
        let ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&ring))
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    pub fn record_reload(&self, error: Option<String>) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reload {
            at: SystemTime::now(),
            error,
        });
    }

    pub fn last_reload(&self) -> Option<Reload> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn result(n: u64, outcome: Outcome) -> ProbeResult {
        ProbeResult {
            probe: "p".into(),
            kind: "http",
            outcome,
            duration: Duration::from_millis(n),
            detail: format!("run {n}"),
            request_id: format!("req-{n}"),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(n),
            observations: Default::default(),
        }
    }

    #[test]
    fn the_ring_keeps_only_its_capacity_newest_first() {
        let mut ring = Ring::new(3);
        for n in 0..10 {
            ring.push(&result(n, Outcome::Success));
        }
        let ids: Vec<String> = ring.runs().into_iter().map(|r| r.request_id).collect();
        assert_eq!(ids, ["req-9", "req-8", "req-7"]);
    }

    fn spec(min_uptime: &str) -> ProbeSpec {
        let yaml = format!(
            "target: {{name: bot, exporter_url: 'http://127.0.0.1:1/metrics'}}\n\
             probes:\n  - name: up\n    exporter: {{min_uptime: {min_uptime}}}\n"
        );
        crate::config::Config::from_yaml(&yaml, std::path::Path::new("t.yaml"))
            .unwrap()
            .probes
            .remove(0)
    }

    #[test]
    fn tracking_an_unchanged_spec_keeps_its_runs_and_a_changed_one_starts_afresh() {
        let history = History::default();
        let sink = history.track(&spec("10m"), 5);
        for n in 0..4 {
            sink(&result(n, Outcome::Success));
        }
        let ids = |h: &History| h.with("up", |r| r.runs().len()).unwrap();
        // Same spec (a restart, a reload that left it alone), smaller ring.
        let _ = history.track(&spec("10m"), 2);
        assert_eq!(ids(&history), 2);
        // The old sink still feeds the kept ring.
        sink(&result(9, Outcome::Success));
        assert_eq!(
            history.with("up", |r| r.runs()[0].request_id.clone()),
            Some("req-9".into())
        );
        // A changed spec starts afresh; its predecessor's late run goes nowhere.
        let _ = history.track(&spec("5m"), 2);
        sink(&result(10, Outcome::Success));
        assert_eq!(ids(&history), 0);
        history.retain(|name| name != "up");
        assert!(history.with("up", |_| ()).is_none());
    }

    #[test]
    fn the_state_is_the_last_conclusive_outcome_since_its_first_run() {
        let mut ring = Ring::new(2);
        ring.push(&result(1, Outcome::Success));
        ring.push(&result(2, Outcome::Timeout));
        ring.push(&result(3, Outcome::Inconclusive));
        ring.push(&result(4, Outcome::Timeout));
        ring.push(&result(5, Outcome::Timeout));
        // The run that started the state has left the ring; its time stays.
        assert_eq!(
            ring.state(),
            Some((
                Outcome::Timeout,
                SystemTime::UNIX_EPOCH + Duration::from_secs(2)
            ))
        );
    }
}
