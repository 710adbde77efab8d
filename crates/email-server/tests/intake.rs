//! Intake against a real Redis (127.0.0.1:6379, or `EMAIL_TEST_REDIS_URL`)
//! and a SQLite store: records move into the store, are acknowledged only
//! after the commit, survive a consumer's crash, and poison records end in
//! the dead-letter stream without stopping the good ones. Each test has its
//! own key prefix and deletes its keys. Without Redis the tests are skipped
//! with a notice, unless `EMAIL_TEST_REQUIRE_SERVICES=1` (CI).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use email::config::{QueueConfig, QueueEngine, Secret};
use email::queue::redis::driver;
use email::queue::{Queue, RedisQueue};
use email::{Email, EmailId, Mailer};
use email_server::dispatch::{self, Settings, Transport, now_ms};
use email_server::intake::{self, IntakeSettings};
use email_server::store::{SqliteStore, Store};
use tokio::sync::{Notify, watch};

/// One test's Redis prefix and temporary directory; both removed on drop.
struct Case {
    queue: RedisQueue,
    name: String,
    client: driver::Client,
    dir: PathBuf,
    store: Store,
    stop: watch::Sender<bool>,
}

impl Drop for Case {
    fn drop(&mut self) {
        self.stop.send(true).ok();
        if let Ok(mut conn) = self.client.get_connection() {
            let keys: Vec<String> = driver::cmd("KEYS")
                .arg(format!("{}:*", self.name))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = driver::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn url() -> String {
    std::env::var("EMAIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn skip_or_fail(what: &str) {
    let required = std::env::var("EMAIL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{what} (required: EMAIL_TEST_REQUIRE_SERVICES=1)"
    );
    eprintln!("SKIPPED: {what}");
}

async fn case(test: &str) -> Option<Case> {
    let name = format!("test-intake-{test}-{}", uuid::Uuid::new_v4().simple());
    let config = QueueConfig {
        engine: QueueEngine::Redis,
        url: Some(Secret::new(url())),
        name: name.clone(),
        ..QueueConfig::default()
    };
    let queue = RedisQueue::open(&config).await.expect("open");
    if let Err(e) = queue.ping().await {
        skip_or_fail(&format!("no Redis at {}: {e}", url()));
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&name);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::Sqlite(
        SqliteStore::open(dir.join("email.db"))
            .await
            .expect("store"),
    );
    Some(Case {
        queue,
        name,
        client: driver::Client::open(url()).expect("client"),
        dir,
        store,
        stop: watch::channel(false).0,
    })
}

/// Quick rounds, so that claims and trims happen within a test.
fn fast() -> IntakeSettings {
    IntakeSettings {
        block: Duration::from_millis(100),
        claim_idle: Duration::from_millis(300),
        claim_every: Duration::from_millis(100),
        trim_every: Duration::from_millis(100),
        backoff_max: Duration::from_millis(300),
        ..IntakeSettings::default()
    }
}

impl Case {
    fn start_intake(&self, consumer: &str) -> Arc<Notify> {
        self.start_intake_via(self.queue.clone(), consumer)
    }

    /// Intake reading through `queue` (a proxy, say) into this case's store.
    fn start_intake_via(&self, queue: RedisQueue, consumer: &str) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        tokio::spawn(intake::run(
            queue,
            self.store.clone(),
            consumer.into(),
            wake.clone(),
            self.stop.subscribe(),
            fast(),
        ));
        wake
    }

    fn mailer(&self) -> Mailer {
        Mailer::new(Queue::Redis(self.queue.clone()))
    }

    async fn stored(&self) -> Vec<String> {
        let rows = self.store.list(None, 1000, now_ms()).await.expect("list");
        rows.into_iter().map(|r| r.id).collect()
    }

    async fn pending(&self) -> usize {
        let mut conn = self.conn().await;
        let reply: Result<driver::streams::StreamPendingReply, _> = driver::cmd("XPENDING")
            .arg(&self.queue.keys().stream)
            .arg(&self.queue.keys().group)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(reply) => reply.count(),
            // Intake has not created the group yet.
            Err(e) if e.code() == Some("NOGROUP") => 0,
            Err(e) => panic!("xpending: {e}"),
        }
    }

    async fn conn(&self) -> driver::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    async fn xadd(&self, fields: &[(&str, &[u8])]) {
        let mut conn = self.conn().await;
        let _: String = driver::cmd("XADD")
            .arg(&self.queue.keys().stream)
            .arg("*")
            .arg(fields)
            .query_async(&mut conn)
            .await
            .expect("xadd");
    }
}

async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn email(to: &str) -> Email {
    Email::builder()
        .from("shop@example.com")
        .to(to)
        .subject("Order")
        .text("Thanks")
        .build()
        .expect("build")
}

async fn enqueue(c: &Case, n: usize) -> Vec<EmailId> {
    let mailer = c.mailer();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            mailer
                .enqueue(&email(&format!("u{i}@example.com")))
                .await
                .expect("enqueue"),
        );
    }
    ids
}

