//! The embedded engine: one SQLite file that is both the queue and the
//! server's store.
//!
//! This file owns that database end to end: opening it with the settings
//! that make a commit durable, the schema (`migrations/sqlite/*.sql`), the
//! insert that enqueues, and the wake-up signal that tells a sleeping
//! `email-server` on the same machine that there is new work.
//!
//! Durability: WAL journal with `synchronous=FULL`, so `enqueue` returns
//! only after the row is on disk (one fsync per commit; buffered mode
//! batches many rows per commit).
//!
//! Group commit: single-email inserts that arrive while a commit is under
//! way (concurrent `enqueue` calls from the app's tasks) wait for it, then
//! go to disk together in the next transaction. Each call still returns
//! only once its own email is committed; many calls share one fsync.
//!
//! Write turns: every writer of this crate, in every process, takes an
//! exclusive `flock` on `<file>.lock` around its transaction (see
//! [`Embedded::write_turn`]), so writers wake the moment the previous one
//! is done instead of sleeping in SQLite's busy handler.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::oneshot;

use super::{EmailId, QueueError, Queued};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_indexes.sql"),
    include_str!("../../migrations/sqlite/0003_claim_index.sql"),
    include_str!("../../migrations/sqlite/0004_drop_next_index.sql"),
    include_str!("../../migrations/sqlite/0005_raw_apart.sql"),
];

/// A handle on the embedded database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Embedded {
    pool: SqlitePool,
    options: Arc<SqliteConnectOptions>,
    path: PathBuf,
    group: Arc<Group>,
    /// The `<file>.lock` this handle takes its write turns on (see
    /// [`Embedded::write_turn`]); `None` if it could not be opened.
    turns: Option<Arc<std::fs::File>>,
    waker: Arc<Waker>,
}

/// The socket wake-ups are sent from (opened once, not per commit) and
/// where they go.
#[derive(Debug)]
struct Waker {
    #[cfg(unix)]
    sock: Option<std::os::unix::net::UnixDatagram>,
    #[cfg_attr(not(unix), allow(dead_code))]
    to: PathBuf,
}

impl Waker {
    fn new(path: &Path) -> Waker {
        Waker {
            #[cfg(unix)]
            sock: std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .ok(),
            to: Embedded::wake_socket(path),
        }
    }
}

/// A turn at writing the database, between this crate's handles in every
/// process (see [`Embedded::write_turn`]). Ends when dropped.
#[derive(Debug)]
#[must_use = "the turn ends when this is dropped"]
pub struct WriteTurn(Option<Arc<std::fs::File>>);

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            file.unlock().ok();
        }
    }
}

/// The background checkpoint of [`Embedded::spawn_checkpointer`]; stops
/// when dropped.
#[derive(Debug)]
pub struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long [`Embedded::write_turn`] waits before writing without a turn
/// (as long as SQLite's own busy timeout: a process that holds its turn
/// this long is stuck, and SQLite's lock decides).
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Single-email inserts waiting for the next group commit, each with
/// where its result goes.
type Waiting = Vec<(Queued, oneshot::Sender<Result<EmailId, QueueError>>)>;

/// The group commit's state: who is waiting, and whose turn it is to
/// commit for everyone.
#[derive(Debug, Default)]
struct Group {
    waiting: Mutex<Waiting>,
    turn: tokio::sync::Mutex<()>,
    /// How many emails the last commit carried.
    last: AtomicUsize,
}

/// The longest a commit waits for the callers of the last one to join.
const GATHER: Duration = Duration::from_micros(200);

