//! Benchmark: `probe serve --sandbox` keeps bounded memory (issue 21).
//!
//!     cargo run --release --example bench_sandbox_memory
//!     cargo run --example bench_sandbox_memory -- --probe-bin target/debug/probe
//!
//! Runs the `probe` binary (built with `cargo build --release --bin probe`
//! into this example's target directory unless `--probe-bin` is given) as
//! `probe serve --sandbox` with a generated probes.yaml, and follows its
//! VmRSS while it works through an hour of traffic.
//!
//! **What "an hour of traffic" is.** The measurement: 8 probes
//! every 2–4 s (six `command` probes with `cleanup: true`, one `presence`,
//! one `exporter`) made 2,927 runs in 20 minutes, 8,781 an hour. This
//! benchmark makes the same mix (six command probes, each in its own
//! channel, `!help` answered with the simulated bot's embed, `cleanup:
//! true`; one presence probe; one exporter probe) every 1 s with `timeout:
//! 900ms` and `discord.send_interval: 1s` (the least the prober allows;
//! Discord's 5 messages per 5 s per channel allow no more), and counts
//! `probe_runs_total` until `--runs` (8,800) runs are done: the hour's
//! runs, messages and dispatches in about 20 minutes. The simulated users
//! are sped up with the runs: 12 slash commands a minute
//! (`--sandbox-commands-per-minute`, three times `--sandbox`'s default of
//! 4), so the hour's interactions (about 240, each an INTERACTION_CREATE,
//! a response message, ground truth) happen too. What is not sped up:
//! wall-clock timers (the sandbox's occasional bot outages, every 5–15
//! minutes, happen about a third as often per run unless
//! `--sandbox-outages 3m20s` speeds them up too; interaction tokens live
//! 15 minutes of wall time, so about 180 are held at once instead of 60;
//! rate-limit windows, heartbeats).
//!
//! RSS is read at start (the first `/metrics` answer), after warm-up and
//! at the end, with a line every 10 simulated minutes and one at each
//! outage's start and end. **Warm-up** lasts
//! until both (a) `--warmup-runs` runs are done (default 2,200: the first
//! 15 simulated minutes, by which the stores that the probes fill are
//! full: 2,000 message ground-truth records and answers, 1,000 replayed
//! dispatches per session) and (b) the sandbox's first simulated bot
//! outage is over (seen as the presence probe failing, then succeeding
//! again). The outage is recurring work (every 5–15 minutes of wall time,
//! for as long as `--sandbox` runs) that first happens 5–15 wall minutes
//! in, mostly after (a): its code pages (about 0.2 MiB of the binary,
//! file-backed) and the reconnect's buffers are touched for the first
//! time then, once, and counted as growth if the warm-up ends before it.
//! The **end** comes `--runs` − `--warmup-runs` runs (default 6,600, the
//! other 45 simulated minutes) after the warm-up, however late that was.
//! Still filling after warm-up, as in the first hour of a real
//! `--sandbox`: the channels' messages (the probes delete theirs and the
//! bot's replies, so what stays is the interaction responses), the
//! interactions' ground truth (2,000 at most) and the live interaction
//! tokens (15 minutes of wall time; about 24 KB at most here). Goal:
//! end − warm-up < 1 MiB; anonymous and file-backed memory are reported
//! separately. Exits non-zero only on errors, never because the goal was
//! missed. Only loopback traffic; the child is killed at the end.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use common::{build_probe_binary, load_average, read_mem};

#[derive(Parser, Debug)]
#[command(about = "probe serve --sandbox: RSS over an hour of simulated traffic")]
struct Args {
    /// Runs of the hour (default: the config's hour, 8,800 runs);
    /// the end comes this minus --warmup-runs runs after the warm-up.
    #[arg(long, default_value_t = HOUR_RUNS)]
    runs: u64,
    /// Runs of warm-up (default: 15 of the 60 simulated minutes); the
    /// warm-up also lasts until the first simulated outage is over.
    #[arg(long, default_value_t = 2_200)]
    warmup_runs: u64,
    /// The `probe` binary; by default built in release.
    #[arg(long, value_name = "PATH")]
    probe_bin: Option<PathBuf>,
    /// Give up after this many seconds of wall time.
    #[arg(long, default_value_t = 3_600)]
    max_seconds: u64,
    /// Passed to `probe serve --sandbox-outages` (default: `--sandbox`'s
    /// own, one about every 10 wall minutes); `3m20s` speeds the outages up
    /// with the runs, so the run sees the hour's six.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    sandbox_outages: String,
}

