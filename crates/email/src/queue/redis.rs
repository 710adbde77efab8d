//! The Redis engine: a stream that any number of applications append to
//! and any number of `email-server`s read through one consumer group.
//!
//! This file owns the engine end to end: the key names, the push
//! ([`RedisQueue::insert`]) and the pop ([`Consumer`]: read, acknowledge,
//! claim from dead consumers, dead-letter, trim). The record itself is
//! [`crate::record`]; the server's loop around the pop is
//! `email_server::intake`.
//!
//! | Key (for `name: email`) | Type | Holds |
//! |---|---|---|
//! | `email:stream` | stream | one entry per email: field `record` = a v1 record (JSON) |
//! | `email:servers` | consumer group of `email:stream` | what each server has read and not yet stored |
//! | `email:dead` | stream | records that did not decode: `reason`, `source_id`, `consumer`, then the original fields |
//! | `email:idem:KEY` | string, 7-day TTL | the id first enqueued with idempotency key `KEY` |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use email::config::QueueConfig;
//! use email::queue::{Queue, RedisQueue};
//!
//! let config = QueueConfig { name: "shop".into(), ..QueueConfig::default() };
//! let queue = RedisQueue::open(&config).await?;  // connects on first use
//! let mailer = email::Mailer::new(Queue::Redis(queue));
//! # Ok(()) }
//! ```
//!
//! **Durability.** `insert` returns once Redis has replied to the XADD;
//! whether that survives a Redis crash is Redis's persistence setting
//! (`appendonly yes` with `appendfsync always` for the strongest promise).
//! A batch is one pipeline: one round trip for up to a thousand emails.
//!
//! **Never hangs.** Every call is bounded by [`RedisQueue::timeout`]
//! (default 5 s) and fails with [`QueueError::Timeout`] or
//! [`QueueError::Unavailable`]; the connection is re-established in the
//! background, so the next call may succeed.
//!
//! **Acknowledged only once stored.** A server acknowledges an entry only
//! after its store has committed it; an entry read by a server that died is
//! claimed by another after [`Consumer::claim`]'s idle time. Delivery from
//! the stream is therefore at least once, and the store inserts each id
//! once. The stream is trimmed only below the oldest entry not yet
//! acknowledged ([`Consumer::trim`]); the stream belongs to this group, so
//! do not attach other consumer groups that expect to keep old entries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::streams::{StreamInfoGroupsReply, StreamPendingCountReply, StreamPendingReply};
use ::redis::{Client, RedisError, Value};

use super::{EmailId, QueueError, Queued};
use crate::config::{QueueConfig, redact_url};
use crate::record::{self, RecordError};

/// The `redis` crate (1.x) this engine is built on, re-exported so that
/// tools and tests can speak to the same server with the same client, e.g.
/// to read the dead-letter stream.
pub use ::redis as driver;

/// The stream entry field that holds the record.
pub const FIELD: &str = "record";

/// How long an idempotency key is remembered in Redis (the store keeps it
/// for as long as it keeps the email).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default bound on every call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Dead letters kept at most (roughly: Redis trims whole nodes). They are
/// evidence for an operator, not work; the cap keeps a broken producer
/// from filling Redis.
pub const DEAD_LETTERS_KEPT: usize = 100_000;

/// Adds a record unless its idempotency key was used before; returns the
/// id that owns the key. One script, so the check and the add are atomic.
/// KEYS: stream, idempotency key. ARGV: record, id, TTL in seconds.
const ENQUEUE_ONCE: &str = r"
local first = redis.call('GET', KEYS[2])
if first then return first end
redis.call('XADD', KEYS[1], '*', 'record', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return ARGV[2]
";

/// The Redis key names for one queue `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `{name}:stream`: the emails.
    pub stream: String,
    /// `{name}:dead`: records that did not decode.
    pub dead: String,
    /// `{name}:servers`: the servers' consumer group.
    pub group: String,
    prefix: String,
}

impl Keys {
    /// The keys of queue `name` (`email.queue.default.name`).
    pub fn new(name: &str) -> Keys {
        Keys {
            stream: format!("{name}:stream"),
            dead: format!("{name}:dead"),
            group: format!("{name}:servers"),
            prefix: name.to_owned(),
        }
    }

    /// `{name}:idem:{key}`: remembers the first id enqueued with `key`.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }
}

/// A handle on the Redis queue. Cheap to clone; clones share one
/// multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct RedisQueue(Arc<Inner>);

