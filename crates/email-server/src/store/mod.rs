//! The store: every email and every attempt, and the claims that hand due
//! emails to the dispatcher.
//!
//! A closed set of backends, one file each, behind `enum Store` with a
//! delegating `match`:
//!
//! | Backend | Config | Use |
//! |---|---|---|
//! | [`SqliteStore`] | `engine: sqlite3`, `path: ./email.db` | one server process; the embedded queue's own file, so intake is the insert |
//! | [`PostgresStore`] | `engine: postgres`, `url: postgres://…` | any number of server processes sharing one database (claims skip each other's locked rows) |
//!
//! Both behave the same, down to the JSON text they return; the
//! conformance suite (`tests/conformance.rs`) runs every case against each.
//!
//! States, as stored and as shown everywhere: `scheduled` `queued`
//! `sending` `deferred` `sent` `failed` `expired` `cancelled`. A row
//! written as `scheduled` whose time has come is reported as `queued`.

use serde::Serialize;

pub mod postgres;
pub mod sqlite;

pub use postgres::{PostgresStore, WakeListener};
pub use sqlite::SqliteStore;

/// Every state, in the order stats print them.
pub const STATES: [&str; 8] = [
    "scheduled",
    "queued",
    "sending",
    "deferred",
    "sent",
    "failed",
    "expired",
    "cancelled",
];

/// A backend. A closed set: one variant per database.
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite, shared with the embedded queue.
    Sqlite(SqliteStore),
    /// PostgreSQL, shared by any number of servers.
    Postgres(PostgresStore),
}

/// An email claimed for one delivery attempt, under a lease.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The email's id.
    pub id: String,
    /// Fences the completion: only the holder of this token may record.
    pub token: i64,
    /// MAIL FROM.
    pub mail_from: String,
    /// The recipients still to deliver to.
    pub pending: Vec<String>,
    /// The message.
    pub raw: Vec<u8>,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The schedule (Unix ms): max-time counts from here.
    pub due_at: i64,
    /// Per-email override of max-fails.
    pub max_fails: Option<u32>,
    /// Per-email override of max-time (ms).
    pub max_time_ms: Option<i64>,
}

/// The outcome of one attempt, ready to record.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The claim it completes (its token fences the update).
    pub claimed: Claimed,
    /// The attempt, or `None` when no delivery was tried.
    pub attempt: Option<Attempt>,
    /// What happens to the email.
    pub next: Next,
    /// Recipients still to deliver to.
    pub pending: Vec<String>,
    /// Why: stored as the email's last reason.
    pub reason: String,
}

/// What happens to an email after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Delivered to every recipient that will ever take it.
    Sent,
    /// Try again at this time (Unix ms) for the recipients in `pending`.
    Retry {
        /// When.
        at: i64,
    },
    /// Permanent failure or max-fails reached.
    Failed,
    /// max-time passed.
    Expired,
}

impl Next {
    /// The state this leads to.
    pub fn state(&self) -> &'static str {
        match self {
            Next::Sent => "sent",
            Next::Retry { .. } => "deferred",
            Next::Failed => "failed",
            Next::Expired => "expired",
        }
    }
}

/// One recipient's result in an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RecipientOutcome {
    /// The RCPT TO address.
    pub address: String,
    /// The SMTP reply code (0 if none was received).
    pub code: u16,
    /// The enhanced status code, e.g. `5.1.1`.
    pub enhanced: Option<String>,
    /// The reply text.
    pub reply: String,
}

/// One attempt, as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// When it started (Unix ms).
    pub started_at: i64,
    /// When it ended (Unix ms).
    pub finished_at: i64,
    /// `host:port` of the relay, or `outbox:DIR`.
    pub relay: String,
    /// The state the attempt led to.
    pub outcome: String,
    /// The deciding SMTP reply code.
    pub smtp_code: Option<u16>,
    /// The deciding enhanced status code.
    pub enhanced_code: Option<String>,
    /// The deciding reply text, or the error.
    pub reply: String,
    /// Cut off after the final `.`: the relay may have the message.
    pub possible_duplicate: bool,
    /// Per-recipient results.
    pub recipients: Vec<RecipientOutcome>,
}

