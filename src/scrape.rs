//! The `/metrics` body of `probe serve`, rendered off the request path.
//!
//! Rendering takes ~10 ms for 1,000 probes' series (the prometheus crate
//! gathers every series into intermediate structs, then encodes them), too
//! slow to do on each scrape and, on the async runtime, a stall for the
//! probes. So a refresher task renders snapshots on a blocking thread and a
//! scrape serves the latest one. The age of what a scrape sees is bounded:
//!
//! - the refresher re-renders every `clamp(20 × render time, 100 ms, 1 s)`,
//!   which also caps its CPU at ~5 % of a core;
//! - a snapshot older than [`MAX_AGE`], or from before [`ScrapeCache::invalidate`]
//!   (a reload), is never served: the scrape renders a fresh one itself;
//! - with nobody scraping for [`IDLE_AFTER`], the refresher sleeps until the
//!   next scrape (which renders its own snapshot), so an unscraped prober
//!   spends nothing on rendering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A snapshot older than this is rendered anew by the scrape itself.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// The refresher pauses when nobody scraped for this long.
pub const IDLE_AFTER: Duration = Duration::from_secs(120);
const MIN_PERIOD: Duration = Duration::from_millis(100);
const MAX_PERIOD: Duration = Duration::from_secs(1);
/// Refresh period = this × render time, so rendering stays ≤ 1/20 of a core.
const PERIOD_PER_RENDER: u32 = 20;

/// One rendered body.
pub struct Snapshot {
    pub text: Bytes,
    rendered_at: Instant,
    epoch: u64,
}

/// The latest snapshot and what decides whether it may be served.
pub struct ScrapeCache {
    latest: Mutex<Option<Arc<Snapshot>>>,
    /// Bumped by [`ScrapeCache::invalidate`]; a snapshot from an older
    /// epoch is never served.
    epoch: AtomicU64,
    last_scrape: Mutex<Option<Instant>>,
    scraped: Notify,
    invalidated: Notify,
}

impl Default for ScrapeCache {
    fn default() -> Self {
        ScrapeCache {
            latest: Mutex::new(None),
            epoch: AtomicU64::new(0),
            last_scrape: Mutex::new(None),
            scraped: Notify::new(),
            invalidated: Notify::new(),
        }
    }
}

impl ScrapeCache {
    /// Makes the next scrape see the metrics as they are now (after a
    /// reload, say), not a snapshot from before.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidated.notify_one();
    }

    /// The body for a scrape: the latest snapshot when it is fresh enough,
    /// else one rendered now.
    pub async fn scrape(&self, metrics: Arc<Metrics>) -> Arc<Snapshot> {
        let first_in_a_while = {
            let mut last = lock(&self.last_scrape);
            let idle = last.is_none_or(|t| t.elapsed() >= IDLE_AFTER);
            *last = Some(Instant::now());
            idle
        };
        if first_in_a_while {
            self.scraped.notify_one();
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some(snapshot) = lock(&self.latest).clone()
            && snapshot.epoch == epoch
            && snapshot.rendered_at.elapsed() <= MAX_AGE
        {
            return snapshot;
        }
        self.render(metrics).await
    }

    /// Renders on a blocking thread and keeps the result as the latest
    /// snapshot (unless a newer one got there first).
    async fn render(&self, metrics: Arc<Metrics>) -> Arc<Snapshot> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let text = tokio::task::spawn_blocking(move || Bytes::from(metrics.render()))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let snapshot = Arc::new(Snapshot {
            text,
            rendered_at: Instant::now(),
            epoch,
        });
        let mut latest = lock(&self.latest);
        if latest
            .as_ref()
            .is_none_or(|l| l.rendered_at <= snapshot.rendered_at)
        {
            *latest = Some(snapshot.clone());
        }
        snapshot
    }

    fn idle(&self) -> bool {
        lock(&self.last_scrape).is_none_or(|t| t.elapsed() >= IDLE_AFTER)
    }

    /// Keeps the snapshot fresh while someone scrapes, until `stop`.
    /// `metrics` gives the current registry (a reload may replace it).
    pub async fn refresh(&self, metrics: impl Fn() -> Arc<Metrics>, stop: CancellationToken) {
        loop {
            if self.idle() {
                tokio::select! {
                    _ = self.scraped.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
            let started = Instant::now();
            self.render(metrics()).await;
            let period = (started.elapsed() * PERIOD_PER_RENDER).clamp(MIN_PERIOD, MAX_PERIOD);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.invalidated.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServeSettings, Target};

    fn metrics() -> Arc<Metrics> {
        let config = Config {
            source: "probes.yaml".into(),
            target: Target {
                name: "bot".into(),
                user_id: None,
                exporter_url: None,
            },
            discord: None,
            labels: Default::default(),
            serve: ServeSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_concurrency: 1,
            },
            probes: vec![],
        };
        Arc::new(Metrics::new(&config))
    }

    fn reload_ok(snapshot: &Arc<Snapshot>) -> bool {
        let text = std::str::from_utf8(&snapshot.text).unwrap();
        text.lines()
            .any(|l| l == "prober_config_last_reload_successful 1")
    }

    #[tokio::test]
    async fn a_fresh_snapshot_is_reused_until_invalidated() {
        let cache = ScrapeCache::default();
        let m = metrics();
        let first = cache.scrape(m.clone()).await;
        assert!(reload_ok(&first));
        m.set_config_reload_ok(false);
        let second = cache.scrape(m.clone()).await;
        assert!(
            Arc::ptr_eq(&first, &second),
            "rendered again within MAX_AGE"
        );
        cache.invalidate();
        let third = cache.scrape(m.clone()).await;
        assert!(!reload_ok(&third), "an invalidated snapshot was served");
    }

    #[tokio::test]
    async fn the_refresher_keeps_a_scraped_snapshot_fresh() {
        let cache = Arc::new(ScrapeCache::default());
        let m = metrics();
        let stop = CancellationToken::new();
        let refresher = {
            let (cache, m, stop) = (cache.clone(), m.clone(), stop.clone());
            tokio::spawn(async move { cache.refresh(|| m.clone(), stop).await })
        };
        assert!(reload_ok(&cache.scrape(m.clone()).await));
        m.set_config_reload_ok(false);
        let changed = Instant::now();
        // Without the refresher the change would show only after MAX_AGE.
        while reload_ok(&cache.scrape(m.clone()).await) {
            assert!(
                changed.elapsed() < MAX_PERIOD + Duration::from_millis(500),
                "the refresher did not pick up the change"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        refresher.await.unwrap();
    }
}
