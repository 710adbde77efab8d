//! A minimal SMTP sink that records when each message arrives, for the
//! latency row of `bench/run` (issue 5).
//!
//! ```sh
//! bench_sink --log FILE [--listen 127.0.0.1:0]
//! ```
//!
//! Prints `port P` on stdout once it listens (port 0 picks a free one),
//! then accepts any number of connections and answers every command with
//! success: EHLO offers PIPELINING (replies are written only when the
//! client has nothing more buffered, so pipelined commands get their
//! replies in one write), 8BITMIME and SMTPUTF8. For each message it
//! appends one line to `FILE`:
//!
//! ```text
//! <message-id without angle brackets> <unix time in ns>
//! ```
//!
//! The time is taken when the final `.` has been read, just before the
//! `250` is written: the moment a relay has the message. Lines are
//! flushed whenever no message is waiting to be logged, so a reader sees
//! them within milliseconds. A message without a Message-ID is logged as
//! `-`. SIGTERM or SIGINT: the lines logged so far are flushed, then it
//! exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Cli {
    /// Where to listen; port 0 picks a free port (printed as `port P`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The file of `message-id receive-time-ns` lines (created or
    /// truncated).
    #[arg(long)]
    log: PathBuf,
}

/// What the connection tasks tell the log writer.
enum Event {
    /// A message arrived: its Message-ID and the Unix time in ns.
    Received(String, u128),
    /// Flush and stop: sent once, at shutdown, after every earlier event.
    Stop,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let file = tokio::fs::File::create(&cli.log)
        .await
        .with_context(|| format!("creating {}", cli.log.display()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_log(file, rx));
    println!("port {}", listener.local_addr()?.port());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-session is not our
                    // problem: what it completed is logged.
                    serve(stream, tx).await.ok();
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tx.send(Event::Stop).ok();
    writer.await??;
    Ok(())
}

async fn write_log(
    file: tokio::fs::File,
    mut rx: mpsc::UnboundedReceiver<Event>,
) -> anyhow::Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    while let Some(event) = rx.recv().await {
        let mut next = Some(event);
        // Write everything already waiting, then flush once.
        while let Some(event) = next {
            match event {
                Event::Received(id, ns) => {
                    out.write_all(format!("{id} {ns}\n").as_bytes()).await?;
                }
                Event::Stop => {
                    out.flush().await?;
                    return Ok(());
                }
            }
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    out.flush().await?;
    Ok(())
}

/// The replies, each a complete line (or lines) with CRLF.
const GREETING: &[u8] = b"220 bench-sink ESMTP\r\n";
const EHLO: &[u8] =
    b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
const OK: &[u8] = b"250 2.0.0 Ok\r\n";
const GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const UNKNOWN: &[u8] = b"502 5.5.2 Command not recognised\r\n";

async fn serve(stream: TcpStream, tx: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut replies: Vec<u8> = Vec::with_capacity(1024);
    replies.extend_from_slice(GREETING);
    let mut line = Vec::with_capacity(1024);
    loop {
        // PIPELINING: answer a batch of commands in one write, once the
        // client has nothing more buffered.
        if read.buffer().is_empty() && !replies.is_empty() {
            write.write_all(&replies).await?;
            replies.clear();
        }
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_slice() {
            b"EHLO" => replies.extend_from_slice(EHLO),
            b"HELO" => replies.extend_from_slice(b"250 bench-sink\r\n"),
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => replies.extend_from_slice(OK),
            b"DATA" => {
                replies.extend_from_slice(GO_AHEAD);
                write.write_all(&replies).await?;
                replies.clear();
                let Some(id) = read_message(&mut read, &mut line).await? else {
                    return Ok(());
                };
                let ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                tx.send(Event::Received(id, ns)).ok();
                replies.extend_from_slice(OK);
            }
            b"QUIT" => {
                replies.extend_from_slice(BYE);
                write.write_all(&replies).await?;
                return Ok(());
            }
            _ => replies.extend_from_slice(UNKNOWN),
        }
    }
}

/// Reads a message up to its final `.` line and returns its Message-ID
/// (`-` when it has none), or `None` when the client left first.
async fn read_message<R>(read: &mut R, line: &mut Vec<u8>) -> std::io::Result<Option<String>>
where
    R: AsyncBufReadExt + Unpin,
{
    let mut in_header = true;
    let mut in_message_id = false;
    let mut id = String::new();
    loop {
        line.clear();
        if read.read_until(b'\n', line).await? == 0 {
            return Ok(None);
        }
        let text = trim_eol(line);
        if text == b"." {
            break;
        }
        if !in_header {
            continue;
        }
        if text.is_empty() {
            in_header = false;
        } else if text[0] == b' ' || text[0] == b'\t' {
            // A folded continuation of the previous header.
            if in_message_id {
                id.push_str(&String::from_utf8_lossy(text));
            }
        } else {
            in_message_id = text.len() > 11 && text[..11].eq_ignore_ascii_case(b"message-id:");
            if in_message_id {
                id.push_str(&String::from_utf8_lossy(&text[11..]));
            }
        }
    }
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    Ok(Some(if id.is_empty() { "-".into() } else { id.into() }))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
