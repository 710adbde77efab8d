//! STARTTLS (required, never opportunistic), implicit TLS, certificate
//! checks, AUTH, and keeping credentials out of the logs.

use std::sync::{Arc, Mutex};

use email_server::smtp::{Outcome, Security, SmtpConfig};

use crate::support::certs::TestPki;
use crate::support::fault_smtp::{Action, Behaviour, FaultServer, Step};
use crate::{config, guard, pool, send_one, sent_mail, transient};

#[tokio::test]
async fn starttls_not_offered_sends_nothing_in_clear() {
    guard(async {
        let server = FaultServer::start(Behaviour::new()).await;
        let delivery = send_one(&pool(SmtpConfig {
            security: Security::StartTls,
            ..config(server.addr())
        }))
        .await;
        assert_eq!(transient(&delivery), "STARTTLS required but not offered");
        assert_eq!(server.commands(), ["EHLO client.test", "QUIT"]);
    })
    .await;
}

#[tokio::test]
async fn starttls_refused_with_454() {
    guard(async {
        let pki = TestPki::new(&["127.0.0.1"]);
        let refuse = Action::Reply("454 4.7.0 TLS not available".into());
        let server = FaultServer::start(
            Behaviour::new()
                .starttls(pki.server.clone())
                .fault(Step::StartTls, refuse),
        )
        .await;
        let config = SmtpConfig {
            security: Security::StartTls,
            extra_root_certs: vec![pki.ca_file.clone()],
            ..config(server.addr())
        };
        let delivery = send_one(&pool(config)).await;
        assert!(transient(&delivery).contains("454 4.7.0"), "{delivery:?}");
        assert!(!sent_mail(&server));
    })
    .await;
}

#[tokio::test]
async fn tls_handshake_failure() {
    guard(async {
        // STARTTLS is offered and accepted, then the server talks plaintext.
        let server = FaultServer::start(Behaviour::new().extension("STARTTLS")).await;
        let delivery = send_one(&pool(SmtpConfig {
            security: Security::StartTls,
            ..config(server.addr())
        }))
        .await;
        assert!(
            transient(&delivery).starts_with("TLS handshake failed"),
            "{delivery:?}"
        );
        assert!(!sent_mail(&server));
    })
    .await;
}

#[tokio::test]
async fn starttls_with_a_private_ca() {
    guard(async {
        let pki = TestPki::new(&["127.0.0.1", "localhost"]);
        let server = FaultServer::start(Behaviour::new().starttls(pki.server.clone())).await;
        let config = SmtpConfig {
            security: Security::StartTls,
            extra_root_certs: vec![pki.ca_file.clone()],
            ..config(server.addr())
        };
        let delivery = send_one(&pool(config)).await;
        assert_eq!(delivery.outcome, Outcome::Sent, "{delivery:?}");
        assert!(server.received()[0].tls);
        // EHLO again after the handshake, as RFC 3207 requires.
        let commands = server.commands();
        assert_eq!(
            commands[..3],
            ["EHLO client.test", "STARTTLS", "EHLO client.test"]
        );
    })
    .await;
}

#[tokio::test]
async fn implicit_tls() {
    guard(async {
        let pki = TestPki::new(&["127.0.0.1"]);
        let server = FaultServer::start(Behaviour::new().implicit_tls(pki.server.clone())).await;
        let config = SmtpConfig {
            security: Security::Tls,
            extra_root_certs: vec![pki.ca_file.clone()],
            ..config(server.addr())
        };
        assert_eq!(send_one(&pool(config)).await.outcome, Outcome::Sent);
        assert!(server.received()[0].tls);
    })
    .await;
}

