//! The `email-server` binary on embedded defaults, used as a person would:
//! `send`, `run`, `stats`, `list`, `show`, `retry`, `cancel`,
//! `reschedule`, `inspect`, `check-config`, and their errors.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("email-cli-{}-{name}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).expect("temp dir");
        let d = dir.display();
        let yaml = format!(
            "email:\n  queue:\n    default:\n      engine: embedded\n      path: {d}/email.db\n  server:\n    \
             max-fails: 3\n    max-time: 1h\n    batch: 50\n    database:\n      engine: sqlite3\n      path: {d}/email.db\n    \
             outbox: {d}/outbox\n"
        );
        std::fs::write(dir.join("email.yaml"), yaml).expect("config");
        Env { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_email-server"));
        c.current_dir(&self.dir)
            .env_remove("EMAIL_CONFIG")
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn email-server")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn server(&self) -> Server {
        let child = self
            .cmd()
            .arg("run")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn run");
        Server(child)
    }

    fn outbox(&self) -> PathBuf {
        self.dir.join("outbox")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("json output")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

struct Server(Child);

impl Server {
    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        self.0.wait_with_output_ref()
    }
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            e.read_to_string(&mut err).ok();
        }
        (self.wait().expect("wait"), err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn send_run_stats_show_on_embedded_defaults() {
    let env = Env::new("flow");
    let id = env
        .ok(&[
            "send",
            "--from",
            "Shop <shop@example.com>",
            "--to",
            "ann@example.com",
            "--bcc",
            "audit@example.com",
            "--subject",
            "Hello",
            "--text",
            "Hi Ann",
        ])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 36, "prints the id: {id}");
    let before = env.json(&["stats", "--json"]);
    assert_eq!(before["states"]["queued"], 1);

    let server = env.server();
    wait_for("the outbox file", Duration::from_secs(10), || {
        env.outbox().join(format!("{id}.eml")).exists()
    });
    let (status, stderr) = server.stop();
    assert!(status.success(), "clean exit on SIGTERM: {stderr}");
    assert!(
        stderr.contains("outbox"),
        "startup says plainly where mail goes: {stderr}"
    );

    let raw = std::fs::read(env.outbox().join(format!("{id}.eml"))).expect("eml");
    let parsed = email::Email::parse(&raw).expect("parse");
    assert_eq!(parsed.subject(), Some("Hello"));
    assert!(
        !String::from_utf8_lossy(&raw).contains("audit@example.com"),
        "Bcc not in the message"
    );

    let stats = env.json(&["stats", "--json"]);
    for state in [
        "scheduled",
        "queued",
        "sending",
        "deferred",
        "sent",
        "failed",
        "expired",
        "cancelled",
    ] {
        assert!(
            stats["states"][state].is_u64(),
            "state {state} in stats: {stats}"
        );
    }
    assert_eq!(stats["states"]["sent"], 1);
    assert!(stats["latency_ms"]["p50"].is_i64());
    assert_eq!(stats["attempts_per_sent"], 1.0);

    let show = env.json(&["show", &id, "--json"]);
    assert_eq!(show["email"]["state"], "sent");
    assert_eq!(show["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        show["attempts"][0]["recipients"].as_array().map(Vec::len),
        Some(2)
    );
    let raw_out = env.run(&["show", &id, "--raw"]);
    assert_eq!(raw_out.stdout, raw);
    let list = env.json(&["list", "--state", "sent", "--json"]);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(env.ok(&["stats"]).contains("sent"));
}

#[test]
fn scheduled_email_waits_then_leaves_on_time() {
    let env = Env::new("schedule");
    let server = env.server();
    std::thread::sleep(Duration::from_millis(300));
    let sent_at = Instant::now();
    let id = env.ok(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--text",
        "x",
        "--in",
        "2s",
    ]);
    let id = id.trim();
    let file = env.outbox().join(format!("{id}.eml"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!file.exists(), "sent before its time");
    assert_eq!(env.json(&["stats", "--json"])["states"]["scheduled"], 1);
    wait_for("the scheduled email", Duration::from_secs(5), || {
        file.exists()
    });
    let late = sent_at.elapsed();
    assert!(
        late < Duration::from_millis(3000),
        "left {late:?} after send --in 2s"
    );
    drop(server);
}

#[test]
fn wakes_for_new_mail_without_polling() {
    let env = Env::new("wake");
    let server = env.server();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let id = env.ok(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--text",
        "x",
    ]);
    let file = env.outbox().join(format!("{}.eml", id.trim()));
    wait_for("delivery", Duration::from_secs(5), || file.exists());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "picked up in {:?}",
        start.elapsed()
    );
    drop(server);
}

