//! Benchmark: does the prober tell the truth about command latency, and how
//! much memory does it take?
//!
//!     cargo run --release --example bench_probes [-- --channels 20 --rounds 25]
//!
//! 1. **Truthfulness.** A sandbox (on its own one-thread tokio runtime, as
//!    `probe sandbox` runs it) with one channel per probe, rate limits raised
//!    out of the way, and a simulated bot that replies after a fixed delay
//!    without typing. The prober's real serenity session
//!    (`DiscordSession::connect`, on a runtime built like `probe run`'s) runs
//!    one `command` probe per channel, all started at once (the prober
//!    itself spaces their sends 5 ms apart: `discord::send_gate`), for several rounds
//!    (runs in one channel are spaced by `send_interval`, 1 s, which is not
//!    timed). For every run, the prober's latency (`ProbeResult::latency()`)
//!    is compared with the sandbox's ground truth for the same run: the moment
//!    the reply's MESSAGE_CREATE was written to the *prober's* socket minus
//!    the moment the probe message's REST request arrived. Both are `Instant`s
//!    of this process, so the difference is the prober's own overhead: its
//!    HTTP client before the request arrives (and the sandbox's HTTP server
//!    before its handler starts), plus the WebSocket read, serenity's parsing
//!    and the reply's correlation after the reply was written. Nothing is
//!    discarded and there is no warm-up.
//! 2. **Footprint.** The `probe` binary (release; built by this example with
//!    `cargo build --release --bin probe` unless `--probe-bin` is given) runs
//!    `probe run --count N --interval 1s` in its own process against the same
//!    sandbox, with the same Discord probes in a probes.yaml; its VmRSS is read
//!    from /proc every 100 ms while it runs. The sandbox is not counted.
//!
//! Exits non-zero on errors and when a run was not a success (every run must
//! succeed), never because a goal was missed. Options: `--channels`,
//! `--rounds`, `--bot-latency-ms`, `--stagger-ms` (start the probes of a
//! round that many ms apart instead of all at once, on top of the prober's
//! own send spacing), `--count` (runs per
//! probe of the footprint child), `--prober-threads`, `--sandbox-threads`,
//! `--probe-bin`, `--no-truth`, `--no-footprint`. `BENCH_DUMP=1` writes one
//! line per run to stderr.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Parser;
use twi_probe::config::{Config, Secret};
use twi_probe::discord::DiscordSession;
use twi_probe::probe::{Outcome, Probe, ProbeResult, run_once};
use twi_sandbox::{BotBehaviour, Latency, Sandbox, SandboxConfig};

use common::{
    Mem, build_probe_binary, channel_name, load_average, read_mem, sandbox_with_channels,
};

