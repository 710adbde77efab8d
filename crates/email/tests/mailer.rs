//! The Mailer on the embedded engine: each verb stores exactly what it says,
//! durably, in a SQLite file of the test's own.

use email::{Email, Mailer, MailerError, SendOptions};
use sqlx::Row;

fn db_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("email-mailer-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("email.db")
}

fn email() -> Email {
    Email::builder()
        .from("shop@example.com")
        .to("ann@example.com")
        .cc("bob@example.com")
        .bcc("audit@example.com")
        .subject("Order")
        .text("Thanks")
        .build()
        .expect("build")
}

async fn row(mailer: &Mailer, id: email::EmailId) -> sqlx::sqlite::SqliteRow {
    let db = mailer.queue().as_embedded().expect("embedded");
    sqlx::query(
        "SELECT emails.*, email_raw.raw FROM emails \
           LEFT JOIN email_raw ON email_raw.seq = emails.seq WHERE emails.id = ?1",
    )
    .bind(id.to_string())
    .fetch_one(db.pool())
    .await
    .expect("row")
}

/// The database's write-turn lock file, opened as another process would
/// (an open file description of its own, so its `flock` excludes ours).
fn turn_elsewhere(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open(email::queue::Embedded::lock_file(path))
        .expect("lock file")
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[tokio::test]
async fn enqueue_stores_envelope_and_bytes() {
    let mailer = Mailer::embedded(db_path("enqueue")).await.expect("open");
    let e = email();
    let id = mailer.enqueue(&e).await.expect("enqueue");
    let r = row(&mailer, id).await;
    assert_eq!(r.get::<String, _>("state"), "queued");
    assert_eq!(r.get::<String, _>("mail_from"), "shop@example.com");
    let rcpt: Vec<String> = serde_json::from_str(&r.get::<String, _>("recipients")).expect("json");
    assert_eq!(
        rcpt,
        ["ann@example.com", "bob@example.com", "audit@example.com"]
    );
    assert_eq!(r.get::<Vec<u8>, _>("raw"), e.to_bytes());
    assert_eq!(
        r.get::<Option<String>, _>("subject").as_deref(),
        Some("Order")
    );
    assert!((r.get::<i64, _>("due_at") - now_ms()).abs() < 5_000);
}

#[tokio::test]
async fn send_later_and_send_at_schedule() {
    let mailer = Mailer::embedded(db_path("schedule")).await.expect("open");
    let id = mailer.send_later(&email(), "5m").await.expect("later");
    let r = row(&mailer, id).await;
    assert_eq!(r.get::<String, _>("state"), "scheduled");
    let due = r.get::<i64, _>("due_at") - now_ms();
    assert!((295_000..=300_000).contains(&due), "{due}");

    let id = mailer
        .send_later(&email(), std::time::Duration::from_secs(3600))
        .await
        .expect("later");
    assert!(row(&mailer, id).await.get::<i64, _>("due_at") - now_ms() > 3_590_000);

    let at: jiff::Timestamp = "2099-01-01T00:00:00Z".parse().expect("ts");
    let id = mailer.send_at(&email(), at).await.expect("at");
    assert_eq!(
        row(&mailer, id).await.get::<i64, _>("due_at"),
        at.as_millisecond()
    );

    // A time in the past means now, not an error.
    let past: jiff::Timestamp = "2001-01-01T00:00:00Z".parse().expect("ts");
    let id = mailer.send_at(&email(), past).await.expect("past is now");
    let r = row(&mailer, id).await;
    assert_eq!(r.get::<String, _>("state"), "queued");
    assert!((r.get::<i64, _>("due_at") - now_ms()).abs() < 5_000);
}

#[tokio::test]
async fn invalid_delay_is_an_error_that_says_why() {
    let mailer = Mailer::embedded(db_path("delay")).await.expect("open");
    let err = mailer
        .send_later(&email(), "soonish")
        .await
        .expect_err("bad delay");
    assert!(matches!(err, MailerError::InvalidDelay { .. }));
    assert!(err.to_string().contains("soonish"), "{err}");
}

#[tokio::test]
async fn idempotency_key_gives_the_first_id() {
    let mailer = Mailer::embedded(db_path("idem")).await.expect("open");
    let opts = SendOptions::default()
        .idempotency_key("order-42")
        .priority(7);
    let a = mailer
        .enqueue_with(&email(), None, &opts)
        .await
        .expect("first");
    let b = mailer
        .enqueue_with(&email(), None, &opts)
        .await
        .expect("second");
    assert_eq!(a, b);
    let db = mailer.queue().as_embedded().expect("embedded");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 1);
    assert_eq!(row(&mailer, a).await.get::<i64, _>("priority"), 7);
}

