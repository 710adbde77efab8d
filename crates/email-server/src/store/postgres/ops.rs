//! What operators see and do: stats, list, show, retry, cancel,
//! reschedule. The same queries as the SQLite store's, in PostgreSQL's
//! dialect; operator changes wake the dispatchers like intake does.

use sqlx::Row;

use super::{PostgresStore, rows};
use crate::store::{Attempt, EmailRow, Latency, STATES, Stats, StoreError};

impl PostgresStore {
    pub(crate) async fn stats(&self, now: i64) -> Result<Stats, StoreError> {
        let mut stats = Stats::default();
        for s in STATES {
            stats.states.insert(s.to_owned(), 0);
        }
        let rows = sqlx::query(
            "SELECT CASE WHEN state IN ('scheduled', 'queued') \
                         THEN CASE WHEN next_at > $1 THEN 'scheduled' ELSE 'queued' END \
                         ELSE state END AS s, count(*) AS n \
             FROM emails GROUP BY 1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let n: i64 = r.try_get("n")?;
            stats
                .states
                .insert(r.try_get("s")?, u64::try_from(n).unwrap_or(0));
        }
        let sent = stats.states.get("sent").copied().unwrap_or(0);
        if sent > 0 {
            stats.latency_ms = self.latency(sent).await?;
            // Float division of the integer sum, as SQLite's avg() does, so
            // both backends print the same digits.
            stats.attempts_per_sent = sqlx::query_scalar(
                "SELECT sum(attempts)::float8 / count(*) FROM emails WHERE state = 'sent'",
            )
            .fetch_one(&self.pool)
            .await?;
        }
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
            .fetch_one(&self.pool)
            .await?;
        stats.attempts_total = u64::try_from(total).unwrap_or(0);
        let dups: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE possible_duplicate")
            .fetch_one(&self.pool)
            .await?;
        stats.possible_duplicates = u64::try_from(dups).unwrap_or(0);
        Ok(stats)
    }

    /// Nearest-rank percentiles, ranked in Rust with the same integer
    /// arithmetic as the SQLite store (`percentile_disc` multiplies in
    /// floating point and can pick the neighbouring row), in one sort.
    async fn latency(&self, sent: u64) -> Result<Latency, StoreError> {
        let rank = |p: u64| i64::try_from((sent * p).div_ceil(100).max(1)).unwrap_or(1);
        let wanted = [rank(50), rank(90), rank(99)];
        let rows = sqlx::query(
            "SELECT rn, l FROM ( \
                 SELECT finished_at - due_at AS l, \
                        row_number() OVER (ORDER BY finished_at - due_at NULLS FIRST) AS rn \
                 FROM emails WHERE state = 'sent') r \
             WHERE rn = ANY($1)",
        )
        .bind(wanted.to_vec())
        .fetch_all(&self.pool)
        .await?;
        let at = |n: i64| -> Result<Option<i64>, StoreError> {
            for r in &rows {
                if r.try_get::<i64, _>("rn")? == n {
                    return Ok(r.try_get("l")?);
                }
            }
            Ok(None)
        };
        Ok(Latency {
            p50: at(wanted[0])?,
            p90: at(wanted[1])?,
            p99: at(wanted[2])?,
        })
    }

    pub(crate) async fn list(
        &self,
        state: Option<&str>,
        limit: u32,
        now: i64,
    ) -> Result<Vec<EmailRow>, StoreError> {
        // `scheduled` and `queued` are told apart by time, as in stats.
        let rows = sqlx::query(
            "SELECT * FROM emails WHERE $1::text IS NULL OR $1 = \
                 CASE WHEN state IN ('scheduled', 'queued') \
                      THEN CASE WHEN next_at > $2 THEN 'scheduled' ELSE 'queued' END ELSE state END \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(state)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| rows::email_row(r, now)).collect()
    }

    pub(crate) async fn show(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(EmailRow, Vec<Attempt>, Vec<u8>), StoreError> {
        let row = sqlx::query("SELECT * FROM emails WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let attempts = sqlx::query("SELECT * FROM attempts WHERE email_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::attempt)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows::email_row(&row, now)?, attempts, row.try_get("raw")?))
    }

    pub(crate) async fn retry(&self, id: &str, now: i64) -> Result<(), StoreError> {
        // A fresh budget: attempts restart and max-time counts from now.
        self.change(
            id,
            "UPDATE emails SET state = 'queued', next_at = $2, due_at = $2, attempts = 0, finished_at = NULL, \
                    pending = CASE WHEN state IN ('failed', 'expired', 'cancelled') AND pending = '[]' \
                                   THEN recipients ELSE pending END \
             WHERE id = $1 AND state IN ('deferred', 'failed', 'expired', 'cancelled', 'scheduled', 'queued')",
            now,
            "only unsent emails can be retried",
        )
        .await
    }

    pub(crate) async fn cancel(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.change(
            id,
            "UPDATE emails SET state = 'cancelled', finished_at = $2, last_reason = 'cancelled by operator' \
             WHERE id = $1 AND state IN ('scheduled', 'queued', 'deferred')",
            now,
            "only scheduled, queued or deferred emails can be cancelled",
        )
        .await
    }

    pub(crate) async fn reschedule(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.change(
            id,
            "UPDATE emails SET state = 'scheduled', next_at = $2, due_at = $2 \
             WHERE id = $1 AND state IN ('scheduled', 'queued', 'deferred')",
            at,
            "only scheduled, queued or deferred emails can be rescheduled",
        )
        .await
    }

    /// One operator change; wakes the dispatchers (the due time may have
    /// moved earlier), or says why the change does not apply.
    async fn change(
        &self,
        id: &str,
        sql: &'static str,
        t: i64,
        hint: &'static str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(sql).bind(id).bind(t).execute(&mut *tx).await?;
        if done.rows_affected() == 1 {
            self.wake(&mut tx).await?;
            tx.commit().await?;
            return Ok(());
        }
        tx.rollback().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM emails WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
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
