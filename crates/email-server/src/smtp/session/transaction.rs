//! A mail transaction on an open session: MAIL, RCPT, DATA, each reply
//! turned into the decision the caller needs.

use std::time::Duration;

use super::Session;
use crate::smtp::conn::{ConnError, Phase};
use crate::smtp::data::TERMINATOR;
use crate::smtp::{Outcome, RecipientResult, Reply, SmtpConfig};

/// Size of each write of message content; RFC 5321's data-block timeout
/// applies per write, so a write must be small enough to finish within it on
/// a slow link.
const DATA_CHUNK: usize = 64 * 1024;

/// What to do with the session after a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::smtp) enum Fate {
    /// Usable for another transaction.
    Keep,
    /// Broken or in an unknown state: drop it without a word.
    Discard,
}

/// The result of one transaction.
#[derive(Debug)]
pub(in crate::smtp) struct Attempt {
    pub(in crate::smtp) outcome: Outcome,
    pub(in crate::smtp) reply: Option<Reply>,
    pub(in crate::smtp) recipients: Vec<RecipientResult>,
    pub(in crate::smtp) possible_duplicate: bool,
    pub(in crate::smtp) fate: Fate,
    /// A reused connection failed on its very first command because the
    /// server had gone away meanwhile: nothing was sent, so the pool may
    /// retry on a fresh connection without the caller seeing a failure.
    pub(in crate::smtp) stale: bool,
}

impl Attempt {
    fn failed(outcome: Outcome, reply: Option<Reply>, fate: Fate) -> Attempt {
        Attempt {
            outcome,
            reply,
            recipients: Vec::new(),
            possible_duplicate: false,
            fate,
            stale: false,
        }
    }

    /// The connection failed; the transaction is lost, the session too.
    pub(super) fn broken(error: &ConnError) -> Attempt {
        Attempt::failed(Outcome::Transient(error.to_string()), None, Fate::Discard)
    }

    /// The server refused a command with a reply that leaves the session
    /// usable, except 421, which announces that the server closes it.
    pub(super) fn refused(context: &str, reply: Reply) -> Attempt {
        let reason = format!("{context}: {reply}");
        let (outcome, fate) = match reply.code {
            421 => (Outcome::Transient(reason), Fate::Discard),
            400..=499 => (Outcome::Transient(reason), Fate::Keep),
            500..=599 => (Outcome::Permanent(reason), Fate::Keep),
            // 2xx where a different reply was due, or 3xx out of place:
            // client and server disagree about the state.
            _ => (
                Outcome::Transient(format!("protocol error: {reason}")),
                Fate::Discard,
            ),
        };
        Attempt::failed(outcome, Some(reply), fate)
    }
}

impl Session {
    /// Sends one message. `content` is the encoded DATA content (see
    /// `data::encode`); `eight_bit` says whether the message has non-ASCII
    /// bytes. Never fails: every failure is an outcome in the [`Attempt`].
    pub(in crate::smtp) async fn transact(
        &mut self,
        config: &SmtpConfig,
        mail_from: &str,
        rcpt_to: &[String],
        content: &[u8],
        eight_bit: bool,
    ) -> Attempt {
        let limits = &config.timeouts;
        let reused = self.transactions > 0;
        self.transactions += 1;
        let stale = |error: &ConnError| reused && error.is_disconnect();

        // The first command on a reused session doubles as a liveness check:
        // if it meets a closed connection (or a 421 from a server that timed
        // us out), nothing has been sent yet and the pool may try afresh.
        if self.needs_reset {
            match self.conn.command("RSET", Phase::Rset, limits.mail).await {
                Ok(reply) if reply.is_positive() => self.needs_reset = false,
                // A server that cannot reset is in no state for a new
                // transaction; this says nothing about the message, so the
                // pool tries again on a fresh connection.
                Ok(reply) => {
                    let reason = format!("RSET failed: {reply}");
                    return Attempt {
                        stale: true,
                        ..Attempt::failed(Outcome::Transient(reason), Some(reply), Fate::Discard)
                    };
                }
                Err(error) => {
                    return Attempt {
                        stale: stale(&error),
                        ..Attempt::broken(&error)
                    };
                }
            }
        }

        let mail = self.mail_command(mail_from, content.len(), eight_bit, rcpt_to);
        if self.ext.has("PIPELINING") {
            return self
                .transact_pipelined(limits, &mail, rcpt_to, content, reused)
                .await;
        }
        match self.conn.command(&mail, Phase::Mail, limits.mail).await {
            Ok(reply) if reply.is_positive() => {}
            Ok(reply) => {
                self.needs_reset = true;
                let stale = reused && reply.code == 421;
                return Attempt {
                    stale,
                    ..Attempt::refused("MAIL FROM rejected", reply)
                };
            }
            Err(error) => {
                return Attempt {
                    stale: stale(&error),
                    ..Attempt::broken(&error)
                };
            }
        }
        self.needs_reset = true;

        let mut recipients = Vec::with_capacity(rcpt_to.len());
        for address in rcpt_to {
            let line = format!("RCPT TO:<{address}>");
            let reply = match self.conn.command(&line, Phase::Rcpt, limits.rcpt).await {
                Ok(reply) => reply,
                Err(error) => {
                    return Attempt {
                        recipients,
                        ..Attempt::broken(&error)
                    };
                }
            };
            let verdict = match reply.code {
                421 => Some(Attempt::refused("RCPT TO rejected", reply.clone())),
                200..=299 | 400..=599 => None,
                _ => Some(Attempt::refused("RCPT TO", reply.clone())),
            };
            recipients.push(RecipientResult {
                address: address.clone(),
                reply,
            });
            if let Some(attempt) = verdict {
                return Attempt {
                    recipients,
                    ..attempt
                };
            }
        }
        if !recipients.iter().any(|r| r.reply.is_positive()) {
            return no_recipient_accepted(recipients);
        }

        match self
            .conn
            .command("DATA", Phase::DataInit, limits.data_init)
            .await
        {
            Ok(reply) if reply.code == 354 => {}
            Ok(reply) => {
                return Attempt {
                    recipients,
                    ..Attempt::refused("DATA rejected", reply)
                };
            }
            Err(error) => {
                return Attempt {
                    recipients,
                    ..Attempt::broken(&error)
                };
            }
        }
        self.finish_data(recipients, content, limits).await
    }

