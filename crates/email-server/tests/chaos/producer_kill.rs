//! F2: the producing application killed with SIGKILL right after
//! `enqueue` returned. The producer is this test binary run again as a
//! child process (the ignored test `f02_child_producer`), with four tasks
//! enqueuing through a durable `Mailer` and printing each id the moment
//! `enqueue` returns it; the parent kills it as soon as it reads the k-th
//! id, while the other tasks are in the middle of their own enqueues.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use email::Mailer;
use email::config::Config;
use email_server::store::{SqliteStore, Store};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::{
    Figures, Rng, ServerProc, TempDir, accepted, check_all_sent, email, embedded_queue,
    integrity_check, pick, redis_queue, server_config, sqlite_database, wait_all_final,
};
use crate::scale::{Ctx, Needs, isolated, redis_url};
use crate::support::fault_smtp::{Behaviour, FaultServer};

/// The child's config file; without it the child test does nothing.
const CHILD_CONFIG: &str = "EMAIL_CHAOS_CHILD_CONFIG";
/// A tag that makes the child's recipients (and so its emails) its own.
const CHILD_TAG: &str = "EMAIL_CHAOS_CHILD_TAG";

/// The child producer: four tasks enqueue until the process is killed (or
/// 60 s pass), each printing `CHAOS-ID <id>` as soon as `enqueue` returns.
pub(crate) async fn child() {
    let Ok(config) = std::env::var(CHILD_CONFIG) else {
        return;
    };
    let tag = std::env::var(CHILD_TAG).unwrap_or_else(|_| "child".into());
    let config = Config::load(&config).expect("child config");
    let mailer = Arc::new(Mailer::from_config(&config).await.expect("child mailer"));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (mailer, tag) = (mailer.clone(), format!("{tag}-t{t}"));
        tasks.spawn(async move {
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(60) {
                match mailer.enqueue(&email(&tag, i)).await {
                    Ok(id) => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "CHAOS-ID {id}").expect("stdout");
                        out.flush().expect("flush stdout");
                    }
                    Err(e) => eprintln!("CHAOS-ERR {e}"),
                }
                i += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs a child producer on `config`, kills it with SIGKILL right after it
/// printed its `kill_after`-th id, and returns every id it printed (the
/// ones already in the pipe included).
async fn one_child(config: &Path, tag: &str, kill_after: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("this test binary");
    let mut child = Command::new(exe)
        .args(["f02_child_producer", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_CONFIG, config)
        .env(CHILD_TAG, tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child producer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ids = Vec::new();
    let mut killed = false;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the child producer printed nothing for 30 s")
            .expect("read the child's stdout");
        let Some(line) = line else { break };
        if let Some(id) = line.strip_prefix("CHAOS-ID ") {
            ids.push(id.to_owned());
            if ids.len() == kill_after && !killed {
                child.start_kill().expect("SIGKILL the producer");
                killed = true;
            }
        }
    }
    let status = child.wait().await.expect("reap the producer");
    assert!(
        killed,
        "the producer ended by itself ({status}) after {} ids",
        ids.len()
    );
    ids
}

/// What one engine's run found.
struct EngineRun {
    printed: usize,
    stored: usize,
    extra: usize,
    received_twice: usize,
    integrity: String,
    elapsed: Duration,
}

/// `rounds` producers killed one after the other, with a server
/// delivering to a fault-free relay meanwhile; then every printed id must
/// be stored, sent, and received by the relay.
async fn engine(
    dir: &Path,
    queue: &str,
    db: &Path,
    rounds: usize,
    rng: &mut Rng,
    tag: &str,
) -> EngineRun {
    let sink = FaultServer::start(Behaviour::new()).await;
    let config = server_config(dir, queue, &sqlite_database(db), sink.addr().port());
    let mut server = ServerProc::start(&config, dir.join("server.log"));
    server.ready().await;
    let start = Instant::now();
    let mut promised = HashSet::new();
    for round in 0..rounds {
        let kill_after = usize::try_from(rng.between(1, 150)).expect("small");
        let ids = one_child(&config, &format!("{tag}-r{round}"), kill_after).await;
        promised.extend(ids);
    }
    let store = Store::Sqlite(SqliteStore::open(db).await.expect("store"));
    wait_all_final(&store, promised.len(), Duration::from_secs(60)).await;
    let elapsed = start.elapsed();
    assert!(server.running(), "server exited:\n{}", server.log_tail());
    let status = server.sigterm().await;
    assert!(status.success(), "server exited with {status}");
    let found = check_all_sent(&store, &promised, &accepted(&sink)).await;
    drop(store);
    EngineRun {
        printed: promised.len(),
        stored: found.stored,
        extra: found.extra,
        received_twice: found.received_twice,
        integrity: integrity_check(db).await,
        elapsed,
    }
}

fn figures(f: &mut Figures, engine: &str, r: &EngineRun) {
    f.put(&format!("{engine}_ids_returned"), r.printed)
        .put(&format!("{engine}_stored"), r.stored)
        .put(&format!("{engine}_stored_unreported"), r.extra)
        .put(&format!("{engine}_lost"), 0)
        .put(&format!("{engine}_received_twice"), r.received_twice)
        .secs(&format!("{engine}_s"), r.elapsed);
}

/// Embedded SQLite: the producer writes the server's own file. Redis: the
/// producer XADDs to a stream that the server's intake moves to its
/// SQLite store. Each engine gets `rounds` producers killed right after an
/// `enqueue` returned; every id returned is delivered, and the SQLite file
/// passes `integrity_check`.
pub(crate) async fn run() {
    let rounds = pick(3, 10);
    let mut rng = Rng::new();
    let seed = rng.seed;
    let dir = TempDir::new("f2");
    let db = dir.path().join("embedded.db");
    let embedded = engine(
        dir.path(),
        &embedded_queue(&db),
        &db,
        rounds,
        &mut rng,
        "f2e",
    )
    .await;
    assert_eq!(embedded.integrity, "ok");
    let mut f = Figures::new("F2", seed);
    f.put("kills_per_engine", rounds);
    figures(&mut f, "embedded", &embedded);

    let needs = Needs {
        redis: true,
        postgres: false,
        python_redis: false,
        redis_server: false,
    };
    if let Some(ctx) = Ctx::new("chaos-f2", needs).await {
        let (tx, rx) = tokio::sync::oneshot::channel();
        isolated(ctx, move |ctx| async move {
            let db = ctx.dir.join("redis-store.db");
            let queue = redis_queue(&redis_url(), &ctx.name);
            let run = engine(&ctx.dir, &queue, &db, rounds, &mut rng, "f2r").await;
            tx.send(run).ok();
        })
        .await;
        let redis = rx.await.expect("the Redis run");
        assert_eq!(redis.integrity, "ok");
        figures(&mut f, "redis", &redis);
    }
    f.print();
}
