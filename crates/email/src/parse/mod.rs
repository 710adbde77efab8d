//! Parsing existing messages into an [`Email`].
//!
//! Parsing is best effort, as mail clients are: a header that does not parse
//! as what its name says (an address header holding garbage, say) is kept
//! verbatim among [`Email::headers`] rather than failing the whole message
//! or being dropped. MIME decoding is done by `mail-parser`; this module
//! decides what is a body and what is an attachment.
//!
//! ```
//! let raw = b"From: Ann <ann@example.com>\r\n\
//!             To: bob@example.com\r\n\
//!             Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
//!             \r\n\
//!             Hello Bob\r\n";
//! let email = email::Email::parse(raw)?;
//! assert_eq!(email.subject(), Some("Grüße"));
//! assert_eq!(email.from()[0].name(), Some("Ann"));
//! assert_eq!(email.text(), Some("Hello Bob\n"));
//! # Ok::<(), email::ParseError>(())
//! ```

use std::borrow::Cow;
use std::io::Read;

mod body;

use mail_parser::{HeaderName, HeaderValue, Message, MessageParser};

use crate::address::{Address, IntoMailboxes, Mailbox};
use crate::builder::normalise_msg_id;
use crate::email::Email;
use crate::error::ParseError;

/// Default limit for [`Email::from_reader`]: 64 MiB.
pub const DEFAULT_READ_LIMIT: u64 = 64 << 20;

impl Email {
    /// Parses a message from bytes.
    ///
    /// Leading whitespace is skipped, bodies are converted to UTF-8 with
    /// `\n` line breaks, and when there are several displayable text parts
    /// the first one is the body (later ones are kept as inline
    /// attachments, so nothing is lost).
    pub fn parse(raw: &[u8]) -> Result<Email, ParseError> {
        let start = raw
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or(ParseError::Empty)?;
        let mut raw = Cow::Borrowed(&raw[start..]);
        // Input that ends inside the header section would lose its last
        // header; give it the blank line it is missing.
        if !contains(&raw, b"\n\r\n") && !contains(&raw, b"\n\n") {
            let mut owned = raw.into_owned();
            if !owned.ends_with(b"\n") {
                owned.extend_from_slice(b"\r\n");
            }
            owned.extend_from_slice(b"\r\n");
            raw = Cow::Owned(owned);
        }
        let raw: &[u8] = &raw;
        // Headers without a parser of their own are unstructured text:
        // decode RFC 2047 in them, as mail clients do, rather than keeping
        // raw encoded words. (mail-parser only applies the default to
        // unknown headers once some header is mapped explicitly.)
        let mut msg = MessageParser::new()
            .with_mime_headers()
            .with_date_headers()
            .with_address_headers()
            .with_message_ids()
            .header_address(HeaderName::ListUnsubscribe)
            .default_header_text()
            .parse(raw)
            .ok_or(ParseError::NotAMessage("no header section"))?;
        if msg.root_part().headers.is_empty() {
            return Err(ParseError::NotAMessage("no header section"));
        }
        let mut email = Email::default();
        headers(&msg, &mut email);
        body::walk(&mut msg, &mut email);
        Ok(email)
    }