struct Inner {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    /// The URL with its password replaced by `***`, for errors and logs.
    url: String,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &self.0.url)
            .field("keys", &self.0.keys)
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// A queue on the server [`QueueConfig::redis_url`] names (`rediss://`
    /// for TLS, verified against the webpki roots), with keys from
    /// [`QueueConfig::name`]. Only the URL is checked here: the connection
    /// is made on first use, so an application can start while Redis is
    /// down (see [`ping`](Self::ping) to check it).
    pub async fn open(config: &QueueConfig) -> Result<RedisQueue, QueueError> {
        let url = config.redis_url();
        let shown = redact_url(url.expose());
        let client = Client::open(url.expose())
            .map_err(|e| QueueError::Config(format!("redis url {shown}: {e}")))?;
        if config.name.is_empty() {
            return Err(QueueError::Config("queue name must not be empty".into()));
        }
        let conn = manager(&client, DEFAULT_TIMEOUT)?;
        Ok(RedisQueue(Arc::new(Inner {
            client,
            conn,
            keys: Keys::new(&config.name),
            timeout: DEFAULT_TIMEOUT,
            url: shown,
        })))
    }

    /// Bounds every call (connecting included) by `timeout` instead of
    /// [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(self, timeout: Duration) -> Result<RedisQueue, QueueError> {
        let old = &self.0;
        Ok(RedisQueue(Arc::new(Inner {
            client: old.client.clone(),
            conn: manager(&old.client, timeout)?,
            keys: old.keys.clone(),
            timeout,
            url: old.url.clone(),
        })))
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.0.keys
    }

    /// The server's URL, password redacted.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.0.conn.clone();
        bounded(
            self.0.timeout,
            ::redis::cmd("PING").query_async::<()>(&mut conn),
        )
        .await
    }

    /// Appends a batch to the stream in one pipeline and returns each
    /// email's id once Redis has acknowledged all of them. An email whose
    /// idempotency key was used in the last [`IDEMPOTENCY_TTL`] is not
    /// added; the first email's id is returned instead.
    ///
    /// On an error some of the batch may have been added; inserting the
    /// same batch again is safe (see [`QueueError::Timeout`]).
    pub async fn insert(&self, batch: &[Queued]) -> Result<Vec<EmailId>, QueueError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for q in batch {
            let rec = record::encode(q);
            match &q.idempotency_key {
                None => pipe
                    .cmd("XADD")
                    .arg(&self.0.keys.stream)
                    .arg("*")
                    .arg(FIELD)
                    .arg(rec),
                Some(key) => pipe
                    .cmd("EVAL")
                    .arg(ENQUEUE_ONCE)
                    .arg(2)
                    .arg(&self.0.keys.stream)
                    .arg(self.0.keys.idempotency(key))
                    .arg(rec)
                    .arg(q.id.to_string())
                    .arg(IDEMPOTENCY_TTL.as_secs()),
            };
        }
        let mut conn = self.0.conn.clone();
        let replies: Vec<Value> = bounded(self.0.timeout, pipe.query_async(&mut conn)).await?;
        batch
            .iter()
            .zip(replies)
            .map(|(q, reply)| match (&q.idempotency_key, reply) {
                (None, _) => Ok(q.id),
                (Some(_), reply) => text(&reply)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| QueueError::Write(format!("unexpected reply {reply:?}"))),
            })
            .collect()
    }

    /// How many records are in the dead-letter stream (for `stats`).
    pub async fn dead_letters(&self) -> Result<u64, QueueError> {
        let mut conn = self.0.conn.clone();
        let cmd = ::redis::cmd("XLEN").arg(&self.0.keys.dead).to_owned();
        bounded(self.0.timeout, cmd.query_async(&mut conn)).await
    }

    /// A reader in the servers' group under `name`, on a connection of its
    /// own: its blocking reads must not hold up other calls.
    pub async fn consumer(&self, name: &str) -> Result<Consumer, QueueError> {
        Ok(Consumer {
            // Blocking reads wait up to their own deadline on top.
            conn: manager(&self.0.client, self.0.timeout + MAX_BLOCK)?,
            keys: self.0.keys.clone(),
            name: name.to_owned(),
            timeout: self.0.timeout,
        })
    }
}

/// The longest [`Consumer::read`] block; reads are bounded by it plus the
/// queue's timeout.
pub const MAX_BLOCK: Duration = Duration::from_secs(10);