/// An email as listed and shown by the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EmailRow {
    /// The id.
    pub id: String,
    /// The state (see [`STATES`]).
    pub state: String,
    /// The subject.
    pub subject: Option<String>,
    /// MAIL FROM.
    pub mail_from: String,
    /// Every envelope recipient.
    pub recipients: Vec<String>,
    /// Recipients still to deliver to.
    pub pending: Vec<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Priority.
    pub priority: i64,
    /// Enqueued at (RFC 3339).
    pub created_at: String,
    /// Due at (RFC 3339).
    pub due_at: String,
    /// Next attempt at (RFC 3339), for unfinished emails.
    pub next_at: Option<String>,
    /// Terminal state reached at (RFC 3339).
    pub finished_at: Option<String>,
    /// Why it is in this state.
    pub last_reason: Option<String>,
    /// Message-ID.
    pub message_id: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// An attempt was cut off after the final `.`.
    pub possible_duplicate: bool,
}

/// Counts and latencies for `email-server stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Emails per state, every state present (see [`STATES`]).
    pub states: std::collections::BTreeMap<String, u64>,
    /// Due time to acceptance for sent emails, in ms.
    pub latency_ms: Latency,
    /// Average attempts per sent email.
    pub attempts_per_sent: f64,
    /// Total attempts recorded.
    pub attempts_total: u64,
    /// Sent emails with an attempt cut off after the final `.`.
    pub possible_duplicates: u64,
    /// Queue records that could not be decoded or stored, parked in the
    /// Redis dead-letter stream (`null` with the embedded queue).
    pub dead_letters: Option<u64>,
}

/// Latency percentiles in ms (`null` when nothing was sent).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<i64>,
    /// 90th percentile.
    pub p90: Option<i64>,
    /// 99th percentile.
    pub p99: Option<i64>,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The SQLite store failed on its writer thread (claims and records).
    #[error("database: {0}")]
    Sqlite(#[from] email::queue::embedded::rusqlite::Error),
    /// Opening failed.
    #[error(transparent)]
    Queue(#[from] email::queue::QueueError),
    /// The store cannot be opened as configured: an invalid schema name,
    /// or a schema newer than this build knows.
    #[error("opening the store: {0}")]
    Open(String),
    /// A newer build migrated the database while this one was running: its
    /// statements no longer fit the schema. Restarting with the newer build
    /// is the only way on.
    #[error(
        "the database was upgraded to schema version {found} (this build knows {known}) by a \
         newer build while this server was running; restart it with that build"
    )]
    NewerSchema {
        /// The file's version.
        found: i64,
        /// The newest this build knows.
        known: usize,
    },
    /// No email has this id.
    #[error("no email with id {0}")]
    NotFound(String),
    /// The email is not in a state that allows the operation.
    #[error("email {id} is {state}: {hint}")]
    WrongState {
        /// The id.
        id: String,
        /// Its state.
        state: String,
        /// What would work instead.
        hint: &'static str,
    },
    /// A stored value is corrupt.
    #[error("email {id}: stored {field} is corrupt: {reason}")]
    Corrupt {
        /// The id.
        id: String,
        /// Which column.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// A JSON list column, or a `Corrupt` error naming the email and column.
pub(crate) fn json_list(
    id: &str,
    field: &'static str,
    text: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        field,
        reason: e.to_string(),
    })
}

