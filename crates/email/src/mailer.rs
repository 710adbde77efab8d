//! [`Mailer`]: hand emails off for delivery, now, later, or at a time.
//!
//! There is no synchronous send. Each verb stores the email in the queue and
//! returns its id; `email-server` delivers it, retries it, and records what
//! happened.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use email::{Email, Mailer, SendOptions};
//!
//! let mailer = Mailer::embedded("./email.db").await?;
//! let email = Email::builder()
//!     .from("shop@example.com")
//!     .to("ann@example.com")
//!     .subject("Your order")
//!     .text("It ships today.")
//!     .build()?;
//!
//! let id = mailer.enqueue(&email).await?;                 // as soon as possible
//! let later = mailer.send_later(&email, "5m").await?;     // in five minutes
//! let at = mailer.send_at(&email, "2030-01-01T09:00:00Z".parse()?).await?;
//! let once = mailer
//!     .enqueue_with(&email, None, &SendOptions::default().idempotency_key("order-42"))
//!     .await?;                                            // the same key again gives `once` back
//! # Ok(()) }
//! ```
//!
//! **Durable** (the default): each call returns once the email is committed
//! to disk. **Buffered** ([`Mailer::buffered`], the `email.buffer` key): calls
//! return at once with the id and a background task writes emails in
//! batches. Nothing is durable until [`Mailer::flush`] returns; failures are
//! logged, counted ([`Mailer::buffer_failures`]) and listed by `flush`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use crate::email::Email;
use crate::queue::{EmailId, Embedded, Queue, QueueError, Queued};

/// Most emails written in one buffered transaction.
const BUFFER_BATCH: usize = 1000;

/// Batches a buffered mailer has on their way to Redis at once.
const REDIS_IN_FLIGHT: usize = 4;

/// Hands emails to the queue. Cheap to clone; clones share the queue and the
/// buffer.
#[derive(Clone, Debug)]
pub struct Mailer {
    queue: Queue,
    buffer: Option<Buffer>,
}

#[derive(Clone, Debug)]
struct Buffer {
    tx: mpsc::Sender<Msg>,
    failures: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Msg {
    Email(Box<Queued>),
    Flush(oneshot::Sender<FlushReport>),
}

/// What a buffered mailer wrote since the previous flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Emails durably stored.
    pub written: u64,
    /// Emails that could not be stored, with the reason.
    pub failed: Vec<(EmailId, String)>,
}

/// Per-email options for [`Mailer::enqueue_with`].
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    idempotency_key: Option<String>,
    priority: i32,
    max_fails: Option<u32>,
    max_time: Option<Duration>,
    tags: Option<String>,
}

impl SendOptions {
    /// Enqueuing the same key again returns the first email's id and sends
    /// nothing more (durable mode; a buffered mailer returns a new id but
    /// still stores nothing twice).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
    /// Among due emails, higher priority is claimed first. Defaults to 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Overrides the server's `max-fails` for this email.
    pub fn max_fails(mut self, n: u32) -> Self {
        self.max_fails = Some(n);
        self
    }
    /// Overrides the server's `max-time` for this email.
    pub fn max_time(mut self, d: Duration) -> Self {
        self.max_time = Some(d);
        self
    }
    /// Free-form tags, stored as JSON text for your own queries.
    pub fn tags(mut self, json: impl Into<String>) -> Self {
        self.tags = Some(json.into());
        self
    }
}

