//! The thread that commits a handle's inserts: one OS thread owning one
//! SQLite connection (rusqlite), fed by a channel.
//!
//! An `enqueue` puts its emails on the channel and waits for its reply:
//! two hand-offs between threads per call. Through sqlx, whose SQLite
//! connection also lives on a thread of its own, the same insert took a
//! task for the group commit, the pool's checkout and return, a command
//! and a result message per statement, about 17 context switches per call
//! (BENCHMARKS.md, issue 3). The thread is also the group commit: whatever
//! arrived while it was committing goes to disk together in its next
//! transaction.
//!
//! The thread also runs tasks ([`super::Embedded::on_writer`]): the
//! `email-server` SQLite store's claims and records, each one hand-off
//! there and one back, beside the inserts.
//!
//! The thread starts on a handle's first insert or task and ends when the
//! last clone of the handle is dropped (its channel closes). Reads, the
//! migrations and the store's occasional writes stay on the sqlx pool.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{TURN_WAIT, Waker, open_error};
use crate::queue::{EmailId, QueueError, Queued};

/// The longest a commit waits for the callers of the last one to join.
const GATHER: Duration = Duration::from_micros(200);

/// One caller's emails, committed atomically (alone or with others'), and
/// where the ids go.
pub(super) struct Job {
    emails: Vec<Queued>,
    reply: oneshot::Sender<Result<Vec<EmailId>, QueueError>>,
}

/// Work run on the thread's connection (see [`super::Embedded::on_writer`]).
pub(super) type Task = Box<dyn FnOnce(&mut Writing<'_>) + Send>;

/// What the thread is sent.
pub(super) enum Message {
    Insert(Job),
    Run(Task),
}

impl Message {
    /// An insert of `emails`, and where its ids will come.
    pub(super) fn insert(
        emails: Vec<Queued>,
    ) -> (Message, oneshot::Receiver<Result<Vec<EmailId>, QueueError>>) {
        let (reply, rx) = oneshot::channel();
        (Message::Insert(Job { emails, reply }), rx)
    }
}

/// Where a handle sends its inserts and tasks.
#[derive(Debug)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Message>,
}

/// The writer thread's connection, lent to a task given to
/// [`super::Embedded::on_writer`]: the `email-server` store's claims and
/// records run here, beside the handle's inserts.
pub struct Writing<'a> {
    /// The connection: WAL, `synchronous=FULL`, foreign keys on. A task that
    /// changes a setting for itself must put it back, or call
    /// [`Writing::reopen`].
    pub conn: &'a mut rusqlite::Connection,
    turns: Option<&'a Turns>,
    reopen: &'a mut bool,
}

impl<'a> Writing<'a> {
    /// Waits for this thread's write turn (see
    /// [`super::Embedded::write_turn`]); it ends when the returned value is
    /// dropped. Take it just before `BEGIN IMMEDIATE` and keep it until the
    /// commit. Never take a second one while holding one: both are the same
    /// `flock`, and the first dropped ends the turn for both.
    pub fn turn(&self) -> WriterTurn<'a> {
        WriterTurn(self.turns.map(Turns::take))
    }

    /// Asks for a new connection once the task returns (the old one is
    /// closed, and SQLite rolls back what it left open): for a task that
    /// could not put a setting back.
    pub fn reopen(&mut self) {
        *self.reopen = true;
    }
}

/// A write turn taken by [`Writing::turn`]; ends when dropped.
#[must_use = "the turn ends when this is dropped"]
pub struct WriterTurn<'a>(#[allow(dead_code)] Option<Turn<'a>>);

impl Writer {
    /// Starts the thread, which opens its connection to `path` (whose
    /// schema is up to date; an absolute path, so that the application
    /// changing its working directory does not move it); returns once the
    /// connection is open. Opening may wait on SQLite's locks (another
    /// process recovering the file), so it happens there, not on the
    /// caller's thread.
    pub(super) async fn start(
        path: PathBuf,
        lock: PathBuf,
        waker: Arc<Waker>,
    ) -> Result<Writer, QueueError> {
        let (jobs, rx) = mpsc::channel();
        let (ready, opened) = oneshot::channel();
        let at = path.clone();
        std::thread::Builder::new()
            .name("email-sqlite-writer".into())
            .spawn(move || {
                let conn = match connect(&path) {
                    Ok(conn) => conn,
                    Err(e) => {
                        ready.send(Err(open_error(&path, e))).ok();
                        return;
                    }
                };
                ready.send(Ok(())).ok();
                // Its own open file description of the lock file: `flock`
                // then excludes this thread's writes from the rest of the
                // process's (the server's store, when it runs in the same
                // process) as well as from other processes'.
                let turns = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(lock)
                    .ok()
                    .map(Turns::new);
                run(conn, &path, &rx, turns.as_ref(), &waker);
            })
            .map_err(|e| open_error(&at, format!("starting the writer thread: {e}")))?;
        opened
            .await
            .unwrap_or_else(|_| Err(open_error(&at, "the writer thread stopped while opening")))?;
        Ok(Writer { jobs })
    }

