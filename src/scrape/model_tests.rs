//! Random interleavings of scrapes (plain and gzip, some given up
//! mid-way, as a scraper's timeout drops its request), metric changes,
//! reloads' invalidations and pauses, with the refresher running, checked
//! against what the module promises:
//!
//! - one render at a time, never two;
//! - a scrape is served values that were current at most [`MAX_AGE`]
//!   before it came, and after the last invalidation before it came;
//! - every scrape not given up is answered, plain or gzip as asked, and
//!   both forms are the same text;
//! - at most two renders per scrape (its own, and the refresher's one
//!   ahead of the next), none while nobody scrapes.
//!
//! On a paused clock: the pauses are the scenario, and a scrape that never
//! finished would show as a timeout, not hang the test.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngSeed};

use super::tests::{counting, gunzip, with_probes};
use super::*;

#[derive(Debug, Clone)]
enum Step {
    Scrape {
        gzip: bool,
    },
    /// A scrape whose request is dropped after `polls` turns of the runtime.
    GiveUp {
        gzip: bool,
        polls: u8,
    },
    /// A metric value changes (the lateness histogram's count goes up).
    Change,
    /// A reload: the next scrapes must see the values from after it.
    Invalidate,
    Pause {
        ms: u64,
    },
    /// Lets the spawned scrapes and the refresher run.
    Yield {
        turns: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(|gzip| Step::Scrape { gzip }),
        1 => (any::<bool>(), 0u8..4).prop_map(|(gzip, polls)| Step::GiveUp { gzip, polls }),
        2 => Just(Step::Change),
        1 => Just(Step::Invalidate),
        3 => prop::sample::select(vec![0u64, 1, 10, 100, 500, 1000, 1900, 2100, 5000])
            .prop_map(|ms| Step::Pause { ms }),
        2 => (1u8..6).prop_map(|turns| Step::Yield { turns }),
    ]
}

/// What happened, in order: the model the scrapes' answers are checked
/// against. `at` counts steps; time is the paused clock's.
#[derive(Default)]
struct Model {
    at: u64,
    /// When the count became 1, 2, …: (step, time).
    changes: Vec<(u64, Instant)>,
    /// The steps at which the cache was invalidated.
    invalidations: Vec<u64>,
}

impl Model {
    /// Whether the count `c` was still current at some moment after step
    /// `after` and no earlier than `since`.
    fn current_after(&self, c: usize, after: u64, since: Instant) -> bool {
        match self.changes.get(c) {
            // Replaced by c + 1: c ended at that step and time.
            Some(&(step, time)) => step > after && time >= since,
            None => true,
        }
    }
}

/// One scrape's answer and when it came.
struct Answer {
    at: u64,
    came: Instant,
    gzip: bool,
    body: Body,
}

/// The lateness histogram's count in a body.
fn count_in(text: &str) -> usize {
    text.lines()
        .find_map(|l| l.strip_prefix("prober_schedule_lateness_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lateness count in:\n{text}"))
}

fn check(steps: Vec<Step>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(run(steps));
}

async fn run(steps: Vec<Step>) {
    let cache = Arc::new(ScrapeCache::default());
    // Renders of about a millisecond (debug build): a second render started
    // beside one under way (a lock let go too early) overlaps it for sure.
    let m = with_probes(30);
    let model = Arc::new(Mutex::new(Model::default()));
    let (started, registry) = counting(m.clone());
    let stop = CancellationToken::new();
    let refresher = {
        let (cache, stop, registry) = (cache.clone(), stop.clone(), registry.clone());
        tokio::spawn(async move { cache.refresh(registry, stop).await })
    };
    let scrape = |gzip: bool| {
        let (cache, model, registry) = (cache.clone(), model.clone(), registry.clone());
        tokio::spawn(async move {
            let (at, came) = (lock(&model).at, Instant::now());
            let body = cache.scrape(registry, gzip).await;
            Answer {
                at,
                came,
                gzip,
                body,
            }
        })
    };
    let mut answered = Vec::new();
    let mut scrapes = 0;
    for step in steps {
        lock(&model).at += 1;
        match step {
            Step::Scrape { gzip } => {
                scrapes += 1;
                answered.push(scrape(gzip));
            }
            Step::GiveUp { gzip, polls } => {
                scrapes += 1;
                let task = scrape(gzip);
                for _ in 0..polls {
                    tokio::task::yield_now().await;
                }
                task.abort();
            }
            Step::Change => {
                m.observe_lateness(Duration::ZERO);
                let mut model = lock(&model);
                let at = model.at;
                model.changes.push((at, Instant::now()));
            }
            Step::Invalidate => {
                cache.invalidate();
                let mut model = lock(&model);
                let at = model.at;
                model.invalidations.push(at);
            }
            Step::Pause { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Yield { turns } => {
                for _ in 0..turns {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    for task in answered {
        let answer = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a scrape was never answered")
            .expect("a scrape panicked");
        let text = if answer.gzip {
            assert!(answer.body.gzipped, "gzip asked, plain served");
            String::from_utf8(gunzip(&answer.body.bytes)).unwrap()
        } else {
            assert!(!answer.body.gzipped, "plain asked, gzip served");
            String::from_utf8(answer.body.bytes.to_vec()).unwrap()
        };
        let c = count_in(&text);
        let model = lock(&model);
        let reload = model
            .invalidations
            .iter()
            .copied()
            .filter(|&i| i < answer.at)
            .max()
            .unwrap_or(0);
        assert!(
            model.current_after(c, reload, answer.came - MAX_AGE),
            "a scrape at step {} was served count {c}, stale (changes {:?}, invalidations {:?})",
            answer.at,
            model.changes.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            model.invalidations
        );
    }
    // Nobody scrapes any more: at most the one render planned ahead.
    let before = started.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let renders = started.load(Ordering::SeqCst);
    assert!(renders <= before + 1, "rendered while nobody scraped");
    assert!(
        renders <= 2 * scrapes,
        "{renders} renders for {scrapes} scrapes"
    );
    // Every render has ended, and none overlapped another: a second render
    // under way fails its debug assertion and never gets back to zero.
    assert_eq!(
        cache.renders.under_way.load(Ordering::SeqCst),
        0,
        "two renders at once"
    );
    assert_eq!(cache.renders() as usize, renders, "a render never ended");
    stop.cancel();
    refresher.await.expect("the refresher panicked");
}

proptest! {
    #![proptest_config(RunnerConfig {
        cases: 200,
        rng_seed: RngSeed::Fixed(0x5c4a_9e00_2026),
        failure_persistence: None,
        ..RunnerConfig::default()
    })]

    #[test]
    fn scrapes_get_fresh_answers_from_one_render_at_a_time(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        check(steps);
    }
}
