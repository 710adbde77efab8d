//! The MIME walk: which part is the text body, which the HTML body, and
//! what is an attachment.
//!
//! The walk is iterative with an explicit stack (hostile input can nest
//! multiparts thousands deep; recursion would overflow the stack) and visits
//! at most [`MAX_PARTS`] parts. It works around a few things mail-parser
//! leaves undone: bodies whose base64 is damaged or cut short are decoded
//! leniently, an image in `multipart/related` with a Content-ID is inline
//! even without a Content-Disposition, and a multipart without a boundary
//! is not passed on as an (unrenderable) multipart attachment.

use base64::Engine as _;
use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};

use super::clean;
use crate::attachment::Attachment;
use crate::builder::normalise_newlines;
use crate::email::Email;

/// Most MIME parts visited; a message with more is parsed up to here.
pub(super) const MAX_PARTS: usize = 10_000;

/// Walks the part tree from the root, filling bodies and attachments.
pub(super) fn walk(msg: &mut Message<'_>, email: &mut Email) {
    // (part id, parent is multipart/related)
    let mut stack: Vec<(u32, bool)> = vec![(0, false)];
    let mut visited = 0;
    while let Some((id, in_related)) = stack.pop() {
        visited += 1;
        if visited > MAX_PARTS {
            break;
        }
        let idx = id as usize;
        let Some(part) = msg.parts.get(idx) else {
            continue;
        };
        if let PartType::Multipart(children) = &part.body {
            let related = part.content_type().is_some_and(|ct| {
                ct.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("related"))
            });
            // Reversed, so that the first child is popped first.
            stack.extend(children.iter().rev().map(|&c| (c, related)));
            continue;
        }
        let kind = Kind::of(msg, idx, email);
        let data = match kind {
            Kind::Text | Kind::Html => {
                let text = body_text(msg, idx);
                if kind == Kind::Text {
                    email.text = Some(text);
                } else {
                    email.html = Some(text);
                }
                continue;
            }
            Kind::Attachment => attachment_bytes(msg, idx),
        };
        let part = &msg.parts[idx];
        email.attachments.push(attachment(part, data, in_related));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Html,
    Attachment,
}

impl Kind {
    /// The first displayable `text/plain` and `text/html` parts that are not
    /// attachments are the bodies, as in mail clients; everything else is
    /// kept as an attachment.
    fn of(msg: &Message<'_>, idx: usize, email: &Email) -> Kind {
        let part = &msg.parts[idx];
        let declared_attachment = part
            .content_disposition()
            .is_some_and(|d| d.is_attachment())
            || part.attachment_name().is_some();
        if declared_attachment {
            return Kind::Attachment;
        }
        let (ctype, subtype) = match part.content_type() {
            None => ("text".to_owned(), "plain".to_owned()),
            Some(ct) => (
                ct.ctype().to_ascii_lowercase(),
                ct.subtype().unwrap_or("plain").to_ascii_lowercase(),
            ),
        };
        match (ctype.as_str(), subtype.as_str()) {
            ("text", "plain") if email.text.is_none() => Kind::Text,
            ("text", "html") if email.html.is_none() => Kind::Html,
            // A multipart whose boundary is missing arrives as one opaque
            // part; show it as text rather than lose it.
            ("multipart", _) if email.text.is_none() => Kind::Text,
            _ => Kind::Attachment,
        }
    }
}

/// A body part as UTF-8 with `\n` line breaks.
fn body_text(msg: &mut Message<'_>, idx: usize) -> String {
    let part = &msg.parts[idx];
    let text = match &part.body {
        PartType::Text(t) | PartType::Html(t) if !damaged_base64(part) => t.to_string(),
        _ => {
            let charset = part
                .content_type()
                .and_then(|ct| ct.attribute("charset"))
                .unwrap_or("utf-8")
                .to_owned();
            let bytes = attachment_bytes(msg, idx);
            match charset_decoder(charset.as_bytes()) {
                Some(decode) => decode(&bytes),
                None => String::from_utf8_lossy(&bytes).into_owned(),
            }
        }
    };
    normalise_newlines(text)
}

