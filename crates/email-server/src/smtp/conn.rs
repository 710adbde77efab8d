//! One TCP (or TLS) connection to the relay: commands out, replies in, each
//! step bounded by a timeout, and the STARTTLS upgrade.
//!
//! We keep our own read buffer rather than a `BufReader` so that we always
//! know what the server sent ahead of time: bytes that arrive before the TLS
//! handshake, or a reply that arrives before the end of data, are protocol
//! violations we must see rather than swallow.

use std::fmt;
use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{trace, warn};

use super::reply::{MAX_LINE, Reply, ReplyParser};

/// The step of the session a failure happened in, for error messages and
/// for the decision what a failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Greeting,
    Ehlo,
    StartTls,
    TlsHandshake,
    Auth,
    Rset,
    Mail,
    Rcpt,
    DataInit,
    DataBlock,
    DataEnd,
    Quit,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::TlsHandshake => "TLS handshake",
            Phase::Auth => "AUTH",
            Phase::Rset => "RSET",
            Phase::Mail => "MAIL FROM",
            Phase::Rcpt => "RCPT TO",
            Phase::DataInit => "DATA",
            Phase::DataBlock => "message content",
            Phase::DataEnd => "end of data",
            Phase::Quit => "QUIT",
        })
    }
}

/// A failure of the connection itself. Every one of them leaves the
/// connection unusable.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    /// Reading or writing failed.
    #[error("{phase}: connection failed: {source}")]
    Io {
        phase: Phase,
        #[source]
        source: io::Error,
    },
    /// The server closed the connection.
    #[error("{phase}: connection closed by the server")]
    Closed { phase: Phase },
    /// The server did not answer (or accept our bytes) in time.
    #[error("{phase}: timed out after {after:?}")]
    Timeout { phase: Phase, after: Duration },
    /// The server sent something that is not SMTP.
    #[error("protocol error: {phase}: {detail}")]
    Protocol { phase: Phase, detail: String },
    /// TLS could not be established (certificate, handshake).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
}

impl ConnError {
    /// True when the peer went away (closed or reset the connection) as
    /// opposed to misbehaving or stalling: what a pooled connection that the
    /// server timed out looks like.
    pub(super) fn is_disconnect(&self) -> bool {
        matches!(self, ConnError::Closed { .. } | ConnError::Io { .. })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// After a failed upgrade: every operation fails.
    Gone,
}

/// A connection with its read buffer.
pub(super) struct Conn {
    stream: Stream,
    /// Bytes received and not yet consumed as reply lines.
    buf: Vec<u8>,
}

impl Conn {
    pub(super) fn new(tcp: TcpStream) -> Conn {
        Conn {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(1024),
        }
    }

    /// Sends a command and reads its reply, both within `limit`.
    pub(super) async fn command(
        &mut self,
        line: &str,
        phase: Phase,
        limit: Duration,
    ) -> Result<Reply, ConnError> {
        trace!("C: {line}");
        self.exchange(line, phase, limit).await
    }

    /// [`Conn::command`] for lines that carry credentials: the log shows
    /// `shown` instead.
    pub(super) async fn secret_command(
        &mut self,
        line: &str,
        shown: &str,
        phase: Phase,
        limit: Duration,
    ) -> Result<Reply, ConnError> {
        trace!("C: {shown}");
        self.exchange(line, phase, limit).await
    }

    async fn exchange(
        &mut self,
        line: &str,
        phase: Phase,
        limit: Duration,
    ) -> Result<Reply, ConnError> {
        timeout(limit, async {
            let mut bytes = Vec::with_capacity(line.len() + 2);
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
            self.write_unbounded(&bytes, phase).await?;
            self.read_unbounded(phase).await
        })
        .await
        .map_err(|_| ConnError::Timeout {
            phase,
            after: limit,
        })?
    }

    /// Reads one (possibly multi-line) reply within `limit`.
    pub(super) async fn read_reply(
        &mut self,
        phase: Phase,
        limit: Duration,
    ) -> Result<Reply, ConnError> {
        timeout(limit, self.read_unbounded(phase))
            .await
            .map_err(|_| ConnError::Timeout {
                phase,
                after: limit,
            })?
    }

    /// Writes all of `bytes` within `limit`.
    pub(super) async fn write(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        limit: Duration,
    ) -> Result<(), ConnError> {
        timeout(limit, self.write_unbounded(bytes, phase))
            .await
            .map_err(|_| ConnError::Timeout {
                phase,
                after: limit,
            })?
    }

