//! Queue engines: where [`Mailer`](crate::Mailer) puts emails for
//! `email-server` to pick up.
//!
//! | Engine | Config | Use |
//! |---|---|---|
//! | [`Embedded`] | `engine: embedded` (default), `path: ./email.db` | one machine; the app and the server share a SQLite file, or run in one process |
//! | [`RedisQueue`] | `engine: redis`, `host`/`port`/`db`/`name` or `url` | many app servers feeding any number of `email-server`s; the record format is [`crate::record`], so producers in other languages can enqueue too |
//!
//! Both take a batch in [`Queue::insert`] and return the ids only once the
//! engine has acknowledged every email: a SQLite commit with
//! `synchronous=FULL`, or Redis replying to the XADDs.

use std::path::PathBuf;
use std::time::Duration;

pub mod embedded;
pub mod redis;

pub use self::redis::RedisQueue;
pub use embedded::{Checkpointer, Embedded, WriteTurn};

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
    /// A Redis stream the servers read through a consumer group.
    Redis(RedisQueue),
}

impl Queue {
    /// Durably stores a batch; returns each email's id (the earlier one for
    /// a repeated idempotency key).
    pub async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        match self {
            Queue::Embedded(e) => e.insert(batch).await,
            Queue::Redis(r) => r.insert(batch).await,
        }
    }

    /// The embedded engine, if this is it.
    pub fn as_embedded(&self) -> Option<&Embedded> {
        match self {
            Queue::Embedded(e) => Some(e),
            Queue::Redis(_) => None,
        }
    }

    /// The Redis engine, if this is it.
    pub fn as_redis(&self) -> Option<&RedisQueue> {
        match self {
            Queue::Redis(r) => Some(r),
            Queue::Embedded(_) => None,
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
    /// The configuration does not describe a usable queue (a Redis URL
    /// that does not parse, say).
    #[error("queue config: {0}")]
    Config(String),
    /// The queue's server cannot be reached or dropped the connection.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// No answer within the timeout. The emails may or may not have been
    /// stored; inserting the same ones again is safe (intake stores each
    /// id once, and an idempotency key gives back the first id).
    #[error("the queue did not answer within {after:?}; the emails may or may not be stored")]
    Timeout {
        /// The timeout.
        after: Duration,
    },
}

impl QueueError {
    /// Whether trying again later may succeed: the queue was unreachable
    /// or slow, rather than refusing the email.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueueError::Unavailable(_) | QueueError::Timeout { .. }
        )
    }
}
