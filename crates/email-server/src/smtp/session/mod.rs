//! One SMTP session: opening it (greeting, EHLO, STARTTLS, AUTH), and
//! closing it. The mail transactions run on it are in `transaction`.

mod pipelined;
mod transaction;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::conn::{Conn, ConnError, Phase};
use super::{Reply, Security, SmtpConfig};

pub(super) use transaction::{Attempt, Fate};

/// What the relay needs to know to open a session.
pub(super) struct Relay<'a> {
    pub(super) config: &'a SmtpConfig,
    pub(super) tls: &'a TlsConnector,
    /// The name certificates are checked against; `None` for plaintext.
    pub(super) server_name: Option<&'a ServerName<'static>>,
}

/// Why a session could not be opened. Always a transient failure: the
/// relay, not the message, is the problem.
#[derive(Debug)]
pub(super) struct OpenError {
    pub(super) reason: String,
    pub(super) reply: Option<Reply>,
    /// The TCP connection itself failed (refused, unreachable, timed out):
    /// the relay is down, which the pool uses to stop other sends from
    /// trying right away.
    pub(super) unreachable: bool,
}

impl OpenError {
    fn reply(context: &str, reply: Reply) -> OpenError {
        OpenError {
            reason: format!("{context}: {reply}"),
            reply: Some(reply),
            unreachable: false,
        }
    }
}

impl From<ConnError> for OpenError {
    fn from(error: ConnError) -> OpenError {
        OpenError {
            reason: error.to_string(),
            reply: None,
            unreachable: false,
        }
    }
}

/// The service extensions from the EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Default)]
struct Extensions {
    /// Upper-cased keyword and its parameters, one per EHLO line.
    keywords: Vec<(String, String)>,
}

impl Extensions {
    fn parse(ehlo: &Reply) -> Extensions {
        let keywords = ehlo
            .lines()
            .skip(1) // the server's name and greeting
            .map(|line| {
                let (keyword, params) = line.split_once([' ', '=']).unwrap_or((line, ""));
                (keyword.to_ascii_uppercase(), params.trim().to_owned())
            })
            .collect();
        Extensions { keywords }
    }

    fn has(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|(k, _)| k == keyword)
    }

    /// The advertised SASL mechanisms, upper-cased. Both `AUTH PLAIN` and
    /// the pre-standard `AUTH=PLAIN` that old servers send are understood.
    fn auth_mechanisms(&self) -> Vec<String> {
        self.keywords
            .iter()
            .filter(|(k, _)| k == "AUTH")
            .flat_map(|(_, params)| params.split_whitespace())
            .map(str::to_ascii_uppercase)
            .collect()
    }
}

/// An open session, ready for a mail transaction.
pub(super) struct Session {
    conn: Conn,
    ext: Extensions,
    /// Transactions started on this session; the pool retires it at
    /// `max_messages_per_connection`.
    pub(super) transactions: usize,
    /// When the session was last returned to the pool.
    pub(super) idle_since: Instant,
    /// A transaction ended midway (after MAIL was accepted, or with the
    /// state unclear), so the next one starts with RSET. A transaction that
    /// reached the final reply, positive or not, leaves the server clean.
    needs_reset: bool,
}

