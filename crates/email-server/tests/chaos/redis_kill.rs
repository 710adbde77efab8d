//! F3: a Redis of the scenario's own (append-only file, `appendfsync
//! always`) killed with SIGKILL and restarted on the same port and
//! directory several times while producers enqueue and a server delivers.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use email::Mailer;
use email::config::Config;
use email_server::store::{SqliteStore, Store};

use crate::common::{
    Figures, Rng, ServerProc, accepted, check_all_sent, email, pick, redis_queue, server_config,
    sqlite_database, wait_all_final,
};
use crate::scale::{Ctx, Needs, PrivateRedis, isolated};
use crate::support::fault_smtp::{Behaviour, FaultServer};

/// What the durable producers saw.
#[derive(Default)]
struct Durable {
    acked: Vec<String>,
    errors: Vec<(String, Instant)>,
    slowest: Duration,
}

async fn durable(mailer: Arc<Mailer>, stop: Arc<AtomicBool>, tag: String) -> Durable {
    let mut out = Durable::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let called = Instant::now();
        let result = mailer.enqueue(&email(&tag, i)).await;
        out.slowest = out.slowest.max(called.elapsed());
        match result {
            Ok(id) => out.acked.push(id.to_string()),
            Err(e) => out.errors.push((e.to_string(), Instant::now())),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    out
}

/// What the buffered producer saw: ids handed out, and what `flush`
/// reported failed (documented: nothing is durable until `flush` returns;
/// failures are listed by it).
#[derive(Default)]
struct Buffered {
    handed_out: Vec<String>,
    failed: Vec<(String, String)>,
    written: u64,
    refused: usize,
}

async fn buffered(mailer: Mailer, stop: Arc<AtomicBool>) -> Buffered {
    let mut out = Buffered::default();
    let mut last_flush = Instant::now();
    let mut i = 0;
    let flush = |report: email::FlushReport, out: &mut Buffered| {
        out.written += report.written;
        out.failed.extend(
            report
                .failed
                .into_iter()
                .map(|(id, why)| (id.to_string(), why)),
        );
    };
    while !stop.load(Ordering::Relaxed) {
        match mailer.enqueue(&email("f3-buffered", i)).await {
            Ok(id) => out.handed_out.push(id.to_string()),
            Err(_) => out.refused += 1,
        }
        i += 1;
        if last_flush.elapsed() >= Duration::from_millis(250) {
            flush(mailer.flush().await.expect("flush"), &mut out);
            last_flush = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    flush(mailer.flush().await.expect("final flush"), &mut out);
    out
}

/// Two durable producer tasks and one buffered one enqueue through a
/// private Redis that is killed with SIGKILL `kills` times (down for a
/// random 0.5-2 s, restarted on the same port and append-only file), while
/// `email-server run` takes the stream into SQLite and delivers to our
/// relay. Every id a durable `enqueue` returned, and every buffered id a
/// `flush` did not report failed, is delivered; the durable calls failed
/// with errors during the outages, each within the queue's timeout; no
/// email is stored twice and the relay got none twice.
pub(crate) async fn run() {
    let kills = pick(2, 6);
    let needs = Needs {
        redis: false,
        postgres: false,
        python_redis: false,
        redis_server: true,
    };
    let Some(ctx) = Ctx::new("chaos-f3", needs).await else {
        return;
    };
    isolated(ctx, move |ctx| async move {
        let mut rng = Rng::new();
        let mut redis = PrivateRedis::start(ctx.dir.join("redis")).await;
        let sink = FaultServer::start(Behaviour::new()).await;
        let db = ctx.dir.join("email.db");
        let config_path = server_config(
            &ctx.dir,
            &redis_queue(&redis.url(), &ctx.name),
            &sqlite_database(&db),
            sink.addr().port(),
        );
        let config = Config::load(&config_path).expect("config");
        let mailer = Arc::new(Mailer::from_config(&config).await.expect("mailer"));
        let timeout = mailer.queue().as_redis().expect("a Redis queue").timeout();
        let buffered_mailer = Mailer::from_config(&config)
            .await
            .expect("mailer")
            .buffered(100_000);
        let mut server = ServerProc::start(&config_path, ctx.dir.join("server.log"));
        server.ready().await;

        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let producers = ["f3-ann", "f3-bob"]
            .map(|tag| tokio::spawn(durable(mailer.clone(), stop.clone(), tag.to_owned())));
        let buffer_task = tokio::spawn(buffered(buffered_mailer, stop.clone()));
        let mut outages: VecDeque<(Instant, Instant)> = VecDeque::new();
        for _ in 0..kills {
            tokio::time::sleep(rng.ms(1_000, 2_000)).await;
            let down = Instant::now();
            redis.kill9().await;
            tokio::time::sleep(rng.ms(500, 2_000)).await;
            redis.restart().await;
            outages.push_back((down, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut seen = Durable::default();
        for p in producers {
            let p = p.await.expect("producer");
            seen.acked.extend(p.acked);
            seen.errors.extend(p.errors);
            seen.slowest = seen.slowest.max(p.slowest);
        }
        let buffered = buffer_task.await.expect("buffered producer");
        assert!(
            seen.slowest <= timeout + Duration::from_secs(1),
            "an enqueue took {:?}, more than the queue timeout {timeout:?}",
            seen.slowest
        );
        for (k, (down, up)) in outages.iter().enumerate() {
            let late = *up + timeout + Duration::from_millis(500);
            let errors = seen
                .errors
                .iter()
                .filter(|(_, at)| at >= down && *at <= late)
                .count();
            assert!(errors > 0, "no enqueue failed during outage {k}");
        }
        let failed: HashSet<&str> = buffered.failed.iter().map(|(id, _)| id.as_str()).collect();
        let mut promised: HashSet<String> = seen.acked.iter().cloned().collect();
        promised.extend(
            buffered
                .handed_out
                .iter()
                .filter(|id| !failed.contains(id.as_str()))
                .cloned(),
        );
        assert_eq!(
            buffered.written + buffered.failed.len() as u64,
            buffered.handed_out.len() as u64,
            "every buffered email is either written or reported failed"
        );

        let store = Store::Sqlite(SqliteStore::open(&db).await.expect("store"));
        wait_all_final(&store, promised.len(), Duration::from_secs(60)).await;
        let elapsed = start.elapsed();
        assert!(server.running(), "server exited:\n{}", server.log_tail());
        let status = server.sigterm().await;
        assert!(status.success(), "server exited with {status}");
        let found = check_all_sent(&store, &promised, &accepted(&sink)).await;
        assert_eq!(found.received_twice, 0, "the relay got an email twice");
        let mut kinds: Vec<String> = seen
            .errors
            .iter()
            .map(|(e, _)| e.split(':').next().unwrap_or(e).to_owned())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        Figures::new("F3", rng.seed)
            .put("redis_kills", kills)
            .put("durable_acked", seen.acked.len())
            .put("durable_errors", seen.errors.len())
            .put("error_kinds", kinds.join("|"))
            .put("slowest_call_ms", seen.slowest.as_millis())
            .put("buffered_written", buffered.written)
            .put("buffered_reported_failed", buffered.failed.len())
            .put("stored_from_failed_calls", found.extra)
            .put("acked_lost", 0)
            .put("duplicate_rows", 0)
            .put("received_twice", found.received_twice)
            .secs("total_s", elapsed)
            .print();
    })
    .await;
}
