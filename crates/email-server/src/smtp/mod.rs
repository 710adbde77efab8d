//! SMTP client: delivers one message at a time over pooled connections to a
//! relay, and says for each recipient what the relay answered.
//!
//! We drive SMTP ourselves rather than through lettre because the
//! dispatcher needs per-recipient results, the per-phase timeouts of RFC
//! 5321 §4.5.3.2 (ten minutes for the final reply, not one timeout for all),
//! and to know when a failure may have left a duplicate behind.
//!
//! | Need | How |
//! |---|---|
//! | Send a message | [`SmtpPool::send`] → [`Delivery`] |
//! | Decide retry vs. bounce | [`Delivery::outcome`]: [`Outcome::Sent`], [`Outcome::Transient`], [`Outcome::Permanent`] |
//! | Per-recipient replies | [`Delivery::recipients`] (a message can be [`Sent`](Outcome::Sent) with some recipients refused) |
//! | Possible duplicate (RFC 1047) | [`Delivery::possible_duplicate`] |
//! | Encryption | [`Security`]: STARTTLS (required, the default), implicit TLS, or plaintext |
//! | Private CA / tests | [`SmtpConfig::extra_root_certs`] |
//! | Authentication | [`SmtpConfig::username`] + [`password`](SmtpConfig::password): AUTH PLAIN, or LOGIN |
//! | Timeouts | [`Timeouts`], one per phase, RFC 5321 defaults |
//! | Connection reuse | [`SmtpConfig::max_connections`], [`idle_timeout`](SmtpConfig::idle_timeout), [`max_messages_per_connection`](SmtpConfig::max_messages_per_connection) |
//! | Shutdown | [`SmtpPool::close`] |
//!
//! ```no_run
//! use email_server::smtp::{Outcome, Security, SmtpConfig, SmtpPool};
//!
//! # async fn run() -> Result<(), email_server::smtp::SmtpError> {
//! let pool = SmtpPool::new(SmtpConfig {
//!     host: "smtp.example.com".into(),
//!     port: 587,
//!     security: Security::StartTls,
//!     username: Some("app@example.com".into()),
//!     password: Some("secret".into()),
//!     ..SmtpConfig::default()
//! })?;
//! let message = b"From: app@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n";
//! let delivery = pool
//!     .send("app@example.com", &["bob@example.com".to_owned()], message)
//!     .await;
//! match &delivery.outcome {
//!     Outcome::Sent => {
//!         for r in &delivery.recipients {
//!             println!("{}: {}", r.address, r.reply); // some may still be refused
//!         }
//!     }
//!     Outcome::Transient(reason) => println!("retry later: {reason}"),
//!     Outcome::Permanent(reason) => println!("bounce: {reason}"),
//! }
//! pool.close().await;
//! # Ok(()) }
//! ```
//!
//! ## What decides the outcome
//!
//! | Event | Outcome | Connection |
//! |---|---|---|
//! | Final reply 2xx after the message | `Sent` | kept |
//! | 5xx to MAIL FROM, DATA or the message; every recipient 5xx | `Permanent` | kept (RSET before the next message) |
//! | 4xx anywhere; recipients refused with at least one 4xx | `Transient` | kept |
//! | 421, timeout, lost connection, garbage, reply before end of data | `Transient` | dropped |
//! | Any failure to open the session: greeting, EHLO, STARTTLS missing or refused, TLS or certificate error, AUTH refused (535 too) | `Transient` | dropped |
//! | Connection lost or timed out after the final `.`, before its reply | `Transient`, `possible_duplicate` | dropped |
//! | Envelope with CR/LF/`<>` or no recipients | `Permanent`, no connection | — |
//!
//! Session failures are transient on purpose: they are about the relay or
//! our credentials, not the message, and mail should flow again once the
//! relay or the configuration is fixed (`max-fails` / `max-time` still end
//! an email whose relay never recovers).
//!
//! ## Safety
//!
//! - With [`Security::StartTls`], a server that does not offer STARTTLS
//!   gets no MAIL: we never fall back to plaintext. Bytes received before
//!   the TLS handshake are discarded (STARTTLS command injection), and EHLO
//!   is repeated over TLS.
//! - Certificates are checked against webpki-roots plus
//!   [`SmtpConfig::extra_root_certs`], and against the host name.
//! - The message is sent with CRLF line endings only and dot-stuffed, so a
//!   server cannot be made to see an end of data inside it (SMTP smuggling).
//! - The password is never logged: [`SmtpConfig`]'s `Debug` hides it and
//!   AUTH lines are redacted in traces.
//!
//! Not done: PIPELINING (every command waits for its reply), CHUNKING,
//! DSN parameters, SASL mechanisms other than PLAIN and LOGIN.

