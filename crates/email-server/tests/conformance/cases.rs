//! Conformance cases for intake, claims, leases and the dispatcher's
//! bookkeeping. Each runs against every backend (see `conformance.rs`).

use std::collections::HashSet;

use email_server::store::{Attempt, Claimed, Next, RecipientOutcome, Store};

use crate::{T0, insert, queued, reopen};

fn attempt(at: i64, outcome: &str) -> Attempt {
    Attempt {
        started_at: at - 5,
        finished_at: at,
        relay: "relay.test:25".into(),
        outcome: outcome.into(),
        smtp_code: Some(250),
        enhanced_code: Some("2.0.0".into()),
        reply: "ok".into(),
        possible_duplicate: false,
        recipients: vec![RecipientOutcome {
            address: "ann@example.com".into(),
            code: 250,
            enhanced: Some("2.0.0".into()),
            reply: "ok".into(),
        }],
    }
}

async fn claim_one(store: &Store, owner: &str, now: i64, lease: i64) -> Option<Claimed> {
    let mut got = store.claim(owner, 1, now, lease).await.expect("claim");
    assert!(got.len() <= 1);
    got.pop()
}

async fn state(store: &Store, id: &str, now: i64) -> String {
    store.show(id, now).await.expect("show").0.state
}

pub(crate) async fn case_insert_is_idempotent_by_id_and_key(store: Store) {
    let a = queued(&["ann@example.com", "bob@example.com"], T0);
    let one = std::slice::from_ref(&a);
    let first = store.insert(one).await.expect("insert");
    // A queue that redelivers the same record: same id, nothing new.
    let again = store.insert(one).await.expect("insert again");
    assert_eq!(first, again);
    assert_eq!(first[0], a.id);

    let mut k1 = queued(&["cat@example.com"], T0);
    k1.idempotency_key = Some("order-42".into());
    let mut k2 = queued(&["dan@example.com"], T0);
    k2.idempotency_key = Some("order-42".into());
    let mut k3 = queued(&["eve@example.com"], T0);
    k3.idempotency_key = Some("order-42".into());
    // Within one batch, and across batches, the first email keeps the key.
    let ids = store.insert(&[k1.clone(), k2]).await.expect("batch");
    assert_eq!(ids, [k1.id, k1.id]);
    assert_eq!(store.insert(&[k3]).await.expect("later"), [k1.id]);

    let rows = store.list(None, 100, T0).await.expect("list");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (row, attempts, raw) = store.show(&a.id.to_string(), T0).await.expect("show");
    assert!(attempts.is_empty());
    assert_eq!(raw, a.raw);
    assert_eq!(row.state, "queued");
    assert_eq!(row.recipients, ["ann@example.com", "bob@example.com"]);
    assert_eq!(row.pending, row.recipients);
    assert_eq!(row.subject.as_deref(), Some("Order"));
    assert_eq!(row.message_id, a.message_id);
    assert_eq!(row.mail_from, "shop@example.com");
    assert_eq!(row.created_at, "2023-11-14T22:13:20Z");
    assert_eq!(row.next_at.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert_eq!(row.finished_at, None);
    let keyed = store.show(&k1.id.to_string(), T0).await.expect("show").0;
    assert_eq!(keyed.idempotency_key.as_deref(), Some("order-42"));
    assert_eq!(keyed.recipients, ["cat@example.com"]);
}

pub(crate) async fn case_claim_order_is_priority_then_due_time(store: Store) {
    let mut low_old = queued(&["low-old@example.com"], T0 - 3);
    low_old.max_fails = Some(7);
    low_old.max_time_ms = Some(60_000);
    let mut high_new = queued(&["high-new@example.com"], T0 - 1);
    high_new.priority = 5;
    let mut high_old = queued(&["high-old@example.com"], T0 - 2);
    high_old.priority = 5;
    let mut future = queued(&["future@example.com"], T0 + 1_000);
    future.priority = 9;
    for q in [&low_old, &high_new, &high_old, &future] {
        insert(&store, q.clone()).await;
    }
    let mut order = Vec::new();
    while let Some(c) = claim_one(&store, "me", T0, 60_000).await {
        order.push(c);
    }
    let ids: Vec<_> = order.iter().map(|c| c.id.clone()).collect();
    let want: Vec<_> = [&high_old, &high_new, &low_old]
        .iter()
        .map(|q| q.id.to_string())
        .collect();
    assert_eq!(ids, want, "priority first, then the earliest due");
    let c = &order[2];
    assert_eq!(c.token, 1);
    assert_eq!(c.mail_from, "shop@example.com");
    assert_eq!(c.pending, ["low-old@example.com"]);
    assert_eq!(c.raw, low_old.raw);
    assert_eq!(c.attempts, 0);
    assert_eq!(c.due_at, T0 - 3);
    assert_eq!(c.max_fails, Some(7));
    assert_eq!(c.max_time_ms, Some(60_000));
    assert_eq!(order[0].max_fails, None);

    // A batch takes the top of the same order.
    let more = queued(&["more@example.com"], T0 - 10);
    insert(&store, more.clone()).await;
    let batch = store
        .claim("me", 10, T0 + 1_000, 60_000)
        .await
        .expect("claim");
    let got: HashSet<_> = batch.iter().map(|c| c.id.clone()).collect();
    let want: HashSet<_> = [future.id, more.id].iter().map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

pub(crate) async fn case_scheduled_rows_are_not_claimed_early(store: Store) {
    let q = queued(&["ann@example.com"], T0 + 1_000);
    let id = insert(&store, q).await;
    assert_eq!(state(&store, &id, T0).await, "scheduled");
    assert!(claim_one(&store, "me", T0, 60_000).await.is_none());
    assert!(claim_one(&store, "me", T0 + 999, 60_000).await.is_none());
    assert_eq!(state(&store, &id, T0 + 1_000).await, "queued", "due now");
    let c = claim_one(&store, "me", T0 + 1_000, 60_000)
        .await
        .expect("due at its time");
    assert_eq!(c.id, id);
    assert_eq!(state(&store, &id, T0 + 1_000).await, "sending");
}

pub(crate) async fn case_expired_lease_is_taken_over_as_possible_duplicate(store: Store) {
    let id = insert(&store, queued(&["ann@example.com"], T0)).await;
    let first = claim_one(&store, "dead", T0, 100).await.expect("claim");
    assert_eq!(first.token, 1);
    assert!(
        !store
            .show(&id, T0)
            .await
            .expect("show")
            .0
            .possible_duplicate
    );
    assert!(
        claim_one(&store, "next", T0 + 99, 100).await.is_none(),
        "the lease still holds"
    );
    let second = claim_one(&store, "next", T0 + 100, 100)
        .await
        .expect("taken over when the lease ends");
    assert_eq!(second.id, id);
    assert_eq!(second.token, 2);
    let row = store.show(&id, T0 + 100).await.expect("show").0;
    assert_eq!(row.state, "sending");
    assert!(row.possible_duplicate, "the dead owner may have sent it");
    let stats = store.stats(T0 + 100).await.expect("stats");
    assert_eq!(stats.possible_duplicates, 1);
    assert_eq!(stats.states["sending"], 1);
}

pub(crate) async fn case_record_is_fenced_by_the_lease_token(store: Store) {
    let id = insert(&store, queued(&["ann@example.com"], T0)).await;
    let stale = claim_one(&store, "slow", T0, 10).await.expect("claim");
    let fresh = claim_one(&store, "fast", T0 + 10, 60_000)
        .await
        .expect("takeover");
    let late = store
        .record(
            &stale,
            Some(&attempt(T0 + 20, "failed")),
            &Next::Failed,
            &[],
            "late",
        )
        .await
        .expect("record");
    assert!(!late, "a taken-over lease cannot move the email");
    assert_eq!(state(&store, &id, T0 + 20).await, "sending");
    let done = store
        .record(
            &fresh,
            Some(&attempt(T0 + 30, "sent")),
            &Next::Sent,
            &[],
            "250 ok",
        )
        .await
        .expect("record");
    assert!(done);
    let stale_again = store
        .record(&stale, None, &Next::Failed, &[], "later still")
        .await
        .expect("record");
    assert!(!stale_again);
    let (row, attempts, _) = store.show(&id, T0 + 40).await.expect("show");
    assert_eq!(row.state, "sent");
    assert_eq!(row.last_reason.as_deref(), Some("250 ok"));
    assert_eq!(row.attempts, 1, "only the fenced-in attempt counts");
    assert_eq!(row.finished_at.as_deref(), Some("2023-11-14T22:13:20.03Z"));
    assert_eq!(row.next_at, None);
    assert_eq!(row.pending, Vec::<String>::new());
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["failed", "sent"],
        "the late attempt is still kept"
    );
}

pub(crate) async fn case_record_without_attempt_and_retry_plan(store: Store) {
    let to = ["ann@example.com", "grey@example.com"];
    let retried = insert(&store, queued(&to, T0)).await;
    let expired = insert(&store, queued(&["late@example.com"], T0 - 1)).await;
    let claims = store.claim("me", 10, T0, 60_000).await.expect("claim");
    assert_eq!(claims.len(), 2);
    let c_expired = claims.iter().find(|c| c.id == expired).expect("claimed");
    let c_retried = claims.iter().find(|c| c.id == retried).expect("claimed");

    // No delivery was tried: no attempt row, no attempt counted.
    let before = email_server::dispatch::now_ms();
    assert!(
        store
            .record(
                c_expired,
                None,
                &Next::Expired,
                &c_expired.pending,
                "max-time passed"
            )
            .await
            .expect("record")
    );
    let (row, attempts, _) = store.show(&expired, T0).await.expect("show");
    assert_eq!(row.state, "expired");
    assert_eq!(row.attempts, 0);
    assert!(attempts.is_empty());
    assert_eq!(row.pending, ["late@example.com"]);
    let finished: jiff::Timestamp = row.finished_at.expect("finished").parse().expect("time");
    assert!(
        finished.as_millisecond() >= before,
        "stamped with the real time"
    );

    // One recipient deferred: retried alone, later.
    let pending = vec!["grey@example.com".to_owned()];
    let retry = Next::Retry { at: T0 + 500 };
    let a = attempt(T0 + 10, "deferred");
    assert!(
        store
            .record(
                c_retried,
                Some(&a),
                &retry,
                &pending,
                "1 recipient(s) deferred"
            )
            .await
            .expect("record")
    );
    let row = store.show(&retried, T0 + 10).await.expect("show").0;
    assert_eq!(row.state, "deferred");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.pending, pending);
    assert_eq!(row.recipients, to);
    assert_eq!(row.finished_at, None);
    assert_eq!(row.next_at.as_deref(), Some("2023-11-14T22:13:20.5Z"));
    assert!(claim_one(&store, "me", T0 + 499, 60_000).await.is_none());
    let again = claim_one(&store, "me", T0 + 500, 60_000)
        .await
        .expect("due again");
    assert_eq!(again.attempts, 1);
    assert_eq!(again.pending, pending);
    assert_eq!(again.token, 2);
}