#[test]
fn cancel_reschedule_retry() {
    let env = Env::new("ops");
    let id = env.ok(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--text",
        "x",
        "--in",
        "1h",
    ]);
    let id = id.trim();
    env.ok(&["reschedule", id, "--at", "2099-01-01T00:00:00Z"]);
    assert_eq!(
        env.json(&["show", id, "--json"])["email"]["due_at"],
        "2099-01-01T00:00:00Z"
    );
    env.ok(&["cancel", id]);
    assert_eq!(
        env.json(&["show", id, "--json"])["email"]["state"],
        "cancelled"
    );
    let again = env.run(&["cancel", id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("cancelled"));
    env.ok(&["retry", id]);
    assert_eq!(
        env.json(&["show", id, "--json"])["email"]["state"],
        "queued"
    );
    let missing = env.run(&["show", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no email with id"));
}

#[test]
fn idempotency_key_and_eml() {
    let env = Env::new("idem");
    let a = env.ok(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--text",
        "x",
        "--idempotency-key",
        "k1",
    ]);
    let b = env.ok(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--text",
        "x",
        "--idempotency-key",
        "k1",
    ]);
    assert_eq!(a, b);
    let eml = env.dir.join("m.eml");
    std::fs::write(
        &eml,
        "From: x@example.com\r\nTo: y@example.com, z@example.com\r\nSubject: raw\r\n\r\nbody\r\n",
    )
    .expect("eml");
    let id = env.ok(&["send", "--eml", eml.to_str().expect("path")]);
    let show = env.json(&["show", id.trim(), "--json"]);
    assert_eq!(
        show["email"]["recipients"],
        serde_json::json!(["y@example.com", "z@example.com"])
    );
    let id = env.ok(&[
        "send",
        "--eml",
        eml.to_str().expect("path"),
        "--to",
        "only@example.com",
    ]);
    let show = env.json(&["show", id.trim(), "--json"]);
    assert_eq!(
        show["email"]["recipients"],
        serde_json::json!(["only@example.com"])
    );
    let raw = env.run(&["show", id.trim(), "--raw"]).stdout;
    assert_eq!(
        raw,
        std::fs::read(&eml).expect("eml"),
        "enqueued byte for byte"
    );
}

#[test]
fn inspect_and_check_config() {
    let env = Env::new("inspect");
    let eml = env.dir.join("m.eml");
    std::fs::write(&eml, "From: Ann <ann@example.com>\r\nTo: b@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nhello\r\n").expect("eml");
    let v = env.json(&["inspect", eml.to_str().expect("path"), "--json"]);
    assert_eq!(v["subject"], "Grüße");
    assert_eq!(v["from"][0], "Ann <ann@example.com>");
    assert!(
        env.ok(&["inspect", eml.to_str().expect("path")])
            .contains("Subject: Grüße")
    );
    let cfg = env.ok(&["check-config"]);
    assert!(cfg.contains("max-fails"), "{cfg}");
}

#[test]
fn bad_input_gives_clear_errors_and_exit_codes() {
    let env = Env::new("bad");
    let out = env.run(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "not-an-address",
        "--text",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("to") && err.contains("not-an-address"),
        "{err}"
    );

    let out = env.run(&["send", "--eml", "/nonexistent/m.eml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/m.eml"));

    let out = env.run(&[
        "send",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--in",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));

    std::fs::write(
        env.dir.join("broken.yaml"),
        "email:\n  server:\n    max-fail: 3\n",
    )
    .expect("yaml");
    let out = env.run(&["--config", "broken.yaml", "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max-fail") && err.contains('3'),
        "names key and line: {err}"
    );

    let out = env.run(&["list", "--state", "lost"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));

    // Nothing was stored by any of the failures.
    assert_eq!(env.json(&["stats", "--json"])["states"]["queued"], 0);
}
