//! One transaction with PIPELINING (RFC 2920), when the server offers it:
//! MAIL, every RCPT and DATA go out in one write, and their replies are
//! read back in order. A message then costs two round trips instead of
//! three plus one per recipient.
//!
//! The replies mean what they mean without pipelining; the only new duty
//! is to read every reply that was asked for, so the connection stays in
//! step, and to close a DATA the server accepted even when no recipient
//! was (an empty message, which it then refuses for lack of recipients).

use super::Session;
use super::transaction::{Attempt, Fate, no_recipient_accepted};
use crate::smtp::conn::Phase;
use crate::smtp::data::TERMINATOR;
use crate::smtp::{RecipientResult, Reply, Timeouts};

impl Session {
    pub(super) async fn transact_pipelined(
        &mut self,
        limits: &Timeouts,
        mail: &str,
        rcpt_to: &[String],
        content: &[u8],
        reused: bool,
    ) -> Attempt {
        let mut batch = String::with_capacity(mail.len() + 2 + rcpt_to.len() * 40 + 6);
        batch.push_str(mail);
        batch.push_str("\r\n");
        for address in rcpt_to {
            batch.push_str("RCPT TO:<");
            batch.push_str(address);
            batch.push_str(">\r\n");
        }
        batch.push_str("DATA\r\n");
        tracing::trace!("C: {}", batch.trim_end().replace("\r\n", " | "));
        let stale = |error: &crate::smtp::conn::ConnError| reused && error.is_disconnect();
        if let Err(error) = self
            .conn
            .write(batch.as_bytes(), Phase::Mail, limits.mail)
            .await
        {
            return Attempt {
                stale: stale(&error),
                ..Attempt::broken(&error)
            };
        }
        self.needs_reset = true;

        let mail_reply = match self.conn.read_reply(Phase::Mail, limits.mail).await {
            Ok(reply) => reply,
            Err(error) => {
                return Attempt {
                    stale: stale(&error),
                    ..Attempt::broken(&error)
                };
            }
        };
        let mut recipients = Vec::with_capacity(rcpt_to.len());
        for address in rcpt_to {
            match self.conn.read_reply(Phase::Rcpt, limits.rcpt).await {
                Ok(reply) => recipients.push(RecipientResult {
                    address: address.clone(),
                    reply,
                }),
                Err(error) => {
                    return Attempt {
                        recipients,
                        ..Attempt::broken(&error)
                    };
                }
            }
        }
        let data_reply = match self
            .conn
            .read_reply(Phase::DataInit, limits.data_init)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                return Attempt {
                    recipients,
                    ..Attempt::broken(&error)
                };
            }
        };

        if !mail_reply.is_positive() {
            let stale = reused && mail_reply.code == 421;
            let in_step = self.close_unwanted_data(&data_reply, limits).await;
            return discard_unless(
                in_step,
                Attempt {
                    stale,
                    ..Attempt::refused("MAIL FROM rejected", mail_reply)
                },
            );
        }
        if let Some(bad) = recipients
            .iter()
            .find(|r| r.reply.code == 421 || !is_reply_code(&r.reply))
        {
            let reply = bad.reply.clone();
            let in_step = self.close_unwanted_data(&data_reply, limits).await;
            return discard_unless(
                in_step,
                Attempt {
                    recipients,
                    ..Attempt::refused("RCPT TO rejected", reply)
                },
            );
        }
        if !recipients.iter().any(|r| r.reply.is_positive()) {
            let in_step = self.close_unwanted_data(&data_reply, limits).await;
            return discard_unless(in_step, no_recipient_accepted(recipients));
        }
        if data_reply.code != 354 {
            return Attempt {
                recipients,
                ..Attempt::refused("DATA rejected", data_reply)
            };
        }
        self.finish_data(recipients, content, limits).await
    }

    /// A `354` we did not want (MAIL failed, or no recipient was accepted)
    /// must still be ended, or the connection is out of step: send the
    /// terminator alone and read the refusal. Anything else needs nothing.
    /// Returns whether the connection is still in step.
    async fn close_unwanted_data(&mut self, data_reply: &Reply, limits: &Timeouts) -> bool {
        if data_reply.code != 354 {
            return true;
        }
        match self
            .conn
            .write(TERMINATOR, Phase::DataEnd, limits.data_block)
            .await
        {
            Ok(()) => self
                .conn
                .read_reply(Phase::DataEnd, limits.data_end)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// A connection that fell out of step is not given back to the pool.
fn discard_unless(in_step: bool, attempt: Attempt) -> Attempt {
    if in_step {
        attempt
    } else {
        Attempt {
            fate: Fate::Discard,
            ..attempt
        }
    }
}

/// 2xx, 4xx and 5xx are answers about a recipient; anything else (a 3xx to
/// RCPT) is a protocol error.
fn is_reply_code(reply: &Reply) -> bool {
    matches!(reply.code, 200..=299 | 400..=599)
}
