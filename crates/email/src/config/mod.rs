//! Configuration shared by applications (`email.buffer`, `email.queue`) and
//! `email-server` (`email.server`): YAML with the Go original's keys, plus
//! environment overrides for secrets.
//!
//! ```
//! use std::time::Duration;
//! use email::config::{Config, DatabaseEngine, QueueEngine, SmtpSecurity};
//!
//! let yaml = r#"
//! email:
//!   buffer: 0                    # 0: enqueue returns once the email is durable
//!   queue:
//!     default:
//!       engine: redis            # or: embedded (a SQLite file, the default)
//!       host: localhost
//!       port: 6379
//!       db: 0
//!       name: email          # url: redis://… wins over host/port/db
//!   server:
//!     max-fails: 3               # attempts before `failed`
//!     max-time: 1h               # age before `expired`
//!     batch: 50                  # emails claimed at once
//!     lease: 5m                  # how long a claim lasts
//!     workers: 4                 # concurrent sends
//!     outbox: ./outbox           # .eml files when there is no smtp section
//!     database:
//!       engine: postgres         # or: sqlite3 (path: ./email.db)
//!       url: postgres://mailer@db.internal/email
//!     smtp:
//!       host: smtp.example.com
//!       port: 465                # security: tls is implied; else starttls
//!       hello-name: app.example.com
//!       max-connections: 4
//!       ca-file: /etc/ssl/private-ca.pem
//!       auth:
//!         username: app@example.com
//!         password: from-the-environment-preferably
//!       timeouts:
//!         connect: 30s
//!         data-end: 10m
//! "#;
//!
//! let config = Config::from_yaml_str(yaml, "example.yaml")?;
//! assert_eq!(config.email.queue().engine, QueueEngine::Redis);
//! let server = &config.email.server;
//! assert_eq!(server.max_time, Duration::from_secs(3600));
//! assert_eq!(server.database.engine, DatabaseEngine::Postgres);
//! let smtp = server.smtp.as_ref().unwrap();
//! assert_eq!(smtp.effective_security(), SmtpSecurity::Tls);
//!
//! // Secrets never print; check-config shows this instead:
//! assert!(!format!("{config:?}").contains("from-the-environment"));
//! assert!(config.redacted_yaml().contains(r#"password: "***""#));
//! # Ok::<(), email::config::ConfigError>(())
//! ```
//!
//! `examples/email.yaml` at the repository root documents every key.
//!
//! ## Where it comes from
//!
//! [`Config::discover`] takes the first of: the `--config PATH` it is given;
//! `./email.yaml` if it exists; the file named by `$EMAIL_CONFIG`; built-in
//! defaults (embedded queue and SQLite store in `./email.db`, `.eml` files in
//! `./outbox`, no relay). Then it applies the environment overrides and
//! [validates](Config::validate) the result. Relative paths in the file are
//! relative to the working directory, as in the Go original.
//!
//! ## Environment overrides
//!
//! | Variable | Sets |
//! |---|---|
//! | `EMAIL_SMTP_HOST` | `email.server.smtp.host` (creates the `smtp` section) |
//! | `EMAIL_SMTP_PORT` | `email.server.smtp.port` |
//! | `EMAIL_SMTP_USERNAME` | `email.server.smtp.auth.username` |
//! | `EMAIL_SMTP_PASSWORD` | `email.server.smtp.auth.password` |
//! | `EMAIL_REDIS_URL` | `email.queue.default.url`, and `engine: redis` |
//! | `EMAIL_REDIS_PASSWORD` | `email.queue.default.password` |
//! | `EMAIL_DATABASE_URL` | `email.server.database.url` (`postgres://…` also sets `engine: postgres`) |
//! | `EMAIL_CONFIG` | the file to read when there is no `--config` and no `./email.yaml` |
//!
//! Empty values count as unset. See [`Config::apply_env`].
//!
//! ## Errors
//!
//! Unknown keys are errors (a misspelt `max-fail` must not silently mean
//! "default"), and so are values of the wrong type and durations that do
//! not parse. Each [`ConfigError`] names the file, the key path, the line
//! and the column, and for unknown keys the keys that were expected:
//!
//! ```text
//! email.yaml:3:5: email.server.max-fail: unknown field `max-fail`, expected one of …
//! ```
//!
//! ## Differences from the Go original
//!
//! - `email.buffer` defaults to 0 (durable enqueue) instead of 250: a
//!   buffered email is lost if the process dies before it reaches the queue.
//! - `email.server.batch` defaults to 50, the README's value; the Go code's
//!   fallback was 3.
//! - The queue engine defaults to `embedded`; Go required `engine: redis`.
//! - `smtp.port` defaults to 587 and STARTTLS is required, not opportunistic.
//! - Durations accept humantime (`"1h 30m"`) as well as Go's syntax (`"1.5h"`).
//! - `database.engine` MySQL and MongoDB are not supported.