const PROBER: &str = "prober";
const BOT: &str = "twi-bot-shard";
/// Goals for (prober latency − ground truth).
const GOAL_P50_MS: f64 = 0.5;
const GOAL_P99_MS: f64 = 2.0;
/// Goal for the prober's resident memory, in bytes (1 MB = 10^6 bytes).
const GOAL_RSS_BYTES: u64 = 20_000_000;
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A bound on the footprint child, not a sleep: exceeding it is an error.
const CHILD_BOUND: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
#[command(about = "Command-probe latency vs the sandbox's ground truth, and the prober's RSS")]
struct Args {
    /// Channels, with `--probes-per-channel` command probes each, all
    /// started at once.
    #[arg(long, default_value_t = 20)]
    channels: usize,
    /// Rounds of the truthfulness part (samples = channels × rounds).
    #[arg(long, default_value_t = 25)]
    rounds: usize,
    /// The simulated bot's fixed reply delay, in milliseconds.
    #[arg(long, default_value_t = 200)]
    bot_latency_ms: u64,
    /// Runs per probe of the footprint child (`probe run --count`).
    #[arg(long, default_value_t = 15)]
    count: u32,
    /// The `probe` binary to measure; by default this example builds
    /// `target/release/probe` with `cargo build --release --bin probe`.
    #[arg(long, value_name = "PATH")]
    probe_bin: Option<PathBuf>,
    /// Worker threads of the prober's tokio runtime in part 1; default as
    /// `probe run` (one per core).
    #[arg(long)]
    prober_threads: Option<usize>,
    /// Worker threads of the sandbox's tokio runtime; default 1, as
    /// `probe sandbox` runs it (one thread).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    sandbox_threads: u16,
    /// Start probe i of a round i × this many ms after the first (still all
    /// in flight together while the bot's delay is longer); 0: all at once.
    #[arg(long, default_value_t = 0)]
    stagger_ms: u64,
    /// Command probes per channel (they take turns there).
    #[arg(long, default_value_t = 1)]
    probes_per_channel: usize,
    /// Make the bot release its replies in bursts: each reply waits for the
    /// next multiple of this many ms (0: no bursts).
    #[arg(long, default_value_t = 0)]
    burst_ms: u64,
    /// Runs of the presence probe and of the silent command probes in part 3.
    #[arg(long, default_value_t = 100)]
    gateway_runs: usize,
    /// Skip part 1 (truthfulness).
    #[arg(long)]
    no_truth: bool,
    /// Skip part 3 (gateway round trips and timeouts).
    #[arg(long)]
    no_gateway: bool,
    /// Skip part 2 (footprint).
    #[arg(long)]
    no_footprint: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench_probes: some runs were not successes (details above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench_probes: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: the benchmark ran, but some runs were not successes.
fn run(args: &Args) -> anyhow::Result<bool> {
    ensure!(
        args.channels > 0 && args.rounds > 0 && args.count > 0 && args.probes_per_channel > 0,
        "--channels, --probes-per-channel, --rounds and --count must be at least 1"
    );
    let probe_bin = if args.no_footprint {
        None
    } else {
        Some(match &args.probe_bin {
            Some(p) => p.clone(),
            None => build_probe_binary("bench_probes")?,
        })
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sandbox_rt = tokio::runtime::Builder::new_multi_thread();
    sandbox_rt.enable_all().thread_name("bench-sandbox");
    sandbox_rt.worker_threads(args.sandbox_threads.into());
    let sandbox_rt = sandbox_rt.build()?;
    let mut cfg = sandbox_config(
        args.channels,
        Duration::from_millis(args.bot_latency_ms),
        Duration::from_millis(args.burst_ms),
    );
    // Ground truth is read after the measurement: keep every run's (a probe
    // message and its answer, and room for what else the runs post).
    let messages = 4 * args.channels * args.probes_per_channel * args.rounds;
    cfg.retention.truth_records = cfg.retention.truth_records.max(messages);
    cfg.retention.messages = cfg.retention.messages.max(messages);
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let sandbox = sandbox_rt
        .block_on(Sandbox::start(cfg, addr))
        .map_err(|e| anyhow!(e))?;

    println!("bench_probes: command-probe latency vs the sandbox's ground truth; prober memory");
    println!(
        "cores: {cores}; load average: {}; sandbox on its own tokio runtime ({} worker(s)); \
         {} command probes in {} channels; simulated bot replies after {} ms (fixed, no typing{}); \
         sandbox rate limits raised out of the way",
        load_average(),
        args.sandbox_threads,
        args.channels * args.probes_per_channel,
        args.channels,
        args.bot_latency_ms,
        if args.burst_ms > 0 {
            format!(", released in bursts every {} ms", args.burst_ms)
        } else {
            String::new()
        }
    );

    let mut all_ok = true;
    let mut result = Ok(());
    if !args.no_truth {
        // By default built as `probe run` builds its runtime.
        let prober_rt = match args.prober_threads {
            None => tokio::runtime::Runtime::new()?,
            Some(n) => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .worker_threads(n)
                .build()?,
        };
        match prober_rt.block_on(truthfulness(&sandbox, args)) {
            Ok(ok) => all_ok &= ok,
            Err(e) => result = Err(e),
        }
        prober_rt.shutdown_timeout(Duration::from_secs(5));
    }
    if result.is_ok() && !args.no_gateway {
        let prober_rt = tokio::runtime::Runtime::new()?;
        match prober_rt.block_on(gateway_round_trips(&sandbox, args)) {
            Ok(ok) => all_ok &= ok,
            Err(e) => result = Err(e),
        }
        prober_rt.shutdown_timeout(Duration::from_secs(5));
    }
    if result.is_ok()
        && let Some(bin) = &probe_bin
    {
        match footprint(&sandbox, args, bin) {
            Ok(ok) => all_ok &= ok,
            Err(e) => result = Err(e),
        }
    }
    sandbox_rt.block_on(sandbox.shutdown());
    println!();
    println!("load average at the end: {}", load_average());
    result.map(|()| all_ok)
}

fn threads_shown(n: Option<usize>, cores: usize) -> usize {
    n.unwrap_or(cores)
}

fn sandbox_config(channels: usize, bot_latency: Duration, burst: Duration) -> SandboxConfig {
    let mut cfg = sandbox_with_channels(channels);
    cfg.bot.behaviour = BotBehaviour {
        latency: Latency::fixed(bot_latency),
        typing: false,
        burst: (!burst.is_zero()).then_some(burst),
        ..BotBehaviour::default()
    };
    cfg.bot.started_ago = Duration::from_secs(3600);
    cfg
}

fn probe_name(i: usize, j: usize) -> String {
    format!("command-{i:03}-{j}")
}

/// A probes.yaml with `per_channel` `!help` command probes in each bench
/// channel. `token_line` is the `discord.token_env` or `token_file` line.
fn probes_yaml(
    sandbox: &Sandbox,
    channels: usize,
    per_channel: usize,
    token_line: &str,
) -> anyhow::Result<String> {
    let d = sandbox.description();
    let bot = &sandbox.account(BOT).context("no bot account")?.id;
    let guild = &d.guilds[0].id;
    let mut yaml = format!(
        "target: {{name: twi-bot-shard, user_id: \"{bot}\"}}\n\
         discord:\n  {token_line}\n  api_base: {}\n  send_interval: 1s\n\
         probes:\n",
        serde_json::to_string(&d.rest_base)?
    );
    for i in 0..channels {
        let channel = sandbox
            .channel_id(&channel_name(i))
            .with_context(|| format!("channel {} missing", channel_name(i)))?;
        for j in 0..per_channel {
            yaml.push_str(&format!(
                "  - name: {}\n    every: 1m\n    timeout: 5s\n    command:\n      \
                 channel_id: \"{channel}\"\n      guild_id: \"{guild}\"\n      message: \"!help\"\n      \
                 expect: {{embed_title: \"^Interactive Help System\"}}\n      \
                 error_reply: {{embed_title: \"Error\"}}\n",
                probe_name(i, j)
            ));
        }
    }
    Ok(yaml)
}

// ---------------------------------------------------------------------------
// 1. Truthfulness

/// What one successful run measured, in ms.
struct Sample {
    round: usize,
    latency: f64,
    truth: f64,
    difference: f64,
    /// From the reply's write to the prober's socket to `run_once` returning:
    /// the receiving side's share and a little more.
    receive_bound: f64,
}

/// One run of one probe, with the moments just before and after `run_once`
/// (they bound the run's messages in the ground truth).
struct Run {
    round: usize,
    before: Instant,
    after: Instant,
    result: ProbeResult,
}

async fn truthfulness(sandbox: &Sandbox, args: &Args) -> anyhow::Result<bool> {
    let prober = sandbox.account(PROBER).context("no prober account")?;
    let prober_id: u64 = prober.id.parse()?;
    let yaml = probes_yaml(
        sandbox,
        args.channels,
        args.probes_per_channel,
        "token_env: BENCH_UNUSED",
    )?;
    let config = Config::from_yaml(&yaml, Path::new("bench_probes.yaml"))
        .map_err(|e| anyhow!("{e}\n{yaml}"))?;
    let (session, probes) = connect_probes(&config, &prober.token).await?;

    println!();
    println!(
        "1. Truthfulness: {} rounds of {} concurrent command probes ({} runs); prober on its own \
         tokio runtime ({} workers{}); {}; every sample kept, no warm-up",
        args.rounds,
        probes.len(),
        args.rounds * probes.len(),
        threads_shown(
            args.prober_threads,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        if args.prober_threads.is_none() {
            ", as `probe run` builds it"
        } else {
            ""
        },
        if args.stagger_ms == 0 {
            format!(
                "all started at once (the prober spaces sends {} ms apart)",
                twi_probe::discord::send_gate::SEND_SPACING.as_millis()
            )
        } else {
            format!("started {} ms apart", args.stagger_ms)
        }
    );
    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::with_capacity(args.rounds * probes.len());
    for round in 0..args.rounds {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, probe) in probes.iter().enumerate() {
            let probe = probe.clone();
            let stagger = Duration::from_millis(args.stagger_ms) * i as u32;
            tasks.spawn(async move {
                if !stagger.is_zero() {
                    tokio::time::sleep(stagger).await;
                }
                let before = Instant::now();
                let result = run_once(probe).await;
                Run {
                    round,
                    before,
                    after: Instant::now(),
                    result,
                }
            });
        }
        while let Some(run) = tasks.join_next().await {
            runs.push(run?);
        }
    }
    let elapsed = started.elapsed();

    // The sandbox records `written` just after a frame went out, so the
    // last replies' records may still be pending. A gateway round trip on
    // the prober's connection is answered only after them.
    let guild: u64 = sandbox.description().guilds[0].id.parse()?;
    session
        .gateway_ping(guild, Duration::from_secs(10))
        .await
        .map_err(|_| anyhow!("no answer to a gateway round trip after the rounds"))?;
    // The bot records its answers after Discord accepted them, which may be
    // after the prober saw them.
    tokio::time::timeout(
        Duration::from_secs(30),
        sandbox.control().bot().context("no simulated bot")?.idle(),
    )
    .await
    .map_err(|_| anyhow!("the simulated bot did not finish answering in 30 s"))?;
    // Ground truth, read after the measurement so as not to disturb it.
    let mut samples: Vec<Sample> = Vec::with_capacity(runs.len());
    let mut not_success = Vec::new();
    for run in &runs {
        let Some(latency) = run.result.latency() else {
            not_success.push(run);
            continue;
        };
        let (arrived, written) = ground_truth(sandbox, run, prober_id).with_context(|| {
            format!(
                "round {} probe {}: matching the ground truth",
                run.round, run.result.probe
            )
        })?;
        let truth = written - arrived;
        let sample = Sample {
            round: run.round,
            latency: ms(latency),
            truth: ms(truth),
            difference: ms(latency) - ms(truth),
            receive_bound: signed_ms(written, run.after),
        };
        if std::env::var_os("BENCH_DUMP").is_some() {
            // round, probe, latency, truth, before->arrived, written->after,
            // arrived and written since the first round began, the wait
            // for its turn before the clock started (ms)
            eprintln!(
                "DUMP {} {} {:.3} {:.3} {:.3} {:.3} {:.3} {:.3} {:.3}",
                run.round,
                run.result.probe,
                sample.latency,
                sample.truth,
                signed_ms(run.before, arrived),
                sample.receive_bound,
                signed_ms(started, arrived),
                signed_ms(started, written),
                ms(run.result.observations.waited.unwrap_or_default())
            );
        }
        samples.push(sample);
    }
    session.shutdown().await;

    println!(
        "runs: {}, successes: {}, not successes: {} (took {:.1} s)",
        runs.len(),
        runs.len() - not_success.len(),
        not_success.len(),
        elapsed.as_secs_f64()
    );
    for run in &not_success {
        let r = &run.result;
        println!(
            "  NOT A SUCCESS: round {} {} outcome {} after {:.3} ms: {}",
            run.round,
            r.probe,
            r.outcome,
            ms(r.duration),
            r.detail
        );
    }
    if samples.is_empty() {
        bail!("no successful run to measure");
    }
    let pick = |f: fn(&Sample) -> f64, keep: &dyn Fn(&Sample) -> bool| -> Vec<f64> {
        samples.iter().filter(|s| keep(s)).map(f).collect()
    };
    println!();
    header();
    let diff = stats(
        "difference: prober latency - ground truth",
        pick(|s| s.difference, &|_| true),
    );
    stats(
        "prober latency (ProbeResult::latency)",
        pick(|s| s.latency, &|_| true),
    );
    stats(
        "ground truth (arrived -> written to prober)",
        pick(|s| s.truth, &|_| true),
    );
    // Context: round 1 includes the HTTP client's connection set-up.
    stats(
        "difference, round 1 only",
        pick(|s| s.difference, &|s| s.round == 0),
    );
    if args.rounds > 1 {
        stats(
            "difference, rounds 2 and later",
            pick(|s| s.difference, &|s| s.round > 0),
        );
    }
    // Context: an upper bound of the receiving side's share (WS read,
    // serenity, correlation, and the end of the run).
    stats(
        "written to prober -> run_once returned",
        pick(|s| s.receive_bound, &|_| true),
    );
    let negative = samples.iter().filter(|s| s.difference < 0.0).count();
    if negative > 0 {
        println!(
            "note: {negative} negative differences: the sandbox stamps `written` after the socket \
             write returns, so a descheduled sandbox thread stamps it late (the prober had already \
             read the frame; see the row above)"
        );
    }
    println!();
    println!(
        "goal p50 <= {GOAL_P50_MS:.3} ms: {} (p50 {:.3} ms)",
        verdict(diff.p50 <= GOAL_P50_MS),
        diff.p50
    );
    println!(
        "goal p99 <= {GOAL_P99_MS:.3} ms: {} (p99 {:.3} ms)",
        verdict(diff.p99 <= GOAL_P99_MS),
        diff.p99
    );
    Ok(not_success.is_empty())
}

/// The ground truth of one successful run: the probe message is the one
/// the run sent (its id is in the run's observations); the reply is the
/// message the simulated bot answered it with (the bot's own record).
/// Truth = reply's MESSAGE_CREATE written to the prober's connection − probe
/// request arrived; returned as those two moments.
fn ground_truth(
    sandbox: &Sandbox,
    run: &Run,
    prober_id: u64,
) -> anyhow::Result<(Instant, Instant)> {
    let control = sandbox.control();
    let id = run
        .result
        .observations
        .probe_message_id
        .context("the run has no probe message id")?;
    let probe_msg = control
        .truth(id)
        .context("no record of the probe message")?;
    let answer = control
        .bot()
        .context("no simulated bot")?
        .answer_to(id)
        .context("the bot has no answer to the probe message")?;
    let reply = control.truth(answer).context("no record of the reply")?;
    let mut writes = reply
        .dispatches
        .iter()
        .filter(|d| d.account_id == prober_id && d.event == "MESSAGE_CREATE");
    let written = writes
        .next()
        .context("the reply's MESSAGE_CREATE was never written to the prober")?;
    ensure!(
        writes.next().is_none(),
        "the reply was dispatched to the prober twice"
    );
    ensure!(
        written.written >= probe_msg.request_arrived,
        "reply written before the probe's request arrived"
    );
    Ok((probe_msg.request_arrived, written.written))
}

// ---------------------------------------------------------------------------
// 2. Footprint

fn footprint(sandbox: &Sandbox, args: &Args, bin: &Path) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("bench_probes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = footprint_in(sandbox, args, bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn footprint_in(sandbox: &Sandbox, args: &Args, bin: &Path, dir: &Path) -> anyhow::Result<bool> {
    let token_file = dir.join("prober-token");
    std::fs::write(
        &token_file,
        &sandbox.account(PROBER).context("no prober account")?.token,
    )?;
    let token_line = format!(
        "token_file: {}",
        serde_json::to_string(&token_file.display().to_string())?
    );
    let config = dir.join("probes.yaml");
    std::fs::write(
        &config,
        probes_yaml(sandbox, args.channels, args.probes_per_channel, &token_line)?,
    )?;

    let count = args.count.to_string();
    let cli = [
        "run",
        "--config",
        &config.display().to_string(),
        "--count",
        &count,
        "--interval",
        "1s",
        "--format",
        "json",
    ]
    .map(String::from);
    println!();
    println!(
        "2. Footprint: {} {} (own process; {} Discord probes; VmRSS every {} ms)",
        bin.display(),
        cli.join(" "),
        args.channels,
        RSS_SAMPLE_EVERY.as_millis()
    );
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(&cli)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    // Drained while it runs, so a full pipe never stalls it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().context("no stdout")?));
    let stderr = drain(Box::new(child.stderr.take().context("no stderr")?));

    let mut samples: Vec<Mem> = Vec::new();
    let mut next = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(m) = read_mem(pid) {
            samples.push(m);
        }
        if started.elapsed() > CHILD_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the probe process ran longer than {CHILD_BOUND:?}");
        }
        next += RSS_SAMPLE_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    let ran = started.elapsed();
    let stdout = stdout
        .join()
        .map_err(|_| anyhow!("stdout reader panicked"))?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("stderr reader panicked"))?;

    // What the child reported: every run must be a success.
    let mut runs = 0usize;
    let mut failed = Vec::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            failed.push(format!("unexpected output: {line}"));
            continue;
        };
        if v["type"] == "result" {
            runs += 1;
            if v["outcome"] != Outcome::Success.as_str() {
                failed.push(line.to_string());
            }
        }
    }
    let expected = args.channels * args.count as usize;
    if runs != expected {
        failed.push(format!("{runs} results for {expected} runs"));
    }
    if !status.success() {
        failed.push(format!("exit status {status}"));
    }
    if !stderr.trim().is_empty() {
        println!("  child stderr: {}", stderr.trim());
    }
    println!(
        "ran {:.1} s, {status}; runs: {runs}, not successes: {}",
        ran.as_secs_f64(),
        failed.len()
    );
    for f in &failed {
        println!("  NOT A SUCCESS: {f}");
    }
    ensure!(!samples.is_empty(), "no RSS sample taken");

    let mut rss: Vec<u64> = samples.iter().map(|m| m.rss).collect();
    rss.sort_unstable();
    let peak = *rss.last().expect("not empty");
    let median = rss[(rss.len().div_ceil(2)).max(1) - 1];
    let last = samples.last().expect("not empty");
    let peak_at = samples.iter().max_by_key(|m| m.rss).expect("not empty");
    println!();
    println!("{:<44} {:>10} {:>10}", "memory", "MB", "MiB");
    let row = |label: &str, bytes: u64| {
        println!(
            "{label:<44} {:>10.2} {:>10.2}",
            bytes as f64 / 1e6,
            bytes as f64 / (1024.0 * 1024.0)
        );
    };
    row(&format!("VmRSS peak ({} samples)", samples.len()), peak);
    row("VmRSS median", median);
    row("VmHWM (kernel's peak, last sample)", last.hwm);
    row("  RssAnon at the peak sample", peak_at.anon);
    row("  RssFile at the peak sample", peak_at.file);
    if peak_at.shmem > 0 {
        row("  RssShmem at the peak sample", peak_at.shmem);
    }
    println!(
        "threads: {} at the peak sample, at most {}",
        peak_at.threads,
        samples.iter().map(|m| m.threads).max().unwrap_or(0)
    );
    println!();
    println!(
        "goal peak RSS <= {:.0} MB: {} (peak {:.2} MB, median {:.2} MB)",
        GOAL_RSS_BYTES as f64 / 1e6,
        verdict(peak <= GOAL_RSS_BYTES),
        peak as f64 / 1e6,
        median as f64 / 1e6
    );
    Ok(failed.is_empty())
}