/// Why an email was not handed off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailerError {
    /// The queue failed; the email was not stored.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// `send_later` was given a delay that does not parse.
    #[error("delay {value:?}: {reason} (expected e.g. \"30s\", \"5m\", \"2h 30m\")")]
    InvalidDelay {
        /// The rejected text.
        value: String,
        /// Why.
        reason: String,
    },
    /// An envelope address given alongside a raw message is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::Error),
    /// A raw message given to [`Mailer::enqueue_raw`] does not start with
    /// a well-formed header section; the server would refuse to send it.
    #[error("the raw message: {0}")]
    Raw(#[from] crate::ParseError),
    /// The email has no From or no recipients (possible for a parsed one).
    #[error("the email has no envelope: it needs a From and at least one recipient")]
    NoEnvelope,
    /// The buffer is full; the email was not taken. Slow down or flush.
    #[error("the mailer's buffer is full ({capacity} emails): the email was not taken")]
    BufferFull {
        /// The buffer's capacity.
        capacity: usize,
    },
    /// The configuration asks for something this build cannot do yet.
    #[error("not supported yet: {0}")]
    Unsupported(&'static str),
    /// The buffer's writer has stopped (the runtime is shutting down).
    #[error("the mailer's buffer is closed")]
    BufferClosed,
}

/// A delay for [`Mailer::send_later`]: a [`Duration`] or a humantime string
/// such as `"5m"` or `"1h 30m"`.
pub trait IntoDelay {
    /// Converts, or explains why not.
    fn into_delay(self) -> Result<Duration, MailerError>;
}

impl IntoDelay for Duration {
    fn into_delay(self) -> Result<Duration, MailerError> {
        Ok(self)
    }
}

impl IntoDelay for &str {
    fn into_delay(self) -> Result<Duration, MailerError> {
        humantime::parse_duration(self.trim()).map_err(|e| MailerError::InvalidDelay {
            value: self.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl IntoDelay for &String {
    fn into_delay(self) -> Result<Duration, MailerError> {
        self.as_str().into_delay()
    }
}

impl Mailer {
    /// A durable mailer on the embedded engine: the SQLite file at `path`
    /// (created if missing), shared with `email-server`.
    pub async fn embedded(path: impl AsRef<std::path::Path>) -> Result<Mailer, MailerError> {
        Ok(Mailer::new(Queue::Embedded(Embedded::open(path).await?)))
    }

    /// The mailer the configuration describes: its `email.queue.default`
    /// and, when `email.buffer` is above 0, a buffer of that size.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let (config, _source) = email::config::Config::discover(None)?;
    /// let mailer = email::Mailer::from_config(&config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_config(config: &crate::config::Config) -> Result<Mailer, MailerError> {
        let queue = config.email.queue();
        let mailer = match queue.engine {
            crate::config::QueueEngine::Embedded => Mailer::embedded(&queue.path).await?,
            crate::config::QueueEngine::Redis => {
                Mailer::new(Queue::Redis(crate::queue::RedisQueue::open(queue).await?))
            }
        };
        Ok(match config.email.buffer {
            0 => mailer,
            n => mailer.buffered(n),
        })
    }

    /// A durable mailer on any queue.
    pub fn new(queue: Queue) -> Mailer {
        Mailer {
            queue,
            buffer: None,
        }
    }

    /// Turns this mailer into a buffered one holding up to `capacity`
    /// emails in memory (the `email.buffer` key). Must be called inside a
    /// Tokio runtime: it starts the background writer.
    pub fn buffered(self, capacity: usize) -> Mailer {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let failures = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(self.queue.clone(), rx, failures.clone()));
        Mailer {
            queue: self.queue,
            buffer: Some(Buffer { tx, failures }),
        }
    }

    /// The queue this mailer writes to.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Sends as soon as possible. Returns the id once the email is durable
    /// (buffered: once it is in the buffer).
    pub async fn enqueue(&self, email: &Email) -> Result<EmailId, MailerError> {
        self.enqueue_with(email, None, &SendOptions::default())
            .await
    }

    /// Sends after `delay`: a [`Duration`] or a string like `"5m"`.
    pub async fn send_later(
        &self,
        email: &Email,
        delay: impl IntoDelay,
    ) -> Result<EmailId, MailerError> {
        let delay = delay.into_delay()?;
        let at = Timestamp::now()
            .checked_add(delay)
            .map_err(|e| MailerError::InvalidDelay {
                value: format!("{delay:?}"),
                reason: e.to_string(),
            })?;
        self.enqueue_with(email, Some(at), &SendOptions::default())
            .await
    }

    /// Sends at `at`. A time in the past means now; it is not an error.
    pub async fn send_at(&self, email: &Email, at: Timestamp) -> Result<EmailId, MailerError> {
        self.enqueue_with(email, Some(at), &SendOptions::default())
            .await
    }

    /// Sends at `at` (or now) with per-email options.
    pub async fn enqueue_with(
        &self,
        email: &Email,
        at: Option<Timestamp>,
        options: &SendOptions,
    ) -> Result<EmailId, MailerError> {
        let envelope = email.envelope().ok_or(MailerError::NoEnvelope)?;
        let queued = prepare_parts(
            envelope.mail_from.as_str().to_owned(),
            envelope
                .rcpt_to
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            email.to_bytes(),
            email,
            at,
            options,
        );
        self.store(queued).await
    }

    /// Enqueues a ready-made message byte for byte (`email-server send
    /// --eml`). The envelope is `mail_from` / `rcpt_to` when given, else it
    /// comes from the message's own headers (`parsed`, the same bytes
    /// parsed: Sender or From; To, Cc and Bcc).
    pub async fn enqueue_raw(
        &self,
        raw: &[u8],
        parsed: &Email,
        mail_from: Option<&str>,
        rcpt_to: &[String],
        at: Option<Timestamp>,
        options: &SendOptions,
    ) -> Result<EmailId, MailerError> {
        // The server checks the same before every attempt; refuse now
        // what it would only fail later.
        crate::Email::check_header_section(raw)?;
        let headers = parsed.envelope();
        let from = match mail_from {
            Some(f) => crate::Mailbox::parse_for("from", f)?
                .address()
                .as_str()
                .to_owned(),
            None => headers
                .as_ref()
                .ok_or(MailerError::NoEnvelope)?
                .mail_from
                .as_str()
                .to_owned(),
        };
        let rcpt: Vec<String> = if rcpt_to.is_empty() {
            let env = headers.as_ref().ok_or(MailerError::NoEnvelope)?;
            env.rcpt_to.iter().map(|a| a.as_str().to_owned()).collect()
        } else {
            let mut v = Vec::new();
            for r in rcpt_to {
                for m in crate::IntoMailboxes::into_mailboxes(r.as_str(), "to")? {
                    v.push(m.address().as_str().to_owned());
                }
            }
            v
        };
        let mut queued = prepare_parts(from, rcpt, raw.to_vec(), parsed, at, options);
        let mut seen = std::collections::HashSet::new();
        queued.rcpt_to.retain(|r| seen.insert(r.clone()));
        self.store(queued).await
    }

    async fn store(&self, queued: Queued) -> Result<EmailId, MailerError> {
        match &self.buffer {
            None => {
                let ids = self.queue.insert(std::slice::from_ref(&queued)).await?;
                Ok(ids.first().copied().unwrap_or(queued.id))
            }
            Some(buffer) => {
                let id = queued.id;
                buffer
                    .tx
                    .try_send(Msg::Email(Box::new(queued)))
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => MailerError::BufferFull {
                            capacity: buffer.tx.max_capacity(),
                        },
                        mpsc::error::TrySendError::Closed(_) => MailerError::BufferClosed,
                    })?;
                Ok(id)
            }
        }
    }

    /// Waits until everything buffered so far is written, and reports what
    /// was written and what failed since the previous flush. A durable
    /// mailer has nothing to flush.
    pub async fn flush(&self) -> Result<FlushReport, MailerError> {
        let Some(buffer) = &self.buffer else {
            return Ok(FlushReport::default());
        };
        let (tx, rx) = oneshot::channel();
        buffer
            .tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| MailerError::BufferClosed)?;
        rx.await.map_err(|_| MailerError::BufferClosed)
    }

    /// How many buffered emails could not be stored since the mailer was
    /// created.
    pub fn buffer_failures(&self) -> u64 {
        self.buffer
            .as_ref()
            .map_or(0, |b| b.failures.load(Ordering::Relaxed))
    }
}

