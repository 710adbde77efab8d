//! [`EmailBuilder`]: compose an email in a few obvious lines.
//!
//! Setters never fail on their own: the first problem is remembered and
//! returned by [`build`](EmailBuilder::build), with the field it is about, so
//! the chain stays readable.
//!
//! ```
//! use email::Email;
//!
//! let email = Email::builder()
//!     .from("Ann <ann@example.com>")
//!     .to("bob@example.com")
//!     .to(("Zoë", "zoe@example.com"))
//!     .subject("Lunch?")
//!     .text("Noon at the usual place?")
//!     .html("<p>Noon at the <b>usual</b> place?</p>")
//!     .read_receipt("ann@example.com")
//!     .header("X-Campaign", "lunch-2026")
//!     .build()?;
//!
//! let bytes = email.to_bytes();
//! assert!(bytes.starts_with(b"Date: "));
//!
//! // Mistakes are reported at build time and name the field.
//! let err = Email::builder().from("ann@").to("bob@example.com").build().unwrap_err();
//! assert_eq!(err.field(), "from");
//! # Ok::<(), email::Error>(())
//! ```

use std::io::Read;
use std::path::Path;

use jiff::Timestamp;

use crate::address::{IntoMailboxes, Mailbox};
use crate::attachment::Attachment;
use crate::email::Email;
use crate::error::{Error, check_no_ctl};

/// Headers the builder writes itself; a custom header may not override them.
const RESERVED: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
    "in-reply-to",
    "references",
    "disposition-notification-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// Builds an [`Email`]. Created by [`Email::builder`].
#[derive(Debug, Default)]
#[must_use = "call .build() to get the email"]
pub struct EmailBuilder {
    email: Email,
    error: Option<Error>,
}

impl Email {
    /// Starts composing an email.
    pub fn builder() -> EmailBuilder {
        EmailBuilder::default()
    }
}