mod duration;
mod env;
mod error;
mod queue;
mod secret;
mod server;
mod smtp;
mod validate;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use serde::{Deserialize, Deserializer, Serialize};

pub use duration::parse_duration;
pub use env::ENV_OVERRIDES;
pub use error::ConfigError;
pub use queue::{QueueConfig, QueueEngine};
pub use secret::{REDACTED, Secret, redact_url};
pub use server::{DatabaseConfig, DatabaseEngine, ServerConfig};
pub use smtp::{SmtpAuth, SmtpSection, SmtpSecurity, SmtpTimeouts};

/// The queue applications use, `email.queue.default`.
pub const DEFAULT_QUEUE: &str = "default";

/// The file [`Config::discover`] looks for in the working directory.
pub const DEFAULT_FILE: &str = "email.yaml";

/// The variable naming a configuration file, read by [`Config::discover`].
pub const CONFIG_ENV: &str = "EMAIL_CONFIG";

/// The whole file: everything lives under the `email` key, as in the Go
/// original, so the section can sit in an application's own YAML.
///
/// `Serialize` writes the *redacted* form (see [`Config::redacted_yaml`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Everything. Defaults to [`EmailSection::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub email: EmailSection,
}

/// `email`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EmailSection {
    /// Emails held in memory by a buffered `Mailer` before they reach the
    /// queue. Defaults to `0`: no buffer, `enqueue` returns only once the
    /// queue has the email durably. The Go original defaulted to 250 and
    /// had no other mode, which loses up to that many emails on a crash.
    pub buffer: usize,
    /// Named queues (`email.queue.<name>`), as in the Go original;
    /// applications and the server use [`DEFAULT_QUEUE`], see
    /// [`EmailSection::queue`]. Defaults to one `default` queue with
    /// [`QueueConfig::default`] (embedded), which is always present after
    /// parsing.
    #[serde(rename = "queue", deserialize_with = "queues_or_default")]
    pub queues: BTreeMap<String, QueueConfig>,
    /// What `email-server` reads. Defaults to [`ServerConfig::default`].
    #[serde(deserialize_with = "null_as_default")]
    pub server: ServerConfig,
}

impl Default for EmailSection {
    fn default() -> Self {
        EmailSection {
            buffer: 0,
            queues: BTreeMap::from([(DEFAULT_QUEUE.to_owned(), QueueConfig::default())]),
            server: ServerConfig::default(),
        }
    }
}

impl EmailSection {
    /// The `default` queue, the one applications enqueue to and the server
    /// takes from.
    pub fn queue(&self) -> &QueueConfig {
        static FALLBACK: LazyLock<QueueConfig> = LazyLock::new(QueueConfig::default);
        // Parsing and `Default` always insert it; the fallback covers a
        // caller who removed it from the public map.
        self.queues.get(DEFAULT_QUEUE).unwrap_or(&FALLBACK)
    }
}

/// A section written with nothing under it (`server:` with every line
/// commented out) is YAML null; it means "all defaults", not an error.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// [`null_as_default`] for the queue map and each queue in it.
fn queues_or_default<'de, D>(d: D) -> Result<BTreeMap<String, QueueConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    let queues: Option<BTreeMap<String, Option<QueueConfig>>> = Option::deserialize(d)?;
    Ok(queues
        .unwrap_or_default()
        .into_iter()
        .map(|(name, queue)| (name, queue.unwrap_or_default()))
        .collect())
}

