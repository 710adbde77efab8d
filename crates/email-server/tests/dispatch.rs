//! The dispatcher end to end: Mailer → SQLite → dispatcher → our
//! fault-injecting SMTP server. Each case ends in its documented state with
//! the reason recorded, quickly (retry waits are shortened), never hanging.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use email::{Email, Mailer, SendOptions};
use email_server::dispatch::{self, Settings, Transport};
use email_server::smtp::{Security, SmtpConfig, SmtpPool, Timeouts};
use email_server::store::{SqliteStore, Store};
use support::fault_smtp::{Action, Behaviour, FaultServer, Step};
use tokio::sync::{Notify, watch};

struct Case {
    _dir: tempdir::Dir,
    mailer: Mailer,
    store: Store,
}

mod tempdir {
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}

async fn case(name: &str) -> Case {
    let dir = std::env::temp_dir().join(format!("email-dispatch-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("email.db");
    Case {
        mailer: Mailer::embedded(&db).await.expect("mailer"),
        store: Store::Sqlite(SqliteStore::open(&db).await.expect("store")),
        _dir: tempdir::Dir(dir),
    }
}

fn settings() -> Settings {
    Settings {
        max_fails: 3,
        max_time: Duration::from_secs(3600),
        batch: 10,
        lease: Duration::from_secs(5),
        concurrency: 2,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        owner: "test".into(),
    }
}

fn transport(addr: SocketAddr) -> Transport {
    let each = Duration::from_secs(2);
    let config = SmtpConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        security: Security::Plain,
        hello_name: "client.test".into(),
        timeouts: Timeouts::uniform(each),
        ..SmtpConfig::default()
    };
    Transport::Smtp {
        pool: SmtpPool::new(config).expect("config"),
        relay: addr.to_string(),
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

/// Runs the dispatcher until every email is in a terminal state (or the
/// test's patience runs out), then shuts it down cleanly.
async fn dispatch_until_done(c: &Case, transport: Transport, s: Settings) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(dispatch::run(
        c.store.clone(),
        transport,
        s,
        Arc::new(Notify::new()),
        rx,
    ));
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let st = c
                .store
                .stats(dispatch::now_ms())
                .await
                .expect("stats")
                .states;
            let open: u64 = ["scheduled", "queued", "sending", "deferred"]
                .iter()
                .map(|k| st[*k])
                .sum();
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tx.send(true).ok();
    task.await.expect("join").expect("dispatcher");
    done.expect("emails did not reach a terminal state in 20 s");
}

/// Runs the dispatcher for `d`, then shuts it down cleanly.
async fn dispatch_for(c: &Case, transport: Transport, s: Settings, d: Duration) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(dispatch::run(
        c.store.clone(),
        transport,
        s,
        Arc::new(Notify::new()),
        rx,
    ));
    tokio::time::sleep(d).await;
    tx.send(true).ok();
    task.await.expect("join").expect("dispatcher");
}

/// Runs the dispatcher, never asked to stop, for up to 10 s: `Err` if it
/// did not stop by itself.
async fn dispatch_until_it_stops(
    store: Store,
    transport: Transport,
) -> Result<Result<(), email_server::store::StoreError>, tokio::time::error::Elapsed> {
    let (_tx, rx) = watch::channel(false);
    tokio::time::timeout(
        Duration::from_secs(10),
        dispatch::run(store, transport, settings(), Arc::new(Notify::new()), rx),
    )
    .await
}

async fn show(
    c: &Case,
    id: email::EmailId,
) -> (
    email_server::store::EmailRow,
    Vec<email_server::store::Attempt>,
) {
    let (row, attempts, _) = c
        .store
        .show(&id.to_string(), dispatch::now_ms())
        .await
        .expect("show");
    (row, attempts)
}

#[tokio::test]
async fn transient_then_success() {
    let server = FaultServer::start(
        Behaviour::new().fault_once(Step::Mail, Action::Reply("451 4.3.0 try later".into())),
    )
    .await;
    let c = case("4xx").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "sent");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome, "deferred");
    assert_eq!(attempts[0].smtp_code, Some(451));
    assert_eq!(attempts[0].enhanced_code.as_deref(), Some("4.3.0"));
    assert_eq!(attempts[1].outcome, "sent");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn permanent_failure_is_not_retried() {
    let server = FaultServer::start(Behaviour::new().fault(
        Step::Mail,
        Action::Reply("550 5.7.1 relaying denied".into()),
    ))
    .await;
    let c = case("5xx").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "failed");
    assert_eq!(attempts.len(), 1);
    assert!(
        row.last_reason.as_deref().unwrap_or("").contains("550"),
        "{row:?}"
    );
}