impl EmailBuilder {
    fn record(&mut self, r: Result<(), Error>) {
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(e);
        }
    }

    fn add(
        mut self,
        field: &'static str,
        list: impl IntoMailboxes,
        pick: fn(&mut Email) -> &mut Vec<Mailbox>,
    ) -> Self {
        match list.into_mailboxes(field) {
            Ok(v) => pick(&mut self.email).extend(v),
            Err(e) => self.record(Err(e)),
        }
        self
    }

    fn one(&mut self, field: &'static str, value: impl IntoMailboxes) -> Option<Mailbox> {
        match value.into_mailboxes(field) {
            Ok(mut v) if v.len() == 1 => v.pop(),
            Ok(_) => {
                self.record(Err(Error::InvalidValue {
                    field: field.into(),
                    value: String::new(),
                    reason: "expected exactly one address",
                }));
                None
            }
            Err(e) => {
                self.record(Err(e));
                None
            }
        }
    }

    /// The author. Usually one address; with several, a
    /// [`sender`](Self::sender) is required.
    pub fn from(self, from: impl IntoMailboxes) -> Self {
        self.add("from", from, |e| &mut e.from)
    }
    /// The mailbox actually sending, when it differs from From. It is also
    /// the envelope's MAIL FROM.
    pub fn sender(mut self, sender: impl IntoMailboxes) -> Self {
        self.email.sender = self.one("sender", sender);
        self
    }
    /// Adds To recipients: one address, a comma-separated list, a
    /// `(name, address)` pair, a [`Mailbox`], or a `Vec` of those.
    pub fn to(self, to: impl IntoMailboxes) -> Self {
        self.add("to", to, |e| &mut e.to)
    }
    /// Adds Cc recipients.
    pub fn cc(self, cc: impl IntoMailboxes) -> Self {
        self.add("cc", cc, |e| &mut e.cc)
    }
    /// Adds Bcc recipients: in the envelope, never in the rendered headers.
    pub fn bcc(self, bcc: impl IntoMailboxes) -> Self {
        self.add("bcc", bcc, |e| &mut e.bcc)
    }
    /// Adds Reply-To mailboxes.
    pub fn reply_to(self, reply_to: impl IntoMailboxes) -> Self {
        self.add("reply-to", reply_to, |e| &mut e.reply_to)
    }
    /// The subject: any text without CR, LF or NUL.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        let s = subject.into();
        self.record(check_no_ctl("subject", &s));
        self.email.subject = Some(s);
        self
    }
    /// The plain-text body.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.email.text = Some(normalise_newlines(text.into()));
        self
    }
    /// The HTML body. Inline images are referred to as `cid:` + their
    /// [`Attachment::content_id`].
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.email.html = Some(normalise_newlines(html.into()));
        self
    }
    /// Adds a custom header. The name must be printable ASCII without `:`,
    /// the value free of CR, LF and NUL, and the header must not be one the
    /// builder writes itself (From, Subject, Content-Type, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        let r =
            check_header_name(&name).and_then(|()| check_no_ctl(&format!("header {name}"), &value));
        self.record(r);
        self.email.headers.push((name, value));
        self
    }
    /// Adds an attachment or inline part.
    pub fn attach(mut self, attachment: Attachment) -> Self {
        self.email.attachments.push(attachment);
        self
    }
    /// Attaches a file; its content type is guessed from the extension.
    /// A read error is returned by [`build`](Self::build), naming the path.
    ///
    /// ```
    /// let err = email::Email::builder()
    ///     .from("ann@example.com")
    ///     .to("bob@example.com")
    ///     .attach_file("/no/such/report.pdf")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("attachment \"/no/such/report.pdf\""));
    /// ```
    pub fn attach_file(mut self, path: impl AsRef<Path>) -> Self {
        match Attachment::from_path(path) {
            Ok(a) => self.email.attachments.push(a),
            Err(e) => self.record(Err(e)),
        }
        self
    }
    /// Attaches everything `reader` yields, under `filename`.
    pub fn attach_reader(mut self, filename: impl Into<String>, reader: impl Read) -> Self {
        match Attachment::from_reader(filename, reader) {
            Ok(a) => self.email.attachments.push(a),
            Err(e) => self.record(Err(e)),
        }
        self
    }
    /// Adds an inline image; the HTML shows it with `cid:` + its name, with
    /// characters other than ASCII letters, digits, `.`, `-` and `_`
    /// replaced by `_` (see [`Attachment::inline`]).
    pub fn inline_image(self, filename: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        self.attach(Attachment::inline(filename, data))
    }
    /// Asks for a read receipt (`Disposition-Notification-To`, RFC 8098).
    ///
    /// ```
    /// let e = email::Email::builder()
    ///     .from("ann@example.com")
    ///     .to("bob@example.com")
    ///     .read_receipt("Ann <receipts@example.com>")
    ///     .build()?;
    /// let raw = String::from_utf8(e.to_bytes()).unwrap();
    /// assert!(raw.contains("Disposition-Notification-To: Ann <receipts@example.com>\r\n"));
    /// # Ok::<(), email::Error>(())
    /// ```
    pub fn read_receipt(mut self, to: impl IntoMailboxes) -> Self {
        self.email.read_receipt = self.one("read-receipt", to);
        self
    }
    /// Sets `In-Reply-To` (and adds the id to `References`, as replies do).
    ///
    /// ```
    /// let reply = email::Email::builder()
    ///     .from("bob@example.com")
    ///     .to("ann@example.com")
    ///     .subject("Re: Lunch?")
    ///     .references("<thread-root@example.com>")
    ///     .in_reply_to("<lunch-1@example.com>")
    ///     .text("Yes!")
    ///     .build()?;
    /// assert_eq!(reply.in_reply_to(), ["<lunch-1@example.com>"]);
    /// assert_eq!(reply.references(), ["<thread-root@example.com>", "<lunch-1@example.com>"]);
    /// # Ok::<(), email::Error>(())
    /// ```
    pub fn in_reply_to(mut self, message_id: &str) -> Self {
        if let Some(id) = self.msg_id("in-reply-to", message_id) {
            if !self.email.references.contains(&id) {
                self.email.references.push(id.clone());
            }
            self.email.in_reply_to = vec![id];
        }
        self
    }
    /// Adds a message id to `References`.
    pub fn references(mut self, message_id: &str) -> Self {
        if let Some(id) = self.msg_id("references", message_id) {
            self.email.references.push(id);
        }
        self
    }
    /// Adds a `List-Unsubscribe` URI (`mailto:` or `https:`).
    pub fn list_unsubscribe(mut self, uri: &str) -> Self {
        let r = check_uri("list-unsubscribe", uri);
        self.record(r);
        self.email.list_unsubscribe.push(uri.to_owned());
        self
    }
    /// One-click unsubscribe (RFC 8058): adds the `https:` URI to
    /// `List-Unsubscribe` and sends `List-Unsubscribe-Post:
    /// List-Unsubscribe=One-Click`.
    ///
    /// ```
    /// let news = email::Email::builder()
    ///     .from("news@example.com")
    ///     .to("ann@example.com")
    ///     .one_click_unsubscribe("https://example.com/unsub?u=ann")
    ///     .list_unsubscribe("mailto:unsub@example.com?subject=ann")
    ///     .text("This week...")
    ///     .build()?;
    /// let raw = String::from_utf8(news.to_bytes()).unwrap();
    /// assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    /// # Ok::<(), email::Error>(())
    /// ```
    pub fn one_click_unsubscribe(mut self, https_uri: &str) -> Self {
        if !https_uri.starts_with("https://") {
            self.record(Err(Error::InvalidValue {
                field: "list-unsubscribe".into(),
                value: https_uri.into(),
                reason: "one-click unsubscribe needs an https:// URI (RFC 8058)",
            }));
        }
        self.email.list_unsubscribe_post = true;
        self.list_unsubscribe(https_uri)
    }
    /// Sets the Message-ID (with or without `<>`). By default one is
    /// generated on the sender's domain.
    pub fn message_id(mut self, id: &str) -> Self {
        self.email.message_id = self.msg_id("message-id", id);
        self
    }
    /// Sets the Date. By default it is the time of [`build`](Self::build).
    pub fn date(mut self, date: Timestamp) -> Self {
        self.email.date = Some(date);
        self
    }
    /// Derives the MIME boundaries from this seed instead of the
    /// Message-ID. Only useful for reproducible output in tests.
    pub fn boundary_seed(mut self, seed: impl Into<String>) -> Self {
        self.email.boundary_seed = Some(seed.into());
        self
    }

    fn msg_id(&mut self, field: &'static str, id: &str) -> Option<String> {
        match normalise_msg_id(field, id) {
            Ok(id) => Some(id),
            Err(e) => {
                self.record(Err(e));
                None
            }
        }
    }

    /// Validates and returns the email, or the first error found.
    ///
    /// Fills in a Message-ID (`<uuid@sender-domain>`) and the Date when
    /// they were not given, so rendering the email again gives the same
    /// bytes.
    pub fn build(self) -> Result<Email, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut email = self.email;
        if email.from.is_empty() {
            return Err(Error::MissingFrom);
        }
        if email.from.len() > 1 && email.sender.is_none() {
            return Err(Error::InvalidValue {
                field: "sender".into(),
                value: String::new(),
                reason: "required when there are several From addresses (RFC 5322 §3.6.2)",
            });
        }
        if email.to.is_empty() && email.cc.is_empty() && email.bcc.is_empty() {
            return Err(Error::NoRecipients);
        }
        let mut cids = std::collections::HashSet::new();
        for a in &email.attachments {
            a.validate()?;
            if let Some(cid) = a.content_id()
                && !cids.insert(cid)
            {
                return Err(Error::InvalidValue {
                    field: "content id".into(),
                    value: cid.into(),
                    reason: "used by two parts",
                });
            }
        }
        if email.message_id.is_none() {
            let domain = email
                .sender
                .as_ref()
                .unwrap_or(&email.from[0])
                .address()
                .domain()
                .to_owned();
            email.message_id = Some(format!("<{}@{domain}>", uuid::Uuid::now_v7().simple()));
        }
        if email.date.is_none() {
            let now = Timestamp::now();
            email.date = Some(Timestamp::from_second(now.as_second()).unwrap_or(now));
        }
        Ok(email)
    }
}

