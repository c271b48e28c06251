//! The `exporter` probe: reads the bot's Prometheus exporter and checks its
//! uptime, notices restarts, and evaluates assertions on its samples.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    Check, Outcome, classify_send_error, describe_http_error, off_runtime, read_body,
    shared_http_client,
};
use crate::config::ExporterSpec;
use crate::exposition;

/// Parses an exporter's body; the error is a `failure`'s detail.
fn parse_body(body: &[u8]) -> Result<Vec<exposition::Sample>, String> {
    let text =
        std::str::from_utf8(body).map_err(|e| format!("exporter output is not UTF-8 text: {e}"))?;
    exposition::parse(text)
        .map_err(|e| format!("exporter output is not Prometheus text format: {e}"))
}

/// A start time that moves forward by less than this is jitter, not a
/// restart: prometheus_client derives it from /proc and it can wobble.
const RESTART_TOLERANCE_SECONDS: f64 = 1.0;

#[derive(Debug)]
pub struct ExporterProbe {
    spec: ExporterSpec,
    client: reqwest::Client,
    /// The start time seen by the previous run that read one.
    last_start_time: Mutex<Option<f64>>,
}

impl ExporterProbe {
    pub fn new(spec: ExporterSpec) -> Result<Self, String> {
        // Exporters are read where they are: redirects followed (reqwest's
        // default), as before the client was shared.
        let client = shared_http_client(true)?;
        Ok(ExporterProbe {
            spec,
            client,
            last_start_time: Mutex::new(None),
        })
    }

    pub async fn check(&self) -> Check {
        let response = match self
            .client
            .get(self.spec.url.clone())
            .header(reqwest::header::ACCEPT, "text/plain;version=0.0.4")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Check::new(
                    classify_send_error(&e),
                    format!("exporter: {}", describe_http_error(&e)),
                );
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Check::new(
                Outcome::Failure,
                format!("exporter answered HTTP {}", status.as_u16()),
            );
        }
        let body = match read_body(response, self.spec.max_body_size).await {
            Ok(b) => b,
            Err(e) => return Check::new(Outcome::Failure, format!("exporter: {}", e.detail())),
        };
        let now = SystemTime::now();
        match off_runtime(move || parse_body(&body)).await {
            Ok(parsed) => self.evaluate(parsed, now),
            Err(e) => Check::new(Outcome::Inconclusive, e),
        }
    }

    /// Judges an exporter body, parsed, read at `now`.
    fn evaluate(&self, parsed: Result<Vec<exposition::Sample>, String>, now: SystemTime) -> Check {
        let samples = match parsed {
            Ok(s) => s,
            Err(e) => return Check::new(Outcome::Failure, e),
        };
        let metric = &self.spec.start_time_metric;
        let Some(start) = samples.iter().find(|s| &s.name == metric) else {
            return Check::new(
                Outcome::Failure,
                format!("metric {metric} is missing from the exporter output"),
            );
        };
        let start_time = start.value;
        if !start_time.is_finite() || start_time <= 0.0 {
            return Check::new(
                Outcome::Failure,
                format!("metric {metric} has an impossible value {start_time}"),
            );
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // A start time in the future (clock skew) reads as "just started".
        let uptime = (now_secs - start_time).max(0.0);

        let restarted = {
            let mut last = self
                .last_start_time
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let restarted = last.is_some_and(|prev| start_time > prev + RESTART_TOLERANCE_SECONDS);
            *last = Some(start_time);
            restarted
        };

        let mut check = self.judge(&samples, uptime, restarted);
        check.observations.target_uptime_seconds = Some(uptime);
        check.observations.target_restarts = u64::from(restarted);
        check
    }

    fn judge(&self, samples: &[exposition::Sample], uptime: f64, restarted: bool) -> Check {
        let uptime_text = humantime::format_duration(Duration::from_secs(uptime as u64));
        let restart_note = if restarted {
            " (restarted since the last run)"
        } else {
            ""
        };
        if let Some(min) = self.spec.min_uptime
            && uptime < min.as_secs_f64()
        {
            return Check::new(
                Outcome::Failure,
                format!(
                    "uptime {uptime_text} is below the minimum {}{restart_note}",
                    humantime::format_duration(min)
                ),
            );
        }
        let mut failures = Vec::new();
        for assertion in &self.spec.assertions {
            if let Err(why) = assertion.check(samples) {
                failures.push(why);
            }
        }
        if let Some(first) = failures.first() {
            let more = match failures.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Check::new(Outcome::Failure, format!("{first}{more}"));
        }
        let assertions = match self.spec.assertions.len() {
            0 => String::new(),
            1 => ", 1 assertion true".to_string(),
            n => format!(", {n} assertions true"),
        };
        Check::new(
            Outcome::Success,
            format!("uptime {uptime_text}{assertions}{restart_note}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::assertion::Assertion;

    fn probe(min_uptime: Option<Duration>, assertions: &[&str]) -> ExporterProbe {
        ExporterProbe::new(ExporterSpec {
            url: "http://127.0.0.1:1/metrics".parse().unwrap(),
            min_uptime,
            start_time_metric: "process_start_time_seconds".into(),
            assertions: assertions
                .iter()
                .map(|a| Assertion::parse(a).unwrap())
                .collect(),
            max_body_size: crate::config::DEFAULT_MAX_BODY_SIZE,
        })
        .unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn restart_is_noticed_once_and_jitter_ignored() {
        let p = probe(None, &[]);
        let c = p.evaluate(parse_body(b"process_start_time_seconds 1000\n"), at(5000));
        assert_eq!(c.outcome, Outcome::Success);
        assert_eq!(c.observations.target_restarts, 0);
        assert_eq!(c.observations.target_uptime_seconds, Some(4000.0));
        let c = p.evaluate(parse_body(b"process_start_time_seconds 1000.4\n"), at(5010));
        assert_eq!(c.observations.target_restarts, 0, "jitter is not a restart");
        let c = p.evaluate(parse_body(b"process_start_time_seconds 4990\n"), at(5020));
        assert_eq!(c.observations.target_restarts, 1);
        assert!(c.detail.contains("restarted"), "{}", c.detail);
        let c = p.evaluate(parse_body(b"process_start_time_seconds 4990\n"), at(5030));
        assert_eq!(c.observations.target_restarts, 0);
    }

    #[test]
    fn future_start_time_reads_as_zero_uptime() {
        let c =
            probe(None, &[]).evaluate(parse_body(b"process_start_time_seconds 6000\n"), at(5000));
        assert_eq!(c.observations.target_uptime_seconds, Some(0.0));
    }
}
