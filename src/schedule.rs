//! Turning a probe's schedule into timed runs.
//!
//! Each probe has its own timer task. Intervals fire at exact multiples of
//! the interval from a jittered first slot; cron schedules fire at the next
//! occurrence computed by croner (the parser tokio-cron-scheduler itself
//! uses) on the same precise timer, rather than on tokio-cron-scheduler's
//! 500 ms polling tick, which would add up to half a second of lateness.
//!
//! Invariant: every slot that comes due ends as exactly one run (and so one
//! outcome) or one skip. A slot is skipped when a run of the probe is still
//! going (its previous one, or a scrape's through `GET /probe`), so a probe
//! never overlaps itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{Timelike, Utc};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Schedule;
use crate::metrics::Metrics;
use crate::probe::{Probe, ProbeResult, run_once};

/// Counts per probe, for the slot invariant: `slots == runs + skips` once
/// the scheduler has stopped and its last run finished. A schedule that a
/// reload replaces hands its stats (and its next slot) to its successor.
#[derive(Debug, Default)]
pub struct SlotStats {
    /// The next slot on the monotonic clock, for a successor to keep the
    /// phase.
    next_slot: std::sync::Mutex<Option<Instant>>,
    pub slots: AtomicU64,
    pub runs: AtomicU64,
    pub skips: AtomicU64,
    /// When the next slot is due, in unix milliseconds; 0 when there is none
    /// (for the status page).
    pub next_run_unix_ms: AtomicU64,
    /// The first slot on the schedule's clock: with the interval, it tells
    /// how many slots came due by a given time, independently of the
    /// counters above (the model tests check them against it).
    pub first_slot: std::sync::OnceLock<Instant>,
}

impl SlotStats {
    pub fn next_run(&self) -> Option<std::time::SystemTime> {
        match self.next_run_unix_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    fn set_next_slot(&self, at: Option<Instant>) {
        *self.next_slot.lock().unwrap_or_else(|p| p.into_inner()) = at;
        self.set_next_run(at.map(wall_time));
    }

    fn next_slot(&self) -> Option<Instant> {
        *self.next_slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_next_run(&self, at: Option<std::time::SystemTime>) {
        let ms = at
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        self.next_run_unix_ms.store(ms, Ordering::SeqCst);
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.slots.load(Ordering::SeqCst),
            self.runs.load(Ordering::SeqCst),
            self.skips.load(Ordering::SeqCst),
        )
    }
}

/// Where each run's result goes besides the metrics.
pub type ResultSink = Arc<dyn Fn(&ProbeResult) + Send + Sync>;

/// Runs `probe` on its schedule until `stop`, then waits for its last run.
///
/// `predecessor` is the schedule this one replaces (a reload changed the
/// probe's settings), already stopped: until it has finished its last run,
/// slots are skipped, so the probe still never overlaps itself. When
/// `stats` comes from it, the first slot is its next one (the phase stays).
pub async fn run_probe(
    probe: Arc<Probe>,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    stats: Arc<SlotStats>,
    sink: Option<ResultSink>,
    predecessor: Option<tokio::task::JoinHandle<()>>,
) {
    let schedule = probe.spec.schedule.clone();
    let first = match (stats.next_slot(), &schedule) {
        // An interval probe keeps its phase, unless its new interval is
        // shorter than the wait.
        (Some(at), Schedule::Every(every)) => Some(at.min(Instant::now() + *every)),
        _ => first_slot(&schedule),
    };
    let Some(mut next) = first else {
        stats.set_next_slot(None);
        if let Some(h) = predecessor {
            log_join(h.await, &probe.spec.display_name(), &metrics);
        }
        return;
    };
    stats.first_slot.get_or_init(|| next);
    metrics.set_next_run(&probe.spec, wall_time(next));
    stats.set_next_slot(Some(next));
    let mut inflight: Option<tokio::task::JoinHandle<()>> = predecessor;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
            // A finished run's task stays allocated (its whole future, ~4 KB)
            // while its handle is held: let go of it as soon as it ends.
            joined = async {
                match inflight.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => {
                inflight = None;
                log_join(joined, &probe.spec.display_name(), &metrics);
                continue;
            }
        }
        stats.slots.fetch_add(1, Ordering::SeqCst);
        if let Some(h) = inflight.take_if(|h| h.is_finished()) {
            log_join(h.await, &probe.spec.display_name(), &metrics);
        }
        // A run of this probe may also be a scrape's (`GET /probe`).
        let guard = match inflight {
            Some(_) => None,
            None => probe.try_begin(),
        };
        if let Some(guard) = guard {
            stats.runs.fetch_add(1, Ordering::SeqCst);
            inflight = Some(tokio::spawn(slot_run(
                guard,
                probe.clone(),
                metrics.clone(),
                limit.clone(),
                sink.clone(),
                next,
            )));
        } else {
            stats.skips.fetch_add(1, Ordering::SeqCst);
            metrics.record_skip(&probe.spec);
            tracing::warn!(probe = %probe.spec.display_name(), "slot skipped: a run of the probe (scheduled or scraped) is still going");
        }
        let Some(after) = next_slot(&schedule, next) else {
            // No next occurrence (a cron date that never comes again): no
            // overdue slot to report either.
            metrics.clear_next_run(&probe.spec);
            stats.set_next_slot(None);
            break;
        };
        next = after;
        // Slots that passed while the process could not run (suspended,
        // overloaded) are skipped, and counted as such.
        let now = Instant::now();
        while next + Duration::from_millis(1) < now {
            stats.slots.fetch_add(1, Ordering::SeqCst);
            stats.skips.fetch_add(1, Ordering::SeqCst);
            metrics.record_skip(&probe.spec);
            match next_slot(&schedule, next) {
                Some(t) => next = t,
                None => break,
            }
        }
        // A stopped schedule (a reload replaced it) must not overwrite its
        // successor's next run.
        if !stop.is_cancelled() {
            metrics.set_next_run(&probe.spec, wall_time(next));
        }
        stats.set_next_slot(Some(next));
    }
    if let Some(h) = inflight {
        log_join(h.await, &probe.spec.display_name(), &metrics);
    }
}

