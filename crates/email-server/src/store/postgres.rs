//! The PostgreSQL store: the same tables and the same behaviour as the
//! SQLite store, for any number of `email-server` processes sharing one
//! database.
//!
//! | What | How |
//! |---|---|
//! | Schema | `migrations/postgres/*.sql`, applied at open in one transaction under an advisory lock; the version is kept in `email_schema_version` |
//! | Claims | `FOR UPDATE SKIP LOCKED`: concurrent servers take disjoint rows, and a lease token fences each completion |
//! | Wake-ups | a notification on `email_wake` (payload: the schema) commits with every insert, retry, reschedule and cancel; [`PostgresStore::listen`] turns those for its schema (or with no payload) into [`Notify`] wake-ups |
//! | Isolation | [`PostgresStore::open_in_schema`] keeps everything in one schema (tests, or several systems in one database) |
//! | Outages | the pool pings idle connections before use and replaces dead ones; a failed statement is an error the dispatcher retries |
//!
//! ```no_run
//! # async fn demo() -> Result<(), email_server::store::StoreError> {
//! use std::sync::Arc;
//! use email_server::store::{PostgresStore, Store};
//!
//! let pg = PostgresStore::open("postgres://mailer@db.internal/email").await?;
//! let wake = Arc::new(tokio::sync::Notify::new());
//! let _listener = pg.listen(wake.clone()); // stops when dropped
//! let store = Store::Postgres(pg);
//! # let _ = store; Ok(()) }
//! ```
//!
//! Every value is a bound parameter. The SQL differs from SQLite's only
//! where the dialects do (`$1`, `BOOLEAN`, `FOR UPDATE SKIP LOCKED`); the
//! JSON columns are TEXT so both backends return the very text written.
//! Needs PostgreSQL 12 or later (`MATERIALIZED`, `hashtextextended`).
//!
//! Layout: this file opens the store and owns intake and the dispatcher's
//! statements; `ops.rs` the operator's (stats, list, show, retry, cancel,
//! reschedule); `rows.rs` decodes rows; `migrate.rs` the schema;
//! `listen.rs` the wake-ups.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use email::queue::{EmailId, Queued};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Notify;

use super::{Claimed, Completion, Next, StoreError};

mod listen;
mod migrate;
mod ops;
mod rows;

pub use listen::WakeListener;

/// The channel every wake-up goes through.
pub const WAKE_CHANNEL: &str = "email_wake";

/// The PostgreSQL store. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Kept for the LISTEN connection, which lives outside the pool
    /// (boxed in an `Arc`: it is large, and `Store` moves by value).
    options: Arc<PgConnectOptions>,
    /// The schema the tables live in: the payload of our notifications,
    /// so stores in other schemas of the same database can ignore them.
    schema: Arc<str>,
}

/// Not derived: `PgConnectOptions` would print the password.
impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .field("username", &self.options.get_username())
            .field("schema", &self.schema)
            .field("pool", &self.pool)
            .finish()
    }
}