#[tokio::test]
async fn one_rejected_recipient_does_not_fail_the_others() {
    let server = FaultServer::start(Behaviour::new().fault(
        Step::RcptTo("bad@example.com".into()),
        Action::Reply("550 5.1.1 no such user".into()),
    ))
    .await;
    let c = case("rcpt").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com, bad@example.com, bob@example.com"))
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "sent");
    assert!(
        row.last_reason
            .as_deref()
            .unwrap_or("")
            .contains("bad@example.com: 550"),
        "{row:?}"
    );
    let codes: Vec<(String, u16)> = attempts[0]
        .recipients
        .iter()
        .map(|r| (r.address.clone(), r.code))
        .collect();
    assert_eq!(
        codes,
        [
            ("ann@example.com".into(), 250),
            ("bad@example.com".into(), 550),
            ("bob@example.com".into(), 250)
        ]
    );
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, ["ann@example.com", "bob@example.com"]);
}

#[tokio::test]
async fn greylisted_recipient_is_retried_alone() {
    let server = FaultServer::start(Behaviour::new().fault_once(
        Step::RcptTo("grey@example.com".into()),
        Action::Reply("450 4.2.0 greylisted".into()),
    ))
    .await;
    let c = case("grey").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com, grey@example.com"))
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "sent");
    assert_eq!(attempts.len(), 2);
    let got = server.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].rcpt_to, ["ann@example.com"]);
    assert_eq!(
        got[1].rcpt_to,
        ["grey@example.com"],
        "only the deferred recipient is retried"
    );
}

#[tokio::test]
async fn max_fails_leads_to_failed_with_the_last_reason() {
    let server = FaultServer::start(
        Behaviour::new().fault(Step::Mail, Action::Reply("452 4.3.1 out of storage".into())),
    )
    .await;
    let c = case("maxfails").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "failed");
    assert_eq!(attempts.len(), 3);
    let reason = row.last_reason.unwrap_or_default();
    assert!(
        reason.starts_with("max-fails (3) reached") && reason.contains("452"),
        "{reason}"
    );
}

#[tokio::test]
async fn max_time_leads_to_expired_with_the_last_reason() {
    let server = FaultServer::start(
        Behaviour::new().fault(Step::Mail, Action::Reply("451 4.4.1 busy".into())),
    )
    .await;
    let c = case("maxtime").await;
    let opts = SendOptions::default()
        .max_time(Duration::from_millis(300))
        .max_fails(100);
    let id = c
        .mailer
        .enqueue_with(&email("ann@example.com"), None, &opts)
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "expired");
    assert!(!attempts.is_empty());
    assert!(row.last_reason.unwrap_or_default().contains("451"));
}

