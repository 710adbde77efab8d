//! The dispatcher: claim due emails under a lease, deliver them, record
//! every attempt, and decide what happens next.
//!
//! One loop owns the claims. It claims `batch` emails at a time and keeps
//! up to two claims' worth in flight (the transport's pool bounds how many
//! are on the wire at once), and when
//! nothing is due it sleeps until the next due time, a wake-up from a
//! `Mailer`, or shutdown; it does not poll. Each email's attempt runs in its
//! own task and records its own result, fenced by its lease token, so a
//! crash loses at most the in-flight attempts, which are claimed again when
//! their lease runs out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::smtp::{Delivery, Outcome};
use crate::store::{Attempt, Claimed, Completion, Next, RecipientOutcome, Store, StoreError};

pub mod retry;
pub mod transport;

pub use transport::Transport;

/// How the dispatcher behaves. Built from the `email.server` config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Attempts before `failed`. Defaults to 3.
    pub max_fails: u32,
    /// Age (from the due time) before `expired`. Defaults to 1 h.
    pub max_time: Duration,
    /// Emails per claim. Defaults to 50. Up to two claims' worth are in
    /// flight (claimed, waiting for the wire or on it), so that the next
    /// claim is made while a whole batch is still going out.
    pub batch: usize,
    /// How long a claim lasts before another process may take it over.
    /// Defaults to 5 min; must exceed the slowest attempt.
    pub lease: Duration,
    /// Deliveries on the wire at once. Defaults to 4.
    pub concurrency: usize,
    /// The retry schedule's first wait. Defaults to 30 s.
    pub retry_base: Duration,
    /// The retry schedule's longest wait. Defaults to 1 h.
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight attempts before releasing
    /// them. Defaults to 30 s.
    pub shutdown_grace: Duration,
    /// This process's name on its claims.
    pub owner: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_fails: 3,
            max_time: Duration::from_secs(3600),
            batch: 50,
            lease: Duration::from_secs(300),
            concurrency: 4,
            retry_base: retry::DEFAULT_BASE,
            retry_max: retry::DEFAULT_MAX,
            shutdown_grace: Duration::from_secs(30),
            owner: format!("email-server-{}", std::process::id()),
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The longest sleep with nothing due: a safety net against a missed
/// wake-up, not a polling interval.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// The least time between two claims while the dispatcher is caught up
/// (its last claim took every due email) and still delivering. Emails
/// enqueued one at a time then leave in claims of several, not one claim
/// (and one fsync) each; an email waits at most this much longer.
const CLAIM_GAP: Duration = Duration::from_millis(5);

