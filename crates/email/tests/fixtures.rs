//! Hand-written, real-world-shaped messages (`tests/fixtures/*.eml`, CRLF
//! line endings), each parsed with asserted results; then hostile inputs,
//! which must parse best-effort or fail cleanly, never panic.
//!
//! The fixtures are written by hand for this crate. Their shapes follow what
//! common mailers send (Gmail, Outlook, Thunderbird, Apple Mail, Postfix
//! bounces, mailing-list servers), but every address, id and body is made up.

use std::path::PathBuf;

use email::{Attachment, Email, Mailbox, ParseError};

/// The PDF carried by several fixtures (base64 in the files).
const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";

/// A 1x1 PNG.
const PNG: &[u8] = b"\x89PNG\x0d\x0a\x1a\x0a\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\x0dIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x02\x01\xc8\xa5\xb1\xf0\x00\x00\x00\x00IEND\xaeB`\x82";

/// A 1x1 GIF.
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

/// Every fixture, for the tests that go over all of them.
const ALL_FIXTURES: &[&str] = &[
    "qp_utf8_german.eml",
    "qp_latin1_french.eml",
    "base64_html_only.eml",
    "multipart_part_without_content_type.eml",
    "alternative_in_mixed.eml",
    "rfc2231_extended_filename.eml",
    "rfc2231_continuations.eml",
    "rfc2047_content_type_name.eml",
    "rfc2047_name_adjacent_words.eml",
    "related_inline_images.eml",
    "related_inline_image_without_disposition.eml",
    "malformed_headers.eml",
    "malformed_address_headers.eml",
    "address_header_without_address.eml",
    "charset_windows1252.eml",
    "charset_koi8r.eml",
    "charset_unknown.eml",
    "leading_blank_lines.eml",
    "several_text_parts.eml",
    "message_rfc822_attachment.eml",
    "forwarded_with_trace_headers.eml",
    "utf8_raw_headers.eml",
    "delivery_status_notification.eml",
];

// ---------------------------------------------------------------------------
// Helpers

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's bytes; checks they have CRLF line endings only.
fn fixture(name: &str) -> Vec<u8> {
    let raw = std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && raw[i - 1] == b'\r', "{name}: bare LF at {i}"),
            b'\r' => assert_eq!(raw.get(i + 1), Some(&b'\n'), "{name}: bare CR at {i}"),
            _ => {}
        }
    }
    raw
}

