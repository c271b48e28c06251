//! Benchmarks of `probe serve`: schedule precision, scrape latency, and cost
//! beside Prometheus' blackbox_exporter.
//!
//!     cargo run --release --example bench_serve                # parts schedule, render, serve
//!     scripts/bench-blackbox.sh                                # part blackbox (installs it first)
//!     cargo run --release --example bench_serve -- --part blackbox \
//!         --blackbox-bin /usr/bin/prometheus-blackbox-exporter
//!
//! Every part probes a local HTTP target that this example serves on
//! 127.0.0.1 (axum, on its own one-thread tokio runtime, answering 200 at
//! once and recording when each request arrived). Only loopback traffic;
//! every phase is bounded in time; every process started is killed at the
//! end (also on errors). Measurements start after a warm-up (`--warmup`,
//! default 10 s: the first slots of `every: 1s` probes are spread over the
//! first second, and connections get established) and last `--duration`
//! (default 60 s).
//!
//! 1. **schedule** — exact start lateness, in process. `--probes` (1,000)
//!    `http` probes, `every: 1s`, `timeout: 900ms`, `max_concurrency: 256`,
//!    loaded from a generated probes.yaml with `Config::load`, each run by
//!    `twi_probe::schedule::run_probe` on a runtime built as `probe serve`
//!    builds it, with the same semaphore, and logging as `probe serve` logs
//!    by default (text at `--log-level`, default `info`, written to
//!    /dev/null). The hook, without touching src/: each probe gets its own
//!    `Metrics`, so its `prober_schedule_lateness_seconds_sum` grows only by
//!    that probe's runs, and a probe never overlaps itself; its `ResultSink`
//!    (called in the run's task after the run) reads the sum, and the
//!    difference from the previous run is exactly `Instant::now() - due` as
//!    the scheduler measured it when the run started (after the semaphore).
//!    The sink's own cost (a render of that small registry) is reported.
//! 2. **render** — `Metrics::render()` alone, for `--probes` probes with
//!    one recorded run each and the process collector (as `probe serve`
//!    has): 200 renders, latency and size.
//! 3. **serve** — the `probe` binary (built with `cargo build --release
//!    --bin probe` into this example's target directory unless
//!    `--probe-bin` is given) runs `probe serve` with the same 1,000 probes
//!    as a child process.
//!    - Window A (schedule, no scraping but the two snapshots): the lateness
//!      histogram's increase gives the bucket bound of p99, the fraction
//!      ≤ 10 ms and the exact mean (sum/count). On the target side, per
//!      probe, the spacing jitter `arrival_k − arrival_{k−1} − 1 s` and the
//!      relative lateness `arrival_k − k·1 s − min_j(arrival_j − j·1 s)`
//!      (lateness plus client-side variation, minus the probe's best run;
//!      a per-probe constant, e.g. the timer's rounding up to its 1 ms tick,
//!      cancels out, so this is not an upper bound of lateness).
//!    - Window B (scrape): `/metrics` scraped every `--scrape-every`
//!      (100 ms) over one kept-alive connection (as Prometheus does) from a
//!      one-thread runtime; latency from sending the request to the last
//!      byte of the body (with `--gzip` the scrapes ask for gzip, as
//!      Prometheus does, and the compressed body is timed). The lateness
//!      histogram of window B is reported too.
//! 4. **blackbox** — cost beside blackbox_exporter, in the same run: `probe
//!    serve` with `--blackbox-probes` (200) http probes every 1 s, and
//!    blackbox_exporter (`--blackbox-bin`, started here on a free 127.0.0.1
//!    port with a generated config whose `http_2xx` module has `timeout:
//!    900ms`) driven through `/probe?target=...&module=http_2xx` at the same
//!    rate (200 requests/s, evenly paced, over kept-alive connections, with
//!    Prometheus' `X-Prometheus-Scrape-Timeout-Seconds: 1` header), both
//!    against the same target. CPU per probe = (utime + stime) increase
//!    from /proc/<pid>/stat over the window ÷ probes completed in it
//!    (`probe_runs_total` for probe serve, the driver's completed requests
//!    for blackbox_exporter); probe serve's CPU includes being scraped
//!    every `--blackbox-serve-scrape-every` (15 s; the window's two snapshot
//!    scrapes included). VmRSS sampled every 100 ms: median and peak; and
//!    VmHWM at the end.
//!
//! 5. **footprint** — issue 17's figures, each with its goal: `probe serve`
//!    (child process) with each of `--footprint-probes` (10, 1,000, 10,000)
//!    http probes in turn, every 1 s (every n/1,000 s above 1,000 probes,
//!    so at most 1,000 runs/s); once every probe has run
//!    `--footprint-runs` times (3; polled from `probe_runs_total`, scraped
//!    as Prometheus scrapes: gzip) and the body was scraped, VmRSS (and its
//!    anonymous / file-backed split). Idle
//!    RSS is the smallest size's (goal ≤ 10 MiB); growth per 1,000 probes
//!    is (RSS(n) − RSS(smallest)) / (n − smallest) × 1,000 (goal ≤ 5 MiB);
//!    body per probe is the body's growth per probe between the smallest
//!    and largest size (goal ≤ 800 bytes), plain and gzipped at the level
//!    `probe serve` uses for scrapers that accept gzip. At the largest size, `/metrics`
//!    is then scraped `--footprint-scrapes` (60) times every
//!    `--footprint-scrape-every` (1 s) with the headers Prometheus 2.42
//!    sends (OpenMetrics preferred, text accepted, `Accept-Encoding: gzip`),
//!    then as many times plain, while the probes run, each after 3 untimed
//!    scrapes at that interval (the first after the polls' 10 s pause
//!    renders inline, by design; their times are printed): p50, p99,
//!    max to the last byte (goals p99 ≤ 20 ms, max ≤ 50 ms) and to the first
//!    (the server's wait), and VmRSS and VmHWM after them. Run the driver
//!    optimised (`--profile bench-driver`): a debug driver receiving 16 MB
//!    plain times itself more than the server.
//!
//! Results go to stdout, ending with a `summary` block; exits non-zero only
//! on errors, never because a goal was missed. The machine's load average is
//! printed with each part: other work on the machine skews every figure.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail, ensure};
use clap::{Parser, ValueEnum};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use twi_probe::config::Config;
use twi_probe::exposition::{self, Sample};
use twi_probe::metrics::Metrics;
use twi_probe::probe::{Observations, Outcome, Probe, ProbeResult};
use twi_probe::schedule::{ResultSink, SlotStats, run_probe};

use common::{build_probe_binary, load_average, read_mem, rss_split};