/// How long to wait before trying the database again after an error.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true, then finishes or releases what is in
/// flight. Database errors are logged and retried, not fatal, but for
/// [`StoreError::NewerSchema`] (a newer build migrated the database): then
/// it finishes what is in flight as on shutdown and returns that error.
pub async fn run(
    store: Store,
    transport: Transport,
    settings: Settings,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let settings = Arc::new(settings);
    let wire = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let (record_tx, record_rx) = mpsc::channel(RECORD_QUEUE);
    // Whether the last claim took every due email: emails then arrive as
    // they are enqueued, and the recorder leaves the database's write lock
    // to the applications' enqueues for a few milliseconds at a time.
    let caught_up = Arc::new(AtomicBool::new(false));
    let recorder = tokio::spawn(recorder(
        store.clone(),
        record_rx,
        caught_up.clone(),
        wake.clone(),
    ));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut last_sweep = 0;
    let mut last_renewal = now_ms();
    let renew_every = (settings.lease / 3).max(Duration::from_millis(100));
    let mut last_claim = long_ago(CLAIM_GAP);
    let mut backlog = false;
    let mut fatal = None;
    loop {
        while let Some(done) = tasks.try_join_next() {
            log_panic(done);
        }
        if *shutdown.borrow() {
            break;
        }
        let now = now_ms();
        // Heartbeat: renew our claims at a third of the lease, so only a
        // dead process loses them.
        if !tasks.is_empty() && now - last_renewal >= ms(renew_every) {
            if let Err(e) = store
                .renew_leases(&settings.owner, now + ms(settings.lease))
                .await
            {
                tracing::warn!(error = %e, "renewing leases failed; retrying");
            }
            last_renewal = now;
        }
        if now - last_sweep >= 30_000 {
            match store.expire_overdue(now, ms(settings.max_time)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(emails = n, "expired: max-time passed"),
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed; retrying later"),
            }
            last_sweep = now;
        }
        // Claims of `batch` emails, up to two claims' worth in flight: the
        // next claim is made once a whole batch is left (or the wire may
        // run dry), not after every finished email (one claim per email
        // would make the database, not the relay, the limit), and its
        // commit (an fsync, perhaps after waiting for the recorder's
        // turn) happens while that batch is still going out. With one
        // claim's worth in flight and a refill at half of it, the wire sat
        // idle waiting for claims: from a backlog, 8,000 emails/s against
        // 13,000 with two (BENCHMARKS.md, issue 3).
        let batch = settings.batch.max(1);
        let free = (2 * batch).saturating_sub(tasks.len()).min(batch);
        let free = if tasks.len() > batch && tasks.len() >= 2 * settings.concurrency {
            0
        } else {
            free
        };
        let mut got = 0;
        if free > 0 && !backlog && !tasks.is_empty() {
            // Caught up while still delivering: emails arrive a few at a
            // time, each arrival wakes us, and each claim is a durable
            // commit that holds the database's write lock for an fsync.
            // Let a few gather. (With nothing in flight, claim at once:
            // the relay is idle and the email would only wait.)
            let since = last_claim.elapsed();
            if since < CLAIM_GAP {
                tokio::select! {
                    () = tokio::time::sleep(CLAIM_GAP - since) => {}
                    _ = shutdown.changed() => continue,
                }
            }
        }
        if free > 0 {
            last_claim = tokio::time::Instant::now();
            // Now, not the loop's `now`: emails enqueued during the gap
            // are due too.
            let claimed = match store
                .claim(&settings.owner, free, now_ms(), ms(settings.lease))
                .await
            {
                Ok(c) => c,
                Err(e @ StoreError::NewerSchema { .. }) => {
                    // Nothing this build runs fits the file any more.
                    tracing::error!(error = %e, "stopping");
                    fatal = Some(e);
                    break;
                }
                Err(e) => {
                    // A busy or briefly unavailable database is not a reason
                    // to stop delivering: wait a little and try again.
                    tracing::warn!(error = %e, "claim failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(STORE_RETRY) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            got = claimed.len();
            for c in claimed {
                let (transport, settings, wire, record) = (
                    transport.clone(),
                    settings.clone(),
                    wire.clone(),
                    record_tx.clone(),
                );
                // The task ends once its attempt is handed to the recorder:
                // `tasks` counts the emails still to deliver, so emails
                // waiting to be recorded do not hold back the next claim.
                tasks.spawn(async move {
                    let id = c.id.clone();
                    let done = attempt(&transport, &settings, &wire, c).await;
                    if record.send(done).await.is_err() {
                        // The lease runs out and the email is claimed again.
                        tracing::error!(%id, "could not record the attempt");
                    }
                });
            }
        }
        backlog = free > 0 && got == free;
        if free > 0 {
            caught_up.store(!backlog, Ordering::Relaxed);
        }
        if backlog {
            continue; // more may be due: claim again as capacity frees up
        }
        if free == 0 {
            // Busy: nothing to look up until an attempt finishes.
            tokio::select! {
                Some(done) = tasks.join_next() => log_panic(done),
                () = tokio::time::sleep(renew_every) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let sleep = match store.next_wake().await {
            Ok(Some(t)) => {
                Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)).min(MAX_IDLE)
            }
            Ok(None) => MAX_IDLE,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next due time failed");
                STORE_RETRY
            }
        };
        // With everything due already claimed, a wake time in the past only
        // means our own leases; wait for a task instead.
        let sleep = if sleep.is_zero() && !tasks.is_empty() {
            MAX_IDLE
        } else {
            sleep
        };
        let sleep = if tasks.is_empty() {
            sleep
        } else {
            sleep.min(renew_every)
        };
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(done),
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => {}
        }
    }
    drain(&store, tasks, &settings, record_tx, recorder).await;
    transport.close().await;
    fatal.map_or(Ok(()), Err)
}

/// An instant at least `gap` in the past (or now, just after boot).
fn long_ago(gap: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_sub(gap).unwrap_or(now)
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "delivery task failed; its lease will expire and it will be retried");
    }
}

