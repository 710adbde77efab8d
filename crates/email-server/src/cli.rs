//! The command line: `email-server run | send | stats | list | show | retry
//! | cancel | reschedule | inspect | check-config`.
//!
//! Exit codes: 0 success, 2 usage or configuration error, 1 runtime error.
//! Every error message names what is wrong.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Delivers queued email over SMTP, with retries and a record of every
/// attempt.
#[derive(Debug, Parser)]
#[command(name = "email-server", version, about)]
pub struct Cli {
    /// The YAML config. Default: ./email.yaml if it exists, then
    /// $EMAIL_CONFIG, then built-in embedded defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `email_server=trace`. Defaults to
    /// $RUST_LOG, else `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: deliver due emails until SIGINT or SIGTERM.
    Run,
    /// Enqueue an email; prints its id.
    Send(Box<SendArgs>),
    /// Counts per state, delivery latency and attempts.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List emails, newest first.
    List {
        /// Only this state: scheduled queued sending deferred sent failed
        /// expired cancelled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one email: state, every attempt and each recipient's result.
    Show {
        /// The email's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print the raw RFC 5322 message instead.
        #[arg(long)]
        raw: bool,
    },
    /// Make an unsent email due now, with a fresh attempt budget.
    Retry {
        /// The email's id.
        id: String,
    },
    /// Cancel an email that has not been sent.
    Cancel {
        /// The email's id.
        id: String,
    },
    /// Move an unsent email to another time.
    Reschedule {
        /// The email's id.
        id: String,
        /// When.
        #[command(flatten)]
        when: When,
    },
    /// Parse a message file and show what it contains.
    Inspect {
        /// The .eml file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and print the effective config, secrets redacted.
    CheckConfig,
}

/// When to send: now (neither flag), after a delay, or at a time.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct When {
    /// After this delay, e.g. 30s, 5m, 2h.
    #[arg(long = "in", value_name = "DURATION")]
    pub delay: Option<String>,
    /// At this time (RFC 3339, e.g. 2030-01-01T09:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// `email-server send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// A raw message to enqueue as is; its envelope comes from its headers
    /// unless --from / --to are given.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["subject", "text", "text_file", "html", "html_file", "attach", "cc", "bcc"])]
    pub eml: Option<PathBuf>,
    /// The sender, e.g. "Shop <shop@example.com>".
    #[arg(long)]
    pub from: Option<String>,
    /// A recipient; repeat for more.
    #[arg(long)]
    pub to: Vec<String>,
    /// A Cc recipient; repeat for more.
    #[arg(long)]
    pub cc: Vec<String>,
    /// A Bcc recipient; repeat for more.
    #[arg(long)]
    pub bcc: Vec<String>,
    /// The subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// The text body.
    #[arg(long, conflicts_with = "text_file")]
    pub text: Option<String>,
    /// Read the text body from a file.
    #[arg(long, value_name = "FILE")]
    pub text_file: Option<PathBuf>,
    /// The HTML body.
    #[arg(long, conflicts_with = "html_file")]
    pub html: Option<String>,
    /// Read the HTML body from a file.
    #[arg(long, value_name = "FILE")]
    pub html_file: Option<PathBuf>,
    /// Attach a file; repeat for more.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// When: now, --in or --at.
    #[command(flatten)]
    pub when: When,
    /// Enqueuing the same key again returns the first email's id.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Higher is sent first among due emails.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
}
