//! Transactional enqueue: an email enqueued inside the application's own
//! PostgreSQL transaction exists if and only if that transaction commits.

use std::time::Duration;

use email::queue::Queued;
use email::{Email, SendOptions};
use email_server::store::postgres::enqueue_in;
use email_server::store::{PostgresStore, Store};
use sqlx::Connection;

fn pg_url() -> String {
    std::env::var("EMAIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn available() -> bool {
    match tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect(&pg_url()),
    )
    .await
    {
        Ok(Ok(c)) => {
            c.close().await.ok();
            true
        }
        other => {
            assert!(
                std::env::var("EMAIL_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "PostgreSQL is required: {other:?}"
            );
            eprintln!("SKIPPED: PostgreSQL unreachable");
            false
        }
    }
}

fn welcome(to: &str) -> Queued {
    let email = Email::builder()
        .from("shop@example.com")
        .to(to)
        .subject("Order received")
        .text("Thanks!")
        .build()
        .expect("build");
    Queued::from_email(&email, None, &SendOptions::default()).expect("queued")
}

#[tokio::test]
async fn the_email_exists_iff_the_transaction_commits() {
    if !available().await {
        return;
    }
    let schema = format!(
        "outbox_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let pg = PostgresStore::open_in_schema(&pg_url(), &schema)
        .await
        .expect("open");
    let pool = pg.pool().clone();
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("orders");

    // Committed: the order and its email, together.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("order");
    let kept = enqueue_in(&mut tx, &welcome("ann@example.com"))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    // Rolled back: neither exists.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO orders VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect("order");
    let dropped = enqueue_in(&mut tx, &welcome("bob@example.com"))
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");

    let store = Store::Postgres(pg);
    let now = email_server::dispatch::now_ms();
    assert_eq!(
        store
            .show(&kept.to_string(), now)
            .await
            .expect("kept")
            .0
            .state,
        "queued"
    );
    assert!(
        store.show(&dropped.to_string(), now).await.is_err(),
        "rolled back email must not exist"
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(orders, 1);

    // The same idempotency key through the outbox gives one email.
    let opts = SendOptions::default().idempotency_key("order-1-welcome");
    let email = Email::builder()
        .from("shop@example.com")
        .to("ann@example.com")
        .text("x")
        .build()
        .expect("build");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut tx = pool.begin().await.expect("begin");
        let q = Queued::from_email(&email, None, &opts).expect("queued");
        ids.push(enqueue_in(&mut tx, &q).await.expect("enqueue"));
        tx.commit().await.expect("commit");
    }
    assert_eq!(ids[0], ids[1]);

    drop(store);
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await
    .expect("drop");
}
