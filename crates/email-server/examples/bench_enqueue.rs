//! Enqueue throughput of `email::Mailer` on the embedded SQLite queue, for
//! `scripts/bench-server.sh` (targets in BENCHMARKS.md, issue 3).
//!
//! ```sh
//! cargo run --release -p email-server --example bench_enqueue -- durable  DB N
//! cargo run --release -p email-server --example bench_enqueue -- buffered DB N
//! ```
//!
//! - `durable`: `Mailer::embedded`, one task, `enqueue` N times in a row;
//!   each call returns after its own `synchronous=FULL` commit.
//! - `buffered`: `Mailer::embedded(..).buffered(N)`, `enqueue` N times
//!   (the rate at which `enqueue` returns), then `flush()` (the time until
//!   all N are durable).
//!
//! `DB` is deleted first (with its `-wal`/`-shm`), so every run starts from
//! an empty file. Every call renders the same ~2 KB email (`to_bytes` is
//! part of `enqueue`) and gets a new id. Prints one `RESULT` line of
//! `key=value` pairs for the script.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use email::{Email, Mailer};

/// Calls made before timing starts (durable mode): opens the pool's
/// connections and warms SQLite's page cache.
const WARMUP: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, db, n] = args.as_slice() else {
        bail!("usage: bench_enqueue durable|buffered DB N");
    };
    let n: usize = n.parse().context("N")?;
    let db = Path::new(db);
    fresh(db)?;
    let email = typical_email()?;
    let size = email.to_bytes().len();
    match mode.as_str() {
        "durable" => durable(db, &email, n, size).await,
        "buffered" => buffered(db, &email, n, size).await,
        other => bail!("unknown mode {other:?}: durable or buffered"),
    }
}

async fn durable(db: &Path, email: &Email, n: usize, size: usize) -> anyhow::Result<()> {
    let mailer = Mailer::embedded(db).await?;
    for _ in 0..WARMUP {
        mailer.enqueue(email).await?;
    }
    let start = Instant::now();
    for _ in 0..n {
        mailer.enqueue(email).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "RESULT mode=durable n={n} bytes={size} secs={secs:.3} rate={:.0} per_call_us={:.1}",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
    Ok(())
}

async fn buffered(db: &Path, email: &Email, n: usize, size: usize) -> anyhow::Result<()> {
    // Capacity N: the buffer never refuses an email, so the loop measures
    // the hand-off alone while the writer drains in the background.
    let mailer = Mailer::embedded(db).await?.buffered(n);
    let start = Instant::now();
    for _ in 0..n {
        mailer.enqueue(email).await?;
    }
    let handed = start.elapsed().as_secs_f64();
    let report = mailer.flush().await?;
    let durable = start.elapsed().as_secs_f64();
    if report.written != n as u64 || !report.failed.is_empty() {
        bail!(
            "flush wrote {} of {n} emails ({} failed)",
            report.written,
            report.failed.len()
        );
    }
    println!(
        "RESULT mode=buffered n={n} bytes={size} enqueue_secs={handed:.3} enqueue_rate={:.0} \
         flush_secs={durable:.3} durable_rate={:.0}",
        n as f64 / handed,
        n as f64 / durable
    );
    Ok(())
}

/// The email every driver sends: text only, ~2 KB rendered.
fn typical_email() -> anyhow::Result<Email> {
    let line = "Your order has shipped and should arrive within three working days.\n";
    Ok(Email::builder()
        .from("Shop <shop@example.com>")
        .to("Ann Example <ann@example.com>")
        .subject("Your order has shipped")
        .text(line.repeat(27))
        .build()?)
}

fn fresh(db: &Path) -> anyhow::Result<()> {
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
