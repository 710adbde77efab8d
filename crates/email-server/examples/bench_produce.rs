//! The application side of `bench/run` (issue 5): producers that enqueue
//! through `email::Mailer` while an `email-server run` process delivers,
//! and the PostgreSQL schema the Redis + PostgreSQL rows use.
//!
//! ```sh
//! # TASKS tasks durably enqueue N emails between them, as fast as they can:
//! bench_produce burst --config CFG --n 10000 --tasks 4
//! # One task enqueues RATE emails/s for SECS seconds and logs, per email,
//! # `<message-id> <unix ns when enqueue returned>` to FILE:
//! bench_produce paced --config CFG --rate 500 --secs 30 --out FILE
//! # A fresh schema (created and migrated), and dropping it again:
//! bench_produce pg-schema --url URL --create NAME
//! bench_produce pg-schema --url URL --drop NAME
//! ```
//!
//! The mailer is `Mailer::from_config` on the YAML file the server reads
//! too (`email.queue.default`: the embedded SQLite file or a Redis
//! stream), without a buffer: every `enqueue` returns once the email is
//! stored. Every email is built (and so gets its own Message-ID) right
//! before it is enqueued: the same ~2 KB text email as `bench_enqueue` and
//! `bench_dispatch`.
//!
//! `burst` and `paced` print one `RESULT` line of `key=value` pairs; times
//! are Unix ns (`SystemTime`), so that they compare with the sink's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use email::{Email, Mailer};
use email_server::store::PostgresStore;
use sqlx::Connection;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// TASKS tasks enqueue N emails between them, as fast as they can.
    Burst {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        n: usize,
        #[arg(long, default_value_t = 4)]
        tasks: usize,
    },
    /// One task enqueues RATE emails/s for SECS seconds, logging when each
    /// `enqueue` returned.
    Paced {
        #[arg(long)]
        config: PathBuf,
        /// Emails per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds.
        #[arg(long, default_value_t = 30.0)]
        secs: f64,
        /// `<message-id> <unix ns>` per email.
        #[arg(long)]
        out: PathBuf,
    },
    /// Creates (and migrates) or drops a schema.
    PgSchema {
        #[arg(long)]
        url: String,
        #[arg(long, conflicts_with = "drop", required_unless_present = "drop")]
        create: Option<String>,
        #[arg(long)]
        drop: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Burst { config, n, tasks } => burst(&config, n, tasks).await,
        Cmd::Paced {
            config,
            rate,
            secs,
            out,
        } => paced(&config, rate, secs, &out).await,
        Cmd::PgSchema { url, create, drop } => match (create, drop) {
            (Some(name), _) => {
                checked(&name)?;
                let store = PostgresStore::open_in_schema(&url, &name).await?;
                store.pool().close().await;
                Ok(())
            }
            (None, Some(name)) => {
                checked(&name)?;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                Ok(())
            }
            (None, None) => bail!("--create or --drop"),
        },
    }
}

async fn mailer(config: &std::path::Path) -> anyhow::Result<Mailer> {
    let config = email::config::Config::load(config)
        .with_context(|| format!("reading {}", config.display()))?;
    ensure!(
        config.email.buffer == 0,
        "the bench measures durable enqueue: buffer must be 0"
    );
    Ok(Mailer::from_config(&config).await?)
}

async fn burst(config: &std::path::Path, n: usize, tasks: usize) -> anyhow::Result<()> {
    ensure!(tasks > 0 && n >= tasks, "need 0 < tasks <= n");
    let mailer = mailer(config).await?;
    // Everything is open before the clock starts; the tasks wait for it.
    let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let count = n / tasks + usize::from(t < n % tasks);
        let (mailer, start) = (mailer.clone(), start.clone());
        handles.push(tokio::spawn(async move {
            start.wait().await;
            for _ in 0..count {
                mailer.enqueue(&typical_email()?).await?;
            }
            anyhow::Ok(now_ns())
        }));
    }
    let first = now_ns();
    start.wait().await;
    let mut last = first;
    for h in handles {
        last = last.max(h.await??);
    }
    let secs = (last - first) as f64 / 1e9;
    println!(
        "RESULT mode=burst n={n} tasks={tasks} bytes={} first_ns={first} last_ns={last} \
         secs={secs:.3} rate={:.1}",
        typical_email()?.to_bytes().len(),
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

async fn paced(
    config: &std::path::Path,
    rate: f64,
    secs: f64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    ensure!(rate > 0.0 && secs > 0.0, "rate and secs must be positive");
    let mailer = mailer(config).await?;
    let n = (rate * secs).round() as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut log = String::with_capacity(n * 64);
    let mut call_us: Vec<u64> = Vec::with_capacity(n);
    let mut max_behind = Duration::ZERO;
    let first = now_ns();
    let start = tokio::time::Instant::now();
    for i in 0..n {
        // Due times are fixed from the start: a slow call is caught up on
        // by the next ones (open loop), not carried forward.
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        max_behind = max_behind.max(tokio::time::Instant::now().saturating_duration_since(due));
        let email = typical_email()?;
        let id = email
            .message_id()
            .context("built emails have a Message-ID")?
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        let called = tokio::time::Instant::now();
        mailer.enqueue(&email).await?;
        let returned = now_ns();
        call_us.push(called.elapsed().as_micros() as u64);
        log.push_str(&format!("{id} {returned}\n"));
    }
    let last = now_ns();
    std::fs::write(out, log).with_context(|| format!("writing {}", out.display()))?;
    call_us.sort_unstable();
    let pct = |p: usize| call_us[(call_us.len() * p).div_ceil(100).saturating_sub(1)];
    println!(
        "RESULT mode=paced n={n} rate={rate} first_ns={first} last_ns={last} \
         enqueue_p50_us={} enqueue_p99_us={} enqueue_max_us={} max_behind_ms={:.1}",
        pct(50),
        pct(99),
        call_us[call_us.len() - 1],
        max_behind.as_secs_f64() * 1e3
    );
    Ok(())
}

/// The email every driver sends: text only, ~2 KB rendered (the same as
/// `bench_enqueue` and `bench_dispatch`).
fn typical_email() -> anyhow::Result<Email> {
    let line = "Your order has shipped and should arrive within three working days.\n";
    Ok(Email::builder()
        .from("Shop <shop@example.com>")
        .to("Ann Example <ann@example.com>")
        .subject("Your order has shipped")
        .text(line.repeat(27))
        .build()?)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Schema names are interpolated into SQL: plain identifiers only.
fn checked(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit(),
        "schema name {name:?}: [a-z_][a-z0-9_]*, at most 63 bytes"
    );
    Ok(())
}
