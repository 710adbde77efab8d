//! The SMTP client against a fault-injecting server (every failure mode the
//! dispatcher must tell apart), against aiosmtpd (a real server we did not
//! write), and over TLS with a private CA.
//!
//! - `smtp/replies.rs`: what each reply, drop, stall or garbage turns into.
//! - `smtp/pool.rs`: connection reuse, limits, expiry, a relay that is down,
//!   configuration errors.
//! - `smtp/tls.rs`: STARTTLS, implicit TLS, certificates, AUTH, redaction.
//! - `smtp/content.rs`: dots and line endings, through our server and
//!   aiosmtpd.
//!
//! The helpers below are shared by all of them.

mod support;

mod smtp {
    mod content;
    mod pipelining;
    mod pool;
    mod replies;
    mod tls;
}

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use email_server::smtp::{Delivery, Outcome, Security, SmtpConfig, SmtpPool, Timeouts};
use support::fault_smtp::FaultServer;

/// Every test finishes well within this, or fails instead of hanging.
async fn guard<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .expect("test took longer than 20 s")
}

fn timeouts(each: Duration) -> Timeouts {
    Timeouts::uniform(each)
}

/// Plaintext to the server, generous timeouts (stall tests shorten them).
fn config(addr: SocketAddr) -> SmtpConfig {
    SmtpConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        security: Security::Plain,
        hello_name: "client.test".into(),
        timeouts: timeouts(Duration::from_secs(5)),
        ..SmtpConfig::default()
    }
}

fn pool(config: SmtpConfig) -> SmtpPool {
    SmtpPool::new(config).expect("valid configuration")
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

const MESSAGE: &[u8] =
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: test\r\n\r\nHello.\r\n";

async fn send_one(pool: &SmtpPool) -> Delivery {
    pool.send("a@example.com", &rcpts(&["b@example.com"]), MESSAGE)
        .await
}

fn transient(delivery: &Delivery) -> &str {
    match &delivery.outcome {
        Outcome::Transient(reason) => reason,
        other => panic!("expected a transient failure, got {other:?} ({delivery:?})"),
    }
}

fn permanent(delivery: &Delivery) -> &str {
    match &delivery.outcome {
        Outcome::Permanent(reason) => reason,
        other => panic!("expected a permanent failure, got {other:?} ({delivery:?})"),
    }
}

fn sent_mail(server: &FaultServer) -> bool {
    server.commands().iter().any(|c| c.starts_with("MAIL"))
}
