//! Conformance cases for what operators see and do (stats, list, show,
//! retry, cancel, reschedule), corrupt rows, and one end-to-end run of the
//! dispatcher. Each runs against every backend (see `conformance.rs`).

use std::sync::Arc;
use std::time::Duration;

use email_server::dispatch::{self, Settings, Transport};
use email_server::store::{Attempt, Next, RecipientOutcome, Store, StoreError};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::{T0, corrupt_pending, insert, queued, raw_state};

fn sent_attempt(finished: i64) -> Attempt {
    Attempt {
        started_at: finished - 1,
        finished_at: finished,
        relay: "relay.test:25".into(),
        outcome: "sent".into(),
        smtp_code: Some(250),
        enhanced_code: Some("2.0.0".into()),
        reply: "queued as 1".into(),
        possible_duplicate: false,
        recipients: Vec::new(),
    }
}

pub(crate) async fn case_stats_shape_and_percentiles(store: Store) {
    let empty = store.stats(T0).await.expect("stats");
    assert_eq!(
        serde_json::to_value(&empty).expect("json"),
        json!({
            "states": {"scheduled": 0, "queued": 0, "sending": 0, "deferred": 0,
                       "sent": 0, "failed": 0, "expired": 0, "cancelled": 0},
            "latency_ms": {"p50": null, "p90": null, "p99": null},
            "attempts_per_sent": 0.0,
            "attempts_total": 0,
            "possible_duplicates": 0,
            "dead_letters": null,
        })
    );

    // Ten sent emails, due at T0, accepted 10, 20, ... 100 ms later; the
    // first one needed two attempts, the last may have been sent twice.
    for _ in 0..10 {
        insert(&store, queued(&["ann@example.com"], T0)).await;
    }
    let claims = store.claim("me", 10, T0, 60_000).await.expect("claim");
    assert_eq!(claims.len(), 10);
    for (i, c) in claims.iter().enumerate() {
        let latency = 10 * (i64::try_from(i).unwrap_or(0) + 1);
        let mut c = c.clone();
        if i == 0 {
            let mut a = sent_attempt(T0 + 1);
            a.outcome = "deferred".into();
            let retry = Next::Retry { at: T0 };
            store
                .record(&c, Some(&a), &retry, &c.pending, "451")
                .await
                .expect("record");
            c = store
                .claim("me", 1, T0, 60_000)
                .await
                .expect("claim")
                .remove(0);
        }
        let mut a = sent_attempt(T0 + latency);
        a.possible_duplicate = i == 9;
        assert!(
            store
                .record(&c, Some(&a), &Next::Sent, &[], "250")
                .await
                .expect("record")
        );
    }
    let failed = insert(&store, queued(&["bad@example.com"], T0)).await;
    let c = store
        .claim("me", 1, T0, 60_000)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(c.id, failed);
    let mut a = sent_attempt(T0 + 5);
    a.outcome = "failed".into();
    store
        .record(&c, Some(&a), &Next::Failed, &[], "550")
        .await
        .expect("record");
    let cancelled = insert(&store, queued(&["c@example.com"], T0)).await;
    store.cancel(&cancelled, T0).await.expect("cancel");
    insert(&store, queued(&["later@example.com"], T0 + 1_000)).await;
    insert(&store, queued(&["now@example.com"], T0)).await;

    let stats = store.stats(T0).await.expect("stats");
    assert_eq!(
        serde_json::to_value(&stats).expect("json"),
        json!({
            "states": {"scheduled": 1, "queued": 1, "sending": 0, "deferred": 0,
                       "sent": 10, "failed": 1, "expired": 0, "cancelled": 1},
            // Nearest rank: the 5th, 9th and 10th of ten.
            "latency_ms": {"p50": 50, "p90": 90, "p99": 100},
            "attempts_per_sent": 1.1,
            "attempts_total": 12,
            "possible_duplicates": 1,
            "dead_letters": null,
        })
    );
    // The scheduled email counts as queued once its time has come.
    let later = store.stats(T0 + 1_000).await.expect("stats");
    assert_eq!((later.states["scheduled"], later.states["queued"]), (0, 2));
}

