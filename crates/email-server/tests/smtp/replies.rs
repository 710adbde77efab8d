//! What each reply, hang-up, stall or garbage from the server turns into.

use std::time::{Duration, Instant};

use email_server::smtp::Outcome;

use crate::support::fault_smtp::{Action, Behaviour, FaultServer, Step};
use crate::{MESSAGE, config, guard, permanent, pool, rcpts, send_one, timeouts, transient};

#[tokio::test]
async fn delivers_and_reports_each_recipient() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let pool = pool(config(server.addr()));
        let delivery = send_one(&pool).await;
        assert_eq!(delivery.outcome, Outcome::Sent, "{delivery:?}");
        assert_eq!(delivery.relay, format!("{}", server.addr()));
        assert_eq!(delivery.reply.as_ref().map(|r| r.code), Some(250));
        assert_eq!(delivery.recipients.len(), 1);
        assert!(delivery.recipients[0].accepted());
        assert!(!delivery.possible_duplicate);
        let received = server.received();
        assert_eq!(received[0].mail_from, "a@example.com");
        assert_eq!(received[0].rcpt_to, ["b@example.com"]);
        assert_eq!(received[0].data, MESSAGE);
        // SIZE is advertised, so the client declares the size up front.
        assert!(
            server
                .commands()
                .contains(&format!("MAIL FROM:<a@example.com> SIZE={}", MESSAGE.len()))
        );
    })
    .await;
}