pub(crate) async fn case_release_owner_gives_claims_back(store: Store) {
    let fresh = insert(&store, queued(&["a@example.com"], T0 - 2)).await;
    let tried = insert(&store, queued(&["b@example.com"], T0 - 1)).await;
    let theirs = insert(&store, queued(&["c@example.com"], T0)).await;
    let first = claim_one(&store, "me", T0, 60_000).await.expect("claim");
    assert_eq!(first.id, fresh);
    let second = claim_one(&store, "me", T0, 60_000).await.expect("claim");
    assert_eq!(second.id, tried);
    // Due again before `theirs`, so the next claim takes it.
    let retry = Next::Retry { at: T0 - 1 };
    let a = attempt(T0, "deferred");
    store
        .record(&second, Some(&a), &retry, &second.pending, "451")
        .await
        .expect("record");
    let again = claim_one(&store, "me", T0, 60_000).await.expect("claim");
    assert_eq!(again.id, tried);
    claim_one(&store, "other", T0, 60_000).await.expect("claim");

    assert_eq!(store.release_owner("me").await.expect("release"), 2);
    assert_eq!(state(&store, &fresh, T0).await, "queued", "never tried");
    assert_eq!(state(&store, &tried, T0).await, "deferred", "tried before");
    assert_eq!(state(&store, &theirs, T0).await, "sending", "not ours");
    assert_eq!(store.release_owner("me").await.expect("release"), 0);
    // Released without counting an attempt, and claimable at once.
    assert_eq!(
        store
            .claim("me", 10, T0, 60_000)
            .await
            .expect("claim")
            .len(),
        2
    );
}

