//! What each subcommand does. Output for people by default, JSON with
//! `--json` (shapes documented in the README).

use std::io::Write as _;
use std::path::Path;

use email::config::Config;
use email::{Attachment, Email, Mailer, SendOptions};
use serde_json::json;

use crate::cli::{Cli, Command, SendArgs, When};
use crate::dispatch::now_ms;
use crate::server::{self, ServerError};
use crate::store::{Store, StoreError};

/// A failed command: a usage or configuration problem (exit 2) or a
/// runtime one (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or config: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Runtime(e.to_string())
    }
}

impl From<ServerError> for CliError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Config(_) | ServerError::Smtp(_) => CliError::Usage(e.to_string()),
            ServerError::Store(_) => CliError::Runtime(e.to_string()),
        }
    }
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn runtime(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

/// Loads the config the way every subcommand does.
pub fn load_config(explicit: Option<&Path>) -> Result<Config, CliError> {
    let (config, source) = Config::discover(explicit).map_err(usage)?;
    tracing::debug!(?source, "configuration loaded");
    Ok(config)
}

/// Runs one parsed command line.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Run => run(&config).await,
        Command::Send(args) => send(&config, *args).await,
        Command::Stats { json } => stats(&config, json).await,
        Command::List { state, limit, json } => list(&config, state, limit, json).await,
        Command::Show { id, json, raw } => show(&config, &id, json, raw).await,
        Command::Retry { id } => {
            store(&config).await?.retry(&id, now_ms()).await?;
            println!("{id} queued for retry");
            Ok(())
        }
        Command::Cancel { id } => {
            store(&config).await?.cancel(&id, now_ms()).await?;
            println!("{id} cancelled");
            Ok(())
        }
        Command::Reschedule { id, when } => {
            let at = when_ms(&when)?
                .ok_or_else(|| usage("reschedule needs --in DURATION or --at TIME"))?;
            store(&config).await?.reschedule(&id, at).await?;
            println!("{id} rescheduled for {}", crate::store::rfc3339(at));
            Ok(())
        }
        Command::Inspect { file, json } => inspect(&file, json),
        Command::CheckConfig => {
            config.validate("config").map_err(usage)?;
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", config.redacted_yaml());
            Ok(())
        }
    }
}

async fn store(config: &Config) -> Result<Store, CliError> {
    Ok(server::open_store(config).await?)
}

async fn run(config: &Config) -> Result<(), CliError> {
    config.validate("config").map_err(usage)?;
    server::run(config, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `--in` / `--at` as Unix ms; `None` for now.
fn when_ms(when: &When) -> Result<Option<i64>, CliError> {
    if let Some(d) = &when.delay {
        let d = humantime::parse_duration(d)
            .map_err(|e| usage(format!("--in {d:?}: {e} (e.g. 30s, 5m, 2h)")))?;
        return Ok(Some(
            now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        ));
    }
    if let Some(t) = &when.at {
        let ts: jiff::Timestamp = t.parse().map_err(|e| {
            usage(format!(
                "--at {t:?}: {e} (expected RFC 3339, e.g. 2030-01-01T09:00:00Z)"
            ))
        })?;
        return Ok(Some(ts.as_millisecond()));
    }
    Ok(None)
}

fn read(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("{what} {}: {e}", path.display())))
}

