//! F5: the relay down (its port closed: connections refused) for a while,
//! then back on the same port.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use email_server::smtp::{Security, Timeouts};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::{
    Figures, Rig, Rng, accepted, attempts, check_all_sent, now, pick, settings, transport, wait_for,
};
use crate::scale::{skip_or_fail, tally};
use crate::support::fault_smtp::{Behaviour, FaultServer};

/// `syn_counter.py`: counts connection attempts to a port on the wire,
/// where refused ones can be seen too.
struct SynCounter {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SynCounter {
    /// `Err` with the reason when packet capture is not allowed here.
    async fn start(port: u16) -> Result<SynCounter, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chaos/syn_counter.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "syn_counter.py said nothing for 10 s".to_owned())?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if first != "READY" {
            return Err(format!("syn_counter.py: {first}"));
        }
        Ok(SynCounter {
            _child: child,
            stdin,
            lines,
        })
    }

    /// SYNs seen so far (after letting the capture catch up).
    async fn count(&mut self) -> u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.stdin.write_all(b"?\n").await.expect("ask the counter");
        self.stdin.flush().await.expect("flush");
        let line = self
            .lines
            .next_line()
            .await
            .expect("read the counter")
            .expect("the counter ended");
        line.strip_prefix("COUNT ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected counter line {line:?}"))
    }
}

/// Max connections per relay (`common::transport`).
const CONNECTIONS: u64 = 4;

/// How soon after the relay's return every email must be delivered: the
/// pool's circuit breaker may hold its next connection attempt for up to
/// 30 s (its longest hold), then an email waits at most the retry
/// schedule's longest wait (5 s here), plus slack for a busy machine.
const DRAIN: Duration = Duration::from_secs(45);

/// The in-process dispatcher (4 connections, retries after 1 s doubling
/// to 5 s, max-fails 50) delivers N emails to our relay; after an eighth
/// of them went out, the relay's port is closed for D seconds while the
/// second half of the emails is enqueued, then it listens again on the
/// same port. Every email is delivered (0 failed, 0 expired), within
/// [`DRAIN`] of the relay's return; the connection attempts while it is down,
/// counted as SYNs on the wire, are bounded per relay, not per email: at
/// most one round of `max-connections` attempts per second of outage.
pub(crate) async fn run() {
    let (n, outage) = pick(
        (400, Duration::from_secs(5)),
        (3_000, Duration::from_secs(60)),
    );
    let rng = Rng::new();
    let relay = FaultServer::start(Behaviour::new()).await;
    let addr = relay.addr();
    let mut counter = match SynCounter::start(addr.port()).await {
        Ok(c) => Some(c),
        Err(e) => {
            skip_or_fail("chaos F5 (SYN count)", &e);
            None
        }
    };
    let mut rig = Rig::new("f5").await;
    let timeouts = Timeouts::uniform(Duration::from_secs(5));
    rig.start(
        transport(addr, timeouts, Security::Plain),
        settings(50, Duration::from_secs(1), Duration::from_secs(5)),
    );
    let start = Instant::now();
    let mut promised: HashSet<String> = rig.enqueue("f5", 0..n / 2).await.into_iter().collect();
    wait_for(Duration::from_secs(60), "the first emails out", || async {
        let sent = relay.received().len();
        if sent >= n / 8 {
            Ok(())
        } else {
            Err(format!("{sent} received"))
        }
    })
    .await;

    // Down: the listener and every open connection close.
    let syn_down = match &mut counter {
        Some(c) => c.count().await,
        None => 0,
    };
    let down_ms = now();
    let down_at = Instant::now();
    relay.shut_down().await;
    let before_down = accepted(&relay);
    drop(relay);
    // The rest of the emails arrive during the outage.
    let chunks = 10;
    for k in 0..chunks {
        let (from, to) = (
            n / 2 + k * (n / 2) / chunks,
            n / 2 + (k + 1) * (n / 2) / chunks,
        );
        promised.extend(rig.enqueue("f5", from..to).await);
        tokio::time::sleep(outage / (2 * chunks as u32)).await;
    }
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let syn_up = match &mut counter {
        Some(c) => c.count().await,
        None => 0,
    };
    let up_ms = now();
    let relay = FaultServer::start_on(addr, Behaviour::new())
        .await
        .expect("the relay back on its port");
    let up_at = Instant::now();
    let drained = wait_for(
        DRAIN,
        "every email delivered after the relay came back",
        || async {
            let t = tally(&rig.store).await;
            if t.open == 0 {
                Ok(up_at.elapsed())
            } else {
                Err(format!("{:?}", t.stats.states))
            }
        },
    )
    .await;
    rig.stop().await;
    let t = tally(&rig.store).await;
    assert_eq!(t.state("failed"), 0, "permanent failures: {:?}", t.stats);
    assert_eq!(t.state("expired"), 0, "expired: {:?}", t.stats);
    let mut seen: HashMap<String, usize> = before_down;
    for (mid, times) in accepted(&relay) {
        *seen.entry(mid).or_default() += times;
    }
    let found = check_all_sent(&rig.store, &promised, &seen).await;

    // The dispatcher's own view: attempts during the outage that tried to
    // connect, and those that gave up without trying.
    let during: Vec<_> = attempts(&rig.store)
        .await
        .into_iter()
        .filter(|a| a.started_at >= down_ms && a.started_at < up_ms)
        .collect();
    let tried = during
        .iter()
        .filter(|a| a.reply.contains("cannot connect") && !a.reply.contains("not retried"))
        .count();
    let held = during
        .iter()
        .filter(|a| a.reply.contains("not retried"))
        .count();
    let syns = syn_up - syn_down;
    let bound = CONNECTIONS * (outage.as_secs() + 1);
    let mut f = Figures::new("F5", rng.seed);
    f.put("emails", n)
        .secs("outage_s", outage)
        .put("attempts_during_outage", during.len())
        .put("connect_attempts_recorded", tried)
        .put("failed_fast_recorded", held)
        .put("syn_counted", if counter.is_some() { "yes" } else { "no" })
        .put("connection_attempts_at_port", syns)
        .put("bound_per_relay", bound)
        .put("permanent_failures", 0)
        .put("received_twice", found.received_twice)
        .secs("delivered_all_after_return_s", drained)
        .secs("total_s", start.elapsed());
    f.print();
    let counted = if counter.is_some() {
        syns
    } else {
        tried as u64
    };
    assert!(
        counted <= bound,
        "{counted} connection attempts to the relay during a {outage:?} outage with {n} emails: \
         more than {bound} ({CONNECTIONS} per second of outage); attempts are made per email, \
         not per relay ({} attempts recorded in the outage: {tried} tried to connect, {held} \
         gave up without trying)",
        during.len()
    );
}