mod conn;
mod data;
mod pool;
mod reply;
mod session;
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use pool::SmtpPool;
pub use reply::Reply;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Plaintext first, then STARTTLS (RFC 3207), which is required: a relay
    /// that does not offer it, or fails it, gets no mail. Usually port 587.
    #[default]
    StartTls,
    /// TLS from the first byte (RFC 8314). Usually port 465.
    Tls,
    /// No encryption at all, credentials included. Only for a relay on a
    /// trusted network (localhost, a sidecar), and only when the
    /// configuration says so explicitly.
    Plain,
}

/// How long to wait in each phase of a session (RFC 5321 §4.5.3.2). A
/// timeout fails the attempt as transient and drops the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connection, and any TLS handshake. Defaults to 30 s (not in the
    /// RFC; a relay that needs longer to accept a connection is down).
    pub connect: Duration,
    /// The `220` greeting. Defaults to 5 min (§4.5.3.2.1).
    pub greeting: Duration,
    /// EHLO/HELO, STARTTLS and AUTH replies. Defaults to 5 min (the RFC
    /// names none; the same as MAIL, since servers do lookups here too).
    pub ehlo: Duration,
    /// MAIL FROM reply, and RSET. Defaults to 5 min (§4.5.3.2.2).
    pub mail: Duration,
    /// Each RCPT TO reply. Defaults to 5 min (§4.5.3.2.3).
    pub rcpt: Duration,
    /// The `354` reply to DATA. Defaults to 2 min (§4.5.3.2.4).
    pub data_init: Duration,
    /// Each write of message content (64 KiB at most). Defaults to 3 min
    /// (§4.5.3.2.5).
    pub data_block: Duration,
    /// The reply to the final `.`. Defaults to 10 min (§4.5.3.2.6): the
    /// server may be filtering the message, and giving up early risks a
    /// duplicate.
    pub data_end: Duration,
    /// The QUIT reply and closing. Defaults to 10 s (the RFC names none;
    /// nothing depends on the answer, and shutdown should not wait long).
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        const MINUTE: Duration = Duration::from_secs(60);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: 5 * MINUTE,
            ehlo: 5 * MINUTE,
            mail: 5 * MINUTE,
            rcpt: 5 * MINUTE,
            data_init: 2 * MINUTE,
            data_block: 3 * MINUTE,
            data_end: 10 * MINUTE,
            quit: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The same limit for every phase: for tests and for relays on the same
    /// network, where RFC 5321's minutes are far too patient.
    pub fn uniform(each: Duration) -> Timeouts {
        Timeouts {
            connect: each,
            greeting: each,
            ehlo: each,
            mail: each,
            rcpt: each,
            data_init: each,
            data_block: each,
            data_end: each,
            quit: each,
        }
    }

    fn all(&self) -> [(&'static str, Duration); 9] {
        [
            ("connect", self.connect),
            ("greeting", self.greeting),
            ("ehlo", self.ehlo),
            ("mail", self.mail),
            ("rcpt", self.rcpt),
            ("data_init", self.data_init),
            ("data_block", self.data_block),
            ("data_end", self.data_end),
            ("quit", self.quit),
        ]
    }
}

/// Where and how to deliver. `Debug` shows `password` as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// The relay's host name or IP address; also the name its TLS
    /// certificate must carry. Defaults to `localhost`.
    pub host: String,
    /// Defaults to 587 (submission with STARTTLS).
    pub port: u16,
    /// Defaults to [`Security::StartTls`].
    pub security: Security,
    /// Authenticate as this user when set. Defaults to none.
    pub username: Option<String>,
    /// Required when `username` is set. Never logged.
    pub password: Option<String>,
    /// Our name in EHLO. Defaults to the machine's host name, or
    /// `localhost` when it cannot be read.
    pub hello_name: String,
    /// Defaults to [`Timeouts::default`].
    pub timeouts: Timeouts,
    /// Connections open at once, and connection attempts in flight.
    /// Defaults to 4.
    pub max_connections: usize,
    /// An idle pooled connection is closed after this. Defaults to 60 s.
    pub idle_timeout: Duration,
    /// A connection is closed (QUIT) after this many transactions and a new
    /// one opened. Defaults to 100.
    pub max_messages_per_connection: usize,
    /// PEM files whose certificates are trusted as roots besides
    /// webpki-roots: a private CA, or a test certificate. Defaults to none.
    pub extra_root_certs: Vec<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> SmtpConfig {
        SmtpConfig {
            host: "localhost".into(),
            port: 587,
            security: Security::default(),
            username: None,
            password: None,
            hello_name: SmtpConfig::default_hello_name(),
            timeouts: Timeouts::default(),
            max_connections: 4,
            idle_timeout: Duration::from_secs(60),
            max_messages_per_connection: 100,
            extra_root_certs: Vec::new(),
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("hello_name", &self.hello_name)
            .field("timeouts", &self.timeouts)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field(
                "max_messages_per_connection",
                &self.max_messages_per_connection,
            )
            .field("extra_root_certs", &self.extra_root_certs)
            .finish()
    }
}

