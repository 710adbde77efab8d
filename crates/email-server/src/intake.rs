//! Intake: moves emails from the Redis stream into the store, and
//! acknowledges each one only after the store has committed it.
//!
//! With the embedded engine there is no intake (the queue file *is* the
//! store). With `engine: redis`, [`run`] is one task per server:
//!
//! | Step | Redis | Why |
//! |---|---|---|
//! | start | `XGROUP CREATE {name}:stream {name}:servers 0 MKSTREAM` | the group reads from the beginning, so emails enqueued before any server ran are not skipped |
//! | resume | `XREADGROUP … 0` | entries this consumer name read in a previous run and never acknowledged |
//! | read | `XREADGROUP … COUNT 500 BLOCK 1000 >` | new entries; the block keeps intake idle-cheap and prompt |
//! | store | `Store::insert` (idempotent by id) | one transaction per batch |
//! | ack | `XACK` after the commit | a crash between commit and ack only redelivers, and the store ignores the repeat |
//! | poison | `XADD {name}:dead` + `XACK`, atomically | a record that does not decode is kept with its reason, never retried in a loop |
//! | rescue | `XAUTOCLAIM … claim_idle` every `claim_every` | entries read by a server that died are taken over |
//! | refused | left pending; dead-lettered after `max_deliveries` | an email the store refuses (not a store outage) is retried when claimed again, then kept with the store's reason |
//! | trim | `XTRIM MINID ~` below the oldest unacknowledged entry | the stream stays small; nothing unstored is removed |
//!
//! After every batch stored, the dispatcher is woken so that an email due
//! now leaves at once. Neither Redis nor the store being down is fatal:
//! intake logs, backs off (up to `backoff_max`) and retries until shutdown,
//! with the entries it read still pending in Redis. A store error counts as
//! an outage when it would hit every email alike (busy, locked, full,
//! unreachable); any other error is a refusal of that email alone, and the
//! rest of the batch is stored one by one.
//!
//! ```no_run
//! # async fn demo(store: email_server::store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use email_server::intake::{self, IntakeSettings};
//!
//! let config = email::config::QueueConfig { name: "shop".into(), ..Default::default() };
//! let queue = email::queue::RedisQueue::open(&config).await?;
//! let (stop, stopped) = tokio::sync::watch::channel(false);
//! let wake = Arc::new(tokio::sync::Notify::new());
//! let task = tokio::spawn(intake::run(
//!     queue.clone(), store, "server-1".into(), wake, stopped, IntakeSettings::default(),
//! ));
//! println!("dead letters: {}", intake::dead_letters(&queue).await?);
//! stop.send(true)?;
//! task.await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use email::queue::redis::{Consumer, Entry};
use email::queue::{QueueError, Queued, RedisQueue};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::store::{Store, StoreError};

/// How intake reads. Every field has a default.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// Entries read (and stored in one transaction) at once. Defaults to 500.
    pub batch: usize,
    /// How long one read waits for new entries. Defaults to 1 s: also how
    /// soon a periodic claim or trim can run on an idle stream.
    pub block: Duration,
    /// An entry read by another server and unacknowledged for this long
    /// is taken over (that server is presumed dead). Defaults to 60 s;
    /// must exceed the slowest store commit.
    pub claim_idle: Duration,
    /// How often to look for such entries. Defaults to 30 s.
    pub claim_every: Duration,
    /// How often to trim acknowledged entries. Defaults to 30 s.
    pub trim_every: Duration,
    /// An email the store refuses (for itself, not because the store is
    /// down) is retried each time it is claimed, and after this many
    /// deliveries goes to the dead-letter stream with the store's reason.
    /// Defaults to 5.
    pub max_deliveries: u64,
    /// The first wait after an error. Defaults to 100 ms.
    pub backoff_min: Duration,
    /// The longest wait after repeated errors. Defaults to 10 s.
    pub backoff_max: Duration,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        IntakeSettings {
            batch: 500,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(60),
            claim_every: Duration::from_secs(30),
            trim_every: Duration::from_secs(30),
            max_deliveries: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// How many records are in the dead-letter stream, for `stats`.
pub async fn dead_letters(queue: &RedisQueue) -> Result<u64, QueueError> {
    queue.dead_letters().await
}

/// Why a step failed: either side may be down; both are retried.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the store is unavailable: {0}")]
    Store(StoreError),
}