// ---------------------------------------------------------------------------
// 3. Gateway round trips and timeouts

/// Goal for a presence run (one gateway round trip, op 8) against the
/// sandbox, which answers at once.
const GOAL_PRESENCE_P99_MS: f64 = 50.0;
/// Goal for how late a command probe's timeout ends (its gateway proof
/// included) after its deadline.
const GOAL_TIMEOUT_LATE_P99_MS: f64 = 20.0;
/// The silent command probes' timeout in part 3.
const SILENT_TIMEOUT: Duration = Duration::from_millis(500);

async fn gateway_round_trips(sandbox: &Sandbox, args: &Args) -> anyhow::Result<bool> {
    let prober = sandbox.account(PROBER).context("no prober account")?;
    let d = sandbox.description();
    let bot = &sandbox.account(BOT).context("no bot account")?.id;
    let guild = &d.guilds[0].id;
    let silent_channels = args.channels.min(10);
    let mut yaml = format!(
        "target: {{name: twi-bot-shard, user_id: \"{bot}\"}}\n\
         discord:\n  token_env: BENCH_UNUSED\n  api_base: {}\n  send_interval: 1s\n\
         probes:\n  - name: presence\n    every: 1m\n    timeout: 5s\n    presence:\n      \
         guilds: [\"{guild}\"]\n",
        serde_json::to_string(&d.rest_base)?
    );
    for i in 0..silent_channels {
        let channel = sandbox
            .channel_id(&channel_name(i))
            .with_context(|| format!("channel {} missing", channel_name(i)))?;
        yaml.push_str(&format!(
            "  - name: silent-{i:03}\n    every: 1m\n    timeout: {}ms\n    command:\n      \
             channel_id: \"{channel}\"\n      guild_id: \"{guild}\"\n      message: \"!nosuchcommand\"\n",
            SILENT_TIMEOUT.as_millis()
        ));
    }
    let config = Config::from_yaml(&yaml, Path::new("bench_gateway.yaml"))
        .map_err(|e| anyhow!("{e}\n{yaml}"))?;
    let (session, mut probes) = connect_probes(&config, &prober.token).await?;
    let presence = probes.remove(0);

    println!();
    println!(
        "3. Gateway round trips: {} presence runs one after another (20 ms apart), then {} runs of \
         {silent_channels} silent command probes (timeout {} ms, one channel each, in rounds)",
        args.gateway_runs,
        args.gateway_runs,
        SILENT_TIMEOUT.as_millis()
    );
    let mut presence_ms = Vec::new();
    let mut all_ok = true;
    for _ in 0..args.gateway_runs {
        let r = run_once(presence.clone()).await;
        if r.outcome != Outcome::Success {
            println!("  NOT A SUCCESS: presence {}: {}", r.outcome, r.detail);
            all_ok = false;
        }
        presence_ms.push(ms(r.duration));
        // Pacing between runs, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut late_ms = Vec::new();
    while late_ms.len() < args.gateway_runs {
        let mut tasks = tokio::task::JoinSet::new();
        for p in &probes {
            tasks.spawn(run_once(p.clone()));
        }
        while let Some(r) = tasks.join_next().await {
            let r = r?;
            if r.outcome != Outcome::Timeout {
                println!("  NOT A TIMEOUT: {} {}: {}", r.probe, r.outcome, r.detail);
                all_ok = false;
                continue;
            }
            let timed = r.duration - r.observations.waited.unwrap_or_default();
            late_ms.push(ms(timed) - ms(SILENT_TIMEOUT));
        }
    }
    session.shutdown().await;
    println!();
    header();
    let presence = stats("presence run (one op 8 round trip)", presence_ms);
    let late = stats("timeout ended after its deadline by", late_ms);
    println!();
    println!(
        "goal presence p99 < {GOAL_PRESENCE_P99_MS:.0} ms: {} (p99 {:.3} ms)",
        verdict(presence.p99 < GOAL_PRESENCE_P99_MS),
        presence.p99
    );
    println!(
        "goal timeout late p99 <= {GOAL_TIMEOUT_LATE_P99_MS:.0} ms: {} (p99 {:.3} ms)",
        verdict(late.p99 <= GOAL_TIMEOUT_LATE_P99_MS),
        late.p99
    );
    Ok(all_ok)
}

/// The prober's session on the sandbox, and every configured probe on it.
async fn connect_probes(
    config: &Config,
    token: &str,
) -> anyhow::Result<(Arc<DiscordSession>, Vec<Arc<Probe>>)> {
    let session = Arc::new(
        DiscordSession::connect(config, &Secret::new(token.to_string()))
            .await
            .context("connecting the prober")?,
    );
    let probes = config
        .probes
        .iter()
        .map(|spec| {
            Probe::new(spec.clone(), Some(&session))
                .map(Arc::new)
                .map_err(|e| anyhow!("probe {}: {e}", spec.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((session, probes))
}

// ---------------------------------------------------------------------------
// Statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `to - from` in ms, negative when `to` is earlier.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => ms(d),
        None => -ms(from - to),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn header() {
    println!(
        "{:<46} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "ms (nearest rank)", "count", "min", "p50", "p90", "p99", "max"
    );
}

fn stats(label: &str, mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    if samples.is_empty() {
        println!("{label:<46} {:>6}", 0);
        return Stats {
            p50: f64::NAN,
            p99: f64::NAN,
        };
    }
    // Nearest rank: the smallest sample with at least p% of samples at or below it.
    let rank = |p: f64| {
        let r = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[r.clamp(1, samples.len()) - 1]
    };
    let (p50, p90, p99) = (rank(50.0), rank(90.0), rank(99.0));
    println!(
        "{label:<46} {:>6} {:>9.3} {p50:>9.3} {p90:>9.3} {p99:>9.3} {:>9.3}",
        samples.len(),
        samples[0],
        samples[samples.len() - 1],
    );
    Stats { p50, p99 }
}
