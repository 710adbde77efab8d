//! F1: the server process killed with SIGKILL at random moments while it
//! delivers, and restarted within a second.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use email::Mailer;
use email_server::store::{SqliteStore, Store};
use sqlx::Row;

use crate::common::{
    Figures, Rng, ServerProc, TempDir, check_all_sent, email, embedded_queue, integrity_check,
    pick, server_config, sqlite_database, wait_all_final,
};
use crate::scale::{received, tally};
use crate::support::aiosmtpd::Aiosmtpd;

/// Emails in `sending` held by `owner` (a dead server's orphans).
async fn held_by(store: &Store, owner: &str) -> usize {
    let Store::Sqlite(s) = store else {
        unreachable!("a SQLite store")
    };
    let row =
        sqlx::query("SELECT count(*) FROM emails WHERE state = 'sending' AND lease_owner = ?1")
            .bind(owner)
            .fetch_one(s.embedded().pool())
            .await
            .expect("count claims");
    usize::try_from(row.get::<i64, _>(0)).unwrap_or(0)
}

/// Emails in `state`.
async fn count(store: &Store, state: &str) -> u64 {
    let Store::Sqlite(s) = store else {
        unreachable!("a SQLite store")
    };
    let row = sqlx::query("SELECT count(*) FROM emails WHERE state = ?1")
        .bind(state)
        .fetch_one(s.embedded().pool())
        .await
        .expect("count emails");
    u64::try_from(row.get::<i64, _>(0)).unwrap_or(0)
}

/// N emails in the embedded queue, delivered by `email-server run` to
/// aiosmtpd; the server is killed with SIGKILL `kills` times, each time
/// after a random 0.1-1.5 s of life (during start-up, claiming, sending,
/// recording; sooner if it has sent a random share of what was left), and
/// restarted within a random 0-1 s. Then it runs to the
/// end: every email is `sent`, none is stuck in `sending`, and an email the
/// sink got twice is one whose attempt was cut off by a kill (its lease
/// taken over), marked `possible_duplicate`.
pub(crate) async fn run() {
    let (n, kills) = pick((1_000, 5), (10_000, 20));
    let mut rng = Rng::new();
    let Some(sink) = Aiosmtpd::start().await else {
        return;
    };
    let dir = TempDir::new("f1");
    let db = dir.path().join("email.db");
    let config = server_config(
        dir.path(),
        &embedded_queue(&db),
        &sqlite_database(&db),
        sink.port,
    );
    let mailer = Mailer::embedded(&db).await.expect("mailer").buffered(n);
    let mut promised = HashSet::new();
    for i in 0..n {
        let id = mailer.enqueue(&email("f1", i)).await.expect("enqueue");
        promised.insert(id.to_string());
    }
    assert_eq!(mailer.flush().await.expect("flush").written, n as u64);
    drop(mailer);
    let store = Store::Sqlite(SqliteStore::open(&db).await.expect("store"));

    let start = Instant::now();
    let log = |k: usize| dir.path().join(format!("server-{k}.log"));
    // Per kill: (sent before it, claims it orphaned).
    let mut hits: Vec<(u64, usize)> = Vec::new();
    for k in 0..kills {
        let mut server = ServerProc::start(&config, log(k));
        // Killed after a random time, or sooner, once it has sent a random
        // share of what is left: a fast server must be caught mid-delivery
        // too, not after it has sent everything.
        let deadline = Instant::now() + rng.ms(100, 1_500);
        let sent = count(&store, "sent").await;
        let target = sent + rng.between(1, ((n as u64 - sent) / 2).max(1));
        while Instant::now() < deadline && count(&store, "sent").await < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            server.running(),
            "server exited by itself:\n{}",
            server.log_tail()
        );
        server.sigkill().await;
        let orphans = held_by(&store, &server.owner()).await;
        hits.push((tally(&store).await.state("sent"), orphans));
        tokio::time::sleep(rng.ms(0, 1_000)).await;
    }
    let killed_at = start.elapsed();
    let mut server = ServerProc::start(&config, log(kills));
    let limit = Duration::from_secs(60) + Duration::from_millis(15 * n as u64);
    wait_all_final(&store, n, limit).await;
    let elapsed = start.elapsed();
    assert!(server.running(), "server exited:\n{}", server.log_tail());
    let status = server.sigterm().await;
    assert!(status.success(), "the last server exited with {status}");

    let found = check_all_sent(&store, &promised, &received(&sink)).await;
    assert_eq!(found.extra, 0, "emails nobody enqueued");
    let mid_run = hits.iter().filter(|(sent, _)| *sent < n as u64).count();
    let orphaned: usize = hits.iter().map(|(_, o)| o).sum();
    assert!(
        orphaned > 0,
        "no kill caught the server holding claims: the kills proved nothing ({hits:?})"
    );
    drop(store);
    let integrity = integrity_check(&db).await;
    assert_eq!(integrity, "ok");
    Figures::new("F1", rng.seed)
        .put("emails", n)
        .put("kills", kills)
        .put("kills_mid_delivery", mid_run)
        .put("claims_orphaned", orphaned)
        .put("lost", 0)
        .put("stuck_sending", 0)
        .put("received_twice", found.received_twice)
        .put("marked_possible_duplicate", found.marked)
        .put("unmarked_duplicates", 0)
        .put("integrity", integrity)
        .secs("kills_over_s", killed_at)
        .secs("total_s", elapsed)
        .print();
}
