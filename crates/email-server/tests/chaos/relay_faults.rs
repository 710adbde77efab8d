//! F8 to F11: relays that misbehave on the wire, against the dispatcher
//! running in this process (4 connections, the retry schedule shortened
//! so that a scenario sees many rounds in seconds). The relay is our fault
//! server, which records every command, every message and what it
//! answered after the final `.`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use email::Email;
use email_server::smtp::{Security, SmtpConfig, Timeouts};

use crate::common::{
    AttemptRow, Figures, Rig, Rng, accepted, attempts, check_all_sent, message_id, now, pick,
    settings, smtp_transport, transport, wait_all_final,
};
use crate::scale::{all_rows, tally};
use crate::support::certs::TestPki;
use crate::support::fault_smtp::{Action, Behaviour, FaultServer, Step};

/// Runs the dispatcher on `relay` until every email is final, and stops
/// it.
async fn deliver_all(rig: &mut Rig, relay: &FaultServer, n: usize, s: Duration) {
    rig.start(
        transport(relay.addr(), Timeouts::uniform(s), Security::Plain),
        settings(3, Duration::from_millis(200), Duration::from_secs(1)),
    );
    wait_all_final(&rig.store, n, Duration::from_secs(120)).await;
    rig.stop().await;
}

/// How long after `start_ms` nine tenths of `ids` were sent (the rate of
/// the bulk, without the tail of emails that met a stalled connection and
/// wait for their retry).
async fn nine_tenths(rig: &Rig, ids: &HashSet<String>, start_ms: i64) -> Duration {
    let mut done: Vec<i64> = attempts(&rig.store)
        .await
        .into_iter()
        .filter(|a| a.outcome == "sent" && ids.contains(&a.email_id))
        .map(|a| a.finished_at)
        .collect();
    done.sort_unstable();
    let at = done[(done.len() * 9).div_ceil(10) - 1];
    Duration::from_millis(u64::try_from(at - start_ms).unwrap_or(0))
}

