//! Where `probe serve`'s memory goes, per probe: live heap bytes of each
//! part for N http probes (default 1,000) and a history of H runs (default
//! 100), counted by a global allocator that tracks live bytes, in process.
//!
//!     cargo run --release --example bench_memory -- 1000 100
//!
//! Parts: the loaded config, the `Probe` objects, the metrics (series at
//! start, after one run each), one render (body, transient peak,
//! allocations), the history rings, and the schedule tasks while every
//! probe runs every 1 s against a closed port for 4 s.
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = LIVE.fetch_add(l.size() as isize, Ordering::Relaxed) + l.size() as isize;
        PEAK.fetch_max(n, Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let d = n as isize - l.size() as isize;
        let v = LIVE.fetch_add(d, Ordering::Relaxed) + d;
        PEAK.fetch_max(v, Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let hist: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("memb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut yaml = String::from("target: {name: bench}\nserve: {max_concurrency: 256}\nprobes:\n");
    for i in 0..n {
        let _ = write!(
            yaml,
            "  - name: s{i:04}\n    every: 1s\n    timeout: 900ms\n    http: {{url: \"http://127.0.0.1:9/s{i:04}\"}}\n"
        );
    }
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let b = live();
    let config = twi_probe::config::Config::load(&path).unwrap();
    let c = live();
    println!("config: {:.0} B/probe", (c - b) as f64 / n as f64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let b = live();
    let probes: Vec<_> = config
        .probes
        .iter()
        .map(|s| Arc::new(twi_probe::probe::Probe::new(s.clone(), None).unwrap()))
        .collect();
    println!(
        "Probe objects: {:.0} B/probe",
        (live() - b) as f64 / n as f64
    );
    let b = live();
    let metrics = twi_probe::metrics::Metrics::new(&config).with_process_metrics();
    println!(
        "Metrics::new (init series): {:.0} B/probe",
        (live() - b) as f64 / n as f64
    );
    let mk = |spec: &twi_probe::config::ProbeSpec| twi_probe::probe::ProbeResult {
        probe: spec.display_name(),
        kind: spec.kind.name(),
        outcome: twi_probe::probe::Outcome::Success,
        duration: Duration::from_micros(1500),
        detail: "HTTP 200".into(),
        request_id: "0123456789ab".into(),
        started_at: SystemTime::now(),
        observations: Default::default(),
    };
    let b = live();
    for spec in &config.probes {
        let r = mk(spec);
        metrics.record(spec, &r);
        metrics.set_next_run(spec, SystemTime::now());
        metrics.observe_lateness(Duration::from_micros(300));
    }
    println!(
        "after one run recorded: +{:.0} B/probe",
        (live() - b) as f64 / n as f64
    );
    let b = live();
    PEAK.store(b, Ordering::Relaxed);
    let c0 = COUNT.load(Ordering::Relaxed);
    let t = std::time::Instant::now();
    let body = metrics.render();
    let took = t.elapsed();
    println!(
        "render: body {} B ({:.0} B/probe), transient peak {:.0} B/probe, {} allocations, {:?}",
        body.len(),
        body.len() as f64 / n as f64,
        (PEAK.load(Ordering::Relaxed) - b) as f64 / n as f64,
        COUNT.load(Ordering::Relaxed) - c0,
        took
    );
    if n <= 2 {
        println!("{body}");
    }
    drop(body);
    let b = live();
    let history = twi_probe::history::History::default();
    let sinks: Vec<_> = config
        .probes
        .iter()
        .map(|s| history.track(s, hist))
        .collect();
    for _ in 0..hist {
        for (spec, sink) in config.probes.iter().zip(&sinks) {
            sink(&mk(spec));
        }
    }
    println!(
        "history ({hist} runs each): {:.0} B/probe ({:.0} B/run)",
        (live() - b) as f64 / n as f64,
        (live() - b) as f64 / n as f64 / hist as f64
    );
    println!(
        "size_of ProbeResult {}",
        std::mem::size_of::<twi_probe::probe::ProbeResult>()
    );
    sizes(probes[0].clone());
    drop(_g);
    let rt2 = tokio::runtime::Runtime::new().unwrap();
    let metrics = Arc::new(metrics);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let stop = tokio_util::sync::CancellationToken::new();
    let b = live();
    rt2.block_on(async {
        for (p, sink) in probes.iter().zip(&sinks) {
            tokio::spawn(twi_probe::schedule::run_probe(
                p.clone(),
                metrics.clone(),
                limit.clone(),
                stop.clone(),
                Arc::new(Default::default()),
                Some(sink.clone()),
                None,
            ));
        }
        println!(
            "tasks spawned: {:.0} B/probe",
            (live() - b) as f64 / n as f64
        );
        for s in 0..4 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!(
                "after {}s of runs: {:.0} B/probe",
                s + 1,
                (live() - b) as f64 / n as f64
            );
        }
    });
    drop(probes);
}
#[allow(dead_code)]
fn sizes(p: Arc<twi_probe::probe::Probe>) {
    let f = twi_probe::probe::run_once(p);
    println!("run_once future: {} B", std::mem::size_of_val(&f));
}