/// Goals of the issue.
const GOAL_LATENESS_P99_S: f64 = 0.010;
const GOAL_SCRAPE_P99_S: f64 = 0.005;
const GOAL_CPU_RATIO: f64 = 0.5;
const GOAL_RSS_RATIO: f64 = 1.0;
const MIB: f64 = 1024.0 * 1024.0;
const GOAL_IDLE_RSS_MIB: f64 = 10.0;
const GOAL_GROWTH_PER_1000_MIB: f64 = 5.0;
const GOAL_BODY_PER_PROBE: f64 = 800.0;
const GOAL_SCRAPE_10K_P99_S: f64 = 0.020;
const GOAL_SCRAPE_10K_MAX_S: f64 = 0.050;
/// Part footprint: scrapes at the scrape interval before the timed ones.
const FOOTPRINT_WARMUP_SCRAPES: usize = 3;
const LATENESS: &str = "prober_schedule_lateness_seconds";
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);
const RENDERS: usize = 200;
/// Bounds on waits that should take moments; exceeding one is an error.
const START_BOUND: Duration = Duration::from_secs(30);
const REQUEST_BOUND: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(about = "probe serve: schedule lateness, scrape latency, cost beside blackbox_exporter")]
struct Args {
    /// Parts to run, in this order (repeatable).
    #[arg(long = "part", value_enum, default_values_t = [Part::Schedule, Part::Render, Part::Serve])]
    parts: Vec<Part>,
    /// Probes of parts schedule, render and serve (every 1 s each).
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    /// Warm-up before each measurement window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    warmup: Duration,
    /// Length of each measurement window.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Scrape interval of part serve's window B.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    scrape_every: Duration,
    /// Log filter of the probers (`probe serve --log-level`; in process, the
    /// same text format to /dev/null). `info` is probe serve's default.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Part blackbox: http probes every 1 s in probe serve, and the same
    /// number of /probe requests per second to blackbox_exporter.
    #[arg(long, default_value_t = 200)]
    blackbox_probes: usize,
    /// Part blackbox: the blackbox_exporter binary.
    #[arg(long, value_name = "PATH")]
    blackbox_bin: Option<PathBuf>,
    /// Window B's scrapes ask for gzip (`Accept-Encoding: gzip`, as
    /// Prometheus does); latency is then to the last compressed byte.
    #[arg(long)]
    gzip: bool,
    /// Part blackbox: how often probe serve's /metrics is scraped meanwhile.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    blackbox_serve_scrape_every: Duration,
    /// The `probe` binary; by default this example builds it with
    /// `cargo build --release --bin probe` into its own target directory.
    #[arg(long, value_name = "PATH")]
    probe_bin: Option<PathBuf>,
    /// Part footprint: the numbers of http probes, smallest first.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000, 10000])]
    footprint_probes: Vec<usize>,
    /// Part footprint: runs of every probe before RSS is read.
    #[arg(long, default_value_t = 3)]
    footprint_runs: u64,
    /// Part footprint: scrapes timed at the largest size.
    #[arg(long, default_value_t = 60)]
    footprint_scrapes: usize,
    /// Part footprint: their interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    footprint_scrape_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Schedule,
    Render,
    Serve,
    Blackbox,
    Footprint,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_serve: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.probes > 0 && args.blackbox_probes > 0,
        "--probes and --blackbox-probes must be at least 1"
    );
    ensure!(
        !args.duration.is_zero() && !args.scrape_every.is_zero(),
        "--duration and --scrape-every must be positive"
    );
    let mut parts = args.parts.clone();
    parts.dedup();
    let needs_bin = parts
        .iter()
        .any(|p| matches!(p, Part::Serve | Part::Blackbox | Part::Footprint));
    let probe_bin = match (&args.probe_bin, needs_bin) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(build_probe_binary("bench_serve")?),
        (None, false) => None,
    };
    let blackbox_bin = if parts.contains(&Part::Blackbox) {
        Some(args.blackbox_bin.clone().context(
            "part blackbox needs --blackbox-bin (scripts/bench-blackbox.sh installs and passes it)",
        )?)
    } else {
        None
    };
    let dir = std::env::temp_dir().join(format!("bench_serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("bench_serve: probe serve's schedule, scrape and cost");
    println!(
        "cores: {cores}; clock ticks/s: {}; load average: {}; warm-up {}, windows {}; log level {}",
        clock_ticks(),
        load_average(),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration),
        args.log_level
    );
    let target = Target::start()?;
    println!("target: http://{} (200 at once)", target.addr);

    let mut summary = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for part in &parts {
            match part {
                Part::Schedule => summary.extend(part_schedule(args, &dir, &target)?),
                Part::Render => summary.extend(part_render(args, &dir, &target)?),
                Part::Serve => summary.extend(part_serve(
                    args,
                    &dir,
                    probe_bin.as_deref().expect("built above"),
                    &target,
                )?),
                Part::Footprint => summary.extend(part_footprint(
                    args,
                    &dir,
                    probe_bin.as_deref().expect("built above"),
                    &target,
                )?),
                Part::Blackbox => summary.extend(part_blackbox(
                    args,
                    &dir,
                    probe_bin.as_deref().expect("built above"),
                    blackbox_bin.as_deref().expect("checked above"),
                    &target,
                )?),
            }
        }
        Ok(())
    })();
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!("\nsummary");
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Schedule, in process

#[derive(Default)]
struct LateState {
    sum: f64,
    count: u64,
    /// (when the sink ran, lateness of that run in seconds)
    samples: Vec<(Instant, f64)>,
    anomalies: u64,
    failures: u64,
    sink_time: Duration,
}