/// F8. A relay that trickles its greeting one byte every 100 ms (on its
/// first two connections), trickles its reply to the final `.` for some
/// emails, and for others never answers it (reading on until the client
/// hangs up); every phase has a 1.5 s deadline. Each such attempt is
/// abandoned at its deadline (measured at the relay: from the fault to the
/// client closing the connection), recorded with a timeout reason, and the
/// cut-off after the final `.` is marked a possible duplicate; the other
/// emails are all delivered, at no less than half the rate of a run
/// without the slow ones.
pub(crate) async fn slowloris() {
    let (fast, slow) = pick((400, 1), (4_000, 2));
    let deadline = Duration::from_millis(1_500);
    let trickle = |text: &str| Action::Trickle {
        text: text.into(),
        every: Duration::from_millis(100),
    };
    let rng = Rng::new();

    // The same emails to a well-behaved relay, at the same time, for the
    // reference rate under the same load.
    let base_relay = FaultServer::start(Behaviour::new()).await;
    let mut base = Rig::new("f8-base").await;
    let base_ids: HashSet<String> = base.enqueue("f8", 0..fast).await.into_iter().collect();

    let mut behaviour = Behaviour::new().fault_times(
        Step::Greeting,
        trickle("220 slow.test ESMTP, one byte at a time"),
        2,
    );
    for k in 0..slow {
        behaviour = behaviour
            .fault_for(
                &format!("trickle-{k}@example.com"),
                Step::DataEnd,
                trickle("250 2.0.0 accepted, one byte at a time"),
            )
            .fault_for(
                &format!("hang-{k}@example.com"),
                Step::DataEnd,
                Action::Hang,
            );
    }
    let relay = FaultServer::start(behaviour).await;
    let mut rig = Rig::new("f8").await;
    let mut slow_ids = rig.enqueue("trickle", 0..slow).await;
    slow_ids.extend(rig.enqueue("hang", 0..slow).await);
    let fast_ids: HashSet<String> = rig.enqueue("f8", 0..fast).await.into_iter().collect();
    let start = Instant::now();
    let start_ms = now();
    rig.start(
        transport(relay.addr(), Timeouts::uniform(deadline), Security::Plain),
        settings(3, Duration::from_millis(200), Duration::from_secs(1)),
    );
    tokio::join!(
        wait_all_final(&rig.store, fast + 2 * slow, Duration::from_secs(120)),
        deliver_all(&mut base, &base_relay, fast, deadline)
    );
    rig.stop().await;
    let fast_took = nine_tenths(&rig, &fast_ids, start_ms).await;
    let base_took = nine_tenths(&base, &base_ids, start_ms).await;

    // At the relay: each slow fault, and when the client hung up after it
    // (a trickling relay notices at its next byte or two).
    let times = crate::common::wait_for(
        Duration::from_secs(5),
        "the stalled connections closed",
        || async {
            let times = relay.connection_times();
            let open: Vec<usize> = relay
                .fired()
                .iter()
                .map(|f| f.connection)
                .filter(|c| times[*c].closed.is_none())
                .collect();
            if open.is_empty() {
                Ok(times)
            } else {
                Err(format!("connections {open:?} still open"))
            }
        },
    )
    .await;
    let mut abandoned = Vec::new();
    // Connection time taken by stalls while the fast emails were going out.
    let mut blocked = Duration::ZERO;
    let fast_end = start + fast_took;
    for f in relay.fired() {
        let closed = times[f.connection].closed.expect("closed");
        abandoned.push((f.step.clone(), closed.duration_since(f.at)));
        let from = f.at.max(start);
        blocked += closed.min(fast_end).saturating_duration_since(from);
    }
    let early = Duration::from_millis(100);
    let late = Duration::from_millis(700);
    for (step, after) in &abandoned {
        assert!(
            *after + early >= deadline && *after <= deadline + late,
            "an attempt stalled at {step:?} was abandoned after {after:?}, not at its \
             {deadline:?} deadline"
        );
    }
    let greetings = abandoned
        .iter()
        .filter(|(s, _)| *s == Step::Greeting)
        .count();
    assert_eq!(greetings, 2, "{abandoned:?}");
    let after_dot = abandoned.len() - greetings;

    // In the store: every stall is one attempt that timed out, those after
    // the final "." marked; the slow emails failed after max-fails (3),
    // every other email was sent.
    let all = attempts(&rig.store).await;
    let timed_out: Vec<&AttemptRow> = all
        .iter()
        .filter(|a| a.reply.contains("timed out"))
        .collect();
    assert_eq!(timed_out.len(), abandoned.len(), "{timed_out:?}");
    let marked = all.iter().filter(|a| a.possible_duplicate).count();
    assert_eq!(marked, after_dot, "cut-offs after the final dot marked");
    for id in &slow_ids {
        let mine: Vec<&&AttemptRow> = timed_out.iter().filter(|a| &a.email_id == id).collect();
        assert_eq!(
            mine.len(),
            3,
            "{id}: three attempts, each timed out: {mine:?}"
        );
    }
    let t = tally(&rig.store).await;
    assert_eq!(t.state("sent"), fast as u64, "{:?}", t.stats);
    assert_eq!(t.state("failed"), 2 * slow as u64, "{:?}", t.stats);
    // Throughput per connection: alone, four connections the whole time;
    // with the slow sessions, the connection time they left free.
    let bulk = (fast * 9).div_ceil(10) as f64;
    let base_rate = bulk / base_took.as_secs_f64();
    let rate = bulk / fast_took.as_secs_f64();
    let base_per_conn = base_rate / 4.0;
    let free = (4.0 * fast_took.as_secs_f64() - blocked.as_secs_f64()).max(0.001);
    let per_conn = bulk / free;
    let spread = |d: &Duration| d.as_millis();
    Figures::new("F8", rng.seed)
        .put("fast_emails", fast)
        .put("slow_emails", 2 * slow)
        .put("deadline_ms", deadline.as_millis())
        .put("stalled_attempts", abandoned.len())
        .put(
            "abandoned_after_min_ms",
            abandoned.iter().map(|(_, d)| spread(d)).min().unwrap_or(0),
        )
        .put(
            "abandoned_after_max_ms",
            abandoned.iter().map(|(_, d)| spread(d)).max().unwrap_or(0),
        )
        .put("rate_alone_per_s", format!("{base_rate:.0}"))
        .put("rate_with_slow_per_s", format!("{rate:.0}"))
        .put(
            "stalled_connection_s",
            format!("{:.1}", blocked.as_secs_f64()),
        )
        .put(
            "per_free_connection_alone_per_s",
            format!("{base_per_conn:.0}"),
        )
        .put(
            "per_free_connection_with_slow_per_s",
            format!("{per_conn:.0}"),
        )
        .put(
            "per_connection_ratio",
            format!("{:.2}", per_conn / base_per_conn),
        )
        .print();
    assert!(
        per_conn >= base_per_conn / 2.0,
        "the connections that were not stalled slowed down: {per_conn:.0} emails/s each \
         with the slow sessions, {base_per_conn:.0}/s without"
    );
}

