//! The `email-server` binary: a thin shell over the library.

use clap::Parser;
use email_server::cli::Cli;
use email_server::commands;

fn main() {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    // Colours only for a person at a terminal: logs sent to a file or a
    // collector stay plain text (and NO_COLOR turns them off anyway).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(commands::execute(cli)) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
