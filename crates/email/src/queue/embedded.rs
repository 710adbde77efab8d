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
//! Inserts: each handle commits its inserts on a thread of its own with a
//! connection of its own (rusqlite; see the `writer` module), which also
//! runs the server's claims and records ([`Embedded::on_writer`]); the
//! rest (migrations, reads, the server's occasional writes) goes through a
//! sqlx pool of one connection.
//!
//! Group commit: inserts that arrive while a commit is under way
//! (concurrent `enqueue` calls from the app's tasks) wait for it, then go
//! to disk together in the next transaction. Each call still returns only
//! once its own email is committed; many calls share one fsync.
//!
//! Write turns: every writer of this crate, in every process, takes an
//! exclusive `flock` on `<file>.lock` around its transaction (see
//! [`Embedded::write_turn`]), so writers wake the moment the previous one
//! is done instead of sleeping in SQLite's busy handler.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::oneshot;

use super::{EmailId, QueueError, Queued};

mod writer;
/// The SQLite binding of the writer thread ([`Embedded::on_writer`]), for
/// code that runs there to name its types with the same version.
pub use rusqlite;
use writer::Writer;
pub use writer::{WriterTurn, Writing};

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
    /// The thread this handle's inserts and tasks run on, once started.
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    /// `path` made absolute when opened, for the writer thread's
    /// connection (opened later, perhaps after the application changed
    /// its working directory).
    absolute: PathBuf,
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

    /// See [`Embedded::wake`].
    fn wake(&self) {
        #[cfg(unix)]
        if let Some(sock) = &self.sock {
            sock.send_to(b"!", &self.to).ok();
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

impl Embedded {
    /// Opens (creating if needed) the database at `path` and brings its
    /// schema up to date. The application's `Mailer` and `email-server`
    /// open the file the same way: a pool of one connection with an 8 MiB
    /// page cache (the default is 2 MiB), and, from the first insert, the
    /// writer thread's connection.
    ///
    /// One pool connection, because SQLite has one writer at a time, and
    /// connections of one process contending for it fall back on SQLite's
    /// busy handler, which sleeps for milliseconds; with one, the process
    /// queues its writes instead, and its page cache is not invalidated by
    /// its own other connections' writes. The writer thread's connection
    /// is the exception, for the sake of the application's enqueues (see
    /// the `writer` module): its commits do invalidate the pool's cache
    /// (SQLite drops a connection's cache when the log has changed under
    /// it), which matters only in a process that both enqueues and
    /// dispatches; it takes its write turns apart from the pool's (see
    /// [`Embedded::write_turn`]), so the two do not meet in the busy
    /// handler. No memory map: it once took dispatch from
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
            absolute: std::path::absolute(&path).unwrap_or_else(|_| path.clone()),
            pool,
            options: Arc::new(options),
            waker: Arc::new(Waker::new(&path)),
            path,
            writer: Arc::default(),
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

    /// The file's schema version if a newer build has migrated it past what
    /// this build knows (while this process was running: `open` refuses
    /// such a file). A process whose statements start failing asks this to
    /// say why; `None` also when the version cannot be read.
    pub async fn newer_schema(&self) -> Option<i64> {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await
            .ok()?;
        (usize::try_from(version).ok()? > MIGRATIONS.len()).then_some(version)
    }

    /// How many schema migrations this build knows (the newest
    /// `PRAGMA user_version` it can use).
    pub fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    /// The connection pool, for the server's store, which shares the file.
    /// It holds one connection (see [`Embedded::open`]): a caller that
    /// keeps it checked out delays this process's other users of the pool
    /// (not its inserts, which have the writer thread).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inserts emails in one transaction (one fsync), returning each one's
    /// id: the new id, or the first email's id when its idempotency key was
    /// already used. Returns once they are committed.
    ///
    /// The commit happens on this handle's writer thread (started by its
    /// first insert), together with the other inserts waiting for it: calls
    /// made while a commit is under way share the next one (see the module
    /// docs). A caller that gives up waiting does not take its emails back:
    /// they are committed all the same.
    pub async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (message, reply) = writer::Message::insert(batch.to_vec());
        self.hand_over(message).await?;
        reply.await.unwrap_or_else(|_| {
            Err(QueueError::Write(
                "the writer thread stopped before replying; the emails may or may not be stored"
                    .into(),
            ))
        })
    }

    /// Gives `message` to the writer thread, starting it if it has not
    /// started or has stopped.
    async fn hand_over(&self, mut message: writer::Message) -> Result<(), QueueError> {
        let mut writer = self.writer.lock().await;
        for _ in 0..2 {
            match self.started(&mut writer).await?.send(message) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    message = back;
                    *writer = None;
                }
            }
        }
        Err(QueueError::Write(
            "the writer thread stopped at once; nothing was stored".into(),
        ))
    }

    /// The writer thread, started if need be.
    async fn started<'w>(&self, writer: &'w mut Option<Writer>) -> Result<&'w Writer, QueueError> {
        if writer.is_none() {
            *writer = Some(
                Writer::start(
                    self.absolute.clone(),
                    Self::lock_file(&self.absolute),
                    self.waker.clone(),
                )
                .await?,
            );
        }
        writer
            .as_ref()
            .ok_or_else(|| QueueError::Write("the writer thread did not start".into()))
    }

    /// Runs `task` on this handle's writer thread, with its connection, in
    /// turn with the handle's inserts, and returns what it returns. This
    /// is how `email-server`'s SQLite store claims and records: a task is
    /// one hand-off to the thread and one back, where each statement
    /// through sqlx is a round trip to sqlx's own connection thread.
    ///
    /// The task runs on a plain thread: it must not block on async work,
    /// and should be short (the handle's inserts wait for it). Take a
    /// write turn ([`Writing::turn`]) around each write transaction. A
    /// task that panics loses its result (this returns an error) and the
    /// thread, which the next call starts again.
    pub async fn on_writer<T, F>(&self, task: F) -> Result<T, QueueError>
    where
        F: FnOnce(&mut Writing<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply, done) = oneshot::channel();
        let task: writer::Task = Box::new(move |w: &mut Writing<'_>| {
            reply.send(task(w)).ok();
        });
        self.hand_over(writer::Message::Run(task)).await?;
        done.await.map_err(|_| {
            QueueError::Write("the writer thread stopped before the task finished".into())
        })
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
        self.waker.wake();
    }
}

/// A connection checked out of the pool that is closed instead of
/// returned unless its work finished (`done`). SQLite rolls back what a
/// closed connection left open, and releases its locks.
///
/// Used by the migration, which runs with foreign keys off inside
/// `BEGIN IMMEDIATE`: a caller that drops `open` midway (a timeout around
/// it) must not leave that connection in the pool inside a transaction,
/// holding the file's write lock against every other process, or with
/// foreign keys still off. (Inserts no longer go through the pool; see the
/// `writer` module.)
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
