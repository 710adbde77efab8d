//! `email.server.smtp`: the relay that `email-server` hands emails to.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{duration, secret::Secret};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain TCP upgraded with `STARTTLS`, which is required: a relay that
    /// does not offer it is an error, never a silent downgrade. (Go's
    /// `net/smtp.SendMail`, used by the Go original, upgraded only when
    /// offered.) The default, except on port 465.
    Starttls,
    /// TLS from the first byte ("implicit TLS", RFC 8314). The default on
    /// port 465.
    #[serde(alias = "ssl", alias = "smtps")]
    Tls,
    /// No encryption at all. Never a default: it must be written out, and
    /// credentials are refused over it except to a loopback host.
    #[serde(alias = "none")]
    Plain,
}

/// The relay and how to talk to it.
///
/// The Go original's keys were `host`, `port` and `auth` (`username`,
/// `password`, `identity`, `host`); all are accepted unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmtpSection {
    /// Relay host name; it is also the name its TLS certificate must carry.
    /// Defaults to `localhost`; `EMAIL_SMTP_HOST` overrides it.
    pub host: String,
    /// Relay port. Defaults to `587` (submission); `EMAIL_SMTP_PORT`
    /// overrides it. (The Go original had no default: without a port it
    /// dialled the bare host name and failed.)
    pub port: u16,
    /// `starttls`, `tls` or `plain`. Defaults to `tls` when `port` is 465,
    /// else `starttls`; see [`SmtpSection::effective_security`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SmtpSecurity>,
    /// Credentials for `AUTH`. Defaults to none (no authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<SmtpAuth>,
    /// The name sent in `EHLO`. Defaults to none: this machine's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hello_name: Option<String>,
    /// How long to wait in each phase of a session. Defaults to the
    /// minimums of RFC 5321 §4.5.3.2; see [`SmtpTimeouts`].
    #[serde(deserialize_with = "super::null_as_default")]
    pub timeouts: SmtpTimeouts,
    /// Most connections open to the relay at once. Defaults to `4`, the
    /// same as `email.server.workers`.
    pub max_connections: usize,
    /// A PEM file of extra CA certificates to trust (a private relay's
    /// CA), added to the built-in web roots. Defaults to none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            host: "localhost".to_owned(),
            port: 587,
            security: None,
            auth: None,
            hello_name: None,
            timeouts: SmtpTimeouts::default(),
            max_connections: 4,
            ca_file: None,
        }
    }
}

impl SmtpSection {
    /// [`security`](Self::security) if written, else `tls` on port 465 and
    /// `starttls` anywhere else. Never `plain` unless written.
    pub fn effective_security(&self) -> SmtpSecurity {
        match (self.security, self.port) {
            (Some(security), _) => security,
            (None, 465) => SmtpSecurity::Tls,
            (None, _) => SmtpSecurity::Starttls,
        }
    }
}

/// SMTP `AUTH` credentials (`PLAIN` or `LOGIN`, whichever the relay offers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmtpAuth {
    /// User name. Required when `auth` is present (defaults to empty,
    /// which is rejected); `EMAIL_SMTP_USERNAME` overrides it.
    pub username: String,
    /// Password. Required (defaults to empty, which is rejected); best
    /// supplied as `EMAIL_SMTP_PASSWORD` rather than written in the file.
    pub password: Secret,
    /// SASL authorisation identity, from the Go original (`smtp.PlainAuth`'s
    /// first argument). Defaults to none, meaning "the user name"; almost
    /// no relay needs another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Accepted for compatibility with the Go original, whose
    /// `smtp.PlainAuth` refused to send the password unless this matched
    /// the server name. Defaults to none and is otherwise unused: the TLS
    /// certificate check against `smtp.host` protects the password now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Per-phase SMTP timeouts, as durations (`"30s"`, `"5m"`).
///
/// lettre has one timeout for every command; RFC 5321 §4.5.3.2 asks for
/// longer waits in some phases, notably 10 minutes after the final `.`,
/// when giving up early is what causes duplicate deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmtpTimeouts {
    /// TCP connect plus the TLS handshake. Defaults to `30s`.
    #[serde(with = "duration")]
    pub connect: Duration,
    /// Waiting for the `220` greeting. Defaults to `5m`.
    #[serde(with = "duration")]
    pub greeting: Duration,
    /// Reply to `MAIL FROM`. Defaults to `5m`.
    #[serde(with = "duration")]
    pub mail: Duration,
    /// Reply to each `RCPT TO`. Defaults to `5m`.
    #[serde(with = "duration")]
    pub rcpt: Duration,
    /// Reply to `DATA` (the `354`). Defaults to `2m`.
    #[serde(with = "duration")]
    pub data_init: Duration,
    /// Sending each block of the message. Defaults to `3m`.
    #[serde(with = "duration")]
    pub data_block: Duration,
    /// Reply to the final `.`. Defaults to `10m`.
    #[serde(with = "duration")]
    pub data_end: Duration,
}

impl Default for SmtpTimeouts {
    fn default() -> Self {
        const MINUTE: u64 = 60;
        SmtpTimeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(5 * MINUTE),
            mail: Duration::from_secs(5 * MINUTE),
            rcpt: Duration::from_secs(5 * MINUTE),
            data_init: Duration::from_secs(2 * MINUTE),
            data_block: Duration::from_secs(3 * MINUTE),
            data_end: Duration::from_secs(10 * MINUTE),
        }
    }
}
