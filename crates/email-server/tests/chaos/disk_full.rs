//! F6: the disk under the SQLite file full, while an application enqueues
//! and the server delivers; then space comes back.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use email::Mailer;
use email_server::store::{SqliteStore, Store};

use crate::common::{
    Figures, Rng, ServerProc, TempDir, accepted, check_all_sent, email, embedded_queue,
    integrity_check, pick, server_config, sqlite_database, wait_all_final,
};
use crate::support::fault_smtp::{Behaviour, FaultServer};

/// A small tmpfs of the scenario's own, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when mounting is not allowed here (not root, a container
    /// without CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status()
            .ok();
    }
}

/// How the disk is made full.
enum Disk {
    /// A real full filesystem: a filler file takes the tmpfs's last byte.
    Tmpfs { _fs: Tmpfs, filler: PathBuf },
    /// No tmpfs: `PRAGMA max_page_count` caps the file for the producer's
    /// connections only (the server is not affected).
    PageCap,
}

impl Disk {
    fn name(&self) -> &'static str {
        match self {
            Disk::Tmpfs { .. } => "tmpfs",
            Disk::PageCap => "max_page_count",
        }
    }

    async fn fill(&self, mailer: &Mailer) {
        match self {
            Disk::Tmpfs { filler, .. } => {
                let mut f = std::fs::File::create(filler).expect("filler file");
                for chunk in [1 << 20, 4096, 512] {
                    let block = vec![0xA5u8; chunk];
                    while f.write_all(&block).is_ok() {}
                }
                f.sync_all().ok();
            }
            Disk::PageCap => cap_pages(mailer, None).await,
        }
    }

    async fn free(&self, mailer: &Mailer) {
        match self {
            Disk::Tmpfs { filler, .. } => std::fs::remove_file(filler).expect("remove the filler"),
            Disk::PageCap => cap_pages(mailer, Some(1_073_741_823)).await,
        }
    }
}

/// Sets `max_page_count` on every connection of the mailer's pool (four):
/// to `pages`, or to the file's current size.
async fn cap_pages(mailer: &Mailer, pages: Option<i64>) {
    let pool = mailer
        .queue()
        .as_embedded()
        .expect("the embedded queue")
        .pool();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.expect("a connection"));
    }
    for conn in &mut held {
        let pages = match pages {
            Some(p) => p,
            None => sqlx::query_scalar::<_, i64>("PRAGMA page_count")
                .fetch_one(&mut **conn)
                .await
                .expect("page_count"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {pages}"
        )))
        .execute(&mut **conn)
        .await
        .expect("max_page_count");
    }
}

