//! The SQLite store: the embedded queue's own file (schema in
//! `crates/email/migrations/sqlite`), opened through [`email::queue::Embedded`]
//! so both sides always agree on it.

use std::path::Path;

use email::queue::Embedded;
use email::queue::embedded::Writing;
use email::queue::embedded::rusqlite::types::ValueRef;
use email::queue::embedded::rusqlite::{self, TransactionBehavior, params};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::{
    Attempt, Claimed, Completion, EmailRow, Latency, Next, RecipientOutcome, STATES, Stats,
    StoreError, json_list, rfc3339, shown_state,
};

/// Unfinished states that may be claimed once due.
const WAITING: &str = "('scheduled', 'queued', 'deferred')";

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: Embedded,
}

/// A claim: the rows `select` picks become `sending` under a new lease for
/// `?1` until `?2`, and come back with what delivery needs.
///
/// `OR FAIL` here and in `record_many`'s statements: on an error the whole
/// transaction is rolled back anyway, so SQLite need not keep a statement
/// journal to undo one multi-row statement alone; that journal was 5% of
/// the dispatcher's CPU.
macro_rules! sql_claim {
    ($duplicate:literal, $select:literal) => {
        concat!(
            "UPDATE OR FAIL emails SET state = 'sending', lease_owner = ?1, lease_until = ?2, \
                    lease_token = lease_token + 1, ",
            $duplicate,
            " WHERE id IN (",
            $select,
            ") RETURNING seq, id, lease_token, mail_from, pending, attempts, due_at, max_fails, \
             max_time_ms"
        )
    };
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database file.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            db: Embedded::open(path).await?,
        })
    }

    /// The embedded queue on the same file.
    pub fn embedded(&self) -> &Embedded {
        &self.db
    }

    fn pool(&self) -> &SqlitePool {
        self.db.pool()
    }

    /// The file's schema version and this build's, if a newer build has
    /// migrated it past what this build knows.
    pub(crate) async fn newer_schema(&self) -> Option<(i64, usize)> {
        let found = self.db.newer_schema().await?;
        Some((found, Embedded::schema_version()))
    }

    pub(crate) async fn claim(
        &self,
        owner: &str,
        limit: usize,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        // On the writer thread: one hand-off for the whole claim, where
        // through sqlx each of its statements was a round trip to sqlx's
        // connection thread made while holding the write turn.
        let owner = owner.to_owned();
        self.db
            .on_writer(move |w| claim_on(w, &owner, limit, now, lease_ms))
            .await?
    }

    pub(crate) async fn record_many(&self, items: &[Completion]) -> Result<Vec<bool>, StoreError> {
        // On the writer thread, with statements of its own: one hand-off
        // there and one back for the whole batch, where through sqlx every
        // statement (and each pragma) is a round trip to its connection's
        // thread, made while holding the write turn the applications'
        // enqueues wait for.
        let records: Vec<Record> = items.iter().map(Record::of).collect();
        self.db.on_writer(move |w| record_on(w, &records)).await?
    }

    pub(crate) async fn renew_leases(&self, owner: &str, until: i64) -> Result<u64, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let _turn = self.db.write_turn().await;
        let done = sqlx::query(
            "UPDATE emails SET lease_until = ?1 WHERE state = 'sending' AND lease_owner = ?2",
        )
        .bind(until)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn release_owner(&self, owner: &str) -> Result<u64, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let _turn = self.db.write_turn().await;
        let done = sqlx::query(
            "UPDATE emails SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
                    lease_owner = NULL, lease_until = NULL \
             WHERE state = 'sending' AND lease_owner = ?1",
        )
        .bind(owner)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn expire_overdue(
        &self,
        now: i64,
        default_max_time_ms: i64,
    ) -> Result<u64, StoreError> {
        // `due_at <= now` lets the partial index skip future emails, however
        // many there are; the state test is written to match that index.
        let mut conn = self.pool().acquire().await?;
        let _turn = self.db.write_turn().await;
        let done = sqlx::query(
            "UPDATE emails SET state = 'expired', finished_at = ?1, lease_owner = NULL, lease_until = NULL, \
                    last_reason = 'max-time passed' || COALESCE(': last attempt: ' || last_reason, ' before any attempt') \
             WHERE state IN ('scheduled', 'queued', 'deferred', 'sending') \
               AND (state <> 'sending' OR lease_until <= ?1) \
               AND due_at <= ?1 AND due_at + COALESCE(max_time_ms, ?2) <= ?1",
        )
            .bind(now)
            .bind(default_max_time_ms)
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn next_wake(&self) -> Result<Option<i64>, StoreError> {
        // The earliest lease end, and the earliest `next_at` of each
        // priority, found by index seeks as in `claim` (`emails_claim`
        // is on (priority, next_at); there is no index on `next_at` alone).
        let mut conn = self.pool().acquire().await?;
        let mut t: Option<i64> =
            sqlx::query_scalar("SELECT min(lease_until) FROM emails WHERE state = 'sending'")
                .fetch_one(&mut *conn)
                .await?;
        let mut below = i64::MAX;
        loop {
            let priority: Option<i64> = sqlx::query_scalar(
                "SELECT max(priority) FROM emails \
                  WHERE state IN ('scheduled', 'queued', 'deferred') AND priority < ?1",
            )
            .bind(below)
            .fetch_one(&mut *conn)
            .await?;
            let Some(priority) = priority else { break };
            below = priority;
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT min(next_at) FROM emails \
                  WHERE state IN ('scheduled', 'queued', 'deferred') AND priority = ?1",
            )
            .bind(priority)
            .fetch_one(&mut *conn)
            .await?;
            t = t.into_iter().chain(next).min();
        }
        Ok(t)
    }

    pub(crate) async fn stats(&self, now: i64) -> Result<Stats, StoreError> {
        let mut stats = Stats::default();
        for s in STATES {
            stats.states.insert(s.to_owned(), 0);
        }
        let rows = sqlx::query(
            "SELECT CASE WHEN state IN ('scheduled', 'queued') \
                         THEN CASE WHEN next_at > ?1 THEN 'scheduled' ELSE 'queued' END \
                         ELSE state END AS s, count(*) AS n \
             FROM emails GROUP BY s",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        for r in rows {
            let n: i64 = r.try_get("n")?;
            stats
                .states
                .insert(r.try_get("s")?, u64::try_from(n).unwrap_or(0));
        }
        let sent = stats.states.get("sent").copied().unwrap_or(0);
        if sent > 0 {
            let pct = |p: u64| (sent * p).div_ceil(100).saturating_sub(1);
            let mut lat = Latency::default();
            for (slot, p) in [(&mut lat.p50, 50), (&mut lat.p90, 90), (&mut lat.p99, 99)] {
                *slot = sqlx::query_scalar(
                    "SELECT finished_at - due_at AS l FROM emails WHERE state = 'sent' ORDER BY l LIMIT 1 OFFSET ?1",
                )
                .bind(i64::try_from(pct(p)).unwrap_or(0))
                .fetch_optional(self.pool())
                .await?;
            }
            stats.latency_ms = lat;
            stats.attempts_per_sent =
                sqlx::query_scalar("SELECT avg(attempts) FROM emails WHERE state = 'sent'")
                    .fetch_one(self.pool())
                    .await?;
        }
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
            .fetch_one(self.pool())
            .await?;
        stats.attempts_total = u64::try_from(total).unwrap_or(0);
        let dups: i64 =
            sqlx::query_scalar("SELECT count(*) FROM emails WHERE possible_duplicate = 1")
                .fetch_one(self.pool())
                .await?;
        stats.possible_duplicates = u64::try_from(dups).unwrap_or(0);
        Ok(stats)
    }

    pub(crate) async fn list(
        &self,
        state: Option<&str>,
        limit: u32,
        now: i64,
    ) -> Result<Vec<EmailRow>, StoreError> {
        // `scheduled` and `queued` are told apart by time, as in stats.
        let rows = sqlx::query(
            "SELECT * FROM emails WHERE ?1 IS NULL OR ?1 = \
                 CASE WHEN state IN ('scheduled', 'queued') \
                      THEN CASE WHEN next_at > ?2 THEN 'scheduled' ELSE 'queued' END ELSE state END \
             ORDER BY created_at DESC, id DESC LIMIT ?3",
        )
        .bind(state)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| email_row(r, now)).collect()
    }

    pub(crate) async fn show(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(EmailRow, Vec<Attempt>, Vec<u8>), StoreError> {
        let row = sqlx::query(
            "SELECT emails.*, email_raw.raw FROM emails \
               LEFT JOIN email_raw ON email_raw.seq = emails.seq WHERE emails.id = ?1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let attempts = sqlx::query("SELECT * FROM attempts WHERE email_id = ?1 ORDER BY id")
            .bind(id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(attempt)
            .collect::<Result<Vec<_>, _>>()?;
        let raw: Option<Vec<u8>> = row.try_get("raw")?;
        Ok((email_row(&row, now)?, attempts, raw.unwrap_or_default()))
    }

    pub(crate) async fn retry(&self, id: &str, now: i64) -> Result<(), StoreError> {
        // A fresh budget: attempts restart and max-time counts from now.
        self.change(
            id,
            "UPDATE emails SET state = 'queued', next_at = ?2, due_at = ?2, attempts = 0, finished_at = NULL, \
                    pending = CASE WHEN state IN ('failed', 'expired', 'cancelled') AND pending = '[]' \
                                   THEN recipients ELSE pending END \
             WHERE id = ?1 AND state IN ('deferred', 'failed', 'expired', 'cancelled', 'scheduled', 'queued')",
            now,
            "only unsent emails can be retried",
        )
        .await
    }

    pub(crate) async fn cancel(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.change(
            id,
            &format!(
                "UPDATE emails SET state = 'cancelled', finished_at = ?2, last_reason = 'cancelled by operator' \
                 WHERE id = ?1 AND state IN {WAITING}"
            ),
            now,
            "only scheduled, queued or deferred emails can be cancelled",
        )
        .await
    }

    pub(crate) async fn reschedule(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.change(
            id,
            &format!(
                "UPDATE emails SET state = 'scheduled', next_at = ?2, due_at = ?2 \
                 WHERE id = ?1 AND state IN {WAITING}"
            ),
            at,
            "only scheduled, queued or deferred emails can be rescheduled",
        )
        .await
    }

    async fn change(
        &self,
        id: &str,
        sql: &str,
        t: i64,
        hint: &'static str,
    ) -> Result<(), StoreError> {
        let done = {
            let mut conn = self.pool().acquire().await?;
            let _turn = self.db.write_turn().await;
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .bind(id)
                .bind(t)
                .execute(&mut *conn)
                .await?
        };
        if done.rows_affected() == 1 {
            self.db.wake();
            return Ok(());
        }
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM emails WHERE id = ?1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        match state {
            None => Err(StoreError::NotFound(id.to_owned())),
            Some(state) => Err(StoreError::WrongState {
                id: id.to_owned(),
                state,
                hint,
            }),
        }
    }
}

/// A claimed row as the claim's `RETURNING` gives it.
struct ClaimRow {
    seq: i64,
    token: i64,
    mail_from: String,
    pending: String,
    attempts: i64,
    due_at: i64,
    max_fails: Option<i64>,
    max_time_ms: Option<i64>,
}

/// A claimed row's id, and the rest of it or why it cannot be read (a
/// corrupt row fails alone, not the claim). The `seq` (an INTEGER
/// PRIMARY KEY, always readable) keys the update that fails a corrupt row.
type Returned = (i64, String, Result<ClaimRow, String>);

fn returned(r: &rusqlite::Row<'_>) -> rusqlite::Result<Returned> {
    let seq: i64 = r.get(0)?;
    // Leniently: an id that is not valid text (edited by hand) must fail
    // its own row, not every claim (the claim would roll back and find the
    // same row first again, for good).
    let (id, readable) = match r.get_ref(1)? {
        ValueRef::Text(b) => match std::str::from_utf8(b) {
            Ok(t) => (t.to_owned(), true),
            Err(_) => (String::from_utf8_lossy(b).into_owned(), false),
        },
        ValueRef::Blob(b) => (String::from_utf8_lossy(b).into_owned(), false),
        ValueRef::Integer(i) => (i.to_string(), false),
        ValueRef::Real(f) => (f.to_string(), false),
        ValueRef::Null => (String::new(), false),
    };
    if !readable {
        // Its record could never be matched by id: fail it by `seq`.
        return Ok((seq, id, Err("the id is not text".into())));
    }
    let rest = (|| {
        Ok::<_, rusqlite::Error>(ClaimRow {
            seq: r.get(0)?,
            token: r.get(2)?,
            mail_from: r.get(3)?,
            pending: r.get(4)?,
            attempts: r.get(5)?,
            due_at: r.get(6)?,
            max_fails: r.get(7)?,
            max_time_ms: r.get(8)?,
        })
    })()
    .map_err(|e| e.to_string());
    Ok((seq, id, rest))
}

/// Claims up to `limit` due emails for `owner` until `now + lease_ms`, on
/// the writer thread, in three kinds of statement, each reading only what
/// it takes: expired leases first (their owner died mid-attempt, perhaps
/// after the final "." was accepted: a possible duplicate), then the
/// distinct priorities of unfinished emails, found by index seeks (a loose
/// index scan), and for each, highest first, its due emails in due order
/// through `emails_claim (priority, next_at)`. One ORDER BY priority over
/// all due emails would read every one of them on every claim. One
/// transaction: one commit (an fsync) per claim.
///
/// `LIMIT ?4 + 0`, not `LIMIT ?4`: SQLite marks a statement whose LIMIT is
/// a bare parameter to be compiled again every time that parameter is
/// bound, which cost 4% of the dispatcher's CPU.
///
/// The message bytes are read after the commit and outside the write
/// turn: they never change once stored, and the lease keeps the emails
/// this process's.
fn claim_on(
    w: &mut Writing<'_>,
    owner: &str,
    limit: usize,
    now: i64,
    lease_ms: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let until = now + lease_ms;
    let rows: Vec<Returned> = {
        let _turn = w.turn();
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rows = Vec::new();
        {
            let mut expired = tx.prepare_cached(sql_claim!(
                "possible_duplicate = 1",
                "SELECT id FROM emails WHERE state = 'sending' AND lease_until <= ?3 \
                 ORDER BY priority DESC, next_at LIMIT ?4 + 0"
            ))?;
            for r in expired.query_map(params![owner, until, now, limit], returned)? {
                rows.push(r?);
            }
            let mut highest = tx.prepare_cached(
                "SELECT max(priority) FROM emails \
                  WHERE state IN ('scheduled', 'queued', 'deferred') AND priority < ?1",
            )?;
            let mut due = tx.prepare_cached(sql_claim!(
                "possible_duplicate = possible_duplicate",
                "SELECT id FROM emails \
                  WHERE state IN ('scheduled', 'queued', 'deferred') \
                    AND priority = ?5 AND next_at <= ?3 \
                  ORDER BY next_at LIMIT ?4 + 0"
            ))?;
            let mut below = i64::MAX;
            while (rows.len() as i64) < limit {
                let priority: Option<i64> = highest.query_row([below], |r| r.get(0))?;
                let Some(priority) = priority else { break };
                below = priority;
                let left = limit - rows.len() as i64;
                for r in due.query_map(params![owner, until, now, left, priority], returned)? {
                    rows.push(r?);
                }
            }
        }
        tx.commit()?;
        rows
    };
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = rows
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|c| c.seq))
        .collect();
    let read = (|| {
        let mut st = w.conn.prepare_cached(
            "SELECT seq, raw FROM email_raw WHERE seq IN (SELECT value FROM json_each(?1))",
        )?;
        let seqs = serde_json::to_string(&seqs).unwrap_or_else(|_| "[]".into());
        st.query_map([seqs], |r| {
            // Bytes as stored, whatever SQLite type they were stored as;
            // delivery checks them.
            let raw = match r.get_ref(1)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                _ => Vec::new(),
            };
            Ok((r.get::<_, i64>(0)?, raw))
        })?
        .collect::<rusqlite::Result<std::collections::HashMap<i64, Vec<u8>>>>()
    })();
    let mut raw = match read {
        Ok(raw) => raw,
        Err(e) => {
            // Claimed but not readable: hand the emails back now (nothing
            // was attempted) instead of leaving them to the lease, which
            // would mark them possible duplicates.
            let seqs: Vec<i64> = rows.iter().map(|(seq, _, _)| *seq).collect();
            let _turn = w.turn();
            let back = w.conn.execute(
                "UPDATE emails SET state = CASE WHEN attempts = 0 THEN 'queued' \
                                               ELSE 'deferred' END, \
                        lease_owner = NULL, lease_until = NULL \
                  WHERE state = 'sending' AND lease_owner = ?1 \
                    AND seq IN (SELECT value FROM json_each(?2))",
                params![
                    owner,
                    serde_json::to_string(&seqs).unwrap_or_else(|_| "[]".into())
                ],
            );
            if let Err(back) = back {
                tracing::warn!(error = %back, emails = seqs.len(), "could not hand back claimed emails; they are claimed again when the lease runs out");
                w.reopen();
            }
            return Err(e.into());
        }
    };
    let mut good = Vec::with_capacity(rows.len());
    let mut corrupt = Vec::new();
    for (seq, id, row) in rows {
        let made = row.and_then(|c| {
            // No bytes at all: delivery finds an empty message corrupt and
            // fails the email with that reason.
            let bytes = raw.remove(&c.seq).unwrap_or_default();
            Ok(Claimed {
                pending: json_list(&id, "pending", &c.pending).map_err(|e| e.to_string())?,
                token: c.token,
                mail_from: c.mail_from,
                raw: bytes,
                attempts: u32::try_from(c.attempts).unwrap_or(0),
                due_at: c.due_at,
                max_fails: c.max_fails.and_then(|v| u32::try_from(v).ok()),
                max_time_ms: c.max_time_ms,
                id: id.clone(),
            })
        });
        match made {
            Ok(c) => good.push(c),
            Err(e) => corrupt.push((seq, id, e)),
        }
    }
    if !corrupt.is_empty() {
        // One corrupt row must not stop delivery of the others: it ends in
        // `failed` with the reason, for an operator to see.
        // A failure here must not lose the good claims (they are
        // `sending` under this lease already): it is logged, and the
        // corrupt row comes back when its lease runs out.
        let _turn = w.turn();
        for (seq, id, e) in corrupt {
            tracing::error!(%id, error = %e, "corrupt stored email marked failed");
            if let Err(failed) = w.conn.execute(
                "UPDATE emails SET state = 'failed', finished_at = ?2, last_reason = ?3, \
                        lease_owner = NULL, lease_until = NULL WHERE seq = ?1",
                params![seq, now, format!("stored record is corrupt: {e}")],
            ) {
                tracing::warn!(%id, error = %failed, "could not mark a corrupt email failed; it is claimed again when its lease runs out");
            }
        }
    }
    Ok(good)
}

