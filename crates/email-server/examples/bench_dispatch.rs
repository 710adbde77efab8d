//! Dispatch benchmarks of `email-server` against an SMTP sink on loopback,
//! for `scripts/bench-server.sh` (targets in BENCHMARKS.md, issue 3).
//!
//! ```sh
//! # A store with N due emails (and M scheduled a month ahead), one
//! # transaction per 50,000 rows through email::queue::Embedded::insert:
//! bench_dispatch seed --db DB --fresh --due 10000 [--scheduled 1000000]
//! # Run `email-server run` as a subprocess until every due email is sent:
//! bench_dispatch dispatch --db DB --server target/release/email-server --port P --conns 4
//! # send_at lateness: the server runs, N emails are given due times spread
//! # over SPREAD seconds starting LEAD seconds from now:
//! bench_dispatch lateness --db DB --server ... --port P --conns 4 --n 10000
//! ```
//!
//! The server is the release binary with a YAML config written next to the
//! database (`security: plain` to `127.0.0.1:PORT`, `max-connections` =
//! `--conns`), so its memory can be read from `/proc/PID/status`. It logs
//! at its default level (`info`, one line per attempt) to `--log`.
//!
//! Timing uses the store, not the sink: the clock starts just before the
//! server is spawned, and ends at the latest `attempts.finished_at` (the
//! time the relay's 250 for the final `.` was read) of this run's attempts,
//! polled every 50 ms until they are all there. Every attempt must be
//! `sent`, else the run fails (exit 1). Each command prints one `RESULT`
//! line of `key=value` pairs for the script.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand};
use email::Email;
use email::queue::{Embedded, Queued};
use email_server::store::SqliteStore;
use sqlx::Row;
use tokio::process::{Child, Command};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Adds due and scheduled emails to the store.
    Seed {
        #[arg(long)]
        db: PathBuf,
        /// Delete the database first.
        #[arg(long)]
        fresh: bool,
        /// Emails due now.
        #[arg(long, default_value_t = 0)]
        due: usize,
        /// Emails due in 30 days.
        #[arg(long, default_value_t = 0)]
        scheduled: usize,
    },
    /// Runs the server until every due email in the store is sent.
    Dispatch(ServerArgs),
    /// send_at lateness with the server running.
    Lateness {
        #[command(flatten)]
        server: ServerArgs,
        /// Emails.
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Seconds from now to the first due time.
        #[arg(long, default_value_t = 10.0)]
        lead: f64,
        /// Seconds over which the due times are spread evenly.
        #[arg(long, default_value_t = 20.0)]
        spread: f64,
    },
}

#[derive(Args)]
struct ServerArgs {
    #[arg(long)]
    db: PathBuf,
    /// The `email-server` binary.
    #[arg(long)]
    server: PathBuf,
    /// The sink's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// `max-connections`.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// The server's log (stderr).
    #[arg(long)]
    log: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Seed {
            db,
            fresh,
            due,
            scheduled,
        } => seed(&db, fresh, due, scheduled).await,
        Cmd::Dispatch(args) => dispatch(&args).await,
        Cmd::Lateness {
            server,
            n,
            lead,
            spread,
        } => lateness(&server, n, lead, spread).await,
    }
}

/// Rows per transaction when seeding.
const SEED_BATCH: usize = 50_000;