/// Unix ms as RFC 3339, for people and JSON.
pub(crate) fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// The state as shown: a row stored `scheduled` or `queued` is told apart
/// by time, the same rule stats and list use. Also says whether the email
/// is unfinished (so its next attempt time means something).
pub(crate) fn shown_state(stored: String, next_at: i64, now: i64) -> (String, bool) {
    let state = match stored.as_str() {
        "scheduled" | "queued" if next_at > now => "scheduled".to_owned(),
        "scheduled" | "queued" => "queued".to_owned(),
        _ => stored,
    };
    let unfinished = matches!(
        state.as_str(),
        "scheduled" | "queued" | "deferred" | "sending"
    );
    (state, unfinished)
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Intake: stores emails handed over by a queue, idempotently by id
    /// (and by idempotency key), in one transaction. Returns each email's
    /// id (the earlier one when its idempotency key was already used).
    pub async fn insert(
        &self,
        batch: &[email::queue::Queued],
    ) -> Result<Vec<email::EmailId>, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(s.embedded().insert(batch).await?),
            Store::Postgres(s) => s.insert(batch).await,
        }
    }
    /// Claims up to `limit` due emails (higher priority first), and emails
    /// whose lease expired, for `owner` until `now + lease_ms`.
    pub async fn claim(
        &self,
        owner: &str,
        limit: usize,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let claimed = delegate!(self, s => s.claim(owner, limit, now, lease_ms).await);
        self.explained(claimed).await
    }
    /// Records an attempt and moves the email on, unless its lease was
    /// taken over (then only the attempt is kept). Returns whether the
    /// email was updated. `attempt` is `None` when no delivery was tried
    /// (max-time had passed).
    pub async fn record(
        &self,
        c: &Claimed,
        attempt: Option<&Attempt>,
        next: &Next,
        pending: &[String],
        reason: &str,
    ) -> Result<bool, StoreError> {
        let one = Completion {
            claimed: c.clone(),
            attempt: attempt.cloned(),
            next: next.clone(),
            pending: pending.to_vec(),
            reason: reason.to_owned(),
        };
        Ok(self
            .record_many(std::slice::from_ref(&one))
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// Records several completions in one transaction (one disk flush):
    /// the dispatcher's group commit. Returns, for each, whether the email
    /// was updated (false: its lease had been taken over).
    pub async fn record_many(&self, items: &[Completion]) -> Result<Vec<bool>, StoreError> {
        let updated = delegate!(self, s => s.record_many(items).await);
        self.explained(updated).await
    }

    /// `result`, or, if it failed in the database and a newer build has
    /// migrated the store meanwhile, [`StoreError::NewerSchema`], which says
    /// what to do instead of the database's "no such column". Asked only
    /// after a failure: the check is one query.
    async fn explained<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(e @ (StoreError::Db(_) | StoreError::Sqlite(_))) => {
                match delegate!(self, s => s.newer_schema().await) {
                    Some((found, known)) => Err(StoreError::NewerSchema { found, known }),
                    None => Err(e),
                }
            }
            other => other,
        }
    }
    /// Extends every claim `owner` holds to `until` (Unix ms): the
    /// dispatcher's heartbeat, so that a slow attempt or one waiting for a
    /// connection is not taken over while its owner is alive. Returns how
    /// many claims were extended.
    pub async fn renew_leases(&self, owner: &str, until: i64) -> Result<u64, StoreError> {
        delegate!(self, s => s.renew_leases(owner, until).await)
    }
    /// Gives back every claim `owner` still holds, without counting an
    /// attempt (graceful shutdown). Returns how many.
    pub async fn release_owner(&self, owner: &str) -> Result<u64, StoreError> {
        delegate!(self, s => s.release_owner(owner).await)
    }
    /// Expires unfinished emails past their max-time; returns how many.
    pub async fn expire_overdue(
        &self,
        now: i64,
        default_max_time_ms: i64,
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.expire_overdue(now, default_max_time_ms).await)
    }
    /// The earliest time (Unix ms) something becomes claimable, if any.
    pub async fn next_wake(&self) -> Result<Option<i64>, StoreError> {
        delegate!(self, s => s.next_wake().await)
    }
    /// Counts and latencies.
    pub async fn stats(&self, now: i64) -> Result<Stats, StoreError> {
        delegate!(self, s => s.stats(now).await)
    }
    /// Emails, newest first, optionally in one state.
    pub async fn list(
        &self,
        state: Option<&str>,
        limit: u32,
        now: i64,
    ) -> Result<Vec<EmailRow>, StoreError> {
        delegate!(self, s => s.list(state, limit, now).await)
    }
    /// One email with its attempts and raw bytes.
    pub async fn show(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(EmailRow, Vec<Attempt>, Vec<u8>), StoreError> {
        delegate!(self, s => s.show(id, now).await)
    }
    /// Makes a failed, expired or cancelled email (or a deferred one, now)
    /// due again with a fresh attempt budget.
    pub async fn retry(&self, id: &str, now: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.retry(id, now).await)
    }
    /// Cancels an unsent email.
    pub async fn cancel(&self, id: &str, now: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.cancel(id, now).await)
    }
    /// Moves an unsent email to a new due time.
    pub async fn reschedule(&self, id: &str, at: i64) -> Result<(), StoreError> {
        delegate!(self, s => s.reschedule(id, at).await)
    }
}