/// F9. Every reply of the relay (greeting, EHLO, MAIL, RCPT, DATA, the
/// final `.`) is, with probability 0.3, `421` followed by a hang-up. With
/// max-fails high enough (200), every email is sent: 0 permanent failures;
/// every 421 the relay gave is one recorded attempt with code 421, and the
/// relay accepted each email exactly once.
pub(crate) async fn random_421() {
    let n = pick(300, 3_000);
    let p = 0.3;
    let rng = Rng::new();
    let bye = Action::ReplyAndClose("421 4.3.2 service shutting down, try again later".into());
    let mut behaviour = Behaviour::new().seed(rng.seed);
    for step in [
        Step::Greeting,
        Step::Ehlo,
        Step::Mail,
        Step::Rcpt,
        Step::Data,
        Step::DataEnd,
    ] {
        behaviour = behaviour.fault_with_chance(step, bye.clone(), p);
    }
    let relay = FaultServer::start(behaviour).await;
    let mut rig = Rig::new("f9").await;
    let ids: HashSet<String> = rig.enqueue("f9", 0..n).await.into_iter().collect();
    let start = Instant::now();
    rig.start(
        transport(
            relay.addr(),
            Timeouts::uniform(Duration::from_secs(5)),
            Security::Plain,
        ),
        settings(200, Duration::from_millis(10), Duration::from_millis(100)),
    );
    wait_all_final(&rig.store, n, Duration::from_secs(300)).await;
    let took = start.elapsed();
    rig.stop().await;
    let t = tally(&rig.store).await;
    assert_eq!(t.state("failed"), 0, "permanent failures: {:?}", t.stats);
    let found = check_all_sent(&rig.store, &ids, &accepted(&relay)).await;
    assert_eq!(found.received_twice, 0, "an email accepted twice");

    let fired = relay.fired();
    // A 421 to the first command on a reused connection is how a relay
    // closes an idle connection: the client tries again at once on a new
    // one, and that is not an attempt. (After a 421 the relay hangs up, so
    // the MAIL it answered is its connection's last.)
    let mut mails: HashMap<usize, usize> = HashMap::new();
    for c in relay.command_log() {
        if verb(&c.line) == "MAIL" {
            *mails.entry(c.connection).or_default() += 1;
        }
    }
    let stale = fired
        .iter()
        .filter(|f| f.step == Step::Mail && mails.get(&f.connection).copied().unwrap_or(0) >= 2)
        .count();
    let all = attempts(&rig.store).await;
    let failed: Vec<&AttemptRow> = all.iter().filter(|a| a.outcome != "sent").collect();
    for a in &failed {
        assert!(
            a.smtp_code == Some(421) && a.reply.contains("service shutting down"),
            "an attempt recorded without its 421: {a:?}"
        );
    }
    assert_eq!(
        failed.len(),
        fired.len() - stale,
        "{} 421s given ({stale} to MAIL on a reused connection), {} failed attempts recorded",
        fired.len(),
        failed.len()
    );
    assert_eq!(all.len(), n + failed.len());
    let by_step = |s: Step| fired.iter().filter(|f| f.step == s).count();
    let after_dot = relay.received().iter().filter(|r| !r.accepted()).count();
    Figures::new("F9", rng.seed)
        .put("emails", n)
        .put("p_421_per_reply", p)
        .put("attempts", all.len())
        .put("replies_421", fired.len())
        .put("at_greeting", by_step(Step::Greeting))
        .put("at_ehlo", by_step(Step::Ehlo))
        .put("at_mail", by_step(Step::Mail))
        .put("at_mail_reused_connection_retried_at_once", stale)
        .put("at_rcpt", by_step(Step::Rcpt))
        .put("at_data", by_step(Step::Data))
        .put("after_final_dot", after_dot)
        .put("attempts_with_421_recorded", failed.len())
        .put("permanent_failures", 0)
        .put("accepted_twice", 0)
        .put(
            "max_attempts_one_email",
            all.iter()
                .fold(HashMap::<&str, usize>::new(), |mut m, a| {
                    *m.entry(a.email_id.as_str()).or_default() += 1;
                    m
                })
                .values()
                .max()
                .copied()
                .unwrap_or(0),
        )
        .secs("total_s", took)
        .print();
}

