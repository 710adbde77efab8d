//! What every chaos scenario shares: the scale (small or full), a seeded
//! random generator, the `CHAOS` figures line, temporary directories,
//! server configs, an in-process dispatcher for the relay scenarios, and
//! the final "nothing lost, nothing stuck, duplicates marked" check
//! against a sink's Message-IDs and the store.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use email::{Email, Mailer};
use email_server::dispatch::{self, Settings, Transport, now_ms};
use email_server::smtp::{Security, SmtpConfig, SmtpPool, Timeouts};
use email_server::store::{EmailRow, SqliteStore, Store, StoreError};
use sqlx::Row;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::scale::{Tally, all_rows, tally};
use crate::support::fault_smtp::FaultServer;

/// `EMAIL_CHAOS_FULL=1`: the counts and durations.
pub(crate) fn full() -> bool {
    std::env::var("EMAIL_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// `small` in CI, `full` under `EMAIL_CHAOS_FULL=1`.
pub(crate) fn pick<T>(small: T, full: T) -> T {
    if self::full() { full } else { small }
}

pub(crate) fn mode() -> &'static str {
    if full() { "full" } else { "small" }
}

/// A small seeded generator (SplitMix64): each scenario prints its seed,
/// and `EMAIL_CHAOS_SEED=<n>` replays the same choices (kill moments,
/// recipients, fault draws; the timing of the machine still varies).
pub(crate) struct Rng {
    state: u64,
    pub(crate) seed: u64,
}

impl Rng {
    pub(crate) fn new() -> Rng {
        let seed = match std::env::var("EMAIL_CHAOS_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("EMAIL_CHAOS_SEED={v:?}: expected a number")),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                (t ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_007
            }
        };
        Rng { state: seed, seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high]`.
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// A duration uniform in `[low_ms, high_ms]` milliseconds.
    pub(crate) fn ms(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(self.between(low_ms, high_ms))
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One scenario's figures, printed as one line:
/// `CHAOS F1 mode=small seed=42 emails=1000 ...`. With
/// `EMAIL_CHAOS_REPORT=FILE` the line is also appended to FILE.
pub(crate) struct Figures {
    line: String,
}

impl Figures {
    pub(crate) fn new(scenario: &str, seed: u64) -> Figures {
        Figures {
            line: format!("CHAOS {scenario} mode={} seed={seed}", mode()),
        }
    }

    pub(crate) fn put(&mut self, key: &str, value: impl Display) -> &mut Figures {
        let value = value.to_string().replace(' ', "_");
        self.line.push_str(&format!(" {key}={value}"));
        self
    }

    /// Seconds with one decimal.
    pub(crate) fn secs(&mut self, key: &str, d: Duration) -> &mut Figures {
        self.put(key, format!("{:.1}", d.as_secs_f64()))
    }

    pub(crate) fn print(&self) {
        println!("{}", self.line);
        if let Ok(path) = std::env::var("EMAIL_CHAOS_REPORT") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                writeln!(f, "{}", self.line).ok();
            }
        }
    }
}

/// A directory of the scenario's own under `CARGO_TARGET_TMPDIR`,
/// removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chaos-{name}-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scenario directory");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// An email with its own recipient `{tag}-{i}@example.com`.
pub(crate) fn email(tag: &str, i: usize) -> Email {
    Email::builder()
        .from("shop@example.com")
        .to(format!("{tag}-{i}@example.com").as_str())
        .subject(format!("{tag} #{i}"))
        .text("Chaos test.\n.a line that starts with a dot\n")
        .build()
        .expect("build")
}

/// The Message-ID of a message as a relay received it.
pub(crate) fn message_id(data: &[u8]) -> String {
    Email::parse(data)
        .expect("the relay got a whole message")
        .message_id()
        .expect("a Message-ID")
        .to_owned()
}

/// How many times the fault server accepted (`2xx` after the final `.`)
/// each Message-ID.
pub(crate) fn accepted(server: &FaultServer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in server.received() {
        if r.accepted() {
            *seen.entry(message_id(&r.data)).or_default() += 1;
        }
    }
    seen
}

/// A YAML config for `email-server run`: the given queue section (under
/// `queue: default:`), database section (under `database:`), and plain
/// SMTP to 127.0.0.1:`smtp_port`, lease 2 s.
pub(crate) fn server_config(dir: &Path, queue: &str, database: &str, smtp_port: u16) -> PathBuf {
    server_config_with_lease(dir, queue, database, smtp_port, "2s")
}

/// [`server_config`] with another lease.
pub(crate) fn server_config_with_lease(
    dir: &Path,
    queue: &str,
    database: &str,
    smtp_port: u16,
    lease: &str,
) -> PathBuf {
    let yaml = format!(
        "email:\n  queue:\n    default:\n{queue}  server:\n    max-fails: 20\n    max-time: 1h\n    \
         batch: 50\n    lease: {lease}\n    database:\n{database}    smtp:\n      host: 127.0.0.1\n      \
         port: {smtp_port}\n      security: plain\n      max-connections: 4\n      timeouts:\n        \
         connect: 5s\n        greeting: 10s\n        data-end: 10s\n"
    );
    let path = dir.join(format!("email-{smtp_port}.yaml"));
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// The `queue:` lines of the embedded engine on `db`.
pub(crate) fn embedded_queue(db: &Path) -> String {
    format!("      engine: embedded\n      path: '{}'\n", db.display())
}

/// The `queue:` lines of a Redis stream `name` at `url`.
pub(crate) fn redis_queue(url: &str, name: &str) -> String {
    format!("      engine: redis\n      url: '{url}'\n      name: '{name}'\n")
}

/// The `database:` lines of a SQLite file.
pub(crate) fn sqlite_database(db: &Path) -> String {
    format!("      engine: sqlite3\n      path: '{}'\n", db.display())
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what`
/// (and the last value's debug text) after `limit`.
pub(crate) async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                start.elapsed() < limit,
                "{what}: not done after {limit:?}: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no email is open (scheduled, queued, sending, deferred)
/// and at least `total` are stored; returns the final tally.
pub(crate) async fn wait_all_final(store: &Store, total: usize, limit: Duration) -> Tally {
    wait_for(limit, "emails reaching a final state", || async {
        let t = tally(store).await;
        if t.open == 0 && t.total >= total as u64 {
            Ok(t)
        } else {
            Err(format!("{:?}", t.stats.states))
        }
    })
    .await
}

/// What the final check found.
#[derive(Debug, Default)]
pub(crate) struct Final {
    /// Emails in the store.
    pub(crate) stored: usize,
    /// Stored emails nobody was told about (an enqueue that failed, or a
    /// producer killed before it could say).
    pub(crate) extra: usize,
    /// Emails whose Message-ID the sink got more than once (all marked).
    pub(crate) received_twice: usize,
    /// Emails marked possible duplicates.
    pub(crate) marked: usize,
    pub(crate) rows: Vec<EmailRow>,
}

/// The acceptance check once every email is final: every id in `promised`
/// is stored and `sent`, and so is every other stored email; none is in
/// `sending`; the sink (`seen`: Message-ID → times accepted) got every
/// stored email's Message-ID, nothing else, and any it got twice belongs to
/// an email marked `possible_duplicate`.
pub(crate) async fn check_all_sent(
    store: &Store,
    promised: &HashSet<String>,
    seen: &HashMap<String, usize>,
) -> Final {
    let t = tally(store).await;
    assert_eq!(t.state("sending"), 0, "stuck in sending: {:?}", t.stats);
    assert_eq!(t.open, 0, "open emails left: {:?}", t.stats);
    let rows = all_rows(store, t.total as usize).await;
    let stored: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let lost: Vec<&String> = promised
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "{} promised ids are not stored, e.g. {lost:?}",
        promised
            .iter()
            .filter(|id| !stored.contains(id.as_str()))
            .count()
    );
    let mut out = Final {
        stored: rows.len(),
        extra: rows.len() - promised.len(),
        ..Final::default()
    };
    let mut known = HashSet::new();
    for r in &rows {
        assert_eq!(
            r.state, "sent",
            "{} is {}: {:?}",
            r.id, r.state, r.last_reason
        );
        let mid = r.message_id.clone().expect("a stored Message-ID");
        let times = seen.get(&mid).copied().unwrap_or(0);
        assert!(
            times >= 1,
            "{} ({mid}) is sent but never reached the sink",
            r.id
        );
        if times > 1 {
            out.received_twice += 1;
            assert!(
                r.possible_duplicate,
                "{} reached the sink {times} times but is not marked a possible duplicate",
                r.id
            );
        }
        out.marked += usize::from(r.possible_duplicate);
        assert!(known.insert(mid.clone()), "two rows with Message-ID {mid}");
    }
    let unknown: Vec<&String> = seen
        .keys()
        .filter(|m| !known.contains(*m))
        .take(5)
        .collect();
    assert!(
        unknown.is_empty(),
        "the sink got emails nobody stored: {unknown:?}"
    );
    out.rows = rows;
    out
}

/// `PRAGMA integrity_check` on a SQLite file (with nothing else writing).
pub(crate) async fn integrity_check(db: &Path) -> String {
    let store = SqliteStore::open(db).await.expect("open for the check");
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(store.embedded().pool())
        .await
        .expect("integrity_check");
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One attempt row, as the relay scenarios read them.
#[derive(Debug, Clone)]
pub(crate) struct AttemptRow {
    pub(crate) email_id: String,
    pub(crate) started_at: i64,
    pub(crate) finished_at: i64,
    pub(crate) outcome: String,
    pub(crate) smtp_code: Option<i64>,
    pub(crate) reply: String,
    pub(crate) possible_duplicate: bool,
    /// (address, code, reply) per RCPT.
    pub(crate) recipients: Vec<(String, u16, String)>,
}

/// Every attempt of a SQLite store, in order.
pub(crate) async fn attempts(store: &Store) -> Vec<AttemptRow> {
    let Store::Sqlite(s) = store else {
        panic!("attempts() reads a SQLite store")
    };
    let rows = sqlx::query(
        "SELECT email_id, started_at, finished_at, outcome, smtp_code, reply, \
                possible_duplicate, recipients FROM attempts ORDER BY id",
    )
    .fetch_all(s.embedded().pool())
    .await
    .expect("read attempts");
    rows.iter()
        .map(|r| {
            let recipients: Vec<serde_json::Value> = serde_json::from_str(
                &r.try_get::<Option<String>, _>("recipients")
                    .expect("recipients")
                    .unwrap_or_else(|| "[]".into()),
            )
            .expect("recipients JSON");
            AttemptRow {
                email_id: r.try_get("email_id").expect("email_id"),
                started_at: r.try_get("started_at").expect("started_at"),
                finished_at: r.try_get("finished_at").expect("finished_at"),
                outcome: r.try_get("outcome").expect("outcome"),
                smtp_code: r.try_get("smtp_code").expect("smtp_code"),
                reply: r
                    .try_get::<Option<String>, _>("reply")
                    .expect("reply")
                    .unwrap_or_default(),
                possible_duplicate: r.try_get::<i64, _>("possible_duplicate").expect("dup") != 0,
                recipients: recipients
                    .iter()
                    .map(|v| {
                        (
                            v["address"].as_str().unwrap_or_default().to_owned(),
                            u16::try_from(v["code"].as_u64().unwrap_or(0)).unwrap_or(0),
                            v["reply"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A SMTP transport to `addr` in plain text (or as `security` says).
pub(crate) fn transport(addr: SocketAddr, timeouts: Timeouts, security: Security) -> Transport {
    smtp_transport(SmtpConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        security,
        hello_name: "chaos.test".into(),
        timeouts,
        max_connections: 4,
        ..SmtpConfig::default()
    })
}

pub(crate) fn smtp_transport(config: SmtpConfig) -> Transport {
    let relay = format!("{}:{}", config.host, config.port);
    Transport::Smtp {
        pool: SmtpPool::new(config).expect("SMTP config"),
        relay,
    }
}

/// Dispatcher settings for the in-process scenarios: the server's
/// defaults (batch 50, 4 connections) with `max_fails` and a shortened
/// retry schedule, so that a scenario sees many rounds of retries in
/// seconds.
pub(crate) fn settings(max_fails: u32, retry_base: Duration, retry_max: Duration) -> Settings {
    Settings {
        max_fails,
        max_time: Duration::from_secs(3600),
        batch: 50,
        lease: Duration::from_secs(60),
        concurrency: 4,
        retry_base,
        retry_max,
        shutdown_grace: Duration::from_secs(5),
        owner: format!("chaos-{}", std::process::id()),
    }
}

/// A SQLite store, its `Mailer`, and the dispatcher running in this
/// process (the relay scenarios: the faults are on the wire, not in the
/// process).
pub(crate) struct Rig {
    _dir: TempDir,
    pub(crate) mailer: Mailer,
    pub(crate) store: Store,
    wake: Arc<Notify>,
    running: Option<Running>,
}

/// A running dispatcher: how to stop it, and its task.
type Running = (watch::Sender<bool>, JoinHandle<Result<(), StoreError>>);

impl Rig {
    pub(crate) async fn new(name: &str) -> Rig {
        let dir = TempDir::new(name);
        let db = dir.path().join("email.db");
        Rig {
            mailer: Mailer::embedded(&db).await.expect("mailer"),
            store: Store::Sqlite(SqliteStore::open(&db).await.expect("store")),
            _dir: dir,
            wake: Arc::new(Notify::new()),
            running: None,
        }
    }

    /// Starts the dispatcher.
    pub(crate) fn start(&mut self, transport: Transport, settings: Settings) {
        assert!(self.running.is_none(), "already running");
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(dispatch::run(
            self.store.clone(),
            transport,
            settings,
            self.wake.clone(),
            rx,
        ));
        self.running = Some((tx, task));
    }

    /// Tells the dispatcher there is new work (what the server's wake-up
    /// socket does for the binary).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Enqueues `n` emails `{tag}-{i}` (durably, one by one), wakes the
    /// dispatcher, and returns the ids.
    pub(crate) async fn enqueue(&self, tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
        let mut ids = Vec::with_capacity(range.len());
        for i in range {
            let id = self.mailer.enqueue(&email(tag, i)).await.expect("enqueue");
            ids.push(id.to_string());
        }
        self.wake();
        ids
    }

    /// Stops the dispatcher (graceful shutdown) and waits for it.
    pub(crate) async fn stop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            tx.send(true).ok();
            task.await.expect("dispatcher task").expect("dispatcher");
        }
    }
}

/// Milliseconds since the Unix epoch, as the store records times.
pub(crate) fn now() -> i64 {
    now_ms()
}

/// Environment variables the server reads as overrides: removed from the
/// children so that only the written config counts.
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

/// `email-server run` as a child process, logging at info level to a file
/// (so a scenario can wait until it serves before signalling it); killed
/// when dropped.
pub(crate) struct ServerProc {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    log: PathBuf,
}

impl ServerProc {
    pub(crate) fn start(config: &Path, log: PathBuf) -> ServerProc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_email-server"));
        cmd.arg("--config")
            .arg(config)
            .args(["--log", "info", "run"]);
        for var in OVERRIDES {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn email-server");
        let pid = child.id().expect("pid");
        ServerProc { child, pid, log }
    }

    /// The name its claims go by.
    pub(crate) fn owner(&self) -> String {
        format!("email-server-{}", self.pid)
    }

    /// Waits (at most 30 s) for its "delivering over SMTP" line, logged
    /// just before it starts listening for SIGTERM.
    pub(crate) async fn ready(&mut self) {
        let start = Instant::now();
        while !self.log_text().contains("delivering over SMTP") {
            assert!(self.running(), "server exited:\n{}", self.log_tail());
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server not serving after 30 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pub(crate) async fn sigkill(&mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Still running?
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until it serves, sends SIGTERM, and returns the exit status.
    pub(crate) async fn sigterm(mut self) -> std::process::ExitStatus {
        self.ready().await;
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

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of its log that contain `needle`.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
