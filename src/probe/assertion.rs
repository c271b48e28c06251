//! Assertions on an exporter's samples, written like a PromQL comparison:
//! `discord_gateway_connected >= 1`, `bot_rate_limit_remaining_ratio{bucket=~"global|.*"} > 0.1`.
//!
//! Hand-written rather than a PromQL crate: only a selector and a comparison
//! with a number are needed, and a full PromQL parser is a large dependency
//! for one line of grammar. Regex matchers are anchored, as in PromQL.
//! Every sample the selector matches must satisfy the comparison; a selector
//! that matches nothing is a failure (a missing metric is not a healthy one).

use std::fmt;

use regex::Regex;

use crate::exposition::Sample;

#[derive(Debug, Clone)]
pub struct Assertion {
    /// The text as written, for messages.
    pub text: String,
    metric: String,
    matchers: Vec<Matcher>,
    op: Comparison,
    threshold: f64,
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    kind: MatchKind,
}

#[derive(Debug, Clone)]
enum MatchKind {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Comparison {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Comparison::Eq => left == right,
            Comparison::Ne => left != right,
            Comparison::Lt => left < right,
            Comparison::Le => left <= right,
            Comparison::Gt => left > right,
            Comparison::Ge => left >= right,
        }
    }
}

impl fmt::Display for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Assertion {
    /// Parses `metric{label="value",...} OP number`.
    pub fn parse(text: &str) -> Result<Assertion, String> {
        let syntax = Regex::new(
            r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$",
        )
        .expect("static regex");
        let caps = syntax
            .captures(text)
            .ok_or("expected `metric{label=\"value\"} OP number` with OP one of == != < <= > >=")?;
        let matchers = match caps.get(2) {
            Some(m) => parse_matchers(m.as_str())?,
            None => vec![],
        };
        let op = match &caps[3] {
            "==" => Comparison::Eq,
            "!=" => Comparison::Ne,
            "<" => Comparison::Lt,
            "<=" => Comparison::Le,
            ">" => Comparison::Gt,
            _ => Comparison::Ge,
        };
        let threshold = caps[4]
            .parse::<f64>()
            .map_err(|_| format!("{:?} is not a number", &caps[4]))?;
        Ok(Assertion {
            text: text.trim().to_string(),
            metric: caps[1].to_string(),
            matchers,
            op,
            threshold,
        })
    }

    fn selects(&self, s: &Sample) -> bool {
        s.name == self.metric
            && self.matchers.iter().all(|m| {
                // An absent label matches as the empty string, as in PromQL.
                let value = s.label(&m.label).unwrap_or("");
                match &m.kind {
                    MatchKind::Equal(v) => value == v,
                    MatchKind::NotEqual(v) => value != v,
                    MatchKind::Regex(r) => r.is_match(value),
                    MatchKind::NotRegex(r) => !r.is_match(value),
                }
            })
    }

    /// `Ok` with how many samples were checked, or why it failed.
    pub fn check(&self, samples: &[Sample]) -> Result<usize, String> {
        let selected: Vec<&Sample> = samples.iter().filter(|s| self.selects(s)).collect();
        if selected.is_empty() {
            return Err(format!(
                "assertion `{}`: no sample of {} matches",
                self.text, self.metric
            ));
        }
        if let Some(bad) = selected
            .iter()
            .find(|s| !self.op.holds(s.value, self.threshold))
        {
            return Err(format!("assertion `{}` is false: {bad}", self.text));
        }
        Ok(selected.len())
    }
}

fn parse_matchers(text: &str) -> Result<Vec<Matcher>, String> {
    let one = Regex::new(
        r#"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)"#,
    )
    .expect("static regex");
    let mut rest = text.trim();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let caps = one
            .captures(rest)
            .ok_or_else(|| format!("invalid label matcher near {rest:?}"))?;
        let value = caps[3].replace("\\\"", "\"").replace("\\\\", "\\");
        let kind = match &caps[2] {
            "=" => MatchKind::Equal(value),
            "!=" => MatchKind::NotEqual(value),
            op => {
                let re = Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("invalid regex in label matcher: {e}"))?;
                if op == "=~" {
                    MatchKind::Regex(re)
                } else {
                    MatchKind::NotRegex(re)
                }
            }
        };
        out.push(Matcher {
            label: caps[1].to_string(),
            kind,
        });
        rest = rest[caps[0].len()..].trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::parse;

    fn samples() -> Vec<Sample> {
        parse(
            "discord_gateway_connected 1\n\
             bot_rate_limit_remaining_ratio{bucket=\"global\"} 0.8\n\
             bot_rate_limit_remaining_ratio{bucket=\"messages\"} 0.05\n",
        )
        .unwrap()
    }

    #[test]
    fn plain_comparison() {
        let s = samples();
        assert_eq!(
            Assertion::parse("discord_gateway_connected >= 1")
                .unwrap()
                .check(&s),
            Ok(1)
        );
        let err = Assertion::parse("discord_gateway_connected < 1")
            .unwrap()
            .check(&s)
            .unwrap_err();
        assert_eq!(
            err,
            "assertion `discord_gateway_connected < 1` is false: discord_gateway_connected = 1"
        );
    }

    #[test]
    fn every_selected_sample_must_hold() {
        let s = samples();
        let err = Assertion::parse("bot_rate_limit_remaining_ratio > 0.1")
            .unwrap()
            .check(&s)
            .unwrap_err();
        assert!(err.contains("bucket=\"messages\""), "{err}");
        assert_eq!(
            Assertion::parse("bot_rate_limit_remaining_ratio{bucket=\"global\"} > 0.1")
                .unwrap()
                .check(&s),
            Ok(1)
        );
        assert_eq!(
            Assertion::parse("bot_rate_limit_remaining_ratio{bucket!~\"mess.*\"} > 0.1")
                .unwrap()
                .check(&s),
            Ok(1)
        );
        assert_eq!(
            Assertion::parse("bot_rate_limit_remaining_ratio{bucket=~\"glob\"} > 0.1")
                .unwrap()
                .check(&s)
                .unwrap_err(),
            "assertion `bot_rate_limit_remaining_ratio{bucket=~\"glob\"} > 0.1`: no sample of bot_rate_limit_remaining_ratio matches"
        );
    }

    #[test]
    fn missing_metric_fails() {
        let err = Assertion::parse("nope == 1")
            .unwrap()
            .check(&samples())
            .unwrap_err();
        assert!(err.contains("no sample of nope"), "{err}");
    }

    #[test]
    fn bad_syntax_is_rejected() {
        assert!(Assertion::parse("discord_gateway_connected").is_err());
        assert!(Assertion::parse("x >= one").is_err());
        assert!(Assertion::parse("x{a=b} >= 1").is_err());
        assert!(Assertion::parse("x{a=~\"(\"} >= 1").is_err());
    }
}