impl Session {
    /// Connects and takes the session up to the point where MAIL may be sent.
    pub(super) async fn open(relay: &Relay<'_>) -> Result<Session, OpenError> {
        let config = relay.config;
        let limits = &config.timeouts;
        let address = format!("{}:{}", config.host, config.port);
        let tcp = match timeout(
            limits.connect,
            TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                return Err(unreachable(format!("cannot connect to {address}: {error}")));
            }
            Err(_) => {
                let after = limits.connect;
                return Err(unreachable(format!(
                    "cannot connect to {address}: timed out after {after:?}"
                )));
            }
        };
        // Commands are small writes waiting on replies; Nagle's algorithm
        // would hold the end-of-data line back for a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::new(tcp);
        if config.security == Security::Tls {
            conn.start_tls(relay.tls, tls_name(relay)?, limits.connect)
                .await?;
        }
        let greeting = conn.read_reply(Phase::Greeting, limits.greeting).await?;
        if greeting.code != 220 {
            return Err(OpenError::reply("greeting", greeting));
        }
        let mut session = Session {
            conn,
            ext: Extensions::default(),
            transactions: 0,
            idle_since: Instant::now(),
            needs_reset: false,
        };
        session.hello(config).await?;
        if config.security == Security::StartTls {
            if !session.ext.has("STARTTLS") {
                session.quit(limits.quit).await;
                return Err(OpenError {
                    reason: "STARTTLS required but not offered".into(),
                    reply: None,
                    unreachable: false,
                });
            }
            let reply = session
                .conn
                .command("STARTTLS", Phase::StartTls, limits.ehlo)
                .await?;
            if reply.code != 220 {
                session.quit(limits.quit).await;
                return Err(OpenError::reply("STARTTLS failed", reply));
            }
            session
                .conn
                .start_tls(relay.tls, tls_name(relay)?, limits.connect)
                .await?;
            // RFC 3207 §4.2: forget everything learnt before TLS and ask again.
            session.hello(config).await?;
        }
        if let Some(username) = &config.username {
            let password = config.password.as_deref().unwrap_or_default();
            session
                .authenticate(username, password, limits.ehlo)
                .await?;
        }
        Ok(session)
    }

    /// EHLO, or HELO when EHLO is refused and plaintext is allowed anyway:
    /// a server too old for EHLO has no STARTTLS to lose.
    async fn hello(&mut self, config: &SmtpConfig) -> Result<(), OpenError> {
        let limit = config.timeouts.ehlo;
        let reply = self
            .conn
            .command(&format!("EHLO {}", config.hello_name), Phase::Ehlo, limit)
            .await?;
        if reply.is_positive() {
            self.ext = Extensions::parse(&reply);
            return Ok(());
        }
        if !(reply.is_permanent() && config.security == Security::Plain) {
            return Err(OpenError::reply("EHLO rejected", reply));
        }
        let reply = self
            .conn
            .command(&format!("HELO {}", config.hello_name), Phase::Ehlo, limit)
            .await?;
        if !reply.is_positive() {
            return Err(OpenError::reply("HELO rejected", reply));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    /// AUTH PLAIN, or LOGIN when that is all the server offers. The pool
    /// only gets here over TLS unless the configuration says `Plain`.
    ///
    /// A refusal (535 and the like) is a transient failure: the credentials
    /// belong to the relay configuration, not to the message, and once an
    /// operator fixes them the queued mail should flow. `max-fails` and
    /// `max-time` still end the email if nobody does.
    async fn authenticate(
        &mut self,
        username: &str,
        password: &str,
        limit: Duration,
    ) -> Result<(), OpenError> {
        let mechanisms = self.ext.auth_mechanisms();
        let reply = if mechanisms.iter().any(|m| m == "PLAIN") {
            let token = BASE64.encode(format!("\0{username}\0{password}"));
            let line = format!("AUTH PLAIN {token}");
            self.conn
                .secret_command(&line, "AUTH PLAIN <redacted>", Phase::Auth, limit)
                .await?
        } else if mechanisms.iter().any(|m| m == "LOGIN") {
            let reply = self.conn.command("AUTH LOGIN", Phase::Auth, limit).await?;
            if reply.code != 334 {
                return Err(OpenError::reply("authentication failed", reply));
            }
            let user = BASE64.encode(username);
            let reply = self
                .conn
                .secret_command(&user, "<redacted>", Phase::Auth, limit)
                .await?;
            if reply.code != 334 {
                return Err(OpenError::reply("authentication failed", reply));
            }
            let pass = BASE64.encode(password);
            self.conn
                .secret_command(&pass, "<redacted>", Phase::Auth, limit)
                .await?
        } else {
            let offered = if mechanisms.is_empty() {
                "none".to_owned()
            } else {
                mechanisms.join(" ")
            };
            return Err(OpenError {
                reason: format!(
                    "authentication required but no supported AUTH mechanism offered (offered: {offered})"
                ),
                reply: None,
                unreachable: false,
            });
        };
        if reply.code != 235 {
            return Err(OpenError::reply("authentication failed", reply));
        }
        Ok(())
    }

    /// Whether the server spoke (or hung up) while the session sat in the
    /// pool, which makes it unusable.
    pub(super) async fn went_away(&mut self) -> bool {
        // Silence (`Ok(false)`) is the only sign of a usable connection.
        !matches!(self.conn.has_unread_input(Phase::Mail).await, Ok(false))
    }

    /// Says goodbye, without caring for the answer, and closes.
    pub(super) async fn quit(mut self, limit: Duration) {
        let _ = self.conn.command("QUIT", Phase::Quit, limit).await;
        self.conn.shutdown(limit).await;
    }
}

fn unreachable(reason: String) -> OpenError {
    OpenError {
        reason,
        reply: None,
        unreachable: true,
    }
}

fn tls_name(relay: &Relay<'_>) -> Result<ServerName<'static>, OpenError> {
    relay.server_name.cloned().ok_or_else(|| OpenError {
        reason: "TLS requested without a server name".into(),
        reply: None,
        unreachable: false,
    })
}
