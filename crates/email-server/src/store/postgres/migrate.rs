//! The PostgreSQL schema: `migrations/postgres/*.sql`, applied in order,
//! each once, with the count kept in `email_schema_version`.
//!
//! Several servers may start at once against a new database. All of the
//! work happens in one transaction that first takes a transaction-scoped
//! advisory lock keyed on the schema, so the others wait, then find the
//! schema current and do nothing. A failure rolls everything back.

use sqlx::postgres::PgPool;

use crate::store::StoreError;

/// Schema migrations, in order; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_partial_idempotency_index.sql"),
    include_str!("../../../migrations/postgres/0003_claim_index.sql"),
];

/// Brings the schema up to date. `schema` (already checked) is created if
/// missing; `None` means the connection's own `search_path`.
pub(super) async fn run(pool: &PgPool, schema: Option<&str>) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // One lock per schema, so isolated schemas (tests) migrate in parallel.
    sqlx::query(
        "SELECT pg_advisory_xact_lock( \
             hashtextextended('email-server migrations ' || COALESCE($1, current_schema(), ''), 0))",
    )
    .bind(schema)
    .execute(&mut *tx)
    .await?;
    if let Some(schema) = schema {
        // An identifier cannot be a bound parameter; `checked_schema` has
        // restricted it to [a-z_][a-z0-9_]*, so quoting it is enough.
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS email_schema_version ( \
             version    BIGINT PRIMARY KEY, \
             applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    let version: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM email_schema_version")
            .fetch_one(&mut *tx)
            .await?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Open(format!(
            "schema version {version} is newer than this build knows ({}); upgrade",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO email_schema_version (version, applied_at) VALUES ($1, $2)")
            .bind(i64::try_from(i + 1).unwrap_or(i64::MAX))
            .bind(crate::dispatch::now_ms())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The schema's version if a newer build has migrated it past what this
/// build knows (`None` also when it cannot be read): asked when a
/// statement fails, to say why.
pub(super) async fn newer(pool: &PgPool) -> Option<(i64, usize)> {
    let version: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM email_schema_version")
            .fetch_one(pool)
            .await
            .ok()?;
    (usize::try_from(version).ok()? > MIGRATIONS.len()).then_some((version, MIGRATIONS.len()))
}

/// A schema name that is safe to quote into SQL and to use as a
/// `search_path` as is: `[a-z_][a-z0-9_]*`, at most 63 bytes (PostgreSQL
/// would silently truncate a longer one), not a reserved `pg_` name.
pub(super) fn checked_schema(name: &str) -> Result<String, StoreError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
        && !name.starts_with("pg_");
    if ok {
        Ok(name.to_owned())
    } else {
        Err(StoreError::Open(format!(
            "schema name {name:?} must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 63 bytes, not pg_*)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::checked_schema;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["email", "_x", "conf_claim_123_ab12"] {
            assert!(checked_schema(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "Email",
            "1x",
            "a-b",
            "a\"b",
            "a b",
            "pg_x",
            long.as_str(),
        ] {
            assert!(checked_schema(bad).is_err(), "{bad}");
        }
    }
}
