//! Where emails go: an SMTP relay, or, in development, an outbox
//! directory of `.eml` files.

use std::path::PathBuf;

use crate::smtp::{Delivery, Outcome, RecipientResult, Reply, SmtpPool};

/// A closed set of transports.
#[derive(Clone, Debug)]
pub enum Transport {
    /// A relay, over pooled connections.
    Smtp {
        /// The connections.
        pool: SmtpPool,
        /// `host:port`, for logs.
        relay: String,
    },
    /// A directory: each email becomes `ID.eml` (the development default).
    Outbox(PathBuf),
}

impl Transport {
    /// Delivers one message to the given recipients. Never panics; every
    /// problem is an [`Outcome`].
    pub async fn deliver(
        &self,
        id: &str,
        mail_from: &str,
        rcpt_to: &[String],
        raw: &[u8],
    ) -> Delivery {
        match self {
            Transport::Smtp { pool, .. } => pool.send(mail_from, rcpt_to, raw).await,
            Transport::Outbox(dir) => write_eml(dir, id, rcpt_to, raw).await,
        }
    }

    /// Closes pooled connections (graceful shutdown).
    pub async fn close(&self) {
        if let Transport::Smtp { pool, .. } = self {
            pool.close().await;
        }
    }

    /// For logs and attempts: where mail goes.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp { relay, .. } => format!("smtp://{relay}"),
            Transport::Outbox(dir) => format!("outbox:{}", dir.display()),
        }
    }
}

/// Writes `ID.eml` atomically (a temporary file, then a rename), so a
/// reader never sees half a message.
async fn write_eml(dir: &std::path::Path, id: &str, rcpt_to: &[String], raw: &[u8]) -> Delivery {
    let relay = format!("outbox:{}", dir.display());
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    let path = dir.join(format!("{id}.eml"));
    let result = async {
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::write(&tmp, raw).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    let ok = |text: String| Reply {
        code: 250,
        enhanced: Some("2.0.0".into()),
        text,
    };
    match result {
        Ok(()) => Delivery {
            relay,
            outcome: Outcome::Sent,
            reply: Some(ok(format!("written to {}", path.display()))),
            recipients: rcpt_to
                .iter()
                .map(|a| RecipientResult {
                    address: a.clone(),
                    reply: ok("ok".into()),
                })
                .collect(),
            possible_duplicate: false,
        },
        Err(e) => Delivery {
            relay,
            outcome: Outcome::Transient(format!("writing {}: {e}", path.display())),
            reply: None,
            recipients: Vec::new(),
            possible_duplicate: false,
        },
    }
}