#[tokio::test]
async fn transient_reply_then_success_on_retry() {
    guard(async {
        let behaviour = Behaviour::new().fault_once(
            Step::Mail,
            Action::Reply("451 4.3.0 try again later".into()),
        );
        let server = FaultServer::start(behaviour).await;
        let pool = pool(config(server.addr()));
        let first = send_one(&pool).await;
        assert!(transient(&first).contains("451 4.3.0 try again later"));
        let reply = first.reply.expect("the refusing reply");
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (451, Some("4.3.0"))
        );
        assert!(reply.is_transient());
        let second = send_one(&pool).await;
        assert_eq!(second.outcome, Outcome::Sent);
        // The same connection, reset after the failed transaction.
        assert_eq!(server.connections(), 1);
        let commands = server.commands();
        let rset = commands
            .iter()
            .position(|c| c == "RSET")
            .expect("RSET before the retry");
        assert!(commands[rset + 1].starts_with("MAIL FROM:"));
        assert_eq!(server.received().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn permanent_reply_to_mail_from() {
    guard(async {
        let behaviour = Behaviour::new().fault(
            Step::Mail,
            Action::Reply("550 5.7.1 sender rejected".into()),
        );
        let server = FaultServer::start(behaviour).await;
        let delivery = send_one(&pool(config(server.addr()))).await;
        assert!(permanent(&delivery).contains("550 5.7.1 sender rejected"));
        assert_eq!(delivery.reply.map(|r| r.code), Some(550));
        assert!(delivery.recipients.is_empty());
        assert!(
            !server
                .commands()
                .iter()
                .any(|c| c.starts_with("RCPT") || c == "DATA")
        );
    })
    .await;
}

#[tokio::test]
async fn one_of_three_recipients_rejected() {
    guard(async {
        let reject = Action::Reply("550 5.1.1 no such user".into());
        let server = FaultServer::start(
            Behaviour::new().fault(Step::RcptTo("bad@example.com".into()), reject),
        )
        .await;
        let to = rcpts(&["one@example.com", "bad@example.com", "two@example.com"]);
        let delivery = pool(config(server.addr()))
            .send("a@example.com", &to, MESSAGE)
            .await;
        assert_eq!(delivery.outcome, Outcome::Sent);
        let results: Vec<(&str, u16, bool)> = delivery
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.reply.code, r.accepted()))
            .collect();
        assert_eq!(
            results,
            [
                ("one@example.com", 250, true),
                ("bad@example.com", 550, false),
                ("two@example.com", 250, true)
            ]
        );
        assert_eq!(
            delivery.recipients[1].reply.enhanced.as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            server.received()[0].rcpt_to,
            ["one@example.com", "two@example.com"]
        );
    })
    .await;
}

#[tokio::test]
async fn no_recipient_accepted() {
    guard(async {
        let server = FaultServer::start(
            Behaviour::new().fault(Step::Rcpt, Action::Reply("550 5.1.1 no".into())),
        )
        .await;
        let to = rcpts(&["x@example.com", "y@example.com"]);
        let delivery = pool(config(server.addr()))
            .send("a@example.com", &to, MESSAGE)
            .await;
        assert!(permanent(&delivery).contains("no recipient accepted"));
        assert_eq!(delivery.recipients.len(), 2);
        assert!(
            !server.commands().contains(&"DATA".to_owned()),
            "DATA sent without recipients"
        );

        // One 4xx among the refusals makes the whole attempt worth retrying.
        let behaviour = Behaviour::new()
            .fault(
                Step::RcptTo("x@example.com".into()),
                Action::Reply("550 5.1.1 no".into()),
            )
            .fault(
                Step::RcptTo("y@example.com".into()),
                Action::Reply("452 4.2.2 mailbox full".into()),
            );
        let server = FaultServer::start(behaviour).await;
        let delivery = pool(config(server.addr()))
            .send("a@example.com", &to, MESSAGE)
            .await;
        assert!(transient(&delivery).contains("452"));
        assert_eq!(delivery.reply.map(|r| r.code), Some(452));
    })
    .await;
}

#[tokio::test]
async fn reply_421_mid_session_drops_the_connection() {
    guard(async {
        let close = Action::ReplyAndClose("421 4.3.2 service shutting down".into());
        let server = FaultServer::start(Behaviour::new().fault_once(Step::Rcpt, close)).await;
        let pool = pool(config(server.addr()));
        let delivery = send_one(&pool).await;
        assert!(transient(&delivery).contains("421"));
        assert_eq!(delivery.recipients[0].reply.code, 421);
        assert_eq!(send_one(&pool).await.outcome, Outcome::Sent);
        assert_eq!(
            server.connections(),
            2,
            "the connection that got 421 was reused"
        );
    })
    .await;
}

#[tokio::test]
async fn connection_dropped_before_data() {
    guard(async {
        let server = FaultServer::start(Behaviour::new().fault(Step::Data, Action::Drop)).await;
        let delivery = send_one(&pool(config(server.addr()))).await;
        assert!(transient(&delivery).contains("closed"), "{delivery:?}");
        assert!(!delivery.possible_duplicate);
        assert!(server.received().is_empty());
    })
    .await;
}

#[tokio::test]
async fn connection_dropped_after_final_dot_is_a_possible_duplicate() {
    guard(async {
        let server = FaultServer::start(Behaviour::new().fault(Step::DataEnd, Action::Drop)).await;
        let delivery = send_one(&pool(config(server.addr()))).await;
        assert!(transient(&delivery).contains("may have been delivered"));
        assert!(delivery.possible_duplicate);
        assert_eq!(server.received().len(), 1, "the server did get the message");
    })
    .await;
}

#[tokio::test]
async fn stalled_replies_time_out_fast() {
    guard(async {
        for (step, duplicate) in [
            (Step::Greeting, false),
            (Step::Mail, false),
            (Step::DataEnd, true),
        ] {
            let server =
                FaultServer::start(Behaviour::new().fault(step.clone(), Action::Stall)).await;
            let mut config = config(server.addr());
            config.timeouts = timeouts(Duration::from_millis(300));
            let started = Instant::now();
            let delivery = send_one(&pool(config)).await;
            let elapsed = started.elapsed();
            assert!(
                transient(&delivery).contains("timed out"),
                "{step:?}: {delivery:?}"
            );
            assert_eq!(delivery.possible_duplicate, duplicate, "{step:?}");
            assert!(
                elapsed < Duration::from_secs(2),
                "{step:?} took {elapsed:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn early_reply_during_data_is_not_acceptance() {
    guard(async {
        let early = Action::Reply("354 go ahead\r\n250 2.0.0 accepted early".into());
        let server = FaultServer::start(Behaviour::new().fault_once(Step::Data, early)).await;
        let pool = pool(config(server.addr()));
        let delivery = send_one(&pool).await;
        assert!(
            transient(&delivery).starts_with("protocol error"),
            "{delivery:?}"
        );
        assert!(!delivery.possible_duplicate);
        assert_eq!(send_one(&pool).await.outcome, Outcome::Sent);
        assert_eq!(
            server.connections(),
            2,
            "the desynchronised connection was reused"
        );
    })
    .await;
}

#[tokio::test]
async fn garbage_reply_is_a_protocol_error() {
    guard(async {
        let server = FaultServer::start(
            Behaviour::new().fault_once(Step::Mail, Action::Reply("hello there".into())),
        )
        .await;
        let pool = pool(config(server.addr()));
        let delivery = send_one(&pool).await;
        assert!(
            transient(&delivery).starts_with("protocol error"),
            "{delivery:?}"
        );
        assert_eq!(send_one(&pool).await.outcome, Outcome::Sent);
        assert_eq!(server.connections(), 2);

        let absurd = Action::Reply(format!("250 {}", "x".repeat(5000)));
        let server = FaultServer::start(Behaviour::new().fault(Step::Ehlo, absurd)).await;
        let delivery = send_one(&self::pool(config(server.addr()))).await;
        assert!(transient(&delivery).contains("longer than"), "{delivery:?}");
    })
    .await;
}

#[tokio::test]
async fn envelope_that_would_inject_commands_is_refused() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let pool = pool(config(server.addr()));
        let evil = rcpts(&["b@example.com>\r\nRCPT TO:<c@example.com"]);
        assert!(
            permanent(&pool.send("a@example.com", &evil, MESSAGE).await)
                .contains("invalid recipient")
        );
        assert!(
            permanent(&pool.send("a@example.com", &[], MESSAGE).await).contains("no recipients")
        );
        assert_eq!(server.connections(), 0);
        // The null reverse-path of bounces is fine.
        assert!(
            pool.send("", &rcpts(&["b@example.com"]), MESSAGE)
                .await
                .is_sent()
        );
        assert!(
            server
                .commands()
                .iter()
                .any(|c| c.starts_with("MAIL FROM:<> "))
        );
    })
    .await;
}