/// One completion as [`record_on`] writes it: owned (it goes to the
/// writer thread), without the message bytes.
struct Record {
    id: String,
    token: i64,
    state: &'static str,
    next_at: Option<i64>,
    finished_at: Option<i64>,
    pending: String,
    reason: String,
    attempt: Option<Attempt>,
}

impl Record {
    fn of(item: &Completion) -> Record {
        let a = item.attempt.as_ref();
        let now = a.map_or_else(crate::dispatch::now_ms, |a| a.finished_at);
        let (next_at, finished_at) = match item.next {
            Next::Retry { at } => (Some(at), None),
            _ => (None, Some(now)),
        };
        Record {
            id: item.claimed.id.clone(),
            token: item.claimed.token,
            state: item.next.state(),
            next_at,
            finished_at,
            pending: serde_json::to_string(&item.pending).unwrap_or_else(|_| "[]".into()),
            reason: item.reason.clone(),
            attempt: item.attempt.clone(),
        }
    }
}

/// Records completions in one transaction, on the writer thread: every
/// attempt (kept even when the lease was taken over: it happened), and
/// each email moved on, fenced by its lease token. Returns, for each,
/// whether its email was updated.
///
/// Results are written without an fsync of their own: a process crash
/// loses nothing (the WAL is in the page cache), and after a power loss
/// the durable claim before them is still there, so the email is sent
/// again marked as a possible duplicate. Claims and enqueues stay `FULL`
/// (ARCHITECTURE.md); the connection is put back to `FULL` after, or
/// replaced if that fails.
fn record_on(w: &mut Writing<'_>, records: &[Record]) -> Result<Vec<bool>, StoreError> {
    w.conn.pragma_update(None, "synchronous", "NORMAL")?;
    let result = (|| {
        let _turn = w.turn();
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut attempt = tx.prepare_cached(
                "INSERT OR FAIL INTO attempts (email_id, started_at, finished_at, relay, outcome, \
                 smtp_code, enhanced_code, reply, possible_duplicate, recipients) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for r in records {
                let Some(a) = &r.attempt else { continue };
                attempt.execute(params![
                    r.id,
                    a.started_at,
                    a.finished_at,
                    a.relay,
                    a.outcome,
                    a.smtp_code.map(i64::from),
                    a.enhanced_code,
                    a.reply,
                    a.possible_duplicate,
                    serde_json::to_string(&a.recipients).unwrap_or_else(|_| "[]".into()),
                ])?;
            }
        }
        let mut updated = Vec::with_capacity(records.len());
        {
            // `+state` keeps the planner on the unique index of `id`.
            let mut update = tx.prepare_cached(
                "UPDATE OR FAIL emails SET state = ?3, attempts = attempts + ?9, \
                        next_at = COALESCE(?4, next_at), finished_at = ?5, pending = ?6, \
                        last_reason = ?7, possible_duplicate = possible_duplicate | ?8, \
                        lease_owner = NULL, lease_until = NULL \
                  WHERE id = ?1 AND lease_token = ?2 AND +state = 'sending'",
            )?;
            for r in records {
                let a = r.attempt.as_ref();
                let n = update.execute(params![
                    r.id,
                    r.token,
                    r.state,
                    r.next_at,
                    r.finished_at,
                    r.pending,
                    r.reason,
                    a.is_some_and(|a| a.possible_duplicate),
                    i64::from(a.is_some()),
                ])?;
                updated.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(updated)
    })();
    if let Err(e) = w.conn.pragma_update(None, "synchronous", "FULL") {
        tracing::warn!(error = %e, "could not restore synchronous=FULL; reopening the database connection");
        w.reopen();
    }
    result
}

fn email_row(r: &SqliteRow, now: i64) -> Result<EmailRow, StoreError> {
    let id: String = r.try_get("id")?;
    let next_at: i64 = r.try_get("next_at")?;
    let (state, unfinished) = shown_state(r.try_get("state")?, next_at, now);
    Ok(EmailRow {
        recipients: json_list(&id, "recipients", &r.try_get::<String, _>("recipients")?)?,
        pending: json_list(&id, "pending", &r.try_get::<String, _>("pending")?)?,
        state,
        subject: r.try_get("subject")?,
        mail_from: r.try_get("mail_from")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        priority: r.try_get("priority")?,
        created_at: rfc3339(r.try_get("created_at")?),
        due_at: rfc3339(r.try_get("due_at")?),
        next_at: unfinished.then(|| rfc3339(next_at)),
        finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(rfc3339),
        last_reason: r.try_get("last_reason")?,
        message_id: r.try_get("message_id")?,
        idempotency_key: r.try_get("idempotency_key")?,
        possible_duplicate: r.try_get::<i64, _>("possible_duplicate")? != 0,
        id,
    })
}

fn attempt(r: &SqliteRow) -> Result<Attempt, StoreError> {
    let id: String = r.try_get("email_id")?;
    let recipients: Vec<RecipientOutcome> = serde_json::from_str(
        r.try_get::<Option<String>, _>("recipients")?
            .as_deref()
            .unwrap_or("[]"),
    )
    .map_err(|e| StoreError::Corrupt {
        id,
        field: "attempt recipients",
        reason: e.to_string(),
    })?;
    Ok(Attempt {
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        relay: r.try_get::<Option<String>, _>("relay")?.unwrap_or_default(),
        outcome: r.try_get("outcome")?,
        smtp_code: r
            .try_get::<Option<i64>, _>("smtp_code")?
            .and_then(|c| u16::try_from(c).ok()),
        enhanced_code: r.try_get("enhanced_code")?,
        reply: r.try_get::<Option<String>, _>("reply")?.unwrap_or_default(),
        possible_duplicate: r.try_get::<i64, _>("possible_duplicate")? != 0,
        recipients,
    })
}