pub(crate) async fn case_list_filters_and_order(store: Store) {
    let old = insert(&store, queued(&["old@example.com"], T0 - 5)).await;
    let now = insert(&store, queued(&["now@example.com"], T0)).await;
    let later = insert(&store, queued(&["later@example.com"], T0 + 1_000)).await;
    let ids = |rows: Vec<email_server::store::EmailRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.id).collect()
    };
    let list = |state: Option<&'static str>, limit: u32, at: i64| {
        let store = store.clone();
        async move { ids(store.list(state, limit, at).await.expect("list")) }
    };
    // Newest first: created at T0 (later, then now, by id), then T0 - 5.
    assert_eq!(list(None, 100, T0).await, [&*later, &*now, &*old]);
    assert_eq!(list(None, 2, T0).await, [&*later, &*now]);
    assert_eq!(list(Some("scheduled"), 100, T0).await, [&*later]);
    assert_eq!(list(Some("queued"), 100, T0).await, [&*now, &*old]);
    // Told apart by time, not by what was written.
    assert!(list(Some("scheduled"), 100, T0 + 1_000).await.is_empty());
    assert_eq!(
        list(Some("queued"), 100, T0 + 1_000).await,
        [&*later, &*now, &*old]
    );
    let c = store.claim("me", 1, T0, 60_000).await.expect("claim");
    assert_eq!(c[0].id, old);
    assert_eq!(list(Some("sending"), 100, T0).await, [&*old]);
    assert!(list(Some("sent"), 100, T0).await.is_empty());
    let rows = store.list(Some("scheduled"), 100, T0).await.expect("list");
    assert_eq!(rows[0].state, "scheduled");
    assert_eq!(rows[0].due_at, "2023-11-14T22:13:21Z");
}