impl SmtpConfig {
    /// The default EHLO name: the machine's host name (from
    /// `/proc/sys/kernel/hostname` or `/etc/hostname`), or `localhost` when
    /// it cannot be read or is not a plain domain name.
    pub fn default_hello_name() -> String {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|name| name.trim().to_owned())
            .find(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "localhost".to_owned())
    }

    /// The checks that need no network; certificates are checked when the
    /// pool builds its TLS configuration.
    fn validate(&self) -> Result<(), SmtpError> {
        if self.host.is_empty()
            || self
                .host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(SmtpError::InvalidHost(self.host.clone()));
        }
        if self.port == 0 {
            return Err(SmtpError::InvalidPort);
        }
        // The name goes into the EHLO line verbatim.
        let hello_ok = |c: char| c.is_ascii_alphanumeric() || "-.:[]_".contains(c);
        if self.hello_name.is_empty() || !self.hello_name.chars().all(hello_ok) {
            return Err(SmtpError::InvalidHelloName(self.hello_name.clone()));
        }
        if self.username.is_some() && self.password.is_none() {
            return Err(SmtpError::MissingPassword);
        }
        if self.max_connections == 0 {
            return Err(SmtpError::Zero("max_connections"));
        }
        if self.max_messages_per_connection == 0 {
            return Err(SmtpError::Zero("max_messages_per_connection"));
        }
        if let Some((name, _)) = self.timeouts.all().into_iter().find(|(_, d)| d.is_zero()) {
            return Err(SmtpError::Zero(name));
        }
        Ok(())
    }
}

/// What the relay said about one recipient. Accepted iff `reply` is 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    /// The address as given to [`SmtpPool::send`].
    pub address: String,
    /// The reply to its RCPT TO.
    pub reply: Reply,
}

impl RecipientResult {
    /// The relay accepted this recipient.
    pub fn accepted(&self) -> bool {
        self.reply.is_positive()
    }
}

/// The result of one delivery attempt, for the message as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The relay accepted the message (2xx to the final `.`) for at least one
    /// recipient; [`Delivery::recipients`] says which, and the others'
    /// replies may be 4xx (retry those) or 5xx.
    Sent,
    /// Try again later: a 4xx reply, a connection problem, a timeout, a
    /// protocol error, or any failure to open the session.
    Transient(String),
    /// Do not try again: 5xx to MAIL FROM, DATA or the message, every
    /// recipient refused with 5xx, or an unusable envelope.
    Permanent(String),
}

/// What happened to one [`SmtpPool::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The relay, as `host:port`.
    pub relay: String,
    /// The decision for the message.
    pub outcome: Outcome,
    /// The reply that decided the outcome: the reply to the final `.`, or
    /// to the command that failed. `None` when the connection failed.
    pub reply: Option<Reply>,
    /// One entry per RCPT TO sent, in order; empty when the transaction
    /// failed before RCPT.
    pub recipients: Vec<RecipientResult>,
    /// The connection failed or timed out after the final `.` was sent and
    /// before its reply was read, so the relay may deliver the message even
    /// though the outcome is `Transient` (RFC 1047). Retrying may send it
    /// twice.
    pub possible_duplicate: bool,
}

impl Delivery {
    /// Shorthand for `outcome == Outcome::Sent`.
    pub fn is_sent(&self) -> bool {
        self.outcome == Outcome::Sent
    }
}

/// A configuration the pool cannot work with. Sending never returns an
/// error; its failures are [`Outcome`]s.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The host is empty, contains spaces, or (with TLS) is neither a DNS
    /// name nor an IP address a certificate could be checked against.
    #[error("invalid SMTP host {0:?}")]
    InvalidHost(String),
    /// Port 0.
    #[error("invalid SMTP port 0")]
    InvalidPort,
    /// The EHLO name has characters that do not belong in a domain or
    /// address literal.
    #[error("invalid EHLO name {0:?}")]
    InvalidHelloName(String),
    /// `username` without `password`.
    #[error("SMTP username set without a password")]
    MissingPassword,
    /// A count or timeout that must be positive is zero.
    #[error("SMTP setting {0} must not be zero")]
    Zero(&'static str),
    /// A root certificate file could not be read.
    #[error("cannot read root certificates from {path}: {source}")]
    ReadRootCerts {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A root certificate file has no PEM certificate in it.
    #[error("no PEM certificate in {path}")]
    NoRootCerts {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a root certificate file is not usable as a root.
    #[error("invalid root certificate in {path}: {source}")]
    InvalidRootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}
