//! What only the PostgreSQL store has: wake-ups over LISTEN/NOTIFY,
//! migrations that several servers may run at once, and a pool that
//! survives its connections being killed. Skipped (with a notice) when
//! PostgreSQL is unreachable, unless `EMAIL_TEST_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use email_server::store::{PostgresStore, Store, StoreError};
use sqlx::Connection;
use tokio::sync::Notify;

use crate::{Backend, T0, drop_schema, insert, pg_url, queued, rethrow, run_case};

/// Waits for one wake-up, or fails saying what should have caused it.
async fn woken(notify: &Notify, by: &str) {
    tokio::time::timeout(Duration::from_secs(10), notify.notified())
        .await
        .unwrap_or_else(|_| panic!("no wake-up within 10 s after {by}"));
}

/// True if a wake-up arrives within `ms`.
async fn woken_within(notify: &Notify, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), notify.notified())
        .await
        .is_ok()
}

fn pg(store: &Store) -> &PostgresStore {
    match store {
        Store::Postgres(pg) => pg,
        Store::Sqlite(_) => panic!("a PostgreSQL case got another backend"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_wakes_on_commits_in_its_own_schema_only() {
    let Some(b) = Backend::postgres("listen").await else {
        return;
    };
    let Some(other) = Backend::postgres("listen_other").await else {
        return;
    };
    // A bare NOTIFY wakes every schema, so this test in another process
    // running against the same database would wake ours during the "not
    // woken" checks: one at a time, under a session advisory lock that
    // PostgreSQL drops with the connection even if this process dies.
    let mut guard = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("lock connection");
    sqlx::query("SELECT pg_advisory_lock(hashtext('email-server conformance: bare NOTIFY'))")
        .execute(&mut guard)
        .await
        .expect("advisory lock");
    let (store, other_store) = (b.store.clone(), other.store.clone());
    let result = tokio::spawn(async move {
        let notify = Arc::new(Notify::new());
        let _listener = pg(&store).listen(notify.clone());
        woken(&notify, "subscribing (the wake-up that covers missed ones)").await;
        let id = insert(&store, queued(&["ann@example.com"], T0)).await;
        woken(&notify, "insert").await;
        store.cancel(&id, T0).await.expect("cancel");
        woken(&notify, "cancel").await;
        store.retry(&id, T0).await.expect("retry");
        woken(&notify, "retry").await;
        store.reschedule(&id, T0 + 5_000).await.expect("reschedule");
        woken(&notify, "reschedule").await;
        // A change that does not apply notifies nobody.
        store.retry("missing", T0).await.expect_err("not found");
        assert!(
            !woken_within(&notify, 300).await,
            "woken by a failed change"
        );
        // Another schema in the same database does not wake this one...
        insert(&other_store, queued(&["bob@example.com"], T0)).await;
        assert!(!woken_within(&notify, 300).await, "woken by another schema");
        // ...but a bare NOTIFY from a producer that knows no schema does.
        sqlx::query("NOTIFY email_wake")
            .execute(pg(&store).pool())
            .await
            .expect("notify");
        woken(&notify, "a bare NOTIFY").await;
    })
    .await;
    b.cleanup().await;
    other.cleanup().await;
    guard.close().await.ok();
    rethrow(result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_starting_at_once_migrate_once() {
    let Some(schema) = Backend::postgres_schema("migrate").await else {
        return;
    };
    let url = pg_url();
    let opens = (0..6).map(|_| {
        let (url, schema) = (url.clone(), schema.clone());
        tokio::spawn(async move { PostgresStore::open_in_schema(&url, &schema).await })
    });
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("join"));
    }
    let schema2 = schema.clone();
    let result = async move {
        let schema = schema2;
        let stores: Vec<PostgresStore> = stores
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every concurrent open succeeds");
        let pool = stores[0].pool();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM email_schema_version ORDER BY version")
                .fetch_all(pool)
                .await
                .expect("versions");
        assert_eq!(versions, [1, 2, 3], "each migration recorded once");
        // A database migrated by a newer build is refused, not damaged.
        sqlx::query("INSERT INTO email_schema_version (version, applied_at) VALUES (99, 0)")
            .execute(pool)
            .await
            .expect("pretend a newer build ran");
        match PostgresStore::open_in_schema(&url, &schema).await {
            Err(StoreError::Open(why)) => assert!(why.contains("newer"), "{why}"),
            other => panic!("expected a schema-version error, got {other:?}"),
        }
        for s in &stores {
            s.pool().close().await;
        }
    };
    let outcome = tokio::spawn(result).await;
    drop_schema(&schema).await;
    rethrow(outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_terminated_connections() {
    let Some(b) = Backend::postgres("terminate").await else {
        return;
    };
    run_case(b, |store| async move {
        let pg = pg(&store);
        let notify = Arc::new(Notify::new());
        let _listener = pg.listen(notify.clone());
        woken(&notify, "subscribing").await;
        // Several connections in the pool, all idle afterwards.
        let warm: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.stats(T0).await })
            })
            .collect();
        for w in warm {
            w.await.expect("join").expect("stats");
        }
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(pg.pool())
            .await
            .expect("schema");
        let mut admin = sqlx::PgConnection::connect(&pg_url()).await.expect("admin");
        // Every backend of this store, the pool's and the listener's, as a
        // database restart or an operator's pg_terminate_backend would.
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = left('email-server/' || $1, 63)",
        )
        .bind(&schema)
        .fetch_one(&mut admin)
        .await
        .expect("terminate");
        admin.close().await.ok();
        assert!(killed >= 2, "killed {killed} backends");
        // The pool replaces dead connections before handing them out.
        for _ in 0..4 {
            store.stats(T0).await.expect("stats after the kill");
        }
        let id = insert(&store, queued(&["ann@example.com"], T0)).await;
        assert_eq!(store.show(&id, T0).await.expect("show").0.state, "queued");
        // The listener comes back: after its reconnect wake-up, a commit
        // wakes the dispatcher again.
        woken(&notify, "the listener's reconnect").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        while woken_within(&notify, 50).await {}
        store.cancel(&id, T0).await.expect("cancel");
        woken(&notify, "a commit after the reconnect").await;
    })
    .await;
}

