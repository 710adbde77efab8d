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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{EmailId, QueueError, Queued};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_indexes.sql"),
    include_str!("../../migrations/sqlite/0003_claim_index.sql"),
];

/// A handle on the embedded database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Embedded {
    pool: SqlitePool,
    path: PathBuf,
}

impl Embedded {
    /// Opens (creating if needed) the database at `path` and brings its
    /// schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<Embedded, QueueError> {
        Self::open_with(path, 4, false).await
    }

    /// Opens the file for `email-server`: one connection, and a large page
    /// cache and memory map.
    ///
    /// One connection, because SQLite has one writer at a time, and
    /// connections of one process contending for it fall back on SQLite's
    /// busy handler, which sleeps for milliseconds; with one, the process
    /// queues its writes instead. The cache (64 MiB, the default is 2) and
    /// the memory map (64 MiB) matter because a dispatching server rereads
    /// recent rows all the time, and each miss without them is a system
    /// call and a copy: together they took dispatch from about 2,900 to
    /// 5,300 emails/s in BENCHMARKS.md's setup, and the cache keeps that
    /// rate with a million scheduled emails in the file (the map covers
    /// only its first 64 MiB). Pages are allocated as they are used.
    pub async fn open_for_server(path: impl AsRef<Path>) -> Result<Embedded, QueueError> {
        Self::open_with(path, 1, true).await
    }

    async fn open_with(
        path: impl AsRef<Path>,
        connections: u32,
        server: bool,
    ) -> Result<Embedded, QueueError> {
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
            .busy_timeout(Duration::from_secs(10));
        let options = if server {
            options
                .pragma("cache_size", "-65536")
                .pragma("mmap_size", "67108864")
        } else {
            options
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(connections.max(1))
            // A local file does not go stale; skip the ping before each use.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| open_error(&path, e))?;
        let db = Embedded { pool, path };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), QueueError> {
        // BEGIN IMMEDIATE takes the write lock first, so two processes
        // opening a new file at once do not both run the same migration.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| open_error(&self.path, e))?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| open_error(&self.path, e))?;
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| open_error(&self.path, e))?;
            let set = format!("PRAGMA user_version = {}", i + 1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut *tx)
                .await
                .map_err(|e| open_error(&self.path, e))?;
        }
        tx.commit().await.map_err(|e| open_error(&self.path, e))?;
        Ok(())
    }

    /// The connection pool, for the server's store, which shares the file.
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
    pub async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        // One email: one autocommitted statement, saving the round trips of
        // BEGIN and COMMIT on the hot path of durable enqueue.
        if let [q] = batch {
            let mut conn = self.pool.acquire().await.map_err(QueueError::from_sqlx)?;
            let id = insert_one(&mut conn, q).await?;
            self.wake();
            return Ok(vec![id]);
        }
        let mut tx = self.pool.begin().await.map_err(QueueError::from_sqlx)?;
        let mut ids = Vec::with_capacity(batch.len());
        for q in batch {
            ids.push(insert_one(&mut tx, q).await?);
        }
        tx.commit().await.map_err(QueueError::from_sqlx)?;
        self.wake();
        Ok(ids)
    }

    /// The path of the wake-up socket a running server listens on.
    pub fn wake_socket(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".wake");
        PathBuf::from(p)
    }

    /// Tells a server sleeping on this file that there is new work. Best
    /// effort: if no server listens, the email waits in the file.
    pub fn wake(&self) {
        #[cfg(unix)]
        if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
            sock.set_nonblocking(true).ok();
            sock.send_to(b"!", Self::wake_socket(&self.path)).ok();
        }
    }
}

async fn insert_one(tx: &mut sqlx::SqliteConnection, q: &Queued) -> Result<EmailId, QueueError> {
    let recipients =
        serde_json::to_string(&q.rcpt_to).map_err(|e| QueueError::Encode(e.to_string()))?;
    let state = if q.due_at_ms > q.created_at_ms {
        "scheduled"
    } else {
        "queued"
    };
    let done = sqlx::query(
        "INSERT INTO emails (id, idempotency_key, state, priority, created_at, due_at, next_at, \
         max_fails, max_time_ms, mail_from, recipients, pending, subject, message_id, raw, tags) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14) \
         ON CONFLICT DO NOTHING",
    )
    .bind(q.id.to_string())
    .bind(q.idempotency_key.clone())
    .bind(state)
    .bind(q.priority)
    .bind(q.created_at_ms)
    .bind(q.due_at_ms)
    .bind(q.max_fails.map(i64::from))
    .bind(q.max_time_ms)
    .bind(q.mail_from.clone())
    .bind(recipients)
    .bind(q.subject.clone())
    .bind(q.message_id.clone())
    .bind(q.raw.clone())
    .bind(q.tags.clone())
    .execute(&mut *tx)
    .await
    .map_err(QueueError::from_sqlx)?;
    // Nothing inserted: either this very id is already stored (a queue
    // redelivered it; intake is idempotent) or its idempotency key is.
    if done.rows_affected() == 1 || q.idempotency_key.is_none() {
        return Ok(q.id);
    }
    let row = sqlx::query("SELECT id FROM emails WHERE idempotency_key = ?1")
        .bind(q.idempotency_key.clone())
        .fetch_one(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
    let id: String = row.try_get("id").map_err(QueueError::from_sqlx)?;
    id.parse()
        .map_err(|_| QueueError::Encode(format!("stored id {id:?} is not a UUID")))
}

fn open_error(path: &Path, e: impl std::fmt::Display) -> QueueError {
    QueueError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