impl Queued {
    /// An email ready for any queue: rendered once, with its envelope, its
    /// schedule (`at`, or now; a past time means now) and its options. For
    /// queues the `Mailer` does not drive itself, such as the transactional
    /// outbox of `email-server`.
    pub fn from_email(
        email: &Email,
        at: Option<Timestamp>,
        options: &SendOptions,
    ) -> Result<Queued, MailerError> {
        let envelope = email.envelope().ok_or(MailerError::NoEnvelope)?;
        Ok(prepare_parts(
            envelope.mail_from.as_str().to_owned(),
            envelope
                .rcpt_to
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            email.to_bytes(),
            email,
            at,
            options,
        ))
    }
}

/// Wraps a rendered message with its envelope and schedule.
fn prepare_parts(
    mail_from: String,
    rcpt_to: Vec<String>,
    raw: Vec<u8>,
    email: &Email,
    at: Option<Timestamp>,
    o: &SendOptions,
) -> Queued {
    let now = Timestamp::now().as_millisecond();
    let due = at.map_or(now, |t| t.as_millisecond().max(now));
    Queued {
        id: uuid::Uuid::now_v7(),
        created_at_ms: now,
        due_at_ms: due,
        mail_from,
        rcpt_to,
        raw,
        subject: email.subject().map(str::to_owned),
        message_id: email.message_id().map(str::to_owned),
        idempotency_key: o.idempotency_key.clone(),
        priority: o.priority,
        max_fails: o.max_fails,
        max_time_ms: o
            .max_time
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        tags: o.tags.clone(),
    }
}