/// One stream entry as read by a [`Consumer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id (`1700000000000-0`), not the email's id.
    pub id: String,
    /// The fields in order; a valid entry has one, [`FIELD`].
    pub fields: Vec<(String, Vec<u8>)>,
    /// The entry was deleted from the stream while pending: nothing to
    /// store, only to acknowledge.
    pub deleted: bool,
}

impl Entry {
    /// The email this entry carries, validated.
    pub fn decode(&self) -> Result<Queued, RecordError> {
        let value = self
            .fields
            .iter()
            .find(|(k, _)| k == FIELD)
            .map(|(_, v)| v)
            .ok_or(RecordError::Missing { field: FIELD })?;
        record::decode(value)
    }
}

/// Reads the stream as one member of the servers' consumer group. Made by
/// [`RedisQueue::consumer`]; used by `email_server::intake`.
pub struct Consumer {
    conn: ConnectionManager,
    keys: Keys,
    name: String,
    timeout: Duration,
}

impl Consumer {
    /// This consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the stream and the group if missing. The group starts at
    /// the beginning of the stream, so emails enqueued before any server
    /// ever ran are read too.
    pub async fn ensure_group(&mut self) -> Result<(), QueueError> {
        let cmd = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg("0")
            .arg("MKSTREAM")
            .to_owned();
        match tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut self.conn)).await {
            Ok(Err(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Ok(result) => result.map_err(from_redis),
            Err(_) => Err(QueueError::Timeout {
                after: self.timeout,
            }),
        }
    }

    /// Up to `count` entries never delivered to any consumer, waiting up
    /// to `block` (at most [`MAX_BLOCK`]) for the first.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>, QueueError> {
        let block = block.min(MAX_BLOCK);
        self.read_from(">", count, Some(block)).await
    }

    /// Up to `count` entries delivered to this consumer (under this name)
    /// and not acknowledged, after stream id `after` (`"0"` to start):
    /// what a previous run under the same name left unfinished.
    pub async fn own_pending(
        &mut self,
        after: &str,
        count: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        self.read_from(after, count, None).await
    }

    async fn read_from(
        &mut self,
        id: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, QueueError> {
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.keys.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK")
                .arg(u64::try_from(b.as_millis()).unwrap_or(u64::MAX));
        }
        cmd.arg("STREAMS").arg(&self.keys.stream).arg(id);
        let limit = self.timeout + block.unwrap_or_default();
        let reply: Value = bounded(limit, cmd.query_async(&mut self.conn)).await?;
        // RESP2: [[stream, entries]] or nil on timeout; RESP3: {stream: entries}.
        let per_stream = match reply {
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .collect(),
            Value::Map(map) => map.into_iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        };
        Ok(per_stream.into_iter().flat_map(entries).collect())
    }

    /// Takes over up to `count` entries that other consumers read more
    /// than `min_idle` ago and never acknowledged (they died), scanning
    /// the pending list from `start` (`"0-0"` to begin). Returns where to
    /// continue (`"0-0"` when the scan is complete) and the entries.
    pub async fn claim(
        &mut self,
        min_idle: Duration,
        start: &str,
        count: usize,
    ) -> Result<(String, Vec<Entry>), QueueError> {
        let cmd = ::redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(&self.name)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(start)
            .arg("COUNT")
            .arg(count.max(1))
            .to_owned();
        let reply: Value = bounded(self.timeout, cmd.query_async(&mut self.conn)).await?;
        let Value::Array(parts) = reply else {
            return Err(QueueError::Write(format!(
                "unexpected XAUTOCLAIM reply {reply:?}"
            )));
        };
        let mut parts = parts.into_iter();
        let next = parts
            .next()
            .as_ref()
            .and_then(text)
            .unwrap_or_else(|| "0-0".into());
        let mut claimed = parts.next().map(entries).unwrap_or_default();
        // Redis 7 lists entries trimmed while pending separately and drops
        // them from the pending list itself; nothing to do for those.
        claimed.retain(|e| !e.id.is_empty());
        Ok((next, claimed))
    }

    /// Acknowledges entries: they are stored and will not be delivered
    /// again.
    pub async fn ack(&mut self, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let cmd = ::redis::cmd("XACK")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(ids)
            .to_owned();
        bounded(self.timeout, cmd.query_async::<()>(&mut self.conn)).await
    }

    /// How many times each entry has been delivered (read or claimed), in
    /// order; 0 for an entry no longer pending.
    pub async fn deliveries(&mut self, ids: &[String]) -> Result<Vec<u64>, QueueError> {
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(&self.keys.group)
                .arg(id)
                .arg(id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> =
            bounded(self.timeout, pipe.query_async(&mut self.conn)).await?;
        Ok(replies
            .iter()
            .map(|r| r.ids.first().map_or(0, |p| p.times_delivered as u64))
            .collect())
    }

    /// Moves entries that cannot be stored to the dead-letter stream, each
    /// with its reason, and acknowledges them, atomically (MULTI/EXEC): an
    /// entry is never both lost and acknowledged.
    pub async fn dead_letter(&mut self, dead: &[(&Entry, String)]) -> Result<(), QueueError> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for (entry, reason) in dead {
            let add = pipe
                .cmd("XADD")
                .arg(&self.keys.dead)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTERS_KEPT)
                .arg("*")
                .arg("reason")
                .arg(reason)
                .arg("source_id")
                .arg(&entry.id)
                .arg("consumer")
                .arg(&self.name);
            for (k, v) in &entry.fields {
                add.arg(k).arg(v);
            }
            add.ignore();
        }
        let ids: Vec<&str> = dead.iter().map(|(e, _)| e.id.as_str()).collect();
        pipe.cmd("XACK")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(ids)
            .ignore();
        bounded(self.timeout, pipe.query_async::<()>(&mut self.conn)).await
    }

    /// Removes the entries every consumer has acknowledged: those older
    /// than both the oldest pending entry and the group's last delivered
    /// one. Returns how many were removed.
    pub async fn trim(&mut self) -> Result<u64, QueueError> {
        // The last delivered id is read *before* the pending list: an entry
        // older than it that is not pending afterwards was acknowledged,
        // whatever other servers read in between.
        let cmd = ::redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.keys.stream)
            .to_owned();
        let groups: StreamInfoGroupsReply =
            bounded(self.timeout, cmd.query_async(&mut self.conn)).await?;
        let Some(group) = groups.groups.iter().find(|g| g.name == self.keys.group) else {
            return Ok(0);
        };
        let mut min = group.last_delivered_id.clone();
        let cmd = ::redis::cmd("XPENDING")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .to_owned();
        let pending: StreamPendingReply =
            bounded(self.timeout, cmd.query_async(&mut self.conn)).await?;
        if let StreamPendingReply::Data(p) = pending
            && stream_id(&p.start_id) < stream_id(&min)
        {
            min = p.start_id;
        }
        if stream_id(&min) == (0, 0) {
            return Ok(0);
        }
        // `~`: Redis removes only whole nodes below the id, which is cheap;
        // the few entries left over go on a later trim.
        let cmd = ::redis::cmd("XTRIM")
            .arg(&self.keys.stream)
            .arg("MINID")
            .arg("~")
            .arg(&min)
            .to_owned();
        bounded(self.timeout, cmd.query_async(&mut self.conn)).await
    }
}

