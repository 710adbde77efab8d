//! The Redis queue engine against a real Redis (127.0.0.1:6379, or
//! `EMAIL_TEST_REDIS_URL`). Each test has its own key prefix, so they run in
//! parallel, and deletes its keys at the end. Without Redis the tests are
//! skipped with a notice, unless `EMAIL_TEST_REQUIRE_SERVICES=1` (CI), where
//! they fail.

use std::time::{Duration, Instant};

use email::config::{QueueConfig, QueueEngine, Secret};
use email::queue::redis::{Consumer, driver};
use email::queue::{Queue, QueueError, Queued, RedisQueue};
use email::{Email, Mailer, SendOptions};

/// A queue under a unique prefix; its keys are deleted on drop.
struct TestQueue {
    queue: RedisQueue,
    name: String,
    client: driver::Client,
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let Ok(mut conn) = self.client.get_connection() else {
            return;
        };
        let keys: Vec<String> = driver::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = driver::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

fn url() -> String {
    std::env::var("EMAIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

async fn redis(test: &str) -> Option<TestQueue> {
    let name = format!("test-{test}-{}", uuid::Uuid::new_v4().simple());
    let config = QueueConfig {
        engine: QueueEngine::Redis,
        url: Some(Secret::new(url())),
        name: name.clone(),
        ..QueueConfig::default()
    };
    let queue = RedisQueue::open(&config).await.expect("open");
    if let Err(e) = queue.ping().await {
        let required = std::env::var("EMAIL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(!required, "Redis at {} is required: {e}", url());
        eprintln!("SKIPPED: no Redis at {} ({e})", url());
        return None;
    }
    let client = driver::Client::open(url()).expect("client");
    Some(TestQueue {
        queue,
        name,
        client,
    })
}

impl TestQueue {
    async fn conn(&self) -> driver::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    async fn len(&self, key: &str) -> u64 {
        driver::cmd("XLEN")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .expect("XLEN")
    }

    /// Every record in the stream, decoded.
    async fn records(&self) -> Vec<Queued> {
        let mut c = self.queue.consumer("inspector").await.expect("consumer");
        c.ensure_group().await.expect("group");
        let entries = c
            .read(10_000, Duration::from_millis(10))
            .await
            .expect("read");
        entries
            .iter()
            .map(|e| e.decode().expect("decode"))
            .collect()
    }

    async fn consumer(&self, name: &str) -> Consumer {
        let mut c = self.queue.consumer(name).await.expect("consumer");
        c.ensure_group().await.expect("group");
        c
    }
}

fn email(to: &str) -> Email {
    Email::builder()
        .from("shop@example.com")
        .to(to)
        .bcc("audit@example.com")
        .subject("Order")
        .text("Thanks\n.\nbye")
        .build()
        .expect("build")
}

#[tokio::test]
async fn durable_enqueue_returns_after_xadd_and_the_record_decodes() {
    let Some(t) = redis("durable").await else {
        return;
    };
    let mailer = Mailer::new(Queue::Redis(t.queue.clone()));
    let e = email("ann@example.com");
    let id = mailer.send_later(&e, "5m").await.expect("enqueue");
    // Returned means acknowledged: the entry is there without waiting.
    let records = t.records().await;
    assert_eq!(records.len(), 1);
    let q = &records[0];
    assert_eq!(q.id, id);
    assert_eq!(q.raw, e.to_bytes());
    assert_eq!(q.mail_from, "shop@example.com");
    assert_eq!(q.rcpt_to, ["ann@example.com", "audit@example.com"]);
    assert_eq!(q.subject.as_deref(), Some("Order"));
    assert!(q.due_at_ms >= q.created_at_ms + 299_000);
    assert_eq!(t.queue.dead_letters().await.expect("xlen"), 0);
}

#[tokio::test]
async fn an_idempotency_key_is_stored_once() {
    let Some(t) = redis("idem").await else { return };
    let mailer = Mailer::new(Queue::Redis(t.queue.clone()));
    let once = SendOptions::default().idempotency_key("order-42");
    let first = mailer
        .enqueue_with(&email("a@example.com"), None, &once)
        .await
        .expect("1");
    let again = mailer
        .enqueue_with(&email("b@example.com"), None, &once)
        .await
        .expect("2");
    assert_eq!(first, again);
    assert_eq!(t.len(&t.queue.keys().stream).await, 1);
    // Within one pipelined batch too.
    let mk = |to: &str| {
        let mut q = queued(&email(to));
        q.idempotency_key = Some("batch-key".into());
        q
    };
    let ids = t
        .queue
        .insert(&[mk("c@example.com"), mk("d@example.com")])
        .await
        .expect("batch");
    assert_eq!(ids[0], ids[1]);
    assert_eq!(t.len(&t.queue.keys().stream).await, 2);
    let mut conn = t.conn().await;
    let ttl: i64 = driver::cmd("TTL")
        .arg(t.queue.keys().idempotency("order-42"))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!(ttl > 6 * 24 * 3600, "ttl {ttl}");
}

/// A queued email as `Mailer` would make it, for `Queue::insert` directly.
fn queued(e: &Email) -> Queued {
    let now = jiff::Timestamp::now().as_millisecond();
    Queued {
        id: uuid::Uuid::now_v7(),
        created_at_ms: now,
        due_at_ms: now,
        mail_from: "shop@example.com".into(),
        rcpt_to: vec!["x@example.com".into()],
        raw: e.to_bytes(),
        subject: None,
        message_id: None,
        idempotency_key: None,
        priority: 0,
        max_fails: None,
        max_time_ms: None,
        tags: None,
    }
}

#[tokio::test]
async fn a_buffered_mailer_pipelines_and_flushes_everything() {
    let Some(t) = redis("buffered").await else {
        return;
    };
    let mailer = Mailer::new(Queue::Redis(t.queue.clone())).buffered(2_000);
    let mut ids = Vec::new();
    for i in 0..1_500 {
        ids.push(
            mailer
                .enqueue(&email(&format!("u{i}@example.com")))
                .await
                .expect("buffer"),
        );
    }
    let report = mailer.flush().await.expect("flush");
    assert_eq!(report.written, 1_500);
    assert!(report.failed.is_empty());
    assert_eq!(t.len(&t.queue.keys().stream).await, 1_500);
    let stored: Vec<_> = t.records().await.iter().map(|q| q.id).collect();
    assert_eq!(stored, ids, "in order, each once");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_within_the_timeout() {
    // Port 1: connection refused at once.
    let refused = QueueConfig {
        engine: QueueEngine::Redis,
        host: "127.0.0.1".into(),
        port: 1,
        ..QueueConfig::default()
    };
    // A listener that accepts and never answers: the case a timeout is for.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let silent = QueueConfig {
        port,
        ..refused.clone()
    };
    for config in [refused, silent] {
        let limit = Duration::from_millis(700);
        let queue = RedisQueue::open(&config)
            .await
            .expect("open is lazy")
            .with_timeout(limit)
            .expect("timeout");
        let mailer = Mailer::new(Queue::Redis(queue));
        let started = Instant::now();
        let err = mailer
            .enqueue(&email("a@example.com"))
            .await
            .expect_err("no redis");
        let took = started.elapsed();
        assert!(took < limit + Duration::from_millis(500), "took {took:?}");
        let email::MailerError::Queue(e) = &err else {
            panic!("{err}")
        };
        assert!(e.is_transient(), "{e:?}");
    }
}

#[tokio::test]
async fn a_bad_url_is_a_config_error_and_tls_urls_are_accepted() {
    let bad = QueueConfig {
        url: Some(Secret::new("http://x")),
        ..QueueConfig::default()
    };
    let err = RedisQueue::open(&bad).await.expect_err("bad url");
    assert!(matches!(err, QueueError::Config(_)), "{err:?}");
    let tls = QueueConfig {
        url: Some(Secret::new("rediss://:secret@redis.example.com:6380/2")),
        ..QueueConfig::default()
    };
    let q = RedisQueue::open(&tls).await.expect("rediss is supported");
    assert!(!format!("{q:?}").contains("secret"));
}

#[tokio::test]
async fn trimming_keeps_every_unacknowledged_entry() {
    let Some(t) = redis("trim").await else { return };
    let batch: Vec<_> = (0..400).map(|_| queued(&email("a@example.com"))).collect();
    t.queue.insert(&batch).await.expect("insert");
    let mut c = t.consumer("c1").await;
    let read = c.read(400, Duration::from_millis(10)).await.expect("read");
    assert_eq!(read.len(), 400);
    // Acknowledge all but the last 150; one in the middle stays pending too.
    let mut ack: Vec<String> = read[..250].iter().map(|e| e.id.clone()).collect();
    let kept = ack.remove(120);
    c.ack(&ack).await.expect("ack");
    c.trim().await.expect("trim");
    let mut conn = t.conn().await;
    let left: driver::streams::StreamRangeReply = driver::cmd("XRANGE")
        .arg(&t.queue.keys().stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    let left: Vec<&str> = left.ids.iter().map(|e| e.id.as_str()).collect();
    assert!(left.contains(&kept.as_str()));
    for e in &read[250..] {
        assert!(left.contains(&e.id.as_str()));
    }
    // Everything acknowledged: the stream shrinks (Redis trims whole nodes).
    let rest: Vec<String> = read.iter().map(|e| e.id.clone()).collect();
    c.ack(&rest).await.expect("ack");
    c.trim().await.expect("trim");
    assert!(t.len(&t.queue.keys().stream).await < 400);
}
