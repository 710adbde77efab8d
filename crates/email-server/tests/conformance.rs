//! One conformance suite for every store backend: each case is written
//! once, as `async fn case_x(store: Store)` in `conformance/cases*.rs`, and
//! run against SQLite (a temporary file) and PostgreSQL (a fresh schema per
//! test, dropped afterwards), so the tests run in parallel and the two
//! backends cannot drift apart. `conformance/postgres_only.rs` covers what
//! only PostgreSQL has: LISTEN/NOTIFY, concurrent migrations, and losing
//! connections.
//!
//! PostgreSQL comes from `EMAIL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unreachable the
//! PostgreSQL half prints a skip notice and passes, unless
//! `EMAIL_TEST_REQUIRE_SERVICES=1` (as in CI), where it fails.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use email::queue::Queued;
use email_server::store::{PostgresStore, SqliteStore, Store};
use sqlx::Connection;

#[path = "conformance/cases.rs"]
mod cases;
#[path = "conformance/cases_ops.rs"]
mod cases_ops;
#[path = "conformance/postgres_only.rs"]
mod postgres_only;

/// Runs each named case against both backends: `sqlite::case_x` and
/// `postgres::case_x`.
macro_rules! conformance {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let b = crate::Backend::sqlite(stringify!($case)).await;
                    crate::run_case(b, crate::$module::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(b) = crate::Backend::postgres(stringify!($case)).await else {
                        return;
                    };
                    crate::run_case(b, crate::$module::$case).await;
                }
            )*
        }
    };
}

conformance!(
    cases::case_insert_is_idempotent_by_id_and_key,
    cases::case_claim_order_is_priority_then_due_time,
    cases::case_scheduled_rows_are_not_claimed_early,
    cases::case_expired_lease_is_taken_over_as_possible_duplicate,
    cases::case_record_is_fenced_by_the_lease_token,
    cases::case_record_without_attempt_and_retry_plan,
    cases::case_release_owner_gives_claims_back,
    cases::case_renew_leases_keeps_claims_from_takeover,
    cases::case_expire_overdue_in_every_waiting_state,
    cases::case_next_wake_is_the_earliest_due_or_lease_end,
    cases::case_concurrent_claims_never_share_an_email,
    cases_ops::case_stats_shape_and_percentiles,
    cases_ops::case_list_filters_and_order,
    cases_ops::case_show_has_attempts_and_recipient_results,
    cases_ops::case_retry_cancel_reschedule_follow_the_state_rules,
    cases_ops::case_corrupt_json_row_fails_alone,
    cases_ops::case_dispatcher_delivers_end_to_end,
);

/// A fixed clock for cases that do not run the dispatcher: 2023-11-14.
pub(crate) const T0: i64 = 1_700_000_000_000;

/// One test's isolated store, and what to remove afterwards.
pub(crate) struct Backend {
    pub(crate) store: Store,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Schema(String),
}