/// `1700000000000-3` → (1700000000000, 3), for comparing stream ids.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Parses `[[id, [field, value, …] | nil], …]`.
fn entries(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let mut pair = pair.into_iter();
            let id = pair.next().as_ref().and_then(text)?;
            let (fields, deleted) = match pair.next() {
                Some(Value::Array(kv)) => (pairs(kv), false),
                Some(Value::Map(kv)) => (
                    kv.into_iter()
                        .filter_map(|(k, v)| Some((text(&k)?, bytes(v)?)))
                        .collect(),
                    false,
                ),
                _ => (Vec::new(), true),
            };
            Some(Entry {
                id,
                fields,
                deleted,
            })
        })
        .collect()
}

fn pairs(kv: Vec<Value>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(kv.len() / 2);
    let mut it = kv.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (text(&k), bytes(v)) {
            out.push((k, v));
        }
    }
    out
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A lazily connecting, self-reconnecting connection whose connect and
/// response timeouts are bounded, so that no await on it is unbounded.
fn manager(client: &Client, timeout: Duration) -> Result<ConnectionManager, QueueError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // A few quick reconnection attempts per call; the caller's own
        // backoff (intake) or retry (buffered mailer) does the rest.
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| QueueError::Config(e.to_string()))
}

/// Awaits a Redis call for at most `limit`.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(from_redis),
        Err(_) => Err(QueueError::Timeout { after: limit }),
    }
}

fn from_redis(e: RedisError) -> QueueError {
    if e.is_timeout() {
        // The response timeout fired inside the client.
        QueueError::Unavailable(format!("no answer: {e}"))
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        QueueError::Unavailable(e.to_string())
    } else if e.code() == Some("OOM") {
        QueueError::Full
    } else {
        QueueError::Write(e.to_string())
    }
}
