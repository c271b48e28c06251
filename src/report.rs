//! `probe run` output (text or JSON lines) and its Nagios-style exit status.

use std::time::Duration;

use serde_json::json;

use crate::probe::{Outcome, ProbeResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Exit status, following the Nagios plugin convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One line for a result.
pub fn format_result(format: OutputFormat, r: &ProbeResult) -> String {
    match format {
        OutputFormat::Text => {
            let detail = if r.outcome == Outcome::Inconclusive {
                format!(
                    "{} — the prober could not run this probe; this says nothing about the target",
                    r.detail
                )
            } else {
                r.detail.clone()
            };
            let detail = match r.observations.waited {
                Some(w) => format!("{detail} (waited {} for its turn first)", format_seconds(w)),
                None => detail,
            };
            format!(
                "{:<24} {:<9} {:<12} {:>10}  {}",
                r.probe,
                r.kind,
                r.outcome.as_str(),
                format_seconds(r.duration),
                detail
            )
        }
        OutputFormat::Json => json!({
            "type": "result",
            "probe": r.probe,
            "kind": r.kind,
            "outcome": r.outcome,
            "latency_seconds": r.latency().map(|d| d.as_secs_f64()),
            "duration_seconds": r.duration.as_secs_f64(),
            "detail": r.detail,
            "request_id": r.request_id,
            "timestamp": humantime::format_rfc3339_millis(r.started_at).to_string(),
        })
        .to_string(),
    }
}

/// Per-probe statistics over several runs, as `ping` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub probe: String,
    pub kind: &'static str,
    pub runs: usize,
    pub success: usize,
    /// The runs that count against the target, by outcome.
    pub failure: usize,
    pub timeout: usize,
    pub unreachable: usize,
    pub inconclusive: usize,
    /// Latencies of successful runs, sorted.
    pub latencies: Vec<Duration>,
}

impl Summary {
    pub fn of(results: &[ProbeResult]) -> Option<Summary> {
        let first = results.first()?;
        let mut latencies: Vec<Duration> = results.iter().filter_map(|r| r.latency()).collect();
        latencies.sort();
        let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
        Some(Summary {
            probe: first.probe.clone(),
            kind: first.kind,
            runs: results.len(),
            success: count(Outcome::Success),
            failure: count(Outcome::Failure),
            timeout: count(Outcome::Timeout),
            unreachable: count(Outcome::Unreachable),
            inconclusive: count(Outcome::Inconclusive),
            latencies,
        })
    }

    /// Runs that count against the target: failure, timeout, unreachable.
    pub fn failed(&self) -> usize {
        self.failure + self.timeout + self.unreachable
    }

    /// Success rate over conclusive runs; `None` when every run was inconclusive.
    pub fn success_rate(&self) -> Option<f64> {
        let conclusive = self.success + self.failed();
        (conclusive > 0).then(|| self.success as f64 / conclusive as f64)
    }

    /// Nearest-rank percentile of successful latencies.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }

    /// This probe's status: OK when every run succeeded; CRITICAL when runs
    /// failed and none succeeded; WARNING when some failed and some succeeded,
    /// or some were inconclusive; UNKNOWN when every run was inconclusive.
    pub fn status(&self) -> Status {
        if self.success + self.failed() == 0 {
            Status::Unknown
        } else if self.failed() > 0 && self.success == 0 {
            Status::Critical
        } else if self.failed() > 0 || self.inconclusive > 0 {
            Status::Warning
        } else {
            Status::Ok
        }
    }