/// Moves emails from `queue` into `store` as consumer `consumer` until
/// `shutdown` turns true (or its sender is dropped). Never returns early:
/// errors are logged and retried with backoff.
pub async fn run(
    queue: RedisQueue,
    store: Store,
    consumer: String,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    settings: IntakeSettings,
) {
    let consumer = match queue.consumer(&consumer).await {
        Ok(c) => c,
        Err(e) => {
            // Only a client that cannot be built at all ends up here; the
            // server keeps running so the store's emails still go out.
            tracing::error!(error = %e, "intake cannot start");
            return;
        }
    };
    let mut intake = Intake {
        consumer,
        store,
        wake,
        settings,
        ready: false,
        next_claim: Instant::now(),
        next_trim: Instant::now(),
    };
    tracing::info!(
        url = queue.url(),
        stream = queue.keys().stream,
        consumer = intake.consumer.name(),
        "intake: reading the Redis queue"
    );
    let mut backoff = intake.settings.backoff_min;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Dropping a read at shutdown is safe: whatever Redis delivered to
        // it stays pending and is claimed again.
        let step = tokio::select! {
            step = intake.step() => step,
            // A dropped sender means the server is gone: stop too.
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
        };
        match step {
            Ok(()) => backoff = intake.settings.backoff_min,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "intake failed; retrying");
                // Start over: recreate the group (Redis may have restarted
                // empty) and re-read our own pending entries, which include
                // a batch the store failed to take; otherwise that batch
                // would wait for XAUTOCLAIM's idle time.
                intake.ready = false;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    changed = shutdown.changed() => if changed.is_err() { break },
                }
                backoff = (backoff * 2).min(intake.settings.backoff_max);
            }
        }
    }
    tracing::info!("intake stopped");
}

struct Intake {
    consumer: Consumer,
    store: Store,
    wake: Arc<Notify>,
    settings: IntakeSettings,
    /// The group exists and what this consumer left pending was handled;
    /// false again after an error (Redis may have restarted empty).
    ready: bool,
    next_claim: Instant,
    next_trim: Instant,
}

impl Intake {
    async fn step(&mut self) -> Result<(), StepError> {
        if !self.ready {
            self.consumer.ensure_group().await?;
            self.resume().await?;
            self.ready = true;
        }
        let now = Instant::now();
        if now >= self.next_claim {
            // Scheduled before it runs: a failing claim must not starve reads.
            self.next_claim = now + self.settings.claim_every;
            self.claim().await?;
        }
        if now >= self.next_trim {
            let removed = self.consumer.trim().await?;
            if removed > 0 {
                tracing::debug!(removed, "trimmed acknowledged entries");
            }
            self.next_trim = now + self.settings.trim_every;
        }
        let entries = self
            .consumer
            .read(self.settings.batch, self.settings.block)
            .await?;
        self.process(entries).await
    }

    /// Entries this consumer name read before and never acknowledged.
    async fn resume(&mut self) -> Result<(), StepError> {
        let mut after = "0".to_owned();
        loop {
            let entries = self
                .consumer
                .own_pending(&after, self.settings.batch)
                .await?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            after = last.id.clone();
            self.process(entries).await?;
        }
    }

