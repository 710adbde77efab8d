//! The transactional outbox: enqueue an email inside your own PostgreSQL
//! transaction, so that it exists if and only if your transaction commits.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run -p email-server --example outbox
//! ```
//!
//! It uses the schema `outbox_demo` (created if missing). Point an
//! `email-server run` with `database: {engine: postgres, url: ...}` at the
//! same database and the committed email is delivered.

use email::queue::Queued;
use email::{Email, SendOptions};
use email_server::store::PostgresStore;
use email_server::store::postgres::enqueue_in;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // Opening the store creates or migrates the email tables.
    let store = PostgresStore::open_in_schema(&url, "outbox_demo").await?;
    let pool = store.pool().clone();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let email = Email::builder()
        .from("Shop <shop@example.com>")
        .to("ann@example.com")
        .subject("We received your order")
        .text("Thanks! It ships today.")
        .build()?;

    // One transaction: the order and its confirmation email.
    let mut tx = pool.begin().await?;
    let order: i64 = sqlx::query_scalar("INSERT INTO orders (customer) VALUES ($1) RETURNING id")
        .bind("ann@example.com")
        .fetch_one(&mut *tx)
        .await?;
    let options = SendOptions::default().idempotency_key(format!("order-{order}-confirmation"));
    let id = enqueue_in(&mut tx, &Queued::from_email(&email, None, &options)?).await?;
    tx.commit().await?;
    println!("order {order} committed with email {id}");

    // A transaction that fails takes its email with it.
    let mut tx = pool.begin().await?;
    let gone = enqueue_in(
        &mut tx,
        &Queued::from_email(&email, None, &SendOptions::default())?,
    )
    .await?;
    tx.rollback().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM emails WHERE id = $1)")
        .bind(gone.to_string())
        .fetch_one(&pool)
        .await?;
    println!("rolled-back email {gone} exists: {exists}");
    Ok(())
}
