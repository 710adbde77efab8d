//! What the scale-out tests share: finding the services (or skipping), one
//! isolated Redis prefix + PostgreSQL schema + directory per test and their
//! cleanup, `email-server run` processes, the Python producer processes,
//! a private `redis-server`, and the final "nothing lost, nothing stuck,
//! duplicates marked" check.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use email::Email;
use email::queue::redis::driver;
use email_server::dispatch::now_ms;
use email_server::store::{EmailRow, PostgresStore, Stats, Store};
use sqlx::Connection;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::support::aiosmtpd::Aiosmtpd;

/// Environment variables the server and `Mailer` read as overrides: removed
/// from the children so that only the written config counts.
const OVERRIDES: [&str; 9] = [
    "EMAIL_CONFIG",
    "EMAIL_REDIS_URL",
    "EMAIL_REDIS_PASSWORD",
    "EMAIL_DATABASE_URL",
    "EMAIL_SMTP_HOST",
    "EMAIL_SMTP_PORT",
    "EMAIL_SMTP_USERNAME",
    "EMAIL_SMTP_PASSWORD",
    "RUST_LOG",
];

pub(crate) fn redis_url() -> String {
    std::env::var("EMAIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub(crate) fn pg_url() -> String {
    std::env::var("EMAIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A service is missing: fails under `EMAIL_TEST_REQUIRE_SERVICES=1` (CI),
/// else prints a notice; the caller then skips.
pub(crate) fn skip_or_fail(test: &str, what: &str) {
    let required = std::env::var("EMAIL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: {what} (required: EMAIL_TEST_REQUIRE_SERVICES=1)"
    );
    eprintln!("SKIPPED {test}: {what}");
}

/// What a test needs besides the binaries.
#[derive(Clone, Copy)]
pub(crate) struct Needs {
    pub(crate) redis: bool,
    pub(crate) postgres: bool,
    pub(crate) python_redis: bool,
    pub(crate) redis_server: bool,
}

async fn check(needs: Needs) -> Result<(), String> {
    if needs.redis {
        let url = redis_url();
        redis_ping(&url)
            .await
            .map_err(|e| format!("no Redis at {url}: {e}"))?;
    }
    if needs.postgres {
        let url = pg_url();
        let conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
            .await
            .map_err(|_| format!("no PostgreSQL at {url}: connection timed out"))?
            .map_err(|e| format!("no PostgreSQL at {url}: {e}"))?;
        conn.close().await.ok();
    }
    if needs.python_redis {
        let ok = Command::new("python3")
            .args(["-c", "import redis"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("python3 cannot import redis (pip install redis)".into());
        }
    }
    if needs.redis_server {
        let ok = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("no redis-server binary on PATH".into());
        }
    }
    Ok(())
}

/// PING with a bounded wait.
pub(crate) async fn redis_ping(url: &str) -> Result<(), String> {
    let client = driver::Client::open(url).map_err(|e| e.to_string())?;
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        driver::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

fn rand8() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// One test's isolated resources, all removed by [`isolated`].
pub(crate) struct Ctx {
    pub(crate) test: &'static str,
    /// The Redis key prefix (`email.queue.default.name`).
    pub(crate) name: String,
    /// The PostgreSQL schema, when the test uses PostgreSQL.
    pub(crate) schema: Option<String>,
    /// `application_name` of the servers' PostgreSQL connections, so that
    /// this test can find (and terminate) exactly those.
    pub(crate) app: String,
    pub(crate) dir: PathBuf,
}

impl Ctx {
    /// `None` (after a notice) when a service is missing and not required.
    pub(crate) async fn new(test: &'static str, needs: Needs) -> Option<Ctx> {
        if let Err(e) = check(needs).await {
            skip_or_fail(test, &e);
            return None;
        }
        let id = format!("{}_{}", std::process::id(), rand8());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("scale-{test}-{id}"));
        std::fs::create_dir_all(&dir).expect("test directory");
        let ident = test.replace('-', "_");
        Some(Ctx {
            test,
            name: format!("test-scale-{test}-{id}"),
            // [a-z0-9_] only, at most 63 bytes: a plain identifier.
            schema: needs.postgres.then(|| format!("scale_{ident}_{id}")),
            app: format!("scale_{ident}_{id}"),
            dir,
        })
    }

    fn schema(&self) -> &str {
        self.schema
            .as_deref()
            .expect("this test has a PostgreSQL schema")
    }

    /// The URL the server processes get: the test database, with this
    /// test's schema as the `search_path` and its `application_name`.
    /// `PostgresStore::open` keeps both (it only sets an application name
    /// when the URL has none) and migrates into the schema it finds.
    pub(crate) fn server_pg_url(&self) -> String {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!(
            "{base}{sep}application_name={}&options=-csearch_path%3D{}",
            self.app,
            self.schema()
        )
    }

    /// The test's own view of the store: creates and migrates the schema,
    /// so the servers find it ready (`open` does not create a schema).
    pub(crate) async fn store(&self) -> Store {
        Store::Postgres(
            PostgresStore::open_in_schema(&pg_url(), self.schema())
                .await
                .expect("open the test's PostgreSQL schema"),
        )
    }

    async fn cleanup(&self) {
        // Redis: every key under the prefix (stream, dead letters, idempotency).
        if let Ok(client) = driver::Client::open(redis_url()) {
            let wipe = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let keys: Vec<String> = driver::cmd("KEYS")
                    .arg(format!("{}:*", self.name))
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    driver::cmd("DEL")
                        .arg(keys)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
                Ok::<(), driver::RedisError>(())
            };
            tokio::time::timeout(Duration::from_secs(5), wipe)
                .await
                .ok();
        }
        if let Some(schema) = &self.schema {
            match sqlx::PgConnection::connect(&pg_url()).await {
                Ok(mut conn) => {
                    // Only [a-z0-9_]: safe to quote.
                    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await
                    {
                        eprintln!("{}: could not drop schema {schema}: {e}", self.test);
                    }
                    conn.close().await.ok();
                }
                Err(e) => eprintln!("{}: could not drop schema {schema}: {e}", self.test),
            }
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Runs `body` in its own task so that its processes are killed (dropped)
/// and the test's keys, schema and files removed even when it panics; then
/// passes the panic on.
pub(crate) async fn isolated<F, Fut>(ctx: Ctx, body: F)
where
    F: FnOnce(Arc<Ctx>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let result = tokio::spawn(body(ctx.clone())).await;
    ctx.cleanup().await;
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

/// A YAML config: a Redis queue, `database` (a YAML fragment under
/// `database:`), and SMTP to `smtp_port` in plain text, or the outbox.
pub(crate) fn write_config(
    dir: &Path,
    redis: &str,
    name: &str,
    database: &str,
    smtp_port: Option<u16>,
) -> PathBuf {
    let d = dir.display();
    let transport = match smtp_port {
        Some(port) => format!(
            "    smtp:\n      host: 127.0.0.1\n      port: {port}\n      security: plain\n      \
             max-connections: 4\n"
        ),
        None => format!("    outbox: '{d}/outbox'\n"),
    };
    let yaml = format!(
        "email:\n  queue:\n    default:\n      engine: redis\n      url: '{redis}'\n      \
         name: '{name}'\n  server:\n    max-fails: 10\n    max-time: 1h\n    batch: 50\n    \
         lease: 2s\n    database:\n{database}{transport}"
    );
    let path = dir.join("email.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// `email-server run` as a child process, logging to a file.
pub(crate) struct Server {
    child: Child,
    pub(crate) pid: u32,
    log: PathBuf,
}

impl Server {
    pub(crate) fn start(config: &Path, log: PathBuf) -> Server {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_email-server"));
        cmd.args([
            "--config",
            config.to_str().expect("path"),
            "--log",
            "warn",
            "run",
        ]);
        for var in OVERRIDES {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn email-server");
        let pid = child.id().expect("pid");
        Server { child, pid, log }
    }

    /// The name its claims and its intake consumer go by.
    pub(crate) fn owner(&self) -> String {
        format!("email-server-{}", self.pid)
    }

    pub(crate) async fn sigkill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Still running (not exited or crashed)?
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit status (graceful shutdown takes at most the
    /// 30 s grace; nothing is in flight here).
    pub(crate) async fn sigterm(mut self) -> ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {}", self.pid);
        tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("server {} ignored SIGTERM for 40 s", self.pid))
            .expect("wait")
    }

    /// Lines of its log that contain `needle`.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains(needle)).count()
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A Python producer process (`scale_out/producer.py`) that enqueues
/// `count` emails in pipelines of `chunk`, pausing `pause_ms` in between.
pub(crate) fn spawn_producer(
    redis: &str,
    name: &str,
    count: usize,
    tag: &str,
    (chunk, pause_ms): (usize, u64),
) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scale_out/producer.py");
    Command::new("python3")
        .args([script, redis, name, &count.to_string(), tag])
        .args([chunk.to_string(), pause_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3 producer")
}

/// Waits for a producer; returns the ids it enqueued (Redis acknowledged).
pub(crate) async fn finish_producer(mut child: Child) -> Vec<String> {
    let mut out = String::new();
    let mut err = String::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let read = async {
        tokio::try_join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        )
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("producer finished within 60 s")
        .expect("read producer output");
    let status = child.wait().await.expect("wait for producer");
    assert!(status.success(), "producer failed: {status}\n{err}");
    out.lines()
        .map(|l| l.split_once(' ').expect("`ID MESSAGE-ID`").0.to_owned())
        .collect()
}

/// A multiplexed connection to the shared Redis, for inspecting the queue.
pub(crate) async fn redis_conn(url: &str) -> driver::aio::MultiplexedConnection {
    let client = driver::Client::open(url).expect("redis url");
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("redis connection within 5 s")
    .expect("redis connection")
}

/// Entries read by some server and not yet acknowledged (`None`: no group yet).
pub(crate) async fn group_pending(
    conn: &mut driver::aio::MultiplexedConnection,
    name: &str,
) -> Option<u64> {
    let reply: Result<driver::Value, _> = driver::cmd("XPENDING")
        .arg(format!("{name}:stream"))
        .arg(format!("{name}:servers"))
        .query_async(conn)
        .await;
    match reply {
        Ok(driver::Value::Array(parts)) => match parts.first() {
            Some(driver::Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// How many records were dead-lettered.
pub(crate) async fn dead_letters(conn: &mut driver::aio::MultiplexedConnection, name: &str) -> u64 {
    driver::cmd("XLEN")
        .arg(format!("{name}:dead"))
        .query_async(conn)
        .await
        .expect("XLEN dead letters")
}

/// Counts per state from the store.
pub(crate) struct Tally {
    pub(crate) stats: Stats,
    pub(crate) total: u64,
    /// scheduled + queued + sending + deferred.
    pub(crate) open: u64,
}

impl Tally {
    pub(crate) fn state(&self, s: &str) -> u64 {
        self.stats.states.get(s).copied().unwrap_or(0)
    }
}

pub(crate) async fn tally(store: &Store) -> Tally {
    let stats = store.stats(now_ms()).await.expect("stats");
    let total = stats.states.values().sum();
    let open = ["scheduled", "queued", "sending", "deferred"]
        .iter()
        .map(|s| stats.states.get(*s).copied().unwrap_or(0))
        .sum();
    Tally { stats, total, open }
}

/// Every email of the store, newest first.
pub(crate) async fn all_rows(store: &Store, n: usize) -> Vec<EmailRow> {
    let limit = u32::try_from(n + 1000).expect("limit");
    store.list(None, limit, now_ms()).await.expect("list")
}

/// How many times the relay received each Message-ID.
pub(crate) fn received(sink: &Aiosmtpd) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        let parsed = Email::parse(&m.data).expect("the relay got a whole message");
        let id = parsed.message_id().expect("a Message-ID").to_owned();
        *seen.entry(id).or_default() += 1;
    }
    seen
}

/// What the final check found.
pub(crate) struct Delivered {
    /// Message-IDs the relay received more than once (all marked).
    pub(crate) received_twice: usize,
    /// Emails marked possible duplicates.
    pub(crate) marked: usize,
}

/// The acceptance check once every email is terminal: exactly the enqueued
/// ids are stored (none lost, none extra), every one `sent`, none stuck in
/// `sending`; the relay received every Message-ID at least once and nothing
/// else; any Message-ID received more than once belongs to an email marked
/// `possible_duplicate`.
pub(crate) async fn check_delivered(
    store: &Store,
    sink: &Aiosmtpd,
    enqueued: &HashSet<String>,
) -> Delivered {
    let n = enqueued.len();
    let t = tally(store).await;
    assert_eq!(
        t.state("sending"),
        0,
        "emails stuck in sending: {:?}",
        t.stats
    );
    assert_eq!(t.state("sent"), n as u64, "sent == N: {:?}", t.stats);
    assert_eq!(t.total, n as u64, "stored == N: {:?}", t.stats);
    let rows = all_rows(store, n).await;
    let stored: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let lost: Vec<&String> = enqueued.difference(&stored).take(5).collect();
    let extra: Vec<&String> = stored.difference(enqueued).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "stored ids differ from the enqueued ones: lost {lost:?}, extra {extra:?}"
    );
    let seen = received(sink);
    let mut known = HashSet::new();
    let (mut received_twice, mut marked) = (0, 0);
    for r in &rows {
        assert_eq!(
            r.state, "sent",
            "{} is {}: {:?}",
            r.id, r.state, r.last_reason
        );
        let mid = r.message_id.clone().expect("a stored Message-ID");
        let times = seen.get(&mid).copied().unwrap_or(0);
        assert!(times >= 1, "{} ({mid}) never reached the relay", r.id);
        if times > 1 {
            received_twice += 1;
            assert!(
                r.possible_duplicate,
                "{} received {times} times but not marked a possible duplicate",
                r.id
            );
        }
        marked += usize::from(r.possible_duplicate);
        known.insert(mid);
    }
    let unknown: Vec<&String> = seen
        .keys()
        .filter(|m| !known.contains(*m))
        .take(5)
        .collect();
    assert!(
        unknown.is_empty(),
        "the relay got emails nobody enqueued: {unknown:?}"
    );
    Delivered {
        received_twice,
        marked,
    }
}

/// A `redis-server` of the test's own, on a free port, persisting every
/// write to an append-only file that survives `kill -9`.
pub(crate) struct PrivateRedis {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    pub(crate) starts: u32,
}

impl PrivateRedis {
    pub(crate) async fn start(dir: PathBuf) -> PrivateRedis {
        std::fs::create_dir_all(&dir).expect("redis dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = PrivateRedis {
            child: None,
            port,
            dir,
            starts: 0,
        };
        redis.restart().await;
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port and directory: the append-only
    /// file replays) and waits until it answers.
    pub(crate) async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
            ])
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.starts += 1;
        let url = self.url();
        let start = std::time::Instant::now();
        while redis_ping(&url).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "redis-server on port {port} did not answer within 15 s (see {}/redis.log)",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("SIGKILL redis-server");
    }
}
