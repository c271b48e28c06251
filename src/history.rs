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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ProbeSpec;
use crate::probe::{Observations, Outcome, ProbeResult};
use crate::schedule::ResultSink;

/// One probe's recent runs and its state.
///
/// The rings are most of what `probe serve` holds per probe (100 runs by
/// default), so a run is kept compactly: 24 bytes ([`Run`]), its detail
/// text shared with the ring's other runs that have the same, and only
/// what the status page and its API show (times to the microsecond,
/// outcome, detail, request id, latency, message id).
#[derive(Debug, Default)]
pub struct Ring {
    capacity: usize,
    probe: String,
    kind: &'static str,
    /// Oldest first.
    runs: VecDeque<Run>,
    /// For the runs with [`HAS_EXTRA`], in the same order.
    extras: VecDeque<Extra>,
    /// Distinct details and how many runs use each; a run holds its index.
    details: Vec<(Box<str>, u32)>,
    /// The last conclusive outcome and when the probe entered it (the start
    /// of the first run with that outcome); inconclusive runs say nothing
    /// about the target, so they leave it.
    state: Option<(Outcome, SystemTime)>,
}

/// A run in a ring. The common case fits here: a 12-hex-digit request id, a
/// start after 1970 and a duration under 71 minutes; anything else (and a
/// latency or message id) goes to an [`Extra`].
#[derive(Debug, Clone, Copy)]
struct Run {
    started_us: u64,
    /// Bits 0–47 the request id, 48–55 the outcome's index in
    /// `Outcome::ALL`, bit 56 [`HAS_EXTRA`].
    packed: u64,
    duration_us: u32,
    detail: u16,
}

// The size the docs promise (ARCHITECTURE.md's code map).
const _: () = assert!(std::mem::size_of::<Run>() == 24);

const HAS_EXTRA: u64 = 1 << 56;

/// What a compact [`Run`] cannot hold.
#[derive(Debug, Default)]
struct Extra {
    started_at: Option<SystemTime>,
    duration: Option<Duration>,
    request_id: Option<String>,
    latency: Option<Duration>,
    message_id: Option<u64>,
}

