//! Rows to values and back: the PostgreSQL twins of the SQLite store's
//! decoders. They differ only in column types (`BOOLEAN` flags); the JSON
//! columns are TEXT in both, decoded and validated here.

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::store::{
    Attempt, Claimed, EmailRow, RecipientOutcome, StoreError, json_list, rfc3339, shown_state,
};

pub(super) async fn insert_attempt(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    id: &str,
    a: &Attempt,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO attempts (email_id, started_at, finished_at, relay, outcome, smtp_code, enhanced_code, \
                               reply, possible_duplicate, recipients) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(a.started_at)
    .bind(a.finished_at)
    .bind(&a.relay)
    .bind(&a.outcome)
    .bind(a.smtp_code.map(i64::from))
    .bind(&a.enhanced_code)
    .bind(&a.reply)
    .bind(a.possible_duplicate)
    .bind(serde_json::to_string(&a.recipients).unwrap_or_else(|_| "[]".into()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) fn claimed(r: &PgRow) -> Result<Claimed, StoreError> {
    let id: String = r.try_get("id")?;
    Ok(Claimed {
        pending: json_list(&id, "pending", &r.try_get::<String, _>("pending")?)?,
        token: r.try_get("lease_token")?,
        mail_from: r.try_get("mail_from")?,
        raw: r.try_get("raw")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        due_at: r.try_get("due_at")?,
        max_fails: r
            .try_get::<Option<i64>, _>("max_fails")?
            .and_then(|v| u32::try_from(v).ok()),
        max_time_ms: r.try_get("max_time_ms")?,
        id,
    })
}

pub(super) fn email_row(r: &PgRow, now: i64) -> Result<EmailRow, StoreError> {
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
        possible_duplicate: r.try_get("possible_duplicate")?,
        id,
    })
}

pub(super) fn attempt(r: &PgRow) -> Result<Attempt, StoreError> {
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
        possible_duplicate: r.try_get("possible_duplicate")?,
        recipients,
    })
}