async fn send(config: &Config, a: SendArgs) -> Result<(), CliError> {
    let at = when_ms(&a.when)?.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
    let mut options = SendOptions::default().priority(a.priority);
    if let Some(key) = &a.idempotency_key {
        options = options.idempotency_key(key);
    }
    let queue = config.email.queue();
    if queue.engine != email::config::QueueEngine::Embedded {
        return Err(usage(
            "send: only the embedded queue engine is supported yet",
        ));
    }
    let mailer = Mailer::embedded(&queue.path).await.map_err(runtime)?;
    let id = match &a.eml {
        Some(path) => {
            let raw =
                std::fs::read(path).map_err(|e| usage(format!("--eml {}: {e}", path.display())))?;
            let parsed =
                Email::parse(&raw).map_err(|e| usage(format!("--eml {}: {e}", path.display())))?;
            mailer
                .enqueue_raw(&raw, &parsed, a.from.as_deref(), &a.to, at, &options)
                .await
                .map_err(|e| match e {
                    email::MailerError::Invalid(_)
                    | email::MailerError::NoEnvelope
                    | email::MailerError::Raw(_) => usage(format!("--eml {}: {e}", path.display())),
                    other => runtime(other),
                })?
        }
        None => {
            let email = compose(&a)?;
            mailer
                .enqueue_with(&email, at, &options)
                .await
                .map_err(runtime)?
        }
    };
    println!("{id}");
    Ok(())
}

fn compose(a: &SendArgs) -> Result<Email, CliError> {
    let from = a
        .from
        .as_deref()
        .ok_or_else(|| usage("send: --from is required (or --eml FILE)"))?;
    let mut b = Email::builder().from(from);
    for to in &a.to {
        b = b.to(to.as_str());
    }
    for cc in &a.cc {
        b = b.cc(cc.as_str());
    }
    for bcc in &a.bcc {
        b = b.bcc(bcc.as_str());
    }
    if let Some(s) = &a.subject {
        b = b.subject(s.as_str());
    }
    match (&a.text, &a.text_file) {
        (Some(t), _) => b = b.text(t.as_str()),
        (None, Some(f)) => b = b.text(read(f, "--text-file")?),
        (None, None) => {}
    }
    match (&a.html, &a.html_file) {
        (Some(h), _) => b = b.html(h.as_str()),
        (None, Some(f)) => b = b.html(read(f, "--html-file")?),
        (None, None) => {}
    }
    for path in &a.attach {
        b = b.attach(Attachment::from_path(path).map_err(usage)?);
    }
    b.build().map_err(|e| usage(format!("send: {e}")))
}

fn out(s: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(s.as_bytes()).map_err(runtime)
}

fn to_json(v: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(runtime)
}

async fn stats(config: &Config, as_json: bool) -> Result<(), CliError> {
    let mut s = store(config).await?.stats(now_ms()).await?;
    if config.email.queue().engine == email::config::QueueEngine::Redis {
        let queue = email::queue::RedisQueue::open(config.email.queue())
            .await
            .map_err(usage)?;
        s.dead_letters = Some(crate::intake::dead_letters(&queue).await.map_err(runtime)?);
    }
    if as_json {
        return out(&to_json(&s)?);
    }
    let mut text = String::new();
    for state in crate::store::STATES {
        text += &format!(
            "{state:<10} {}\n",
            s.states.get(state).copied().unwrap_or(0)
        );
    }
    let ms = |v: Option<i64>| v.map_or_else(|| "-".into(), |v| format!("{v} ms"));
    text += &format!(
        "latency    p50 {}  p90 {}  p99 {}\nattempts   {} total, {:.2} per sent email\n",
        ms(s.latency_ms.p50),
        ms(s.latency_ms.p90),
        ms(s.latency_ms.p99),
        s.attempts_total,
        s.attempts_per_sent
    );
    if let Some(n) = s.dead_letters {
        text += &format!("dead letters (undecodable queue records): {n}\n");
    }
    if s.possible_duplicates > 0 {
        text += &format!(
            "possible duplicates (cut off after the final \".\"): {}\n",
            s.possible_duplicates
        );
    }
    out(&text)
}

async fn list(
    config: &Config,
    state: Option<String>,
    limit: u32,
    as_json: bool,
) -> Result<(), CliError> {
    if let Some(s) = &state
        && !crate::store::STATES.contains(&s.as_str())
    {
        return Err(usage(format!(
            "--state {s:?}: expected one of {}",
            crate::store::STATES.join(", ")
        )));
    }
    let rows = store(config)
        .await?
        .list(state.as_deref(), limit, now_ms())
        .await?;
    if as_json {
        return out(&to_json(&rows)?);
    }
    let mut text = String::new();
    for r in rows {
        text += &format!(
            "{}  {:<9}  {:>2}  {}  {}\n",
            r.id,
            r.state,
            r.attempts,
            r.due_at,
            r.subject.as_deref().unwrap_or("")
        );
    }
    out(&text)
}

