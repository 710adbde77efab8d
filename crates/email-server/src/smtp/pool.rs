//! The connection pool: how many connections, which to reuse, and when to
//! stop knocking on a relay that is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::session::{Attempt, Fate, Relay, Session};
use super::{Delivery, Outcome, Reply, Security, SmtpConfig, SmtpError, data, tls};

/// A circuit breaker per relay: after a connection attempt fails, every
/// send that needs a new connection gives up at once, without trying, for
/// this long; each further failure in a row doubles the hold, up to
/// [`UNREACHABLE_HOLD_MAX`]. A relay that is down is then tried by at most
/// `max_connections` sends per hold, not by every queued message (the
/// dispatcher defers the others with their own backoff); the first
/// connection that succeeds closes the breaker.
const UNREACHABLE_HOLD: Duration = Duration::from_secs(1);

/// The longest hold of the breaker: how late, at worst, a relay that came
/// back is tried again.
const UNREACHABLE_HOLD_MAX: Duration = Duration::from_secs(30);

/// The breaker's state: the last failed connection attempt.
struct Unreachable {
    at: Instant,
    reason: String,
    /// Failed attempts in a row.
    failures: u32,
}

impl Unreachable {
    fn hold(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        UNREACHABLE_HOLD
            .saturating_mul(1 << doublings)
            .min(UNREACHABLE_HOLD_MAX)
    }
}

/// A pool of SMTP connections to one relay. Cloning is cheap and shares
/// the pool.
#[derive(Clone)]
pub struct SmtpPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SmtpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpPool")
            .field("relay", &self.inner.relay)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: SmtpConfig,
    /// `host:port`, for deliveries and logs.
    relay: String,
    tls: TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// One permit per connection in use, held from before connecting until
    /// the connection is back in the pool or closed. It bounds the
    /// connections to the relay, and, because it is held while connecting,
    /// the connection attempts in flight: when the relay is down, the sends
    /// waiting for a permit do not each try to connect at once.
    permits: Arc<Semaphore>,
    /// Sessions waiting for a message, most recently used last. A send
    /// takes only when it holds a permit and opens a connection only when
    /// this is empty, so open connections never exceed the permits.
    idle: Mutex<Vec<Session>>,
    /// When and why the last connection attempt failed, and how many
    /// failed in a row (see [`UNREACHABLE_HOLD`]).
    unreachable: Mutex<Option<Unreachable>>,
    /// Set by [`SmtpPool::close`]: sessions are closed after use instead of
    /// kept. Read and written under the `idle` lock.
    closed: AtomicBool,
    reaper_started: AtomicBool,
    /// Wakes the reaper when a session becomes idle, so it can schedule
    /// that session's expiry.
    reaper_wake: Arc<Notify>,
}

impl SmtpPool {
    /// Checks the configuration and prepares TLS. Opens no connection: the
    /// first [`send`](SmtpPool::send) does.
    pub fn new(config: SmtpConfig) -> Result<SmtpPool, SmtpError> {
        config.validate()?;
        let tls = tls::connector(&config.extra_root_certs)?;
        let server_name = match config.security {
            Security::Plain => None,
            Security::StartTls | Security::Tls => Some(
                ServerName::try_from(config.host.clone())
                    .map_err(|_| SmtpError::InvalidHost(config.host.clone()))?,
            ),
        };
        Ok(SmtpPool {
            inner: Arc::new(Inner {
                relay: format!("{}:{}", config.host, config.port),
                permits: Arc::new(Semaphore::new(config.max_connections)),
                idle: Mutex::new(Vec::with_capacity(config.max_connections)),
                unreachable: Mutex::new(None),
                closed: AtomicBool::new(false),
                reaper_started: AtomicBool::new(false),
                reaper_wake: Arc::new(Notify::new()),
                config,
                tls,
                server_name,
            }),
        })
    }

    /// The relay this pool sends to, as `host:port`.
    pub fn relay(&self) -> &str {
        &self.inner.relay
    }