/// A request id of 12 lowercase hex digits (as `probe::run_once` makes
/// them) as a number that formats back to the same text.
fn packed_request_id(id: &str) -> Option<u64> {
    (id.len() == 12 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
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
        if self.probe != result.probe {
            self.probe.clone_from(&result.probe);
        }
        self.kind = result.kind;
        let mut extra = Extra::default();
        let started = result.started_at.duration_since(UNIX_EPOCH).ok();
        let started_us = match started.map(|d| u64::try_from(d.as_micros())) {
            Some(Ok(us)) => us,
            _ => {
                extra.started_at = Some(result.started_at);
                0
            }
        };
        let duration_us = u32::try_from(result.duration.as_micros()).unwrap_or_else(|_| {
            extra.duration = Some(result.duration);
            0
        });
        let id = packed_request_id(&result.request_id).unwrap_or_else(|| {
            extra.request_id = Some(result.request_id.clone());
            0
        });
        extra.latency = result.observations.latency;
        extra.message_id = result.observations.probe_message_id;
        let outcome = Outcome::ALL
            .iter()
            .position(|o| *o == result.outcome)
            .unwrap_or_default() as u64;
        let mut packed = id | outcome << 48;
        let has_extra = extra.started_at.is_some()
            || extra.duration.is_some()
            || extra.request_id.is_some()
            || extra.latency.is_some()
            || extra.message_id.is_some();
        if has_extra {
            packed |= HAS_EXTRA;
        }
        // Room first (the oldest run out), so the new run's detail can
        // take a slot freed by it.
        self.trim_to(self.capacity - 1);
        if has_extra {
            self.extras.push_back(extra);
        }
        let detail = self.intern(&result.detail);
        if self.runs.len() == self.runs.capacity() {
            // Grow by doubling, but never past the capacity (100 runs, not 128).
            let want = (self.runs.len() * 2).max(4).min(self.capacity);
            self.runs.reserve_exact(want - self.runs.len());
        }
        self.runs.push_back(Run {
            started_us,
            packed,
            duration_us,
            detail,
        });
    }

    /// The index of `detail` in the table, counted once more.
    fn intern(&mut self, detail: &str) -> u16 {
        if let Some(i) = self.details.iter().position(|(d, _)| &**d == detail) {
            self.details[i].1 += 1;
            return i as u16;
        }
        // A free slot (no run uses it any more), else a new one: at most
        // one slot per run (capacity ≤ 10,000), so u16 suffices.
        match self.details.iter().position(|(_, n)| *n == 0) {
            Some(i) => {
                self.details[i] = (detail.into(), 1);
                i as u16
            }
            None => {
                self.details.push((detail.into(), 1));
                (self.details.len() - 1) as u16
            }
        }
    }

    /// Drops the oldest runs beyond `keep`.
    fn trim_to(&mut self, keep: usize) {
        while self.runs.len() > keep {
            let Some(run) = self.runs.pop_front() else {
                break;
            };
            if run.packed & HAS_EXTRA != 0 {
                self.extras.pop_front();
            }
            let (text, n) = &mut self.details[usize::from(run.detail)];
            *n -= 1;
            if *n == 0 {
                *text = Box::default();
            }
        }
    }

    /// Newest first.
    pub fn runs(&self) -> Vec<ProbeResult> {
        let mut extras = self.extras.iter().rev();
        self.runs
            .iter()
            .rev()
            .map(|run| {
                let empty = Extra::default();
                let extra = if run.packed & HAS_EXTRA != 0 {
                    extras.next().unwrap_or(&empty)
                } else {
                    &empty
                };
                let outcome = Outcome::ALL[((run.packed >> 48) & 0xff) as usize];
                ProbeResult {
                    probe: self.probe.clone(),
                    kind: self.kind,
                    outcome,
                    duration: extra
                        .duration
                        .unwrap_or(Duration::from_micros(run.duration_us.into())),
                    detail: self.details[usize::from(run.detail)].0.to_string(),
                    request_id: extra
                        .request_id
                        .clone()
                        .unwrap_or_else(|| format!("{:012x}", run.packed & ((1 << 48) - 1))),
                    started_at: extra
                        .started_at
                        .unwrap_or(UNIX_EPOCH + Duration::from_micros(run.started_us)),
                    observations: Observations {
                        latency: extra.latency,
                        probe_message_id: extra.message_id,
                        ..Observations::default()
                    },
                }
            })
            .collect()
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
    /// A hash of the spec's `Debug` text (the text itself is ~0.5 KB a probe).
    fingerprint: u64,
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
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{spec:?}").hash(&mut h);
            h.finish()
        };
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let tracked = probes
            .entry(spec.display_name())
            .and_modify(|t| {
                if t.fingerprint != fingerprint {
                    *t = Tracked {
                        fingerprint,
                        ring: Arc::new(Mutex::new(Ring::new(capacity))),
                    };
                }
            })
            .or_insert_with(|| Tracked {
                fingerprint,
                ring: Arc::new(Mutex::new(Ring::new(capacity))),
            });
        {
            let mut ring = tracked.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.capacity = capacity.max(1);
            let keep = ring.capacity;
            ring.trim_to(keep);
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

    /// What the status page and its API read of a run.
    fn shown(r: &ProbeResult) -> impl PartialEq + std::fmt::Debug + use<> {
        (
            r.probe.clone(),
            r.kind,
            r.outcome,
            r.duration,
            r.latency(),
            r.detail.clone(),
            r.request_id.clone(),
            r.started_at,
            r.observations.probe_message_id,
        )
    }

    #[test]
    fn a_kept_run_reads_back_as_it_was_recorded() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_026_604_661_128);
        let plain = ProbeResult {
            request_id: "0123456789ab".into(),
            started_at: at,
            duration: Duration::from_micros(1500),
            ..result(1, Outcome::Success)
        };
        // Everything the compact form cannot hold goes to its extra.
        let mut unusual = ProbeResult {
            request_id: "ABC".into(),
            started_at: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            duration: Duration::from_secs(5 * 3600),
            ..result(2, Outcome::Timeout)
        };
        unusual.observations.latency = Some(Duration::from_millis(7));
        unusual.observations.probe_message_id = Some(u64::MAX);
        let runs = [
            plain.clone(),
            unusual,
            plain,
            result(3, Outcome::Inconclusive),
        ];
        let mut ring = Ring::new(3);
        for r in &runs {
            ring.push(r);
        }
        let kept: Vec<_> = ring.runs().iter().map(shown).collect();
        let want: Vec<_> = runs[1..].iter().rev().map(shown).collect();
        assert_eq!(kept, want);
        // Details are shared, and freed with their last run.
        assert_eq!(ring.details.iter().filter(|(_, n)| *n > 0).count(), 3);
        for n in 10..13 {
            ring.push(&ProbeResult {
                request_id: format!("{n:012x}"),
                ..result(n, Outcome::Failure)
            });
        }
        assert!(ring.extras.is_empty());
        let used: Vec<&str> = ring
            .details
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(d, _)| &**d)
            .collect();
        assert_eq!(used.len(), 3, "{used:?}");
        assert!(ring.details.len() <= 3, "{:?}", ring.details);
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