/// Concurrent durable enqueues share group commits; each still gets its
/// own id, and a key repeated within one group still gives one email.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_are_committed_together_and_keep_their_ids() {
    let mailer = Mailer::embedded(db_path("group")).await.expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let mailer = mailer.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                // Every task also enqueues the shared keys 0..5, at about
                // the same time as the others.
                let opts = if i < 5 {
                    SendOptions::default().idempotency_key(format!("shared-{i}"))
                } else {
                    SendOptions::default().idempotency_key(format!("own-{t}-{i}"))
                };
                let id = mailer
                    .enqueue_with(&email(), None, &opts)
                    .await
                    .expect("enqueue");
                ids.push((i, id));
            }
            ids
        });
    }
    let mut shared = std::collections::HashMap::new();
    let mut own = std::collections::HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        for (i, id) in ids.expect("task") {
            if i < 5 {
                assert_eq!(*shared.entry(i).or_insert(id), id, "shared key {i}");
            } else {
                assert!(own.insert(id), "{id} returned twice");
            }
        }
    }
    assert_eq!(own.len(), 16 * 20);
    let db = mailer.queue().as_embedded().expect("embedded");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 16 * 20 + 5);
    for id in own.iter().chain(shared.values()) {
        row(&mailer, *id).await;
    }
}

#[tokio::test]
async fn buffered_mailer_returns_at_once_and_flush_makes_durable() {
    let path = db_path("buffered");
    let mailer = Mailer::embedded(&path)
        .await
        .expect("open")
        .buffered(10_000);
    let mut ids = Vec::new();
    for _ in 0..2_500 {
        ids.push(mailer.enqueue(&email()).await.expect("buffered"));
    }
    let report = mailer.flush().await.expect("flush");
    assert_eq!(report.written, 2_500);
    assert!(report.failed.is_empty());
    assert_eq!(mailer.buffer_failures(), 0);
    // Another process (here: a fresh handle) sees every email.
    let other = Mailer::embedded(&path).await.expect("reopen");
    let db = other.queue().as_embedded().expect("embedded");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 2_500);
    assert_eq!(mailer.flush().await.expect("flush").written, 0);
}

