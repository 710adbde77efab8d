//! The whole SMTP client (`SmtpPool::send`: greeting, EHLO/HELO, AUTH,
//! MAIL, RCPT, DATA, PIPELINING, connection reuse and RSET, QUIT) against a
//! scripted server on a loopback socket that answers with fuzzed bytes.
//! Never panics, never hangs, and the `Delivery` it reports is consistent.
//!
//! Input: one flag byte, then NUL-separated pieces: the message to send,
//! then the server's chunks in order (the greeting first). The server
//! writes a chunk; if it ends a reply, waits for the client's next line
//! (or 3 ms of silence); writes the next; and hangs up when the script is
//! over.
//!
//! Flag bits: 0 = log in (AUTH), 1-2 = recipients - 1, 3 = send a second
//! message over the pooled connection.

#![no_main]

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use std::time::Duration;

use email_server::smtp::{Delivery, Outcome, Security, SmtpConfig, SmtpPool, Timeouts};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::time::{Instant, timeout_at};

/// How long the server waits for the client before it writes its next
/// chunk anyway (the client may be waiting for the rest of a reply).
const PATIENCE: Duration = Duration::from_millis(3);

fn runtime() -> &'static (Runtime, TcpListener) {
    static CELL: OnceLock<(Runtime, TcpListener)> = OnceLock::new();
    CELL.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("loopback listener");
        (rt, listener)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut pieces = rest.split(|&b| b == 0);
    let message = pieces.next().unwrap_or_default();
    let script: Vec<&[u8]> = pieces.collect();
    let login = flags & 1 != 0;
    let recipients: Vec<String> = (0..=(flags >> 1) & 3)
        .map(|i| format!("r{i}@example.com"))
        .collect();
    let twice = flags & 8 != 0;

    let (rt, listener) = runtime();
    let port = listener.local_addr().expect("address").port();
    let pool = SmtpPool::new(SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: Security::Plain,
        username: login.then(|| "user".into()),
        password: login.then(|| "secret".into()),
        hello_name: "fuzz.example".into(),
        // Only a backstop: the server never leaves the client waiting longer
        // than PATIENCE per chunk, and hangs up at the end of the script.
        timeouts: Timeouts::uniform(Duration::from_secs(2)),
        max_connections: 1,
        ..SmtpConfig::default()
    })
    .expect("pool");

    rt.block_on(async {
        let sent = RefCell::new(Vec::new());
        let next = Cell::new(0);
        let client = async {
            let mut deliveries = vec![pool.send("from@example.com", &recipients, message).await];
            if twice {
                deliveries.push(pool.send("from@example.com", &recipients, message).await);
            }
            pool.close().await;
            deliveries
        };
        // Each connection the client opens goes on with the script where
        // the previous one stopped; the server stops with the client.
        let server = async {
            loop {
                if let Ok((socket, _)) = listener.accept().await {
                    play(socket, &script, &next, &sent).await;
                }
            }
        };
        let deliveries = tokio::select! {
            deliveries = client => deliveries,
            () = server => unreachable!(),
        };
        for delivery in &deliveries {
            check(delivery, &recipients);
        }
        check_line_endings(&sent.borrow());
    });
});

/// Plays the script from chunk `next` on, recording what the client sends,
/// and hangs up when the script is over or the client has.
async fn play(
    mut socket: TcpStream,
    script: &[&[u8]],
    next: &Cell<usize>,
    sent: &RefCell<Vec<u8>>,
) {
    // Replies are small writes; Nagle's algorithm would hold them back for
    // the client's delayed ACK.
    let _ = socket.set_nodelay(true);
    let mut buf = [0u8; 16 << 10];
    let mut previous: Option<&[u8]> = None;
    while let Some(chunk) = script.get(next.get()) {
        // After a complete reply the client has something to say (or is
        // waiting for more replies to pipelined commands: PATIENCE). After
        // half a line or a `250-` line it can only be waiting for the rest.
        if previous.is_some_and(ends_a_reply) {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match timeout_at(deadline, socket.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return,
                    Ok(Ok(n)) => {
                        let mut sent = sent.borrow_mut();
                        sent.extend_from_slice(&buf[..n]);
                        if sent.ends_with(b"\n") {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        previous = Some(chunk);
        next.set(next.get() + 1);
        if socket.write_all(chunk).await.is_err() {
            return;
        }
    }
}

/// The chunk ends with a line that is not a continuation (`250-...`).
fn ends_a_reply(chunk: &[u8]) -> bool {
    let Some(body) = chunk.strip_suffix(b"\n") else {
        return false;
    };
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    last.get(3) != Some(&b'-')
}

/// What `Delivery` promises.
fn check(d: &Delivery, recipients: &[String]) {
    assert!(d.recipients.len() <= recipients.len(), "{d:?}");
    match &d.outcome {
        Outcome::Sent => {
            let reply = d.reply.as_ref().expect("a sent message has its reply");
            assert!(reply.is_positive(), "{d:?}");
            assert!(d.recipients.iter().any(|r| r.accepted()), "{d:?}");
            assert!(!d.possible_duplicate, "{d:?}");
        }
        Outcome::Transient(reason) | Outcome::Permanent(reason) => {
            assert!(!reason.is_empty(), "{d:?}");
        }
    }
}

/// The client sends CRLF line endings only (SMTP smuggling); a CR at the
/// very end may be waiting for its LF.
fn check_line_endings(sent: &[u8]) {
    for (i, &b) in sent.iter().enumerate() {
        if b == b'\r' && i + 1 < sent.len() {
            assert_eq!(sent[i + 1], b'\n', "bare CR at {i} in {sent:?}");
        }
        if b == b'\n' {
            assert!(i > 0 && sent[i - 1] == b'\r', "bare LF at {i} in {sent:?}");
        }
    }
}