/// Waits for in-flight attempts, then releases the ones still running.
async fn drain(
    store: &Store,
    mut tasks: JoinSet<()>,
    s: &Settings,
    record_tx: mpsc::Sender<Completion>,
    recorder: tokio::task::JoinHandle<()>,
) {
    let deadline = tokio::time::Instant::now() + s.shutdown_grace;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(done)) => log_panic(done),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    in_flight = tasks.len(),
                    "shutdown grace over; releasing in-flight emails"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Every task has sent its completion; let the recorder write them.
    drop(record_tx);
    recorder.await.ok();
    match store.release_owner(&s.owner).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(emails = n, "released unfinished claims"),
        Err(e) => {
            tracing::error!(error = %e, "could not release claims; they return when their lease ends")
        }
    }
}

/// How many completions may wait for the recorder.
const RECORD_QUEUE: usize = 1024;

/// Most completions written in one transaction.
const RECORD_BATCH: usize = 256;

/// The least time between two of the recorder's writes: when busy, it
/// gathers completions until then. Completions to record are written at
/// once when the recorder has been idle that long; under load, one write
/// (one turn at the database's write lock) carries a few milliseconds'
/// worth. The price: a process killed outright loses the results of the
/// attempts it had not written yet (up to this much more of them); their
/// emails are sent again when their lease runs out, as possible
/// duplicates.
const RECORD_GAP: Duration = Duration::from_millis(5);

/// Group commit: writes the completions that arrived meanwhile in one
/// transaction, so a busy server takes the database's write lock once for
/// many attempts (see `RECORD_GAP`).
/// A failed batch is retried once, then left to the lease: the emails are
/// claimed again (and marked possible duplicates) when it runs out.
async fn recorder(
    store: Store,
    mut rx: mpsc::Receiver<Completion>,
    caught_up: Arc<AtomicBool>,
    wake: Arc<Notify>,
) {
    let mut last_write = long_ago(RECORD_GAP);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Caught up and busy (the last write was under RECORD_GAP ago):
        // gather what finishes until then, so the write lock is taken once
        // for many. With a backlog, write at once: the dispatcher is the
        // bottleneck then, not the applications' enqueues.
        let until = if caught_up.load(Ordering::Relaxed) {
            last_write + RECORD_GAP
        } else {
            last_write
        };
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    _ => break,
                },
            }
        }
        last_write = tokio::time::Instant::now();
        let mut result = store.record_many(&batch).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, emails = batch.len(), "recording failed; retrying once");
            tokio::time::sleep(STORE_RETRY).await;
            result = store.record_many(&batch).await;
        }
        match result {
            Ok(updated) => {
                // A retry scheduled: the dispatcher may have looked for its
                // next wake-up before this write (it sees the email as
                // `sending` until then, and would sleep out the lease).
                if batch.iter().any(|c| matches!(c.next, Next::Retry { .. })) {
                    wake.notify_one();
                }
                for (c, updated) in batch.iter().zip(updated) {
                    let id = &c.claimed.id;
                    if updated {
                        tracing::info!(%id, state = c.next.state(), reason = %c.reason, "attempt recorded");
                    } else {
                        tracing::warn!(%id, "lease was taken over; attempt kept, state left to the new owner");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, emails = batch.len(), "could not record attempts")
            }
        }
    }
}