#[tokio::test]
async fn records_reach_the_store_and_are_acknowledged_only_after_the_commit() {
    let Some(c) = case("ack").await else { return };
    // Enqueued before any server ran: the group starts at the beginning.
    let ids = enqueue(&c, 3).await;
    // Hold SQLite's write lock so intake's insert has to wait.
    let db = c.dir.join("email.db");
    let mut lock = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&db),
    )
    .await
    .expect("lock connection");
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .expect("lock");
    let wake = c.start_intake("server-1");
    let woken = wake.notified();
    until("intake to read the entries", || async {
        c.pending().await == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.pending().await,
        3,
        "nothing acknowledged before the commit"
    );
    assert!(c.stored().await.is_empty());
    sqlx::raw_sql("COMMIT")
        .execute(&mut lock)
        .await
        .expect("unlock");
    until("the store to commit and intake to ack", || async {
        c.stored().await.len() == 3 && c.pending().await == 0
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("dispatcher woken");
    let mut stored = c.stored().await;
    stored.sort();
    let mut want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(stored, want);
    assert_eq!(intake::dead_letters(&c.queue).await.expect("dead"), 0);
}

#[tokio::test]
async fn entries_a_crashed_server_read_are_claimed_and_stored_once() {
    let Some(c) = case("crash").await else { return };
    let ids = enqueue(&c, 3).await;
    // The same record added twice (a producer retrying after a timeout).
    let mut crashed = c.queue.consumer("crashed").await.expect("consumer");
    crashed.ensure_group().await.expect("group");
    let first = crashed
        .read(10, Duration::from_millis(10))
        .await
        .expect("read");
    assert_eq!(first.len(), 3);
    let fields: Vec<(&str, &[u8])> = first[0]
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    c.xadd(&fields).await;
    let dup = crashed
        .read(10, Duration::from_millis(10))
        .await
        .expect("read");
    assert_eq!(dup.len(), 1);
    // "crashed" never acknowledges: it died after reading.
    drop(crashed);
    assert_eq!(c.pending().await, 4);
    c.start_intake("survivor");
    until("the survivor to claim and store", || async {
        c.pending().await == 0 && c.stored().await.len() == 3
    })
    .await;
    let mut stored = c.stored().await;
    stored.sort();
    let mut want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(stored, want, "each email once");
}

#[tokio::test]
async fn poison_records_are_dead_lettered_with_reasons_and_good_ones_still_arrive() {
    let Some(c) = case("poison").await else {
        return;
    };
    let good = serde_json::to_vec(&serde_json::json!({
        "v": 1, "id": uuid::Uuid::now_v7().to_string(),
        "created_at": now_ms(), "not_before": now_ms(),
        "envelope": {"from": "shop@example.com", "to": ["ann@example.com"]},
        "message": base64(&email("ann@example.com").to_bytes()),
    }))
    .expect("json");
    let variant = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&good).expect("json");
        f(&mut v);
        serde_json::to_vec(&v).expect("json")
    };
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        ("record", b"{not json".to_vec(), "not a JSON object"),
        (
            "record",
            variant(&|v| v["v"] = 2.into()),
            "v: record version 2",
        ),
        (
            "record",
            variant(&|v| v["envelope"]["to"][0] = "nobody".into()),
            "envelope.to[0]",
        ),
        (
            "record",
            variant(&|v| v["message"] = "%%%".into()),
            "message: not standard base64",
        ),
        ("payload", b"{}".to_vec(), "record: required but missing"),
    ];
    for (field, value, _) in &poison {
        c.xadd(&[(field, value)]).await;
    }
    c.xadd(&[("record", &good)]).await;
    let later = enqueue(&c, 1).await;
    c.start_intake("server-1");
    until("good records stored, poison dead-lettered", || async {
        c.stored().await.len() == 2 && c.pending().await == 0
    })
    .await;
    assert!(c.stored().await.contains(&later[0].to_string()));
    assert_eq!(intake::dead_letters(&c.queue).await.expect("dead"), 5);
    let mut conn = c.conn().await;
    let dead: driver::streams::StreamRangeReply = driver::cmd("XRANGE")
        .arg(&c.queue.keys().dead)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    for (entry, (field, value, reason)) in dead.ids.iter().zip(&poison) {
        let got: String = entry.get("reason").expect("reason");
        assert!(got.contains(reason), "{got:?} should mention {reason:?}");
        assert!(entry.get::<String>("source_id").is_some());
        assert_eq!(
            entry.get::<Vec<u8>>(field).as_ref(),
            Some(value),
            "original kept"
        );
    }
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn a_python_producer_record_is_delivered_to_the_outbox() {
    let Some(c) = case("python").await else {
        return;
    };
    let importable = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        skip_or_fail("python3 cannot import redis (python3 -m pip install redis)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/py_producer.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &url(), &c.name, "zoe@example.org"])
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let outbox = c.dir.join("outbox");
    let wake = c.start_intake("server-1");
    tokio::spawn(dispatch::run(
        c.store.clone(),
        Transport::Outbox(outbox.clone()),
        Settings::default(),
        wake,
        c.stop.subscribe(),
    ));
    let eml = outbox.join(format!("{id}.eml"));
    until("the .eml file", || async { eml.exists() }).await;
    let raw = std::fs::read(&eml).expect("read .eml");
    let parsed = Email::parse(&raw).expect("parse");
    assert_eq!(parsed.subject(), Some("Hello from Python"));
    assert_eq!(
        parsed.text(),
        Some("Sent through the Redis queue.\n.a line starting with a dot\n")
    );
    let (row, _, _) = c.store.show(&id, now_ms()).await.expect("show");
    assert_eq!((row.state.as_str(), row.priority), ("sent", 1));
}

/// A TCP proxy to Redis that can be cut (every connection dropped, new
/// ones refused) and restored: a Redis outage without touching Redis.
struct Proxy {
    port: u16,
    up: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (up, _) = watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut down = state.subscribe();
                if !*down.borrow() {
                    continue; // refused: dropped at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }
}

#[tokio::test]
async fn intake_rides_out_a_redis_outage() {
    let Some(c) = case("outage").await else {
        return;
    };
    let info = c.client.get_connection_info();
    let driver::ConnectionAddr::Tcp(host, port) = info.addr() else {
        eprintln!("SKIPPED: the outage test proxies plain TCP only");
        return;
    };
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let through = QueueConfig {
        engine: QueueEngine::Redis,
        url: Some(Secret::new(url().replace(
            &format!("{host}:{port}"),
            &format!("127.0.0.1:{}", proxy.port),
        ))),
        name: c.name.clone(),
        ..QueueConfig::default()
    };
    c.start_intake_via(RedisQueue::open(&through).await.expect("open"), "server-1");
    enqueue(&c, 1).await;
    until("the first email", || async { c.stored().await.len() == 1 }).await;
    proxy.up.send_replace(false);
    enqueue(&c, 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.stored().await.len(),
        1,
        "nothing arrives while Redis is away"
    );
    proxy.up.send_replace(true);
    until("intake to reconnect and catch up", || async {
        c.stored().await.len() == 3 && c.pending().await == 0
    })
    .await;
}

#[tokio::test]
async fn the_server_runs_intake_for_a_redis_queue() {
    let Some(c) = case("server").await else {
        return;
    };
    let yaml = format!(
        "email:\n  queue:\n    default:\n      engine: redis\n      url: {}\n      name: {}\n  \
         server:\n    outbox: {}\n    database:\n      engine: sqlite3\n      path: {}\n",
        url(),
        c.name,
        c.dir.join("outbox").display(),
        c.dir.join("server.db").display(),
    );
    let config = email::config::Config::from_yaml_str(&yaml, "test.yaml").expect("config");
    let mailer = Mailer::from_config(&config).await.expect("mailer");
    assert!(mailer.queue().as_redis().is_some());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        email_server::run(&config, async {
            stopped.await.ok();
        })
        .await
    });
    let id = mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let eml = c.dir.join("outbox").join(format!("{id}.eml"));
    until(
        "the server to take it from Redis and deliver it",
        || async { eml.exists() },
    )
    .await;
    stop.send(()).ok();
    server.await.expect("join").expect("server ran cleanly");
}