    /// Hands `message` to the thread; `Err` gives it back if the thread
    /// has stopped.
    pub(super) fn send(&self, message: Message) -> Result<(), Message> {
        self.jobs.send(message).map_err(|e| e.0)
    }
}

/// Opens the writer's connection with the settings of
/// [`super::Embedded::open`]: WAL, `synchronous=FULL`, foreign keys on,
/// an 8 MiB page cache (a server's claims run here, and with a million
/// scheduled emails their index pages are worth keeping; the cache only
/// grows as pages are read).
fn connect(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(TURN_WAIT)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 4000; PRAGMA cache_size = -8192;",
    )?;
    Ok(conn)
}

/// The thread: takes every job waiting, commits them in one transaction,
/// replies; until every sender is gone.
fn run(
    mut conn: rusqlite::Connection,
    path: &Path,
    rx: &mpsc::Receiver<Message>,
    turns: Option<&Turns>,
    waker: &Waker,
) {
    let mut last = 1;
    while let Ok(first) = rx.recv() {
        let mut tasks = Vec::new();
        match first {
            Message::Run(task) => tasks.push(task),
            Message::Insert(job) => {
                let mut jobs = vec![job];
                gather(rx, &mut jobs, &mut tasks, last);
                last = jobs.len();
                commit(&mut conn, jobs, turns, waker);
                if !fresh_if_needed(&mut conn, path, false) {
                    return;
                }
            }
        }
        for task in tasks {
            let mut reopen = false;
            // A task that panics loses its own result (its caller is told
            // the task did not finish), not the thread and everyone else's
            // work queued behind it.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                task(&mut Writing {
                    conn: &mut conn,
                    turns,
                    reopen: &mut reopen,
                });
            }));
            if ran.is_err() {
                tracing::error!(
                    "a task on the queue's writer thread panicked; reopening its connection"
                );
                reopen = true;
            }
            if !fresh_if_needed(&mut conn, path, reopen) {
                return;
            }
        }
    }
}

/// Replaces the connection when asked to, or when it was left inside a
/// transaction: a failed ROLLBACK (rusqlite's drop ignores its error)
/// would keep the transaction open, holding the file's write lock against
/// every other process; SQLite rolls back what a closed connection left
/// open. `false` when no new connection can be opened: the thread then
/// ends, and the handle's next insert or task starts another.
fn fresh_if_needed(conn: &mut rusqlite::Connection, path: &Path, asked: bool) -> bool {
    if !asked && conn.is_autocommit() {
        return true;
    }
    match connect(path) {
        Ok(fresh) => {
            *conn = fresh;
            true
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "the queue's writer cannot reopen the database; the next insert starts a new writer");
            false
        }
    }
}

