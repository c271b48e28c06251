//! `probe run`: run the selected probes now, print each result, summarise.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, Secret};
use crate::discord::{ConnectError, DiscordSession};
use crate::metrics::Metrics;
use crate::probe::{Probe, ProbeResult, run_once};
use crate::report::{self, OutputFormat, Status, Summary};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Probe names to run; all when empty.
    pub probes: Vec<String>,
    /// Runs per probe.
    pub count: u32,
    /// Pause between two runs of the same probe; `None`: [`default_interval`].
    pub interval: Option<Duration>,
    pub format: OutputFormat,
    /// Where to write the metrics of this run (Prometheus text format), e.g.
    /// for node_exporter's textfile collector.
    pub metrics_file: Option<PathBuf>,
}

/// Runs the probes and prints to `out`. `Err` is a problem that stopped the
/// run before any probe ran (unknown probe name, missing secret), to be
/// reported as UNKNOWN.
pub async fn run(
    config: &Config,
    options: &RunOptions,
    out: &mut (dyn Write + Send),
) -> Result<Status, String> {
    run_with_token(config, options, None, out).await
}

/// As [`run`], with the prober's token given directly (the sandbox's)
/// instead of read from the environment or a file.
pub async fn run_with_token(
    config: &Config,
    options: &RunOptions,
    token: Option<Secret>,
    out: &mut (dyn Write + Send),
) -> Result<Status, String> {
    let selected = select(config, &options.probes)?;
    let mut session = None;
    let mut unavailable = None;
    if selected.iter().any(|p| p.kind.needs_discord()) {
        let token = match token {
            Some(t) => t,
            None => config.discord_token()?,
        };
        match DiscordSession::connect(config, &token).await {
            Ok(s) => session = Some(Arc::new(s)),
            // A wrong token or intent is a set-up error the operator must fix.
            Err(e @ (ConnectError::InvalidToken(_) | ConnectError::DisallowedIntents(..))) => {
                return Err(e.to_string());
            }
            // Discord unreachable: the Discord probes cannot say anything.
            Err(e) => {
                let reason = format!("{e}; the bot was not probed");
                writeln!(out, "note: {reason}").map_err(|e| format!("cannot write output: {e}"))?;
                unavailable = Some(reason);
            }
        }
    }
    let probes: Vec<Arc<Probe>> = selected
        .into_iter()
        .map(|spec| {
            let name = spec.display_name();
            match (&unavailable, spec.kind.needs_discord()) {
                (Some(reason), true) => Ok(Probe::unavailable(spec.clone(), reason.clone())),
                _ => Probe::new(spec.clone(), session.as_ref()),
            }
            .map(Arc::new)
            .map_err(|e| format!("probe {name}: {e}"))
        })
        .collect::<Result<_, _>>()?;

    let interval = options
        .interval
        .unwrap_or_else(|| default_interval(config, &probes));
    let metrics = Arc::new(Metrics::new(config));
    let follower = session.as_ref().map(|s| metrics.follow_discord(config, s));
    let (tx, mut rx) = mpsc::unbounded_channel::<ProbeResult>();
    let mut tasks = tokio::task::JoinSet::new();
    for probe in &probes {
        let probe = probe.clone();
        let tx = tx.clone();
        let count = options.count.max(1);
        tasks.spawn(async move {
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                if tx.send(run_once(probe.clone()).await).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);

    let mut by_probe: Vec<Vec<ProbeResult>> = vec![Vec::new(); probes.len()];
    while let Some(result) = rx.recv().await {
        writeln!(out, "{}", report::format_result(options.format, &result))
            .map_err(|e| format!("cannot write output: {e}"))?;
        let index = probes
            .iter()
            .position(|p| p.spec.display_name() == result.probe)
            .expect("results come from the selected probes");
        metrics.record(&probes[index].spec, &result);
        by_probe[index].push(result);
    }
    while tasks.join_next().await.is_some() {}

    let summaries: Vec<Summary> = by_probe.iter().filter_map(|r| Summary::of(r)).collect();
    if options.count > 1 {
        for s in &summaries {
            writeln!(out, "{}", s.format(options.format))
                .map_err(|e| format!("cannot write output: {e}"))?;
        }
    }
    drop(probes);
    if let Some(f) = follower {
        f.abort();
    }
    if let Some(s) = &session {
        s.shutdown().await;
    }
    if let Some(path) = &options.metrics_file {
        write_atomically(path, &metrics.render())
            .map_err(|e| format!("cannot write metrics to {}: {e}", path.display()))?;
    }
    Ok(report::overall_status(&summaries))
}

/// `--interval`'s default: 1 s, or the channels' send budget
/// (`discord.send_interval`) when a command probe runs and it is longer, so
/// that a run does not first wait for the budget its previous run used.
pub fn default_interval(config: &Config, probes: &[Arc<Probe>]) -> Duration {
    let one_second = Duration::from_secs(1);
    let sends = probes
        .iter()
        .any(|p| matches!(p.spec.kind, crate::config::ProbeKind::Command(_)));
    match &config.discord {
        Some(d) if sends => d.send_interval.max(one_second),
        _ => one_second,
    }
}

/// Checks the `--probe` names before anything starts (such as `--sandbox`'s
/// stand-in), so a typo is reported at once.
pub fn check_selection(config: &Config, names: &[String]) -> Result<(), String> {
    select(config, names).map(|_| ())
}

fn select<'a>(
    config: &'a Config,
    names: &[String],
) -> Result<Vec<&'a crate::config::ProbeSpec>, String> {
    if names.is_empty() {
        return Ok(config.probes.iter().collect());
    }
    let mut selected = Vec::new();
    for name in names {
        let matching: Vec<&crate::config::ProbeSpec> =
            config.probes.iter().filter(|p| &p.name == name).collect();
        if matching.is_empty() {
            let mut known: Vec<&str> = config.probes.iter().map(|p| p.name.as_str()).collect();
            known.dedup();
            return Err(format!(
                "{}: no probe named {name:?} (configured: {})",
                config.source.display(),
                known.join(", ")
            ));
        }
        selected.extend(matching);
    }
    Ok(selected)
}

/// Writes through a temporary file in the same directory, synced to disk
/// before the rename, so a reader (such as the textfile collector) never
/// sees half a file, not even after a crash. The temporary name is unique,
/// so two writers do not share it.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    // NamedTempFile's own 0600 would hide the file from a textfile
    // collector running as another user: create it as fs::write would
    // (0666 less the umask).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_atomically;

    #[test]
    fn the_metrics_file_is_replaced_whole_with_ordinary_permissions_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.prom");
        std::fs::write(&path, "old\n").unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("probe.prom")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let plain = dir.path().join("plain");
            std::fs::write(&plain, "x").unwrap();
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode(&path), mode(&plain), "as fs::write would create it");
        }
    }
}