#[tokio::test]
async fn schema_names_must_be_plain_identifiers() {
    // Checked before connecting: no database needed.
    for bad in [
        "Mixed",
        "a-b",
        "x\"; DROP TABLE emails; --",
        "pg_catalog",
        "",
    ] {
        match PostgresStore::open_in_schema("postgres://127.0.0.1:1/none", bad).await {
            Err(StoreError::Open(why)) => assert!(why.contains("schema name"), "{why}"),
            other => panic!("{bad:?}: expected a schema-name error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn server_refuses_the_embedded_queue_with_postgres() {
    let yaml = "email:\n  server:\n    database:\n      engine: postgres\n      url: postgres://127.0.0.1:1/none\n";
    let config = email::config::Config::from_yaml_str(yaml, "test").expect("config");
    let err = email_server::run(&config, async {})
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("embedded queue") && text.contains("redis"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_store_uses_the_configured_url() {
    let Some(schema) = Backend::postgres_schema("config").await else {
        return;
    };
    // The schema comes from the URL's own options here, as a deployment
    // could set it; open() then migrates whatever search_path selects.
    let mut admin = sqlx::PgConnection::connect(&pg_url()).await.expect("admin");
    let create = format!("CREATE SCHEMA \"{schema}\"");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await
        .expect("create schema");
    admin.close().await.ok();
    let sep = if pg_url().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20search_path%3D{schema}", pg_url());
    let yaml =
        format!("email:\n  server:\n    database:\n      engine: postgres\n      url: {url}\n");
    let outcome = tokio::spawn(async move {
        let config = email::config::Config::from_yaml_str(&yaml, "test").expect("config");
        let store = email_server::server::open_store(&config)
            .await
            .expect("open");
        let Store::Postgres(pg) = &store else {
            panic!("engine postgres opened {store:?}");
        };
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name IN ('emails', 'attempts')",
        )
        .fetch_one(pg.pool())
        .await
        .expect("tables");
        assert_eq!(tables, 2, "migrated into the URL's schema");
        pg.pool().close().await;
    })
    .await;
    drop_schema(&schema).await;
    rethrow(outcome);
}
