//! Helpers shared by the benchmarks in examples/ (each uses a part of
//! them, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use twi_sandbox::SandboxConfig;
use twi_sandbox::config::ChannelConfig;

/// Builds `target/release/probe` next to the running example (same target
/// directory, so `CARGO_TARGET_DIR` is honoured) and returns its path.
pub fn build_probe_binary(example: &str) -> anyhow::Result<PathBuf> {
    // The example is <target>/<profile>/examples/<example>.
    let exe = std::env::current_exe()?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("cannot find the target directory from this example's path")?
        .to_path_buf();
    eprintln!(
        "{example}: cargo build --release --bin probe (target dir {})",
        target_dir.display()
    );
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "probe"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release --bin probe failed");
    let bin = target_dir.join("release").join("probe");
    ensure!(bin.is_file(), "{} missing after the build", bin.display());
    Ok(bin)
}

/// One reading of /proc/<pid>/status, in bytes.
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub threads: u64,
}

/// The number after `name` on its line of a /proc file.
fn proc_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn read_mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // The kernel's "kB" is KiB.
    let kib = |name: &str| proc_field(&text, name).map(|kb| kb * 1024);
    Some(Mem {
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:")?,
        anon: kib("RssAnon:").unwrap_or(0),
        file: kib("RssFile:").unwrap_or(0),
        shmem: kib("RssShmem:").unwrap_or(0),
        threads: proc_field(&text, "Threads:").unwrap_or(0),
    })
}

/// Resident memory split from /proc/<pid>/smaps_rollup: (anonymous,
/// the rest: file-backed and shared memory), in bytes.
pub fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let (rss, anon) = (
        proc_field(&text, "Rss:")? * 1024,
        proc_field(&text, "Anonymous:")? * 1024,
    );
    Some((anon, rss.saturating_sub(anon)))
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows
/// in the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub fn channel_name(i: usize) -> String {
    format!("bench-{i:03}")
}

/// The default sandbox world plus `channels` benchmark channels, with the
/// message rate limits raised out of the way.
pub fn sandbox_with_channels(channels: usize) -> SandboxConfig {
    let mut cfg = SandboxConfig::default();
    cfg.rate_limits.messages_per_channel = u32::MAX;
    cfg.rate_limits.global_per_second = u32::MAX;
    for i in 0..channels {
        cfg.guilds[0].channels.push(ChannelConfig {
            name: channel_name(i),
            id: None,
            hidden_from: vec![],
            read_only_for: vec![],
        });
    }
    cfg
}
