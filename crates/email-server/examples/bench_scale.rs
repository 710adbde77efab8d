//! Scale-out benchmarks (issue 4), for `scripts/bench-scale.sh`: the Redis
//! queue, intake into PostgreSQL, and several servers sharing one
//! PostgreSQL. Every run uses its own Redis key prefix and its own
//! PostgreSQL schema, both removed at the end.
//!
//! ```sh
//! # Buffered enqueue into Redis from one process (one task):
//! bench_scale redis-buffered --n 200000
//! # Intake: N records already in the stream, moved into PostgreSQL:
//! bench_scale intake --n 50000
//! # K `email-server run` processes sharing one PostgreSQL, each with
//! # `max-connections: C`, against a sink that waits DELAY ms before it
//! # answers each final `.`:
//! bench_scale servers --server target/release/email-server --n 4000 --servers 2 --conns 4 --delay-ms 20
//! ```
//!
//! URLs come from `EMAIL_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`)
//! and `EMAIL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Each command prints one
//! `RESULT` line of `key=value` pairs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use email::config::{QueueConfig, QueueEngine, Secret};
use email::queue::redis::driver;
use email::queue::{Queue, Queued, RedisQueue};
use email::{Email, Mailer};
use email_server::store::{PostgresStore, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::{Notify, watch};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// `Mailer` on the Redis queue, buffered: enqueue N, then flush.
    RedisBuffered {
        #[arg(long, default_value_t = 200_000)]
        n: usize,
        /// The buffer's capacity (`email.buffer`).
        #[arg(long, default_value_t = 100_000)]
        buffer: usize,
    },
    /// N records put in the stream first, then intake moves them into a
    /// fresh PostgreSQL schema.
    Intake {
        #[arg(long, default_value_t = 50_000)]
        n: usize,
        /// Entries per read and per store transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// K servers drain N due emails from one PostgreSQL to a slow sink.
    Servers {
        /// The `email-server` binary.
        #[arg(long)]
        server: PathBuf,
        #[arg(long, default_value_t = 4000)]
        n: usize,
        #[arg(long, default_value_t = 1)]
        servers: usize,
        /// `max-connections` of each server.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// The sink's wait before answering each final `.`.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// `batch` of each server.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Where configs and server logs go.
        #[arg(long, default_value = "target/bench-scale")]
        dir: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::RedisBuffered { n, buffer } => redis_buffered(n, buffer).await,
        Cmd::Intake { n, batch } => intake(n, batch).await,
        Cmd::Servers {
            server,
            n,
            servers,
            conns,
            delay_ms,
            batch,
            dir,
            timeout,
        } => {
            let run = ServersRun {
                server,
                n,
                servers,
                conns,
                delay: Duration::from_millis(delay_ms),
                batch,
                dir,
                timeout: Duration::from_secs(timeout),
            };
            run.run().await
        }
    }
}

fn redis_url() -> String {
    std::env::var("EMAIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn pg_url() -> String {
    std::env::var("EMAIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name unique to this run: the Redis key prefix and the schema.
fn run_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench_{what}_{}_{nanos}", std::process::id())
}

fn queue_config(name: &str) -> QueueConfig {
    QueueConfig {
        engine: QueueEngine::Redis,
        url: Some(Secret::new(redis_url())),
        name: name.to_owned(),
        ..QueueConfig::default()
    }
}

/// Deletes every Redis key under `name`.
async fn wipe_redis(name: &str) -> anyhow::Result<()> {
    let client = driver::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = driver::cmd("KEYS")
        .arg(format!("{name}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        driver::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

async fn drop_schema(schema: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(&pg_url()).await?;
    // The name is ours ([a-z0-9_]), never input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&pool)
    .await?;
    Ok(())
}

/// The ~2 KB email every benchmark sends.
fn typical_email() -> anyhow::Result<Email> {
    let para = "Thank you for your order. Your parcel is on its way and should \
                arrive within three working days. ";
    let text = para.repeat(18);
    Ok(Email::builder()
        .from("Shop <shop@example.com>")
        .to("Ann <ann@example.com>")
        .subject("Your order has shipped")
        .text(text)
        .build()?)
}

fn queued(email: &Email, raw: &[u8], now: i64) -> Queued {
    Queued {
        id: uuid::Uuid::now_v7(),
        created_at_ms: now,
        due_at_ms: now,
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

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

async fn redis_buffered(n: usize, buffer: usize) -> anyhow::Result<()> {
    let name = run_name("buffered");
    let result = async {
        let queue = RedisQueue::open(&queue_config(&name)).await?;
        queue.ping().await.context("Redis is not reachable")?;
        let mailer = Mailer::new(Queue::Redis(queue.clone())).buffered(buffer);
        let email = typical_email()?;
        let size = email.to_bytes().len();
        let start = Instant::now();
        for _ in 0..n {
            mailer.enqueue(&email).await?;
        }
        let handed = start.elapsed();
        let report = mailer.flush().await?;
        let durable = start.elapsed();
        ensure!(
            mailer.buffer_failures() == 0,
            "{} emails could not be written: {report:?}",
            mailer.buffer_failures()
        );
        let len: u64 = {
            let client = driver::Client::open(redis_url())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            driver::cmd("XLEN")
                .arg(&queue.keys().stream)
                .query_async(&mut conn)
                .await?
        };
        ensure!(len == n as u64, "the stream holds {len} entries, not {n}");
        println!(
            "RESULT redis-buffered n={n} bytes={size} handoff_rate={:.0} durable_rate={:.0} \
             handoff_secs={:.3} durable_secs={:.3}",
            n as f64 / handed.as_secs_f64(),
            n as f64 / durable.as_secs_f64(),
            handed.as_secs_f64(),
            durable.as_secs_f64()
        );
        Ok(())
    }
    .await;
    wipe_redis(&name).await?;
    result
}

async fn intake(n: usize, batch: usize) -> anyhow::Result<()> {
    let name = run_name("intake");
    let result = async {
        let queue = RedisQueue::open(&queue_config(&name)).await?;
        queue.ping().await.context("Redis is not reachable")?;
        let email = typical_email()?;
        let raw = email.to_bytes();
        let now = now_ms();
        let mut left = n;
        while left > 0 {
            let k = left.min(1000);
            let records: Vec<Queued> = (0..k).map(|_| queued(&email, &raw, now)).collect();
            queue.insert(&records).await?;
            left -= k;
        }
        let pg = PostgresStore::open_in_schema(&pg_url(), &name).await?;
        let pool = pg.pool().clone();
        let store = Store::Postgres(pg);
        let (stop, shutdown) = watch::channel(false);
        let settings = email_server::intake::IntakeSettings {
            batch,
            ..Default::default()
        };
        let start = Instant::now();
        let task = tokio::spawn(email_server::intake::run(
            queue,
            store,
            "bench".into(),
            Arc::new(Notify::new()),
            shutdown,
            settings,
        ));
        let deadline = start + Duration::from_secs(600);
        loop {
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
                .fetch_one(&pool)
                .await?;
            if stored as usize >= n {
                break;
            }
            ensure!(Instant::now() < deadline, "only {stored} of {n} stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        stop.send(true)?;
        task.await?;
        println!(
            "RESULT intake n={n} batch={batch} bytes={} rate={:.0} secs={secs:.3}",
            raw.len(),
            n as f64 / secs
        );
        Ok(())
    }
    .await;
    wipe_redis(&name).await?;
    drop_schema(&name).await?;
    result
}

struct ServersRun {
    server: PathBuf,
    n: usize,
    servers: usize,
    conns: usize,
    delay: Duration,
    batch: usize,
    dir: PathBuf,
    timeout: Duration,
}

impl ServersRun {
    async fn run(&self) -> anyhow::Result<()> {
        let name = run_name("servers");
        let result = self.measure(&name).await;
        wipe_redis(&name).await?;
        drop_schema(&name).await?;
        result
    }

    async fn measure(&self, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let dir = std::path::absolute(&self.dir)?;
        let sink = SlowSink::start(self.delay).await?;

        // The backlog, straight into the store.
        let pg = PostgresStore::open_in_schema(&pg_url(), name).await?;
        let pool = pg.pool().clone();
        let store = Store::Postgres(pg);
        let email = typical_email()?;
        let raw = email.to_bytes();
        let now = now_ms();
        let mut left = self.n;
        while left > 0 {
            let k = left.min(1000);
            let batch: Vec<Queued> = (0..k).map(|_| queued(&email, &raw, now)).collect();
            store.insert(&batch).await?;
            left -= k;
        }

        let config = write_config(&dir, name, sink.port, self.conns, self.batch)?;
        let mut children = Vec::new();
        for i in 0..self.servers {
            let log = std::fs::File::create(dir.join(format!("{name}-server{i}.log")))?;
            let child = Command::new(&self.server)
                .arg("run")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", self.server.display()))?;
            children.push(child);
        }
        let deadline = Instant::now() + self.timeout;
        while sink.received() < self.n as u64 {
            if Instant::now() > deadline {
                bail!("only {} of {} received in time", sink.received(), self.n);
            }
            for c in &mut children {
                if let Some(status) = c.try_wait()? {
                    bail!("a server exited early: {status}");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let span = sink.span();
        for c in &mut children {
            if let Some(pid) = c.id() {
                // SIGTERM: a clean stop, as an operator would.
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
        }
        for c in &mut children {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE state = 'sent'")
            .fetch_one(&pool)
            .await?;
        ensure!(
            sink.received() == self.n as u64 && sent as usize == self.n,
            "received {} and {sent} sent, for {} emails",
            sink.received(),
            self.n
        );
        let secs = span.as_secs_f64();
        println!(
            "RESULT servers servers={} conns={} delay_ms={} n={} rate={:.1} secs={secs:.3} \
             ideal_rate={:.1}",
            self.servers,
            self.conns,
            self.delay.as_millis(),
            self.n,
            (self.n as f64 - 1.0) / secs,
            (self.servers * self.conns) as f64 / self.delay.as_secs_f64()
        );
        Ok(())
    }
}

fn write_config(
    dir: &Path,
    name: &str,
    port: u16,
    conns: usize,
    batch: usize,
) -> anyhow::Result<PathBuf> {
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let pg = format!("{base}{sep}options=-csearch_path%3D{name}");
    let yaml = format!(
        "email:\n  queue:\n    default:\n      engine: redis\n      url: '{redis}'\n      \
         name: '{name}'\n  server:\n    batch: {batch}\n    database:\n      engine: postgres\n      \
         url: '{pg}'\n    smtp:\n      host: 127.0.0.1\n      port: {port}\n      \
         security: plain\n      max-connections: {conns}\n",
        redis = redis_url(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// An SMTP sink that answers everything with success, but waits `delay`
/// before answering each final `.`, like a relay that scans or forwards
/// each message before accepting it. It supports PIPELINING and counts
/// messages, noting when the first and the last arrived.
struct SlowSink {
    port: u16,
    stats: Arc<SinkStats>,
}

struct SinkStats {
    count: AtomicU64,
    epoch: Instant,
    /// Microseconds since `epoch`: first and last accepted message.
    first: AtomicU64,
    last: AtomicU64,
}

impl SlowSink {
    async fn start(delay: Duration) -> anyhow::Result<SlowSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(SinkStats {
            count: AtomicU64::new(0),
            epoch: Instant::now(),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
        });
        let shared = stats.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let stats = shared.clone();
                tokio::spawn(async move {
                    let _ = session(stream, delay, &stats).await;
                });
            }
        });
        Ok(SlowSink { port, stats })
    }

    fn received(&self) -> u64 {
        self.stats.count.load(Ordering::SeqCst)
    }

    /// From the first message accepted to the last.
    fn span(&self) -> Duration {
        let first = self.stats.first.load(Ordering::SeqCst);
        let last = self.stats.last.load(Ordering::SeqCst);
        Duration::from_micros(last.saturating_sub(first))
    }
}

async fn session(stream: TcpStream, delay: Duration, stats: &SinkStats) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        let reply: &[u8] = match verb.as_slice() {
            b"EHLO" => b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n",
            b"DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                tokio::time::sleep(delay).await;
                let at = stats.epoch.elapsed().as_micros() as u64;
                stats.first.fetch_min(at, Ordering::SeqCst);
                stats.last.fetch_max(at, Ordering::SeqCst);
                stats.count.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 queued\r\n"
            }
            b"QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 ok\r\n",
        };
        // With PIPELINING, replies to commands already read are written as
        // the client sent them, in order; flushing each is fine here.
        write.write_all(reply).await?;
    }
}
