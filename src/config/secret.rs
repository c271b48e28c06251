//! The prober's Discord token: where it comes from, and a wrapper that never prints it.

use std::fmt;
use std::path::PathBuf;

/// Where the token is read from. A token written in the config file is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Env(name) => write!(f, "environment variable {name}"),
            TokenSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl TokenSource {
    /// Reads the token. The error names the variable or file, never the value.
    pub fn read(&self) -> Result<Secret, String> {
        let value = match self {
            TokenSource::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!(
                        "discord.token_env: environment variable {name} is not set"
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!(
                        "discord.token_env: environment variable {name} is not valid UTF-8"
                    ));
                }
            },
            TokenSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "discord.token_file: cannot read token file {}: {e}",
                    path.display()
                )
            })?,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("discord: the {self} is empty"));
        }
        Ok(Secret(value.to_string()))
    }

    /// Checks that the token can be read, without keeping it.
    pub fn check(&self) -> Result<(), String> {
        self.read().map(|_| ())
    }
}

/// A secret value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself, for the one place that must send it (the Discord client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s} {s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn missing_env_var_is_named() {
        let src = TokenSource::Env("TWI_PROBE_TEST_SURELY_UNSET_VAR".into());
        let err = src.read().unwrap_err();
        assert!(err.contains("TWI_PROBE_TEST_SURELY_UNSET_VAR"), "{err}");
    }

    #[test]
    fn token_file_is_read_and_trimmed_and_missing_file_named() {
        let dir = std::env::temp_dir().join(format!("twi-probe-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "abc.def\n").unwrap();
        assert_eq!(
            TokenSource::File(path.clone()).read().unwrap().expose(),
            "abc.def"
        );
        std::fs::write(&path, "  \n").unwrap();
        let err = TokenSource::File(path.clone()).read().unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let missing = dir.join("nope");
        let err = TokenSource::File(missing.clone()).read().unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