#[tokio::test]
async fn expiry_applies_in_every_waiting_state() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("expiry").await;
    let tiny = SendOptions::default().max_time(Duration::from_millis(1));
    // queued, past its deadline before any attempt
    let queued = c
        .mailer
        .enqueue_with(&email("a@example.com"), None, &tiny)
        .await
        .expect("q");
    // sending, claimed by a process that died, past its deadline
    let sending = c
        .mailer
        .enqueue_with(&email("b@example.com"), None, &tiny)
        .await
        .expect("s");
    // scheduled far ahead: max-time counts from the due time, so not expired
    let at: jiff::Timestamp = "2099-01-01T00:00:00Z".parse().expect("ts");
    let scheduled = c
        .mailer
        .enqueue_with(&email("c@example.com"), Some(at), &tiny)
        .await
        .expect("sch");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A dead owner holds `sending` with a lease that already ran out.
    c.store
        .claim("dead", 1, dispatch::now_ms(), -1)
        .await
        .expect("claim");
    dispatch_for(
        &c,
        transport(server.addr()),
        settings(),
        Duration::from_millis(500),
    )
    .await;
    for id in [queued, sending] {
        let (row, attempts) = show(&c, id).await;
        assert_eq!(row.state, "expired", "{row:?}");
        assert!(attempts.is_empty(), "no delivery after the deadline");
        assert!(row.last_reason.unwrap_or_default().contains("max-time"));
    }
    assert_eq!(show(&c, scheduled).await.0.state, "scheduled");
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn cut_off_after_final_dot_is_marked_and_retried() {
    let server = FaultServer::start(Behaviour::new().fault_once(Step::DataEnd, Action::Drop)).await;
    let c = case("dup").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "sent");
    assert!(row.possible_duplicate);
    assert!(attempts[0].possible_duplicate);
    assert_eq!(
        server.received().len(),
        2,
        "at least once: the relay saw it twice"
    );
}

#[tokio::test]
async fn a_dead_owners_claim_is_taken_over_after_its_lease() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("lease").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let claimed = c
        .store
        .claim("dead", 10, dispatch::now_ms(), 300)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let (row, _) = show(&c, id).await;
    assert_eq!(row.state, "sent");
    assert!(row.possible_duplicate, "the dead owner may have sent it");
    // The dead owner's late completion is fenced off.
    let stale = c
        .store
        .record(
            &claimed[0],
            None,
            &email_server::store::Next::Failed,
            &[],
            "late",
        )
        .await
        .expect("record");
    assert!(!stale);
    assert_eq!(show(&c, id).await.0.state, "sent");
}

#[tokio::test]
async fn higher_priority_is_claimed_first() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("priority").await;
    for (to, p) in [
        ("low@example.com", 0),
        ("high@example.com", 9),
        ("mid@example.com", 5),
    ] {
        let opts = SendOptions::default().priority(p);
        c.mailer
            .enqueue_with(&email(to), None, &opts)
            .await
            .expect("enqueue");
    }
    let s = Settings {
        batch: 1,
        concurrency: 1,
        ..settings()
    };
    dispatch_until_done(&c, transport(server.addr()), s).await;
    let order: Vec<String> = server
        .received()
        .iter()
        .map(|m| m.rcpt_to[0].clone())
        .collect();
    assert_eq!(
        order,
        ["high@example.com", "mid@example.com", "low@example.com"]
    );
}