/// One attempt: deliver (holding one of the transport's slots), then
/// classify. Recording is the recorder's job, so the slot is free again
/// while the disk flushes.
async fn attempt(transport: &Transport, s: &Settings, wire: &Semaphore, c: Claimed) -> Completion {
    let started = now_ms();
    let deadline = c
        .due_at
        .saturating_add(c.max_time_ms.unwrap_or(ms(s.max_time)));
    let done = |c: Claimed, attempt, next, pending, reason: String| Completion {
        claimed: c,
        attempt,
        next,
        pending,
        reason,
    };
    if started >= deadline {
        let pending = c.pending.clone();
        return done(
            c,
            None,
            Next::Expired,
            pending,
            "max-time passed before this attempt".into(),
        );
    }
    // The header section only: parsing the whole message (MIME, decoding)
    // before every attempt cost more CPU than sending it.
    if let Err(e) = email::Email::check_header_section(&c.raw) {
        let reason = format!("stored message is corrupt: {e}");
        tracing::error!(id = %c.id, %reason, "not sent");
        let pending = c.pending.clone();
        return done(c, None, Next::Failed, pending, reason);
    }
    let d = {
        let _slot = wire.acquire().await;
        transport
            .deliver(&c.id, &c.mail_from, &c.pending, &c.raw)
            .await
    };
    let finished = now_ms();
    let (next, pending, reason) = decide(&c, &d, s, finished, deadline);
    let attempt = record_of(&d, started, finished, next.state());
    done(c, Some(attempt), next, pending, reason)
}

/// The policy: what an attempt's result means for the email.
fn decide(
    c: &Claimed,
    d: &Delivery,
    s: &Settings,
    now: i64,
    deadline: i64,
) -> (Next, Vec<String>, String) {
    let code_of = |addr: &str| {
        d.recipients
            .iter()
            .find(|r| r.address == addr)
            .map(|r| r.reply.code)
    };
    let rejected: Vec<String> = d
        .recipients
        .iter()
        .filter(|r| r.reply.code >= 500)
        .map(|r| format!("{}: {} {}", r.address, r.reply.code, r.reply.text))
        .collect();
    let note = if rejected.is_empty() {
        String::new()
    } else {
        format!(" (rejected: {})", rejected.join("; "))
    };
    let (pending, why) = match &d.outcome {
        Outcome::Permanent(why) => return (Next::Failed, Vec::new(), format!("{why}{note}")),
        Outcome::Sent => {
            // Recipients deferred with 4xx (greylisting, 452) are retried alone.
            let later: Vec<String> = c
                .pending
                .iter()
                .filter(|a| code_of(a).is_some_and(|code| (400..500).contains(&code)))
                .cloned()
                .collect();
            let accepted = d
                .reply
                .as_ref()
                .map_or_else(|| "accepted".into(), |r| format!("{} {}", r.code, r.text));
            if later.is_empty() {
                return (Next::Sent, Vec::new(), format!("{accepted}{note}"));
            }
            let why = format!("{} recipient(s) deferred: {accepted}{note}", later.len());
            (later, why)
        }
        Outcome::Transient(why) => {
            // Recipients refused for good in this attempt are not retried.
            let keep = c
                .pending
                .iter()
                .filter(|a| code_of(a).is_none_or(|code| code < 500))
                .cloned()
                .collect();
            (keep, format!("{why}{note}"))
        }
    };
    let made = c.attempts + 1;
    let max_fails = c.max_fails.unwrap_or(s.max_fails).max(1);
    if made >= max_fails {
        return (
            Next::Failed,
            pending,
            format!("max-fails ({max_fails}) reached: {why}"),
        );
    }
    let wait = retry::backoff(made, s.retry_base, s.retry_max, retry::jitter());
    let at = now.saturating_add(ms(wait));
    if at >= deadline {
        return (
            Next::Expired,
            pending,
            format!("max-time would pass before the next attempt: {why}"),
        );
    }
    (Next::Retry { at }, pending, why)
}