/// F10. Emails to 1-6 recipients each, a fifth of them unknown to the
/// relay (`550`); the relay greylists (`450` the first time it sees each
/// sender and recipient) and takes at most 3 recipients per transaction
/// (`452` beyond). Every good recipient is delivered exactly once (counted
/// in the messages the relay accepted), after one `450`; every unknown one
/// is asked for exactly once and never again, and every RCPT's reply is in
/// the attempts. An email with no good recipient fails, the others are sent.
pub(crate) async fn recipient_replies() {
    let n = pick(150, 1_500);
    let mut rng = Rng::new();
    let seed = rng.seed;
    let mut plan: Vec<Vec<String>> = Vec::new();
    let mut bad = HashSet::new();
    for i in 0..n {
        let count = rng.between(1, 6);
        let to: Vec<String> = (0..count)
            .map(|k| {
                if rng.chance(0.2) {
                    let a = format!("bad-{i}-{k}@example.com");
                    bad.insert(a.clone());
                    a
                } else {
                    format!("u-{i}-{k}@example.com")
                }
            })
            .collect();
        plan.push(to);
    }
    let mut behaviour = Behaviour::new().greylisting().max_recipients(3);
    for a in &bad {
        behaviour = behaviour.fault(
            Step::RcptTo(a.clone()),
            Action::Reply("550 5.1.1 no such user here".into()),
        );
    }
    let relay = FaultServer::start(behaviour).await;
    let mut rig = Rig::new("f10").await;
    let mut ids = Vec::new();
    for (i, to) in plan.iter().enumerate() {
        let email = Email::builder()
            .from("shop@example.com")
            .to(to.join(", ").as_str())
            .subject(format!("f10 #{i}"))
            .text("Several recipients.")
            .build()
            .expect("build");
        ids.push(
            rig.mailer
                .enqueue(&email)
                .await
                .expect("enqueue")
                .to_string(),
        );
    }
    let start = Instant::now();
    rig.start(
        transport(
            relay.addr(),
            Timeouts::uniform(Duration::from_secs(5)),
            Security::Plain,
        ),
        settings(30, Duration::from_millis(20), Duration::from_millis(200)),
    );
    wait_all_final(&rig.store, n, Duration::from_secs(120)).await;
    let took = start.elapsed();
    rig.stop().await;

    // The relay's view: accepted deliveries and RCPT commands per address.
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in relay.received().iter().filter(|r| r.accepted()) {
        for to in &r.rcpt_to {
            *delivered.entry(to.clone()).or_default() += 1;
        }
    }
    let mut asked: HashMap<String, usize> = HashMap::new();
    for c in relay.commands() {
        if let Some(rest) = c.strip_prefix("RCPT TO:<") {
            let addr = rest.split('>').next().unwrap_or_default().to_owned();
            *asked.entry(addr).or_default() += 1;
        }
    }
    // The store's view: every RCPT reply, per address, in order.
    let mut replies: HashMap<String, Vec<u16>> = HashMap::new();
    for a in attempts(&rig.store).await {
        for (addr, code, _) in a.recipients {
            replies.entry(addr).or_default().push(code);
        }
    }
    let rows = all_rows(&rig.store, n).await;
    let state: HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r.id.as_str(), r.state.as_str()))
        .collect();
    let (mut good_total, mut greylisted, mut too_many) = (0, 0, 0);
    for (id, to) in ids.iter().zip(&plan) {
        let any_good = to.iter().any(|a| !bad.contains(a));
        let want = if any_good { "sent" } else { "failed" };
        assert_eq!(state[id.as_str()], want, "{id} to {to:?}");
        for a in to {
            let codes = replies.get(a).cloned().unwrap_or_default();
            let times_asked = asked.get(a).copied().unwrap_or(0);
            assert_eq!(
                codes.len(),
                times_asked,
                "{a}: asked {times_asked} times, {codes:?} recorded"
            );
            let got = delivered.get(a).copied().unwrap_or(0);
            if bad.contains(a) {
                assert_eq!(codes, [550], "{a}: a 5xx is not retried");
                assert_eq!(got, 0, "{a} was delivered");
            } else {
                good_total += 1;
                assert_eq!(got, 1, "{a} delivered {got} times ({codes:?})");
                let (last, before) = codes.split_last().expect("asked at least once");
                assert_eq!(*last, 250, "{a}: {codes:?}");
                assert!(
                    before.iter().all(|c| (400..500).contains(c)),
                    "{a}: {codes:?}"
                );
                assert_eq!(
                    codes.iter().filter(|c| **c == 450).count(),
                    1,
                    "{a}: greylisted once: {codes:?}"
                );
                greylisted += 1;
                too_many += codes.iter().filter(|c| **c == 452).count();
            }
        }
    }
    assert!(too_many > 0, "no transaction had more than 3 recipients");
    let t = tally(&rig.store).await;
    Figures::new("F10", seed)
        .put("emails", n)
        .put("recipients", good_total + bad.len())
        .put("good", good_total)
        .put("unknown_550", bad.len())
        .put("greylisted_450", greylisted)
        .put("too_many_452", too_many)
        .put("good_delivered_exactly_once", good_total)
        .put("unknown_asked_once", bad.len())
        .put("emails_sent", t.state("sent"))
        .put("emails_failed_all_unknown", t.state("failed"))
        .put("attempts", t.stats.attempts_total)
        .secs("total_s", took)
        .print();
}