#[tokio::test]
async fn shutdown_releases_what_it_cannot_finish() {
    let server = FaultServer::start(Behaviour::new().fault(Step::DataEnd, Action::Stall)).await;
    let c = case("shutdown").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let s = Settings {
        shutdown_grace: Duration::from_millis(300),
        ..settings()
    };
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(dispatch::run(
        c.store.clone(),
        transport(server.addr()),
        s,
        Arc::new(Notify::new()),
        rx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(show(&c, id).await.0.state, "sending");
    tx.send(true).ok();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown is bounded")
        .expect("join")
        .expect("dispatcher");
    let (row, attempts) = show(&c, id).await;
    assert_eq!(row.state, "queued", "released, not stuck in sending");
    assert!(attempts.is_empty());
}

#[tokio::test]
async fn runs_inside_the_application_process() {
    let dir = std::env::temp_dir().join(format!("email-dispatch-{}-inproc", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let _guard = tempdir::Dir(dir.clone());
    let d = dir.display();
    let yaml = format!(
        "email:\n  queue:\n    default:\n      path: {d}/email.db\n  server:\n    database:\n      path: {d}/email.db\n    outbox: {d}/outbox\n"
    );
    let config = email::config::Config::from_yaml_str(&yaml, "test").expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_config = config.clone();
    let server = tokio::spawn(async move {
        email_server::run(&server_config, async {
            stopped.await.ok();
        })
        .await
    });
    let mailer = Mailer::from_config(&config).await.expect("mailer");
    let id = mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let file = dir.join("outbox").join(format!("{id}.eml"));
    // Generous: CI machines are small and shared.
    tokio::time::timeout(Duration::from_secs(30), async {
        while !file.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("delivered to the outbox in-process");
    stop.send(()).ok();
    server.await.expect("join").expect("clean shutdown");
}

/// Every way a relay can fail ends, with one attempt allowed, in `failed`
/// with a reason that says what happened.
#[tokio::test]
async fn each_relay_fault_is_recorded_with_its_reason() {
    let cases: Vec<(&str, Step, Action, &str)> = vec![
        (
            "421",
            Step::Mail,
            Action::ReplyAndClose("421 4.3.2 shutting down".into()),
            "421",
        ),
        ("drop-before-data", Step::Rcpt, Action::Drop, "closed"),
        ("stall", Step::Mail, Action::Stall, "timed out"),
        (
            "garbage",
            Step::Mail,
            Action::Reply("hello there".into()),
            "protocol",
        ),
        (
            "early-250",
            Step::Data,
            Action::Reply("354 go\r\n250 early".into()),
            "protocol",
        ),
    ];
    for (name, step, action, expect) in cases {
        let server = FaultServer::start(Behaviour::new().fault(step, action)).await;
        let c = case(&format!("fault-{name}")).await;
        let id = c
            .mailer
            .enqueue(&email("ann@example.com"))
            .await
            .expect("enqueue");
        let mut t = transport(server.addr());
        if let Transport::Smtp { pool, relay } = &mut t {
            // Short phase timeouts, so the stall case ends quickly.
            let mut config = SmtpConfig {
                host: server.addr().ip().to_string(),
                port: server.addr().port(),
                security: Security::Plain,
                hello_name: "client.test".into(),
                ..SmtpConfig::default()
            };
            let each = Duration::from_millis(300);
            config.timeouts = Timeouts::uniform(each);
            *pool = SmtpPool::new(config).expect("config");
            relay.push_str(" (short timeouts)");
        }
        dispatch_until_done(
            &c,
            t,
            Settings {
                max_fails: 1,
                ..settings()
            },
        )
        .await;
        let (row, attempts) = show(&c, id).await;
        assert_eq!(row.state, "failed", "{name}: {row:?}");
        assert_eq!(attempts.len(), 1, "{name}");
        let reason = row.last_reason.unwrap_or_default().to_lowercase();
        assert!(
            reason.contains(expect),
            "{name}: reason {reason:?} should mention {expect:?}"
        );
    }
}

#[tokio::test]
async fn retries_wait_for_the_backoff() {
    let server = FaultServer::start(
        Behaviour::new().fault_once(Step::Mail, Action::Reply("451 4.3.0 later".into())),
    )
    .await;
    let c = case("backoff").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let s = Settings {
        retry_base: Duration::from_millis(400),
        retry_max: Duration::from_secs(1),
        ..settings()
    };
    dispatch_until_done(&c, transport(server.addr()), s).await;
    let (_, attempts) = show(&c, id).await;
    let gap = attempts[1].started_at - attempts[0].finished_at;
    // 400 ms × jitter in [0.75, 1.25), and the dispatcher sleeps until then.
    assert!((300..900).contains(&gap), "second attempt after {gap} ms");
}

#[tokio::test]
async fn corrupt_stored_emails_fail_without_stopping_the_rest() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("corrupt").await;
    let bad_raw = c
        .mailer
        .enqueue(&email("a@example.com"))
        .await
        .expect("enqueue");
    let bad_json = c
        .mailer
        .enqueue(&email("b@example.com"))
        .await
        .expect("enqueue");
    let good = c
        .mailer
        .enqueue(&email("c@example.com"))
        .await
        .expect("enqueue");
    let Store::Sqlite(s) = &c.store else {
        unreachable!("these tests open SQLite stores")
    };
    let pool = s.embedded().pool();
    sqlx::query(
        "UPDATE email_raw SET raw = x'' \
         WHERE seq = (SELECT seq FROM emails WHERE id = ?1)",
    )
    .bind(bad_raw.to_string())
    .execute(pool)
    .await
    .expect("corrupt raw");
    sqlx::query("UPDATE emails SET pending = '{not json' WHERE id = ?1")
        .bind(bad_json.to_string())
        .execute(pool)
        .await
        .expect("corrupt json");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let raw_row = show(&c, bad_raw).await.0;
    assert_eq!(raw_row.state, "failed");
    assert!(
        raw_row
            .last_reason
            .unwrap_or_default()
            .contains("stored message is corrupt")
    );
    let state: String =
        sqlx::query_scalar("SELECT state || ': ' || last_reason FROM emails WHERE id = ?1")
            .bind(bad_json.to_string())
            .fetch_one(pool)
            .await
            .expect("row");
    assert!(
        state.starts_with("failed: stored record is corrupt"),
        "{state}"
    );
    assert_eq!(show(&c, good).await.0.state, "sent");
    assert_eq!(server.received().len(), 1);
}

/// An attempt that outlasts the lease keeps its claim while its owner is
/// alive: a second server does not take it over and send it again.
#[tokio::test]
async fn a_live_owner_renews_its_lease() {
    let server = FaultServer::start(
        Behaviour::new().fault_once(Step::DataEnd, Action::Delay(Duration::from_millis(1500))),
    )
    .await;
    let c = case("renew").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let Store::Sqlite(s) = &c.store else {
        unreachable!("these tests open SQLite stores")
    };
    let other = Store::Sqlite(
        SqliteStore::open(s.embedded().path())
            .await
            .expect("second handle"),
    );
    let short = |owner: &str| Settings {
        lease: Duration::from_millis(300),
        owner: owner.into(),
        ..settings()
    };
    let (tx, rx) = watch::channel(false);
    let a = tokio::spawn(dispatch::run(
        c.store.clone(),
        transport(server.addr()),
        short("a"),
        Arc::new(Notify::new()),
        rx.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = tokio::spawn(dispatch::run(
        other,
        transport(server.addr()),
        short("b"),
        Arc::new(Notify::new()),
        rx,
    ));
    tokio::time::timeout(Duration::from_secs(10), async {
        while show(&c, id).await.0.state != "sent" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(true).ok();
    a.await.expect("join").expect("a");
    b.await.expect("join").expect("b");
    let (row, attempts) = show(&c, id).await;
    assert_eq!(server.received().len(), 1, "sent once");
    assert_eq!(attempts.len(), 1);
    assert!(!row.possible_duplicate);
}

/// A claim whose message bytes cannot be read (here: their table is
/// missing) hands its emails back at once, unattempted and unmarked,
/// instead of leaving them in `sending` until the lease runs out.
#[tokio::test]
async fn claimed_emails_whose_bytes_cannot_be_read_are_handed_back() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("unreadable").await;
    let id = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let Store::Sqlite(s) = &c.store else {
        unreachable!("these tests open SQLite stores")
    };
    let pool = s.embedded().pool();
    sqlx::query("ALTER TABLE email_raw RENAME TO email_raw_away")
        .execute(pool)
        .await
        .expect("hide the bytes");
    dispatch_for(
        &c,
        transport(server.addr()),
        settings(),
        Duration::from_millis(400),
    )
    .await;
    let (state, owner, duplicate, attempts): (String, Option<String>, i64, i64) = sqlx::query_as(
        "SELECT state, lease_owner, possible_duplicate, attempts FROM emails WHERE id = ?1",
    )
    .bind(id.to_string())
    .fetch_one(pool)
    .await
    .expect("row");
    assert_eq!(
        (state.as_str(), owner, duplicate, attempts),
        ("queued", None, 0, 0)
    );
    assert!(server.received().is_empty());
    sqlx::query("ALTER TABLE email_raw_away RENAME TO email_raw")
        .execute(pool)
        .await
        .expect("bytes back");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    let row = show(&c, id).await.0;
    assert_eq!(row.state, "sent");
    assert!(!row.possible_duplicate);
    assert_eq!(server.received().len(), 1);
}

/// A newer build migrating the file under a running dispatcher: it stops
/// with an error that says so (and what to do), instead of retrying
/// SQLite's "no such column" every second for good. Nothing is sent.
#[tokio::test]
async fn a_file_migrated_by_a_newer_build_stops_the_dispatcher_with_a_clear_error() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("newer-schema").await;
    c.mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let db = c.mailer.queue().as_embedded().expect("embedded");
    // What a future migration might do: a column renamed, the version up.
    sqlx::raw_sql("ALTER TABLE emails RENAME COLUMN pending TO waiting; PRAGMA user_version = 99")
        .execute(db.pool())
        .await
        .expect("migrate as a newer build");
    let ended = dispatch_until_it_stops(c.store.clone(), transport(server.addr())).await;
    let text = ended
        .expect("the dispatcher stops by itself")
        .expect_err("a newer schema is fatal")
        .to_string();
    assert!(
        text.contains("schema version 99") && text.contains("restart"),
        "{text}"
    );
    assert!(server.received().is_empty());
}

/// The same with a PostgreSQL store, where several servers share a schema
/// and an older one may still run while a newer one migrates it.
#[tokio::test]
async fn a_postgres_schema_migrated_by_a_newer_build_stops_the_dispatcher() {
    use email_server::store::PostgresStore;
    let url = std::env::var("EMAIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let required = std::env::var("EMAIL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let schema = format!("dispatch_newer_{}_{nanos}", std::process::id());
    let pg = match PostgresStore::open_in_schema(&url, &schema).await {
        Ok(pg) => pg,
        Err(e) if !required => {
            eprintln!("skipping: no PostgreSQL at {url}: {e}");
            return;
        }
        Err(e) => panic!("PostgreSQL at {url}: {e}"),
    };
    let store = Store::Postgres(pg);
    let e = email("ann@example.com");
    let now = dispatch::now_ms();
    let queued = email::queue::Queued {
        id: email::EmailId::now_v7(),
        created_at_ms: now,
        due_at_ms: now,
        mail_from: "shop@example.com".into(),
        rcpt_to: vec!["ann@example.com".into()],
        raw: e.to_bytes(),
        subject: Some("Order".into()),
        message_id: e.message_id().map(str::to_owned),
        idempotency_key: None,
        priority: 0,
        max_fails: None,
        max_time_ms: None,
        tags: None,
    };
    store.insert(&[queued]).await.expect("insert");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    // What a future migration might do: a column renamed, the version up.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path TO {schema}; ALTER TABLE emails RENAME COLUMN pending TO waiting; \
         INSERT INTO email_schema_version (version, applied_at) VALUES (99, 0)"
    )))
    .execute(&mut conn)
    .await
    .expect("migrate as a newer build");
    let server = FaultServer::start(Behaviour::new()).await;
    let ended = dispatch_until_it_stops(store, transport(server.addr())).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .expect("drop the test's schema");
    let text = ended
        .expect("the dispatcher stops by itself")
        .expect_err("a newer schema is fatal")
        .to_string();
    assert!(
        text.contains("schema version 99") && text.contains("restart"),
        "{text}"
    );
    assert!(server.received().is_empty());
}

/// A row whose id is not text (edited by hand) fails alone, by its `seq`:
/// the claim does not roll back over it (which would find it first again,
/// for good), and the other emails are delivered.
#[tokio::test]
async fn a_row_whose_id_is_not_text_fails_alone() {
    let server = FaultServer::start(Behaviour::new()).await;
    let c = case("bad-id").await;
    let bad = c
        .mailer
        .enqueue(&email("bad@example.com"))
        .await
        .expect("enqueue");
    let good = c
        .mailer
        .enqueue(&email("ann@example.com"))
        .await
        .expect("enqueue");
    let db = c.mailer.queue().as_embedded().expect("embedded");
    sqlx::query("UPDATE emails SET id = X'FF00FF' WHERE id = ?1")
        .bind(bad.to_string())
        .execute(db.pool())
        .await
        .expect("corrupt the id");
    dispatch_until_done(&c, transport(server.addr()), settings()).await;
    assert_eq!(show(&c, good).await.0.state, "sent");
    let (state, reason): (String, String) =
        sqlx::query_as("SELECT state, last_reason FROM emails WHERE typeof(id) = 'blob'")
            .fetch_one(db.pool())
            .await
            .expect("the corrupt row");
    assert_eq!(state, "failed");
    assert!(reason.contains("corrupt"), "{reason}");
    assert_eq!(server.received().len(), 1);
}
