//! The `/metrics` body of `probe serve`, rendered off the request path.
//!
//! Rendering writes ~1.6 KB of text per http probe (16 MB at 10,000
//! probes): too slow for each scrape at that size, and a stall for the
//! probes if done on their runtime. So rendering happens on a blocking
//! thread, and ahead of time: scrapers (Prometheus) come at a steady
//! interval, so after each scrape the refresher renders a snapshot shortly
//! before the next one is due, and that scrape is served at once. What a
//! scrape sees:
//!
//! - a snapshot at most [`MAX_AGE`] old and from after the last
//!   [`ScrapeCache::invalidate`] (a reload); otherwise the scrape renders a
//!   fresh one itself (slower, never staler), or, when a render is already
//!   under way, waits for that one: one render at a time, never two, even
//!   when the scrape that started it gave up (its render goes on and is
//!   kept);
//! - normally one rendered [`lead`] before it, i.e. a few ms to tens of ms;
//! - gzipped when the scraper accepts gzip: compressed with the render when
//!   the latest scrape asked for it (the plain text is then never whole in
//!   memory), else at most once per snapshot; plain otherwise, decompressed
//!   at most once per snapshot when it was rendered for gzip.
//!
//! Cost: at most one render per scrape, and the refresher renders no more
//! than once per 20 × render time (≤ 5 % of a core: with frequent scrapes
//! of many series, some scrapes get the snapshot of the one before) unless
//! the next scrape, even a quarter of an interval late, would otherwise find
//! no snapshot it may serve and render one inline (the same CPU, plus a
//! stall); nothing while nobody scrapes.
//! Scrapers out of step with each other (two Prometheus servers) make the
//! prediction miss; those scrapes render their own snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, so that the tests can pause it.
use tokio::time::Instant;