impl Embedded {
    /// Opens (creating if needed) the database at `path` and brings its
    /// schema up to date. The application's `Mailer` and `email-server`
    /// open the file the same way: one connection and an 8 MiB page cache
    /// (the default is 2 MiB).
    ///
    /// One connection, because SQLite has one writer at a time, and
    /// connections of one process contending for it fall back on SQLite's
    /// busy handler, which sleeps for milliseconds; with one, the process
    /// queues its writes instead (an application's through the group
    /// commit), and its page cache is not invalidated by its own other
    /// connections' writes. No memory map: it once took dispatch from
    /// about 2,900 to 5,300 emails/s, when every attempt was recorded with
    /// statements of its own; now that attempts are recorded a batch at a
    /// time, the cache alone dispatches as fast, from an empty store and
    /// from one holding a million scheduled emails, while a 64 MiB cache
    /// and map put 72 MB in the server's RSS against 24 MB
    /// (BENCHMARKS.md).
    pub async fn open(path: impl AsRef<Path>) -> Result<Embedded, QueueError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| QueueError::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| open_error(&path, e))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Several processes share the file; wait for the writer lock
            // rather than failing at once.
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-8192")
            .pragma("wal_autocheckpoint", "4000");
        let turns = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::lock_file(&path))
            .map(Arc::new)
            .ok();
        // Opening a new file switches it to WAL, which SQLite does without
        // waiting on its busy handler: two handles opening a new file at
        // once failed with "database is locked". Taking turns avoids that.
        let turn = take_turn(turns.clone()).await;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            // A local file does not go stale; skip the ping before each use.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(&path, e))?;
        let db = Embedded {
            pool,
            options: Arc::new(options),
            waker: Arc::new(Waker::new(&path)),
            path,
            group: Arc::default(),
            turns,
        };
        db.migrate().await?;
        drop(turn);
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), QueueError> {
        let err = |e| open_error(&self.path, e);
        let mut conn = Checked::new(self.pool.acquire().await.map_err(err)?);
        conn.writing();
        // Foreign keys off while migrating, as SQLite's procedure for
        // rebuilding a table asks (0005 drops and renames `emails`, which
        // `attempts` refers to); checked before the commit instead. The
        // pragma is a no-op inside a transaction, so it comes first.
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut **conn)
            .await
            .map_err(err)?;
        let result = self.migrate_on(&mut conn).await;
        let on = sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut **conn)
            .await;
        conn.done = result.is_ok() && on.is_ok();
        result?;
        on.map_err(err)?;
        Ok(())
    }

    async fn migrate_on(&self, conn: &mut sqlx::SqliteConnection) -> Result<(), QueueError> {
        let err = |e| open_error(&self.path, e);
        // BEGIN IMMEDIATE takes the write lock first, so two processes
        // opening a new file at once do not both run the same migration.
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
            .await
            .map_err(err)?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(QueueError::Open {
                path: self.path.clone(),
                reason: format!(
                    "schema version {version} is newer than this build knows ({}); upgrade",
                    MIGRATIONS.len()
                ),
            });
        }
        if version == MIGRATIONS.len() {
            return Ok(());
        }
        let before: Vec<(String, Option<i64>, String, i64)> =
            sqlx::query_as("PRAGMA foreign_key_check")
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
        let before: std::collections::HashSet<_> = before.into_iter().collect();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(err)?;
            let set = format!("PRAGMA user_version = {}", i + 1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let broken: Vec<(String, Option<i64>, String, i64)> =
            sqlx::query_as("PRAGMA foreign_key_check")
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
        // Only what migrating broke: rows orphaned before (say, by a
        // delete in the `sqlite3` shell, which has foreign keys off) must
        // not keep the file from opening.
        let broken: Vec<_> = broken.into_iter().filter(|b| !before.contains(b)).collect();
        if let Some((table, rowid, parent, _)) = broken.first() {
            return Err(QueueError::Open {
                path: self.path.clone(),
                reason: format!(
                    "after migrating: {} row(s) refer to missing rows, e.g. {table} row {} \
                     to {parent}; nothing was changed",
                    broken.len(),
                    rowid.unwrap_or_default()
                ),
            });
        }
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    /// The connection pool, for the server's store, which shares the file.
    /// It holds one connection (see [`Embedded::open`]): a caller that
    /// keeps it checked out delays this process's own enqueues.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inserts emails in one transaction (one fsync), returning each one's
    /// id: the new id, or the first email's id when its idempotency key was
    /// already used.
    ///
    /// A single email joins the group commit: calls made while another
    /// commit is under way share the next one (see the module docs).
    pub async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        let [q] = batch else {
            let ids = self.insert_batch(batch).await?;
            self.wake();
            return Ok(ids);
        };
        let (tx, mut rx) = oneshot::channel();
        self.waiting().push((q.clone(), tx));
        let done = tokio::select! {
            // Committed by whoever had the turn: done, without queueing
            // for a turn of our own (queued callers would not be making
            // new emails, and every commit would carry just one).
            done = &mut rx => done,
            _turn = self.group.turn.lock() => {
                // Our turn: commit everything waiting, our email included
                // unless the previous turn took it. The callers of the
                // last commit are likely making their next emails right
                // now: give them a moment to join this one.
                let expected = self.group.last.load(Ordering::Relaxed);
                let until = std::time::Instant::now() + GATHER;
                while self.waiting().len() < expected && std::time::Instant::now() < until {
                    tokio::task::yield_now().await;
                }
                let waiting = std::mem::take(&mut *self.waiting());
                self.group.last.store(waiting.len(), Ordering::Relaxed);
                if !waiting.is_empty() {
                    // In a task of its own, so that a caller giving up (its
                    // future dropped) does not abandon the others' emails
                    // halfway through their commit.
                    let db = self.clone();
                    tokio::spawn(async move { db.commit_group(waiting).await })
                        .await
                        .ok();
                }
                rx.await
            }
        };
        let id = done.unwrap_or_else(|_| {
            Err(QueueError::Write(
                "the group commit was interrupted; the email may or may not be stored".into(),
            ))
        })?;
        Ok(vec![id])
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.group
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits the waiting single-email inserts together, and tells each
    /// caller its result. If the shared transaction fails, each email is
    /// tried alone, so one bad email cannot fail the others.
    async fn commit_group(&self, waiting: Waiting) {
        let (emails, replies): (Vec<Queued>, Vec<_>) = waiting.into_iter().unzip();
        match self.insert_batch(&emails).await {
            Ok(ids) => {
                self.wake();
                for (reply, id) in replies.into_iter().zip(ids) {
                    reply.send(Ok(id)).ok();
                }
            }
            Err(e) if emails.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    reply.send(Err(e)).ok();
                }
            }
            Err(_) => {
                for (q, reply) in emails.iter().zip(replies) {
                    let one = self
                        .insert_batch(std::slice::from_ref(q))
                        .await
                        .map(|ids| ids.first().copied().unwrap_or(q.id));
                    if one.is_ok() {
                        self.wake();
                    }
                    reply.send(one).ok();
                }
            }
        }
    }

    /// Inserts a batch atomically: one query (one round trip to sqlx's
    /// connection thread) holding BEGIN, the two INSERTs and COMMIT when it
    /// fits in one, else a transaction of several.
    async fn insert_batch(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = Checked::new(self.pool.acquire().await.map_err(QueueError::from_sqlx)?);
        let _turn = self.write_turn().await;
        conn.writing();
        let result = async {
            if batch.len() <= MAX_ROWS {
                return insert_rows(&mut conn, batch, true).await;
            }
            let mut tx = sqlx::Connection::begin(&mut **conn)
                .await
                .map_err(QueueError::from_sqlx)?;
            let mut ids = Vec::with_capacity(batch.len());
            for rows in batch.chunks(MAX_ROWS) {
                ids.extend(insert_rows(&mut tx, rows, false).await?);
            }
            tx.commit().await.map_err(QueueError::from_sqlx)?;
            Ok(ids)
        }
        .await;
        // A failed write (disk full, an I/O error) can leave SQLite's
        // transaction open (for certain when a statement of the one-query
        // form failed between its BEGIN and COMMIT) and the file's write
        // lock held; the connection is then closed (see `Checked`), a new
        // one starts clean, and the server is not locked out.
        conn.done = result.is_ok();
        result
    }

    /// The path of the file that write turns are taken on.
    pub fn lock_file(path: &Path) -> PathBuf {
        beside(path, ".lock")
    }

    /// Waits for this process's turn to write, among every handle on the
    /// file opened by this crate (applications and servers): an exclusive
    /// `flock` on `<file>.lock`, held until the returned turn is dropped.
    /// Take it with this handle's connection already checked out, and
    /// keep it until the transaction has committed.
    ///
    /// SQLite has one writer at a time. A writer that finds the file
    /// locked sleeps in SQLite's busy handler, 1, 2, then 5 ms and more,
    /// while a commit holds the lock for a few tenths of a millisecond; with
    /// an application enqueueing and a server dispatching on one file, most
    /// of the time went on such sleeps. A writer waiting on this lock is
    /// woken by the kernel the moment the previous one is done.
    ///
    /// An optimisation only: SQLite's own locking keeps writes correct, so a
    /// writer without a turn (an older build, the `sqlite3` shell, a lock
    /// file that could not be opened, or a turn not granted within
    /// [`TURN_WAIT`]) still writes safely.
    pub async fn write_turn(&self) -> WriteTurn {
        take_turn(self.turns.clone()).await
    }

    /// Starts copying committed pages from the write-ahead log into the
    /// database file every `every`, on a connection of its own, until the
    /// returned handle is dropped. `email-server` runs one.
    ///
    /// Without it, SQLite checkpoints inside the commit that takes the log
    /// past 4,000 pages: that writer (an application's `enqueue`, or the
    /// dispatcher) then spends tens of milliseconds copying pages while
    /// holding its write turn, and every other writer waits. A background
    /// checkpoint needs no write lock, so writers go on meanwhile; run
    /// often, each copies little, and the log stays short and is reused
    /// from its start. The 4,000-page automatic checkpoint remains, for
    /// when no server runs.
    pub fn spawn_checkpointer(&self, every: Duration) -> Checkpointer {
        let options = self.options.clone();
        let path = self.path.clone();
        Checkpointer(tokio::spawn(async move {
            let mut conn: Option<sqlx::SqliteConnection> = None;
            let mut warned = false;
            loop {
                tokio::time::sleep(every).await;
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match sqlx::ConnectOptions::connect(&*options).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            if !std::mem::replace(&mut warned, true) {
                                tracing::warn!(path = %path.display(), error = %e, "background checkpoint: cannot open the database; SQLite's automatic checkpoint remains");
                            }
                            continue;
                        }
                    },
                };
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *c)
                    .await
                {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(path = %path.display(), error = %e, "background checkpoint failed; retrying");
                    }
                    conn = None;
                } else {
                    warned = false;
                }
            }
        }))
    }

    /// The path of the wake-up socket a running server listens on.
    pub fn wake_socket(path: &Path) -> PathBuf {
        beside(path, ".wake")
    }

    /// Tells a server sleeping on this file that there is new work. Best
    /// effort: if no server listens, the email waits in the file.
    pub fn wake(&self) {
        #[cfg(unix)]
        if let Some(sock) = &self.waker.sock {
            sock.send_to(b"!", &self.waker.to).ok();
        }
    }
}