const COMMAND_PROBES: usize = 6;
/// The simulated users' slash commands a minute: `--sandbox`'s default (4)
/// sped up as the runs are (about threefold).
const COMMANDS_PER_MINUTE: &str = "12";
/// Runs in an hour of the config (2,927 in 20 minutes).
const HOUR_RUNS: u64 = 8_800;
const GUILD: u64 = 1_020_304_050_607_080_902;
const TARGET: u64 = 1_020_304_050_607_080_901;

fn probes_yaml() -> String {
    let mut y = format!(
        "target:\n  name: twi-bot-shard\n  user_id: \"{TARGET}\"\n  exporter_url: http://bot:8000/metrics\n\
         discord:\n  token_env: PROBER_DISCORD_TOKEN\n  send_interval: 1s\n\
         defaults:\n  every: 1s\n  timeout: 900ms\nprobes:\n"
    );
    for i in 0..COMMAND_PROBES {
        y += &format!(
            "  - name: help-{i}\n    command:\n      channel_id: \"{}\"\n      guild_id: \"{GUILD}\"\n      \
             message: \"!help\"\n      expect:\n        embed_title: \"^Interactive Help System\"\n      \
             error_reply:\n        embed_title: \"Error\"\n      cleanup: true\n",
            GUILD + 10 + i as u64
        );
    }
    y += &format!("  - name: presence\n    presence:\n      guilds: [\"{GUILD}\"]\n");
    y += "  - name: bot-exporter\n    exporter:\n      min_uptime: 1m\n";
    y
}

/// Kills the child when dropped, also on errors.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /metrics`, one connection per scrape (the child's cost is the same
/// for every sample).
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Sum of the values of the series whose lines start with `head`.
fn sum_of(metrics: &str, head: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(head))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sum of `probe_runs_total` over every probe and outcome.
fn runs(metrics: &str) -> u64 {
    sum_of(metrics, "probe_runs_total{") + sum_of(metrics, "probe_runs_total ")
}

/// The presence probe's runs: (failures, successes). It fails while the
/// sandbox's simulated bot is offline, i.e. during a simulated outage.
fn presence(metrics: &str) -> (u64, u64) {
    let count = |outcome: &str| {
        sum_of(
            metrics,
            &format!("probe_runs_total{{kind=\"presence\",outcome=\"{outcome}\","),
        )
    };
    (count("failure"), count("success"))
}

/// Has the first simulated outage come and gone? The presence probe
/// failed, then succeeded again after its last failure seen.
#[derive(Default)]
struct Outage {
    /// Presence (failures, successes) when a failure was last seen to be new.
    last_failure: Option<(u64, u64)>,
    over: bool,
}

impl Outage {
    fn see(&mut self, (failures, successes): (u64, u64)) {
        match self.last_failure {
            _ if self.over => {}
            None if failures > 0 => self.last_failure = Some((failures, successes)),
            Some((f, _)) if failures > f => self.last_failure = Some((failures, successes)),
            Some((_, s)) if successes > s => self.over = true,
            _ => {}
        }
    }
}

