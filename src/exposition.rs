//! A strict parser for the Prometheus text exposition format (0.0.4), as
//! Python's prometheus_client and others serve it.
//!
//! Written by hand on purpose: `prometheus-parse` silently drops lines it
//! cannot read and splits label values on `,` and `=`, so a garbled exporter
//! would look healthy and a label value with a comma would be misread; the
//! stricter `openmetrics-parser` is LGPL-3.0. A monitoring tool must say
//! *which* line is wrong, and the format is small: one sample per line,
//! `# HELP` / `# TYPE` comments, escaped label values.

use std::collections::HashMap;
use std::fmt;

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            write!(f, "{{{}}}", labels.join(","))?;
        }
        write!(f, " = {}", self.value)
    }
}

/// Why a body is not valid exposition text; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole exposition body. Comment lines are skipped, except that
/// a family's `# HELP` or `# TYPE` may appear once only; every other
/// non-blank line must be a valid sample, and no series may appear twice
/// (Prometheus rejects both). An empty body is an error.
pub fn parse(body: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    // (HELP or TYPE, family) → line; series → line.
    let mut declared: HashMap<(&str, &str), usize> = HashMap::new();
    let mut series: HashMap<(String, Vec<(String, String)>), usize> = HashMap::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        let number = i + 1;
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if let (Some(keyword @ ("HELP" | "TYPE")), Some(family)) = (words.next(), words.next())
                && let Some(first) = declared.insert((keyword, family), number)
            {
                return Err(ParseError {
                    line: number,
                    message: format!(
                        "a second {keyword} line for {family} (the first is on line {first})"
                    ),
                });
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let sample = parse_sample(line).map_err(|message| ParseError {
            line: number,
            message,
        })?;
        let mut labels = sample.labels.clone();
        labels.sort();
        if let Some(first) = series.insert((sample.name.clone(), labels), number) {
            return Err(ParseError {
                line: number,
                message: format!(
                    "the series {} again (first on line {first})",
                    series_name(&sample)
                ),
            });
        }
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(ParseError {
            line: 1,
            message: "no samples".into(),
        });
    }
    Ok(samples)
}

/// `name{a="b"}` without the value.
fn series_name(s: &Sample) -> String {
    if s.labels.is_empty() {
        return s.name.clone();
    }
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut cur = Cursor { rest: line };
    let name = cur.take_name(true).ok_or("expected a metric name")?;
    let labels = if cur.eat('{') {
        parse_labels(&mut cur)?
    } else {
        Vec::new()
    };
    let mut fields = cur.rest.split_whitespace();
    if !cur.rest.is_empty() && !cur.rest.starts_with([' ', '\t']) {
        return Err(format!("unexpected {:?} after the metric name", cur.rest));
    }
    let value = fields.next().ok_or("missing sample value")?;
    let value = parse_value(value).ok_or_else(|| format!("invalid sample value {value:?}"))?;
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("invalid timestamp {ts:?}"));
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(cur: &mut Cursor<'_>) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    loop {
        cur.skip_spaces();
        if cur.eat('}') {
            return Ok(labels);
        }
        let name = cur.take_name(false).ok_or("expected a label name")?;
        cur.skip_spaces();
        if !cur.eat('=') {
            return Err(format!("expected '=' after label {name}"));
        }
        cur.skip_spaces();
        let value = cur.take_quoted()?;
        labels.push((name.to_string(), value));
        cur.skip_spaces();
        if cur.eat(',') {
            continue;
        }
        if cur.eat('}') {
            return Ok(labels);
        }
        return Err("expected ',' or '}' in the label set".into());
    }
}

/// Go's ParseFloat spellings as the format allows: `NaN`, `+Inf`, `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "+inf" | "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    /// A metric name (colons allowed) or a label name.
    fn take_name(&mut self, metric: bool) -> Option<&'a str> {
        let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (metric && c == ':');
        let ok_rest = |c: char| ok_first(c) || c.is_ascii_digit();
        let first = self.rest.chars().next()?;
        if !ok_first(first) {
            return None;
        }
        let end = self
            .rest
            .find(|c: char| !ok_rest(c))
            .unwrap_or(self.rest.len());
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name)
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` escapes.
    fn take_quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err("expected '\"' to open a label value".into());
        }
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, other)) => {
                        // The format says other escapes are kept as written.
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated label value".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON_CLIENT: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1234.0
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.70000000012e+09
# HELP bot_commands_total Total commands processed
# TYPE bot_commands_total counter
bot_commands_total{command="help",success="True"} 3.0
bot_commands_created{command="help",success="True"} 1.7e+09
# TYPE bot_command_latency_seconds histogram
bot_command_latency_seconds_bucket{command="help",le="0.005"} 0.0
bot_command_latency_seconds_bucket{command="help",le="+Inf"} 3.0
weird{v="a,b=c \"q\" \\ \n"} NaN
with_ts 1 1700000000000
"#;

    #[test]
    fn parses_prometheus_client_output() {
        let samples = parse(PYTHON_CLIENT).unwrap();
        assert_eq!(samples.len(), 8);
        assert_eq!(samples[1].name, "process_start_time_seconds");
        assert_eq!(samples[1].value, 1.70000000012e9);
        assert_eq!(samples[2].label("command"), Some("help"));
        assert_eq!(samples[2].label("success"), Some("True"));
        assert_eq!(samples[5].label("le"), Some("+Inf"));
        assert_eq!(samples[6].label("v"), Some("a,b=c \"q\" \\ \n"));
        assert!(samples[6].value.is_nan());
        assert_eq!(samples[7].value, 1.0);
    }

    #[test]
    fn what_prometheus_rejects_is_an_error_naming_the_line() {
        let err = parse("# HELP a A\n# TYPE a gauge\na 1\n# HELP a again\na 2\n").unwrap_err();
        assert_eq!(err.line, 4);
        assert_eq!(
            err.message,
            "a second HELP line for a (the first is on line 1)"
        );
        let err = parse("# TYPE a gauge\na 1\n# TYPE a counter\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(
            err.message,
            "a second TYPE line for a (the first is on line 1)"
        );
        // The same series twice, labels in another order.
        let err = parse("b{x=\"1\",y=\"2\"} 1\nb{x=\"2\"} 1\nb{y=\"2\",x=\"1\"} 3\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(
            err.message,
            "the series b{y=\"2\",x=\"1\"} again (first on line 1)"
        );
        // Other comments may repeat.
        assert!(parse("# just a note\n# just a note\nc 1\n").is_ok());
    }

    #[test]
    fn garbage_names_the_line() {
        let err = parse("ok 1\n<html><body>502 Bad Gateway</body></html>\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.message, "expected a metric name");
        let err = parse("m{a=\"x\" 1\n").unwrap_err();
        assert_eq!(err.message, "expected ',' or '}' in the label set");
        let err = parse("m{a=\"x} 1\n").unwrap_err();
        assert_eq!(err.message, "unterminated label value");
        let err = parse("m one\n").unwrap_err();
        assert_eq!(err.message, "invalid sample value \"one\"");
        let err = parse("m 1 2 3\n").unwrap_err();
        assert_eq!(err.message, "unexpected \"3\" after the value");
        let err = parse("m-x 1\n").unwrap_err();
        assert_eq!(err.message, "unexpected \"-x 1\" after the metric name");
    }

    #[test]
    fn empty_body_has_no_samples() {
        assert_eq!(
            parse("# only comments\n\n").unwrap_err().message,
            "no samples"
        );
    }
}