impl StoreError {
    /// Whether the store is unavailable (busy, locked, full, unreachable,
    /// shutting down: every email would fail alike, so wait and retry)
    /// rather than refusing these particular emails.
    pub fn is_unavailable(&self) -> bool {
        let e = self;
        match e {
            StoreError::Db(sqlx::Error::Database(db)) => db.code().is_some_and(|c| outage_code(&c)),
            StoreError::Db(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Configuration(_)
            ),
            StoreError::Open(_) => true,
            StoreError::Sqlite(e) => {
                use email::queue::embedded::rusqlite::ErrorCode as C;
                matches!(
                    e.sqlite_error_code(),
                    Some(
                        C::DatabaseBusy
                            | C::DatabaseLocked
                            | C::DiskFull
                            | C::SystemIoFailure
                            | C::CannotOpen
                            | C::OutOfMemory
                    )
                )
            }
            // The embedded store reports SQLite errors as text.
            StoreError::Queue(q) => {
                let text = q.to_string();
                q.is_transient()
                    || matches!(q, email::queue::QueueError::Full)
                    || ["locked", "busy", "I/O"].iter().any(|w| text.contains(w))
            }
            _ => false,
        }
    }
}

/// SQLite primary codes BUSY, LOCKED, IOERR, FULL, CANTOPEN; PostgreSQL
/// classes 08 (connection), 40 (rollback), 53 (resources), 57 (operator
/// intervention), 58 (system) and 55P03 (lock not available).
fn outage_code(code: &str) -> bool {
    // SQLSTATE is always five characters; SQLite's (extended) result codes
    // are decimal numbers below 10,000.
    if code.len() == 5 {
        return ["08", "40", "53", "57", "58", "55P03"]
            .iter()
            .any(|p| code.starts_with(p));
    }
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
}

#[cfg(test)]
mod tests {
    use super::outage_code;

    #[test]
    fn outage_codes_are_the_unavailable_ones() {
        // SQLite: BUSY, BUSY_SNAPSHOT (517), LOCKED, FULL; not CONSTRAINT (19, 1811).
        for code in ["5", "517", "6", "13", "10"] {
            assert!(outage_code(code), "{code}");
        }
        for code in ["19", "1811", "1"] {
            assert!(!outage_code(code), "{code}");
        }
        // PostgreSQL: connection failure, deadlock, too many connections,
        // shutdown; not unique violation or bad encoding.
        for code in ["08006", "40P01", "53300", "57P01", "55P03"] {
            assert!(outage_code(code), "{code}");
        }
        for code in ["23505", "22021"] {
            assert!(!outage_code(code), "{code}");
        }
    }
}
