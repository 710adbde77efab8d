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

use std::io::Read;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{
    Encoding, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};

use crate::address::{Address, IntoMailboxes, Mailbox};
use crate::attachment::Attachment;
use crate::builder::{normalise_msg_id, normalise_newlines};
use crate::email::Email;
use crate::error::ParseError;

/// Default limit for [`Email::from_reader`]: 64 MiB.
pub const DEFAULT_READ_LIMIT: u64 = 64 << 20;

/// Most MIME parts we walk; a message with more is parsed up to here.
const MAX_PARTS: usize = 10_000;

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
        let raw = &raw[start..];
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
        let mut walk = Walk {
            msg: &mut msg,
            email: &mut email,
            visited: 0,
        };
        walk.part(0);
        Ok(email)
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
        if ok.is_none() {
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
    list.iter()
        .filter_map(|a| {
            let addr = a.address.as_deref()?;
            Some(
                Address::new(addr.trim())
                    .and_then(|ad| Mailbox::new(a.name.as_deref().map(clean).as_deref(), ad))
                    .ok(),
            )
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
            .map(|a| a.address.map(|s| s.into_owned()))
            .collect(),
        _ => None,
    }
}

struct Walk<'a, 'x> {
    /// Mutable so that decoded attachment bytes can be moved out rather
    /// than copied: a 10 MB attachment should exist once, not three times.
    msg: &'a mut Message<'x>,
    email: &'a mut Email,
    visited: usize,
}

impl Walk<'_, '_> {
    fn part(&mut self, id: u32) {
        self.visited += 1;
        if self.visited > MAX_PARTS {
            return;
        }
        let idx = id as usize;
        if let Some(PartType::Binary(b) | PartType::InlineBinary(b)) =
            self.msg.parts.get_mut(idx).map(|p| &mut p.body)
        {
            let data = std::mem::take(b).into_owned();
            let a = attachment(&self.msg.parts[idx], data);
            self.email.attachments.push(a);
            return;
        }
        if let Some(PartType::Multipart(children)) = self.msg.parts.get(idx).map(|p| &p.body) {
            for child in children.clone() {
                self.part(child);
            }
            return;
        }
        let Some(part) = self.msg.parts.get(idx) else {
            return;
        };
        let disposition = part.content_disposition();
        let is_attachment =
            disposition.is_some_and(|d| d.is_attachment()) || part.attachment_name().is_some();
        match &part.body {
            PartType::Text(t) if !is_attachment && self.email.text.is_none() && is_plain(part) => {
                self.email.text = Some(normalise_newlines(t.to_string()));
            }
            PartType::Html(h) if !is_attachment && self.email.html.is_none() => {
                self.email.html = Some(normalise_newlines(h.to_string()));
            }
            PartType::Text(_) | PartType::Html(_) => {
                let data = undo_transfer_encoding(self.msg, part);
                self.email.attachments.push(attachment(part, data));
            }
            PartType::Message(m) => {
                let data = m.raw_message().to_vec();
                self.email.attachments.push(attachment(part, data));
            }
            // Handled above, before the part was borrowed.
            PartType::Multipart(_) | PartType::Binary(_) | PartType::InlineBinary(_) => {}
        }
    }
}

fn attachment(part: &MessagePart<'_>, data: Vec<u8>) -> Attachment {
    {
        let content_type = match part.content_type() {
            Some(ct) => match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
                None => ct.ctype().to_ascii_lowercase(),
            },
            None if matches!(part.body, PartType::Message(_)) => "message/rfc822".into(),
            None => "text/plain".into(),
        };
        let inline = match part.content_disposition() {
            Some(d) => d.is_inline(),
            None => matches!(
                part.body,
                PartType::InlineBinary(_) | PartType::Text(_) | PartType::Html(_)
            ),
        };
        let content_id = part
            .content_id()
            .map(|c| {
                c.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
            .filter(|c| !c.is_empty());
        let filename = part.attachment_name().map(clean);
        Attachment::from_parts(filename, content_type, data, content_id, inline)
    }
}

fn is_plain(part: &MessagePart<'_>) -> bool {
    part.content_type().is_none_or(|ct| {
        ct.ctype().eq_ignore_ascii_case("text")
            && ct.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain"))
    })
}

/// The original bytes of a text part that is an attachment: mail-parser has
/// already converted it to a UTF-8 string, which would alter a file in
/// another charset, so decode the transfer encoding from the raw body.
fn undo_transfer_encoding(msg: &Message<'_>, part: &MessagePart<'_>) -> Vec<u8> {
    let raw = msg
        .raw_message()
        .get(part.offset_body as usize..part.offset_end as usize)
        .unwrap_or(b"");
    let decoded = match part.encoding {
        Encoding::Base64 => base64_decode(raw),
        Encoding::QuotedPrintable => quoted_printable_decode(raw),
        Encoding::None => Some(raw.to_vec()),
    };
    decoded.unwrap_or_else(|| part.contents().to_vec())
}
