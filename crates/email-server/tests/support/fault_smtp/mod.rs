//! A small SMTP server for tests that misbehaves on request.
//!
//! It speaks enough ESMTP for a client (EHLO/HELO, STARTTLS, AUTH PLAIN and
//! LOGIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT), records every command and
//! every message, counts connections, and applies scripted [`Fault`]s: at a
//! given [`Step`], reply something else, hang up, stall, or wait first.
//!
//! For chaos tests a fault can also fire at random ([`Behaviour::fault_with_chance`],
//! seeded, so a run can be repeated), or only for transactions to one
//! recipient ([`Behaviour::fault_for`]); the server can greylist
//! ([`Behaviour::greylisting`]) and limit recipients per transaction
//! ([`Behaviour::max_recipients`]); and it keeps timings: when each
//! connection opened and closed, and when each fault fired.
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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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
    /// Send this text (as for `Reply`) one byte at a time, waiting `every`
    /// before each byte: a slowloris relay. A client whose timeout restarts
    /// with each byte never gives up.
    Trickle { text: String, every: Duration },
    /// Never reply, but keep reading (and discarding) until the client
    /// hangs up; when it did is in [`FaultServer::connection_times`].
    Hang,
    /// Only at [`Step::Data`]: send `354` and, at once, a `250` as if the
    /// message were already accepted; then read the message, and refuse it
    /// with `554` after the final `.`. A client that takes the early `250`
    /// for the final reply records a delivery the relay refused.
    EarlyAccept,
    /// Send this text, then bytes that are neither SMTP nor TLS, and close.
    /// At [`Step::StartTls`] with `"220 ..."`: a TLS handshake that fails.
    ReplyThenGarbage(String),
}

/// A scripted fault: at `step`, do `action`, the first `times` times that
/// step is reached (over all connections), or always.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) step: Step,
    pub(crate) action: Action,
    pub(crate) times: Option<usize>,
    /// Fire only with this probability each time the step is reached
    /// (from the server's seeded generator); `None`: always.
    pub(crate) chance: Option<f64>,
    /// Fire only in transactions with this recipient (the one being given
    /// at `RCPT`, or one already accepted). Never at the greeting, EHLO,
    /// STARTTLS, AUTH or MAIL, where there are none.
    pub(crate) only_to: Option<String>,
}

impl Fault {
    fn new(step: Step, action: Action) -> Fault {
        Fault {
            step,
            action,
            times: None,
            chance: None,
            only_to: None,
        }
    }
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
    /// Answer `450` the first time each (sender, recipient) pair is given
    /// at RCPT, and accept it afterwards. Default off.
    pub(crate) greylist: bool,
    /// Answer `452` to RCPT beyond this many accepted recipients in one
    /// transaction. Default none.
    pub(crate) max_recipients: Option<usize>,
    /// Seeds the generator of [`Fault::chance`].
    pub(crate) seed: u64,
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
            greylist: false,
            max_recipients: None,
            seed: 0x5EED_CA05,
        }
    }

    /// Applies `action` every time `step` is reached.
    pub(crate) fn fault(mut self, step: Step, action: Action) -> Behaviour {
        self.faults.push(Fault::new(step, action));
        self
    }

    /// Applies `action` the first time `step` is reached only.
    pub(crate) fn fault_once(mut self, step: Step, action: Action) -> Behaviour {
        self.faults.push(Fault {
            times: Some(1),
            ..Fault::new(step, action)
        });
        self
    }

    /// Applies `action` the first `times` times `step` is reached.
    pub(crate) fn fault_times(mut self, step: Step, action: Action, times: usize) -> Behaviour {
        self.faults.push(Fault {
            times: Some(times),
            ..Fault::new(step, action)
        });
        self
    }

    /// Applies `action` with probability `chance` each time `step` is
    /// reached. Faults are tried in the order they were added; the first
    /// that fires wins.
    pub(crate) fn fault_with_chance(
        mut self,
        step: Step,
        action: Action,
        chance: f64,
    ) -> Behaviour {
        self.faults.push(Fault {
            chance: Some(chance),
            ..Fault::new(step, action)
        });
        self
    }

    /// Applies `action` every time `step` is reached in a transaction to
    /// `recipient`.
    pub(crate) fn fault_for(mut self, recipient: &str, step: Step, action: Action) -> Behaviour {
        self.faults.push(Fault {
            only_to: Some(recipient.into()),
            ..Fault::new(step, action)
        });
        self
    }

    /// Greylists: `450` for each new (sender, recipient) pair, once.
    pub(crate) fn greylisting(mut self) -> Behaviour {
        self.greylist = true;
        self
    }

    /// `452` for recipients beyond `n` in one transaction.
    pub(crate) fn max_recipients(mut self, n: usize) -> Behaviour {
        self.max_recipients = Some(n);
        self
    }

    /// Seeds the generator behind [`Behaviour::fault_with_chance`].
    pub(crate) fn seed(mut self, seed: u64) -> Behaviour {
        self.seed = seed;
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
    /// What the server answered after the final `.` (lines joined by
    /// CRLF), once the whole answer was written; empty when it did not
    /// answer (a fault hung up, hung, or the client left first). The
    /// message was accepted iff this starts with `2`.
    pub(crate) reply: String,
}