#[tokio::test]
async fn full_buffer_refuses_instead_of_blocking() {
    let mailer = Mailer::embedded(db_path("full"))
        .await
        .expect("open")
        .buffered(1);
    let mut refused = 0;
    for _ in 0..200 {
        match mailer.enqueue(&email()).await {
            Ok(_) => {}
            Err(MailerError::BufferFull { capacity }) => {
                assert_eq!(capacity, 1);
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let written = mailer.flush().await.expect("flush").written;
    assert_eq!(written + refused, 200);
}

#[tokio::test]
async fn parsed_email_without_envelope_is_refused() {
    let mailer = Mailer::embedded(db_path("noenv")).await.expect("open");
    let draft = Email::parse(b"Subject: draft\r\n\r\nbody").expect("parse");
    assert!(matches!(
        mailer.enqueue(&draft).await,
        Err(MailerError::NoEnvelope)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_opening_a_new_file_at_once_all_succeed() {
    // An application and an in-process server (or two processes) often
    // open a database that does not exist yet at the same moment.
    for round in 0..40 {
        let path = db_path(&format!("open-race-{round}"));
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { email::queue::Embedded::open(&path).await })
            })
            .collect();
        for open in opens {
            open.await
                .expect("join")
                .expect("open a new file concurrently");
        }
    }
}

/// A file written before SQLite migration 0005 (the message bytes in the
/// `emails` row) opens with nothing lost: the bytes move to `email_raw`,
/// the column goes, and new emails go in beside the old ones.
#[tokio::test]
async fn a_file_from_before_the_raw_table_keeps_its_messages() {
    let path = db_path("schema-v4");
    let old: email::EmailId = "0190a1b2-c3d4-7e5f-8a9b-0123456789ab"
        .parse()
        .expect("uuid");
    let bytes = email().to_bytes();
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect");
        for sql in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_indexes.sql"),
            include_str!("../migrations/sqlite/0003_claim_index.sql"),
            include_str!("../migrations/sqlite/0004_drop_next_index.sql"),
            "PRAGMA user_version = 4",
        ] {
            sqlx::raw_sql(sql)
                .execute(&mut conn)
                .await
                .expect("old schema");
        }
        sqlx::query(
            "INSERT INTO emails (id, idempotency_key, state, created_at, due_at, next_at, \
                                 attempts, mail_from, recipients, pending, raw) \
             VALUES (?1, 'order-7', 'deferred', 1, 1, 1, 1, 'shop@example.com', \
                     '[\"ann@example.com\"]', '[\"ann@example.com\"]', ?2)",
        )
        .bind(old.to_string())
        .bind(&bytes)
        .execute(&mut conn)
        .await
        .expect("old row");
        sqlx::query(
            "INSERT INTO attempts (email_id, started_at, finished_at, outcome, smtp_code) \
             VALUES (?1, 1, 2, 'deferred', 451)",
        )
        .bind(old.to_string())
        .execute(&mut conn)
        .await
        .expect("old attempt");
        // An attempt whose email was deleted by hand with foreign keys off
        // (as the `sqlite3` shell has them): it must not stop the upgrade.
        sqlx::raw_sql(
            "PRAGMA foreign_keys = OFF; \
             INSERT INTO attempts (email_id, started_at, finished_at, outcome) \
             VALUES ('gone', 1, 2, 'sent')",
        )
        .execute(&mut conn)
        .await
        .expect("orphan attempt");
    }
    let mailer = Mailer::embedded(&path).await.expect("open migrates");
    let r = row(&mailer, old).await;
    assert_eq!(r.get::<Vec<u8>, _>("raw"), bytes);
    assert_eq!(r.get::<String, _>("state"), "deferred");
    let db = mailer.queue().as_embedded().expect("embedded");
    let code: i64 = sqlx::query_scalar("SELECT smtp_code FROM attempts WHERE email_id = ?1")
        .bind(old.to_string())
        .fetch_one(db.pool())
        .await
        .expect("the attempt is kept");
    assert_eq!(code, 451);
    // The idempotency key still finds the old email.
    let again = mailer
        .enqueue_with(
            &email(),
            None,
            &SendOptions::default().idempotency_key("order-7"),
        )
        .await
        .expect("enqueue with the old key");
    assert_eq!(again, old);
    // Foreign keys are back on after migrating.
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(db.pool())
        .await
        .expect("pragma");
    assert_eq!(fk, 1);
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('emails')")
        .fetch_all(db.pool())
        .await
        .expect("columns");
    assert!(!columns.iter().any(|c| c == "raw"), "{columns:?}");
    let e = email();
    let new = mailer.enqueue(&e).await.expect("enqueue after migration");
    assert_eq!(
        row(&mailer, new).await.get::<Vec<u8>, _>("raw"),
        e.to_bytes()
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM email_raw")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 2);
}

/// A write given up midway (a caller's timeout around `insert`) leaves
/// nothing open behind it: another handle on the file writes at once, and
/// the first handle goes on working.
#[tokio::test]
async fn an_abandoned_write_does_not_hold_the_file() {
    use email::queue::{Embedded, Queued};
    use std::time::Duration;
    let path = db_path("abandoned");
    let a = Embedded::open(&path).await.expect("open a");
    let b = Embedded::open(&path).await.expect("open b");
    let e = email();
    let raw = e.to_bytes();
    let batch = |n: usize| -> Vec<Queued> {
        (0..n)
            .map(|_| Queued {
                id: uuid::Uuid::now_v7(),
                created_at_ms: now_ms(),
                due_at_ms: now_ms(),
                mail_from: "shop@example.com".into(),
                rcpt_to: vec!["ann@example.com".into()],
                raw: raw.clone(),
                subject: Some("Order".into()),
                message_id: e.message_id().map(str::to_owned),
                idempotency_key: None,
                priority: 0,
                max_fails: None,
                max_time_ms: None,
                tags: None,
            })
            .collect()
    };
    for i in 0..40u64 {
        // Given up after 0 to 780 µs: before the query is sent, midway
        // through its statements, or after.
        let rows = batch(20);
        let _ = tokio::time::timeout(Duration::from_micros(20 * i), a.insert(&rows)).await;
        tokio::time::timeout(Duration::from_secs(3), b.insert(&batch(1)))
            .await
            .unwrap_or_else(|_| panic!("round {i}: the other handle was locked out"))
            .expect("insert from the other handle");
    }
    a.insert(&batch(2))
        .await
        .expect("the first handle still works");
}

/// Bytes left behind by an email row deleted by hand (foreign keys off, as
/// in the `sqlite3` shell) are never sent as the next email's: SQLite can
/// give the next row the deleted row's `seq`, and its own bytes win.
#[tokio::test]
async fn bytes_left_by_a_deleted_row_are_not_reused() {
    let path = db_path("orphan-bytes");
    let mailer = Mailer::embedded(&path).await.expect("open");
    let first = mailer.enqueue(&email()).await.expect("first");
    {
        let url = format!("sqlite://{}", path.display());
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA foreign_keys = OFF; DELETE FROM emails WHERE id = '{first}'"
        )))
        .execute(&mut conn)
        .await
        .expect("delete by hand");
    }
    let e = email();
    let second = mailer.enqueue(&e).await.expect("second");
    let r = row(&mailer, second).await;
    assert_eq!(r.get::<Vec<u8>, _>("raw"), e.to_bytes());
}

