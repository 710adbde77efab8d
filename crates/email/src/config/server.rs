//! `email.server`: what `email-server` needs to store and dispatch emails.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    duration,
    queue::bracket_ipv6,
    secret::{Secret, encode_userinfo, serialize_url},
    smtp::SmtpSection,
};

/// The dispatcher's settings.
///
/// The Go original's keys were `max-fails`, `max-time`, `batch`,
/// `database` and `smtp`; all are accepted unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Attempts before an email is `failed`. Defaults to `3`, as in the Go
    /// original.
    pub max_fails: u32,
    /// Age (from its due time) after which an unsent email is `expired`.
    /// Defaults to `1h`, as in the Go original.
    #[serde(with = "duration")]
    pub max_time: Duration,
    /// Emails claimed per round trip to the store. Defaults to `50`, the
    /// value in the Go original's README; its code fell back to `3`, which
    /// starves the connection pool.
    pub batch: usize,
    /// Where emails and their attempts are kept. Defaults to
    /// [`DatabaseConfig::default`] (SQLite in `./email.db`).
    #[serde(deserialize_with = "super::null_as_default")]
    pub database: DatabaseConfig,
    /// The relay. Defaults to none: emails are written as `.eml` files to
    /// [`outbox`](Self::outbox) instead, which is what a development
    /// machine wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSection>,
    /// Directory for `.eml` files when there is no `smtp` section.
    /// Defaults to `./outbox`.
    pub outbox: PathBuf,
    /// How long a claimed email stays reserved for its dispatcher; a
    /// dispatcher that dies frees its claims when this runs out. Defaults
    /// to `5m`: longer than the slowest SMTP session (RFC 5321 timeouts
    /// aside, a relay answers within seconds).
    #[serde(with = "duration")]
    pub lease: Duration,
    /// Emails sent concurrently by this process (`connections` is
    /// accepted too). Defaults to `4`.
    #[serde(alias = "connections")]
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_fails: 3,
            max_time: Duration::from_secs(60 * 60),
            batch: 50,
            database: DatabaseConfig::default(),
            smtp: None,
            outbox: PathBuf::from("./outbox"),
            lease: Duration::from_secs(5 * 60),
            workers: 4,
        }
    }
}

/// The store's engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    /// A SQLite file ([`DatabaseConfig::path`]): one server process. The
    /// default.
    #[default]
    #[serde(alias = "sqlite")]
    Sqlite3,
    /// PostgreSQL ([`DatabaseConfig::url`], or the Go original's `host`,
    /// `port`, `db`, `username`, `password`, `sslmode`): any number of
    /// server processes.
    #[serde(alias = "postgresql")]
    Postgres,
}

/// `email.server.database`.
///
/// The Go original read `engine` plus, for `sqlite3`, `path` and, for
/// `postgres`, `username`, `password`, `host`, `port`, `db` and `sslmode`;
/// all are accepted. (It also knew MySQL and MongoDB, which are not
/// supported here: they are rejected as unknown engines.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DatabaseConfig {
    /// `sqlite3` (or `sqlite`) or `postgres`. Defaults to `sqlite3`.
    pub engine: DatabaseEngine,
    /// The SQLite file. Defaults to `./email.db`, relative to the working
    /// directory, as the embedded queue's default.
    pub path: PathBuf,
    /// PostgreSQL URL, `postgres://user:password@host:5432/db`. Defaults to
    /// none; `EMAIL_DATABASE_URL` overrides it. When absent, one is built
    /// from the fields below. Shown with its password as `***`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_url"
    )]
    pub url: Option<Secret>,
    /// PostgreSQL host (Go original's key). Defaults to none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// PostgreSQL port (Go original's key). Defaults to none (5432).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// PostgreSQL database name (Go original's key). Defaults to none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    /// PostgreSQL user (Go original's key). Defaults to none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// PostgreSQL password (Go original's key). Defaults to none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// PostgreSQL `sslmode` (Go original's key, where it defaulted to
    /// `disable`). Defaults to none: the driver's default, `prefer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            engine: DatabaseEngine::Sqlite3,
            path: PathBuf::from("./email.db"),
            url: None,
            host: None,
            port: None,
            db: None,
            username: None,
            password: None,
            sslmode: None,
        }
    }
}

impl DatabaseConfig {
    /// The PostgreSQL URL: [`url`](Self::url) when set, else one built from
    /// the Go original's separate keys when `host` is set, else none.
    ///
    /// ```
    /// use email::config::{DatabaseConfig, DatabaseEngine, Secret};
    ///
    /// let db = DatabaseConfig {
    ///     engine: DatabaseEngine::Postgres,
    ///     host: Some("db".into()),
    ///     db: Some("mail".into()),
    ///     username: Some("app".into()),
    ///     password: Some(Secret::new("pw")),
    ///     ..DatabaseConfig::default()
    /// };
    /// assert_eq!(db.postgres_url().unwrap().expose(), "postgres://app:pw@db:5432/mail");
    /// ```
    pub fn postgres_url(&self) -> Option<Secret> {
        if let Some(url) = &self.url {
            return Some(url.clone());
        }
        let host = self.host.as_deref()?;
        let user = self.username.as_deref().map(encode_userinfo);
        let password = self.password.as_ref().map(|p| encode_userinfo(p.expose()));
        let auth = match (user, password) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (Some(u), None) => format!("{u}@"),
            (None, Some(p)) => format!(":{p}@"),
            (None, None) => String::new(),
        };
        let mut url = format!(
            "postgres://{auth}{}:{}/{}",
            bracket_ipv6(host),
            self.port.unwrap_or(5432),
            self.db.as_deref().unwrap_or_default()
        );
        if let Some(mode) = &self.sslmode {
            url.push_str("?sslmode=");
            url.push_str(mode);
        }
        Some(Secret::new(url))
    }
}
