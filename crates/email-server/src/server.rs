//! `run(config, shutdown)`: the whole server as one future, for the binary
//! and for applications that embed it (one-binary deployments).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = email::config::Config::default();          // embedded defaults
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(async move {
//!     email_server::run(&config, async { stopped.await.ok(); }).await
//! });
//! // ... the application enqueues with email::Mailer on ./email.db ...
//! stop.send(()).ok();
//! server.await??;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use email::config::{Config, DatabaseEngine, QueueEngine, SmtpSection, SmtpSecurity};
use tokio::sync::{Notify, watch};

use crate::dispatch::{self, Settings, Transport};
use crate::smtp::{Security, SmtpConfig, SmtpPool, Timeouts};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot be served (yet).
    #[error("config: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The SMTP settings are unusable.
    #[error("smtp: {0}")]
    Smtp(String),
}

/// Opens the store the config names.
pub async fn open_store(config: &Config) -> Result<Store, ServerError> {
    let server = &config.email.server;
    match server.database.engine {
        DatabaseEngine::Sqlite3 => Ok(Store::Sqlite(
            SqliteStore::open(&server.database.path).await?,
        )),
        DatabaseEngine::Postgres => {
            let url = server.database.postgres_url().ok_or_else(|| {
                ServerError::Config(
                    "database engine postgres needs `url` (or EMAIL_DATABASE_URL) or `host`".into(),
                )
            })?;
            Ok(Store::Postgres(open_postgres(url.expose()).await?))
        }
    }
}

/// How long a starting server waits for a database that is unavailable.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Opens PostgreSQL, waiting (up to [`STARTUP_PATIENCE`]) while it is
/// unavailable: a server restarted during a database restart or failover,
/// or whose connection was terminated mid-migration, comes up once the
/// database does instead of exiting. A refusal (bad password, unknown
/// database, a schema newer than this build) is reported at once.
async fn open_postgres(url: &str) -> Result<PostgresStore, StoreError> {
    let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
    let mut wait = Duration::from_millis(100);
    loop {
        match PostgresStore::open(url).await {
            Err(e)
                if e.is_unavailable()
                    && !matches!(e, StoreError::Open(_))
                    && tokio::time::Instant::now() + wait < deadline =>
            {
                tracing::warn!(error = %e, retry_in = ?wait, "the database is unavailable; waiting for it");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Checks that the queue can feed the store: with the embedded engine the
/// queue *is* the SQLite store (the same file), so PostgreSQL needs a queue
/// that intake moves from (Redis).
fn check_queue(config: &Config) -> Result<(), ServerError> {
    let queue = config.email.queue();
    let postgres = config.email.server.database.engine == DatabaseEngine::Postgres;
    match queue.engine {
        // Intake moves the stream's emails into whichever store is used.
        QueueEngine::Redis => Ok(()),
        // The embedded queue is a SQLite file that *is* the store: nothing
        // would ever move its emails into PostgreSQL.
        QueueEngine::Embedded if postgres => Err(ServerError::Config(
            "the embedded queue is a SQLite file and cannot feed a postgres database: \
             configure a redis queue (email.queue.default.engine: redis), \
             or use database engine sqlite3"
                .into(),
        )),
        QueueEngine::Embedded => {
            let (q, db) = (&queue.path, &config.email.server.database.path);
            if same_file(q, db) {
                Ok(())
            } else {
                Err(ServerError::Config(format!(
                    "the embedded queue ({}) and the database ({}) must be the same file",
                    q.display(),
                    db.display()
                )))
            }
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

/// The transport the config names: its SMTP relay, or the outbox.
pub fn transport(config: &Config) -> Result<Transport, ServerError> {
    let server = &config.email.server;
    let Some(smtp) = &server.smtp else {
        return Ok(Transport::Outbox(server.outbox.clone()));
    };
    let relay = format!("{}:{}", smtp.host, smtp.port);
    let pool = SmtpPool::new(smtp_config(smtp)).map_err(|e| ServerError::Smtp(e.to_string()))?;
    Ok(Transport::Smtp { pool, relay })
}

/// The SMTP client's settings from `email.server.smtp`.
pub fn smtp_config(s: &SmtpSection) -> SmtpConfig {
    let t = &s.timeouts;
    SmtpConfig {
        host: s.host.clone(),
        port: s.port,
        security: match s.effective_security() {
            SmtpSecurity::Starttls => Security::StartTls,
            SmtpSecurity::Tls => Security::Tls,
            SmtpSecurity::Plain => Security::Plain,
        },
        username: s.auth.as_ref().map(|a| a.username.clone()),
        password: s.auth.as_ref().map(|a| a.password.expose().to_owned()),
        hello_name: s
            .hello_name
            .clone()
            .unwrap_or_else(SmtpConfig::default_hello_name),
        timeouts: Timeouts {
            connect: t.connect,
            greeting: t.greeting,
            mail: t.mail,
            rcpt: t.rcpt,
            data_init: t.data_init,
            data_block: t.data_block,
            data_end: t.data_end,
            ..Timeouts::default()
        },
        max_connections: s.max_connections.max(1),
        extra_root_certs: s.ca_file.iter().cloned().collect(),
        ..SmtpConfig::default()
    }
}

/// The dispatcher settings from `email.server`.
pub fn settings(config: &Config) -> Settings {
    let s = &config.email.server;
    Settings {
        max_fails: s.max_fails,
        max_time: s.max_time,
        batch: s.batch,
        lease: s.lease,
        concurrency: s
            .smtp
            .as_ref()
            .map_or(s.workers, |m| m.max_connections)
            .max(1),
        ..Settings::default()
    }
}

/// How often the SQLite store's write-ahead log is copied into the
/// database file (see `Embedded::spawn_checkpointer`).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs intake and dispatch until `shutdown` completes, then stops
/// claiming, finishes or releases what is in flight, and returns.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    check_queue(config)?;
    let store = open_store(config).await?;
    let transport = transport(config)?;
    match &transport {
        Transport::Outbox(dir) => tracing::warn!(
            outbox = %dir.display(),
            "no SMTP relay configured: emails are written as .eml files to the outbox, not sent"
        ),
        Transport::Smtp { relay, .. } => tracing::info!(%relay, "delivering over SMTP"),
    }
    let wake = Arc::new(Notify::new());
    // Wake-ups: the Mailer's datagrams (SQLite) or NOTIFY (PostgreSQL).
    let _listener: Box<dyn Send> = match &store {
        Store::Sqlite(s) => Box::new((
            listen_for_wakeups(s.embedded().path(), wake.clone()),
            s.embedded().spawn_checkpointer(CHECKPOINT_EVERY),
        )),
        Store::Postgres(pg) => Box::new(pg.listen(wake.clone())),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    if config.email.queue().engine == QueueEngine::Redis {
        let queue = email::queue::RedisQueue::open(config.email.queue())
            .await
            .map_err(|e| ServerError::Config(format!("queue: {e}")))?;
        // Ends when `stop_tx` sends or is dropped; what it read and did not
        // store yet stays pending in Redis for the next run.
        tokio::spawn(crate::intake::run(
            queue,
            store.clone(),
            settings(config).owner,
            wake.clone(),
            stop_rx.clone(),
            crate::intake::IntakeSettings::default(),
        ));
    }
    let dispatcher = tokio::spawn(dispatch::run(
        store,
        transport,
        settings(config),
        wake,
        stop_rx,
    ));
    let mut dispatcher = dispatcher;
    let ended = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down: no new claims; finishing in-flight emails");
            stop_tx.send(true).ok();
            dispatcher.await
        }
        // The dispatcher only ends by itself on a store error.
        ended = &mut dispatcher => ended,
    };
    match ended {
        Ok(result) => result.map_err(ServerError::from),
        Err(e) => Err(ServerError::Config(format!("dispatcher task failed: {e}"))),
    }
}

/// Listens on `DB.wake` for the datagrams a `Mailer` sends after each
/// commit, so a sleeping dispatcher starts at once. Returns a guard that
/// removes the socket.
fn listen_for_wakeups(db: &Path, wake: Arc<Notify>) -> Option<SocketGuard> {
    #[cfg(unix)]
    {
        let path = email::queue::Embedded::wake_socket(db);
        std::fs::remove_file(&path).ok();
        match tokio::net::UnixDatagram::bind(&path) {
            Ok(sock) => {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while sock.recv(&mut buf).await.is_ok() {
                        wake.notify_one();
                    }
                });
                return Some(SocketGuard(path));
            }
            Err(e) => tracing::warn!(
                socket = %path.display(),
                error = %e,
                "cannot listen for wake-ups; new emails are picked up within a minute"
            ),
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = (db, wake);
        None
    }
}

struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}