    pub fn format(&self, format: OutputFormat) -> String {
        let pct = |p| self.percentile(p).map(|d| d.as_secs_f64());
        match format {
            OutputFormat::Text => {
                let rate = match self.success_rate() {
                    Some(r) => format!("{:.1}% success", r * 100.0),
                    None => "no conclusive run".to_string(),
                };
                let mut s = format!(
                    "--- {} ({}): {} runs, {} success, {} failure, {} timeout, {} unreachable, {} inconclusive, {rate}",
                    self.probe,
                    self.kind,
                    self.runs,
                    self.success,
                    self.failure,
                    self.timeout,
                    self.unreachable,
                    self.inconclusive
                );
                if let (Some(min), Some(max)) = (self.latencies.first(), self.latencies.last()) {
                    let p = |q| self.percentile(q).map(format_seconds).unwrap_or_default();
                    s.push_str(&format!(
                        "\n    latency min/p50/p90/p99/max = {}/{}/{}/{}/{}",
                        format_seconds(*min),
                        p(50.0),
                        p(90.0),
                        p(99.0),
                        format_seconds(*max)
                    ));
                }
                s
            }
            OutputFormat::Json => json!({
                "type": "summary",
                "probe": self.probe,
                "kind": self.kind,
                "runs": self.runs,
                "success": self.success,
                "failed": self.failed(),
                "failure": self.failure,
                "timeout": self.timeout,
                "unreachable": self.unreachable,
                "inconclusive": self.inconclusive,
                "success_rate": self.success_rate(),
                "latency_seconds": {
                    "min": self.latencies.first().map(|d| d.as_secs_f64()),
                    "p50": pct(50.0),
                    "p90": pct(90.0),
                    "p99": pct(99.0),
                    "max": self.latencies.last().map(|d| d.as_secs_f64()),
                },
                "status": format!("{:?}", self.status()).to_uppercase(),
            })
            .to_string(),
        }
    }
}

/// The exit status of a whole `probe run`: CRITICAL if any probe is
/// critical; UNKNOWN if nothing conclusive was learnt at all; WARNING if
/// anything else was not a clean success; OK otherwise.
pub fn overall_status(summaries: &[Summary]) -> Status {
    let statuses: Vec<Status> = summaries.iter().map(Summary::status).collect();
    if statuses.contains(&Status::Critical) {
        Status::Critical
    } else if statuses.is_empty() || statuses.iter().all(|s| *s == Status::Unknown) {
        Status::Unknown
    } else if statuses.iter().any(|s| *s != Status::Ok) {
        Status::Warning
    } else {
        Status::Ok
    }
}

/// Milliseconds below 10 s, seconds above: `12.3ms`, `1534.0ms`, `12.50s`.
pub fn format_seconds(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10_000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(success: usize, failed: usize, inconclusive: usize) -> Summary {
        Summary {
            probe: "p".into(),
            kind: "http",
            runs: success + failed + inconclusive,
            success,
            failure: failed,
            timeout: 0,
            unreachable: 0,
            inconclusive,
            latencies: (1..=success as u64).map(Duration::from_millis).collect(),
        }
    }

    #[test]
    fn probe_status_follows_nagios() {
        assert_eq!(summary(3, 0, 0).status(), Status::Ok);
        assert_eq!(summary(0, 1, 0).status(), Status::Critical);
        assert_eq!(summary(2, 1, 0).status(), Status::Warning);
        assert_eq!(summary(2, 0, 1).status(), Status::Warning);
        assert_eq!(summary(0, 0, 2).status(), Status::Unknown);
        assert_eq!(summary(0, 1, 2).status(), Status::Critical);
    }

    #[test]
    fn overall_status_takes_the_worst_with_unknown_only_when_blind() {
        assert_eq!(overall_status(&[summary(1, 0, 0)]), Status::Ok);
        assert_eq!(
            overall_status(&[summary(1, 0, 0), summary(0, 1, 0)]),
            Status::Critical
        );
        assert_eq!(
            overall_status(&[summary(1, 0, 0), summary(0, 0, 1)]),
            Status::Warning
        );
        assert_eq!(
            overall_status(&[summary(0, 0, 1), summary(0, 0, 1)]),
            Status::Unknown
        );
        assert_eq!(overall_status(&[]), Status::Unknown);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = summary(100, 0, 0);
        assert_eq!(s.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(s.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(
            summary(1, 0, 0).percentile(1.0),
            Some(Duration::from_millis(1))
        );
        assert_eq!(summary(0, 1, 0).percentile(50.0), None);
    }
}