/// The run of a slot due at `due`: waits for a permit of `limit`, runs,
/// records. The run's state is boxed, so it exists only once the permit
/// is held: runs waiting for one (more due than `max_concurrency`) hold a
/// small task, not a whole run.
async fn slot_run(
    guard: crate::probe::RunGuard,
    probe: Arc<Probe>,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
    sink: Option<ResultSink>,
    due: Instant,
) {
    let _guard = guard;
    let Ok(_permit) = limit.acquire_owned().await else {
        return;
    };
    metrics.observe_lateness(Instant::now().saturating_duration_since(due));
    metrics.run_started();
    let result = Box::pin(run_once(probe.clone())).await;
    // In flight until its result is recorded.
    metrics.record(&probe.spec, &result);
    metrics.run_finished();
    if let Some(sink) = sink {
        sink(&result);
    }
}

/// A task of a probe's schedule ended: a panic is logged and counted
/// (`prober_schedule_panics_total`), never dropped silently.
pub fn log_join(ended: Result<(), tokio::task::JoinError>, probe: &str, metrics: &Metrics) {
    match ended {
        Ok(()) => {}
        Err(e) if e.is_panic() => {
            metrics.schedule_panicked();
            tracing::error!(probe = %probe, "a task of the probe's schedule panicked: {}", panic_text(e.into_panic()));
        }
        // Cancelled: only an abort does that, and nothing aborts these.
        Err(e) => tracing::warn!(probe = %probe, "a task of the probe's schedule ended: {e}"),
    }
}

/// What a panic said, when it said it with a string.
pub fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The wall-clock time of a monotonic instant (for `probe_next_run_timestamp_seconds`).
fn wall_time(at: Instant) -> std::time::SystemTime {
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    }
}

/// The first slot: for intervals somewhere in the first interval (so probes
/// do not all start at once), for cron the next occurrence.
fn first_slot(schedule: &Schedule) -> Option<Instant> {
    match schedule {
        Schedule::Every(every) => {
            let spread = every.min(&Duration::from_secs(300)).as_secs_f64();
            let offset = rand::random::<f64>() * spread;
            Some(Instant::now() + Duration::from_secs_f64(offset))
        }
        Schedule::Cron { .. } => next_slot(schedule, Instant::now()),
        Schedule::OnScrape => None,
    }
}

