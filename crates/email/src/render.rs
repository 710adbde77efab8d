//! Rendering an [`Email`] to RFC 5322 / MIME bytes.
//!
//! The MIME tree is the smallest correct one:
//!
//! ```text
//! multipart/mixed                 only if there are attachments
//!   multipart/alternative         only if there are both text and HTML
//!     text/plain
//!     multipart/related           only if the HTML has inline images
//!       text/html
//!       image/...                 inline parts, by Content-ID
//!   application/...               attachments
//! ```
//!
//! Text parts are quoted-printable UTF-8 and attachments base64, so every
//! line is short, ASCII and CRLF-terminated. Boundaries are `=_` plus a hash
//! of the Message-ID: neither encoding can produce `=_` (quoted-printable
//! always escapes `=`), so a boundary can never occur inside a part, and the
//! output is reproducible.

use jiff::tz::TimeZone;

use crate::address::Mailbox;
use crate::attachment::Attachment;
use crate::builder::is_reserved;
use crate::email::Email;
use crate::encode::{
    base64_lines, line_len, mime_param, phrase, quoted_printable, unstructured_header,
};

enum Part<'a> {
    Text(&'a str, &'static str),
    Attachment(&'a Attachment),
    Multi(&'static str, Vec<Part<'a>>),
}

pub(crate) fn render(email: &Email) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(email));
    headers(&mut out, email);
    let seed = email
        .boundary_seed
        .as_deref()
        .or(email.message_id.as_deref())
        .unwrap_or("");
    let mut r = Renderer {
        out,
        hash: fnv1a(seed.as_bytes()),
        next_boundary: 0,
    };
    r.part(&tree(email));
    r.out
}

fn estimate(email: &Email) -> usize {
    let text =
        email.text.as_ref().map_or(0, String::len) + email.html.as_ref().map_or(0, String::len);
    let files: usize = email
        .attachments
        .iter()
        .map(|a| a.data().len().div_ceil(57) * 78 + 512)
        .sum();
    4096 + text + text / 8 + files
}

fn tree(email: &Email) -> Part<'_> {
    let has_html = email.html.is_some();
    let (inline, others): (Vec<&Attachment>, Vec<&Attachment>) = email
        .attachments
        .iter()
        .partition(|a| has_html && a.is_inline() && a.content_id().is_some());
    let html = email.html.as_deref().map(|h| {
        let html = Part::Text(h, "text/html");
        if inline.is_empty() {
            html
        } else {
            let mut parts = vec![html];
            parts.extend(inline.into_iter().map(Part::Attachment));
            Part::Multi("related", parts)
        }
    });
    let text = email.text.as_deref().map(|t| Part::Text(t, "text/plain"));
    let body = match (text, html) {
        (Some(t), Some(h)) => Some(Part::Multi("alternative", vec![t, h])),
        (Some(t), None) => Some(t),
        (None, Some(h)) => Some(h),
        (None, None) if others.is_empty() => Some(Part::Text("", "text/plain")),
        (None, None) => None,
    };
    if others.is_empty() {
        return body.unwrap_or(Part::Text("", "text/plain"));
    }
    let mut parts: Vec<Part<'_>> = body.into_iter().collect();
    parts.extend(others.into_iter().map(Part::Attachment));
    Part::Multi("mixed", parts)
}