/// The buffered mailer's background writer: drains the channel in batches,
/// one transaction each, retrying a failed batch a few times before giving
/// up on it. It never panics; it ends when every sender is gone.
async fn writer(queue: Queue, mut rx: mpsc::Receiver<Msg>, failures: Arc<AtomicU64>) {
    // Redis takes several pipelines at once on one connection, so batches
    // overlap there: the next is encoded and sent while Redis works on the
    // last. SQLite has one writer; a second batch would only wait for it.
    let overlap = match &queue {
        Queue::Redis(_) => REDIS_IN_FLIGHT,
        _ => 1,
    };
    let mut report = FlushReport::default();
    let mut in_flight: VecDeque<tokio::task::JoinHandle<FlushReport>> = VecDeque::new();
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Email(q) => batch.push(*q),
                // Everything sent before the flush marker is in `batch`.
                Msg::Flush(done) => {
                    flushes.push(done);
                    break;
                }
            }
            if batch.len() < BUFFER_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            while in_flight.len() >= overlap {
                if let Some(task) = in_flight.pop_front() {
                    settle(task, &mut report).await;
                }
            }
            in_flight.push_back(tokio::spawn(write_batch(
                queue.clone(),
                batch,
                failures.clone(),
            )));
        }
        if !flushes.is_empty() {
            while let Some(task) = in_flight.pop_front() {
                settle(task, &mut report).await;
            }
            for done in flushes {
                done.send(std::mem::take(&mut report)).ok();
            }
        }
    }
    while let Some(task) = in_flight.pop_front() {
        settle(task, &mut report).await;
    }
}

/// Adds a finished batch's outcome to `report`. A batch task cannot panic
/// (nothing in it unwraps), but if one ever did, it is logged, not
/// propagated: the writer goes on with the next batch.
async fn settle(task: tokio::task::JoinHandle<FlushReport>, report: &mut FlushReport) {
    match task.await {
        Ok(part) => {
            report.written += part.written;
            report.failed.extend(part.failed);
        }
        Err(e) => tracing::error!(error = %e, "a buffered batch's writer task failed"),
    }
}

async fn write_batch(queue: Queue, batch: Vec<Queued>, failures: Arc<AtomicU64>) -> FlushReport {
    let mut report = FlushReport::default();
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=4 {
        match queue.insert(&batch).await {
            Ok(_) => {
                report.written += batch.len() as u64;
                break;
            }
            Err(e) if attempt == 4 => {
                tracing::error!(emails = batch.len(), error = %e, "buffered emails could not be stored");
                failures.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let reason = e.to_string();
                report
                    .failed
                    .extend(batch.iter().map(|q| (q.id, reason.clone())));
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "buffered write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
    report
}