/// Which source [`Config::discover`] used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The path given explicitly (`--config PATH`).
    Explicit(PathBuf),
    /// `./email.yaml` in the working directory.
    WorkingDir(PathBuf),
    /// The path in `$EMAIL_CONFIG`.
    EnvVar(PathBuf),
    /// No file: built-in defaults (plus environment overrides).
    Defaults,
}

impl ConfigSource {
    /// The file read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Explicit(p) | ConfigSource::WorkingDir(p) | ConfigSource::EnvVar(p) => {
                Some(p)
            }
            ConfigSource::Defaults => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Explicit(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::WorkingDir(p) => write!(f, "{} (working directory)", p.display()),
            ConfigSource::EnvVar(p) => write!(f, "{} (${CONFIG_ENV})", p.display()),
            ConfigSource::Defaults => f.write_str("built-in defaults"),
        }
    }
}

impl Config {
    /// Parses YAML text. `source_name` (a file name) goes into errors.
    ///
    /// This only parses: an empty document gives the defaults; environment
    /// overrides and [`validate`](Config::validate) are separate steps,
    /// which [`Config::discover`] runs.
    pub fn from_yaml_str(yaml: &str, source_name: &str) -> Result<Config, ConfigError> {
        let mut track = serde_path_to_error::Track::new();
        // An empty file (or one with only comments) is a null document.
        let parsed = serde_saphyr::with_deserializer_from_str(yaml, |de| {
            Option::<Config>::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
        });
        match parsed {
            Ok(config) => {
                let mut config = config.unwrap_or_default();
                config
                    .email
                    .queues
                    .entry(DEFAULT_QUEUE.to_owned())
                    .or_default();
                Ok(config)
            }
            Err(e) => Err(ConfigError::parse(
                source_name,
                &track.path().to_string(),
                &e,
            )),
        }
    }

    /// Reads and parses a file; see [`Config::from_yaml_str`].
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml_str(&text, &path.display().to_string())
    }

    /// Finds, loads, overrides from the environment and validates the
    /// configuration, in the order described in the [module docs](self),
    /// and says which source it used.
    pub fn discover(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        // An unknown working directory leaves relative paths relative to
        // wherever the process is, which is what the OS would do anyway.
        let cwd = std::env::current_dir().unwrap_or_default();
        Config::discover_from(explicit, &cwd, |var| std::env::var(var).ok())
    }

    /// [`Config::discover`] with the working directory and the environment
    /// passed in, so that it can be tested without touching the process's.
    /// Relative paths (`explicit`, `$EMAIL_CONFIG`) are taken relative to
    /// `cwd`.
    pub fn discover_from<F>(
        explicit: Option<&Path>,
        cwd: &Path,
        env: F,
    ) -> Result<(Config, ConfigSource), ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let local = cwd.join(DEFAULT_FILE);
        let source = if let Some(path) = explicit {
            ConfigSource::Explicit(cwd.join(path))
        } else if local.is_file() {
            ConfigSource::WorkingDir(local)
        } else if let Some(path) = env(CONFIG_ENV).filter(|p| !p.is_empty()) {
            ConfigSource::EnvVar(cwd.join(path))
        } else {
            ConfigSource::Defaults
        };
        let mut config = match source.path() {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.apply_env(&env)?;
        let source_name = match source.path() {
            Some(path) => path.display().to_string(),
            None => source.to_string(),
        };
        config.validate(&source_name)?;
        Ok((config, source))
    }

    /// The effective configuration as YAML, every secret shown as `***`
    /// (URLs keep everything but their password), for
    /// `email-server check-config` and startup logs.
    /// Implied values are written out (`security: starttls`), so what is
    /// shown is what runs.
    pub fn redacted_yaml(&self) -> String {
        let mut effective = self.clone();
        if let Some(smtp) = &mut effective.email.server.smtp {
            smtp.security = Some(smtp.effective_security());
        }
        // Only non-UTF-8 paths can fail; say so rather than panic.
        let mut yaml = serde_saphyr::to_string(&effective)
            .unwrap_or_else(|e| format!("# the configuration cannot be shown as YAML: {e}"));
        if !yaml.ends_with('\n') {
            yaml.push('\n');
        }
        yaml
    }
}