fn parse(name: &str) -> Email {
    Email::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn addresses(list: &[Mailbox]) -> Vec<&str> {
    list.iter().map(|m| m.address().as_str()).collect()
}

fn names(list: &[Mailbox]) -> Vec<Option<&str>> {
    list.iter().map(|m| m.name()).collect()
}

/// The date as an RFC 3339 UTC string.
fn date(email: &Email) -> String {
    email.date().expect("a Date").to_string()
}

/// The names of `headers()`, in order.
fn header_names(email: &Email) -> Vec<&str> {
    email.headers().iter().map(|(n, _)| n.as_str()).collect()
}

/// Checks one attachment completely.
#[track_caller]
fn assert_attachment(
    a: &Attachment,
    filename: Option<&str>,
    content_type: &str,
    inline: bool,
    content_id: Option<&str>,
    data: &[u8],
) {
    assert_eq!(a.filename(), filename, "filename");
    assert_eq!(
        a.content_type(),
        content_type,
        "content type of {filename:?}"
    );
    assert_eq!(a.is_inline(), inline, "is_inline of {filename:?}");
    assert_eq!(a.content_id(), content_id, "content id of {filename:?}");
    assert_eq!(a.data(), data, "bytes of {filename:?}");
}

/// Touches everything a caller might read, and renders: none of it may
/// panic on a parsed message, however odd the input was.
fn exercise(email: &Email) {
    let _ = (email.from(), email.sender(), email.to(), email.cc());
    let _ = (email.bcc(), email.reply_to(), email.subject(), email.date());
    let _ = (
        email.text(),
        email.html(),
        email.headers(),
        email.message_id(),
    );
    let _ = (
        email.read_receipt(),
        email.in_reply_to(),
        email.references(),
    );
    let _ = (email.list_unsubscribe(), email.list_unsubscribe_one_click());
    let _ = email.header("From");
    let _ = email.envelope();
    for a in email.attachments() {
        let _ = (a.filename(), a.content_type(), a.data().len());
        let _ = (a.content_id(), a.is_inline());
    }
    let _ = email.to_bytes();
}

/// Parses without panicking; the result is exercised when it is `Ok`.
fn parse_hostile(raw: &[u8]) -> Result<Email, ParseError> {
    let result = Email::parse(raw);
    if let Ok(email) = &result {
        exercise(email);
    }
    result
}

/// A small deterministic PRNG (xorshift64*), so the random inputs are the
/// same on every run and a failure can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------
// Transfer encodings and charsets

#[test]
fn qp_utf8_german() {
    let e = parse("qp_utf8_german.eml");
    assert_eq!(names(e.from()), [Some("Müller Versand")]);
    assert_eq!(addresses(e.from()), ["versand@shop.example.de"]);
    assert_eq!(names(e.to()), [Some("Schmidt, Anna")]);
    assert_eq!(addresses(e.to()), ["anna.schmidt@example.org"]);
    assert_eq!(e.subject(), Some("Ihre Bestellung über 250 €"));
    assert_eq!(date(&e), "2025-03-04T08:15:42Z");
    assert_eq!(
        e.message_id(),
        Some("<20250304091542.4711@shop.example.de>")
    );
    // Soft line breaks joined (one of them splits the UTF-8 bytes of "ß"),
    // =3D decoded, CRLF turned into \n.
    assert_eq!(
        e.text(),
        Some(
            "Sehr geehrte Frau Schmidt,\n\
             \n\
             vielen Dank für Ihre Bestellung. Die Lieferung der Waren (Größe XL, \
             Farbe Grün) erfolgt voraussichtlich am Donnerstag, den 6. März.\n\
             \n\
             Summe: 250,00 € = 2 x 125,00 €\n\
             \n\
             Mit freundlichen Grüßen\n\
             Ihr Müller-Versand-Team\n"
        )
    );
    assert_eq!(e.html(), None);
    assert!(e.attachments().is_empty());
    assert_eq!(e.header("Return-Path"), Some("<versand@shop.example.de>"));
    // Structural headers are not kept: they are rebuilt on render.
    assert_eq!(e.header("Content-Type"), None);
    assert_eq!(e.header("Content-Transfer-Encoding"), None);
    assert_eq!(e.header("MIME-Version"), None);
}

#[test]
fn qp_latin1_french() {
    let e = parse("qp_latin1_french.eml");
    assert_eq!(names(e.from()), [Some("Hélène Lefèvre")]);
    assert_eq!(addresses(e.from()), ["helene.lefevre@example.fr"]);
    assert_eq!(addresses(e.to()), ["equipe@example.fr"]);
    assert_eq!(e.subject(), Some("Réunion de Noël à la cantine"));
    assert_eq!(date(&e), "2024-12-13T16:02:11Z");
    assert_eq!(
        e.text(),
        Some(
            "Bonjour à tous,\n\
             \n\
             La réunion de Noël aura lieu jeudi à 12h30 à la cantine. Au menu : \
             bûche, crème brûlée et café.\n\
             \n\
             Ça promet d'être très sympa !\n\
             \n\
             Hélène\n"
        )
    );
    assert_eq!(e.html(), None);
    assert!(e.attachments().is_empty());
    assert_eq!(e.header("x-mailer"), Some("Microsoft Outlook 16.0"));
}

#[test]
fn base64_html_only() {
    let e = parse("base64_html_only.eml");
    assert_eq!(names(e.from()), [Some("Weekly Digest")]);
    assert_eq!(addresses(e.to()), ["subscriber@example.net"]);
    assert_eq!(e.subject(), Some("Your weekly digest"));
    assert_eq!(e.text(), None);
    assert_eq!(
        e.html(),
        Some(
            "<!DOCTYPE html>\n\
             <html><head><meta charset=\"utf-8\"><title>Digest</title></head>\n\
             <body>\n\
             <h1>This week</h1>\n\
             <p>Café opening — 20% off “everything”.</p>\n\
             </body></html>\n"
        )
    );
    assert!(e.attachments().is_empty());
    assert_eq!(
        e.list_unsubscribe(),
        [
            "mailto:unsub@updates.example.com?subject=unsubscribe",
            "https://updates.example.com/u/Zx81"
        ]
    );
    assert!(e.list_unsubscribe_one_click());
}

#[test]
fn charset_windows1252() {
    let e = parse("charset_windows1252.eml");
    // 0x80..0x9f are the windows-1252 characters, not C1 controls.
    assert_eq!(names(e.from()), [Some("François Müller")]);
    assert_eq!(e.subject(), Some("“Smart quotes” – and €uro"));
    assert_eq!(e.text(), Some("It’s “quoted” – costs € 5…\nCafé naïve\n"));
}

#[test]
fn charset_koi8r() {
    let e = parse("charset_koi8r.eml");
    assert_eq!(names(e.from()), [Some("Иван Петров")]);
    assert_eq!(addresses(e.from()), ["ivan@example.ru"]);
    assert_eq!(e.subject(), Some("Отчёт за неделю"));
    assert_eq!(date(&e), "2025-03-15T09:00:00Z");
    assert_eq!(e.text(), Some("Привет!\nОтчёт во вложении.\n"));
}

#[test]
fn charset_unknown() {
    // Unknown labels, in an encoded word and on the body: best effort is
    // to read the bytes as UTF-8, which keeps ASCII (and UTF-8) intact.
    let e = parse("charset_unknown.eml");
    assert_eq!(e.subject(), Some("Qapla' batlh"));
    assert_eq!(e.text(), Some("Plain ASCII survives.\nCafé\n"));
    assert!(e.attachments().is_empty());
}

#[test]
fn utf8_raw_headers() {
    // RFC 6532: UTF-8 straight in the header fields, no encoded words.
    let e = parse("utf8_raw_headers.eml");
    assert_eq!(names(e.from()), [Some("Zoë Ångström")]);
    assert_eq!(addresses(e.from()), ["zoe@example.se"]);
    assert_eq!(names(e.to()), [Some("Jürgen")]);
    assert_eq!(e.subject(), Some("Grüße aus Malmö ☕"));
    assert_eq!(e.text(), Some("Hej Jürgen! Kaffe? ☕\n"));
}

// ---------------------------------------------------------------------------
// MIME structure

#[test]
fn multipart_part_without_content_type() {
    // A part with no header at all is text/plain; charset=us-ascii
    // (RFC 2045 §5.2), so it is the body. The preamble is not.
    let e = parse("multipart_part_without_content_type.eml");
    assert_eq!(addresses(e.from()), ["scanner@office.example.com"]);
    assert_eq!(e.subject(), Some("Scanned document"));
    assert_eq!(
        e.text(),
        Some("Please find the scanned document attached.\nPages: 2\n")
    );
    assert_eq!(e.html(), None);
    let [pdf] = e.attachments() else {
        panic!("one attachment: {:?}", e.attachments());
    };
    assert_attachment(
        pdf,
        Some("scan_0042.pdf"),
        "application/pdf",
        false,
        None,
        PDF,
    );
}

#[test]
fn alternative_in_mixed() {
    // Gmail's shape: mixed { alternative { plain, html }, attachments }.
    let e = parse("alternative_in_mixed.eml");
    assert_eq!(names(e.from()), [Some("Bob Example")]);
    assert_eq!(addresses(e.to()), ["ann@example.com", "carol@example.com"]);
    assert_eq!(names(e.to()), [Some("Ann"), None]);
    assert_eq!(addresses(e.cc()), ["lead@example.com"]);
    assert_eq!(names(e.cc()), [Some("Team Lead")]);
    assert_eq!(e.subject(), Some("Q1 figures"));
    assert_eq!(date(&e), "2025-03-06T14:03:27Z");
    assert_eq!(e.message_id(), Some("<CAF=abc123+XyZ@mail.example.com>"));
    assert_eq!(e.text(), Some("Hi Ann,\n\nQ1 figures attached.\n\nBob\n"));
    assert_eq!(
        e.html(),
        Some(
            "<div dir=\"ltr\">Hi Ann,<div><br></div><div>Q1 figures attached.</div>\
             <div><br></div><div>Bob</div></div>\n"
        )
    );
    let [csv, bin] = e.attachments() else {
        panic!("two attachments: {:?}", e.attachments());
    };
    // A text attachment keeps its bytes, CRLF included.
    assert_attachment(
        csv,
        Some("q1.csv"),
        "text/csv",
        false,
        None,
        b"month,revenue\r\njan,100\r\nfeb,120\r\nmar,135\r\n",
    );
    let all_bytes: Vec<u8> = (0..=255).collect();
    assert_attachment(
        bin,
        Some("table.bin"),
        "application/octet-stream",
        false,
        None,
        &all_bytes,
    );
    // Part headers do not leak into the message headers.
    assert_eq!(e.header("X-Attachment-Id"), None);
}

#[test]
fn related_inline_images() {
    let e = parse("related_inline_images.eml");
    assert_eq!(e.subject(), Some("Your order has shipped"));
    assert_eq!(e.text(), Some("Your order has shipped.\n"));
    let html = e.html().expect("html body");
    assert!(
        html.contains(r#"<img src="cid:logo@example.com""#),
        "{html}"
    );
    let [logo, banner] = e.attachments() else {
        panic!("two inline parts: {:?}", e.attachments());
    };
    assert_attachment(
        logo,
        Some("logo.png"),
        "image/png",
        true,
        Some("logo@example.com"),
        PNG,
    );
    assert_attachment(
        banner,
        Some("banner.gif"),
        "image/gif",
        true,
        Some("banner.gif@01DB8E1F.2A3C4D50"),
        GIF,
    );
    // Every cid: the HTML refers to resolves to a part.
    for reference in html.split("cid:").skip(1) {
        let cid = reference.split('"').next().expect("quoted src");
        assert!(
            e.attachments().iter().any(|a| a.content_id() == Some(cid)),
            "cid:{cid} has no part"
        );
    }
}

#[test]
fn related_inline_image_without_disposition() {
    let e = parse("related_inline_image_without_disposition.eml");
    assert_eq!(e.text(), None);
    assert_eq!(
        e.html(),
        Some("<p>Disk usage:</p><img src=\"cid:graph-1@monitor.example.com\">\n")
    );
    let [graph] = e.attachments() else {
        panic!("one inline part: {:?}", e.attachments());
    };
    assert_eq!(graph.content_type(), "image/png");
    assert_eq!(graph.content_id(), Some("graph-1@monitor.example.com"));
    assert_eq!(graph.data(), PNG);
    assert_eq!(graph.filename(), None);
    // It is the image the HTML shows: an inline part, not a download.
    assert!(graph.is_inline(), "referenced by cid: from the HTML");
}

#[test]
fn several_text_parts() {
    // A mailing-list footer added as a second text/plain part, and a text
    // file attachment in another charset.
    let e = parse("several_text_parts.eml");
    assert_eq!(e.subject(), Some("[dev] Release planning"));
    // The first text part is the body ...
    assert_eq!(e.text(), Some("First part is the body.\n"));
    assert_eq!(e.html(), None);
    let [footer, notes] = e.attachments() else {
        panic!("two attachments: {:?}", e.attachments());
    };
    // ... the later one is kept, inline, with its bytes as sent.
    assert_attachment(
        footer,
        None,
        "text/plain",
        true,
        None,
        b"_______________________________________________\r\n\
          dev mailing list\r\n\
          dev@lists.example.org\r\n",
    );
    // An attached text file keeps its original (iso-8859-1) bytes.
    assert_attachment(
        notes,
        Some("notes.txt"),
        "text/plain",
        false,
        None,
        b"caf\xe9 cr\xe8me",
    );
}

#[test]
fn message_rfc822_attachment() {
    let raw = fixture("message_rfc822_attachment.eml");
    let e = Email::parse(&raw).expect("parse");
    // The outer message's fields are not overwritten by the inner one's.
    assert_eq!(names(e.from()), [Some("Ann")]);
    assert_eq!(e.subject(), Some("Fwd: Original subject"));
    assert_eq!(e.message_id(), Some("<outer.1@example.com>"));
    assert_eq!(e.text(), Some("Forwarding as an attachment.\n"));
    assert_eq!(e.html(), None);
    let [inner] = e.attachments() else {
        panic!("one attachment: {:?}", e.attachments());
    };
    // The attachment is the embedded message, byte for byte.
    let start = find(&raw, b"From: Carol");
    let end = find(&raw, b"\r\n--outer-b--");
    assert_attachment(
        inner,
        Some("original.eml"),
        "message/rfc822",
        false,
        None,
        &raw[start..end],
    );
    // And it parses in turn.
    let inner = Email::parse(inner.data()).expect("inner message");
    assert_eq!(names(inner.from()), [Some("Carol")]);
    assert_eq!(addresses(inner.to()), ["dave@example.com"]);
    assert_eq!(inner.subject(), Some("Original subject"));
    assert_eq!(inner.message_id(), Some("<inner.1@example.com>"));
    assert_eq!(inner.text(), Some("Inner body.\n"));
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

#[test]
fn delivery_status_notification() {
    // A Postfix bounce: multipart/report with the human-readable part, the
    // machine-readable status and the returned headers.
    let e = parse("delivery_status_notification.eml");
    assert_eq!(names(e.from()), [Some("Mail Delivery System")]);
    assert_eq!(addresses(e.from()), ["MAILER-DAEMON@mx.example.com"]);
    assert_eq!(e.subject(), Some("Undelivered Mail Returned to Sender"));
    assert_eq!(date(&e), "2025-03-21T04:05:06Z");
    assert_eq!(e.header("Return-Path"), Some("<>"));
    assert_eq!(e.header("Auto-Submitted"), Some("auto-replied"));
    assert_eq!(
        e.text(),
        Some(
            "I'm sorry to have to inform you that your message could not\n\
             be delivered to one or more recipients.\n\
             \n\
             <nobody@example.net>: host mx.example.net[203.0.113.9] said: 550 5.1.1\n    \
             User unknown\n"
        )
    );
    let [status, headers] = e.attachments() else {
        panic!("two report parts: {:?}", e.attachments());
    };
    assert_eq!(status.content_type(), "message/delivery-status");
    assert_eq!(
        status.data(),
        b"Reporting-MTA: dns; mx.example.com\r\n\
          Arrival-Date: Fri, 21 Mar 2025 04:05:01 +0000 (UTC)\r\n\
          \r\n\
          Final-Recipient: rfc822; nobody@example.net\r\n\
          Action: failed\r\n\
          Status: 5.1.1\r\n"
    );
    assert_eq!(headers.content_type(), "text/rfc822-headers");
    assert_eq!(
        headers.data(),
        b"From: Ann <ann@example.com>\r\n\
          To: nobody@example.net\r\n\
          Subject: Hello?\r\n\
          Message-ID: <lost.1@example.com>\r\n"
    );
}

// ---------------------------------------------------------------------------
// File names: RFC 2231 and RFC 2047

#[test]
fn rfc2231_extended_filename() {
    let e = parse("rfc2231_extended_filename.eml");
    assert_eq!(e.text(), Some("Two files attached.\n"));
    let [pdf, cv] = e.attachments() else {
        panic!("two attachments: {:?}", e.attachments());
    };
    // filename*=UTF-8''... (and an RFC 2047 name= saying the same).
    assert_attachment(
        pdf,
        Some("€ rates 2025.pdf"),
        "application/pdf",
        false,
        None,
        PDF,
    );
    // filename*=iso-8859-1'fr'...: charset and language given.
    assert_attachment(
        cv,
        Some("résumé.txt"),
        "text/plain",
        false,
        None,
        b"Exp\xe9rience : 10 ans",
    );
}

#[test]
fn rfc2231_continuations() {
    let e = parse("rfc2231_continuations.eml");
    assert_eq!(e.text(), Some("Report attached.\n"));
    let [xlsx, txt] = e.attachments() else {
        panic!("two attachments: {:?}", e.attachments());
    };
    // filename*0*=utf-8''...; filename*1*=...; filename*2="..." (the last
    // segment not percent-encoded).
    assert_attachment(
        xlsx,
        Some("Отчёт за март 2025.xlsx"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        false,
        None,
        b"PK\x03\x04fake-xlsx",
    );
    // filename*0="..."; filename*1="..." without charset.
    assert_attachment(
        txt,
        Some("very-long-file-name-that-was-split-by-the-client.txt"),
        "text/plain",
        false,
        None,
        b"plain continuation",
    );
}

#[test]
fn rfc2047_content_type_name() {
    let e = parse("rfc2047_content_type_name.eml");
    assert_eq!(e.text(), Some("See attached.\n"));
    let [docx, pdf, jpeg] = e.attachments() else {
        panic!("three attachments: {:?}", e.attachments());
    };
    // name="=?utf-8?B?...?=" on Content-Type, no Content-Disposition.
    assert_attachment(
        docx,
        Some("Präsentation März.docx"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        false,
        None,
        b"PK\x03\x04fake-docx",
    );
    // Two encoded words folded onto two lines inside the quoted name=.
    assert_attachment(
        pdf,
        Some("Übersicht der langen Dateinamen für den Test.pdf"),
        "application/pdf",
        false,
        None,
        PDF,
    );
    // Outlook's filename="=?iso-8859-1?Q?...?=" on Content-Disposition.
    assert_attachment(
        jpeg,
        Some("fête.jpg"),
        "image/jpeg",
        false,
        None,
        b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9",
    );
}

#[test]
#[ignore = "known limitation in mail-parser 0.11: the space between two encoded words inside a \
            quoted name= is kept (RFC 2047 §5 does not allow encoded words there at all, so this \
            is a de-facto convention); filename*= and folded words decode correctly"]
fn rfc2047_name_adjacent_words() {
    let e = parse("rfc2047_name_adjacent_words.eml");
    assert_eq!(e.text(), Some("Offer attached.\n"));
    let [pdf] = e.attachments() else {
        panic!("one attachment: {:?}", e.attachments());
    };
    assert_eq!(pdf.content_type(), "application/pdf");
    assert_eq!(pdf.data(), PDF);
    // RFC 2047 §6.2: whitespace between adjacent encoded words is ignored.
    assert_eq!(pdf.filename(), Some("Angebot für Köln.pdf"));
}

// ---------------------------------------------------------------------------
// Headers: malformed, trace, leading whitespace

#[test]
fn malformed_headers() {
    let raw = fixture("malformed_headers.eml");
    let e = Email::parse(&raw).expect("best effort");
    // The From that is not an address is kept verbatim, not dropped.
    assert!(e.from().is_empty(), "{:?}", e.from());
    assert_eq!(e.header("From"), Some("<<>>"));
    // The other fields parse, including those after the line with no colon.
    assert_eq!(names(e.to()), [Some("Ann")]);
    assert_eq!(addresses(e.to()), ["ann@example.com"]);
    assert_eq!(e.subject(), Some("Header soup"));
    assert_eq!(date(&e), "2025-03-13T07:00:00Z");
    assert_eq!(e.message_id(), Some("<soup.1@example.com>"));
    assert_eq!(e.text(), Some("Body survives.\n"));
    // The colon-less line is dropped: it is neither a header nor the body.
    assert_eq!(
        header_names(&e),
        ["Received", "From", "X-Mailer", "X-Overlong"]
    );
    assert_eq!(e.header("X-Mailer"), Some("BrokenMailer 0.1"));
    assert!(
        !e.headers()
            .iter()
            .any(|(n, v)| n.contains("no colon") || v.contains("no colon")),
        "{:?}",
        e.headers()
    );
    assert!(!e.text().unwrap_or("").contains("no colon"));
    // The 2,048-character line is kept whole.
    assert_eq!(
        e.header("X-Overlong"),
        Some("0123456789abcdef".repeat(128).as_str())
    );
    assert_eq!(
        e.header("Received"),
        Some(
            "from relay.example.net (relay.example.net [198.51.100.7]) \
             by mx.example.com; Thu, 13 Mar 2025 07:00:00 +0000"
        )
    );
}

#[test]
fn malformed_address_headers() {
    let e = parse("malformed_address_headers.eml");
    assert_eq!(addresses(e.from()), ["ann@example.com"]);
    // A group with no members is a valid, empty To.
    assert!(e.to().is_empty(), "{:?}", e.to());
    assert_eq!(e.header("To"), None);
    // Address headers that do not parse, a Date that is not a date and a
    // Message-ID that is not one are kept verbatim among the headers.
    assert!(e.cc().is_empty(), "{:?}", e.cc());
    assert_eq!(e.header("Cc"), Some("bob@example.com, <<garbage"));
    assert_eq!(e.date(), None);
    assert_eq!(e.header("Date"), Some("sometime last week"));
    assert_eq!(e.message_id(), None);
    assert_eq!(e.header("Message-ID"), Some("not a message id"));
    assert_eq!(e.subject(), Some("Addresses gone wrong"));
    assert_eq!(e.text(), Some("Still readable.\n"));
}

#[test]
fn address_header_without_address() {
    let e = parse("address_header_without_address.eml");
    assert_eq!(addresses(e.to()), ["ann@example.com"]);
    assert_eq!(e.subject(), Some("No address in From"));
    assert_eq!(e.text(), Some("Who sent this?\n"));
    assert!(e.from().is_empty(), "{:?}", e.from());
    assert!(e.reply_to().is_empty(), "{:?}", e.reply_to());
    // Not an address, so kept verbatim, as the parser promises.
    assert_eq!(e.header("From"), Some("Mail Delivery Subsystem"));
    assert_eq!(
        e.header("Reply-To"),
        Some("\"Unterminated <reply@example.com>")
    );
}

#[test]
fn leading_blank_lines() {
    let e = parse("leading_blank_lines.eml");
    assert_eq!(names(e.from()), [Some("Ann")]);
    assert_eq!(addresses(e.to()), ["bob@example.com"]);
    assert_eq!(e.subject(), Some("Saved from a mailbox"));
    assert_eq!(e.message_id(), Some("<leading.1@example.com>"));
    assert_eq!(e.text(), Some("Body after leading blank lines.\n"));
    assert!(e.headers().is_empty(), "{:?}", e.headers());

    // The same through a reader, and with spaces and tabs in front too.
    let file = std::fs::File::open(fixture_path("leading_blank_lines.eml")).expect("open");
    assert_eq!(Email::from_reader(file).expect("from_reader"), e);
    let mut padded = b" \t \r\n\t\r\n".to_vec();
    padded.extend(fixture("leading_blank_lines.eml"));
    assert_eq!(Email::parse(&padded).expect("padded"), e);
}

#[test]
fn forwarded_with_trace_headers() {
    let e = parse("forwarded_with_trace_headers.eml");
    // The envelope of the forward, not of the forwarded message.
    assert_eq!(names(e.from()), [Some("Ann Example")]);
    assert_eq!(addresses(e.from()), ["ann@example.com"]);
    assert_eq!(addresses(e.to()), ["bob@example.org"]);
    assert_eq!(e.subject(), Some("Fwd: Invoice 2025-017"));
    assert_eq!(
        e.message_id(),
        Some("<CAB+fwd.1741594321@mail.example.com>")
    );
    assert_eq!(date(&e), "2025-03-10T08:12:01Z");
    // Trace and authentication headers are all kept, in order, unfolded.
    assert_eq!(
        header_names(&e),
        [
            "Return-Path",
            "Delivered-To",
            "Received",
            "Received",
            "DKIM-Signature",
            "Authentication-Results",
            "X-Received",
        ]
    );
    let value = |i: usize| e.headers()[i].1.as_str();
    assert_eq!(value(0), "<ann@example.com>");
    assert_eq!(value(1), "bob@example.org");
    assert_eq!(
        value(2),
        "from mail-sor-f41.google.example (mail-sor-f41.google.example [192.0.2.41]) \
         by mx.example.org (Postfix) with ESMTPS id 4Z8x1Q2hHbz9sQ \
         for <bob@example.org>; Mon, 10 Mar 2025 08:12:03 +0000 (UTC)"
    );
    assert_eq!(
        value(3),
        "by mail-sor-f41.google.example with SMTP id a1b2c3 \
         for <bob@example.org>; Mon, 10 Mar 2025 01:12:02 -0700 (PDT)"
    );
    // header() finds the first of several.
    assert_eq!(e.header("received"), Some(value(2)));
    let dkim = e.header("DKIM-Signature").expect("DKIM-Signature");
    assert!(
        dkim.starts_with("v=1; a=rsa-sha256; c=relaxed/relaxed;"),
        "{dkim}"
    );
    assert!(
        dkim.contains("bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;"),
        "{dkim}"
    );
    assert!(dkim.contains("h=to:subject:message-id:date:from:mime-version;"));
    assert!(!dkim.contains(['\r', '\n']), "{dkim:?}");
    assert_eq!(
        e.header("Authentication-Results"),
        Some(
            "mx.example.org; dkim=pass header.i=@example.com header.s=20230601 \
             header.b=dGhpcyBp; spf=pass smtp.mailfrom=ann@example.com"
        )
    );
    // The forwarded message is part of the text body, as written.
    assert_eq!(
        e.text(),
        Some(
            "FYI, see below.\n\
             \n\
             ---------- Forwarded message ---------\n\
             From: Billing <billing@vendor.example>\n\
             Date: Fri, 7 Mar 2025 at 16:45\n\
             Subject: Invoice 2025-017\n\
             To: <ann@example.com>\n\
             \n\
             \n\
             Dear customer, please find invoice 2025-017 enclosed.\n"
        )
    );
}

// ---------------------------------------------------------------------------
// Across all fixtures

#[test]
fn bare_lf_fixtures_parse_like_crlf() {
    // Messages saved by Unix tools have bare LF line endings.
    for &name in ALL_FIXTURES {
        let crlf = parse(name);
        let lf_raw = crlf_to_lf(&fixture(name));
        let lf = Email::parse(&lf_raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(lf.subject(), crlf.subject(), "{name}");
        assert_eq!(lf.from(), crlf.from(), "{name}");
        assert_eq!(lf.to(), crlf.to(), "{name}");
        assert_eq!(lf.text(), crlf.text(), "{name}");
        assert_eq!(lf.html(), crlf.html(), "{name}");
        let summary = |e: &Email| -> Vec<(Option<String>, String, Option<String>)> {
            e.attachments()
                .iter()
                .map(|a| {
                    (
                        a.filename().map(str::to_owned),
                        a.content_type().to_owned(),
                        a.content_id().map(str::to_owned),
                    )
                })
                .collect()
        };
        assert_eq!(summary(&lf), summary(&crlf), "{name}");
    }
}

fn crlf_to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        if !(b == b'\r' && raw.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

#[test]
fn fixtures_render_and_parse_back() {
    // A parsed message renders, and the rendering parses back to the same
    // bodies and attachments.
    for &name in ALL_FIXTURES {
        let first = parse(name);
        let bytes = first.to_bytes();
        let again = Email::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again.subject(), first.subject(), "{name}");
        assert_eq!(again.from(), first.from(), "{name}");
        assert_eq!(again.to(), first.to(), "{name}");
        assert_eq!(again.cc(), first.cc(), "{name}");
        assert_eq!(again.text(), first.text(), "{name}");
        assert_eq!(again.html(), first.html(), "{name}");
        assert_eq!(again.attachments(), first.attachments(), "{name}");
    }
}

// ---------------------------------------------------------------------------
// Hostile input: Ok or Err, never a panic, a hang or a huge allocation.

#[test]
fn empty_and_blank_input_is_an_error() {
    assert!(matches!(Email::parse(b""), Err(ParseError::Empty)));
    assert!(matches!(
        Email::parse(b" \r\n\t\r\n\r\n"),
        Err(ParseError::Empty)
    ));
}

#[test]
fn reader_limit() {
    let raw = fixture("alternative_in_mixed.eml");
    let err = Email::from_reader_limited(&raw[..], 100).expect_err("over the limit");
    assert!(matches!(err, ParseError::TooLarge { limit: 100 }), "{err}");
    let whole = Email::from_reader_limited(&raw[..], raw.len() as u64).expect("at the limit");
    assert_eq!(whole, parse("alternative_in_mixed.eml"));
}

/// A message cut off in the middle of its base64 attachment: no closing
/// boundary. The base64 that did arrive is whole quanta, the first 39 bytes
/// of [`PDF`].
const TRUNCATED: &[u8] = b"From: ann@example.com\r\n\
    To: bob@example.com\r\n\
    Subject: Cut off\r\n\
    MIME-Version: 1.0\r\n\
    Content-Type: multipart/mixed; boundary=\"cut\"\r\n\
    \r\n\
    --cut\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    \r\n\
    The attachment is cut off.\r\n\
    \r\n\
    --cut\r\n\
    Content-Type: application/pdf; name=\"half.pdf\"\r\n\
    Content-Disposition: attachment; filename=\"half.pdf\"\r\n\
    Content-Transfer-Encoding: base64\r\n\
    \r\n\
    JVBERi0xLjQKJeLjz9MKMSAwIG9iago8PCAvVHlwZSAvQ2F0YWxv\r\n";

#[test]
fn truncated_multipart_without_closing_boundary() {
    let e = parse_hostile(TRUNCATED).expect("best effort");
    assert_eq!(e.subject(), Some("Cut off"));
    assert_eq!(e.text(), Some("The attachment is cut off.\n"));
    let [half] = e.attachments() else {
        panic!("one attachment: {:?}", e.attachments());
    };
    assert_eq!(half.filename(), Some("half.pdf"));
    assert_eq!(half.content_type(), "application/pdf");
    assert!(!half.is_inline());
}

#[test]
fn truncated_base64_attachment_is_decoded() {
    let e = parse_hostile(TRUNCATED).expect("best effort");
    let [half] = e.attachments() else {
        panic!("one attachment: {:?}", e.attachments());
    };
    // Whatever arrived is kept, decoded.
    assert_eq!(half.data(), &PDF[..39]);
}

#[test]
fn every_truncation_of_a_fixture() {
    // Cut at every byte: a message lost mid-transfer.
    for name in ["alternative_in_mixed.eml", "related_inline_images.eml"] {
        let raw = fixture(name);
        for end in 0..raw.len() {
            let _ = parse_hostile(&raw[..end]);
        }
    }
}

#[test]
fn missing_boundary_parameter() {
    let raw = b"From: ann@example.com\r\n\
                To: bob@example.com\r\n\
                Subject: No boundary\r\n\
                MIME-Version: 1.0\r\n\
                Content-Type: multipart/mixed\r\n\
                \r\n\
                --whatever\r\n\
                Content-Type: text/plain\r\n\
                \r\n\
                Where does this part end?\r\n\
                --whatever--\r\n";
    let e = parse_hostile(raw).expect("best effort");
    assert_eq!(e.subject(), Some("No boundary"));
    // Nothing is lost: the body is somewhere, as text or as a part.
    let found = e
        .text()
        .is_some_and(|t| t.contains("Where does this part end?"))
        || e.attachments()
            .iter()
            .any(|a| String::from_utf8_lossy(a.data()).contains("Where does this part end?"));
    assert!(found, "{e:?}");
}

#[test]
fn missing_boundary_gives_no_multipart_attachment() {
    let raw = b"From: ann@example.com\r\n\
                Subject: No boundary\r\n\
                Content-Type: multipart/mixed\r\n\
                \r\n\
                --whatever\r\n\
                \r\n\
                Where does this part end?\r\n\
                --whatever--\r\n";
    let e = parse_hostile(raw).expect("best effort");
    for a in e.attachments() {
        assert!(
            !a.content_type().starts_with("multipart/"),
            "attachment typed {}",
            a.content_type()
        );
    }
}

#[test]
fn base64_with_a_character_outside_the_alphabet() {
    let raw = b"From: ann@example.com\r\n\
                Subject: Stray character\r\n\
                MIME-Version: 1.0\r\n\
                Content-Type: text/html; charset=utf-8\r\n\
                Content-Transfer-Encoding: base64\r\n\
                \r\n\
                PHA+SGVs!bG8gY2Fmw6k8L3A+DQo=\r\n";
    let e = parse_hostile(raw).expect("best effort");
    assert_eq!(e.html(), Some("<p>Hello café</p>\n"));
    assert!(e.attachments().is_empty(), "{:?}", e.attachments());
}

#[test]
fn last_header_without_line_ending() {
    let e = parse_hostile(b"Subject: Hello\r\nFrom: ann@example.com").expect("best effort");
    assert_eq!(addresses(e.from()), ["ann@example.com"]);
    let e = parse_hostile(b"From: ann@example.com\r\nSubject: Hello").expect("best effort");
    assert_eq!(e.subject(), Some("Hello"));
    assert_eq!(e.header("Subject"), None);
}

#[test]
fn a_hundred_thousand_headers() {
    let mut raw = Vec::with_capacity(3 << 20);
    raw.extend_from_slice(b"From: ann@example.com\r\nSubject: Many headers\r\n");
    for i in 0..100_000 {
        raw.extend_from_slice(format!("X-Header-{i}: value {i}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\nbody\r\n");
    let e = parse_hostile(&raw).expect("parse");
    assert_eq!(e.subject(), Some("Many headers"));
    assert_eq!(e.text(), Some("body\n"));
    assert_eq!(e.headers().len(), 100_000);
    assert_eq!(e.header("X-Header-99999"), Some("value 99999"));
}

/// Multipart containers nested `depth` deep around one text part.
fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity(depth * 80);
    raw.extend_from_slice(b"From: ann@example.com\r\nSubject: Deep\r\nMIME-Version: 1.0\r\n");
    for i in 0..depth {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\nat the bottom\r\n");
    for i in (0..depth).rev() {
        raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    raw
}

#[test]
fn multipart_nested_a_thousand_deep() {
    let e = parse_hostile(&nested_multipart(1_000)).expect("parse");
    assert_eq!(e.subject(), Some("Deep"));
    assert_eq!(e.text(), Some("at the bottom"));
}

// Careful: when run (--ignored), this test does not fail, it aborts the
// whole test binary with a stack overflow.
#[test]
fn multipart_nested_ten_thousand_deep() {
    let e = parse_hostile(&nested_multipart(10_000)).expect("parse");
    assert_eq!(e.subject(), Some("Deep"));
}

#[test]
fn twenty_thousand_sibling_parts() {
    let mut raw = b"From: ann@example.com\r\nSubject: Wide\r\n\
                    Content-Type: multipart/mixed; boundary=w\r\n\r\n"
        .to_vec();
    for i in 0..20_000 {
        raw.extend_from_slice(
            format!("--w\r\nContent-Type: application/octet-stream\r\n\r\n{i}\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"--w--\r\n");
    let e = parse_hostile(&raw).expect("parse");
    assert_eq!(e.subject(), Some("Wide"));
    // Parsed up to the part limit, not beyond.
    assert!(!e.attachments().is_empty());
    assert!(e.attachments().len() <= 10_000, "{}", e.attachments().len());
}

#[test]
fn five_megabyte_header_line() {
    const LEN: usize = 5 << 20;
    let mut raw = b"From: ann@example.com\r\nSubject: ".to_vec();
    raw.resize(raw.len() + LEN, b'a');
    raw.extend_from_slice(b"\r\nX-Long: ");
    raw.extend(std::iter::repeat_n(*b"=?utf-8?q?=C3=A9?= ", LEN / 19).flatten());
    raw.extend_from_slice(b"\r\nTo: ");
    raw.extend(std::iter::repeat_n(*b"<a@b.c>, ", LEN / 9 / 4).flatten());
    raw.extend_from_slice(b"\r\n\r\nbody\r\n");
    let e = parse_hostile(&raw).expect("parse");
    assert_eq!(e.subject().map(str::len), Some(LEN));
    assert_eq!(e.text(), Some("body\n"));
    assert_eq!(addresses(e.from()), ["ann@example.com"]);
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2_000 {
        let len = rng.below(2_048);
        let raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = parse_hostile(&raw);
    }
}

#[test]
fn random_mime_shaped_input() {
    // Random sequences of the pieces parsers trip over.
    const PIECES: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b"From: ",
        b"To: a@b.c, ",
        b"Subject: =?utf-8?B?",
        b"=?iso-8859-1?Q?caf=E9?=",
        b"?=",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: multipart/alternative; boundary=\"b\"\r\n",
        b"Content-Type: multipart/related; boundary=c\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/html; charset=koi8-r\r\n",
        b"Content-Type: image/png; name*0*=utf-8''%E2%82; name*1*=%AC\r\n",
        b"Content-Disposition: attachment; filename*=utf-8''%FF%FE\r\n",
        b"Content-Disposition: inline\r\n",
        b"Content-ID: <x@y>\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"--c\r\n",
        b"--c--\r\n",
        b"=\r\n",
        b"=C3",
        b"=G",
        b"QUJD",
        b"====",
        b"<<>>",
        b"\"",
        b"\0",
        b"\xff\xfe",
        b"\xc3\xa9",
    ];
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for _ in 0..10_000 {
        let mut raw = Vec::new();
        for _ in 0..rng.below(60) {
            raw.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
        let _ = parse_hostile(&raw);
    }
}

#[test]
fn mutated_fixtures() {
    let mut rng = Rng(0x94D0_49BB_1331_11EB);
    for &name in ALL_FIXTURES {
        let original = fixture(name);
        for _ in 0..200 {
            let mut raw = original.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(raw.len());
                match rng.below(3) {
                    0 => raw[at] = rng.next() as u8,
                    1 => {
                        raw.remove(at);
                    }
                    _ => raw.insert(at, b"\r\n-=:;\"<>"[rng.below(9)]),
                }
            }
            let _ = parse_hostile(&raw);
        }
    }
}