fn record_of(d: &Delivery, started: i64, finished: i64, outcome: &str) -> Attempt {
    let (smtp_code, enhanced_code, reply) = match (&d.reply, &d.outcome) {
        (Some(r), _) => (Some(r.code), r.enhanced.clone(), r.text.clone()),
        (None, Outcome::Transient(w) | Outcome::Permanent(w)) => (None, None, w.clone()),
        (None, Outcome::Sent) => (None, None, String::new()),
    };
    Attempt {
        started_at: started,
        finished_at: finished,
        relay: d.relay.clone(),
        outcome: outcome.to_owned(),
        smtp_code,
        enhanced_code,
        reply,
        possible_duplicate: d.possible_duplicate,
        recipients: d
            .recipients
            .iter()
            .map(|r| RecipientOutcome {
                address: r.address.clone(),
                code: r.reply.code,
                enhanced: r.reply.enhanced.clone(),
                reply: r.reply.text.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    //! The retry policy over an email's whole life, on a simulated clock:
    //! every attempt fails with a 4xx or a network fault, the clock jumps
    //! to the next attempt time `decide` chose, and the walk ends where
    //! `max-fails` or `max-time` says. No sleeping: a day of retries runs
    //! in microseconds. (Tokio's paused time does not fit the dispatcher
    //! itself: sqlx's SQLite thread and real sockets look idle to the
    //! runtime, which then jumps its timers forward mid-query.)

    use super::*;

    const MIN: i64 = 60_000;

    fn claimed(attempts: u32, due_at: i64) -> Claimed {
        Claimed {
            id: "e1".into(),
            token: 1,
            mail_from: "a@example.com".into(),
            pending: vec!["b@example.com".into()],
            raw: Vec::new(),
            attempts,
            due_at,
            max_fails: None,
            max_time_ms: None,
        }
    }

    fn transient() -> Delivery {
        Delivery {
            relay: "relay:25".into(),
            outcome: Outcome::Transient("451 4.3.0 try later".into()),
            reply: None,
            recipients: Vec::new(),
            possible_duplicate: false,
        }
    }

    /// Walks an always-failing email from its due time (0) to its end;
    /// returns each attempt's time and how it ended.
    fn walk(s: &Settings) -> (Vec<i64>, Next, String) {
        let deadline = ms(s.max_time);
        let (mut now, mut times) = (0, Vec::new());
        for attempts in 0.. {
            times.push(now);
            let (next, _, reason) = decide(&claimed(attempts, 0), &transient(), s, now, deadline);
            match next {
                Next::Retry { at } => {
                    assert!(at > now, "a retry goes forward in time");
                    now = at;
                }
                end => return (times, end, reason),
            }
        }
        unreachable!()
    }

    #[test]
    fn retries_back_off_until_max_fails() {
        let s = Settings {
            max_fails: 6,
            max_time: Duration::from_secs(24 * 3600),
            ..Settings::default()
        };
        let (times, end, reason) = walk(&s);
        assert_eq!(times.len(), 6, "{times:?}");
        assert_eq!(end, Next::Failed);
        assert!(
            reason.starts_with("max-fails (6) reached: 451 4.3.0 try later"),
            "{reason}"
        );
        // 30 s, 1, 2, 4, 8 min before jitter, each within ±25%.
        for (i, pair) in times.windows(2).enumerate() {
            let wait = pair[1] - pair[0];
            let nominal = 30_000 << i;
            assert!(
                wait >= nominal * 3 / 4 && wait < nominal * 5 / 4,
                "wait {i}: {wait} ms, nominal {nominal}"
            );
        }
    }

    #[test]
    fn max_time_ends_the_retries_before_max_fails() {
        let s = Settings {
            max_fails: 100,
            max_time: Duration::from_secs(10 * 60),
            ..Settings::default()
        };
        let (times, end, reason) = walk(&s);
        assert_eq!(end, Next::Expired);
        assert!(
            reason.starts_with("max-time would pass before the next attempt: 451"),
            "{reason}"
        );
        // 30 s + 1 + 2 + 4 min (±25%) fit in 10 minutes; the next would not.
        assert!((4..=5).contains(&times.len()), "{times:?}");
        assert!(*times.last().unwrap_or(&0) < 10 * MIN);
    }

    #[test]
    fn the_wait_is_capped_at_retry_max() {
        let s = Settings {
            max_fails: 20,
            max_time: Duration::from_secs(7 * 24 * 3600),
            retry_max: Duration::from_secs(3600),
            ..Settings::default()
        };
        let (times, end, _) = walk(&s);
        assert_eq!((times.len(), end), (20, Next::Failed));
        let longest = times.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0);
        assert!(longest < 75 * MIN, "{longest} ms");
        assert!(longest >= 45 * MIN, "{longest} ms");
    }

    #[test]
    fn a_permanent_reply_is_never_retried() {
        let d = Delivery {
            outcome: Outcome::Permanent("550 5.1.1 no such user".into()),
            ..transient()
        };
        let (next, _, reason) = decide(&claimed(0, 0), &d, &Settings::default(), 0, 3_600_000);
        assert_eq!(next, Next::Failed);
        assert_eq!(reason, "550 5.1.1 no such user");
    }
}
