//! Wake-ups over LISTEN/NOTIFY: every commit that makes something due
//! notifies `email_wake` with its schema as the payload; this task turns
//! those into [`Notify::notify_one`] so a sleeping dispatcher starts at
//! once.
//!
//! Channels are per database, not per schema, hence the payload: stores in
//! other schemas (tests, or several systems in one database) do not wake
//! ours. An empty payload (a bare `NOTIFY email_wake`, from a producer
//! that does not know the schema) wakes everyone.
//!
//! Notifications are not queued for a listener that is not connected, so
//! after every (re)connection the task wakes the dispatcher once to look
//! for itself.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::WAKE_CHANNEL;

/// The LISTEN task; dropping this stops it.
#[must_use = "the listener stops when this guard is dropped"]
#[derive(Debug)]
pub struct WakeListener(JoinHandle<()>);

impl Drop for WakeListener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The longest pause between reconnection attempts while the database is
/// away (the dispatcher's own 60 s safety net still applies).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) fn spawn(
    options: Arc<PgConnectOptions>,
    schema: Arc<str>,
    notify: Arc<Notify>,
) -> WakeListener {
    WakeListener(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            let e = listen(&options, &schema, &notify, &mut backoff).await;
            tracing::warn!(error = %e, retry_in = ?backoff, "LISTEN email_wake lost; reconnecting");
            notify.notify_one();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }))
}

/// Listens until an error, which it returns.
async fn listen(
    options: &PgConnectOptions,
    schema: &str,
    notify: &Notify,
    backoff: &mut Duration,
) -> sqlx::Error {
    // Its own single connection: a LISTEN must not hold one of the store's
    // pooled connections forever, nor lose its subscription to pool reuse.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.clone());
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen(WAKE_CHANNEL).await {
        return e;
    }
    *backoff = Duration::from_millis(250);
    notify.notify_one();
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if n.payload().is_empty() || n.payload() == schema {
                    notify.notify_one();
                }
            }
            // The connection dropped and was re-established (and
            // re-subscribed) inside sqlx: anything sent meanwhile is lost.
            Ok(None) => notify.notify_one(),
            Err(e) => return e,
        }
    }
}