fn next_slot(schedule: &Schedule, after: Instant) -> Option<Instant> {
    match schedule {
        Schedule::Every(every) => Some(after + *every),
        Schedule::OnScrape => None,
        Schedule::Cron { expression, .. } => {
            let cron: croner::Cron = expression.parse().ok()?;
            // Map `after` to wall-clock time, find the next occurrence there.
            let now = Instant::now();
            let wall_after = Utc::now()
                - chrono::Duration::from_std(now.saturating_duration_since(after)).ok()?
                + chrono::Duration::from_std(after.saturating_duration_since(now)).ok()?;
            // On the whole second: croner keeps the fraction of the time it
            // is given, so from 12:03:27.6 "0 */5 * * * *" would fire at
            // 12:05:00.6. The 10 ms make a slot that just fired (mapped
            // back to wall time within microseconds, either side of its
            // second) count as that second, never as the one before.
            let whole = (wall_after + chrono::Duration::milliseconds(10))
                .with_nanosecond(0)
                .unwrap_or(wall_after);
            let next = cron.find_next_occurrence(&whole, false).ok()?;
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            Some(Instant::now() + wait)
        }
    }
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A run waiting for its permit holds only the slot's few handles: the
    /// run's own state (several KB for a Discord probe) is allocated once
    /// the permit is held.
    #[test]
    fn a_run_waiting_for_a_permit_holds_a_small_task() {
        let config = crate::config::Config::from_yaml(
            "target: {name: bot}\nprobes:\n  - {name: site, http: {url: \"http://127.0.0.1:9/\"}}\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let probe = Arc::new(Probe::new(config.probes[0].clone(), None).unwrap());
        let metrics = Arc::new(Metrics::new(&config));
        let run = run_once(probe.clone());
        let waiting = slot_run(
            probe.try_begin().unwrap(),
            probe.clone(),
            metrics,
            Arc::new(Semaphore::new(0)),
            None,
            Instant::now(),
        );
        let (run, waiting) = (std::mem::size_of_val(&run), std::mem::size_of_val(&waiting));
        assert!(
            waiting * 2 < run,
            "a waiting run's task is {waiting} bytes, a run's state {run}"
        );
    }

    #[tokio::test]
    async fn cron_slots_fall_on_whole_seconds() {
        let s = Schedule::Cron {
            expression: "* * * * * *".into(),
            min_interval: Duration::from_secs(1),
        };
        for _ in 0..3 {
            let at = next_slot(&s, Instant::now()).unwrap();
            let wall = Utc::now() + chrono::Duration::from_std(at - Instant::now()).unwrap();
            let ms = wall.timestamp_subsec_millis();
            assert!(!(5..995).contains(&ms), "a slot at .{ms:03} s");
            tokio::time::sleep(Duration::from_millis(370)).await;
        }
    }

    #[tokio::test]
    async fn cron_slots_are_whole_seconds_apart() {
        let s = Schedule::Cron {
            expression: "* * * * * *".into(),
            min_interval: Duration::from_secs(1),
        };
        let a = next_slot(&s, Instant::now()).unwrap();
        let b = next_slot(&s, a).unwrap();
        let gap = b - a;
        assert!(
            gap > Duration::from_millis(900) && gap < Duration::from_millis(1100),
            "{gap:?}"
        );
    }

    #[tokio::test]
    async fn first_interval_slots_are_spread_within_the_interval() {
        let every = Duration::from_secs(10);
        let now = Instant::now();
        let firsts: Vec<Duration> = (0..50)
            .map(|_| first_slot(&Schedule::Every(every)).unwrap() - now)
            .collect();
        assert!(
            firsts
                .iter()
                .all(|d| *d <= every + Duration::from_millis(50))
        );
        assert!(
            firsts.iter().any(|d| *d > Duration::from_secs(1)),
            "spread, not all at start"
        );
    }
}