pub(crate) async fn case_show_has_attempts_and_recipient_results(store: Store) {
    let to = ["ann@example.com", "bad@example.com", "grey@example.com"];
    let mut q = queued(&to, T0);
    q.priority = 3;
    let raw = q.raw.clone();
    let id = insert(&store, q).await;
    let c = store
        .claim("me", 1, T0, 60_000)
        .await
        .expect("claim")
        .remove(0);
    let first = Attempt {
        started_at: T0,
        finished_at: T0 + 7,
        relay: "relay.test:25".into(),
        outcome: "deferred".into(),
        smtp_code: None,
        enhanced_code: None,
        reply: "connection closed before DATA".into(),
        possible_duplicate: false,
        recipients: Vec::new(),
    };
    let pending = to.map(str::to_owned).to_vec();
    let retry = Next::Retry { at: T0 + 10 };
    store
        .record(&c, Some(&first), &retry, &pending, "closed")
        .await
        .expect("record");
    let c = store
        .claim("me", 1, T0 + 10, 60_000)
        .await
        .expect("claim")
        .remove(0);
    let outcome = |address: &str, code: u16, enhanced: &str, reply: &str| RecipientOutcome {
        address: address.into(),
        code,
        enhanced: Some(enhanced.into()),
        reply: reply.into(),
    };
    let second = Attempt {
        started_at: T0 + 10,
        finished_at: T0 + 20,
        relay: "relay.test:25".into(),
        outcome: "deferred".into(),
        smtp_code: Some(250),
        enhanced_code: Some("2.0.0".into()),
        reply: "ok: queued \"as\" ü".into(),
        possible_duplicate: true,
        recipients: vec![
            outcome("ann@example.com", 250, "2.1.5", "ok"),
            outcome("bad@example.com", 550, "5.1.1", "no such user"),
            outcome("grey@example.com", 450, "4.2.0", "greylisted"),
        ],
    };
    let grey = vec!["grey@example.com".to_owned()];
    let retry = Next::Retry { at: T0 + 100 };
    store
        .record(&c, Some(&second), &retry, &grey, "1 recipient(s) deferred")
        .await
        .expect("record");

    let (row, attempts, bytes) = store.show(&id, T0 + 20).await.expect("show");
    assert_eq!(attempts, [first, second]);
    assert_eq!(bytes, raw);
    assert_eq!(row.recipients, to);
    assert_eq!(row.pending, grey);
    assert_eq!(row.attempts, 2);
    assert_eq!(row.priority, 3);
    assert!(row.possible_duplicate);
    assert_eq!(row.last_reason.as_deref(), Some("1 recipient(s) deferred"));
    let shape = serde_json::to_value(&row).expect("json");
    let keys: Vec<&str> = shape
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = [
        "id",
        "state",
        "subject",
        "mail_from",
        "recipients",
        "pending",
        "attempts",
        "priority",
        "created_at",
        "due_at",
        "next_at",
        "finished_at",
        "last_reason",
        "message_id",
        "idempotency_key",
        "possible_duplicate",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    let missing = store.show("0190aaaa-0000-7000-8000-000000000000", T0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub(crate) async fn case_retry_cancel_reschedule_follow_the_state_rules(store: Store) {
    let wrong = |r: Result<(), StoreError>, want: &str| match r {
        Err(StoreError::WrongState { state, .. }) => assert_eq!(state, want),
        other => panic!("expected WrongState({want}), got {other:?}"),
    };
    // queued -> cancelled -> (no cancel, no reschedule) -> retry -> queued
    let a = insert(&store, queued(&["a@example.com"], T0)).await;
    store.cancel(&a, T0 + 1).await.expect("cancel");
    let row = store.show(&a, T0 + 1).await.expect("show").0;
    assert_eq!(row.state, "cancelled");
    assert_eq!(row.last_reason.as_deref(), Some("cancelled by operator"));
    assert_eq!(row.finished_at.as_deref(), Some("2023-11-14T22:13:20.001Z"));
    wrong(store.cancel(&a, T0 + 2).await, "cancelled");
    wrong(store.reschedule(&a, T0 + 2).await, "cancelled");
    store.retry(&a, T0 + 2).await.expect("retry");
    let row = store.show(&a, T0 + 2).await.expect("show").0;
    assert_eq!((row.state.as_str(), row.finished_at), ("queued", None));
    assert_eq!(
        row.due_at, "2023-11-14T22:13:20.002Z",
        "max-time counts anew"
    );

    // sending and sent cannot be touched
    let b = insert(&store, queued(&["b@example.com"], T0 - 10)).await;
    let c = store
        .claim("me", 1, T0, 60_000)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(c.id, b);
    wrong(store.retry(&b, T0).await, "sending");
    wrong(store.cancel(&b, T0).await, "sending");
    wrong(store.reschedule(&b, T0).await, "sending");
    store
        .record(&c, None, &Next::Sent, &[], "250")
        .await
        .expect("record");
    wrong(store.retry(&b, T0).await, "sent");
    let err = store.cancel(&b, T0).await.expect_err("sent");
    assert!(
        err.to_string()
            .contains("only scheduled, queued or deferred"),
        "{err}"
    );

    // failed with nobody pending: retry delivers to everyone again
    let to = ["c1@example.com", "c2@example.com"];
    let f = insert(&store, queued(&to, T0 - 9)).await;
    let c = store
        .claim("me", 1, T0, 60_000)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(c.id, f);
    let a1 = sent_attempt(T0 + 1);
    store
        .record(&c, Some(&a1), &Next::Failed, &[], "550")
        .await
        .expect("record");
    store.retry(&f, T0 + 3).await.expect("retry");
    let row = store.show(&f, T0 + 3).await.expect("show").0;
    assert_eq!((row.state.as_str(), row.attempts), ("queued", 0));
    assert_eq!(row.pending, to);

    // deferred: retry now keeps the recipients still pending
    let d = insert(&store, queued(&to, T0 - 8)).await;
    let c = store
        .claim("me", 1, T0, 60_000)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(c.id, d);
    let one = vec!["c2@example.com".to_owned()];
    let retry = Next::Retry { at: T0 + 10_000 };
    store
        .record(&c, Some(&a1), &retry, &one, "451")
        .await
        .expect("record");
    store.retry(&d, T0 + 4).await.expect("retry");
    let row = store.show(&d, T0 + 4).await.expect("show").0;
    assert_eq!((row.state.as_str(), row.pending), ("queued", one));
    assert_eq!(row.next_at.as_deref(), Some("2023-11-14T22:13:20.004Z"));

    // reschedule moves the due time; the email waits for it
    store.reschedule(&d, T0 + 5_000).await.expect("reschedule");
    let row = store.show(&d, T0 + 4).await.expect("show").0;
    assert_eq!(row.state, "scheduled");
    assert_eq!(row.due_at, "2023-11-14T22:13:25Z");
    let due: Vec<_> = store
        .claim("me", 10, T0 + 4_999, 60_000)
        .await
        .expect("claim");
    assert!(due.iter().all(|c| c.id != d), "claimed before its new time");
    store
        .reschedule(&d, T0 + 6_000)
        .await
        .expect("scheduled can move again");

    for r in [
        store.retry("nope", T0).await,
        store.cancel("nope", T0).await,
        store.reschedule("nope", T0).await,
    ] {
        assert!(
            matches!(r, Err(StoreError::NotFound(ref id)) if id == "nope"),
            "{r:?}"
        );
    }
}

pub(crate) async fn case_corrupt_json_row_fails_alone(store: Store) {
    let bad = insert(&store, queued(&["bad@example.com"], T0 - 1)).await;
    let good = insert(&store, queued(&["good@example.com"], T0)).await;
    corrupt_pending(&store, &bad, "{not json").await;
    let claimed = store
        .claim("me", 10, T0, 60_000)
        .await
        .expect("claim survives");
    let ids: Vec<_> = claimed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [good.as_str()]);
    let (state, reason) = raw_state(&store, &bad).await;
    assert_eq!(state, "failed");
    let reason = reason.unwrap_or_default();
    assert!(reason.starts_with("stored record is corrupt"), "{reason}");
    assert!(reason.contains("pending"), "names the column: {reason}");
    let shown = store.show(&bad, T0).await;
    assert!(
        matches!(
            shown,
            Err(StoreError::Corrupt {
                field: "pending",
                ..
            })
        ),
        "{shown:?}"
    );
    assert!(
        store
            .claim("me", 10, T0 + 1, 60_000)
            .await
            .expect("claim")
            .is_empty()
    );
}

pub(crate) async fn case_dispatcher_delivers_end_to_end(store: Store) {
    let dir = std::env::temp_dir().join(format!(
        "email-conformance-outbox-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let now = dispatch::now_ms();
    let mut first = queued(&["ann@example.com"], now);
    first.created_at_ms = now;
    // Scheduled: the dispatcher must sleep until it is due, then send it.
    let mut second = queued(&["bob@example.com"], now + 300);
    second.created_at_ms = now;
    let ids = store
        .insert(&[first.clone(), second.clone()])
        .await
        .expect("insert");
    let settings = Settings {
        batch: 10,
        lease: Duration::from_secs(5),
        concurrency: 2,
        shutdown_grace: Duration::from_secs(2),
        owner: "conformance".into(),
        ..Settings::default()
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(dispatch::run(
        store.clone(),
        Transport::Outbox(dir.clone()),
        settings,
        Arc::new(Notify::new()),
        stopped,
    ));
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        while store.stats(dispatch::now_ms()).await.expect("stats").states["sent"] < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.send(true).ok();
    task.await.expect("join").expect("dispatcher");
    let delivered: Vec<_> = ids
        .iter()
        .map(|id| std::fs::read(dir.join(format!("{id}.eml"))))
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    done.expect("both emails sent within 20 s");
    assert_eq!(delivered[0].as_ref().expect("first .eml"), &first.raw);
    assert_eq!(delivered[1].as_ref().expect("second .eml"), &second.raw);
    let (row, attempts, _) = store
        .show(&second.id.to_string(), dispatch::now_ms())
        .await
        .expect("show");
    assert_eq!((row.state.as_str(), row.attempts), ("sent", 1));
    assert!(
        attempts[0].relay.starts_with("outbox:"),
        "{:?}",
        attempts[0]
    );
    assert!(
        attempts[0].started_at >= second.due_at_ms,
        "not before its time"
    );
}