/// Most emails in one INSERT statement. Each row count up to this is a
/// query shape (two: with and without BEGIN and COMMIT) prepared once per
/// connection.
const MAX_ROWS: usize = 32;

/// Inserts up to [`MAX_ROWS`] emails, returning each one's id: their rows
/// in `emails` and their bytes in `email_raw`, with two statements sent as
/// one query; `transaction` wraps them in BEGIN and COMMIT in that same
/// query (else the caller holds a transaction open).
///
/// An email whose idempotency key is taken is not inserted, and neither
/// are its bytes: the second statement stores bytes under the `seq` of
/// the row with that id. An email whose id is already stored (a queue
/// redelivered it) writes its bytes again, the same bytes. Bytes already
/// under a new row's `seq` are overwritten: they can only be left over
/// from a row deleted by hand (SQLite may reuse the largest rowid once
/// its row is gone), and must not be sent as this email.
async fn insert_rows(
    conn: &mut sqlx::SqliteConnection,
    rows: &[Queued],
    transaction: bool,
) -> Result<Vec<EmailId>, QueueError> {
    debug_assert!(!rows.is_empty() && rows.len() <= MAX_ROWS);
    let (begin, commit) = if transaction {
        ("BEGIN; ", "; COMMIT")
    } else {
        ("", "")
    };
    // sqlx numbers anonymous parameters on across the statements of one
    // query: the first statement takes 15 per row, the second 2 per row.
    let sql = format!(
        "{begin}INSERT INTO emails (id, idempotency_key, state, priority, created_at, due_at, \
         next_at, max_fails, max_time_ms, mail_from, recipients, pending, subject, message_id, \
         tags) VALUES {} ON CONFLICT DO NOTHING RETURNING id; \
         INSERT INTO email_raw (seq, raw) SELECT e.seq, v.column2 FROM (VALUES {}) AS v \
          JOIN emails AS e ON e.id = v.column1 WHERE true \
          ON CONFLICT (seq) DO UPDATE SET raw = excluded.raw{commit}",
        vec!["(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"; rows.len()].join(","),
        vec!["(?,?)"; rows.len()].join(","),
    );
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for q in rows {
        let recipients =
            serde_json::to_string(&q.rcpt_to).map_err(|e| QueueError::Encode(e.to_string()))?;
        let state = if q.due_at_ms > q.created_at_ms {
            "scheduled"
        } else {
            "queued"
        };
        query = query
            .bind(q.id.to_string())
            .bind(&q.idempotency_key)
            .bind(state)
            .bind(q.priority)
            .bind(q.created_at_ms)
            .bind(q.due_at_ms)
            .bind(q.due_at_ms)
            .bind(q.max_fails.map(i64::from))
            .bind(q.max_time_ms)
            .bind(&q.mail_from)
            .bind(recipients.clone())
            .bind(recipients)
            .bind(&q.subject)
            .bind(&q.message_id)
            .bind(&q.tags);
    }
    for q in rows {
        query = query.bind(q.id.to_string()).bind(&q.raw);
    }
    let inserted: Vec<String> = query
        .fetch_all(&mut *conn)
        .await
        .map_err(QueueError::from_sqlx)?;
    let mut ids = Vec::with_capacity(rows.len());
    for q in rows {
        // Not inserted: either this very id is already stored (a queue
        // redelivered it; intake is idempotent) or its idempotency key is
        // (perhaps by an earlier row of this same statement).
        let fresh = inserted.len() == rows.len() || inserted.contains(&q.id.to_string());
        let Some(key) = q.idempotency_key.as_deref().filter(|_| !fresh) else {
            ids.push(q.id);
            continue;
        };
        let id: String = sqlx::query_scalar("SELECT id FROM emails WHERE idempotency_key = ?1")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(QueueError::from_sqlx)?;
        ids.push(
            id.parse()
                .map_err(|_| QueueError::Encode(format!("stored id {id:?} is not a UUID")))?,
        );
    }
    Ok(ids)
}

