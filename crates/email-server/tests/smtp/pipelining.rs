//! With PIPELINING offered, MAIL, RCPT and DATA go out together and their
//! replies are read in order; every outcome is the same as without it.

use email_server::smtp::Outcome;

use crate::support::fault_smtp::{Action, Behaviour, FaultServer, Step};
use crate::{MESSAGE, config, guard, permanent, pool, rcpts, send_one, transient};

fn pipelining() -> Behaviour {
    Behaviour::new().extension("PIPELINING")
}

#[tokio::test]
async fn delivers_many_messages_over_one_connection() {
    guard(async {
        let server = FaultServer::start(pipelining()).await;
        let pool = pool(config(server.addr()));
        for _ in 0..5 {
            let d = pool
                .send(
                    "a@example.com",
                    &rcpts(&["b@example.com", "c@example.com"]),
                    MESSAGE,
                )
                .await;
            assert_eq!(d.outcome, Outcome::Sent, "{d:?}");
            assert!(d.recipients.iter().all(|r| r.accepted()));
        }
        let received = server.received();
        assert_eq!(received.len(), 5);
        assert_eq!(received[4].rcpt_to, ["b@example.com", "c@example.com"]);
        assert_eq!(received[4].data, MESSAGE);
        assert_eq!(server.connections(), 1);
    })
    .await;
}

#[tokio::test]
async fn one_recipient_refused_the_others_delivered() {
    guard(async {
        let server = FaultServer::start(pipelining().fault(
            Step::RcptTo("bad@example.com".into()),
            Action::Reply("550 5.1.1 unknown".into()),
        ))
        .await;
        let pool = pool(config(server.addr()));
        let d = pool
            .send(
                "a@example.com",
                &rcpts(&["b@example.com", "bad@example.com", "c@example.com"]),
                MESSAGE,
            )
            .await;
        assert_eq!(d.outcome, Outcome::Sent, "{d:?}");
        let codes: Vec<u16> = d.recipients.iter().map(|r| r.reply.code).collect();
        assert_eq!(codes, [250, 550, 250]);
        assert_eq!(
            server.received()[0].rcpt_to,
            ["b@example.com", "c@example.com"]
        );
    })
    .await;
}

#[tokio::test]
async fn refused_sender_keeps_the_connection_in_step() {
    guard(async {
        let server = FaultServer::start(
            pipelining().fault_once(Step::Mail, Action::Reply("550 5.7.1 not you".into())),
        )
        .await;
        let pool = pool(config(server.addr()));
        let first = send_one(&pool).await;
        assert!(permanent(&first).contains("550 5.7.1"), "{first:?}");
        // The replies to RCPT and DATA were consumed: the next message on
        // the same connection is read correctly.
        let second = send_one(&pool).await;
        assert_eq!(second.outcome, Outcome::Sent, "{second:?}");
        assert_eq!(server.received().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn every_recipient_refused_sends_no_message() {
    guard(async {
        let server = FaultServer::start(
            pipelining().fault(Step::Rcpt, Action::Reply("450 4.2.0 greylisted".into())),
        )
        .await;
        let pool = pool(config(server.addr()));
        let d = send_one(&pool).await;
        assert!(transient(&d).contains("450"), "{d:?}");
        assert!(
            server.received().is_empty(),
            "no message without recipients"
        );
        let again = send_one(&pool).await;
        assert!(transient(&again).contains("450"));
    })
    .await;
}

#[tokio::test]
async fn cut_off_after_the_final_dot_is_a_possible_duplicate() {
    guard(async {
        let server = FaultServer::start(pipelining().fault_once(Step::DataEnd, Action::Drop)).await;
        let pool = pool(config(server.addr()));
        let d = send_one(&pool).await;
        assert!(d.possible_duplicate, "{d:?}");
        transient(&d);
        assert_eq!(send_one(&pool).await.outcome, Outcome::Sent);
    })
    .await;
}