impl Backend {
    pub(crate) async fn sqlite(test: &str) -> Backend {
        let dir = std::env::temp_dir().join(format!(
            "email-conformance-{}-{test}-{}",
            std::process::id(),
            rand8()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = SqliteStore::open(dir.join("email.db"))
            .await
            .expect("open sqlite");
        Backend {
            store: Store::Sqlite(store),
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A fresh schema, or `None` (with a notice) when PostgreSQL is not
    /// there and not required.
    pub(crate) async fn postgres(test: &str) -> Option<Backend> {
        let schema = Self::postgres_schema(test).await?;
        let store = PostgresStore::open_in_schema(&pg_url(), &schema)
            .await
            .expect("open postgres");
        Some(Backend {
            store: Store::Postgres(store),
            cleanup: Cleanup::Schema(schema),
        })
    }

    /// A unique schema name for `test` (not yet created), once PostgreSQL
    /// is known to answer.
    pub(crate) async fn postgres_schema(test: &str) -> Option<String> {
        if !postgres_available().await {
            return None;
        }
        // Only [a-z0-9_]: safe to quote into DROP SCHEMA below.
        let test: String = test
            .trim_start_matches("case_")
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .take(36)
            .collect();
        Some(format!("conf_{test}_{}_{}", std::process::id(), rand8()))
    }

    pub(crate) async fn cleanup(self) {
        match self.cleanup {
            Cleanup::Dir(dir) => {
                std::fs::remove_dir_all(dir).ok();
            }
            Cleanup::Schema(schema) => {
                if let Store::Postgres(pg) = &self.store {
                    pg.pool().close().await;
                }
                drop_schema(&schema).await;
            }
        }
    }
}

/// Drops a test schema and everything in it.
pub(crate) async fn drop_schema(schema: &str) {
    let mut conn = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("connect to drop the schema");
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("drop schema");
    conn.close().await.ok();
}

/// Runs a case in its own task, so that the backend is cleaned up even
/// when the case panics; then passes the panic on.
pub(crate) async fn run_case<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let result = tokio::spawn(case(backend.store.clone())).await;
    backend.cleanup().await;
    rethrow(result);
}

/// Passes on the panic of a case that ran in its own task.
pub(crate) fn rethrow(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("case did not finish: {e}"),
        }
    }
}

pub(crate) fn pg_url() -> String {
    std::env::var("EMAIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn postgres_available() -> bool {
    let url = pg_url();
    let tried = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url));
    let error = match tried.await {
        Ok(Ok(conn)) => {
            conn.close().await.ok();
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "connection timed out".to_owned(),
    };
    if std::env::var("EMAIL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("PostgreSQL at {url} is required (EMAIL_TEST_REQUIRE_SERVICES=1): {error}");
    }
    eprintln!("skipping the PostgreSQL half: {url} is unreachable ({error})");
    false
}

fn rand8() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A second, independent handle on the same database (its own pool), as
/// another server process would have.
pub(crate) async fn reopen(store: &Store) -> Store {
    match store {
        Store::Sqlite(s) => Store::Sqlite(
            SqliteStore::open(s.embedded().path())
                .await
                .expect("reopen sqlite"),
        ),
        Store::Postgres(pg) => {
            let schema: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(pg.pool())
                .await
                .expect("current schema");
            Store::Postgres(
                PostgresStore::open_in_schema(&pg_url(), &schema)
                    .await
                    .expect("reopen postgres"),
            )
        }
    }
}

/// Overwrites an email's `pending` column behind the store's back, the
/// way a bad manual edit or a bug elsewhere would.
pub(crate) async fn corrupt_pending(store: &Store, id: &str, text: &str) {
    match store {
        Store::Sqlite(s) => {
            sqlx::query("UPDATE emails SET pending = ?1 WHERE id = ?2")
                .bind(text)
                .bind(id)
                .execute(s.embedded().pool())
                .await
                .expect("corrupt sqlite row");
        }
        Store::Postgres(pg) => {
            sqlx::query("UPDATE emails SET pending = $1 WHERE id = $2")
                .bind(text)
                .bind(id)
                .execute(pg.pool())
                .await
                .expect("corrupt postgres row");
        }
    }
}

/// An email's state and reason read straight from the table (for rows the
/// store itself refuses to decode).
pub(crate) async fn raw_state(store: &Store, id: &str) -> (String, Option<String>) {
    match store {
        Store::Sqlite(s) => sqlx::query_as("SELECT state, last_reason FROM emails WHERE id = ?1")
            .bind(id)
            .fetch_one(s.embedded().pool())
            .await
            .expect("sqlite row"),
        Store::Postgres(pg) => {
            sqlx::query_as("SELECT state, last_reason FROM emails WHERE id = $1")
                .bind(id)
                .fetch_one(pg.pool())
                .await
                .expect("postgres row")
        }
    }
}

/// An email for `to`, due at `due` (created at [`T0`], so a later `due`
/// makes it `scheduled`).
pub(crate) fn queued(to: &[&str], due: i64) -> Queued {
    let email = email::Email::builder()
        .from("shop@example.com")
        .to(to.join(", "))
        .subject("Order")
        .text("Thanks")
        .build()
        .expect("build");
    Queued {
        id: uuid::Uuid::now_v7(),
        created_at_ms: T0.min(due),
        due_at_ms: due,
        mail_from: "shop@example.com".into(),
        rcpt_to: to.iter().map(|s| (*s).to_owned()).collect(),
        raw: email.to_bytes(),
        subject: email.subject().map(str::to_owned),
        message_id: email.message_id().map(str::to_owned),
        idempotency_key: None,
        priority: 0,
        max_fails: None,
        max_time_ms: None,
        tags: None,
    }
}

/// Inserts one email and returns its id as text.
pub(crate) async fn insert(store: &Store, q: Queued) -> String {
    let ids = store.insert(&[q]).await.expect("insert");
    ids[0].to_string()
}
