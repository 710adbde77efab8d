//! Queue engines: where [`Mailer`](crate::Mailer) puts emails for
//! `email-server` to pick up.
//!
//! | Engine | Config | Use |
//! |---|---|---|
//! | [`Embedded`] | `engine: embedded` (default), `path: ./email.db` | one machine; the app and the server share a SQLite file, or run in one process |
//! | Redis | `engine: redis` | many app servers feeding one system (planned, issue 4) |

use std::path::PathBuf;

pub mod embedded;

pub use embedded::Embedded;

/// An email's id: a UUIDv7, so ids sort by creation time.
pub type EmailId = uuid::Uuid;

/// One email as handed to a queue: rendered once, with its envelope and
/// schedule. Times are Unix milliseconds.
#[derive(Clone, Debug)]
pub struct Queued {
    /// The email's id.
    pub id: EmailId,
    /// When it was enqueued.
    pub created_at_ms: i64,
    /// When it should leave (the schedule).
    pub due_at_ms: i64,
    /// MAIL FROM.
    pub mail_from: String,
    /// RCPT TO, de-duplicated; Bcc lives only here.
    pub rcpt_to: Vec<String>,
    /// The RFC 5322 bytes.
    pub raw: Vec<u8>,
    /// For listing and stats.
    pub subject: Option<String>,
    /// For listing and searching.
    pub message_id: Option<String>,
    /// Enqueuing the same key again gives back the first email's id.
    pub idempotency_key: Option<String>,
    /// Higher is claimed first among due emails.
    pub priority: i32,
    /// Overrides the server's `max-fails` for this email.
    pub max_fails: Option<u32>,
    /// Overrides the server's `max-time` for this email (milliseconds).
    pub max_time_ms: Option<i64>,
    /// Free-form JSON tags.
    pub tags: Option<String>,
}

/// A queue engine. A closed set: one variant per engine.
#[derive(Clone, Debug)]
pub enum Queue {
    /// A SQLite file shared with the server.
    Embedded(Embedded),
}

impl Queue {
    /// Durably stores a batch; returns each email's id (the earlier one for
    /// a repeated idempotency key).
    pub async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        match self {
            Queue::Embedded(e) => e.insert(batch).await,
        }
    }
}

/// Why the queue could not take an email.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue could not be opened.
    #[error("opening queue {path}: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The disk is full: the email was not stored.
    #[error("queue is full (disk or database size limit): the email was not stored")]
    Full,
    /// The database refused or failed the write.
    #[error("queue write failed: {0}")]
    Write(String),
    /// A value could not be encoded.
    #[error("encoding the queue record: {0}")]
    Encode(String),
}

impl QueueError {
    pub(crate) fn from_sqlx(e: sqlx::Error) -> QueueError {
        let text = e.to_string();
        // SQLITE_FULL: "database or disk is full".
        if text.contains("is full") {
            QueueError::Full
        } else {
            QueueError::Write(text)
        }
    }
}