use axum::body::Bytes;
use tokio::sync::{Notify, OnceCell, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A snapshot older than this is never served; the scrape renders anew.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// At least this × render time between two renders by the refresher.
const GAP_PER_RENDER: u32 = 20;

/// How long before the predicted scrape the refresher renders: four times
/// the last render time, and at least 20 ms, for the jitter of both sides.
fn lead(render_time: Duration) -> Duration {
    (render_time * 4).max(Duration::from_millis(20))
}

/// One rendered body, kept in the form the latest scrape asked for; the
/// other is made from it by the first scrape that asks.
struct Snapshot {
    /// The text, plain.
    text: OnceCell<Bytes>,
    /// The text gzipped. When the latest scrape asked for gzip (as
    /// Prometheus does), the render compresses as it writes and the plain
    /// text is never whole in memory (16 MB at 10,000 probes).
    gzip: OnceCell<Bytes>,
    rendered_at: Instant,
    epoch: u64,
}

/// How much plain text a compressing render holds at once.
const RENDER_CHUNK: usize = 64 * 1024;

/// What a scrape is answered with.
pub struct Body {
    pub bytes: Bytes,
    pub gzipped: bool,
}

/// When scrapes came, to predict the next.
#[derive(Default, Clone, Copy)]
struct ScrapeTimes {
    last: Option<Instant>,
    interval: Option<Duration>,
}

/// The latest snapshot and what decides whether it may be served.
#[derive(Default)]
pub struct ScrapeCache {
    /// Held while rendering, by the render's blocking task itself: a
    /// scrape that finds no snapshot it may serve while a render is under
    /// way waits for that one instead of rendering a second (the same CPU
    /// twice, and two bodies in memory), even when the scrape that started
    /// it gave up (a scraper's timeout drops its request).
    rendering: Arc<tokio::sync::Mutex<()>>,
    /// What renders leave, written by the render's blocking task: a render
    /// whose scrape gave up still finishes and is kept for the next.
    renders: Arc<Renders>,
    /// Bumped by [`ScrapeCache::invalidate`]; a snapshot from an older
    /// epoch is never served.
    epoch: AtomicU64,
    times: Mutex<ScrapeTimes>,
    scraped: Notify,
    /// Whether the latest scrape accepted gzip: renders then compress too.
    wants_gzip: AtomicBool,
}

/// The renders' results and counts.
#[derive(Default)]
struct Renders {
    latest: Mutex<Option<Arc<Snapshot>>>,
    /// The last render's duration, in µs.
    micros: AtomicU64,
    count: AtomicU64,
    /// Renders running now: never more than one (asserted in debug builds).
    under_way: AtomicUsize,
}

impl ScrapeCache {
    /// Makes the next scrape see the metrics as they are now (after a
    /// reload, say), not a snapshot from before.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// How many renders so far (scrapes' own and the refresher's).
    pub fn renders(&self) -> u64 {
        self.renders.count.load(Ordering::Relaxed)
    }

    /// The body for a scrape, gzipped when `gzip` (the scraper accepts it).
    /// `metrics` gives the current registry (a reload may replace it).
    pub async fn scrape(&self, metrics: impl Fn() -> Arc<Metrics> + Sync, gzip: bool) -> Body {
        self.wants_gzip.store(gzip, Ordering::Relaxed);
        let snapshot = self.snapshot(&metrics).await;
        // The form the snapshot lacks is made once, off the runtime.
        let (cell, other, make): (_, _, fn(&[u8]) -> Bytes) = if gzip {
            (&snapshot.gzip, &snapshot.text, gzip_bytes)
        } else {
            (&snapshot.text, &snapshot.gzip, gunzip_bytes)
        };
        let bytes = cell
            .get_or_init(|| {
                let from = other
                    .get()
                    .cloned()
                    .expect("a render sets one form of its snapshot");
                async move {
                    tokio::task::spawn_blocking(move || make(&from))
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                }
            })
            .await
            .clone();
        Body {
            bytes,
            gzipped: gzip,
        }
    }

    /// The latest snapshot when it may be served, else one rendered now.
    async fn snapshot(&self, metrics: &(dyn Fn() -> Arc<Metrics> + Sync)) -> Arc<Snapshot> {
        {
            let mut times = lock(&self.times);
            let now = Instant::now();
            // Concurrent scrapes (less than 1 ms apart) say nothing about
            // the interval.
            if let Some(last) = times.last
                && now.saturating_duration_since(last) >= Duration::from_millis(1)
            {
                times.interval = Some(now - last);
            }
            times.last = Some(times.last.map_or(now, |last| last.max(now)));
        }
        self.scraped.notify_one();
        if let Some(snapshot) = self.servable() {
            return snapshot;
        }
        let came = Instant::now();
        let one = self.rendering.clone().lock_owned().await;
        // A render that ended while this scrape waited read its values
        // after the scrape came (or within MAX_AGE before): serve that one.
        if let Some(snapshot) = self.servable() {
            tracing::debug!(
                "/metrics: no snapshot to serve, waited {:?} for the render under way",
                came.elapsed()
            );
            return snapshot;
        }
        // Why a scrape renders inline (a stall at many probes): for the
        // refresher's timing, at debug level.
        let age = lock(&self.renders.latest)
            .as_ref()
            .map(|s| s.rendered_at.elapsed());
        let snapshot = self.render(metrics, one).await;
        tracing::debug!(
            "/metrics: rendered inline in {:?} (the latest snapshot's age: {age:?}, or from before a reload)",
            came.elapsed()
        );
        snapshot
    }

    /// The latest snapshot if a scrape may be served it now: at most
    /// MAX_AGE old and from after the last invalidation.
    fn servable(&self) -> Option<Arc<Snapshot>> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        lock(&self.renders.latest)
            .clone()
            .filter(|s| s.epoch == epoch && s.rendered_at.elapsed() <= MAX_AGE)
    }

    /// Renders on a blocking thread and keeps the result as the latest
    /// snapshot (unless a newer one got there first). `one` is the
    /// `rendering` lock: the blocking task holds it to its end and keeps
    /// its result itself, so that a render whose caller is dropped (a
    /// scraper that gave up) still ends before the next begins, and is
    /// served to the next scrape.
    async fn render(
        &self,
        metrics: &(dyn Fn() -> Arc<Metrics> + Sync),
        one: OwnedMutexGuard<()>,
    ) -> Arc<Snapshot> {
        // The epoch before the registry: a reload swaps the registry, then
        // invalidates, so this never labels an old registry's render new.
        let epoch = self.epoch.load(Ordering::SeqCst);
        let metrics = metrics();
        let compress = self.wants_gzip.load(Ordering::Relaxed);
        let renders = self.renders.clone();
        tokio::task::spawn_blocking(move || {
            let _one = one;
            let _counted = UnderWay::start(&renders.under_way);
            // The age of a snapshot counts from when its values were read.
            let rendered_at = Instant::now();
            let (text, gzip) = if compress {
                (
                    OnceCell::new(),
                    OnceCell::new_with(Some(render_gzipped(&metrics))),
                )
            } else {
                let text = Bytes::from(metrics.render());
                (OnceCell::new_with(Some(text)), OnceCell::new())
            };
            let took = rendered_at.elapsed();
            renders
                .micros
                .store(took.as_micros() as u64, Ordering::Relaxed);
            renders.count.fetch_add(1, Ordering::Relaxed);
            let snapshot = Arc::new(Snapshot {
                text,
                gzip,
                rendered_at,
                epoch,
            });
            let mut latest = lock(&renders.latest);
            if latest
                .as_ref()
                .is_none_or(|l| (l.epoch, l.rendered_at) <= (epoch, rendered_at))
            {
                *latest = Some(snapshot.clone());
            }
            drop(latest);
            snapshot
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// After each scrape, renders a snapshot just before the next one is
    /// due, until `stop`. `metrics` gives the current registry (a reload
    /// may replace it).
    pub async fn refresh(
        &self,
        metrics: impl Fn() -> Arc<Metrics> + Sync,
        stop: CancellationToken,
    ) {
        let mut last_render: Option<Instant> = None;
        // The next render, planned after the latest scrape; every scrape
        // re-plans it (the one before may have come after a long pause).
        let mut due: Option<Instant> = None;
        loop {
            let wait = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.scraped.notified() => {
                    due = self.plan(last_render);
                }
                _ = wait => {
                    due = None;
                    let one = self.rendering.clone().lock_owned().await;
                    last_render = Some(Instant::now());
                    self.render(&metrics, one).await;
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// When to render ahead of the next scrape, from the last two scrapes.
    fn plan(&self, last_render: Option<Instant>) -> Option<Instant> {
        let times = *lock(&self.times);
        let (last, interval) = (times.last?, times.interval?);
        let render_time = Duration::from_micros(self.renders.micros.load(Ordering::Relaxed));
        // Not before half-way: rendering while the last scrape's body is
        // still being written would slow that scrape down.
        let due = last + interval.saturating_sub(lead(render_time)).max(interval / 2);
        // Too soon after the previous render (the CPU cap): skip this turn
        // rather than render late, which would collide with the scrape.
        // The next scrape is served the older snapshot, within MAX_AGE;
        // unless that one will be too old by then: the scrape would render
        // it inline anyway (the same CPU, and a stall), so render ahead.
        // "By then" allows the scrape to come a quarter interval late (a
        // scraper's jitter, a slow answer before it): with no margin, a
        // scrape a few ms late rendered inline.
        let too_old_then = || {
            let epoch = self.epoch.load(Ordering::SeqCst);
            let then = last + interval + interval / 4;
            lock(&self.renders.latest).as_ref().is_none_or(|s| {
                s.epoch != epoch || then.saturating_duration_since(s.rendered_at) > MAX_AGE
            })
        };
        match last_render {
            Some(previous) if previous + render_time * GAP_PER_RENDER > due && !too_old_then() => {
                None
            }
            _ => Some(due),
        }
    }
}

/// Counts a render under way for as long as it lives, also when the render
/// panics (else every later render would look like a second at once).
struct UnderWay<'a>(&'a AtomicUsize);

impl<'a> UnderWay<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::SeqCst);
        debug_assert_eq!(before, 0, "two renders at once");
        UnderWay(count)
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// gzip at the fastest level: ~15× smaller for a large exposition, at a
/// small fraction of the render's cost.
fn gzip_encoder(capacity: usize) -> flate2::write::GzEncoder<Vec<u8>> {
    flate2::write::GzEncoder::new(Vec::with_capacity(capacity), flate2::Compression::fast())
}

fn gzip_bytes(text: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = gzip_encoder(text.len() / 8);
    encoder
        .write_all(text)
        .and_then(|()| encoder.finish())
        .map(Bytes::from)
        .expect("compressing into memory cannot fail")
}

/// The render, compressed as it is written (see [`RENDER_CHUNK`]).
fn render_gzipped(metrics: &Metrics) -> Bytes {
    use std::io::Write;
    let mut encoder = gzip_encoder(metrics.last_render_size() / 8);
    metrics.render_in_chunks(RENDER_CHUNK, &mut |chunk| {
        encoder
            .write_all(chunk.as_bytes())
            .expect("compressing into memory cannot fail")
    });
    Bytes::from(
        encoder
            .finish()
            .expect("compressing into memory cannot fail"),
    )
}

/// The plain text of a body this process gzipped.
fn gunzip_bytes(gzipped: &[u8]) -> Bytes {
    use std::io::Read;
    let mut text = Vec::with_capacity(gzipped.len() * 8);
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut text)
        .expect("a body this process compressed decompresses");
    Bytes::from(text)
}

/// Whether the `Accept-Encoding` values (all header lines) accept gzip:
/// gzip's own q-value if it is listed, else that of `*`; q=0 refuses
/// (RFC 9110 §12.5.3).
pub fn accepts_gzip<'a>(accept_encoding: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut gzip, mut any) = (None, None);
    for item in accept_encoding.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok());
        let Some(q) = q else { continue };
        if coding.eq_ignore_ascii_case("gzip") {
            gzip = Some(q);
        } else if coding == "*" {
            any = Some(q);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServeSettings, Target};

    pub(super) fn metrics() -> Arc<Metrics> {
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
                history: 1,
            },
            probes: vec![],
            modules: Default::default(),
        };
        Arc::new(Metrics::new(&config))
    }

    fn reload_ok(body: &Bytes) -> bool {
        let text = std::str::from_utf8(body).unwrap();
        text.lines()
            .any(|l| l == "prober_config_last_reload_successful 1")
    }

    #[tokio::test]
    async fn a_fresh_snapshot_is_reused_until_invalidated() {
        let cache = ScrapeCache::default();
        let m = metrics();
        let first = cache.snapshot(&|| m.clone()).await;
        assert!(reload_ok(first.text.get().unwrap()));
        m.set_config_reload_ok(false);
        let second = cache.snapshot(&|| m.clone()).await;
        assert!(
            Arc::ptr_eq(&first, &second),
            "rendered again within MAX_AGE"
        );
        cache.invalidate();
        let third = cache.snapshot(&|| m.clone()).await;
        assert!(
            !reload_ok(third.text.get().unwrap()),
            "an invalidated snapshot was served"
        );
    }

    // On a paused clock: the scrapes' timing is exact and nothing real is
    // waited (the pauses are the scenario, not synchronisation).
    #[tokio::test(start_paused = true)]
    async fn the_refresher_renders_once_per_scrape_just_before_it() {
        let cache = Arc::new(ScrapeCache::default());
        let m = metrics();
        let stop = CancellationToken::new();
        let refresher = {
            let (cache, m, stop) = (cache.clone(), m.clone(), stop.clone());
            tokio::spawn(async move { cache.refresh(|| m.clone(), stop).await })
        };
        // One scrape, a pause longer than MAX_AGE (the plan made after the
        // next scrape must not wait that long again), then a scraper at a
        // steady 100 ms, as Prometheus (slower) would be.
        assert!(reload_ok(&cache.scrape(|| m.clone(), false).await.bytes));
        tokio::time::sleep(MAX_AGE + Duration::from_millis(500)).await;
        let mut scraper = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..4 {
            scraper.tick().await;
            assert!(reload_ok(&cache.scrape(|| m.clone(), false).await.bytes));
        }
        m.set_config_reload_ok(false);
        let changed = Instant::now();
        let mut scrapes = 5;
        // A scrape renders by itself only after MAX_AGE (2 s): seeing the
        // change sooner means the refresher rendered ahead of the scrape.
        loop {
            scraper.tick().await;
            scrapes += 1;
            if !reload_ok(&cache.scrape(|| m.clone(), false).await.bytes) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "the refresher did not render ahead of the scrapes"
            );
        }
        // Renders: the first scrape's own, then about one per scrape.
        assert!(
            cache.renders() <= scrapes + 1,
            "{} renders for {scrapes} scrapes",
            cache.renders()
        );
        // Nobody scrapes any more: at most the one predicted render.
        let renders = cache.renders();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(cache.renders() <= renders + 1, "rendered while not scraped");
        stop.cancel();
        refresher.await.unwrap();
    }

    /// The CPU cap skips a render only when the scrape it was for can be
    /// served the older snapshot: if that would be older than MAX_AGE by
    /// then, the scrape would render inline (a stall), so the refresher
    /// renders ahead after all.
    #[tokio::test(start_paused = true)]
    async fn the_cpu_cap_never_leaves_a_scrape_to_render_inline() {
        let cache = ScrapeCache::default();
        let snapshot_at = |rendered_at| {
            *lock(&cache.renders.latest) = Some(Arc::new(Snapshot {
                text: OnceCell::new(),
                gzip: OnceCell::new(),
                rendered_at,
                epoch: 0,
            }));
        };
        // Scrapes every 1 s; a render takes 150 ms, so the cap asks for
        // 3 s between renders.
        let last = Instant::now();
        *lock(&cache.times) = ScrapeTimes {
            last: Some(last),
            interval: Some(Duration::from_secs(1)),
        };
        cache.renders.micros.store(150_000, Ordering::Relaxed);
        let previous = last - Duration::from_millis(500);
        snapshot_at(previous);
        assert_eq!(
            cache.plan(Some(previous)),
            None,
            "the next scrape can have the snapshot 1.5 s old: the cap holds"
        );
        // 1.9 s old when the scrape is due, 2.15 s a quarter interval
        // later: a scrape only a little late would render inline.
        let previous = last - Duration::from_millis(900);
        snapshot_at(previous);
        assert!(
            cache.plan(Some(previous)).is_some(),
            "no margin for a scrape that comes a little late"
        );
        let previous = last - Duration::from_millis(1500);
        snapshot_at(previous);
        let due = cache
            .plan(Some(previous))
            .expect("rendered ahead despite the cap");
        assert!(due > last && due < last + Duration::from_secs(1));
        cache.invalidate();
        snapshot_at(last);
        assert!(
            cache.plan(Some(last)).is_some(),
            "a snapshot from before a reload is never served: rendered ahead"
        );
    }

    /// Scrapes that find no snapshot they may serve while one renders wait
    /// for it: one render, not one each.
    #[tokio::test]
    async fn concurrent_scrapes_share_one_render() {
        let cache = ScrapeCache::default();
        let m = metrics();
        let (a, b, c) = tokio::join!(
            cache.scrape(|| m.clone(), false),
            cache.scrape(|| m.clone(), false),
            cache.scrape(|| m.clone(), true),
        );
        assert_eq!(cache.renders(), 1, "each scrape rendered its own");
        assert_eq!(a.bytes.as_ptr(), b.bytes.as_ptr());
        assert_eq!(gunzip(&c.bytes), a.bytes.to_vec());
        // After an invalidation (a reload) the old snapshot is not served.
        cache.invalidate();
        let (d, e) = tokio::join!(
            cache.scrape(|| m.clone(), false),
            cache.scrape(|| m.clone(), false),
        );
        assert_eq!(cache.renders(), 2);
        assert_eq!(d.bytes.as_ptr(), e.bytes.as_ptr());
        assert_ne!(d.bytes.as_ptr(), a.bytes.as_ptr());
    }

    /// A registry with `n` http probes' series.
    pub(super) fn with_probes(n: usize) -> Arc<Metrics> {
        let mut yaml = String::from("target: {name: bot}\nprobes:\n");
        for i in 0..n {
            yaml.push_str(&format!(
                "  - {{name: p{i}, http: {{url: \"http://127.0.0.1:9/\"}}}}\n"
            ));
        }
        let config =
            crate::config::Config::from_yaml(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let m = Arc::new(Metrics::new(&config));
        for probe in &config.probes {
            m.init_probe(probe);
        }
        m
    }

    /// The registry as a scrape asks for it, counting the asks: a render
    /// asks once, as it starts.
    pub(super) fn counting(
        m: Arc<Metrics>,
    ) -> (
        Arc<AtomicUsize>,
        impl Fn() -> Arc<Metrics> + Clone + Send + Sync + 'static,
    ) {
        let started = Arc::new(AtomicUsize::new(0));
        let registry = {
            let started = started.clone();
            move || {
                started.fetch_add(1, Ordering::SeqCst);
                m.clone()
            }
        };
        (started, registry)
    }

    pub(super) fn gunzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// A scraper that gives up (its timeout drops the request) while its
    /// scrape renders: the render goes on to its end, the next scrape waits
    /// for it instead of starting a second, and is served it.
    #[tokio::test]
    async fn a_render_whose_scrape_gave_up_is_kept_for_the_next() {
        // Enough probes for a render of tens of ms in a debug build, so
        // that the first scrape can be dropped while its render is under way.
        let (started, registry) = counting(with_probes(3000));
        for _ in 0..20 {
            let cache = Arc::new(ScrapeCache::default());
            started.store(0, Ordering::SeqCst);
            let first = {
                let (cache, registry) = (cache.clone(), registry.clone());
                tokio::spawn(async move { cache.scrape(registry, false).await })
            };
            while cache.renders.under_way.load(Ordering::SeqCst) == 0 && !first.is_finished() {
                tokio::task::yield_now().await;
            }
            if first.is_finished() {
                // The render was over before it could be caught: again.
                continue;
            }
            first.abort();
            let next = cache.scrape(registry.clone(), false).await;
            assert_eq!(
                started.load(Ordering::SeqCst),
                1,
                "the next scrape rendered anew instead of waiting for the render under way"
            );
            assert!(std::str::from_utf8(&next.bytes).unwrap().contains("p2999"));
            assert_eq!(cache.renders(), 1);
            return;
        }
        panic!("every render ended before it could be caught under way");
    }

    #[tokio::test]
    async fn gzip_is_served_to_scrapers_that_accept_it() {
        let cache = ScrapeCache::default();
        let m = metrics();
        let plain = cache.scrape(|| m.clone(), false).await;
        assert!(!plain.gzipped);
        // The snapshot was rendered without gzip: compressed on demand,
        // once for all the scrapes it serves...
        let first = cache.scrape(|| m.clone(), true).await;
        assert!(first.gzipped);
        assert_eq!(gunzip(&first.bytes), plain.bytes.to_vec());
        let again = cache.scrape(|| m.clone(), true).await;
        assert_eq!(
            again.bytes.as_ptr(),
            first.bytes.as_ptr(),
            "compressed twice"
        );
        // ...and renders from now on compress too.
        cache.invalidate();
        let second = cache.scrape(|| m.clone(), true).await;
        assert!(second.gzipped);
        let snapshot = cache.snapshot(&|| m.clone()).await;
        assert!(snapshot.gzip.initialized());
        assert!(reload_ok(&Bytes::from(gunzip(&second.bytes))));
        // Such a render compresses as it writes: no plain text is kept...
        assert!(!snapshot.text.initialized(), "plain text kept beside gzip");
        // ...until a plain scrape asks, once for all the scrapes it serves.
        let plain = cache.scrape(|| m.clone(), false).await;
        assert!(!plain.gzipped);
        assert_eq!(plain.bytes.to_vec(), gunzip(&second.bytes));
        let again = cache.scrape(|| m.clone(), false).await;
        assert_eq!(
            again.bytes.as_ptr(),
            plain.bytes.as_ptr(),
            "decompressed twice"
        );
        assert_eq!(cache.renders(), 2);
    }

    #[test]
    fn accept_encoding_is_read_like_http_says() {
        for yes in [
            "gzip",
            "GZIP",
            "deflate, gzip;q=0.5",
            "br, *",
            "gzip; q=1",
            "*;q=0, gzip",
        ] {
            assert!(accepts_gzip([yes]), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip; Q=0.0",
            "x-gzip2",
            "gzip;q=0, *",
        ] {
            assert!(!accepts_gzip([no]), "{no}");
        }
        // Several header lines count together.
        assert!(!accepts_gzip(["gzip;q=0", "*"]));
        assert!(accepts_gzip(["br", "gzip"]));
    }
}
