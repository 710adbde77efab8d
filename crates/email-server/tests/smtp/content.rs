//! Lines starting with dots, bare LF and bare CR reach a server intact:
//! ours, and aiosmtpd, a real one we did not write.

use std::net::SocketAddr;

use crate::support::aiosmtpd::Aiosmtpd;
use crate::support::fault_smtp::{Behaviour, FaultServer};
use crate::{MESSAGE, config, guard, pool, rcpts, send_one};

/// What a server must store for `message`: every line ending CRLF, a final
/// CRLF, nothing else changed. Computed independently of the client.
fn normalised(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).expect("ASCII test message");
    let mut text = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n");
    if !text.ends_with("\r\n") {
        text.push_str("\r\n");
    }
    text.into_bytes()
}

/// Lines starting with dots, a lone dot (with a bare LF and a bare CR
/// around it), and a body that does not end with a line ending.
const TRICKY: &[u8] = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: dots\r\n\r\n\
.leading dot\r\n..two dots\nbare LF above\rbare CR above\n.\nlone dot above, bare LFs\r\n.\r\
\n.\r\nMAIL FROM:<smuggled@example.com>\r\nlast line without ending";

#[tokio::test]
async fn fault_server_receives_tricky_content_intact() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let delivery = pool(config(server.addr()))
            .send("a@example.com", &rcpts(&["b@example.com"]), TRICKY)
            .await;
        assert!(delivery.is_sent());
        assert_eq!(
            String::from_utf8_lossy(&server.received()[0].data),
            String::from_utf8_lossy(&normalised(TRICKY))
        );
        assert_eq!(
            server
                .commands()
                .iter()
                .filter(|c| c.starts_with("MAIL"))
                .count(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn aiosmtpd_receives_tricky_content_intact() {
    guard(async {
        let Some(sink) = Aiosmtpd::start().await else {
            return;
        };
        let addr: SocketAddr = ([127, 0, 0, 1], sink.port).into();
        let pool = pool(config(addr));
        let to = rcpts(&["b@example.com", "c@example.com"]);
        let delivery = pool.send("a@example.com", &to, TRICKY).await;
        assert!(delivery.is_sent(), "{delivery:?}");
        assert!(send_one(&pool).await.is_sent());
        let messages = sink.messages();
        assert_eq!(messages.len(), 2, "one message per send, nothing smuggled");
        assert_eq!(messages[0].mail_from, "a@example.com");
        assert_eq!(messages[0].rcpt_to, to);
        assert_eq!(
            String::from_utf8_lossy(&messages[0].data),
            String::from_utf8_lossy(&normalised(TRICKY))
        );
        assert_eq!(messages[1].data, MESSAGE);
        pool.close().await;
    })
    .await;
}