    /// Sends the content and the terminator after a `354`, and reads the
    /// final reply.
    pub(super) async fn finish_data(
        &mut self,
        recipients: Vec<RecipientResult>,
        content: &[u8],
        limits: &crate::smtp::Timeouts,
    ) -> Attempt {
        if let Err(error) = self.send_content(content, limits.data_block).await {
            return Attempt {
                recipients,
                ..Attempt::broken(&error)
            };
        }

        // From the first byte of the terminator on, the server may have the
        // message: losing the connection now means we cannot know whether
        // it will be delivered (RFC 1047).
        let end = match self
            .conn
            .write(TERMINATOR, Phase::DataEnd, limits.data_block)
            .await
        {
            Ok(()) => self.conn.read_reply(Phase::DataEnd, limits.data_end).await,
            Err(error) => Err(error),
        };
        self.needs_reset = false;
        match end {
            Ok(reply) if reply.is_positive() => Attempt {
                outcome: Outcome::Sent,
                reply: Some(reply),
                recipients,
                possible_duplicate: false,
                fate: Fate::Keep,
                stale: false,
            },
            Ok(reply) if reply.is_transient() || reply.is_permanent() => Attempt {
                recipients,
                ..Attempt::refused("message rejected", reply)
            },
            Ok(reply) => Attempt {
                recipients,
                possible_duplicate: true,
                ..Attempt::refused("end of data", reply)
            },
            Err(error) => Attempt {
                outcome: Outcome::Transient(format!(
                    "{error} (the message may have been delivered)"
                )),
                reply: None,
                recipients,
                possible_duplicate: true,
                fate: Fate::Discard,
                stale: false,
            },
        }
    }

    /// `MAIL FROM:<...>` with the parameters the server understands: SIZE
    /// lets it refuse an oversized message before we send it, BODY and
    /// SMTPUTF8 declare what the message and envelope contain.
    fn mail_command(
        &self,
        mail_from: &str,
        size: usize,
        eight_bit: bool,
        rcpt_to: &[String],
    ) -> String {
        let mut line = format!("MAIL FROM:<{mail_from}>");
        if self.ext.has("SIZE") {
            line.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.ext.has("8BITMIME") {
            line.push_str(" BODY=8BITMIME");
        }
        let utf8_envelope = !mail_from.is_ascii() || rcpt_to.iter().any(|r| !r.is_ascii());
        if utf8_envelope && self.ext.has("SMTPUTF8") {
            line.push_str(" SMTPUTF8");
        }
        line
    }

    /// Writes the content in chunks, each within the data-block timeout.
    /// The server must stay silent until the terminator; a reply before
    /// then (an "early 250") must not pass for acceptance, so it ends the
    /// session as a protocol error.
    async fn send_content(&mut self, content: &[u8], limit: Duration) -> Result<(), ConnError> {
        let early = || ConnError::Protocol {
            phase: Phase::DataBlock,
            detail: "server replied before the end of data".into(),
        };
        for chunk in content.chunks(DATA_CHUNK) {
            if self.conn.has_unread_input(Phase::DataBlock).await? {
                return Err(early());
            }
            self.conn.write(chunk, Phase::DataBlock, limit).await?;
        }
        if self.conn.has_unread_input(Phase::DataBlock).await? {
            return Err(early());
        }
        Ok(())
    }
}

/// The outcome when every recipient was refused: permanent only if every
/// refusal was; the reply shown is the first that decided it.
pub(super) fn no_recipient_accepted(recipients: Vec<RecipientResult>) -> Attempt {
    let all_permanent = recipients.iter().all(|r| r.reply.is_permanent());
    let decisive = recipients
        .iter()
        .find(|r| all_permanent || !r.reply.is_permanent())
        .map(|r| r.reply.clone());
    let detail = decisive.as_ref().map(Reply::to_string).unwrap_or_default();
    let reason = format!(
        "no recipient accepted ({} rejected): {detail}",
        recipients.len()
    );
    Attempt {
        outcome: if all_permanent {
            Outcome::Permanent(reason)
        } else {
            Outcome::Transient(reason)
        },
        reply: decisive,
        recipients,
        possible_duplicate: false,
        fate: Fate::Keep,
        stale: false,
    }
}