#[tokio::test]
async fn an_email_the_store_refuses_is_dead_lettered_after_max_deliveries() {
    let Some(c) = case("refused").await else {
        return;
    };
    // The store refuses one particular email (as PostgreSQL would a value
    // it cannot hold); a trigger stands in for that.
    let db = c.dir.join("email.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&db),
    )
    .await
    .expect("connect");
    sqlx::raw_sql(
        "CREATE TRIGGER refuse BEFORE INSERT ON emails WHEN NEW.subject = 'refuse me' \
         BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END;",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");
    let mailer = c.mailer();
    let refuse = Email::builder()
        .from("shop@example.com")
        .to("ann@example.com")
        .subject("refuse me")
        .text("x")
        .build()
        .expect("build");
    let a = mailer.enqueue(&email("a@example.com")).await.expect("a");
    mailer.enqueue(&refuse).await.expect("refused one");
    let b = mailer.enqueue(&email("b@example.com")).await.expect("b");
    let wake = Arc::new(Notify::new());
    tokio::spawn(intake::run(
        c.queue.clone(),
        c.store.clone(),
        "server-1".into(),
        wake,
        c.stop.subscribe(),
        IntakeSettings {
            max_deliveries: 2,
            ..fast()
        },
    ));
    until("the others stored", || async {
        c.stored().await.len() == 2
    })
    .await;
    let mut stored = c.stored().await;
    stored.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(stored, want);
    until("the refused one dead-lettered", || async {
        c.pending().await == 0
    })
    .await;
    let mut redis = c.conn().await;
    let dead: driver::streams::StreamRangeReply = driver::cmd("XRANGE")
        .arg(&c.queue.keys().dead)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("xrange");
    assert_eq!(dead.ids.len(), 1);
    let reason: String = dead.ids[0].get("reason").expect("reason");
    assert!(
        reason.starts_with("the store refused it 2 times"),
        "{reason}"
    );
    assert!(reason.contains("refused by the test trigger"), "{reason}");
}