/// A claim: the rows `select` locks (it ends in `FOR UPDATE SKIP LOCKED`)
/// become `sending` under a new lease for `$1` until `$2`, a possible
/// duplicate if they were `sending` already, and come back with what
/// delivery needs.
macro_rules! pg_claim {
    ($select:literal) => {
        concat!(
            "WITH due AS MATERIALIZED (",
            $select,
            ") UPDATE emails e SET state = 'sending', lease_owner = $1, lease_until = $2, \
                    lease_token = e.lease_token + 1, \
                    possible_duplicate = e.possible_duplicate OR e.state = 'sending' \
               FROM due WHERE e.id = due.id \
             RETURNING e.id, e.lease_token, e.mail_from, e.pending, e.raw, e.attempts, \
                       e.due_at, e.max_fails, e.max_time_ms, e.priority, e.next_at"
        )
    };
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to date, in the schema
    /// the connection's `search_path` selects (usually `public`).
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        Self::connect(url, None).await
    }

    /// Like [`open`](Self::open), but everything lives in `schema`
    /// (created if missing): each pooled connection sets its `search_path`
    /// to it. The name must be a plain lowercase identifier
    /// (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub async fn open_in_schema(url: &str, schema: &str) -> Result<PostgresStore, StoreError> {
        Self::connect(url, Some(schema)).await
    }

    async fn connect(url: &str, schema: Option<&str>) -> Result<PostgresStore, StoreError> {
        let schema = schema.map(migrate::checked_schema).transpose()?;
        let mut options = PgConnectOptions::from_str(url)?;
        if options.get_application_name().is_none() {
            // Operators see who holds a connection (pg_stat_activity).
            let name = schema.as_deref().map_or_else(
                || "email-server".to_owned(),
                |s| format!("email-server/{s}"),
            );
            options = options.application_name(&name);
        }
        let search_path = schema.clone();
        let pool = PgPoolOptions::new()
            .max_connections(10)
            // Fail a claim within seconds when the database is gone; the
            // dispatcher retries, it does not need to block for long.
            .acquire_timeout(Duration::from_secs(10))
            // A backend killed by pg_terminate_backend or a restart is
            // found here and replaced, instead of failing a statement.
            .test_before_acquire(true)
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(path) = search_path {
                        sqlx::query("SELECT set_config('search_path', $1, false)")
                            .bind(path)
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        migrate::run(&pool, schema.as_deref()).await?;
        let schema = match schema {
            Some(s) => s,
            None => {
                sqlx::query_scalar("SELECT COALESCE(current_schema(), '')")
                    .fetch_one(&pool)
                    .await?
            }
        };
        Ok(PostgresStore {
            pool,
            options: Arc::new(options),
            schema: schema.into(),
        })
    }

    /// The connection pool (every connection already in the store's
    /// schema), for tools and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a task that LISTENs on [`WAKE_CHANNEL`] and calls
    /// `notify.notify_one()` for each notification about this store's
    /// schema (or with an empty payload, as a plain `NOTIFY email_wake`
    /// from another producer has), and once more after each (re)connection,
    /// as notifications sent meanwhile are lost. It reconnects on errors
    /// and stops when the returned guard is dropped.
    pub fn listen(&self, notify: Arc<Notify>) -> WakeListener {
        listen::spawn(self.options.clone(), self.schema.clone(), notify)
    }

    /// Queues a wake-up in `tx`: PostgreSQL delivers it if and when the
    /// transaction commits, never for a rolled-back change.
    async fn wake(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(&*self.schema)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Intake: see [`Store::insert`](super::Store::insert).
    pub(crate) async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let ids = insert_batch(&mut tx, batch).await?;
        self.wake(&mut tx).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// The schema's version and this build's, if a newer build has
    /// migrated it past what this build knows.
    pub(crate) async fn newer_schema(&self) -> Option<(i64, usize)> {
        migrate::newer(&self.pool).await
    }

    pub(crate) async fn claim(
        &self,
        owner: &str,
        limit: usize,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        // SKIP LOCKED lets concurrent servers take disjoint rows without
        // waiting on each other; a row another claim changed meanwhile is
        // re-checked against the WHERE clause before it is locked, so a
        // fresh lease is never taken twice. MATERIALIZED evaluates the
        // locking subquery once, so the LIMIT holds. As on SQLite, a claim
        // takes expired leases (their owner died mid-attempt, perhaps after
        // the final "." was accepted: a possible duplicate), then walks the
        // priorities from the highest by index seeks and takes each one's
        // due emails in due order through `emails_claim (priority,
        // next_at)`, instead of sorting every due email on every claim.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let until = now + lease_ms;
        let mut tx = self.pool.begin().await?;
        let mut rows = sqlx::query(pg_claim!(
            "SELECT id FROM emails WHERE state = 'sending' AND lease_until <= $3 \
              ORDER BY priority DESC, next_at LIMIT $4 FOR UPDATE SKIP LOCKED"
        ))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut below = i64::MAX;
        while (rows.len() as i64) < limit {
            let priority: Option<i64> = sqlx::query_scalar(
                "SELECT max(priority) FROM emails \
                  WHERE state IN ('scheduled', 'queued', 'deferred') AND priority < $1",
            )
            .bind(below)
            .fetch_one(&mut *tx)
            .await?;
            let Some(priority) = priority else { break };
            below = priority;
            rows.extend(
                sqlx::query(pg_claim!(
                    "SELECT id FROM emails \
                      WHERE state IN ('scheduled', 'queued', 'deferred') \
                        AND priority = $5 AND next_at <= $3 \
                      ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED"
                ))
                .bind(owner)
                .bind(until)
                .bind(now)
                .bind(limit - rows.len() as i64)
                .bind(priority)
                .fetch_all(&mut *tx)
                .await?,
            );
        }
        tx.commit().await?;
        // Highest priority first, then the earliest due, as one sort would.
        rows.sort_by_key(|r| {
            let priority: i64 = r.try_get("priority").unwrap_or(0);
            let next_at: i64 = r.try_get("next_at").unwrap_or(0);
            (std::cmp::Reverse(priority), next_at)
        });
        let mut good = Vec::with_capacity(rows.len());
        for row in &rows {
            match rows::claimed(row) {
                Ok(c) => good.push(c),
                // One corrupt row must not stop delivery of the others: it
                // ends in `failed` with the reason, for an operator to see.
                Err(e) => {
                    let id: String = row.try_get("id")?;
                    tracing::error!(%id, error = %e, "corrupt stored email marked failed");
                    sqlx::query(
                        "UPDATE emails SET state = 'failed', finished_at = $2, last_reason = $3, \
                                lease_owner = NULL, lease_until = NULL WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(now)
                    .bind(format!("stored record is corrupt: {e}"))
                    .execute(&self.pool)
                    .await?;
                }
            }
        }
        Ok(good)
    }

    pub(crate) async fn record_many(&self, items: &[Completion]) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut updated = Vec::with_capacity(items.len());
        for item in items {
            updated.push(record_in(&mut tx, item).await?);
        }
        tx.commit().await?;
        Ok(updated)
    }

    pub(crate) async fn renew_leases(&self, owner: &str, until: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE emails SET lease_until = $1 WHERE state = 'sending' AND lease_owner = $2",
        )
        .bind(until)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn release_owner(&self, owner: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE emails SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
                    lease_owner = NULL, lease_until = NULL \
             WHERE state = 'sending' AND lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn expire_overdue(
        &self,
        now: i64,
        default_max_time_ms: i64,
    ) -> Result<u64, StoreError> {
        // NUMERIC: a huge max-time must mean "never", not a BIGINT overflow
        // error (SQLite silently widens to REAL; this is the exact version).
        let done = sqlx::query(
            "UPDATE emails SET state = 'expired', finished_at = $1, lease_owner = NULL, lease_until = NULL, \
                    last_reason = 'max-time passed' || COALESCE(': last attempt: ' || last_reason, ' before any attempt') \
             WHERE ((state IN ('scheduled', 'queued', 'deferred')) OR (state = 'sending' AND lease_until <= $1)) \
               AND due_at::numeric + COALESCE(max_time_ms, $2) <= $1",
        )
        .bind(now)
        .bind(default_max_time_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn next_wake(&self) -> Result<Option<i64>, StoreError> {
        let t: Option<i64> = sqlx::query_scalar(
            "SELECT min(t) FROM ( \
                 SELECT min(next_at) AS t FROM emails WHERE state IN ('scheduled', 'queued', 'deferred') \
                 UNION ALL \
                 SELECT min(lease_until) FROM emails WHERE state = 'sending') w",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(t)
    }
}

/// One row of intake; returns the id the email is stored under.
/// One completion inside the group-commit transaction.
async fn record_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    item: &Completion,
) -> Result<bool, StoreError> {
    let (c, a, next) = (&item.claimed, item.attempt.as_ref(), &item.next);
    if let Some(a) = a {
        // Kept even when the lease was taken over: it happened.
        rows::insert_attempt(tx, &c.id, a).await?;
    }
    let now = a.map_or_else(crate::dispatch::now_ms, |a| a.finished_at);
    let (next_at, finished_at) = match next {
        Next::Retry { at } => (Some(*at), None),
        _ => (None, Some(now)),
    };
    let pending = serde_json::to_string(&item.pending).unwrap_or_else(|_| "[]".into());
    let done = sqlx::query(
        "UPDATE emails SET state = $1, attempts = attempts + $9, next_at = COALESCE($2, next_at), \
                finished_at = $3, pending = $4, last_reason = $5, \
                possible_duplicate = possible_duplicate OR $6, lease_owner = NULL, lease_until = NULL \
         WHERE id = $7 AND lease_token = $8 AND state = 'sending'",
    )
    .bind(next.state())
    .bind(next_at)
    .bind(finished_at)
    .bind(pending)
    .bind(item.reason.as_str())
    .bind(a.is_some_and(|a| a.possible_duplicate))
    .bind(&c.id)
    .bind(c.token)
    .bind(i64::from(a.is_some()))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts a batch in one statement (one round trip, not one per email):
/// the columns go as arrays and `UNNEST` turns them back into rows, in
/// order, so of two emails with one idempotency key the first is kept.
/// Returns each email's id, as [`insert_one`] would.
async fn insert_batch(
    tx: &mut sqlx::PgConnection,
    batch: &[Queued],
) -> Result<Vec<EmailId>, StoreError> {
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut due = Vec::with_capacity(n);
    let mut max_fails = Vec::with_capacity(n);
    let mut max_time = Vec::with_capacity(n);
    let mut from = Vec::with_capacity(n);
    let mut recipients = Vec::with_capacity(n);
    let mut subjects = Vec::with_capacity(n);
    let mut message_ids = Vec::with_capacity(n);
    let mut raws = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    for q in batch {
        ids.push(q.id.to_string());
        keys.push(q.idempotency_key.as_deref());
        states.push(if q.due_at_ms > q.created_at_ms {
            "scheduled"
        } else {
            "queued"
        });
        priorities.push(i64::from(q.priority));
        created.push(q.created_at_ms);
        due.push(q.due_at_ms);
        max_fails.push(q.max_fails.map(i64::from));
        max_time.push(q.max_time_ms);
        from.push(q.mail_from.as_str());
        recipients.push(serde_json::to_string(&q.rcpt_to).unwrap_or_else(|_| "[]".into()));
        subjects.push(q.subject.as_deref());
        message_ids.push(q.message_id.as_deref());
        raws.push(q.raw.as_slice());
        tags.push(q.tags.as_deref());
    }
    // DO NOTHING on any unique column, as in `insert_one`.
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO emails (id, idempotency_key, state, priority, created_at, due_at, next_at, \
         max_fails, max_time_ms, mail_from, recipients, pending, subject, message_id, raw, tags) \
         SELECT id, k, st, pr, cr, du, du, mf, mt, fr, rc, rc, su, mi, ra, ta \
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], \
                       $7::int8[], $8::int8[], $9::text[], $10::text[], $11::text[], $12::text[], \
                       $13::bytea[], $14::text[]) \
                AS t(id, k, st, pr, cr, du, mf, mt, fr, rc, su, mi, ra, ta) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&states)
    .bind(&priorities)
    .bind(&created)
    .bind(&due)
    .bind(&max_fails)
    .bind(&max_time)
    .bind(&from)
    .bind(&recipients)
    .bind(&subjects)
    .bind(&message_ids)
    .bind(&raws)
    .bind(&tags)
    .fetch_all(&mut *tx)
    .await?;
    // Only an email not inserted whose idempotency key is taken gets
    // another id: the one stored with that key (an email redelivered by
    // its queue keeps its own id).
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    let refused: Vec<&str> = batch
        .iter()
        .zip(&ids)
        .filter(|(_, id)| !inserted.contains(id.as_str()))
        .filter_map(|(q, _)| q.idempotency_key.as_deref())
        .collect();
    let mut holders = std::collections::HashMap::new();
    if !refused.is_empty() {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT idempotency_key, id FROM emails WHERE idempotency_key = ANY($1::text[])",
        )
        .bind(&refused)
        .fetch_all(&mut *tx)
        .await?;
        holders.extend(rows);
    }
    batch
        .iter()
        .zip(&ids)
        .map(|(q, id)| {
            let held = q
                .idempotency_key
                .as_ref()
                .filter(|_| !inserted.contains(id.as_str()))
                .and_then(|k| holders.get(k));
            match held {
                None => Ok(q.id),
                Some(id) => id.parse().map_err(|e: uuid::Error| StoreError::Corrupt {
                    id: id.clone(),
                    field: "id",
                    reason: e.to_string(),
                }),
            }
        })
        .collect()
}

async fn insert_one(tx: &mut sqlx::PgConnection, q: &Queued) -> Result<EmailId, StoreError> {
    let recipients = serde_json::to_string(&q.rcpt_to).unwrap_or_else(|_| "[]".into());
    let state = if q.due_at_ms > q.created_at_ms {
        "scheduled"
    } else {
        "queued"
    };
    // DO NOTHING on any unique column: the id (a queue redelivered it) or
    // the idempotency key (the application enqueued it again). A concurrent
    // insert of the same key waits for the other transaction and then
    // does nothing, so the lookup below sees the committed row.
    let done = sqlx::query(
        "INSERT INTO emails (id, idempotency_key, state, priority, created_at, due_at, next_at, \
         max_fails, max_time_ms, mail_from, recipients, pending, subject, message_id, raw, tags) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14) \
         ON CONFLICT DO NOTHING",
    )
    .bind(q.id.to_string())
    .bind(q.idempotency_key.as_deref())
    .bind(state)
    .bind(i64::from(q.priority))
    .bind(q.created_at_ms)
    .bind(q.due_at_ms)
    .bind(q.max_fails.map(i64::from))
    .bind(q.max_time_ms)
    .bind(q.mail_from.as_str())
    .bind(recipients)
    .bind(q.subject.as_deref())
    .bind(q.message_id.as_deref())
    .bind(q.raw.as_slice())
    .bind(q.tags.as_deref())
    .execute(&mut *tx)
    .await?;
    let Some(key) = q.idempotency_key.as_deref() else {
        return Ok(q.id);
    };
    if done.rows_affected() == 1 {
        return Ok(q.id);
    }
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM emails WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    // None: the id was stored before without this key; it is still that email.
    let Some(id) = id else { return Ok(q.id) };
    id.parse().map_err(|e: uuid::Error| StoreError::Corrupt {
        id: id.clone(),
        field: "id",
        reason: e.to_string(),
    })
}

/// Transactional enqueue (the outbox pattern): stores `queued` inside the
/// application's own transaction on the server's database, so the email
/// exists if and only if that transaction commits. The dispatchers are
/// woken by a NOTIFY that PostgreSQL delivers only on commit.
///
/// The schema must exist: open a [`PostgresStore`] once (any
/// `email-server run` does), and use a connection whose `search_path`
/// reaches the `emails` table.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use email::{Email, SendOptions, queue::Queued};
///
/// let mut tx = pool.begin().await?;
/// // ... the application's own writes, e.g. INSERT INTO orders ...
/// let welcome = Email::builder().from("shop@example.com").to("ann@example.com")
///     .subject("Order received").text("Thanks!").build()?;
/// let queued = Queued::from_email(&welcome, None, &SendOptions::default())?;
/// let id = email_server::store::postgres::enqueue_in(&mut tx, &queued).await?;
/// tx.commit().await?; // the email exists only now
/// # Ok(()) }
/// ```
pub async fn enqueue_in(
    conn: &mut sqlx::PgConnection,
    queued: &Queued,
) -> Result<EmailId, StoreError> {
    let id = insert_one(conn, queued).await?;
    // An empty payload wakes every listening server of this database.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let options =
            PgConnectOptions::from_str("postgres://app:s3cret@db.test:5433/mail").expect("url");
        let store = PostgresStore {
            // Lazy: nothing connects in this test.
            pool: PgPoolOptions::new().connect_lazy_with(options.clone()),
            options: Arc::new(options),
            schema: "mail".into(),
        };
        let shown = format!("{store:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("db.test") && shown.contains("app"),
            "{shown}"
        );
    }
}