/// The verb of a command line (`MAIL FROM:<a>` → `MAIL`).
fn verb(line: &str) -> String {
    line.split([' ', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// F11. A relay with STARTTLS and AUTH that lies: `250` at once after
/// `354`, before the message (and `554` after the final `.`); garbage
/// instead of a reply to MAIL, RCPT or the final `.`; and STARTTLS refused
/// (`454`), broken (garbage instead of a handshake), or answered together
/// with injected plaintext lines (which must be discarded). Nothing is
/// marked sent that the relay did not accept with `250` after the final
/// `.`, over TLS, authenticated, exactly once; no AUTH, MAIL, RCPT or DATA
/// ever went in the clear.
pub(crate) async fn lying_relay() {
    let n = pick(200, 2_000);
    let rng = Rng::new();
    let pki = TestPki::new(&["127.0.0.1"]);
    let (user, password) = ("mailer", "chaos-secret");
    let behaviour = Behaviour::new()
        .starttls(pki.server.clone())
        .auth(user, password)
        .seed(rng.seed)
        .fault_with_chance(
            Step::StartTls,
            Action::Reply("454 4.7.0 TLS not available right now".into()),
            0.1,
        )
        .fault_with_chance(
            Step::StartTls,
            Action::ReplyThenGarbage("220 2.0.0 ready to start TLS".into()),
            0.1,
        )
        .fault_with_chance(
            Step::StartTls,
            Action::Reply(
                "220 2.0.0 ready to start TLS\r\n250-injected.test\r\n250 AUTH PLAIN".into(),
            ),
            0.1,
        )
        .fault_with_chance(Step::Data, Action::EarlyAccept, 0.15)
        .fault_with_chance(
            Step::Mail,
            Action::Reply("hello? this is not an SMTP reply".into()),
            0.05,
        )
        .fault_with_chance(Step::Rcpt, Action::Reply("25O 2.1.5 almost".into()), 0.05)
        .fault_with_chance(
            Step::DataEnd,
            Action::Reply("\u{7f}\u{1}garbage after the final dot".into()),
            0.05,
        );
    let relay = FaultServer::start(behaviour).await;
    let mut rig = Rig::new("f11").await;
    let ids: HashSet<String> = rig.enqueue("f11", 0..n).await.into_iter().collect();
    let addr = relay.addr();
    let start = Instant::now();
    rig.start(
        smtp_transport(SmtpConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            security: Security::StartTls,
            username: Some(user.into()),
            password: Some(password.into()),
            hello_name: "chaos.test".into(),
            timeouts: Timeouts::uniform(Duration::from_secs(3)),
            max_connections: 4,
            extra_root_certs: vec![pki.ca_file.clone()],
            ..SmtpConfig::default()
        }),
        settings(100, Duration::from_millis(10), Duration::from_millis(100)),
    );
    wait_all_final(&rig.store, n, Duration::from_secs(300)).await;
    let took = start.elapsed();
    rig.stop().await;
    let t = tally(&rig.store).await;
    assert_eq!(t.state("failed"), 0, "{:?}", t.stats);

    // Sent in the store <=> accepted by the relay, once, over TLS, logged in.
    let found = check_all_sent(&rig.store, &ids, &accepted(&relay)).await;
    assert_eq!(found.received_twice, 0, "an email accepted twice");
    let received = relay.received();
    for r in &received {
        assert!(r.tls, "a message went in the clear");
        assert_eq!(r.user.as_deref(), Some(user), "a message sent without AUTH");
    }
    let mut refused_after_dot = HashSet::new();
    for r in received.iter().filter(|r| !r.accepted()) {
        refused_after_dot.insert(message_id(&r.data));
    }
    let sensitive: Vec<String> = relay
        .command_log()
        .into_iter()
        .filter(|c| !c.tls && ["AUTH", "MAIL", "RCPT", "DATA"].contains(&verb(&c.line).as_str()))
        .map(|c| c.line)
        .collect();
    assert!(
        sensitive.is_empty(),
        "sent in the clear: {:?}",
        &sensitive[..sensitive.len().min(5)]
    );
    let fired = relay.fired();
    let count = |i: usize| fired.iter().filter(|f| f.fault == i).count();
    assert!(count(3) > 0, "no early 250 was tried");
    Figures::new("F11", rng.seed)
        .put("emails", n)
        .put("attempts", t.stats.attempts_total)
        .put("starttls_454", count(0))
        .put("tls_handshake_garbage", count(1))
        .put("plaintext_injected_before_tls", count(2))
        .put("early_250_before_dot", count(3))
        .put("garbage_reply_mail", count(4))
        .put("garbage_reply_rcpt", count(5))
        .put("garbage_after_dot", count(6))
        .put(
            "messages_refused_or_unanswered_after_dot",
            refused_after_dot.len(),
        )
        .put("sent_not_accepted", 0)
        .put("accepted_twice", 0)
        .put("auth_mail_rcpt_data_in_clear", 0)
        .put("possible_duplicates_marked", found.marked)
        .secs("total_s", took)
        .print();
}
