//! The `email-server` process under abuse: killed with SIGKILL over and
//! over while it delivers to a real SMTP server we did not write
//! (aiosmtpd), and run at trace level with credentials that must never
//! reach its logs.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use email::{Email, Mailer};
use email_server::store::{SqliteStore, Store};
use support::aiosmtpd::Aiosmtpd;
use support::fault_smtp::{Behaviour, FaultServer};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("email-process-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn write_config(dir: &Path, port: u16, extra_smtp: &str) -> PathBuf {
    let d = dir.display();
    let yaml = format!(
        "email:\n  queue:\n    default:\n      path: {d}/email.db\n  server:\n    max-fails: 10\n    max-time: 1h\n    \
         batch: 50\n    lease: 2s\n    database:\n      engine: sqlite3\n      path: {d}/email.db\n    smtp:\n      \
         host: 127.0.0.1\n      port: {port}\n      security: plain\n      max-connections: 4\n{extra_smtp}"
    );
    let path = dir.join("email.yaml");
    std::fs::write(&path, yaml).expect("config");
    path
}

/// Starts `email-server run` and returns once it is delivering (its
/// "delivering over SMTP" line), so that a signal sent afterwards meets
/// its handler. Its log is drained in the background so the pipe never
/// fills.
fn server(config: &Path, log: &str) -> Child {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_email-server"))
        .args([
            "--config",
            config.to_str().expect("path"),
            "--log",
            log,
            "run",
        ])
        .env_remove("EMAIL_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn email-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("delivering over SMTP") {
                ready_tx.send(()).ok();
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("email-server did not start within 30 s");
    child
}

async fn open_emails(store: &Store) -> (u64, u64) {
    let st = store
        .stats(email_server::dispatch::now_ms())
        .await
        .expect("stats")
        .states;
    let open = ["scheduled", "queued", "sending", "deferred"]
        .iter()
        .map(|k| st[*k])
        .sum();
    (open, st["sent"])
}

/// Enqueue 2,000 emails, SIGKILL the server repeatedly while it delivers,
/// then let it finish: every email is sent, none is stuck in `sending`, and
/// any email the relay received twice is marked a possible duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_nothing() {
    const N: usize = 2_000;
    let Some(sink) = Aiosmtpd::start().await else {
        return;
    };
    let dir = temp("crash");
    let config = write_config(&dir, sink.port, "");
    let db = dir.join("email.db");
    let mailer = Mailer::embedded(&db).await.expect("mailer").buffered(N);
    for i in 0..N {
        let e = Email::builder()
            .from("shop@example.com")
            .to(format!("user{i}@example.com").as_str())
            .subject(format!("order {i}"))
            .text("thanks")
            .build()
            .expect("build");
        mailer.enqueue(&e).await.expect("enqueue");
    }
    assert_eq!(mailer.flush().await.expect("flush").written, N as u64);
    let store = Store::Sqlite(SqliteStore::open(&db).await.expect("store"));

    let mut kills = 0;
    for round in 0..12u64 {
        let mut child = server(&config, "info");
        tokio::time::sleep(Duration::from_millis(250 + (round * 97) % 400)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        if open_emails(&store).await.0 == 0 {
            break;
        }
    }
    let mut child = server(&config, "info");
    let start = Instant::now();
    loop {
        let (open, _) = open_emails(&store).await;
        if open == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{open} emails still open after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(child.wait().expect("wait").success());

    let (_, sent) = open_emails(&store).await;
    assert_eq!(sent, N as u64, "every email sent after {kills} kills");
    // What the relay received, by Message-ID.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        let parsed = Email::parse(&m.data).expect("the relay got a whole message");
        *seen
            .entry(parsed.message_id().expect("id").to_owned())
            .or_default() += 1;
    }
    let rows = store
        .list(None, N as u32 + 10, email_server::dispatch::now_ms())
        .await
        .expect("list");
    assert_eq!(rows.len(), N);
    let mut dups = 0;
    for r in rows {
        let id = r.message_id.clone().expect("message id");
        let n = seen.get(&id).copied().unwrap_or(0);
        assert!(n >= 1, "{} was never received", r.id);
        if n > 1 {
            dups += 1;
            assert!(
                r.possible_duplicate,
                "{} received {n} times but not marked a possible duplicate",
                r.id
            );
        }
    }
    eprintln!("{kills} kills, {dups} possible duplicates (marked), {N} delivered");
    std::fs::remove_dir_all(&dir).ok();
}

/// The SMTP password, given in the config and in the environment, never
/// appears in the logs at trace level, nor in check-config's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    const PASSWORD: &str = "S3cr3t-Pa55w0rd!";
    let relay = FaultServer::start(Behaviour::new().auth("mailer", PASSWORD)).await;
    let dir = temp("secrets");
    let auth = "      auth:\n        username: mailer\n        password: not-the-real-one\n";
    let config = write_config(&dir, relay.addr().port(), auth);
    let db = dir.join("email.db");
    let mailer = Mailer::embedded(&db).await.expect("mailer");
    let e = Email::builder()
        .from("shop@example.com")
        .to("ann@example.com")
        .text("x")
        .build()
        .expect("build");
    mailer.enqueue(&e).await.expect("enqueue");

    // The real password comes from the environment, overriding the file.
    let child = Command::new(env!("CARGO_BIN_EXE_email-server"))
        .args([
            "--config",
            config.to_str().expect("path"),
            "--log",
            "trace",
            "run",
        ])
        .env("EMAIL_SMTP_PASSWORD", PASSWORD)
        .env_remove("EMAIL_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while relay.received().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("AUTH"), "trace logs show the session: {logs}");
    assert!(
        !logs.contains('\x1b'),
        "no colour codes in logs that do not go to a terminal"
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [
        PASSWORD.to_owned(),
        "not-the-real-one".to_owned(),
        b64.encode(format!("\0mailer\0{PASSWORD}")),
        b64.encode(PASSWORD),
    ] {
        assert!(!logs.contains(&secret), "secret {secret:?} in the logs");
    }
    let check = Command::new(env!("CARGO_BIN_EXE_email-server"))
        .args(["--config", config.to_str().expect("path"), "check-config"])
        .env("EMAIL_SMTP_PASSWORD", PASSWORD)
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && shown.contains("***"), "{shown}");
    assert!(!shown.contains(PASSWORD) && !shown.contains("not-the-real-one"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The Redis password and the database URL's password never reach the
/// logs either, at trace level, even when Redis refuses the password (an
/// error path that prints what it was given is the classic leak). The
/// machine's Redis has no password, so AUTH fails and intake logs and
/// retries; PostgreSQL trusts local connections, so the store works and
/// logs its statements.
#[tokio::test]
async fn redis_and_database_passwords_never_reach_the_logs() {
    const REDIS_PASSWORD: &str = "R3dis-Pa55w0rd!";
    const PG_PASSWORD: &str = "Pg-Pa55w0rd-9f";
    let required = std::env::var("EMAIL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1");
    let pg_url = std::env::var("EMAIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis_url =
        std::env::var("EMAIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let schema = format!("secrets_{}", std::process::id());
    let admin = match sqlx::PgPool::connect(&pg_url).await {
        Ok(pool) => pool,
        Err(e) if !required => {
            eprintln!("SKIPPED: PostgreSQL unreachable at {pg_url}: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL at {pg_url} is required: {e}"),
    };
    // Our own identifier ([a-z0-9_]), never input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&admin)
    .await
    .expect("schema");
    // The same servers, with a password put into each URL.
    let with_password = |url: &str, user: &str, password: &str| {
        let (scheme, rest) = url.split_once("://").expect("scheme");
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{user}:{password}@{rest}")
    };
    let redis = with_password(&redis_url, "", REDIS_PASSWORD);
    let pg = with_password(&pg_url, "postgres", PG_PASSWORD);
    let sep = if pg.contains('?') { '&' } else { '?' };
    let pg = format!("{pg}{sep}options=-csearch_path%3D{schema}");

    let relay = FaultServer::start(Behaviour::new()).await;
    let dir = temp("more-secrets");
    let yaml = format!(
        "email:\n  queue:\n    default:\n      engine: redis\n      url: '{redis}'\n      \
         name: 'test-secrets-{pid}'\n  server:\n    database:\n      engine: postgres\n      \
         url: '{pg}'\n    smtp:\n      host: 127.0.0.1\n      port: {port}\n      \
         security: plain\n",
        pid = std::process::id(),
        port = relay.addr().port()
    );
    let config = dir.join("email.yaml");
    std::fs::write(&config, yaml).expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_email-server"))
        .args([
            "--config",
            config.to_str().expect("path"),
            "--log",
            "trace",
            "run",
        ])
        .env_remove("EMAIL_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Long enough for the store to open and intake to fail and retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    let logs = String::from_utf8_lossy(&out.stderr);
    let check = Command::new(env!("CARGO_BIN_EXE_email-server"))
        .args(["--config", config.to_str().expect("path"), "check-config"])
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&check.stdout);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&admin)
    .await
    .expect("drop schema");
    std::fs::remove_dir_all(&dir).ok();

    // The error path ran: Redis refused the password, intake said so.
    assert!(
        logs.contains("intake failed"),
        "intake should have failed on Redis's AUTH and logged it:\n{logs}"
    );
    for secret in [REDIS_PASSWORD, PG_PASSWORD] {
        assert!(!logs.contains(secret), "{secret:?} in the logs:\n{logs}");
        assert!(
            !shown.contains(secret),
            "{secret:?} in check-config:\n{shown}"
        );
    }
    assert!(check.status.success() && shown.contains("***"), "{shown}");
}