async fn seed(db: &Path, fresh: bool, due: usize, scheduled: usize) -> anyhow::Result<()> {
    if fresh {
        remove_db(db)?;
    }
    let queue = Embedded::open(db).await?;
    let email = typical_email()?;
    let raw = email.to_bytes();
    let start = Instant::now();
    let now = now_ms();
    let month = 30 * 24 * 3600 * 1000;
    // Scheduled first, so the due emails are the newest rows.
    for (count, due_at) in [(scheduled, now + month), (due, now)] {
        let mut left = count;
        while left > 0 {
            let n = left.min(SEED_BATCH);
            let batch: Vec<Queued> = (0..n).map(|_| queued(&email, &raw, now, due_at)).collect();
            queue.insert(&batch).await?;
            left -= n;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let file = std::fs::metadata(db)?.len() + wal_len(db);
    println!(
        "RESULT seed due={due} scheduled={scheduled} bytes={} secs={secs:.1} rate={:.0} db_mb={:.0}",
        raw.len(),
        (due + scheduled) as f64 / secs.max(1e-9),
        file as f64 / 1e6
    );
    Ok(())
}

fn queued(email: &Email, raw: &[u8], now: i64, due_at: i64) -> Queued {
    Queued {
        id: uuid::Uuid::now_v7(),
        created_at_ms: now,
        due_at_ms: due_at,
        mail_from: "shop@example.com".into(),
        rcpt_to: vec!["ann@example.com".into()],
        raw: raw.to_vec(),
        subject: email.subject().map(str::to_owned),
        message_id: email.message_id().map(str::to_owned),
        idempotency_key: None,
        priority: 0,
        max_fails: None,
        max_time_ms: None,
        tags: None,
    }
}

async fn dispatch(args: &ServerArgs) -> anyhow::Result<()> {
    let store = SqliteStore::open(&args.db).await?;
    let pool = store.embedded().pool().clone();
    let base: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM attempts")
        .fetch_one(&pool)
        .await?;
    let due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emails WHERE state IN ('queued', 'scheduled', 'deferred') AND next_at <= ?1",
    )
    .bind(now_ms())
    .fetch_one(&pool)
    .await?;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM emails WHERE state IN ('queued', 'scheduled', 'deferred')",
    )
    .fetch_one(&pool)
    .await?;
    let scheduled = waiting - due;
    ensure!(due > 0, "nothing is due in {}", args.db.display());
    let t0 = now_ms();
    let mut server = Server::start(args).await?;
    // A run that does not finish in time is not an error: the rate is
    // then measured over what was sent (complete=0).
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let complete = loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts WHERE id > ?1")
            .bind(base)
            .fetch_one(&pool)
            .await?;
        if done >= due {
            break true;
        }
        server.check_alive()?;
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let t_end = now_ms();
    let (hwm_kb, rss_kb) = server.memory()?;
    let cpu_ms = server.cpu_ms()?;
    server.stop().await?;
    let row = sqlx::query(
        "SELECT count(*) AS n, sum(outcome = 'sent') AS sent, min(started_at) AS first, \
                max(finished_at) AS last FROM attempts WHERE id > ?1",
    )
    .bind(base)
    .fetch_one(&pool)
    .await?;
    let n: i64 = row.try_get("n")?;
    let sent: i64 = row.try_get::<Option<i64>, _>("sent")?.unwrap_or(0);
    let first: i64 = row.try_get::<Option<i64>, _>("first")?.unwrap_or(t_end);
    // Incomplete: the window is the whole wait, not up to the last send.
    let last: i64 = match complete {
        true => row.try_get::<Option<i64>, _>("last")?.unwrap_or(t_end),
        false => t_end,
    };
    ensure!(
        sent == n && (n == due || !complete),
        "{sent} of {due} sent ({n} attempts): see {}",
        args.log.display()
    );
    let total = (last - t0) as f64 / 1000.0;
    let steady = (last - first) as f64 / 1000.0;
    println!(
        "RESULT dispatch due={due} sent={sent} complete={} scheduled={scheduled} conns={} \
         secs={total:.3} rate={:.1} first_attempt_ms={} steady_rate={:.1} vmhwm_mb={:.1} vmrss_mb={:.1} \
         cpu_ms_per_email={:.3}",
        u8::from(complete),
        args.conns,
        sent as f64 / total,
        first - t0,
        sent as f64 / steady.max(1e-3),
        hwm_kb as f64 / 1024.0,
        rss_kb as f64 / 1024.0,
        cpu_ms / sent.max(1) as f64
    );
    Ok(())
}