/// How long until another connection can take the file's write lock
/// (`BEGIN IMMEDIATE` without waiting), polled every 20 ms; `None` if not
/// within `limit`.
async fn write_lock_free(db: &Path, limit: Duration) -> Option<Duration> {
    use sqlx::ConnectOptions as _;
    let start = Instant::now();
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::ZERO)
        .connect()
        .await
        .expect("a probe connection");
    while start.elapsed() < limit {
        if sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .is_ok()
        {
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut conn)
                .await
                .expect("rollback");
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// One `enqueue` call: when it returned, and what.
struct Call {
    started: Instant,
    at: Instant,
    result: Result<String, String>,
}

/// A durable `Mailer` enqueues every 5 ms while `email-server run`
/// delivers from the same SQLite file, which sits on a 16 MiB tmpfs. After
/// 1 s a filler file takes all the space left, for a few seconds, then is
/// removed. While the disk is full, `enqueue` returns an error that says
/// so, never an id it did not store; the server keeps running; once space
/// is back every id returned is delivered, and `PRAGMA integrity_check`
/// is ok.
pub(crate) async fn run() {
    let full_for = pick(Duration::from_secs(3), Duration::from_secs(20));
    let rng = Rng::new();
    let dir = TempDir::new("f6");
    let mnt = dir.path().join("mnt");
    let disk = match Tmpfs::mount(&mnt, "16m") {
        Some(fs) => Disk::Tmpfs {
            _fs: fs,
            filler: mnt.join("filler"),
        },
        None => {
            eprintln!("F6: cannot mount a tmpfs here; capping the file with max_page_count");
            std::fs::create_dir_all(&mnt).expect("dir");
            Disk::PageCap
        }
    };
    let db = mnt.join("email.db");
    let sink = FaultServer::start(Behaviour::new()).await;
    let config = server_config(
        dir.path(),
        &embedded_queue(&db),
        &sqlite_database(&db),
        sink.addr().port(),
    );
    let mailer = Arc::new(Mailer::embedded(&db).await.expect("mailer"));
    let mut server = ServerProc::start(&config, dir.path().join("server.log"));
    server.ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (mailer, stop) = (mailer.clone(), stop.clone());
        tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = mailer.enqueue(&email("f6", i)).await;
                calls.push(Call {
                    started,
                    at: Instant::now(),
                    result: result.map(|id| id.to_string()).map_err(|e| e.to_string()),
                });
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            calls
        })
    };
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    disk.fill(&mailer).await;
    let full_at = Instant::now();
    let mut server_up = true;
    while full_at.elapsed() < full_for {
        server_up &= server.running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        server_up,
        "the server died on a full disk:\n{}",
        server.log_tail()
    );
    disk.free(&mailer).await;
    let freed_at = Instant::now();
    let lock_free_after = write_lock_free(&db, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(2_000).saturating_sub(freed_at.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let calls = producer.await.expect("producer");

    let promised: HashSet<String> = calls
        .iter()
        .filter_map(|c| c.result.as_ref().ok().cloned())
        .collect();
    let errors: Vec<&Call> = calls.iter().filter(|c| c.result.is_err()).collect();
    let while_full = |c: &&Call| c.at >= full_at && c.at <= freed_at;
    let ok_while_full = calls
        .iter()
        .filter(while_full)
        .filter(|c| c.result.is_ok())
        .count();
    assert!(
        errors.iter().any(while_full),
        "no enqueue failed while the disk was full ({} calls then, all returned an id)",
        calls.iter().filter(while_full).count()
    );
    let slowest = calls
        .iter()
        .map(|c| c.at - c.started)
        .max()
        .unwrap_or_default();
    let mut f = Figures::new("F6", rng.seed);
    f.put("disk", disk.name())
        .secs("full_for_s", full_for)
        .put("enqueue_calls", calls.len())
        .put("ids_returned", promised.len())
        .put("errors", errors.len())
        .put("ids_returned_while_full", ok_while_full)
        .put("slowest_enqueue_ms", slowest.as_millis())
        .put(
            "write_lock_free_after_space_back_ms",
            lock_free_after.map_or("never".into(), |d| d.as_millis().to_string()),
        );
    let unclear: Vec<&str> = errors
        .iter()
        .filter_map(|c| c.result.as_ref().err())
        .filter(|e| {
            let e = e.to_lowercase();
            !e.contains("full") && !e.contains("space")
        })
        .map(String::as_str)
        .collect();
    f.put("errors_not_saying_full", unclear.len());
    if !unclear.is_empty() || lock_free_after.is_none_or(|d| d > Duration::from_secs(2)) {
        f.print();
    }
    assert!(
        lock_free_after.is_some_and(|d| d <= Duration::from_secs(2)),
        "the SQLite write lock was still taken {lock_free_after:?} after space came back \
         (another process keeps a write transaction open), so enqueue waits and fails"
    );
    for e in &errors {
        let text = e.result.as_ref().expect_err("an error").to_lowercase();
        assert!(
            text.contains("full") || text.contains("space"),
            "an enqueue failed without saying the disk is full: {text}"
        );
    }
    let last_error = errors.iter().map(|c| c.at).max().expect("errors");
    let store = Store::Sqlite(SqliteStore::open(&db).await.expect("store"));
    wait_all_final(&store, promised.len(), Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    assert!(server.running(), "server exited:\n{}", server.log_tail());
    let store_errors = server.log_count("full");
    let status = server.sigterm().await;
    assert!(status.success(), "server exited with {status}");
    let found = check_all_sent(&store, &promised, &accepted(&sink)).await;
    drop(store);
    drop(mailer);
    let integrity = integrity_check(&db).await;
    assert_eq!(integrity, "ok");
    let mut kinds: Vec<String> = errors
        .iter()
        .filter_map(|c| c.result.as_ref().err())
        .map(|e| e.split(": ").next().unwrap_or(e).to_owned())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    f.put("error_text", kinds.join("|"))
        .put(
            "last_error_after_space_back_ms",
            last_error.saturating_duration_since(freed_at).as_millis(),
        )
        .put("server_log_lines_disk_full", store_errors)
        .put("server_stayed_up", "yes")
        .put("lost", 0)
        .put("received_twice", found.received_twice)
        .put("marked_possible_duplicate", found.marked)
        .put("integrity", integrity)
        .secs("total_s", elapsed)
        .print();
}