/// Whether the builder writes this header itself.
pub(crate) fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Turns CRLF and lone CR into LF: the in-memory form of every text body.
pub(crate) fn normalise_newlines(s: String) -> String {
    if !s.contains('\r') {
        return s;
    }
    s.replace("\r\n", "\n").replace('\r', "\n")
}

fn check_header_name(name: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidHeaderName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return bad("must be printable ASCII without spaces or ':'");
    }
    if name.len() > 76 {
        return bad("longer than 76 characters");
    }
    if is_reserved(name) {
        return Err(Error::ReservedHeader { name: name.into() });
    }
    Ok(())
}

/// `id@domain` or `<id@domain>` to `<id@domain>`, rejecting anything that
/// could break out of the header.
pub(crate) fn normalise_msg_id(field: &str, id: &str) -> Result<String, Error> {
    check_no_ctl(field, id)?;
    let inner = id.trim();
    let inner = inner
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or(inner);
    let ok = inner.len() <= 250
        && inner
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b'<' && b != b'>')
        && matches!(inner.split_once('@'), Some((l, r)) if !l.is_empty() && !r.is_empty());
    if ok {
        Ok(format!("<{inner}>"))
    } else {
        Err(Error::InvalidValue {
            field: field.into(),
            value: id.into(),
            reason: "expected <left@right> in printable ASCII without spaces",
        })
    }
}

fn check_uri(field: &str, uri: &str) -> Result<(), Error> {
    check_no_ctl(field, uri)?;
    let ok = uri.len() <= 900
        && (uri.starts_with("mailto:")
            || uri.starts_with("https://")
            || uri.starts_with("http://"))
        && uri
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b'<' && b != b'>' && b != b',');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field: field.into(),
            value: uri.into(),
            reason: "expected a mailto: or http(s): URI without spaces, commas or <>",
        })
    }
}
