//! Connection reuse, the limits on connections, expiry, a relay that is
//! down, and configuration errors.

use std::time::Duration;

use email_server::smtp::{Security, SmtpConfig, SmtpError, SmtpPool};

use crate::support::fault_smtp::{Action, Behaviour, FaultServer, Step};
use crate::{config, guard, pool, send_one, transient};

#[tokio::test]
async fn pool_reuses_one_connection() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let pool = pool(SmtpConfig {
            max_connections: 1,
            ..config(server.addr())
        });
        for _ in 0..10 {
            assert!(send_one(&pool).await.is_sent());
        }
        // Concurrent sends queue for the one connection.
        let sends: Vec<_> = (0..10)
            .map(|_| {
                tokio::spawn({
                    let pool = pool.clone();
                    async move { send_one(&pool).await }
                })
            })
            .collect();
        for send in sends {
            assert!(send.await.expect("send task").is_sent());
        }
        assert_eq!(server.connections(), 1);
        assert_eq!(server.received().len(), 20);
        assert!(
            !server.commands().contains(&"RSET".to_owned()),
            "RSET after clean transactions"
        );
        pool.close().await;
        assert_eq!(server.commands().last().map(String::as_str), Some("QUIT"));
    })
    .await;
}

#[tokio::test]
async fn concurrency_is_bounded_by_max_connections() {
    guard(async {
        let slow = Action::Delay(Duration::from_millis(100));
        let server = FaultServer::start(Behaviour::new().fault(Step::DataEnd, slow)).await;
        let pool = pool(SmtpConfig {
            max_connections: 3,
            ..config(server.addr())
        });
        let sends: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn({
                    let pool = pool.clone();
                    async move { send_one(&pool).await }
                })
            })
            .collect();
        for send in sends {
            assert!(send.await.expect("send task").is_sent());
        }
        assert_eq!(server.max_active(), 3);
        assert_eq!(server.connections(), 3);
    })
    .await;
}

#[tokio::test]
async fn connections_retire_after_max_messages() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let pool = pool(SmtpConfig {
            max_connections: 1,
            max_messages_per_connection: 3,
            ..config(server.addr())
        });
        for _ in 0..7 {
            assert!(send_one(&pool).await.is_sent());
        }
        assert_eq!(server.connections(), 3);
        for connection in 0..2 {
            assert_eq!(
                server.commands_of(connection).last().map(String::as_str),
                Some("QUIT")
            );
        }
    })
    .await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let pool = pool(SmtpConfig {
            idle_timeout: Duration::from_millis(200),
            ..config(server.addr())
        });
        assert!(send_one(&pool).await.is_sent());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            server.commands_of(0).last().map(String::as_str),
            Some("QUIT")
        );
        assert_eq!(server.active(), 0);
        assert!(send_one(&pool).await.is_sent());
        assert_eq!(server.connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn pooled_connection_closed_by_the_server_is_replaced() {
    guard(async {
        let bye = Action::ReplyAndClose("250 2.0.0 queued, bye".into());
        let server = FaultServer::start(Behaviour::new().fault_once(Step::DataEnd, bye)).await;
        let pool = pool(config(server.addr()));
        assert!(send_one(&pool).await.is_sent());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            send_one(&pool).await.is_sent(),
            "the caller saw the stale connection"
        );
        assert_eq!(server.connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn relay_down_is_not_hammered() {
    guard(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener); // nothing listens there now
        let pool = pool(SmtpConfig {
            max_connections: 2,
            ..config(addr)
        });
        let sends: Vec<_> = (0..10)
            .map(|_| {
                tokio::spawn({
                    let pool = pool.clone();
                    async move { send_one(&pool).await }
                })
            })
            .collect();
        let mut attempted = 0;
        for send in sends {
            let delivery = send.await.expect("send task");
            let reason = transient(&delivery);
            assert!(reason.contains("cannot connect"), "{reason}");
            if !reason.contains("not retried") {
                attempted += 1;
            }
        }
        assert!(
            attempted <= 2,
            "{attempted} connection attempts for one relay"
        );
        // The breaker holds every new connection after a failure (1 s, then
        // doubling with each failure in a row: at most 2 s after the two
        // attempts above); after that the relay is tried again.
        let held = send_one(&pool).await;
        assert!(transient(&held).contains("not retried"), "{held:?}");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let again = send_one(&pool).await;
        assert!(!transient(&again).contains("not retried"), "{again:?}");
        // It failed again: the hold doubles.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let doubled = send_one(&pool).await;
        assert!(transient(&doubled).contains("not retried"), "{doubled:?}");
    })
    .await;
}

#[tokio::test]
async fn configuration_errors() {
    let missing = SmtpConfig {
        extra_root_certs: vec!["/nonexistent/ca.pem".into()],
        ..SmtpConfig::default()
    };
    assert!(matches!(
        SmtpPool::new(missing),
        Err(SmtpError::ReadRootCerts { .. })
    ));
    let no_password = SmtpConfig {
        username: Some("app".into()),
        ..SmtpConfig::default()
    };
    assert!(matches!(
        SmtpPool::new(no_password),
        Err(SmtpError::MissingPassword)
    ));
    let zero = SmtpConfig {
        max_connections: 0,
        ..SmtpConfig::default()
    };
    assert!(matches!(
        SmtpPool::new(zero),
        Err(SmtpError::Zero("max_connections"))
    ));
    let hello = SmtpConfig {
        hello_name: "a b\r\nMAIL".into(),
        ..SmtpConfig::default()
    };
    assert!(matches!(
        SmtpPool::new(hello),
        Err(SmtpError::InvalidHelloName(_))
    ));
    let not_pem =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-a-certificate.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write test file");
    let bad = SmtpConfig {
        extra_root_certs: vec![not_pem],
        ..SmtpConfig::default()
    };
    assert!(matches!(
        SmtpPool::new(bad),
        Err(SmtpError::NoRootCerts { .. })
    ));
    let defaults = SmtpConfig::default();
    assert_eq!(
        (defaults.port, defaults.security, defaults.max_connections),
        (587, Security::StartTls, 4)
    );
    assert_eq!(defaults.timeouts.data_end, Duration::from_secs(600));
}