pub(crate) async fn case_expire_overdue_in_every_waiting_state(store: Store) {
    // Priorities fix the claim order used to set up each state.
    let tiny = |to: &str, due: i64, priority: i32| {
        let mut q = queued(&[to], due);
        q.max_time_ms = Some(10);
        q.priority = priority;
        q
    };
    let deferred = insert(&store, tiny("d@example.com", T0, 6)).await;
    let sent = insert(&store, tiny("done@example.com", T0, 5)).await;
    let sending_dead = insert(&store, tiny("s@example.com", T0, 4)).await;
    let sending_live = insert(&store, tiny("l@example.com", T0, 3)).await;
    let queued_id = insert(&store, tiny("q@example.com", T0, 0)).await;
    let future = insert(&store, tiny("f@example.com", T0 + 1_000_000, 0)).await;
    let default_time = insert(&store, queued(&["x@example.com"], T0)).await;
    let c = claim_one(&store, "me", T0, 60_000).await.expect("claim");
    assert_eq!(c.id, deferred);
    let retry = Next::Retry { at: T0 + 5_000 };
    let a = attempt(T0 + 1, "deferred");
    store
        .record(&c, Some(&a), &retry, &c.pending, "451 busy")
        .await
        .expect("record");
    let c = claim_one(&store, "me", T0, 60_000).await.expect("claim");
    assert_eq!(c.id, sent);
    let a = attempt(T0 + 1, "sent");
    store
        .record(&c, Some(&a), &Next::Sent, &[], "250 ok")
        .await
        .expect("record");
    let c = claim_one(&store, "dead", T0, 50).await.expect("claim");
    assert_eq!(c.id, sending_dead);
    let c = claim_one(&store, "alive", T0, 60_000).await.expect("claim");
    assert_eq!(c.id, sending_live);

    // Nothing is overdue yet (max-time counts from the due time).
    assert_eq!(
        store
            .expire_overdue(T0 + 9, 3_600_000)
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(
        store
            .expire_overdue(T0 + 100, 3_600_000)
            .await
            .expect("sweep"),
        3
    );
    let show = |id: &str| {
        let (store, id) = (store.clone(), id.to_owned());
        async move {
            let row = store.show(&id, T0 + 100).await.expect("show").0;
            (
                row.state,
                row.last_reason.unwrap_or_default(),
                row.finished_at,
            )
        }
    };
    let (s, r, fin) = show(&queued_id).await;
    assert_eq!(
        (s.as_str(), r.as_str()),
        ("expired", "max-time passed before any attempt")
    );
    assert_eq!(fin.as_deref(), Some("2023-11-14T22:13:20.1Z"));
    let (s, r, _) = show(&deferred).await;
    let want = ("expired", "max-time passed: last attempt: 451 busy");
    assert_eq!((s.as_str(), r.as_str()), want);
    assert_eq!(show(&sending_dead).await.0, "expired", "its owner died");
    assert_eq!(show(&sending_live).await.0, "sending", "still being tried");
    assert_eq!(show(&future).await.0, "scheduled", "not due yet");
    assert_eq!(
        show(&default_time).await.0,
        "queued",
        "the default max-time"
    );
    assert_eq!(show(&sent).await.0, "sent", "terminal states stay");
    // The server's default applies where the email has none.
    assert_eq!(store.expire_overdue(T0 + 100, 50).await.expect("sweep"), 1);
    assert_eq!(show(&default_time).await.0, "expired");
    // A max-time too large to add is "never", not an error.
    insert(&store, queued(&["y@example.com"], T0)).await;
    assert_eq!(
        store
            .expire_overdue(T0 + 100, i64::MAX)
            .await
            .expect("sweep"),
        0
    );
}

pub(crate) async fn case_next_wake_is_the_earliest_due_or_lease_end(store: Store) {
    assert_eq!(store.next_wake().await.expect("wake"), None);
    insert(&store, queued(&["a@example.com"], T0 + 500)).await;
    assert_eq!(store.next_wake().await.expect("wake"), Some(T0 + 500));
    insert(&store, queued(&["b@example.com"], T0 + 200)).await;
    assert_eq!(store.next_wake().await.expect("wake"), Some(T0 + 200));
    let c = claim_one(&store, "me", T0 + 200, 100).await.expect("claim");
    assert_eq!(
        store.next_wake().await.expect("wake"),
        Some(T0 + 300),
        "the lease end, when another may take it over"
    );
    store
        .record(
            &c,
            Some(&attempt(T0 + 250, "sent")),
            &Next::Sent,
            &[],
            "250",
        )
        .await
        .expect("record");
    assert_eq!(store.next_wake().await.expect("wake"), Some(T0 + 500));
}

pub(crate) async fn case_concurrent_claims_never_share_an_email(store: Store) {
    const EMAILS: usize = 500;
    let batch: Vec<_> = (0..EMAILS)
        .map(|i| {
            let mut q = queued(&["ann@example.com"], T0 - 1_000);
            q.priority = i32::try_from(i % 3).unwrap_or(0);
            q
        })
        .collect();
    let inserted: HashSet<String> = store
        .insert(&batch)
        .await
        .expect("insert")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(inserted.len(), EMAILS);
    // Two handles with their own pools, as two servers would have.
    let handles = [store.clone(), reopen(&store).await];
    let mut claimers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = handles[n % 2].clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim(&format!("claimer-{n}"), 7, T0, 600_000)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| (c.id, c.token)));
            }
        });
    }
    let mut seen = HashSet::new();
    while let Some(done) = claimers.join_next().await {
        for (id, token) in done.expect("claimer") {
            assert_eq!(token, 1, "{id} was claimed twice");
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!(seen, inserted, "every email claimed exactly once");
    let stats = store.stats(T0).await.expect("stats");
    assert_eq!(stats.states["sending"], EMAILS as u64);
}

pub(crate) async fn case_renew_leases_keeps_claims_from_takeover(store: Store) {
    let mine = insert(&store, queued(&["a@example.com"], T0)).await;
    let theirs = insert(&store, queued(&["b@example.com"], T0)).await;
    claim_one(&store, "me", T0, 100).await.expect("claim");
    claim_one(&store, "other", T0, 100).await.expect("claim");
    assert_eq!(
        store.renew_leases("me", T0 + 10_000).await.expect("renew"),
        1
    );
    // Past the original lease: only the unrenewed claim can be taken over.
    let taken = store
        .claim("thief", 10, T0 + 500, 60_000)
        .await
        .expect("claim");
    let ids: Vec<&str> = taken.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [theirs.as_str()]);
    assert_eq!(state(&store, &mine, T0 + 500).await, "sending");
    assert_eq!(
        store
            .renew_leases("nobody", T0 + 10_000)
            .await
            .expect("renew"),
        0
    );
}