/// `probe_runs_total` by outcome label, for the record.
fn outcomes(metrics: &str) -> String {
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("probe_runs_total{"))
    {
        let outcome = l
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *by.entry(outcome.to_string()).or_default() += v;
        }
    }
    by.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / 1_048_576.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.warmup_runs < args.runs,
        "--warmup-runs must be below --runs"
    );
    let bin = match &args.probe_bin {
        Some(p) => p.clone(),
        None => build_probe_binary("bench_sandbox_memory")?,
    };
    let dir = std::env::temp_dir().join(format!("bench_sandbox_memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("probes.yaml");
    std::fs::write(&config, probes_yaml())?;
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    println!(
        "bench_sandbox_memory: {} serve --sandbox, {} runs (warm-up {}), outages about every {}, load {}",
        bin.display(),
        args.runs,
        args.warmup_runs,
        args.sandbox_outages,
        load_average()
    );
    let child = Command::new(&bin)
        .args([
            "serve",
            "--sandbox",
            "--listen",
            &addr.to_string(),
            "--sandbox-commands-per-minute",
            COMMANDS_PER_MINUTE,
            "--sandbox-outages",
            &args.sandbox_outages,
            "--config",
        ])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = Killed(child);
    let pid = child.0.id();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);

    // Start: the first answer of /metrics (the sandbox is up, probes begin).
    let start_rss = loop {
        if scrape(addr).is_ok() {
            break read_mem(pid).context("reading /proc")?.rss;
        }
        ensure!(Instant::now() < deadline, "probe serve never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("start: RSS {}", mib(start_rss));

    let per_line = HOUR_RUNS / 6; // every 10 simulated minutes
    let mut next_line = per_line;
    let mut warm: Option<(u64, [u64; 3])> = None; // runs, [RSS, anon, file]
    let mut outage = Outage::default();
    // Presence failures at the last sample, and whether the bot was then
    // offline: each outage's start and end get a line, to see its tooth.
    let mut last_presence = (0, 0, false);
    let (end_runs, end_mem, metrics) = loop {
        std::thread::sleep(Duration::from_secs(1));
        ensure!(Instant::now() < deadline, "not done within --max-seconds");
        let metrics = scrape(addr).context("scraping /metrics")?;
        let n = runs(&metrics);
        let mem = read_mem(pid).context("reading /proc")?;
        let was_over = outage.over;
        let (failures, successes) = presence(&metrics);
        let (last_failures, last_successes, was_offline) = last_presence;
        let offline = match (failures > last_failures, successes > last_successes) {
            (true, _) => true,
            (false, true) => false,
            (false, false) => was_offline,
        };
        if offline != was_offline {
            println!(
                "  simulated outage {}: {n} runs, {:.0} s, anon {}",
                if offline { "starts" } else { "over" },
                started.elapsed().as_secs_f64(),
                mib(mem.anon)
            );
        }
        last_presence = (failures, successes, offline);
        outage.see((failures, successes));
        if outage.over && !was_over {
            println!(
                "first simulated outage over: {n} runs, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        if warm.is_none() && n >= args.warmup_runs && outage.over {
            println!(
                "warm-up done: {n} runs, {:.0} s, RSS {} (anon {}, file {})",
                started.elapsed().as_secs_f64(),
                mib(mem.rss),
                mib(mem.anon),
                mib(mem.file)
            );
            warm = Some((n, [mem.rss, mem.anon, mem.file]));
        }
        if n >= next_line {
            println!(
                "  {n:>6} runs ({:>3} simulated min), {:>5.0} s: RSS {} (anon {}, file {}), {} threads",
                n * 60 / HOUR_RUNS,
                started.elapsed().as_secs_f64(),
                mib(mem.rss),
                mib(mem.anon),
                mib(mem.file),
                mem.threads
            );
            while next_line <= n {
                next_line += per_line;
            }
        }
        if let Some((warm_runs, _)) = &warm
            && n >= warm_runs + (args.runs - args.warmup_runs)
        {
            break (n, mem, metrics);
        }
    };
    let Some((warm_runs, [warm_rss, warm_anon, warm_file])) = warm else {
        bail!("never warmed up");
    };
    let growth = end_mem.rss as i64 - warm_rss as i64;
    let delta = |a: u64, b: u64| (b as i64 - a as i64) as f64 / 1_048_576.0;
    println!(
        "end: {end_runs} runs in {:.0} s; outcomes: {}",
        started.elapsed().as_secs_f64(),
        outcomes(&metrics)
    );
    println!("summary");
    println!(
        "  RSS start {}, after warm-up ({warm_runs} runs) {}, end ({end_runs} runs) {}",
        mib(start_rss),
        mib(warm_rss),
        mib(end_mem.rss)
    );
    println!(
        "  growth after warm-up: {:+.3} MiB (goal < 1 MiB: {})",
        growth as f64 / 1_048_576.0,
        if growth < 1_048_576 { "met" } else { "missed" }
    );
    println!(
        "  of which anonymous {:+.3} MiB ({} -> {}), file-backed {:+.3} MiB ({} -> {})",
        delta(warm_anon, end_mem.anon),
        mib(warm_anon),
        mib(end_mem.anon),
        delta(warm_file, end_mem.file),
        mib(warm_file),
        mib(end_mem.file)
    );
    println!("  load average at the end: {}", load_average());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
