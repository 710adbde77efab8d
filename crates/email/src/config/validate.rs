//! Checks that need the whole, effective configuration (file plus
//! environment), and so cannot be done by the parser.

use super::{Config, ConfigError, DatabaseEngine, QueueConfig, QueueEngine, SmtpSecurity};

impl Config {
    /// Checks that the configuration can work: counts and durations that
    /// must not be zero, a queue name, a Postgres target, complete SMTP
    /// credentials that are never sent unencrypted to a remote host.
    ///
    /// [`Config::discover`] calls this after the environment overrides;
    /// call it yourself after [`Config::load`] and
    /// [`apply_env`](Config::apply_env). `source_name` goes into the error.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, message: &str| Err(ConfigError::invalid(source_name, key, message));
        let server = &self.email.server;

        for (key, value) in [
            ("email.server.max-fails", server.max_fails as usize),
            ("email.server.batch", server.batch),
            ("email.server.workers", server.workers),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        for (key, value) in [
            ("email.server.max-time", server.max_time),
            ("email.server.lease", server.lease),
        ] {
            if value.is_zero() {
                return invalid(key, "must be longer than zero");
            }
        }

        for (name, queue) in &self.email.queues {
            validate_queue(source_name, name, queue)?;
        }

        let database = &server.database;
        match database.engine {
            DatabaseEngine::Sqlite3 if database.path.as_os_str().is_empty() => {
                return invalid("email.server.database.path", "must name a file");
            }
            DatabaseEngine::Postgres if database.postgres_url().is_none() => {
                return invalid(
                    "email.server.database",
                    "postgres needs `url` (or EMAIL_DATABASE_URL), or at least `host`",
                );
            }
            _ => {}
        }

        if let Some(smtp) = &server.smtp {
            if smtp.host.trim().is_empty() {
                return invalid("email.server.smtp.host", "must not be empty");
            }
            if smtp.max_connections == 0 {
                return invalid("email.server.smtp.max-connections", "must be at least 1");
            }
            if let Some(auth) = &smtp.auth {
                if auth.username.is_empty() {
                    return invalid(
                        "email.server.smtp.auth.username",
                        "is required with `auth` (or set EMAIL_SMTP_USERNAME)",
                    );
                }
                if auth.password.is_empty() {
                    return invalid(
                        "email.server.smtp.auth.password",
                        "is required with `auth` (or set EMAIL_SMTP_PASSWORD)",
                    );
                }
                if smtp.effective_security() == SmtpSecurity::Plain && !is_loopback(&smtp.host) {
                    return invalid(
                        "email.server.smtp.security",
                        "refusing to send credentials without encryption to a remote host; \
                         use `starttls` or `tls`",
                    );
                }
            }
        }
        Ok(())
    }

    /// Settings that are accepted but probably not what was meant, one
    /// sentence each, for `check-config` and a startup log line.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.email.buffer > 0 {
            out.push(format!(
                "email.buffer is {}: enqueue returns before the email is durable, \
                 and emails still buffered are lost if the process dies",
                self.email.buffer
            ));
        }
        if let Some(smtp) = &self.email.server.smtp {
            if smtp.effective_security() == SmtpSecurity::Plain {
                out.push(
                    "email.server.smtp.security is `plain`: emails cross the network unencrypted"
                        .to_owned(),
                );
            }
            if let Some(auth) = &smtp.auth {
                if auth.host.as_ref().is_some_and(|h| *h != smtp.host) {
                    out.push(
                        "email.server.smtp.auth.host differs from smtp.host and is ignored; \
                         the TLS certificate is checked against smtp.host"
                            .to_owned(),
                    );
                }
                if auth.identity.as_ref().is_some_and(|i| *i != auth.username) {
                    out.push("email.server.smtp.auth.identity is set: few relays accept an identity other than the user name".to_owned());
                }
            }
        }
        for (name, queue) in &self.email.queues {
            if queue.engine == QueueEngine::Embedded && queue.url.is_some() {
                out.push(format!(
                    "email.queue.{name}.url is ignored by the embedded engine (set engine: redis)"
                ));
            }
        }
        out
    }
}

fn validate_queue(source_name: &str, name: &str, queue: &QueueConfig) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: &str| {
        Err(ConfigError::invalid(
            source_name,
            &format!("email.queue.{name}.{key}"),
            message,
        ))
    };
    match queue.engine {
        QueueEngine::Embedded if queue.path.as_os_str().is_empty() => {
            invalid("path", "must name a file")
        }
        QueueEngine::Redis if queue.name.trim().is_empty() => {
            invalid("name", "must not be empty: it prefixes the Redis keys")
        }
        QueueEngine::Redis if queue.url.is_none() && queue.host.trim().is_empty() => {
            invalid("host", "must not be empty (or set `url`)")
        }
        _ => Ok(()),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