#[tokio::test]
async fn untrusted_or_misnamed_certificates_are_rejected() {
    guard(async {
        let pki = TestPki::new(&["127.0.0.1"]);
        let other = TestPki::new(&["127.0.0.1"]);
        let server = FaultServer::start(Behaviour::new().starttls(pki.server.clone())).await;
        for roots in [vec![], vec![other.ca_file.clone()]] {
            let config = SmtpConfig {
                security: Security::StartTls,
                extra_root_certs: roots,
                ..config(server.addr())
            };
            let delivery = send_one(&pool(config)).await;
            assert!(
                transient(&delivery).starts_with("TLS handshake failed"),
                "{delivery:?}"
            );
        }
        // Trusted CA, but the certificate is for another name.
        let misnamed = TestPki::new(&["mail.example.com"]);
        let server2 = FaultServer::start(Behaviour::new().starttls(misnamed.server.clone())).await;
        let config = SmtpConfig {
            security: Security::StartTls,
            extra_root_certs: vec![misnamed.ca_file.clone()],
            ..config(server2.addr())
        };
        assert!(transient(&send_one(&pool(config)).await).starts_with("TLS handshake failed"));
        assert!(!sent_mail(&server) && !sent_mail(&server2));
    })
    .await;
}

#[tokio::test]
async fn plaintext_injected_before_the_handshake_is_discarded() {
    guard(async {
        let pki = TestPki::new(&["127.0.0.1"]);
        // A man in the middle appends a reply to the server's 220; if the
        // client kept it, it would read it as the answer to its EHLO over TLS.
        let inject = Action::Reply("220 2.0.0 ready\r\n250 injected".into());
        let behaviour = Behaviour::new()
            .starttls(pki.server.clone())
            .fault_once(Step::StartTls, inject);
        let server = FaultServer::start(behaviour).await;
        let config = SmtpConfig {
            security: Security::StartTls,
            extra_root_certs: vec![pki.ca_file.clone()],
            ..config(server.addr())
        };
        assert_eq!(send_one(&pool(config)).await.outcome, Outcome::Sent);
    })
    .await;
}

#[tokio::test]
async fn authentication() {
    guard(async {
        let server = FaultServer::start(Behaviour::new().auth("app", "s3cret")).await;
        let with = |password: &str| SmtpConfig {
            username: Some("app".into()),
            password: Some(password.into()),
            ..config(server.addr())
        };
        let delivery = send_one(&pool(with("wrong"))).await;
        let reason = transient(&delivery);
        assert!(
            reason.starts_with("authentication failed: 535 5.7.8"),
            "{reason}"
        );
        assert!(!sent_mail(&server));

        assert!(send_one(&pool(with("s3cret"))).await.is_sent());
        assert_eq!(server.received()[0].user.as_deref(), Some("app"));
        assert!(
            server
                .commands()
                .iter()
                .any(|c| c.starts_with("AUTH PLAIN "))
        );

        let mut login_only = Behaviour::new().auth("app", "s3cret");
        login_only.auth_mechanisms = "LOGIN".into();
        let server = FaultServer::start(login_only).await;
        let delivery = send_one(&pool(SmtpConfig {
            port: server.addr().port(),
            ..with("s3cret")
        }))
        .await;
        assert!(delivery.is_sent(), "{delivery:?}");
        assert!(server.commands().contains(&"AUTH LOGIN".to_owned()));
    })
    .await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_never_reach_the_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime keeps every poll on this thread, where the
    // subscriber is the default.
    let _default = tracing::subscriber::set_default(subscriber);
    guard(async {
        for mechanisms in ["PLAIN", "LOGIN"] {
            let mut behaviour = Behaviour::new().auth("app", "hunter2-secret");
            behaviour.auth_mechanisms = mechanisms.into();
            let server = FaultServer::start(behaviour).await;
            let config = SmtpConfig {
                username: Some("app".into()),
                password: Some("hunter2-secret".into()),
                ..config(server.addr())
            };
            assert!(format!("{config:?}").contains("<redacted>"));
            assert!(!format!("{config:?}").contains("hunter2"));
            assert!(send_one(&pool(config)).await.is_sent());
        }
    })
    .await;
    let logs = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("UTF-8 logs");
    assert!(logs.contains("C: AUTH PLAIN <redacted>"), "{logs}");
    assert!(
        logs.contains("C: MAIL FROM:<a@example.com>"),
        "commands are traced"
    );
    use base64::Engine as _;
    for secret in [
        "hunter2",
        &base64::engine::general_purpose::STANDARD.encode("hunter2-secret"),
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    let plain = base64::engine::general_purpose::STANDARD.encode("\0app\0hunter2-secret");
    assert!(!logs.contains(&plain));
}