/// An insert waits while another process holds the write turn, and goes
/// on as soon as it is let go (not after SQLite's busy timeout); the same
/// handle's later inserts are not held up by how the turn was waited for.
#[tokio::test]
async fn an_insert_waits_for_a_turn_held_elsewhere_and_goes_on_when_it_ends() {
    use std::time::{Duration, Instant};
    let path = db_path("turn");
    let mailer = Mailer::embedded(&path).await.expect("open");
    mailer.enqueue(&email()).await.expect("first");
    let lock = turn_elsewhere(&path);
    for round in 0..3 {
        lock.lock().expect("take the turn");
        let m = mailer.clone();
        let waiting = tokio::spawn(async move { m.enqueue(&email()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "round {round}: the insert wrote during another's turn"
        );
        let let_go = Instant::now();
        lock.unlock().expect("let go");
        let id = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the insert still waits after the turn ended")
            .expect("task")
            .expect("enqueue");
        assert!(
            let_go.elapsed() < Duration::from_secs(2),
            "round {round}: took {:?} after the turn ended",
            let_go.elapsed()
        );
        row(&mailer, id).await;
        let quick = Instant::now();
        mailer.enqueue(&email()).await.expect("uncontended");
        assert!(quick.elapsed() < Duration::from_secs(2));
    }
}

/// One email the database refuses fails its own call only, even when it
/// was committed in one transaction with others' emails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_refused_in_a_shared_commit_fails_alone() {
    use std::time::Duration;
    let path = db_path("refused");
    let mailer = Mailer::embedded(&path).await.expect("open");
    let db = mailer.queue().as_embedded().expect("embedded");
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON emails WHEN NEW.subject = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poison refused'); END",
    )
    .execute(db.pool())
    .await
    .expect("trigger");
    let with_subject = |subject: &str| {
        Email::builder()
            .from("shop@example.com")
            .to("ann@example.com")
            .subject(subject)
            .text("Thanks")
            .build()
            .expect("build")
    };
    // Holding the write turn makes the writer wait with the first email,
    // while the others pile up for its next commit, together.
    let lock = turn_elsewhere(&path);
    lock.lock().expect("take the turn");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mailer = mailer.clone();
        let e = with_subject(if i == 7 { "poison" } else { "fine" });
        tasks.spawn(async move { (i, mailer.enqueue(&e).await) });
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    lock.unlock().expect("let go");
    let mut stored = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, result) = done.expect("task");
        if i == 7 {
            let e = result.expect_err("the refused email");
            assert!(e.to_string().contains("poison refused"), "{e}");
        } else {
            row(&mailer, result.expect("the others")).await;
            stored += 1;
        }
    }
    assert_eq!(stored, 15);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM email_raw")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 15, "bytes stored for exactly the stored emails");
}

/// A write turn held elsewhere for longer than the turn wait (a stuck
/// process) delays an insert by that wait, not for good; SQLite's own lock
/// then decides, and the lock taken late is let go at once.
#[tokio::test]
async fn a_turn_held_for_good_elsewhere_delays_an_insert_by_the_turn_wait() {
    use std::time::{Duration, Instant};
    let path = db_path("stuck-turn");
    let mailer = Mailer::embedded(&path).await.expect("open");
    mailer.enqueue(&email()).await.expect("first");
    let lock = turn_elsewhere(&path);
    lock.lock().expect("take the turn");
    let started = Instant::now();
    let id = tokio::time::timeout(Duration::from_secs(20), mailer.enqueue(&email()))
        .await
        .expect("an insert waited for good on a stuck turn")
        .expect("enqueue");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    row(&mailer, id).await;
    lock.unlock().expect("let go");
    // The writer's late lock is not kept: another holder gets it at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = turn_elsewhere(&path);
    other.try_lock().expect("the turn is free again");
    other.unlock().expect("let go");
    let quick = Instant::now();
    mailer.enqueue(&email()).await.expect("after");
    assert!(
        quick.elapsed() < Duration::from_secs(2),
        "{:?}",
        quick.elapsed()
    );
}

/// A newer build migrating the file under a running application: the
/// application's inserts fail with a message that says so, not with
/// SQLite's "no such column", and store nothing.
#[tokio::test]
async fn a_file_migrated_by_a_newer_build_is_named_in_the_error() {
    let path = db_path("newer-schema");
    let mailer = Mailer::embedded(&path).await.expect("open");
    mailer.enqueue(&email()).await.expect("before");
    let db = mailer.queue().as_embedded().expect("embedded");
    // What a future migration might do: a column renamed, the version up.
    sqlx::raw_sql("ALTER TABLE emails RENAME COLUMN subject TO title; PRAGMA user_version = 99")
        .execute(db.pool())
        .await
        .expect("migrate as a newer build");
    let e = mailer.enqueue(&email()).await.expect_err("after");
    let text = e.to_string();
    assert!(
        text.contains("schema version 99") && text.contains("restart"),
        "{text}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 1);
}