/// Adds the jobs already waiting, then, while there are fewer than the
/// last commit carried, waits up to [`GATHER`] for more: the callers of
/// the last commit are likely making their next emails right now, and
/// would otherwise each pay a commit of their own.
///
/// Tasks that arrive meanwhile are kept for after the commit, and end the
/// wait: someone is waiting for them.
fn gather(
    rx: &mpsc::Receiver<Message>,
    jobs: &mut Vec<Job>,
    tasks: &mut Vec<Task>,
    expected: usize,
) {
    fn sort(m: Message, jobs: &mut Vec<Job>, tasks: &mut Vec<Task>) {
        match m {
            Message::Insert(job) => jobs.push(job),
            Message::Run(task) => tasks.push(task),
        }
    }
    rx.try_iter().for_each(|m| sort(m, jobs, tasks));
    let until = Instant::now() + GATHER;
    while jobs.len() < expected && tasks.is_empty() {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(m) => {
                sort(m, jobs, tasks);
                rx.try_iter().for_each(|m| sort(m, jobs, tasks));
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Commits `jobs` together and replies to each. If the shared transaction
/// fails because of what some email holds (a constraint, a value SQLite
/// refuses), each job is tried alone, so that one bad email cannot fail
/// the others' calls; if it fails because of the file (locked, full, an
/// I/O error), they all get that error at once.
fn commit(conn: &mut rusqlite::Connection, jobs: Vec<Job>, turns: Option<&Turns>, waker: &Waker) {
    let result = {
        let _turn = turns.map(Turns::take);
        write(conn, jobs.iter().flat_map(|j| &j.emails))
    };
    match result {
        Ok(ids) => {
            waker.wake();
            let mut ids = ids.into_iter();
            for job in jobs {
                let mine = ids.by_ref().take(job.emails.len()).collect();
                job.reply.send(Ok(mine)).ok();
            }
        }
        Err(Failed { error, file: true }) => {
            // Every caller gets the error (QueueError is not Clone).
            let again = |e: &QueueError| match e {
                QueueError::Full => QueueError::Full,
                QueueError::Write(text) => QueueError::Write(text.clone()),
                other => QueueError::Write(other.to_string()),
            };
            for job in jobs {
                job.reply.send(Err(again(&error))).ok();
            }
        }
        Err(Failed { error, .. }) if jobs.len() == 1 => {
            if let Some(job) = jobs.into_iter().next() {
                job.reply.send(Err(error)).ok();
            }
        }
        Err(_) => {
            for job in jobs {
                let one = {
                    let _turn = turns.map(Turns::take);
                    write(conn, &job.emails)
                };
                if one.is_ok() {
                    waker.wake();
                }
                job.reply.send(one.map_err(|f| f.error)).ok();
            }
        }
    }
}

/// Why [`write`] failed, and whether the file is to blame rather than an
/// email.
struct Failed {
    error: QueueError,
    file: bool,
}

fn error(e: rusqlite::Error) -> Failed {
    use rusqlite::ErrorCode as C;
    let code = e.sqlite_error_code();
    let file = matches!(
        code,
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::DiskFull
                | C::SystemIoFailure
                | C::CannotOpen
                | C::ReadOnly
                | C::OutOfMemory
                | C::DatabaseCorrupt
                | C::NotADatabase
                | C::PermissionDenied
                | C::FileLockingProtocolFailed
        )
    );
    let error = match code {
        Some(C::DiskFull) => QueueError::Full,
        _ => QueueError::Write(e.to_string()),
    };
    Failed { error, file }
}

impl From<QueueError> for Failed {
    fn from(error: QueueError) -> Failed {
        Failed { error, file: false }
    }
}

/// Inserts emails in one transaction (one fsync), returning each one's
/// id. A failure rolls everything back (the transaction is dropped).
///
/// An email whose idempotency key is taken is not inserted, and neither
/// are its bytes: its id is the first email's. An email whose id is
/// already stored (a queue redelivered it; intake is idempotent) writes
/// its bytes again, the same bytes. Bytes already under a new row's `seq`
/// are overwritten: they can only be left over from a row deleted by hand
/// (SQLite may reuse the largest rowid once its row is gone), and must
/// not be sent as this email.
fn write<'a>(
    conn: &mut rusqlite::Connection,
    emails: impl IntoIterator<Item = &'a Queued>,
) -> Result<Vec<EmailId>, Failed> {
    let result = (|| {
        // IMMEDIATE: the write lock first, so the transaction never has
        // to upgrade from a read lock (which fails at once when another
        // writer got in between, whatever the busy timeout).
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let mut ids = Vec::new();
        for q in emails {
            ids.push(insert(&tx, q)?);
        }
        tx.commit().map_err(error)?;
        Ok(ids)
    })();
    result.map_err(|failed| match newer_schema(conn) {
        // A newer build migrated the file under this running process: its
        // statements may name columns that are gone. Say so, instead of
        // SQLite's "no such column".
        Some(version) => Failed {
            error: QueueError::Write(format!(
                "the database was upgraded to schema version {version} (this build knows {}) by \
                 a newer build while this process was running; restart it with that build \
                 (nothing was stored by this call)",
                super::MIGRATIONS.len()
            )),
            file: true,
        },
        None => failed,
    })
}

/// The file's schema version, if it is newer than this build's.
fn newer_schema(conn: &rusqlite::Connection) -> Option<i64> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ok()?;
    (usize::try_from(version).ok()? > super::MIGRATIONS.len()).then_some(version)
}

