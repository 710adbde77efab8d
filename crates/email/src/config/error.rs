//! [`ConfigError`]: every way loading a configuration can fail, each naming
//! where to look.

use std::{fmt, io, path::PathBuf};

/// A configuration that could not be read, parsed or accepted.
///
/// Every message names the source (a file, or "built-in defaults"), the key
/// as a dotted path (`email.server.max-time`) and, for parse errors, the
/// line and column, e.g.
/// `email.yaml:7:5: email.server.max-fail: unknown field `max-fail`, expected one of …`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The YAML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{}", ParseDisplay { source_name, key, line: *line, column: *column, message })]
    Parse {
        /// The file name (or the name given to [`Config::from_yaml_str`](super::Config::from_yaml_str)).
        source_name: String,
        /// The dotted key path, e.g. `email.server.smtp.port`; empty at the root.
        key: String,
        /// 1-based line, when known.
        line: Option<u64>,
        /// 1-based column, when known.
        column: Option<u64>,
        /// What is wrong, e.g. ``unknown field `max-fail`, expected one of …``.
        message: String,
    },
    /// The values parse but do not make a working configuration.
    #[error("{source_name}: {key}: {message}")]
    Invalid {
        /// Where the configuration came from.
        source_name: String,
        /// The dotted key path.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An environment override could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable, e.g. `EMAIL_SMTP_PORT`.
        var: String,
        /// What is wrong with its value.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key path the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Env { .. } => None,
        }
    }

    /// The 1-based line and column, for parse errors that have them.
    pub fn location(&self) -> Option<(u64, u64)> {
        match self {
            ConfigError::Parse {
                line: Some(line),
                column: Some(column),
                ..
            } => Some((*line, *column)),
            _ => None,
        }
    }

    pub(super) fn invalid(source_name: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn env(var: &str, message: impl Into<String>) -> Self {
        ConfigError::Env {
            var: var.to_owned(),
            message: message.into(),
        }
    }

    /// Builds a parse error from serde-saphyr's error and the key path that
    /// serde_path_to_error tracked up to it.
    pub(super) fn parse(source_name: &str, path: &str, err: &serde_saphyr::Error) -> Self {
        use serde_saphyr::MessageFormatter as _;

        let location = err.location().filter(|l| l.line() > 0);
        // The formatter gives the bare message; the location is ours to place.
        let message = serde_saphyr::UserMessageFormatter
            .format_message(err.without_snippet())
            .into_owned();
        // Keys come from the user's file: keep control characters out of
        // terminals and logs.
        let message = if message.chars().any(char::is_control) {
            message.escape_debug().to_string()
        } else {
            plain_number_message(message)
        };
        ConfigError::Parse {
            source_name: source_name.to_owned(),
            key: clean_path(path),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            message,
        }
    }
}

/// "invalid u16" is Rust speaking; say what a YAML author can act on.
fn plain_number_message(message: String) -> String {
    let max = match message.as_str() {
        "invalid u8" => u64::from(u8::MAX),
        "invalid u16" => u64::from(u16::MAX),
        "invalid u32" => u64::from(u32::MAX),
        "invalid u64" => u64::MAX,
        _ => return message,
    };
    format!("expected a whole number from 0 to {max}")
}

/// serde_path_to_error prints the root as `.` and a key it could not read
/// (a duplicate) as `?`; neither helps a reader.
fn clean_path(path: &str) -> String {
    let mut path = path;
    while let Some(stripped) = path.strip_suffix(".?") {
        path = stripped;
    }
    match path {
        "." | "?" => String::new(),
        _ => path.to_owned(),
    }
}

struct ParseDisplay<'a> {
    source_name: &'a str,
    key: &'a str,
    line: Option<u64>,
    column: Option<u64>,
    message: &'a str,
}

impl fmt::Display for ParseDisplay<'_> {
    /// `file:line:column: key: message`, the shape editors and CI logs link.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.source_name)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}")?,
            (Some(line), None) => write!(f, ":{line}")?,
            _ => {}
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}