    async fn read_unbounded(&mut self, phase: Phase) -> Result<Reply, ConnError> {
        let mut parser = ReplyParser::default();
        loop {
            let line = self.read_line(phase).await?;
            let protocol = |detail| ConnError::Protocol { phase, detail };
            if let Some(reply) = parser.push(&line).map_err(protocol)? {
                trace!("S: {reply}");
                return Ok(reply);
            }
        }
    }

    /// One line without its ending. CRLF is the standard; a bare LF is
    /// tolerated because replies are parsed line by line and nothing we
    /// send depends on how the server ended its lines.
    async fn read_line(&mut self, phase: Phase) -> Result<Vec<u8>, ConnError> {
        let mut searched = 0;
        loop {
            if let Some(end) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                let end = searched + end;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            searched = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(ConnError::Protocol {
                    phase,
                    detail: format!("reply line longer than {MAX_LINE} bytes"),
                });
            }
            if self.fill(phase).await? == 0 {
                return Err(ConnError::Closed { phase });
            }
        }
    }

    /// Reads what is available into the buffer; 0 means end of stream.
    async fn fill(&mut self, phase: Phase) -> Result<usize, ConnError> {
        let mut chunk = [0u8; 4096];
        let n = match &mut self.stream {
            Stream::Plain(tcp) => tcp.read(&mut chunk).await,
            Stream::Tls(tls) => tls.read(&mut chunk).await,
            Stream::Gone => Ok(0),
        }
        .map_err(|source| ConnError::Io { phase, source })?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn write_unbounded(&mut self, bytes: &[u8], phase: Phase) -> Result<(), ConnError> {
        let result = match &mut self.stream {
            Stream::Plain(tcp) => tcp.write_all(bytes).await,
            Stream::Tls(tls) => match tls.write_all(bytes).await {
                // rustls buffers plaintext; flushing pushes it to the socket.
                Ok(()) => tls.flush().await,
                Err(error) => Err(error),
            },
            Stream::Gone => return Err(ConnError::Closed { phase }),
        };
        result.map_err(|source| ConnError::Io { phase, source })
    }

    /// Whether the server has sent anything we have not read, in our
    /// buffer or waiting on the socket; an error if it hung up. Used where
    /// the server must be silent (before the end of data, on an idle pooled
    /// connection). Best effort by nature: bytes still on the wire cannot
    /// be seen.
    pub(super) async fn has_unread_input(&mut self, phase: Phase) -> Result<bool, ConnError> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        // Let the runtime poll the I/O driver first, so that readiness that
        // arrived since the last poll is known to the socket.
        tokio::task::yield_now().await;
        // Poll the read exactly once: ready means the server spoke, pending
        // means silence. (A zero timeout would do the same through the
        // timer wheel, which costs a millisecond tick per call.)
        let read = self.fill(phase);
        let mut read = std::pin::pin!(read);
        let polled = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await;
        match polled {
            Some(Ok(0)) => Err(ConnError::Closed { phase }),
            Some(Ok(_)) => Ok(true),
            Some(Err(error)) => Err(error),
            None => Ok(false),
        }
    }

    /// Upgrades to TLS after the server's `220` to STARTTLS (or right after
    /// connecting, for implicit TLS).
    pub(super) async fn start_tls(
        &mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
        limit: Duration,
    ) -> Result<(), ConnError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(ConnError::Protocol {
                phase: Phase::StartTls,
                detail: "TLS requested on a connection that is not plaintext".into(),
            });
        };
        // Anything already received was sent in plaintext before the
        // handshake, so a man in the middle may have written it; if we kept
        // it, it would be read as the answer to our first command over TLS
        // (STARTTLS command injection, CVE-2011-0411 class).
        if !self.buf.is_empty() {
            warn!(
                bytes = self.buf.len(),
                "discarding plaintext received before the TLS handshake"
            );
            self.buf.clear();
        }
        let tls = timeout(limit, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnError::Timeout {
                phase: Phase::TlsHandshake,
                after: limit,
            })?
            .map_err(ConnError::Tls)?;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Closes the transport, sending TLS close_notify when there is TLS.
    pub(super) async fn shutdown(&mut self, limit: Duration) {
        let _ = timeout(limit, async {
            match &mut self.stream {
                Stream::Plain(tcp) => tcp.shutdown().await,
                Stream::Tls(tls) => tls.shutdown().await,
                Stream::Gone => Ok(()),
            }
        })
        .await;
        self.stream = Stream::Gone;
    }
}