impl Received {
    /// The server accepted it: its answer to the final `.` was `2xx`.
    pub(crate) fn accepted(&self) -> bool {
        self.reply.starts_with('2')
    }
}

/// When one connection was accepted and when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionTimes {
    pub(crate) opened: Instant,
    /// `None` while it is open (a [`Action::Stall`] never ends).
    pub(crate) closed: Option<Instant>,
}

/// One fault that fired.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fired {
    /// Its index in [`Behaviour::faults`].
    pub(crate) fault: usize,
    pub(crate) connection: usize,
    pub(crate) step: Step,
    pub(crate) at: Instant,
}

/// A command line as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    pub(crate) connection: usize,
    /// Whether it came over TLS.
    pub(crate) tls: bool,
    pub(crate) line: String,
}

#[derive(Default)]
struct Record {
    received: Vec<Received>,
    commands: Vec<Command>,
    connections: Vec<ConnectionTimes>,
    fired: Vec<Fired>,
    /// (sender, recipient) pairs greylisting has seen.
    greylisted: HashSet<(String, String)>,
}

struct State {
    behaviour: Behaviour,
    /// How many times each fault fired, by index in `behaviour.faults`.
    fired: Vec<AtomicUsize>,
    record: Mutex<Record>,
    connections: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    /// xorshift64* state for [`Fault::chance`].
    rng: Mutex<u64>,
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
        FaultServer::serve(listener, behaviour)
    }

    /// Binds `addr` (say, the address of a server that was dropped, to
    /// bring a relay back on the same port) and serves in the background.
    pub(crate) async fn start_on(
        addr: SocketAddr,
        behaviour: Behaviour,
    ) -> std::io::Result<FaultServer> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(FaultServer::serve(socket.listen(1024)?, behaviour))
    }

    fn serve(listener: TcpListener, behaviour: Behaviour) -> FaultServer {
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            fired: behaviour
                .faults
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            rng: Mutex::new(behaviour.seed | 1),
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
                        let index = {
                            // Numbered under the lock, so that connection
                            // `index` is entry `index` of the times.
                            let mut record = lock(&accept_state.record);
                            record.connections.push(ConnectionTimes {
                                opened: Instant::now(),
                                closed: None,
                            });
                            accept_state.connections.fetch_add(1, Ordering::SeqCst)
                        };
                        let active = accept_state.active.fetch_add(1, Ordering::SeqCst) + 1;
                        accept_state.max_active.fetch_max(active, Ordering::SeqCst);
                        let state = Arc::clone(&accept_state);
                        sessions.spawn(async move {
                            serve::serve(tcp, index, &state).await;
                            lock(&state.record).connections[index].closed = Some(Instant::now());
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

    /// Stops listening and drops every connection, as dropping the server
    /// does, but keeps what it recorded readable: a relay that goes down.
    pub(crate) async fn shut_down(&self) {
        self.task.abort();
        while !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
            .map(|c| c.line.clone())
            .collect()
    }

    /// The command lines of one connection.
    pub(crate) fn commands_of(&self, connection: usize) -> Vec<String> {
        let record = lock(&self.state.record);
        record
            .commands
            .iter()
            .filter(|c| c.connection == connection)
            .map(|c| c.line.clone())
            .collect()
    }

    /// Every command received, with its connection and whether it came
    /// over TLS, in order.
    pub(crate) fn command_log(&self) -> Vec<Command> {
        lock(&self.state.record).commands.clone()
    }

    /// When each connection opened and closed, by connection number.
    pub(crate) fn connection_times(&self) -> Vec<ConnectionTimes> {
        lock(&self.state.record).connections.clone()
    }

    /// Every fault that fired, in order.
    pub(crate) fn fired(&self) -> Vec<Fired> {
        lock(&self.state.record).fired.clone()
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
    /// The fault to apply at `step` on `connection`, whose transaction has
    /// `recipients` (the one being given at RCPT included), if any fires.
    fn fault(&self, step: &Step, connection: usize, recipients: &[&str]) -> Option<Action> {
        for (index, (fault, fired)) in self.behaviour.faults.iter().zip(&self.fired).enumerate() {
            if &fault.step != step {
                continue;
            }
            if let Some(to) = &fault.only_to
                && !recipients.contains(&to.as_str())
            {
                continue;
            }
            if let Some(chance) = fault.chance
                && self.draw() >= chance
            {
                continue;
            }
            let count = fired.fetch_add(1, Ordering::SeqCst);
            if fault.times.is_none_or(|times| count < times) {
                lock(&self.record).fired.push(Fired {
                    fault: index,
                    connection,
                    step: step.clone(),
                    at: Instant::now(),
                });
                return Some(fault.action.clone());
            }
        }
        None
    }

    /// A sample in `[0, 1)` from the seeded generator (xorshift64*).
    fn draw(&self) -> f64 {
        let mut x = lock(&self.rng);
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let out = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (out >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether greylisting refuses this pair now (it is new); remembers it.
    fn greylists(&self, from: &str, to: &str) -> bool {
        self.behaviour.greylist
            && lock(&self.record)
                .greylisted
                .insert((from.to_owned(), to.to_owned()))
    }
}
