//! Environment overrides: secrets (and a few values that differ per
//! deployment) that should not live in a file.

use super::{
    Config, ConfigError, DatabaseEngine, QueueConfig, QueueEngine, Secret, SmtpAuth, SmtpSection,
};

/// Every variable [`Config::apply_env`] reads, with what it sets; for
/// `--help` texts and `check-config`.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    (
        "EMAIL_SMTP_HOST",
        "email.server.smtp.host (creates the smtp section)",
    ),
    ("EMAIL_SMTP_PORT", "email.server.smtp.port"),
    ("EMAIL_SMTP_USERNAME", "email.server.smtp.auth.username"),
    ("EMAIL_SMTP_PASSWORD", "email.server.smtp.auth.password"),
    (
        "EMAIL_REDIS_URL",
        "email.queue.default.url (and engine: redis)",
    ),
    ("EMAIL_REDIS_PASSWORD", "email.queue.default.password"),
    (
        "EMAIL_DATABASE_URL",
        "email.server.database.url (and its engine)",
    ),
];

impl Config {
    /// Applies the environment overrides listed in [`ENV_OVERRIDES`],
    /// reading variables through `lookup` (`|k| std::env::var(k).ok()` in
    /// production, a map in tests). An empty value counts as unset, so
    /// that `EMAIL_SMTP_PASSWORD=` left in a compose file does not blank a
    /// password.
    ///
    /// - `EMAIL_SMTP_HOST` creates `email.server.smtp` if the file has none;
    ///   the other `EMAIL_SMTP_*` variables need a relay from one or the
    ///   other and are an error otherwise (they would silently go unused).
    /// - `EMAIL_SMTP_USERNAME` / `EMAIL_SMTP_PASSWORD` create `auth` if the
    ///   file has none.
    /// - `EMAIL_REDIS_URL` sets the `default` queue's URL and switches it to
    ///   the `redis` engine; `EMAIL_REDIS_PASSWORD` sets its password.
    /// - `EMAIL_DATABASE_URL` sets the store URL; a `postgres://` or
    ///   `postgresql://` URL also selects the `postgres` engine.
    ///
    /// ```
    /// use email::config::Config;
    ///
    /// let mut config = Config::from_yaml_str("email: {server: {smtp: {host: relay}}}", "inline")?;
    /// config.apply_env(|var| match var {
    ///     "EMAIL_SMTP_USERNAME" => Some("app".to_owned()),
    ///     "EMAIL_SMTP_PASSWORD" => Some("s3cret".to_owned()),
    ///     _ => None,
    /// })?;
    /// let auth = config.email.server.smtp.unwrap().auth.unwrap();
    /// assert_eq!(auth.password.expose(), "s3cret");
    /// # Ok::<(), email::config::ConfigError>(())
    /// ```
    pub fn apply_env<F>(&mut self, lookup: F) -> Result<(), ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let get = |var: &str| lookup(var).filter(|v| !v.is_empty());

        self.apply_smtp_env(&get)?;

        if let Some(url) = get("EMAIL_REDIS_URL") {
            let queue = self.default_queue_mut();
            queue.engine = QueueEngine::Redis;
            queue.url = Some(Secret::new(url));
        }
        if let Some(password) = get("EMAIL_REDIS_PASSWORD") {
            self.default_queue_mut().password = Some(Secret::new(password));
        }

        if let Some(url) = get("EMAIL_DATABASE_URL") {
            let database = &mut self.email.server.database;
            let lower = url.to_ascii_lowercase();
            if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
                database.engine = DatabaseEngine::Postgres;
            } else if lower.starts_with("sqlite:") {
                return Err(ConfigError::env(
                    "EMAIL_DATABASE_URL",
                    "SQLite is configured with email.server.database.path, not a URL",
                ));
            }
            database.url = Some(Secret::new(url));
        }
        Ok(())
    }

    fn apply_smtp_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let smtp = &mut self.email.server.smtp;
        if let Some(host) = get("EMAIL_SMTP_HOST") {
            smtp.get_or_insert_with(SmtpSection::default).host = host;
        }
        let port = get("EMAIL_SMTP_PORT");
        let username = get("EMAIL_SMTP_USERNAME");
        let password = get("EMAIL_SMTP_PASSWORD");

        let Some(smtp) = smtp else {
            // Name the first variable that would be ignored.
            let stray = [
                ("EMAIL_SMTP_PORT", &port),
                ("EMAIL_SMTP_USERNAME", &username),
                ("EMAIL_SMTP_PASSWORD", &password),
            ]
            .into_iter()
            .find(|(_, value)| value.is_some());
            return match stray {
                Some((var, _)) => Err(ConfigError::env(
                    var,
                    "is set but no SMTP relay is configured; \
                     set email.server.smtp.host or EMAIL_SMTP_HOST",
                )),
                None => Ok(()),
            };
        };

        if let Some(port) = port {
            smtp.port = port.trim().parse().map_err(|_| {
                ConfigError::env("EMAIL_SMTP_PORT", format!("{port:?} is not a port number"))
            })?;
        }
        if username.is_some() || password.is_some() {
            let auth = smtp.auth.get_or_insert_with(SmtpAuth::default);
            if let Some(username) = username {
                auth.username = username;
            }
            if let Some(password) = password {
                auth.password = Secret::new(password);
            }
        }
        Ok(())
    }

    fn default_queue_mut(&mut self) -> &mut QueueConfig {
        self.email
            .queues
            .entry(super::DEFAULT_QUEUE.to_owned())
            .or_default()
    }
}