fn part_schedule(args: &Args, dir: &Path, target: &Target) -> anyhow::Result<Vec<String>> {
    println!(
        "\n[schedule] {} http probes every 1s, run_probe in process, exact lateness per run (load average {})",
        args.probes,
        load_average()
    );
    let path = write_probes(dir, "schedule.yaml", args.probes, "p", target.addr)?;
    let config = Config::load(&path).map_err(|e| anyhow!("{e}"))?;
    install_logging(&args.log_level)?;
    let mut base = config.clone();
    base.probes.clear();
    // Built as `probe serve` builds its runtime.
    let rt = tokio::runtime::Runtime::new()?;
    let limit = Arc::new(Semaphore::new(config.serve.max_concurrency));
    let stop = CancellationToken::new();
    let mut states = Vec::new();
    let mut stats = Vec::new();
    let start = Instant::now();
    let from = start + args.warmup;
    let until = from + args.duration;
    let stopped = rt.block_on(async {
        let mut handles = Vec::new();
        for spec in &config.probes {
            let one = Config {
                probes: vec![spec.clone()],
                ..base.clone()
            };
            let metrics = Arc::new(Metrics::new(&one));
            let state = Arc::new(Mutex::new(LateState::default()));
            let sink: ResultSink = {
                let (m, s) = (metrics.clone(), state.clone());
                Arc::new(move |r: &ProbeResult| record_lateness(&m, &s, r))
            };
            let probe = Arc::new(Probe::new(spec.clone(), None).map_err(|e| anyhow!(e))?);
            let st = Arc::new(SlotStats::default());
            handles.push(tokio::spawn(run_probe(
                probe,
                metrics,
                limit.clone(),
                stop.clone(),
                st.clone(),
                Some(sink),
                None,
            )));
            states.push(state);
            stats.push(st);
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        stop.cancel();
        let all = futures_util::future::join_all(handles);
        anyhow::Ok(tokio::time::timeout(START_BOUND, all).await.is_ok())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    ensure!(stopped, "probes did not stop within {START_BOUND:?}");

    let mut late = Vec::new();
    let (mut anomalies, mut failures, mut sink_time, mut runs_all) = (0, 0, Duration::ZERO, 0);
    for s in &states {
        let s = s.lock().unwrap_or_else(|p| p.into_inner());
        late.extend(
            s.samples
                .iter()
                .filter(|(at, _)| *at >= from && *at < until)
                .map(|(_, l)| *l),
        );
        anomalies += s.anomalies;
        failures += s.failures;
        sink_time += s.sink_time;
        runs_all += s.samples.len();
    }
    let (mut slots, mut skips) = (0, 0);
    for st in &stats {
        let (sl, _, sk) = st.snapshot();
        slots += sl;
        skips += sk;
    }
    ensure!(!late.is_empty(), "no run finished in the window");
    let d = Dist::new(late);
    let within = d.fraction_at_most(GOAL_LATENESS_P99_S);
    println!(
        "runs in window: {} ({:.1}/s); whole run: {runs_all} runs, {slots} slots, {skips} skipped, \
         {failures} not successful, {anomalies} unattributable lateness readings",
        d.len(),
        d.len() as f64 / args.duration.as_secs_f64()
    );
    println!("lateness: {}", d.describe_ms());
    println!(
        "runs started within 10 ms: {:.3}%; sink overhead: {:.1} µs per run ({:.2}% of one core)",
        within * 100.0,
        sink_time.as_secs_f64() * 1e6 / runs_all.max(1) as f64,
        sink_time.as_secs_f64() * 100.0 / (until - start).as_secs_f64()
    );
    let p99 = d.quantile(0.99);
    println!(
        "goal p99 ≤ 10 ms: {} (p99 {:.3} ms)",
        verdict(p99 <= GOAL_LATENESS_P99_S),
        p99 * 1e3
    );
    Ok(vec![format!(
        "schedule (in process, exact): lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} runs; goal p99 ≤ 10 ms {}",
        d.quantile(0.5) * 1e3,
        p99 * 1e3,
        d.max() * 1e3,
        d.len(),
        verdict(p99 <= GOAL_LATENESS_P99_S)
    )])
}

fn record_lateness(metrics: &Metrics, state: &Mutex<LateState>, result: &ProbeResult) {
    let at = Instant::now();
    let text = metrics.render();
    let samples = samples(&text).expect("the prober's own exposition parses");
    let (sum, count) = histogram_sum_count(&samples, LATENESS);
    let spent = at.elapsed();
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if count == s.count + 1 {
        let late = sum - s.sum;
        s.samples.push((at, late));
    } else {
        s.anomalies += 1;
    }
    s.sum = sum;
    s.count = count;
    s.sink_time += spent;
    if result.outcome != Outcome::Success {
        s.failures += 1;
    }
}

/// Text logs as `probe serve` writes them (tracing-subscriber's fmt layer,
/// no colours), at `filter`, into /dev/null.
fn install_logging(filter: &str) -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow!("bad --log-level {filter:?}: {e}"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Mutex::new(null))
        .with_ansi(false)
        .try_init();
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Render alone

fn part_render(args: &Args, dir: &Path, target: &Target) -> anyhow::Result<Vec<String>> {
    println!(
        "\n[render] Metrics::render() of {} probes, one recorded run each, process collector on (load average {})",
        args.probes,
        load_average()
    );
    let path = write_probes(dir, "render.yaml", args.probes, "r", target.addr)?;
    let config = Config::load(&path).map_err(|e| anyhow!("{e}"))?;
    let metrics = Metrics::new(&config).with_process_metrics();
    for spec in &config.probes {
        let result = ProbeResult {
            probe: spec.display_name(),
            kind: spec.kind.name(),
            outcome: Outcome::Success,
            duration: Duration::from_micros(1500),
            detail: "HTTP 200".into(),
            request_id: "000000000000".into(),
            started_at: SystemTime::now(),
            observations: Observations::default(),
        };
        metrics.record(spec, &result);
        metrics.observe_lateness(Duration::from_micros(300));
    }
    let mut size = 0;
    for _ in 0..5 {
        size = metrics.render().len();
    }
    let mut times = Vec::with_capacity(RENDERS);
    for _ in 0..RENDERS {
        let t = Instant::now();
        let body = metrics.render();
        times.push(t.elapsed().as_secs_f64());
        size = body.len();
    }
    let d = Dist::new(times);
    let lines = metrics.render().lines().count();
    println!(
        "body: {size} bytes, {lines} lines; {RENDERS} renders: {}",
        d.describe_ms()
    );
    Ok(vec![format!(
        "render alone ({} probes, {size} bytes): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        args.probes,
        d.quantile(0.5) * 1e3,
        d.quantile(0.99) * 1e3,
        d.max() * 1e3
    )])
}

// ---------------------------------------------------------------------------
// 3. probe serve as a process: schedule (histogram, target side) and scrape

fn part_serve(args: &Args, dir: &Path, bin: &Path, target: &Target) -> anyhow::Result<Vec<String>> {
    println!(
        "\n[serve] probe serve (child process) with {} http probes every 1s (load average {})",
        args.probes,
        load_average()
    );
    let path = write_probes(dir, "serve.yaml", args.probes, "s", target.addr)?;
    let child = ServeChild::spawn(bin, &path, &args.log_level)?;
    let url = format!("http://{}/metrics", child.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = scrape_client()?;
    let started = Instant::now();
    let cpu0 = cpu_ticks(child.pid())?;

    std::thread::sleep(args.warmup);
    // Window A: schedule, no scraping but the two snapshots.
    let h0 = Histogram::parse(&rt.block_on(fetch(&client, &url))?, LATENESS)?;
    let a_from = Instant::now();
    let mut rss = Vec::new();
    sample_rss_until(
        &[child.pid()],
        a_from + args.duration,
        std::slice::from_mut(&mut rss),
    );
    let a_until = Instant::now();
    let text_a = rt.block_on(fetch(&client, &url))?;
    let h1 = Histogram::parse(&text_a, LATENESS)?;
    child.check_alive()?;

    // Window B: scrape every --scrape-every.
    let b_from = Instant::now();
    let b_until = b_from + args.duration;
    let (scrapes, sizes) = rt.block_on(async {
        let mut tick = tokio::time::interval(args.scrape_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut lat, mut sizes) = (Vec::new(), Vec::new());
        loop {
            tick.tick().await;
            if Instant::now() >= b_until {
                break;
            }
            let t = Instant::now();
            let size = fetch_size(&client, &url, args.gzip).await?;
            lat.push(t.elapsed().as_secs_f64());
            sizes.push(size);
        }
        anyhow::Ok((lat, sizes))
    })?;
    let text_b = rt.block_on(fetch(&client, &url))?;
    let h2 = Histogram::parse(&text_b, LATENESS)?;
    let cpu1 = cpu_ticks(child.pid())?;
    let elapsed = started.elapsed();
    let mem = read_mem(child.pid()).context("reading probe serve's memory")?;
    let (anon, file) = rss_split(child.pid()).unwrap_or_default();
    child.check_alive()?;
    let log_lines = child.stderr_lines.load(Ordering::Relaxed);
    drop(child);

    // Window A from the histogram.
    let wa = h1.minus(&h0)?;
    println!(
        "window A ({}): {} runs ({:.1}/s) by prober_schedule_lateness_seconds",
        humantime::format_duration(args.duration),
        wa.count,
        wa.count / (a_until - a_from).as_secs_f64()
    );
    println!("  {}", wa.describe());
    // Window A from the target side.
    let arrivals = target.arrivals("/s", a_from, a_until);
    let (jitter, relative, gaps_skipped) = spacing(&arrivals, Duration::from_secs(1));
    ensure!(
        !jitter.is_empty(),
        "the target saw no probe twice in window A"
    );
    let jitter = Dist::new(jitter.into_iter().map(f64::abs).collect());
    let relative = Dist::new(relative);
    println!(
        "  target side, {} probes seen, {} arrivals: |spacing − 1 s| {}",
        arrivals.len(),
        arrivals.values().map(Vec::len).sum::<usize>(),
        jitter.describe_ms()
    );
    println!(
        "  target side, relative lateness (arrival − k·1 s − the probe's best): {}",
        relative.describe_ms()
    );
    if gaps_skipped > 0 {
        println!("  ({gaps_skipped} gaps of more than one interval: skipped slots)");
    }
    let wb = h2.minus(&h1)?;
    println!(
        "window B (scraped every {}): lateness {}",
        humantime::format_duration(args.scrape_every),
        wb.describe()
    );
    ensure!(!scrapes.is_empty(), "no scrape in window B");
    let sd = Dist::new(scrapes);
    let size_max = sizes.iter().copied().max().unwrap_or(0);
    let size_min = sizes.iter().copied().min().unwrap_or(0);
    println!(
        "  {} scrapes{}, body {size_min}..{size_max} bytes ({} lines): {}",
        sd.len(),
        if args.gzip { " asking for gzip" } else { "" },
        text_b.lines().count(),
        sd.describe_ms()
    );
    let cpu_s = (cpu1 - cpu0) as f64 / clock_ticks() as f64;
    println!(
        "probe serve: CPU {:.2} s over {:.1} s ({:.1}% of one core); VmRSS median A {:.1} MB, now {:.1} MB ({:.1} MB anonymous, {:.1} MB file-backed), VmHWM {:.1} MB; {log_lines} log lines on stderr",
        cpu_s,
        elapsed.as_secs_f64(),
        cpu_s * 100.0 / elapsed.as_secs_f64(),
        Dist::new(rss.iter().map(|&b| b as f64).collect()).quantile(0.5) / 1e6,
        mem.rss as f64 / 1e6,
        anon as f64 / 1e6,
        file as f64 / 1e6,
        mem.hwm as f64 / 1e6,
    );
    let sp99 = sd.quantile(0.99);
    println!(
        "goal lateness p99 ≤ 10 ms (window A, buckets): {}; goal scrape p99 ≤ 5 ms: {} (p99 {:.3} ms)",
        verdict(wa.fraction_at_most(GOAL_LATENESS_P99_S) >= 0.99),
        verdict(sp99 <= GOAL_SCRAPE_P99_S),
        sp99 * 1e3
    );
    Ok(vec![
        format!(
            "schedule (probe serve, histogram, window A): {}",
            wa.describe()
        ),
        format!(
            "schedule (probe serve, target side, window A): |spacing − 1 s| p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; relative lateness p99 {:.3} ms",
            jitter.quantile(0.5) * 1e3,
            jitter.quantile(0.99) * 1e3,
            jitter.max() * 1e3,
            relative.quantile(0.99) * 1e3
        ),
        format!(
            "schedule (probe serve, histogram, window B, scraped): {}",
            wb.describe()
        ),
        format!(
            "scrape every {} ({} scrapes, {size_max} bytes): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; goal p99 ≤ 5 ms {}",
            humantime::format_duration(args.scrape_every),
            sd.len(),
            sd.quantile(0.5) * 1e3,
            sp99 * 1e3,
            sd.max() * 1e3,
            verdict(sp99 <= GOAL_SCRAPE_P99_S)
        ),
    ])
}

/// Per probe: spacing jitter (gap − n·every, n the nearest whole number of
/// intervals) and relative lateness; and how many gaps spanned more than one
/// interval.
fn spacing(
    arrivals: &HashMap<String, Vec<Instant>>,
    every: Duration,
) -> (Vec<f64>, Vec<f64>, usize) {
    let every = every.as_secs_f64();
    let (mut jitter, mut relative, mut long) = (Vec::new(), Vec::new(), 0);
    for times in arrivals.values() {
        let Some(&first) = times.first() else {
            continue;
        };
        let offsets: Vec<f64> = times
            .iter()
            .map(|t| {
                let since = (*t - first).as_secs_f64();
                since - (since / every).round() * every
            })
            .collect();
        let best = offsets.iter().copied().fold(f64::INFINITY, f64::min);
        relative.extend(offsets.iter().map(|o| o - best));
        for w in times.windows(2) {
            let gap = (w[1] - w[0]).as_secs_f64();
            let n = (gap / every).round();
            if n > 1.0 {
                long += 1;
            }
            jitter.push(gap - n * every);
        }
    }
    (jitter, relative, long)
}

// ---------------------------------------------------------------------------
// 4. Beside blackbox_exporter

fn part_blackbox(
    args: &Args,
    dir: &Path,
    bin: &Path,
    blackbox: &Path,
    target: &Target,
) -> anyhow::Result<Vec<String>> {
    let n = args.blackbox_probes;
    println!(
        "\n[blackbox] probe serve with {n} http probes every 1s beside blackbox_exporter driven at {n} /probe requests/s, same target (load average {})",
        load_average()
    );
    let version = Command::new(blackbox)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", blackbox.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).to_string()
        + &String::from_utf8_lossy(&version.stderr);
    println!(
        "blackbox_exporter: {}",
        version.lines().next().unwrap_or("?")
    );

    let bb_config = dir.join("blackbox.yml");
    std::fs::write(
        &bb_config,
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 900ms\n    http:\n      preferred_ip_protocol: ip4\n",
    )?;
    let bb_addr = free_port()?;
    let bb_log = std::fs::File::create(dir.join("blackbox.log"))?;
    let bb = Killed(
        Command::new(blackbox)
            .arg(format!("--config.file={}", bb_config.display()))
            .arg(format!("--web.listen-address={bb_addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(bb_log)
            .spawn()
            .with_context(|| format!("starting {}", blackbox.display()))?,
    );
    let path = write_probes(dir, "blackbox-serve.yaml", n, "t", target.addr)?;
    let serve = ServeChild::spawn(bin, &path, &args.log_level)?;
    let serve_url = format!("http://{}/metrics", serve.addr);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-driver")
        .enable_all()
        .build()?;
    let client = scrape_client()?;
    let healthy = format!("http://{bb_addr}/-/healthy");
    rt.block_on(async {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(r) = client.get(&healthy).send().await
                && r.status().is_success()
            {
                return anyhow::Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "blackbox_exporter not healthy within {START_BOUND:?} (log: {})",
                std::fs::read_to_string(dir.join("blackbox.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    let bb_pid = bb.0.id();
    println!(
        "blackbox_exporter: http://{bb_addr} (pid {bb_pid}); probe serve: http://{} (pid {})",
        serve.addr,
        serve.pid()
    );

    // The driver: n requests per second, evenly paced, until the end.
    let start = Instant::now();
    let from = start + args.warmup;
    let until = from + args.duration;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let driver = {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        let targets: Vec<String> = (0..n)
            .map(|i| {
                url::Url::parse_with_params(
                    &format!("http://{bb_addr}/probe"),
                    &[
                        ("target", format!("http://{}/b{i:04}", target.addr)),
                        ("module", "http_2xx".into()),
                    ],
                )
                .map(String::from)
            })
            .collect::<Result<_, _>>()?;
        let period = Duration::from_secs_f64(1.0 / n as f64);
        rt.spawn(async move {
            let t0 = tokio::time::Instant::from_std(start);
            for i in 0u32.. {
                let due = t0 + period * i;
                if due.into_std() >= until + Duration::from_secs(1) {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let req = client
                    .get(&targets[i as usize % targets.len()])
                    .header("X-Prometheus-Scrape-Timeout-Seconds", "1")
                    .timeout(REQUEST_BOUND);
                let (ok, failed) = (ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let good = match req.send().await {
                        Ok(r) if r.status().is_success() => r
                            .text()
                            .await
                            .is_ok_and(|b| b.lines().any(|l| l == "probe_success 1")),
                        _ => false,
                    };
                    if good { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    };

    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let pids = [serve.pid(), bb_pid];
    let cpu0 = [cpu_ticks(pids[0])?, cpu_ticks(pids[1])?];
    let runs0 = rt.block_on(fetch(&client, &serve_url))?;
    let bb0 = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    // RSS sampling on its own thread; scrapes of probe serve meanwhile.
    let sampler = std::thread::spawn(move || {
        let mut rss = [Vec::new(), Vec::new()];
        sample_rss_until(&pids, until, &mut rss);
        rss
    });
    let mut next = from + args.blackbox_serve_scrape_every;
    let mut scrapes = 2;
    while next < until {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        rt.block_on(fetch(&client, &serve_url))?;
        scrapes += 1;
        next += args.blackbox_serve_scrape_every;
    }
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let bb1 = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let runs1 = rt.block_on(fetch(&client, &serve_url))?;
    let cpu1 = [cpu_ticks(pids[0])?, cpu_ticks(pids[1])?];
    let rss = sampler
        .join()
        .map_err(|_| anyhow!("the RSS sampler panicked"))?;
    let hwm = [read_mem(pids[0]), read_mem(pids[1])].map(|m| m.map_or(0, |m| m.hwm));
    let split = [rss_split(pids[0]), rss_split(pids[1])];
    serve.check_alive()?;
    let _ = rt.block_on(driver);
    drop(serve);
    drop(bb);
    rt.shutdown_timeout(Duration::from_secs(2));

    let (runs0, runs1) = (samples(&runs0)?, samples(&runs1)?);
    let runs = |samples: &[Sample], good: bool| {
        sum_samples(samples, "probe_runs_total", |s| {
            (s.label("outcome") == Some("success")) == good
        })
    };
    let serve_runs = runs(&runs1, true) - runs(&runs0, true);
    let serve_bad = runs(&runs1, false) - runs(&runs0, false);
    let bb_runs = (bb1.0 - bb0.0) as f64;
    let bb_bad = bb1.1 - bb0.1;
    ensure!(
        serve_runs > 0.0 && bb_runs > 0.0,
        "no successful probes in the window"
    );
    let tick = clock_ticks() as f64;
    let cpu = [
        (cpu1[0] - cpu0[0]) as f64 / tick,
        (cpu1[1] - cpu0[1]) as f64 / tick,
    ];
    let per = [cpu[0] / serve_runs, cpu[1] / bb_runs];
    let med = |v: &Vec<u64>| Dist::new(v.iter().map(|&b| b as f64).collect()).quantile(0.5);
    let peak = |v: &Vec<u64>| v.iter().copied().max().unwrap_or(0) as f64;
    let secs = args.duration.as_secs_f64();
    for (i, name) in ["probe serve", "blackbox_exporter"].iter().enumerate() {
        let (done, bad) = if i == 0 {
            (serve_runs, serve_bad)
        } else {
            (bb_runs, bb_bad as f64)
        };
        println!(
            "{name:<17}: {done:.0} successful probes ({:.1}/s), {bad:.0} others; CPU {:.2} s ({:.1}% of one core) = {:.1} µs/probe; VmRSS median {:.1} MB, peak {:.1} MB, VmHWM {:.1} MB",
            done / secs,
            cpu[i],
            cpu[i] * 100.0 / secs,
            per[i] * 1e6,
            med(&rss[i]) / 1e6,
            peak(&rss[i]) / 1e6,
            hwm[i] as f64 / 1e6
        );
    }
    for (name, split) in ["probe serve", "blackbox_exporter"].iter().zip(split) {
        if let Some((anon, file)) = split {
            println!(
                "{name:<17}: at the end, VmRSS = {:.1} MB anonymous (heap, stacks) + {:.1} MB file-backed (executable, libraries)",
                anon as f64 / 1e6,
                file as f64 / 1e6
            );
        }
    }
    println!(
        "(probe serve scraped {scrapes} times in the window; CPU from /proc/<pid>/stat at {tick} ticks/s)"
    );
    let cpu_ratio = per[0] / per[1];
    let rss_ratio = med(&rss[0]) / med(&rss[1]);
    let peak_ratio = peak(&rss[0]) / peak(&rss[1]);
    println!(
        "CPU/probe ratio {cpu_ratio:.3} (goal ≤ {GOAL_CPU_RATIO}: {}); RSS ratio median {rss_ratio:.3}, peak {peak_ratio:.3} (goal < {GOAL_RSS_RATIO}: {})",
        verdict(cpu_ratio <= GOAL_CPU_RATIO),
        verdict(rss_ratio < GOAL_RSS_RATIO && peak_ratio < GOAL_RSS_RATIO)
    );
    Ok(vec![format!(
        "beside blackbox_exporter ({n}/s each, {} s): CPU/probe {:.1} µs vs {:.1} µs, ratio {cpu_ratio:.3} (goal ≤ {GOAL_CPU_RATIO} {}); VmRSS median {:.1} vs {:.1} MB, ratio {rss_ratio:.3}, peak ratio {peak_ratio:.3} (goal < 1 {})",
        secs,
        per[0] * 1e6,
        per[1] * 1e6,
        verdict(cpu_ratio <= GOAL_CPU_RATIO),
        med(&rss[0]) / 1e6,
        med(&rss[1]) / 1e6,
        verdict(rss_ratio < GOAL_RSS_RATIO && peak_ratio < GOAL_RSS_RATIO)
    )])
}

// ---------------------------------------------------------------------------
// 5. Footprint: issue 17's figures

/// One size of part footprint.
struct Footprint {
    probes: usize,
    rss: u64,
    anon: u64,
    file: u64,
    body: usize,
    /// The body gzipped as `probe serve` gzips it (fastest level).
    gzipped: usize,
}

fn part_footprint(
    args: &Args,
    dir: &Path,
    bin: &Path,
    target: &Target,
) -> anyhow::Result<Vec<String>> {
    let sizes = &args.footprint_probes;
    ensure!(
        sizes.len() >= 2 && sizes.windows(2).all(|w| w[0] < w[1]),
        "--footprint-probes needs two or more sizes, smallest first"
    );
    println!(
        "\n[footprint] probe serve with {sizes:?} http probes; RSS once each probe ran {} times and was scraped (load average {})",
        args.footprint_runs,
        load_average()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = scrape_client()?;
    let mut rows: Vec<Footprint> = Vec::new();
    let mut scrape_lines = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        // At most 1,000 runs/s, so the machine keeps up at any size.
        let every = Duration::from_secs((n as u64).div_ceil(1000).max(1));
        let path = write_probes_every(
            dir,
            &format!("footprint-{n}.yaml"),
            n,
            "f",
            target.addr,
            every,
        )?;
        let child = ServeChild::spawn(bin, &path, &args.log_level)?;
        let url = format!("http://{}/metrics", child.addr);
        let deadline = Instant::now() + every * (args.footprint_runs as u32 + 3) + START_BOUND;
        let poll = every.max(Duration::from_secs(1));
        let body = loop {
            // The client drops idle connections before the server does
            // (`scrape_client`), so a poll 10 s after the last never meets
            // a closed one.
            let text = rt.block_on(fetch_as_prometheus(&client, &url))?;
            let samples = samples(&text)?;
            let mut runs: HashMap<&str, f64> = HashMap::new();
            for s in samples.iter().filter(|s| s.name == "probe_runs_total") {
                *runs
                    .entry(s.label("probe").unwrap_or_default())
                    .or_default() += s.value;
            }
            let least = runs.values().copied().fold(f64::INFINITY, f64::min);
            if runs.len() == n && least >= args.footprint_runs as f64 {
                break text;
            }
            child.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{n} probes: not every probe ran {} times in time ({} probes seen, least {least} runs)",
                args.footprint_runs,
                runs.len()
            );
            std::thread::sleep(poll);
        };
        // The body was just scraped; the reading counts it.
        let mem = read_mem(child.pid()).context("reading probe serve's memory")?;
        let (anon, file) = rss_split(child.pid()).unwrap_or_default();
        let gzipped = gzipped_len(body.as_bytes());
        println!(
            "{n:>6} probes (every {}): VmRSS {:.2} MiB ({:.2} MiB anonymous, {:.2} MiB file-backed); body {} bytes, gzipped {gzipped}",
            humantime::format_duration(every),
            mem.rss as f64 / MIB,
            anon as f64 / MIB,
            file as f64 / MIB,
            body.len()
        );
        rows.push(Footprint {
            probes: n,
            rss: mem.rss,
            anon,
            file,
            body: body.len(),
            gzipped,
        });
        if k + 1 == sizes.len() {
            // As Prometheus asks (gzip), then plain; one after the other, so
            // that each kind's renders are its own.
            for asks in [Asks::Prometheus, Asks::Plain] {
                let (warmup, times) = rt.block_on(async {
                    let mut tick = tokio::time::interval(args.footprint_scrape_every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // A scraper's first scrapes (after a pause no snapshot
                    // outlives) render inline by design; timed apart.
                    let mut warmup = Vec::new();
                    for _ in 0..FOOTPRINT_WARMUP_SCRAPES {
                        tick.tick().await;
                        warmup.push(scrape_timed(&client, &url, asks).await?.1);
                    }
                    let (mut first_byte, mut whole) = (Vec::new(), Vec::new());
                    for _ in 0..args.footprint_scrapes {
                        tick.tick().await;
                        let (head, all) = scrape_timed(&client, &url, asks).await?;
                        first_byte.push(head.as_secs_f64());
                        whole.push(all.as_secs_f64());
                    }
                    anyhow::Ok((warmup, (first_byte, whole)))
                })?;
                let mut slowest: Vec<(usize, f64)> = times.1.iter().copied().enumerate().collect();
                slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
                println!(
                    "{n:>6} probes, {}: the first {FOOTPRINT_WARMUP_SCRAPES} scrapes (untimed warm-up) took {}; the slowest timed: {}",
                    asks.describe(),
                    warmup
                        .iter()
                        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
                        .collect::<Vec<_>>()
                        .join(", "),
                    slowest
                        .iter()
                        .take(5)
                        .map(|(i, t)| format!("#{} {:.1} ms", i + 1, t * 1e3))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ensure!(
                    !times.1.is_empty(),
                    "--footprint-scrapes must be at least 1"
                );
                let (head, d) = (Dist::new(times.0), Dist::new(times.1));
                let after = read_mem(child.pid()).context("reading probe serve's memory")?;
                let met =
                    d.quantile(0.99) <= GOAL_SCRAPE_10K_P99_S && d.max() <= GOAL_SCRAPE_10K_MAX_S;
                println!(
                    "{n:>6} probes: {} scrapes every {} {}: {}; to the first byte (the server's wait): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; then VmRSS {:.2} MiB, VmHWM {:.2} MiB (load average {})",
                    d.len(),
                    humantime::format_duration(args.footprint_scrape_every),
                    asks.describe(),
                    d.describe_ms(),
                    head.quantile(0.5) * 1e3,
                    head.quantile(0.99) * 1e3,
                    head.max() * 1e3,
                    after.rss as f64 / MIB,
                    after.hwm as f64 / MIB,
                    load_average()
                );
                scrape_lines.push(format!(
                    "scrape at {n} probes ({} every {}, {}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (first byte: p99 {:.2} ms, max {:.2} ms); goal p99 ≤ 20 ms, no stall over 50 ms: {}",
                    d.len(),
                    humantime::format_duration(args.footprint_scrape_every),
                    asks.describe(),
                    d.quantile(0.5) * 1e3,
                    d.quantile(0.99) * 1e3,
                    d.max() * 1e3,
                    head.quantile(0.99) * 1e3,
                    head.max() * 1e3,
                    verdict(met)
                ));
            }
        }
        child.check_alive()?;
    }
    let first = &rows[0];
    let idle = first.rss as f64 / MIB;
    let mut out = vec![format!(
        "idle RSS, {} http probes: {idle:.2} MiB ({:.2} anonymous + {:.2} file-backed); goal ≤ {GOAL_IDLE_RSS_MIB} MiB: {}",
        first.probes,
        first.anon as f64 / MIB,
        first.file as f64 / MIB,
        verdict(idle <= GOAL_IDLE_RSS_MIB)
    )];
    for row in &rows[1..] {
        let per =
            (row.rss as f64 - first.rss as f64) / MIB / (row.probes - first.probes) as f64 * 1000.0;
        out.push(format!(
            "RSS growth per 1,000 http probes, {} → {}: {per:.2} MiB (RSS {:.2} → {:.2} MiB); goal ≤ {GOAL_GROWTH_PER_1000_MIB} MiB: {}",
            first.probes,
            row.probes,
            first.rss as f64 / MIB,
            row.rss as f64 / MIB,
            verdict(per <= GOAL_GROWTH_PER_1000_MIB)
        ));
    }
    let last = rows.last().expect("two sizes or more");
    let probes = (last.probes - first.probes) as f64;
    let per_probe = (last.body - first.body) as f64 / probes;
    let gzipped = (last.gzipped as f64 - first.gzipped as f64) / probes;
    out.push(format!(
        "/metrics body per http probe: {per_probe:.0} bytes ({} bytes at {} probes), gzipped {gzipped:.0} bytes (as served to a scraper asking for gzip, as Prometheus does); goal ≤ {GOAL_BODY_PER_PROBE} bytes (plain): {}",
        last.body,
        last.probes,
        verdict(per_probe <= GOAL_BODY_PER_PROBE)
    ));
    out.extend(scrape_lines);
    for line in &out {
        println!("{line}");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The target

/// A local HTTP target answering 200 at once, on its own one-thread runtime,
/// recording when each request (by path) arrived.
struct Target {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    stop: CancellationToken,
    rt: Option<tokio::runtime::Runtime>,
}

impl Target {
    fn start() -> anyhow::Result<Target> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-target")
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let hits: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
        let h = hits.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let now = Instant::now();
            let h = h.clone();
            async move {
                h.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(uri.path().to_string())
                    .or_default()
                    .push(now);
                "ok\n"
            }
        });
        let stop = CancellationToken::new();
        let s = stop.clone();
        rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(Target {
            addr,
            hits,
            stop,
            rt: Some(rt),
        })
    }

    /// Arrivals in [from, until) of the paths starting with `prefix`.
    fn arrivals(
        &self,
        prefix: &str,
        from: Instant,
        until: Instant,
    ) -> HashMap<String, Vec<Instant>> {
        let hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        hits.iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(path, times)| {
                let mut t: Vec<Instant> = times
                    .iter()
                    .copied()
                    .filter(|t| *t >= from && *t < until)
                    .collect();
                t.sort();
                (path.clone(), t)
            })
            .filter(|(_, t)| !t.is_empty())
            .collect()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// `--probes` http probes every 1 s against the target, paths `/{prefix}NNNN`.
fn write_probes(
    dir: &Path,
    file: &str,
    n: usize,
    prefix: &str,
    target: SocketAddr,
) -> anyhow::Result<PathBuf> {
    write_probes_every(dir, file, n, prefix, target, Duration::from_secs(1))
}

/// As [`write_probes`], every `every`.
fn write_probes_every(
    dir: &Path,
    file: &str,
    n: usize,
    prefix: &str,
    target: SocketAddr,
    every: Duration,
) -> anyhow::Result<PathBuf> {
    let every = humantime::format_duration(every);
    let mut yaml = String::from("target: {name: bench}\nserve: {max_concurrency: 256}\nprobes:\n");
    for i in 0..n {
        let _ = write!(
            yaml,
            "  - name: {prefix}{i:04}\n    every: {every}\n    timeout: 900ms\n    http: {{url: \"http://{target}/{prefix}{i:04}\"}}\n"
        );
    }
    let path = dir.join(file);
    std::fs::write(&path, yaml)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// Child processes

/// A child process, killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `probe serve` as a child process; its stderr is read (and counted) by a
/// thread, which also finds the address it serves on.
struct ServeChild {
    child: Killed,
    addr: SocketAddr,
    stderr_lines: Arc<AtomicU64>,
    tail: Arc<Mutex<Vec<String>>>,
}

impl ServeChild {
    fn spawn(bin: &Path, config: &Path, log_level: &str) -> anyhow::Result<ServeChild> {
        let mut child = Killed(
            Command::new(bin)
                .args(["--log-level", log_level, "serve", "--config"])
                .arg(config)
                .args(["--listen", "127.0.0.1:0"])
                .env_remove("PROBE_LOG")
                .env_remove("PROBE_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {} serve", bin.display()))?,
        );
        let stderr = child.0.stderr.take().context("no stderr pipe")?;
        let lines = Arc::new(AtomicU64::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (lines, tail) = (lines.clone(), tail.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.fetch_add(1, Ordering::Relaxed);
                    if let Some(rest) = line.split("serving http://").nth(1)
                        && let Some(addr) = rest.split("/metrics").next()
                    {
                        let _ = tx.send(addr.to_string());
                    }
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() >= 20 {
                        t.remove(0);
                    }
                    t.push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(START_BOUND) {
            Ok(a) => a.parse().with_context(|| format!("bad address {a:?}"))?,
            Err(_) => bail!(
                "probe serve did not start within {START_BOUND:?}; its stderr:\n{}",
                tail.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
            ),
        };
        Ok(ServeChild {
            child,
            addr,
            stderr_lines: lines,
            tail,
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        ensure!(
            std::fs::metadata(format!("/proc/{}", self.pid())).is_ok()
                && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                    .unwrap_or_default()
                    .contains(") Z"),
            "probe serve exited; its stderr:\n{}",
            self.tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("\n")
        );
        Ok(())
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

// ---------------------------------------------------------------------------
// /proc

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is 3rd,
    // utime the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(f.get(i - 3).context("short /proc stat")?.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// Samples VmRSS of each pid every RSS_SAMPLE_EVERY until `until`.
fn sample_rss_until(pids: &[u32], until: Instant, out: &mut [Vec<u64>]) {
    let mut next = Instant::now();
    while next < until {
        for (pid, v) in pids.iter().zip(out.iter_mut()) {
            if let Some(m) = read_mem(*pid) {
                v.push(m.rss);
            }
        }
        next += RSS_SAMPLE_EVERY;
        std::thread::sleep(next.min(until).saturating_duration_since(Instant::now()));
    }
}

// ---------------------------------------------------------------------------
// Prometheus text

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let r = client
        .get(url)
        .timeout(REQUEST_BOUND)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    Ok(r.text().await?)
}

/// A client for `probe serve`'s `/metrics`: it drops idle connections
/// before the server does (`--web.read-timeout`, 10 s), which would
/// otherwise fail the first request after a pause.
fn scrape_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()?)
}

/// GETs `url` with Prometheus' headers (gzip; checking it came so) and
/// returns the body's text.
async fn fetch_as_prometheus(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let r = client
        .get(url)
        .timeout(REQUEST_BOUND)
        .header("Accept", PROMETHEUS_ACCEPT)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    let encoding = r.headers().get("content-encoding").cloned();
    ensure!(
        encoding.as_ref().is_some_and(|e| e == "gzip"),
        "GET {url}: content-encoding {encoding:?}"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.bytes().await?[..])
        .read_to_string(&mut text)
        .with_context(|| format!("GET {url}: gunzip"))?;
    Ok(text)
}

/// GETs `url` (asking for gzip when `gzip`, and checking it came so) and
/// returns the size of the body as received.
async fn fetch_size(client: &reqwest::Client, url: &str, gzip: bool) -> anyhow::Result<usize> {
    let mut request = client.get(url).timeout(REQUEST_BOUND);
    if gzip {
        request = request.header("Accept-Encoding", "gzip");
    }
    let r = request.send().await.with_context(|| format!("GET {url}"))?;
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    let encoding = r.headers().get("content-encoding").cloned();
    ensure!(
        encoding.as_ref().is_some_and(|e| e == "gzip") == gzip,
        "GET {url}: content-encoding {encoding:?}"
    );
    Ok(r.bytes().await?.len())
}

/// How a timed scrape asks for `/metrics`.
#[derive(Clone, Copy)]
enum Asks {
    /// The headers Prometheus 2.42 sends (recorded from the Debian package
    /// scraping a test server): OpenMetrics preferred, the text format
    /// accepted, gzip.
    Prometheus,
    /// No preference, no compression (a browser-less `curl`).
    Plain,
}

impl Asks {
    fn describe(self) -> &'static str {
        match self {
            Asks::Prometheus => "as Prometheus asks (gzip)",
            Asks::Plain => "plain",
        }
    }
}

/// Prometheus 2.42's `Accept` header for a scrape.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One scrape: the time to the response's head (the server's wait, plus
/// loopback) and to its last byte, checking it came compressed as asked.
async fn scrape_timed(
    client: &reqwest::Client,
    url: &str,
    asks: Asks,
) -> anyhow::Result<(Duration, Duration)> {
    let mut request = client.get(url).timeout(REQUEST_BOUND);
    if let Asks::Prometheus = asks {
        request = request
            .header("Accept", PROMETHEUS_ACCEPT)
            .header("Accept-Encoding", "gzip")
            .header("X-Prometheus-Scrape-Timeout-Seconds", "10");
    }
    let started = Instant::now();
    let r = request.send().await.with_context(|| format!("GET {url}"))?;
    let head = started.elapsed();
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    let gzipped = r
        .headers()
        .get("content-encoding")
        .is_some_and(|e| e == "gzip");
    ensure!(
        gzipped == matches!(asks, Asks::Prometheus),
        "GET {url}: gzipped {gzipped} when asked {}",
        asks.describe()
    );
    r.bytes().await?;
    Ok((head, started.elapsed()))
}

/// The size of `body` gzipped at the fastest level, as `probe serve`
/// compresses `/metrics` for scrapers that accept gzip.
fn gzipped_len(body: &[u8]) -> usize {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body)
        .and_then(|()| gz.finish())
        .map_or(0, |v| v.len())
}

/// Parses an exposition with the prober's own strict parser.
fn samples(text: &str) -> anyhow::Result<Vec<Sample>> {
    exposition::parse(text).map_err(|e| anyhow!("bad exposition: {e}"))
}

/// Sum of the samples named `name` that `keep` accepts.
fn sum_samples(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .sum()
}

fn histogram_sum_count(samples: &[Sample], name: &str) -> (f64, u64) {
    let sum = sum_samples(samples, &format!("{name}_sum"), |_| true);
    let count = sum_samples(samples, &format!("{name}_count"), |_| true);
    (sum, count as u64)
}

/// A histogram without labels: cumulative buckets, sum and count.
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn parse(text: &str, name: &str) -> anyhow::Result<Histogram> {
        let samples = samples(text)?;
        let bucket = format!("{name}_bucket");
        let buckets = samples
            .iter()
            .filter(|s| s.name == bucket)
            .map(|s| {
                let le = s.label("le").context("a bucket without le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()?
                };
                Ok((le, s.value))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(!buckets.is_empty(), "no {name} in the scrape");
        let (sum, count) = histogram_sum_count(&samples, name);
        Ok(Histogram {
            buckets,
            sum,
            count: count as f64,
        })
    }

    fn minus(&self, earlier: &Histogram) -> anyhow::Result<Histogram> {
        ensure!(
            self.buckets.len() == earlier.buckets.len(),
            "bucket layout changed"
        );
        Ok(Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|((le, a), (_, b))| (*le, a - b))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        })
    }

    /// The upper edge of the bucket holding quantile q.
    fn bound(&self, q: f64) -> f64 {
        self.buckets
            .iter()
            .find(|(_, c)| *c >= q * self.count)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }

    fn fraction_at_most(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .find(|(edge, _)| (*edge - le).abs() < 1e-12)
            .map_or(f64::NAN, |(_, c)| c / self.count)
    }

    fn describe(&self) -> String {
        let ms = |s: f64| {
            if s.is_infinite() {
                "+Inf".to_string()
            } else {
                format!("{} ms", s * 1e3)
            }
        };
        format!(
            "{} runs; mean {:.3} ms (sum/count); p50 ≤ {}, p99 ≤ {}, p99.9 ≤ {}, max ≤ {} (bucket edges); {:.3}% within 10 ms",
            self.count,
            self.sum / self.count * 1e3,
            ms(self.bound(0.5)),
            ms(self.bound(0.99)),
            ms(self.bound(0.999)),
            ms(self.bound(1.0)),
            self.fraction_at_most(0.01) * 100.0
        )
    }
}

// ---------------------------------------------------------------------------
// Statistics

/// Sorted samples (seconds), nearest-rank quantiles.
struct Dist(Vec<f64>);

impl Dist {
    fn new(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        Dist(v)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.0.len() as f64).ceil().max(1.0) as usize;
        self.0[rank.min(self.0.len()) - 1]
    }

    fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }

    fn fraction_at_most(&self, x: f64) -> f64 {
        self.0.partition_point(|v| *v <= x) as f64 / self.0.len().max(1) as f64
    }

    fn describe_ms(&self) -> String {
        let mean = self.0.iter().sum::<f64>() / self.0.len().max(1) as f64;
        format!(
            "n {}, mean {:.3} ms, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.len(),
            mean * 1e3,
            self.quantile(0.5) * 1e3,
            self.quantile(0.9) * 1e3,
            self.quantile(0.99) * 1e3,
            self.quantile(0.999) * 1e3,
            self.max() * 1e3
        )
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