async fn lateness(args: &ServerArgs, n: usize, lead: f64, spread: f64) -> anyhow::Result<()> {
    remove_db(&args.db)?;
    // Create the file before the server opens it; the mailer below shares it.
    let mailer = email::Mailer::embedded(&args.db).await?;
    let store = SqliteStore::open(&args.db).await?;
    let pool = store.embedded().pool().clone();
    let mut server = Server::start(args).await?;
    // Wait until the server listens for wake-ups, i.e. it is running.
    let socket = Embedded::wake_socket(&args.db);
    let ready = Instant::now();
    while !socket.exists() {
        server.check_alive()?;
        ensure!(
            ready.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let email = typical_email()?;
    let mailer = mailer.buffered(n);
    let first = jiff::Timestamp::now() + jiff::SignedDuration::from_secs_f64(lead);
    let step = spread / n as f64;
    let enqueue = Instant::now();
    for i in 0..n {
        let at = first + jiff::SignedDuration::from_secs_f64(step * i as f64);
        mailer.send_at(&email, at).await?;
    }
    let report = mailer.flush().await?;
    ensure!(
        report.written == n as u64,
        "flush wrote {} of {n}",
        report.written
    );
    let enqueue_secs = enqueue.elapsed().as_secs_f64();
    let deadline =
        Instant::now() + Duration::from_secs_f64(lead + spread) + Duration::from_secs(args.timeout);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
            .fetch_one(&pool)
            .await?;
        if done >= n as i64 {
            break;
        }
        server.check_alive()?;
        ensure!(
            Instant::now() < deadline,
            "timed out: {done} of {n} attempts"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (hwm_kb, _) = server.memory()?;
    server.stop().await?;
    let rows = sqlx::query(
        "SELECT a.finished_at - e.due_at AS late, a.started_at - e.due_at AS start, a.outcome AS outcome \
           FROM attempts a JOIN emails e ON e.id = a.email_id",
    )
    .fetch_all(&pool)
    .await?;
    let mut late = Vec::with_capacity(rows.len());
    let mut start = Vec::with_capacity(rows.len());
    for r in &rows {
        ensure!(
            r.try_get::<String, _>("outcome")? == "sent",
            "an attempt was not sent: see {}",
            args.log.display()
        );
        late.push(r.try_get::<i64, _>("late")?);
        start.push(r.try_get::<i64, _>("start")?);
    }
    ensure!(late.len() == n, "{} attempts for {n} emails", late.len());
    late.sort_unstable();
    start.sort_unstable();
    let pct = |v: &[i64], p: usize| v[(v.len() * p).div_ceil(100).saturating_sub(1)];
    println!(
        "RESULT lateness n={n} lead_s={lead} spread_s={spread} enqueue_secs={enqueue_secs:.2} \
         p50_ms={} p90_ms={} p99_ms={} max_ms={} min_ms={} start_p50_ms={} start_p99_ms={} \
         start_max_ms={} vmhwm_mb={:.1}",
        pct(&late, 50),
        pct(&late, 90),
        pct(&late, 99),
        late[late.len() - 1],
        late[0],
        pct(&start, 50),
        pct(&start, 99),
        start[start.len() - 1],
        hwm_kb as f64 / 1024.0
    );
    Ok(())
}

/// `email-server run` as a child process.
struct Server {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Server {
    async fn start(args: &ServerArgs) -> anyhow::Result<Server> {
        let db = std::path::absolute(&args.db)?;
        let yaml = format!(
            "email:\n  queue:\n    default:\n      engine: embedded\n      path: {db}\n  \
             server:\n    database:\n      engine: sqlite3\n      path: {db}\n    \
             outbox: {outbox}\n    smtp:\n      host: 127.0.0.1\n      port: {port}\n      \
             security: plain\n      hello-name: bench.example.com\n      max-connections: {conns}\n",
            db = db.display(),
            outbox = db.with_extension("outbox").display(),
            port = args.port,
            conns = args.conns,
        );
        // Checked here so that a bad config fails with a clear message.
        email::config::Config::from_yaml_str(&yaml, "bench config")?;
        let config = db.with_extension("yaml");
        std::fs::write(&config, yaml)?;
        let log = std::fs::File::create(&args.log)
            .with_context(|| format!("creating {}", args.log.display()))?;
        let child = Command::new(&args.server)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", args.server.display()))?;
        let pid = child.id().context("the server exited at once")?;
        Ok(Server {
            child,
            pid,
            log: args.log.clone(),
        })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server exited ({status}): see {}", self.log.display());
        }
        Ok(())
    }

    /// CPU time (user + system) the server has used so far, in ms, from
    /// `/proc/PID/stat` (fields 14 and 15, in clock ticks of 1/100 s).
    fn cpu_ms(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name (field 2) may hold spaces; count after its ')'.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
            + fields.get(12).context("no stime")?.parse::<u64>()?;
        Ok(ticks as f64 * 10.0)
    }

    /// `VmHWM` (peak) and `VmRSS` (now) of the server, in kB.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/PID/status"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("malformed status line")?
                .parse()?)
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()?;
        ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the server did not stop within 60 s of SIGTERM")??;
        ensure!(
            status.success(),
            "the server exited with {status}: see {}",
            self.log.display()
        );
        Ok(())
    }
}

/// The email every driver sends: text only, ~2 KB rendered (the same as
/// `bench_enqueue`).
fn typical_email() -> anyhow::Result<Email> {
    let line = "Your order has shipped and should arrive within three working days.\n";
    Ok(Email::builder()
        .from("Shop <shop@example.com>")
        .to("Ann Example <ann@example.com>")
        .subject("Your order has shipped")
        .text(line.repeat(27))
        .build()?)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn wal_len(db: &Path) -> u64 {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn remove_db(db: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm", ".wake", ".lock"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", db.display())),
        }
    }
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}
