//! Configuration errors that point at the file, line, column and field path.

use std::fmt;

/// One problem in a configuration file.
///
/// Displayed as `probes.yaml:14:14: probes[2].timeout: invalid duration "5 parsecs"`.
/// `line` and `column` are 1-based; 0 means the position is not known (for
/// example when the file cannot be read at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Dotted path of the offending field, e.g. `probes[2].timeout`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", escape_controls(&self.path))?;
        }
        write!(f, ": {}", escape_controls(&self.message))
    }
}

/// Control characters (a newline or ESC inside a YAML key or value) are
/// shown escaped, so one error stays one line and never drives the terminal.
fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Every problem found in one configuration file, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let e = ConfigError {
            file: "probes.yaml".into(),
            line: 3,
            column: 1,
            path: "probes[0].na\nme".into(),
            message: "unknown field `a\u{1b}[31mb`".into(),
        };
        assert_eq!(
            e.to_string(),
            "probes.yaml:3:1: probes[0].na\\nme: unknown field `a\\u{1b}[31mb`"
        );
    }
}
