//! Configuration errors (the JSON path, what was expected, what was found)
//! and the names and values they show.

use std::fmt;

/// A configuration error: where (JSON path) and what (expected vs got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub msg: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, msg: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// `expected <what>, got <value>`.
    pub fn expected(path: impl Into<String>, what: &str, got: impl fmt::Display) -> Self {
        ConfigError::new(path, format!("expected {what}, got {got}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "invalid config: {}", self.msg)
        } else {
            write!(f, "invalid config at {}: {}", self.path, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Renders a user string for an error message: quoted, escaped, truncated.
pub fn show_str(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    format!("{out:?}")
}

/// Route names appear in metric names, logs and shared-data keys.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub const NAME_EXPECTED: &str =
    "a name of 1 to 64 characters from [A-Za-z0-9_-] (it is used in metric names)";
