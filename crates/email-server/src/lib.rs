//! # email-server
//!
//! Takes emails from the queue, keeps them in a database, and delivers them
//! over SMTP, retrying failures with backoff and recording every attempt.
//!
//! ## Layout
//!
//! - [`server`]: `run(config, shutdown)`, the whole server as one future.
//! - [`intake`]: the Redis queue into the store, acknowledged after commit.
//! - [`store`]: every email and attempt; claims under a lease.
//! - [`dispatch`]: the claim → deliver → record loop, the retry policy
//!   ([`dispatch::retry`]) and the transports (SMTP, outbox).
//! - [`smtp`]: our SMTP client: pooled connections, STARTTLS/TLS, AUTH,
//!   per-recipient results, RFC 5321 timeouts.
//! - [`cli`], [`commands`]: the `email-server` command line.

pub mod cli;
pub mod commands;
pub mod dispatch;
pub mod intake;
pub mod server;
pub mod smtp;
pub mod store;

pub use server::run;
