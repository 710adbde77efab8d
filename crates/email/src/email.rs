//! The [`Email`] type: a validated message, ready to render.
//!
//! Build one with [`Email::builder`], or parse one with [`Email::parse`].
//! Its fields are read through accessors; an `Email` cannot be changed into
//! an invalid one after it is built.

use jiff::Timestamp;

use crate::address::{Address, Mailbox};
use crate::attachment::Attachment;

/// An email message: addresses, subject, bodies, attachments and headers.
///
/// Text bodies are kept with `\n` line breaks whatever they were given or
/// parsed with; they are rendered with CRLF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Email {
    pub(crate) from: Vec<Mailbox>,
    pub(crate) sender: Option<Mailbox>,
    pub(crate) to: Vec<Mailbox>,
    pub(crate) cc: Vec<Mailbox>,
    pub(crate) bcc: Vec<Mailbox>,
    pub(crate) reply_to: Vec<Mailbox>,
    pub(crate) subject: Option<String>,
    pub(crate) text: Option<String>,
    pub(crate) html: Option<String>,
    pub(crate) attachments: Vec<Attachment>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) message_id: Option<String>,
    pub(crate) date: Option<Timestamp>,
    pub(crate) read_receipt: Option<Mailbox>,
    pub(crate) in_reply_to: Vec<String>,
    pub(crate) references: Vec<String>,
    pub(crate) list_unsubscribe: Vec<String>,
    pub(crate) list_unsubscribe_post: bool,
    pub(crate) boundary_seed: Option<String>,
}

/// The SMTP envelope of an email: who the relay is told it is from, and who
/// receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The MAIL FROM address: the Sender if set, else the (first) From.
    pub mail_from: Address,
    /// The RCPT TO addresses: To, then Cc, then Bcc, each address once.
    pub rcpt_to: Vec<Address>,
}

impl Email {
    /// The From mailboxes (normally exactly one).
    pub fn from(&self) -> &[Mailbox] {
        &self.from
    }
    /// The Sender mailbox, if set.
    pub fn sender(&self) -> Option<&Mailbox> {
        self.sender.as_ref()
    }
    /// The To recipients.
    pub fn to(&self) -> &[Mailbox] {
        &self.to
    }
    /// The Cc recipients.
    pub fn cc(&self) -> &[Mailbox] {
        &self.cc
    }
    /// The Bcc recipients. They are part of the envelope, never of the
    /// rendered message.
    pub fn bcc(&self) -> &[Mailbox] {
        &self.bcc
    }
    /// The Reply-To mailboxes.
    pub fn reply_to(&self) -> &[Mailbox] {
        &self.reply_to
    }
    /// The subject, decoded.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// The plain-text body.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
    /// The HTML body.
    pub fn html(&self) -> Option<&str> {
        self.html.as_deref()
    }
    /// Attachments and inline parts, in order.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
    /// Headers that have no accessor of their own, in order, with decoded
    /// values.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
    /// The first custom header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The Message-ID, with its angle brackets. Always set on a built email.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
    /// The Date. Always set on a built email.
    pub fn date(&self) -> Option<Timestamp> {
        self.date
    }
    /// Where a read receipt goes (`Disposition-Notification-To`).
    pub fn read_receipt(&self) -> Option<&Mailbox> {
        self.read_receipt.as_ref()
    }
    /// The message ids this email replies to (`In-Reply-To`), with brackets.
    pub fn in_reply_to(&self) -> &[String] {
        &self.in_reply_to
    }
    /// The thread's message ids (`References`), with brackets.
    pub fn references(&self) -> &[String] {
        &self.references
    }
    /// The `List-Unsubscribe` URIs, without angle brackets.
    pub fn list_unsubscribe(&self) -> &[String] {
        &self.list_unsubscribe
    }
    /// Whether one-click unsubscribe (`List-Unsubscribe-Post`, RFC 8058) is
    /// offered.
    pub fn list_unsubscribe_one_click(&self) -> bool {
        self.list_unsubscribe_post
    }

    /// The SMTP envelope, or `None` when the email has no From (a parsed
    /// draft) or no recipients.
    ///
    /// ```
    /// let email = email::Email::builder()
    ///     .from("Shop <shop@example.com>")
    ///     .to("ann@example.com, bob@example.com")
    ///     .cc("ann@example.com")
    ///     .bcc("audit@example.com")
    ///     .text("hi")
    ///     .build()?;
    /// let env = email.envelope().unwrap();
    /// assert_eq!(env.mail_from.as_str(), "shop@example.com");
    /// let rcpt: Vec<_> = env.rcpt_to.iter().map(|a| a.as_str()).collect();
    /// assert_eq!(rcpt, ["ann@example.com", "bob@example.com", "audit@example.com"]);
    /// # Ok::<(), email::Error>(())
    /// ```
    pub fn envelope(&self) -> Option<Envelope> {
        let mail_from = self
            .sender
            .as_ref()
            .or(self.from.first())?
            .address()
            .clone();
        let mut seen = std::collections::HashSet::new();
        let rcpt_to: Vec<Address> = self
            .to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|m| m.address())
            .filter(|a| seen.insert(a.envelope_key().to_owned()))
            .cloned()
            .collect();
        if rcpt_to.is_empty() {
            return None;
        }
        Some(Envelope { mail_from, rcpt_to })
    }

    /// Renders the email to RFC 5322 / MIME bytes with CRLF line endings.
    /// Bcc is never written.
    ///
    /// The output is a pure function of the email: Message-ID and Date are
    /// fixed when the email is built, and the MIME boundaries are derived
    /// from the Message-ID (or the seed given to
    /// [`EmailBuilder::boundary_seed`](crate::EmailBuilder::boundary_seed)).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::render::render(self)
    }
}