/// mail-parser gives up on base64 with a stray character or a missing end,
/// and then hands back the encoded text; we decode such parts ourselves.
fn damaged_base64(part: &MessagePart<'_>) -> bool {
    part.is_encoding_problem
        && declared_encoding(part).is_some_and(|e| e.eq_ignore_ascii_case("base64"))
}

fn declared_encoding<'p>(part: &'p MessagePart<'_>) -> Option<&'p str> {
    part.content_transfer_encoding().map(str::trim)
}

/// The decoded bytes of a part, moved out of the message where mail-parser
/// already decoded them (a large attachment should exist once, not twice).
fn attachment_bytes(msg: &mut Message<'_>, idx: usize) -> Vec<u8> {
    let part = &msg.parts[idx];
    if damaged_base64(part) {
        return lenient_base64(raw_body(msg, part));
    }
    match &part.body {
        // mail-parser has converted text to UTF-8, which would alter a file
        // in another charset: undo only the transfer encoding.
        PartType::Text(_) | PartType::Html(_) => {
            let raw = raw_body(msg, part);
            let decoded = match part.encoding {
                Encoding::Base64 => Some(lenient_base64(raw)),
                Encoding::QuotedPrintable => quoted_printable_decode(raw),
                Encoding::None => Some(raw.to_vec()),
            };
            decoded.unwrap_or_else(|| part.contents().to_vec())
        }
        PartType::Message(m) => m.raw_message().to_vec(),
        PartType::Binary(_) | PartType::InlineBinary(_) => match &mut msg.parts[idx].body {
            PartType::Binary(b) | PartType::InlineBinary(b) => std::mem::take(b).into_owned(),
            _ => Vec::new(),
        },
        PartType::Multipart(_) => Vec::new(),
    }
}

fn raw_body<'m>(msg: &'m Message<'_>, part: &MessagePart<'_>) -> &'m [u8] {
    msg.raw_message()
        .get(part.offset_body as usize..part.offset_end as usize)
        .unwrap_or(b"")
}

/// Base64 as RFC 2045 §6.8 asks decoders to read it: characters outside
/// the alphabet are ignored, and a final incomplete group is dropped.
fn lenient_base64(raw: &[u8]) -> Vec<u8> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut clean: Vec<u8> = raw
        .iter()
        .copied()
        .take_while(|&b| b != b'=')
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    // A single leftover character carries no whole byte.
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    LENIENT.decode(&clean).unwrap_or_default()
}

fn attachment(part: &MessagePart<'_>, data: Vec<u8>, in_related: bool) -> Attachment {
    let mut content_type = match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
        None if matches!(part.body, PartType::Message(_)) => "message/rfc822".into(),
        None => "text/plain".into(),
    };
    if content_type.starts_with("multipart/") {
        content_type = "application/octet-stream".into();
    }
    let content_id = part
        .content_id()
        .map(|c| {
            c.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .filter(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'<' && b != b'>')
        });
    let inline = match part.content_disposition() {
        Some(d) => d.is_inline(),
        // Inside multipart/related, a part with a Content-ID is there to be
        // shown by the HTML (Python's email package sends no disposition).
        None if in_related && content_id.is_some() => true,
        None => matches!(
            part.body,
            PartType::InlineBinary(_) | PartType::Text(_) | PartType::Html(_)
        ),
    };
    let filename = part.attachment_name().map(clean);
    let a = Attachment::from_parts(filename, content_type, data, content_id, inline);
    if a.validate().is_ok() {
        a
    } else {
        // Whatever the header said, the part must stay renderable.
        let (filename, data) = (a.filename().map(str::to_owned), a.data().to_vec());
        Attachment::from_parts(
            filename,
            "application/octet-stream".into(),
            data,
            a.content_id().map(str::to_owned),
            inline,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::lenient_base64;

    #[test]
    fn lenient_base64_ignores_junk_and_truncation() {
        assert_eq!(lenient_base64(b"aGVs!bG8=\r\n"), b"hello");
        assert_eq!(lenient_base64(b"aGVsbG8gd29y"), b"hello wor");
        assert_eq!(lenient_base64(b"aGVsbG8gd29yb"), b"hello wor");
        assert_eq!(lenient_base64(b"aGVsbG8gd29ybA"), b"hello worl");
    }
}
