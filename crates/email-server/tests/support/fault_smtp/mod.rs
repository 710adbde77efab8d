//! A small SMTP server for tests that misbehaves on request.
//!
//! It speaks enough ESMTP for a client (EHLO/HELO, STARTTLS, AUTH PLAIN and
//! LOGIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT), records every command and
//! every message, counts connections, and applies scripted [`Fault`]s: at a
//! given [`Step`], reply something else, hang up, stall, or wait first.
//!
//! ```ignore
//! let server = FaultServer::start(
//!     Behaviour::new().fault_once(Step::Mail, Action::Reply("451 4.3.0 later".into())),
//! ).await;
//! // ... point the client at server.addr() ...
//! assert_eq!(server.received().len(), 1);
//! assert_eq!(server.connections(), 1);
//! ```

mod serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Where in the session a fault applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// The `220` greeting.
    Greeting,
    /// The reply to EHLO or HELO.
    Ehlo,
    /// The reply to STARTTLS.
    StartTls,
    /// The final reply to AUTH.
    Auth,
    /// The reply to MAIL FROM.
    Mail,
    /// The reply to any RCPT TO.
    Rcpt,
    /// The reply to RCPT TO for this address only.
    RcptTo(String),
    /// The reply to DATA (normally `354`).
    Data,
    /// The reply after the final `.` (the message is recorded before).
    DataEnd,
    /// The reply to RSET.
    Rset,
}

/// What happens instead of the normal reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send this text (lines separated by `\r\n`; the last CRLF is added)
    /// instead of the normal reply. The command counts as accepted when the
    /// text starts with `2` or `3`: `"354 go\r\n250 early"` on DATA reads
    /// the message after replying.
    Reply(String),
    /// Send this text, then close the connection.
    ReplyAndClose(String),
    /// Close the connection without a reply.
    Drop,
    /// Never reply and stop reading; the connection stays open until the
    /// client closes it or the server is dropped.
    Stall,
    /// Wait this long, then go on normally.
    Delay(Duration),
}

/// A scripted fault: at `step`, do `action`, the first `times` times that
/// step is reached (over all connections), or always.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) step: Step,
    pub(crate) action: Action,
    pub(crate) times: Option<usize>,
}

/// How the server behaves. [`Behaviour::new`] is a well-behaved server.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    /// The greeting line. Default `220 fault.test ESMTP`.
    pub(crate) greeting: String,
    /// EHLO keywords besides STARTTLS and AUTH, which are added when
    /// configured. Default `8BITMIME`, `ENHANCEDSTATUSCODES`, `SIZE 10485760`.
    /// Adding `STARTTLS` here without [`Behaviour::tls`] makes a server that
    /// answers STARTTLS with 220 and then talks plaintext garbage: a TLS
    /// handshake failure for the client.
    pub(crate) extensions: Vec<String>,
    /// Offer STARTTLS with this configuration (or use it from the first
    /// byte with `implicit_tls`).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (needs `tls`).
    pub(crate) implicit_tls: bool,
    /// Offer AUTH, accepting only these credentials (AUTH is never
    /// required: a client that skips it can still send).
    pub(crate) credentials: Option<(String, String)>,
    /// The mechanisms offered with `credentials`. Default `PLAIN LOGIN`.
    pub(crate) auth_mechanisms: String,
    pub(crate) faults: Vec<Fault>,
}

impl Behaviour {
    pub(crate) fn new() -> Behaviour {
        Behaviour {
            greeting: "220 fault.test ESMTP".into(),
            extensions: vec![
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SIZE 10485760".into(),
            ],
            tls: None,
            implicit_tls: false,
            credentials: None,
            auth_mechanisms: "PLAIN LOGIN".into(),
            faults: Vec::new(),
        }
    }

    /// Applies `action` every time `step` is reached.
    pub(crate) fn fault(mut self, step: Step, action: Action) -> Behaviour {
        self.faults.push(Fault {
            step,
            action,
            times: None,
        });
        self
    }

    /// Applies `action` the first time `step` is reached only.
    pub(crate) fn fault_once(mut self, step: Step, action: Action) -> Behaviour {
        self.faults.push(Fault {
            step,
            action,
            times: Some(1),
        });
        self
    }

    pub(crate) fn starttls(mut self, config: Arc<rustls::ServerConfig>) -> Behaviour {
        self.tls = Some(config);
        self
    }

    pub(crate) fn implicit_tls(mut self, config: Arc<rustls::ServerConfig>) -> Behaviour {
        self.tls = Some(config);
        self.implicit_tls = true;
        self
    }

    pub(crate) fn auth(mut self, username: &str, password: &str) -> Behaviour {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    pub(crate) fn extension(mut self, keyword: &str) -> Behaviour {
        self.extensions.push(keyword.into());
        self
    }
}

/// A message the server received (the final `.` was read), whatever it
/// replied afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    /// 0 for the first connection accepted, and so on.
    pub(crate) connection: usize,
    pub(crate) mail_from: String,
    /// The recipients the server accepted.
    pub(crate) rcpt_to: Vec<String>,
    /// The content, dot-unstuffed, every line with its CRLF, without the
    /// final `.` line.
    pub(crate) data: Vec<u8>,
    /// Whether it came over TLS.
    pub(crate) tls: bool,
    /// The user who authenticated on that connection.
    pub(crate) user: Option<String>,
}

#[derive(Default)]
struct Record {
    received: Vec<Received>,
    commands: Vec<(usize, String)>,
}

struct State {
    behaviour: Behaviour,
    /// How many times each fault fired, by index in `behaviour.faults`.
    fired: Vec<AtomicUsize>,
    record: Mutex<Record>,
    connections: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// A running server; stops (and drops every connection) when dropped.
pub(crate) struct FaultServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub(crate) async fn start(behaviour: Behaviour) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            fired: behaviour
                .faults
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            behaviour,
            record: Mutex::default(),
            connections: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        });
        let accept_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            // Owned here so that aborting this task drops every connection.
            let mut sessions = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let index = accept_state.connections.fetch_add(1, Ordering::SeqCst);
                        let active = accept_state.active.fetch_add(1, Ordering::SeqCst) + 1;
                        accept_state.max_active.fetch_max(active, Ordering::SeqCst);
                        let state = Arc::clone(&accept_state);
                        sessions.spawn(async move {
                            serve::serve(tcp, index, &state).await;
                            state.active.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Some(_) = sessions.join_next() => {}
                }
            }
        });
        FaultServer { addr, state, task }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message whose final `.` was read, in order.
    pub(crate) fn received(&self) -> Vec<Received> {
        lock(&self.state.record).received.clone()
    }

    /// Every command line received, over all connections, in order.
    pub(crate) fn commands(&self) -> Vec<String> {
        lock(&self.state.record)
            .commands
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The command lines of one connection.
    pub(crate) fn commands_of(&self, connection: usize) -> Vec<String> {
        let record = lock(&self.state.record);
        record
            .commands
            .iter()
            .filter(|(i, _)| *i == connection)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub(crate) fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time.
    pub(crate) fn max_active(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn fault(&self, step: &Step) -> Option<Action> {
        for (fault, fired) in self.behaviour.faults.iter().zip(&self.fired) {
            if &fault.step != step {
                continue;
            }
            let count = fired.fetch_add(1, Ordering::SeqCst);
            if fault.times.is_none_or(|times| count < times) {
                return Some(fault.action.clone());
            }
        }
        None
    }
}