    /// Entries other (dead) consumers read and never acknowledged.
    async fn claim(&mut self) -> Result<(), StepError> {
        let mut start = "0-0".to_owned();
        // A bounded scan per round: a huge backlog of pending entries must
        // not keep intake from reading new ones.
        for _ in 0..100 {
            let (next, entries) = self
                .consumer
                .claim(self.settings.claim_idle, &start, self.settings.batch)
                .await?;
            if !entries.is_empty() {
                tracing::info!(
                    entries = entries.len(),
                    "took over entries a stopped server had read"
                );
            }
            self.process(entries).await?;
            if next == "0-0" {
                break;
            }
            start = next;
        }
        Ok(())
    }

    /// Stores what decodes, dead-letters what does not, then acknowledges
    /// both. What the store refuses stays pending until it is claimed
    /// again, up to `max_deliveries` times.
    async fn process(&mut self, entries: Vec<Entry>) -> Result<(), StepError> {
        let (mut good, mut emails): (Vec<&Entry>, Vec<Queued>) = (Vec::new(), Vec::new());
        let mut dead: Vec<(&Entry, String)> = Vec::new();
        let mut ack: Vec<String> = Vec::new();
        for entry in &entries {
            if entry.deleted {
                ack.push(entry.id.clone());
                continue;
            }
            match entry.decode() {
                Ok(q) => {
                    good.push(entry);
                    emails.push(q);
                }
                Err(e) => {
                    tracing::warn!(entry = entry.id, reason = %e, "queue record rejected: dead-lettered");
                    dead.push((entry, e.to_string()));
                }
            }
        }
        let (fates, outage) = self.store(&emails).await;
        let mut refused = Vec::new();
        let mut stored = 0;
        // Fewer fates than emails: the rest were not tried and stay pending.
        for (entry, fate) in good.into_iter().zip(fates) {
            match fate {
                Fate::Stored => {
                    ack.push(entry.id.clone());
                    stored += 1;
                }
                Fate::Refused(reason) => refused.push((entry, reason)),
            }
        }
        if !refused.is_empty() {
            let ids: Vec<String> = refused.iter().map(|(e, _)| e.id.clone()).collect();
            let counts = self.consumer.deliveries(&ids).await?;
            for ((entry, reason), n) in refused.into_iter().zip(counts) {
                if n >= self.settings.max_deliveries {
                    dead.push((entry, format!("the store refused it {n} times: {reason}")));
                } else {
                    tracing::warn!(entry = entry.id, deliveries = n, %reason, "the store refused a queued email; it will be retried");
                }
            }
        }
        // Dead letters first: if that fails nothing is acknowledged, and
        // the whole batch is simply read again.
        self.consumer.dead_letter(&dead).await?;
        self.consumer.ack(&ack).await?;
        if stored > 0 {
            self.wake.notify_one();
        }
        outage.map_or(Ok(()), |e| Err(StepError::Store(e)))
    }

    /// Inserts the batch in one transaction. If the store refuses it (as
    /// opposed to being unavailable), inserts one by one, so that one email
    /// it refuses does not hold up the others. Returns the fate of each
    /// email tried, in order, and the error if the store turned out to be
    /// unavailable (the emails after the last fate were not tried).
    async fn store(&self, emails: &[Queued]) -> (Vec<Fate>, Option<StoreError>) {
        if emails.is_empty() {
            return (Vec::new(), None);
        }
        let first = match self.store.insert(emails).await {
            Ok(_) => return (emails.iter().map(|_| Fate::Stored).collect(), None),
            Err(e) if e.is_unavailable() => return (Vec::new(), Some(e)),
            Err(e) => e,
        };
        if emails.len() == 1 {
            return (vec![Fate::Refused(first.to_string())], None);
        }
        let mut fates = Vec::with_capacity(emails.len());
        for q in emails {
            match self.store.insert(std::slice::from_ref(q)).await {
                Ok(_) => fates.push(Fate::Stored),
                Err(e) if e.is_unavailable() => return (fates, Some(e)),
                Err(e) => fates.push(Fate::Refused(e.to_string())),
            }
        }
        (fates, None)
    }
}

/// What became of one email handed to the store.
enum Fate {
    Stored,
    Refused(String),
}