    /// Sends one message to the given recipients and reports what happened.
    ///
    /// `message` is the RFC 5322 message; line endings are normalised to
    /// CRLF and dot-stuffing is applied here. `mail_from` may be empty (the
    /// null reverse-path of bounces). Waits for a free connection when all
    /// `max_connections` are busy; once it has one, every step is bounded by
    /// its timeout. Never panics; failures are in the returned
    /// [`Delivery`].
    pub async fn send(&self, mail_from: &str, rcpt_to: &[String], message: &[u8]) -> Delivery {
        let inner = &*self.inner;
        if let Err(reason) = check_envelope(mail_from, rcpt_to) {
            return inner.failure(Outcome::Permanent(reason), None);
        }
        let Ok(permit) = Arc::clone(&inner.permits).acquire_owned().await else {
            // The semaphore is never closed; this is for completeness.
            return inner.failure(Outcome::Transient("connection pool closed".into()), None);
        };
        self.start_reaper();
        // Encoded only now, so that sends waiting for a connection do not
        // each hold a copy of their message.
        let content = data::encode(message);
        let eight_bit = !message.is_ascii();

        while let Some(mut session) = inner.take_idle() {
            if session.idle_since.elapsed() >= inner.config.idle_timeout
                || session.went_away().await
            {
                debug!(relay = %inner.relay, "dropping an idle connection the server closed or that expired");
                continue;
            }
            let attempt = session
                .transact(&inner.config, mail_from, rcpt_to, &content, eight_bit)
                .await;
            if attempt.stale {
                debug!(relay = %inner.relay, "pooled connection is no longer usable; reconnecting");
                continue;
            }
            return self.finish(session, attempt, permit);
        }

        if let Some(reason) = inner.held_back() {
            return inner.failure(Outcome::Transient(reason), None);
        }
        let relay = Relay {
            config: &inner.config,
            tls: &inner.tls,
            server_name: inner.server_name.as_ref(),
        };
        let mut session = match Session::open(&relay).await {
            Ok(session) => {
                *lock(&inner.unreachable) = None;
                session
            }
            Err(error) => {
                debug!(relay = %inner.relay, reason = %error.reason, "cannot open an SMTP session");
                if error.unreachable {
                    let mut breaker = lock(&inner.unreachable);
                    let failures = breaker.as_ref().map_or(0, |u| u.failures) + 1;
                    *breaker = Some(Unreachable {
                        at: Instant::now(),
                        reason: error.reason.clone(),
                        failures,
                    });
                }
                return inner.failure(Outcome::Transient(error.reason), error.reply);
            }
        };
        let attempt = session
            .transact(&inner.config, mail_from, rcpt_to, &content, eight_bit)
            .await;
        self.finish(session, attempt, permit)
    }

    /// Graceful shutdown: says QUIT on every idle connection, and makes
    /// connections in use close after their current message. The pool
    /// stays usable, without keeping connections open.
    pub async fn close(&self) {
        let idle = {
            let mut idle = lock(&self.inner.idle);
            self.inner.closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut *idle)
        };
        let limit = self.inner.config.timeouts.quit;
        let mut quits = tokio::task::JoinSet::new();
        for session in idle {
            quits.spawn(session.quit(limit));
        }
        while quits.join_next().await.is_some() {}
    }

    /// Turns an attempt into the caller's delivery and puts the session
    /// back, retires it, or drops it.
    fn finish(
        &self,
        mut session: Session,
        attempt: Attempt,
        permit: OwnedSemaphorePermit,
    ) -> Delivery {
        let inner = &*self.inner;
        debug!(relay = %inner.relay, outcome = ?attempt.outcome, "SMTP transaction done");
        let delivery = Delivery {
            relay: inner.relay.clone(),
            outcome: attempt.outcome,
            reply: attempt.reply,
            recipients: attempt.recipients,
            possible_duplicate: attempt.possible_duplicate,
        };
        if attempt.fate == Fate::Discard {
            return delivery;
        }
        if session.transactions < inner.config.max_messages_per_connection {
            let mut idle = lock(&inner.idle);
            if !inner.closed.load(Ordering::Relaxed) {
                session.idle_since = Instant::now();
                idle.push(session);
                inner.reaper_wake.notify_one();
                return delivery;
            }
        }
        // Retire it in the background so the caller gets its result now;
        // the permit goes along, so the closing connection still counts.
        let limit = inner.config.timeouts.quit;
        tokio::spawn(async move {
            session.quit(limit).await;
            drop(permit);
        });
        delivery
    }

    /// Starts the task that closes connections idle for longer than
    /// `idle_timeout`. Started on the first send because `new` may run
    /// outside a runtime; it holds only a weak reference and ends with the
    /// pool.
    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(&self.inner);
        let wake = Arc::clone(&self.inner.reaper_wake);
        tokio::spawn(reap(pool, wake));
    }
}