/// Inserts one email inside `tx`; see [`write`].
fn insert(tx: &rusqlite::Transaction<'_>, q: &Queued) -> Result<EmailId, Failed> {
    let recipients = serde_json::to_string(&q.rcpt_to)
        .map_err(|e| Failed::from(QueueError::Encode(e.to_string())))?;
    let state = if q.due_at_ms > q.created_at_ms {
        "scheduled"
    } else {
        "queued"
    };
    let id = q.id.to_string();
    let inserted: Option<i64> = tx
        .prepare_cached(
            "INSERT INTO emails (id, idempotency_key, state, priority, created_at, due_at, \
             next_at, max_fails, max_time_ms, mail_from, recipients, pending, subject, \
             message_id, tags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?10, ?11, \
             ?12, ?13) ON CONFLICT DO NOTHING RETURNING seq",
        )
        .map_err(error)?
        .query_row(
            params![
                id,
                q.idempotency_key,
                state,
                q.priority,
                q.created_at_ms,
                q.due_at_ms,
                q.max_fails.map(i64::from),
                q.max_time_ms,
                q.mail_from,
                recipients,
                q.subject,
                q.message_id,
                q.tags,
            ],
            |r| r.get(0),
        )
        .optional()
        .map_err(error)?;
    // Not inserted: either this very id is already stored, or its
    // idempotency key is (perhaps by an earlier email of this same
    // transaction).
    let seq = match inserted {
        Some(seq) => Some(seq),
        None => tx
            .prepare_cached("SELECT seq FROM emails WHERE id = ?1")
            .map_err(error)?
            .query_row([&id], |r| r.get(0))
            .optional()
            .map_err(error)?,
    };
    if let Some(seq) = seq {
        tx.prepare_cached(
            "INSERT INTO email_raw (seq, raw) VALUES (?1, ?2) \
             ON CONFLICT (seq) DO UPDATE SET raw = excluded.raw",
        )
        .map_err(error)?
        .execute(params![seq, q.raw])
        .map_err(error)?;
        return Ok(q.id);
    }
    let Some(key) = q.idempotency_key.as_deref() else {
        return Err(QueueError::Write(format!("email {id} was neither inserted nor found")).into());
    };
    let first: String = tx
        .prepare_cached("SELECT id FROM emails WHERE idempotency_key = ?1")
        .map_err(error)?
        .query_row([key], |r| r.get(0))
        .map_err(error)?;
    Ok(first
        .parse()
        .map_err(|_| QueueError::Encode(format!("stored id {first:?} is not a UUID")))?)
}

/// Write turns for the thread (see [`super::Embedded::write_turn`]): an
/// exclusive `flock` on its own open file description of `<file>.lock`.
///
/// `flock` has no timeout, and a turn not granted within [`TURN_WAIT`] is
/// written without (SQLite's own lock then decides), so a contended turn is
/// waited for on a second thread, started the first time one is needed,
/// which grants it only if the writer still wants it; a lock it gets too
/// late is let go at once.
pub(super) struct Turns {
    file: Arc<std::fs::File>,
    state: Arc<(Mutex<TurnState>, Condvar)>,
    locker: Mutex<Option<mpsc::Sender<u64>>>,
}

#[derive(Default)]
struct TurnState {
    /// The request the writer waits for (0: none).
    wanted: u64,
    /// The request the locker granted.
    granted: u64,
    /// The writer holds the lock (a `flock` of the same open file
    /// description merges with it, so the locker must not release it).
    held: bool,
    next: u64,
}

/// A turn taken by [`Turns::take`]: ends when dropped.
pub(super) struct Turn<'a>(&'a Turns, bool);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.1 {
            let mut s = self.0.lock();
            s.held = false;
            self.0.file.unlock().ok();
        }
    }
}

impl Turns {
    fn new(file: std::fs::File) -> Turns {
        Turns {
            file: Arc::new(file),
            state: Arc::default(),
            locker: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the turn, at most [`TURN_WAIT`].
    fn take(&self) -> Turn<'_> {
        let mut s = self.lock();
        match self.file.try_lock() {
            Ok(()) => {
                s.held = true;
                return Turn(self, true);
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(_)) => return Turn(self, false),
        }
        s.next += 1;
        let n = s.next;
        s.wanted = n;
        if !self.ask(n) {
            s.wanted = 0;
            return Turn(self, false);
        }
        let (mut s, _) = self
            .state
            .1
            .wait_timeout_while(s, TURN_WAIT, |s| s.wanted == n && s.granted != n)
            .unwrap_or_else(PoisonError::into_inner);
        s.wanted = 0;
        s.held = s.granted == n;
        Turn(self, s.held)
    }

    /// Asks the locker thread (started if need be) for request `n`.
    fn ask(&self, n: u64) -> bool {
        let mut locker = self.locker.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = locker.as_ref()
            && tx.send(n).is_ok()
        {
            return true;
        }
        let (tx, rx) = mpsc::channel::<u64>();
        let file = self.file.clone();
        let state = self.state.clone();
        let started = std::thread::Builder::new()
            .name("email-sqlite-turns".into())
            .spawn(move || {
                let (m, cv) = &*state;
                let lock = || m.lock().unwrap_or_else(PoisonError::into_inner);
                for n in rx {
                    // Given up on already: no need to queue for the lock.
                    if lock().wanted != n {
                        continue;
                    }
                    let ok = file.lock().is_ok();
                    let mut s = lock();
                    if s.wanted != 0 {
                        // Granted to the request waiting now (the one asked
                        // for, or a later one if that was given up on
                        // meanwhile), or, if the lock failed, given up.
                        if ok {
                            s.granted = s.wanted;
                        } else {
                            s.wanted = 0;
                        }
                        cv.notify_all();
                    } else if ok && !s.held {
                        file.unlock().ok();
                    }
                }
            });
        if started.is_err() || tx.send(n).is_err() {
            return false;
        }
        *locker = Some(tx);
        true
    }
}