fn headers(out: &mut Vec<u8>, e: &Email) {
    if let Some(date) = e.date {
        let zoned = date.to_zoned(TimeZone::UTC);
        if let Ok(d) = jiff::fmt::rfc2822::to_string(&zoned) {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(d.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    mailboxes(out, "From", &e.from);
    mailboxes(out, "Sender", e.sender.as_slice());
    mailboxes(out, "Reply-To", &e.reply_to);
    mailboxes(out, "To", &e.to);
    mailboxes(out, "Cc", &e.cc);
    // Bcc is deliberately absent: it lives in the envelope only.
    if let Some(subject) = &e.subject {
        unstructured_header(out, "Subject", subject);
    }
    ids(out, "Message-ID", e.message_id.as_slice());
    ids(out, "In-Reply-To", &e.in_reply_to);
    ids(out, "References", &e.references);
    mailboxes(
        out,
        "Disposition-Notification-To",
        e.read_receipt.as_slice(),
    );
    if !e.list_unsubscribe.is_empty() {
        out.extend_from_slice(b"List-Unsubscribe:");
        for (i, uri) in e.list_unsubscribe.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b" <" } else { b",\r\n <" });
            out.extend_from_slice(uri.as_bytes());
            out.push(b'>');
        }
        out.extend_from_slice(b"\r\n");
    }
    if e.list_unsubscribe_post {
        out.extend_from_slice(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    }
    // A parsed email can carry headers with names the builder owns (a From
    // that did not parse, say). They are never written back: a stray Bcc
    // must not leak, and the typed fields are the truth.
    for (name, value) in e.headers.iter().filter(|(n, _)| !is_reserved(n)) {
        unstructured_header(out, name, value);
    }
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
}

fn mailboxes(out: &mut Vec<u8>, name: &str, list: &[Mailbox]) {
    if list.is_empty() {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    for (i, m) in list.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b" " } else { b",\r\n " });
        match m.name() {
            Some(n) => {
                phrase(out, n);
                if line_len(out) + m.address().as_str().len() + 3 > 76 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b" <");
                out.extend_from_slice(m.address().as_str().as_bytes());
                out.push(b'>');
            }
            None => out.extend_from_slice(m.address().as_str().as_bytes()),
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn ids(out: &mut Vec<u8>, name: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    for (i, id) in ids.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b" " } else { b"\r\n " });
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

struct Renderer {
    out: Vec<u8>,
    hash: u64,
    next_boundary: u32,
}

impl Renderer {
    /// Writes a part's own headers, the blank line, and its body.
    fn part(&mut self, part: &Part<'_>) {
        match part {
            Part::Text(body, ct) => {
                self.out.extend_from_slice(b"Content-Type: ");
                self.out.extend_from_slice(ct.as_bytes());
                self.out.extend_from_slice(
                    b"; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
                );
                quoted_printable(&mut self.out, body);
            }
            Part::Attachment(a) => self.attachment(a),
            Part::Multi(sub, children) => {
                let boundary = format!("=_{:016x}{:02}", self.hash, self.next_boundary);
                self.next_boundary += 1;
                self.out.extend_from_slice(b"Content-Type: multipart/");
                self.out.extend_from_slice(sub.as_bytes());
                if *sub == "related" {
                    // RFC 2387 §3.1: the type of the root part is required.
                    self.out.extend_from_slice(b"; type=\"text/html\"");
                }
                self.out.extend_from_slice(b";\r\n\tboundary=\"");
                self.out.extend_from_slice(boundary.as_bytes());
                self.out.extend_from_slice(b"\"\r\n\r\n");
                for child in children {
                    self.out.extend_from_slice(b"--");
                    self.out.extend_from_slice(boundary.as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                    self.part(child);
                    // The body ended with CRLF; the next delimiter needs its
                    // own leading CRLF or the last line break is lost.
                    self.out.extend_from_slice(b"\r\n");
                }
                self.out.extend_from_slice(b"--");
                self.out.extend_from_slice(boundary.as_bytes());
                self.out.extend_from_slice(b"--\r\n");
            }
        }
    }

    fn attachment(&mut self, a: &Attachment) {
        let out = &mut self.out;
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(a.content_type().as_bytes());
        if let Some(name) = a.filename() {
            // `name=` is the older spelling that some clients still read
            // instead of the disposition's `filename=`.
            mime_param(out, "name", name);
        }
        out.extend_from_slice(b"\r\nContent-Transfer-Encoding: base64\r\n");
        out.extend_from_slice(if a.is_inline() {
            b"Content-Disposition: inline"
        } else {
            b"Content-Disposition: attachment"
        });
        if let Some(name) = a.filename() {
            mime_param(out, "filename", name);
        }
        out.extend_from_slice(b"\r\n");
        if let Some(cid) = a.content_id() {
            out.extend_from_slice(b"Content-ID: <");
            out.extend_from_slice(cid.as_bytes());
            out.extend_from_slice(b">\r\n");
        }
        out.extend_from_slice(b"\r\n");
        base64_lines(out, a.data());
    }
}

/// FNV-1a: a tiny hash that is the same on every platform and Rust version,
/// unlike `DefaultHasher`, so boundaries are reproducible.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