impl Inner {
    fn take_idle(&self) -> Option<Session> {
        lock(&self.idle).pop()
    }

    fn failure(&self, outcome: Outcome, reply: Option<Reply>) -> Delivery {
        Delivery {
            relay: self.relay.clone(),
            outcome,
            reply,
            recipients: Vec::new(),
            possible_duplicate: false,
        }
    }

    /// Why a send should not try to connect now: the breaker is open (the
    /// last attempt failed less than its hold ago).
    fn held_back(&self) -> Option<String> {
        let guard = lock(&self.unreachable);
        let u = guard.as_ref()?;
        let ago = u.at.elapsed();
        let hold = u.hold();
        (ago < hold).then(|| {
            format!(
                "{} (not retried: the last attempt failed {} ms ago; the relay is tried again in {} ms)",
                u.reason,
                ago.as_millis(),
                (hold - ago).as_millis()
            )
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the reaper notice that the pool is gone.
        self.reaper_wake.notify_one();
    }
}

/// Closes idle sessions as they expire, until the pool is dropped.
async fn reap(pool: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let pause = {
            let Some(inner) = pool.upgrade() else { return };
            let timeout = inner.config.idle_timeout;
            let idle = lock(&inner.idle);
            idle.iter()
                .map(|s| (s.idle_since + timeout).saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(timeout)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = wake.notified() => continue,
        }
        let Some(inner) = pool.upgrade() else { return };
        let expired: Vec<Session> = {
            let timeout = inner.config.idle_timeout;
            let mut idle = lock(&inner.idle);
            let (expired, fresh) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|s| s.idle_since.elapsed() >= timeout);
            *idle = fresh;
            expired
        };
        let permits = Arc::clone(&inner.permits);
        let limit = inner.config.timeouts.quit;
        drop(inner);
        for session in expired {
            debug!("closing an idle SMTP connection");
            // Say QUIT only with a free permit, so that a closing connection
            // never makes one more than `max_connections`; otherwise just
            // close the socket.
            if let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
                session.quit(limit).await;
                drop(permit);
            }
        }
    }
}

/// Refuses envelopes that would inject SMTP syntax: the addresses go into
/// command lines verbatim. The `email` crate validates addresses at build
/// time; this guards against records that came from elsewhere.
fn check_envelope(mail_from: &str, rcpt_to: &[String]) -> Result<(), String> {
    let bad = |a: &str| a.chars().any(|c| c.is_control() || c == '<' || c == '>');
    if bad(mail_from) {
        return Err(format!("invalid sender address {mail_from:?}"));
    }
    if rcpt_to.is_empty() {
        return Err("no recipients".into());
    }
    if let Some(address) = rcpt_to.iter().find(|a| a.is_empty() || bad(a)) {
        return Err(format!("invalid recipient address {address:?}"));
    }
    Ok(())
}

/// Locks a mutex, ignoring poisoning: the data (a list of sessions, a
/// timestamp) stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