async fn show(config: &Config, id: &str, as_json: bool, raw: bool) -> Result<(), CliError> {
    let (row, attempts, bytes) = store(config).await?.show(id, now_ms()).await?;
    if raw {
        return std::io::stdout().lock().write_all(&bytes).map_err(runtime);
    }
    if as_json {
        return out(&to_json(&json!({ "email": row, "attempts": attempts }))?);
    }
    let mut t = format!(
        "id          {}\nstate       {}\nsubject     {}\nfrom        {}\nrecipients  {}\npending     {}\n\
         due         {}\nattempts    {}\nreason      {}\n",
        row.id,
        row.state,
        row.subject.as_deref().unwrap_or(""),
        row.mail_from,
        row.recipients.join(", "),
        row.pending.join(", "),
        row.due_at,
        row.attempts,
        row.last_reason.as_deref().unwrap_or("")
    );
    for (i, a) in attempts.iter().enumerate() {
        t += &format!(
            "\nattempt {}   {}  {}  {} {} {}{}\n",
            i + 1,
            crate::store::rfc3339(a.started_at),
            a.outcome,
            a.smtp_code.map_or_else(|| "-".into(), |c| c.to_string()),
            a.enhanced_code.as_deref().unwrap_or(""),
            a.reply,
            if a.possible_duplicate {
                "  (possible duplicate)"
            } else {
                ""
            }
        );
        for r in &a.recipients {
            t += &format!(
                "  {:<30} {} {} {}\n",
                r.address,
                r.code,
                r.enhanced.as_deref().unwrap_or(""),
                r.reply
            );
        }
    }
    out(&t)
}

fn inspect(file: &Path, as_json: bool) -> Result<(), CliError> {
    let f = std::fs::File::open(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let e = Email::from_reader(f).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let list = |v: &[email::Mailbox]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let attachments: Vec<_> = e
        .attachments()
        .iter()
        .map(|a| {
            json!({
                "name": a.filename(), "content_type": a.content_type(), "size": a.data().len(),
                "inline": a.is_inline(), "content_id": a.content_id(),
            })
        })
        .collect();
    let v = json!({
        "from": list(e.from()), "to": list(e.to()), "cc": list(e.cc()), "bcc": list(e.bcc()),
        "reply_to": list(e.reply_to()), "subject": e.subject(), "message_id": e.message_id(),
        "date": e.date().map(|d| d.to_string()), "headers": e.headers(),
        "text": e.text(), "html": e.html(), "attachments": attachments,
    });
    if as_json {
        return out(&to_json(&v)?);
    }
    let mut t = String::new();
    for (k, label) in [
        ("from", "From"),
        ("to", "To"),
        ("cc", "Cc"),
        ("reply_to", "Reply-To"),
    ] {
        if let Some(a) = v[k].as_array().filter(|a| !a.is_empty()) {
            let names: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
            t += &format!("{label}: {}\n", names.join(", "));
        }
    }
    t += &format!("Subject: {}\n", e.subject().unwrap_or(""));
    if let Some(id) = e.message_id() {
        t += &format!("Message-ID: {id}\n");
    }
    for (name, value) in e.headers() {
        t += &format!("{name}: {value}\n");
    }
    t += &format!(
        "\n--- text ---\n{}\n--- html ---\n{}\n",
        e.text().unwrap_or("(none)"),
        e.html().unwrap_or("(none)")
    );
    for a in e.attachments() {
        t += &format!(
            "attachment: {} ({}, {} bytes{})\n",
            a.filename().unwrap_or("(unnamed)"),
            a.content_type(),
            a.data().len(),
            if a.is_inline() { ", inline" } else { "" }
        );
    }
    out(&t)
}
