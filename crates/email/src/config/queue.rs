//! `email.queue.<name>`: where applications put emails and the server takes
//! them from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::secret::{Secret, encode_userinfo, serialize_url};

/// Which queue engine carries emails from applications to `email-server`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueEngine {
    /// A SQLite file on this machine ([`QueueConfig::path`]): one host,
    /// no extra service. The default.
    #[default]
    #[serde(alias = "sqlite", alias = "sqlite3")]
    Embedded,
    /// A Redis stream ([`QueueConfig::host`], [`port`](QueueConfig::port),
    /// [`db`](QueueConfig::db), [`name`](QueueConfig::name), or
    /// [`url`](QueueConfig::url)): many application servers, many
    /// dispatchers.
    Redis,
}

/// One queue, e.g. `email.queue.default`.
///
/// The Go original's keys were `engine` (only `redis`, and required),
/// `host`, `port`, `db` and `name`; all are accepted unchanged. `url`,
/// `password` and `path` are new.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct QueueConfig {
    /// `embedded` or `redis`. Defaults to `embedded`.
    pub engine: QueueEngine,
    /// Redis host. Defaults to `localhost`.
    pub host: String,
    /// Redis port. Defaults to `6379`.
    pub port: u16,
    /// Redis database number. Defaults to `0`.
    pub db: u32,
    /// Redis key prefix of the stream and its consumer group. Defaults to
    /// `email` (the Go original had no default and refused to start).
    pub name: String,
    /// A full Redis URL (`redis://[user][:password]@host:port/db`,
    /// `rediss://` for TLS); when set it wins over `host`, `port`, `db` and
    /// `password`. Defaults to none. Shown with its password as `***`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_url"
    )]
    pub url: Option<Secret>,
    /// Redis password (`AUTH`). Defaults to none; `EMAIL_REDIS_PASSWORD`
    /// overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// The SQLite file of the embedded engine. Defaults to `./email.db`,
    /// relative to the working directory: the same file as the server's
    /// default store, so that on one machine intake is a no-op.
    pub path: PathBuf,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            engine: QueueEngine::Embedded,
            host: "localhost".to_owned(),
            port: 6379,
            db: 0,
            name: "email".to_owned(),
            url: None,
            password: None,
            path: PathBuf::from("./email.db"),
        }
    }
}

impl QueueConfig {
    /// The Redis connection URL: [`url`](Self::url) when set, else one built
    /// from `host`, `port`, `db` and `password`.
    ///
    /// ```
    /// use email::config::{QueueConfig, Secret};
    ///
    /// let q = QueueConfig { password: Some(Secret::new("p@ss")), ..QueueConfig::default() };
    /// assert_eq!(q.redis_url().expose(), "redis://:p%40ss@localhost:6379/0");
    /// ```
    pub fn redis_url(&self) -> Secret {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let auth = match &self.password {
            Some(pw) if !pw.is_empty() => format!(":{}@", encode_userinfo(pw.expose())),
            _ => String::new(),
        };
        let host = bracket_ipv6(&self.host);
        Secret::new(format!("redis://{auth}{host}:{}/{}", self.port, self.db))
    }
}

/// `::1` must be written `[::1]` in a URL's authority.
pub(super) fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}