/// A connection checked out of the pool that is closed instead of
/// returned unless its work finished (`done`). SQLite rolls back what a
/// closed connection left open, and releases its locks.
///
/// Needed because a caller may drop a write midway (a timeout around
/// `enqueue`): sqlx's connection thread stops running a query's remaining
/// statements once nobody reads their results, so the COMMIT of the
/// one-query insert (`BEGIN; …; COMMIT`) would never run, and the
/// connection would go back to the pool inside a transaction, holding the
/// file's write lock against every other process.
struct Checked {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    done: bool,
}

impl Checked {
    /// Clean until [`Checked::writing`]: a caller that gives up while
    /// waiting for its write turn leaves a connection worth keeping.
    fn new(conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) -> Checked {
        Checked { conn, done: true }
    }

    /// From here until `done` is set again, dropping closes it.
    fn writing(&mut self) {
        self.done = false;
    }
}

impl std::ops::Deref for Checked {
    type Target = sqlx::pool::PoolConnection<sqlx::Sqlite>;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for Checked {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

/// Takes a write turn on `file` (see [`Embedded::write_turn`]).
async fn take_turn(file: Option<Arc<std::fs::File>>) -> WriteTurn {
    let Some(file) = file else {
        return WriteTurn(None);
    };
    match file.try_lock() {
        Ok(()) => return WriteTurn(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(_)) => return WriteTurn(None),
    }
    // Blocks a thread of the blocking pool. If the wait is given up,
    // the turn is still taken when the lock comes, and then dropped at
    // once (tokio drops the output of a task nobody awaits).
    let wait = tokio::task::spawn_blocking(move || match file.lock() {
        Ok(()) => WriteTurn(Some(file)),
        Err(_) => WriteTurn(None),
    });
    match tokio::time::timeout(TURN_WAIT, wait).await {
        Ok(Ok(turn)) => turn,
        _ => WriteTurn(None),
    }
}

/// `path` with `suffix` appended: a file kept beside the database.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn open_error(path: &Path, e: impl std::fmt::Display) -> QueueError {
    QueueError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