    /// Checks that `raw` starts with a well-formed header section, without
    /// parsing the message: every line up to the first empty one is a
    /// header field (`Name: value`, the name printable ASCII without `:`)
    /// or the folded continuation of one, there is at least one field, and
    /// no line holds a NUL. Leading whitespace is skipped, as by
    /// [`Email::parse`]. It reads only the header section, so it is cheap
    /// enough to run before every delivery; anything it accepts,
    /// [`Email::parse`] accepts too.
    ///
    /// ```
    /// use email::Email;
    /// assert!(Email::check_header_section(b"From: a@example.com\r\n\r\nHi\r\n").is_ok());
    /// let err = Email::check_header_section(b"From a@example.com Mon Jan 1\r\n").unwrap_err();
    /// assert_eq!(err.to_string(), "not an RFC 5322 message: header line 1 has no colon");
    /// ```
    pub fn check_header_section(raw: &[u8]) -> Result<(), ParseError> {
        let start = raw
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .ok_or(ParseError::Empty)?;
        let bad = |line, reason| Err(ParseError::BadHeaderLine { line, reason });
        let mut fields = 0;
        for (i, line) in raw[start..].split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            if line.contains(&0) {
                return bad(i + 1, "holds a NUL byte");
            }
            if matches!(line[0], b' ' | b'\t') {
                if fields == 0 {
                    return bad(i + 1, "continues a header field that does not exist");
                }
                continue;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return bad(i + 1, "has no colon");
            };
            let name = &line[..colon];
            // RFC 5322 allows no space before the colon; RFC 822 did, and
            // old software still writes "Subject :", which parsers accept.
            let name = name.trim_ascii_end();
            if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
                return bad(i + 1, "has no valid field name before its colon");
            }
            fields += 1;
        }
        if fields == 0 {
            return Err(ParseError::NotAMessage("no header section"));
        }
        Ok(())
    }

    /// Parses a message read from `reader`, up to [`DEFAULT_READ_LIMIT`]
    /// bytes.
    pub fn from_reader(reader: impl Read) -> Result<Email, ParseError> {
        Self::from_reader_limited(reader, DEFAULT_READ_LIMIT)
    }

    /// Parses a message read from `reader`, failing with
    /// [`ParseError::TooLarge`] past `limit` bytes.
    pub fn from_reader_limited(reader: impl Read, limit: u64) -> Result<Email, ParseError> {
        let mut raw = Vec::new();
        reader.take(limit.saturating_add(1)).read_to_end(&mut raw)?;
        if raw.len() as u64 > limit {
            return Err(ParseError::TooLarge { limit });
        }
        Email::parse(&raw)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn headers(msg: &Message<'_>, email: &mut Email) {
    for h in msg.headers() {
        let name = h.name();
        let lower = name.to_ascii_lowercase();
        let ok = match lower.as_str() {
            "from" => mailboxes(&h.value).map(|v| email.from.extend(v)),
            "to" => mailboxes(&h.value).map(|v| email.to.extend(v)),
            "cc" => mailboxes(&h.value).map(|v| email.cc.extend(v)),
            "bcc" => mailboxes(&h.value).map(|v| email.bcc.extend(v)),
            "reply-to" => mailboxes(&h.value).map(|v| email.reply_to.extend(v)),
            "sender" => first_mailbox(&h.value).map(|m| email.sender = Some(m)),
            // Not an address header to mail-parser: parse the decoded text.
            "disposition-notification-to" => h
                .value
                .as_text()
                .and_then(|t| t.into_mailboxes("read-receipt").ok())
                .and_then(|v| v.into_iter().next())
                .map(|m| email.read_receipt = Some(m)),
            "subject" => h.value.as_text().map(|s| email.subject = Some(clean(s))),
            "date" => h
                .value
                .as_datetime()
                .filter(|d| d.is_valid())
                .and_then(|d| jiff::Timestamp::from_second(d.to_timestamp()).ok())
                .map(|t| email.date = Some(t)),
            "message-id" => ids(&h.value)
                .and_then(|mut v| v.pop())
                .map(|id| email.message_id = Some(id)),
            "in-reply-to" => ids(&h.value).map(|v| email.in_reply_to = v),
            "references" => ids(&h.value).map(|v| email.references = v),
            "list-unsubscribe" => uris(&h.value).map(|v| email.list_unsubscribe = v),
            "list-unsubscribe-post" => {
                email.list_unsubscribe_post = raw_value(msg, h.offset_start, h.offset_end)
                    .to_ascii_lowercase()
                    .contains("one-click");
                Some(())
            }
            // Structure, not content: rebuilt when the email is rendered.
            "mime-version" | "content-type" | "content-transfer-encoding" => Some(()),
            _ => None,
        };
        // A name that is not printable ASCII (a bare CR, a space, 8-bit
        // bytes) is garbage mail-parser took for a header; written back it
        // would break the header section, a bare CR even into two lines.
        if ok.is_none() && name.bytes().all(|b| (33..=126).contains(&b)) {
            let value = match h.value.as_text() {
                Some(t) => clean(t),
                None => raw_value(msg, h.offset_start, h.offset_end),
            };
            email.headers.push((name.to_owned(), value));
        }
    }
}

/// A header's raw value, unfolded and trimmed.
fn raw_value(msg: &Message<'_>, start: u32, end: u32) -> String {
    let raw = msg
        .raw_message()
        .get(start as usize..end as usize)
        .unwrap_or(b"");
    clean(String::from_utf8_lossy(raw).trim())
}

/// Unfolds and replaces the characters a header may not hold. Decoded
/// encoded words can smuggle CR/LF; a parsed email must stay renderable.
fn clean(s: &str) -> String {
    let s = s.replace("\r\n", "");
    s.chars()
        .map(|c| {
            if matches!(c, '\r' | '\n' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

fn mailboxes(v: &HeaderValue<'_>) -> Option<Vec<Mailbox>> {
    let list = match v {
        HeaderValue::Address(a) => a.clone().into_list(),
        HeaderValue::Empty => return Some(Vec::new()),
        _ => return None,
    };
    // All or nothing: one entry without a valid address (a bare name, an
    // unterminated quote, `<>`) keeps the whole header verbatim instead.
    list.iter()
        .map(|a| {
            let addr = Address::new(a.address.as_deref()?.trim()).ok()?;
            Mailbox::new(a.name.as_deref().map(clean).as_deref(), addr).ok()
        })
        .collect()
}

fn first_mailbox(v: &HeaderValue<'_>) -> Option<Mailbox> {
    mailboxes(v)?.into_iter().next()
}

fn ids(v: &HeaderValue<'_>) -> Option<Vec<String>> {
    let list: Vec<&str> = match v {
        HeaderValue::Text(t) => t.split_whitespace().collect(),
        HeaderValue::TextList(l) => l.iter().map(|s| s.as_ref()).collect(),
        _ => return None,
    };
    list.into_iter()
        .map(|id| normalise_msg_id("message-id", id).ok())
        .collect()
}

fn uris(v: &HeaderValue<'_>) -> Option<Vec<String>> {
    match v {
        HeaderValue::Address(a) => a
            .clone()
            .into_list()
            .into_iter()
            .map(|a| {
                // Written back between `<` and `>`: no CR, LF, spaces or
                // brackets, else the header is kept verbatim instead.
                let uri = a.address?;
                let plain = uri
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && b != b'<' && b != b'>');
                plain.then(|| uri.into_owned())
            })
            .collect(),
        _ => None,
    }
}
