//! Composing: every builder feature, the MIME tree shapes, a snapshot of the
//! exact bytes, a full round trip, and every kind of bad input.

use email::{Attachment, Email, Error, Mailbox};

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("timestamp")
}

fn base() -> email::EmailBuilder {
    Email::builder().from("a@example.com").to("b@example.com")
}

fn render(b: email::EmailBuilder) -> String {
    String::from_utf8(b.build().expect("build").to_bytes()).expect("ascii")
}

/// The Content-Type lines, in order, reduced to their media types.
fn tree(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("Content-Type: "))
        .map(|l| l.split(';').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn snapshot_is_deterministic() {
    let build = || {
        Email::builder()
            .from("Ann <ann@example.com>")
            .to("bob@example.com")
            .subject("Hello")
            .text("Hi Bob.\n")
            .html("<p>Hi Bob.</p>")
            .message_id("<fixed@example.com>")
            .date(ts("2026-01-02T03:04:05Z"))
            .build()
            .expect("build")
            .to_bytes()
    };
    let expected = "Date: Fri, 2 Jan 2026 03:04:05 +0000\r\n\
From: Ann <ann@example.com>\r\n\
To: bob@example.com\r\n\
Subject: Hello\r\n\
Message-ID: <fixed@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative;\r\n\
\tboundary=\"=_6a6a839d3f79e9f800\"\r\n\
\r\n\
--=_6a6a839d3f79e9f800\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Hi Bob.\r\n\
\r\n\
--=_6a6a839d3f79e9f800\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
<p>Hi Bob.</p>=\r\n\
\r\n\
--=_6a6a839d3f79e9f800--\r\n";
    assert_eq!(String::from_utf8(build()).expect("ascii"), expected);
    assert_eq!(build(), build());
}

#[test]
fn generated_message_id_and_date() {
    let e = Email::builder()
        .from("a@Example.org")
        .sender("Robot <bot@mailer.example.net>")
        .to("b@example.com")
        .build()
        .expect("build");
    let id = e.message_id().expect("id");
    assert!(
        id.starts_with('<') && id.ends_with("@mailer.example.net>"),
        "{id}"
    );
    assert!(e.date().is_some());
    assert_eq!(
        e.to_bytes(),
        e.to_bytes(),
        "rendering twice gives the same bytes"
    );
    let r = String::from_utf8(e.to_bytes()).expect("ascii");
    assert!(r.contains("\r\nMIME-Version: 1.0\r\n"));
    assert!(r.contains("\r\nSender: Robot <bot@mailer.example.net>\r\n"));
}

#[test]
fn minimal_trees() {
    assert_eq!(tree(&render(base().text("t"))), ["text/plain"]);
    assert_eq!(tree(&render(base().html("<p>h</p>"))), ["text/html"]);
    assert_eq!(tree(&render(base())), ["text/plain"]);
    assert_eq!(
        tree(&render(base().text("t").html("h"))),
        ["multipart/alternative", "text/plain", "text/html"]
    );
    assert_eq!(
        tree(&render(base().html("h").inline_image("a.png", vec![1]))),
        ["multipart/related", "text/html", "image/png"]
    );
    assert_eq!(
        tree(&render(
            base().text("t").attach(Attachment::new("a.pdf", vec![1]))
        )),
        ["multipart/mixed", "text/plain", "application/pdf"]
    );
    assert_eq!(
        tree(&render(base().attach(Attachment::new("a.pdf", vec![1])))),
        ["multipart/mixed", "application/pdf"]
    );
    assert_eq!(
        tree(&render(
            base()
                .text("t")
                .html("h")
                .inline_image("a.png", vec![1])
                .attach(Attachment::new("a.pdf", vec![1]))
        )),
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "multipart/related",
            "text/html",
            "image/png",
            "application/pdf"
        ]
    );
    // An inline image without HTML to show it is simply attached.
    assert_eq!(
        tree(&render(base().text("t").inline_image("a.png", vec![1]))),
        ["multipart/mixed", "text/plain", "image/png"]
    );
}

#[test]
fn full_round_trip() {
    let dir = std::env::temp_dir().join(format!("email-compose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("Übersicht 2026.pdf");
    std::fs::write(&file, b"%PDF-1.7 fake").expect("write");
    let logo = Attachment::inline("logo.png", vec![0x89, b'P', b'N', b'G', 0, 255]);
    let html = format!(
        "<img src=\"cid:{}\"> Grüße",
        logo.content_id().expect("cid")
    );
    let email = Email::builder()
        .from("Zoë Ünal <zoe@bücher.example>")
        .reply_to("help@example.com, Help Desk <desk@example.com>")
        .to("Ann <ann@example.com>, \"Doe, John\" <john@example.com>")
        .cc(("山田 太郎", "taro@example.jp"))
        .bcc("secret@example.com")
        .subject(
            "Ünïcödé subject that is long enough to need several encoded words, really quite long",
        )
        .text("Line one\n.line starting with a dot\nLine with = sign   \n")
        .html(html.clone())
        .attach(logo)
        .attach_file(&file)
        .attach_reader("data.bin", &[0u8, 1, 2, 3, 255][..])
        .read_receipt("zoe@bücher.example")
        .in_reply_to("<orig@example.com>")
        .references("<root@example.com>")
        .one_click_unsubscribe("https://example.com/u/1")
        .list_unsubscribe("mailto:unsub@example.com")
        .header("X-Mailer-Campaign", "spring ☀ sale")
        .build()
        .expect("build");
    std::fs::remove_dir_all(&dir).ok();
    let bytes = email.to_bytes();
    let back = Email::parse(&bytes).expect("parse");

    let names = |v: &[Mailbox]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(names(back.from()), ["Zoë Ünal <zoe@xn--bcher-kva.example>"]);
    assert_eq!(names(back.reply_to()), names(email.reply_to()));
    assert_eq!(
        names(back.to()),
        ["Ann <ann@example.com>", "\"Doe, John\" <john@example.com>"]
    );
    assert_eq!(names(back.cc()), ["山田 太郎 <taro@example.jp>"]);
    assert!(back.bcc().is_empty(), "Bcc must not survive rendering");
    assert_eq!(back.subject(), email.subject());
    assert_eq!(back.text(), email.text());
    assert_eq!(back.html(), Some(html.as_str()));
    assert_eq!(back.message_id(), email.message_id());
    assert_eq!(back.date(), email.date());
    assert_eq!(back.read_receipt(), email.read_receipt());
    assert_eq!(back.in_reply_to(), ["<orig@example.com>"]);
    assert_eq!(
        back.references(),
        ["<orig@example.com>", "<root@example.com>"]
    );
    assert_eq!(
        back.list_unsubscribe(),
        ["https://example.com/u/1", "mailto:unsub@example.com"]
    );
    assert!(back.list_unsubscribe_one_click());
    assert_eq!(back.header("X-Mailer-Campaign"), Some("spring ☀ sale"));
    assert_eq!(back.attachments(), email.attachments());
    assert_eq!(back.attachments()[1].filename(), Some("Übersicht 2026.pdf"));
    assert_eq!(back.attachments()[1].content_type(), "application/pdf");
    let env = email.envelope().expect("envelope");
    assert_eq!(env.mail_from.as_str(), "zoe@xn--bcher-kva.example");
    assert_eq!(env.rcpt_to.len(), 4);
}

#[test]
fn long_inputs_keep_lines_short() {
    let long_word = "x".repeat(5000);
    let r = render(
        base()
            .subject(format!("{long_word} {long_word}"))
            .header("X-Long", long_word.clone())
            .to((long_word.as_str(), "c@example.com"))
            .text(format!("{long_word}\n{long_word}"))
            .attach(Attachment::new(
                format!("{long_word}.txt"),
                long_word.clone(),
            )),
    );
    for line in r.split("\r\n") {
        assert!(line.len() <= 998, "line of {} octets", line.len());
    }
    let back = Email::parse(r.as_bytes()).expect("parse");
    assert_eq!(
        back.subject(),
        Some(format!("{long_word} {long_word}").as_str())
    );
    assert_eq!(back.to()[1].name(), Some(long_word.as_str()));
    assert_eq!(
        back.attachments()[0].filename(),
        Some(format!("{long_word}.txt").as_str())
    );
}

#[test]
fn envelope_dedupes_and_prefers_sender() {
    let e = Email::builder()
        .from("a@example.com")
        .to("x@example.com, X@EXAMPLE.com")
        .cc("x@Example.com")
        .bcc("y@example.com")
        .build()
        .expect("build");
    let env = e.envelope().expect("envelope");
    let rcpt: Vec<_> = env.rcpt_to.iter().map(|a| a.as_str()).collect();
    // Domains are case-insensitive; local parts are not (RFC 5321 §2.4).
    assert_eq!(rcpt, ["x@example.com", "X@example.com", "y@example.com"]);
    assert_eq!(env.mail_from.as_str(), "a@example.com");
}

fn err(b: email::EmailBuilder) -> Error {
    b.build().expect_err("should be rejected")
}

#[test]
fn bad_input_names_the_field() {
    let cases: Vec<(Error, &str)> = vec![
        (err(Email::builder().to("b@example.com")), "from"),
        (err(Email::builder().from("a@example.com")), "to"),
        (err(base().to("not an address")), "to"),
        (err(base().cc("c@")), "cc"),
        (err(base().bcc("x@y..z")), "bcc"),
        (err(base().reply_to("<>")), "reply-to"),
        (err(base().sender("a@example.com, b@example.com")), "sender"),
        (
            err(Email::builder()
                .from("a@example.com, c@example.com")
                .to("b@example.com")),
            "sender",
        ),
        (
            err(base().subject("hi\r\nBcc: victim@example.com")),
            "subject",
        ),
        (err(base().subject("nul\0")), "subject"),
        (err(base().to("\"Evil\nName\" <x@example.com>")), "to"),
        (
            err(base().header("X-Ok", "v\nInjected: yes")),
            "header X-Ok",
        ),
        (err(base().header("Bad Name", "v")), "header"),
        (err(base().header("Bad:Name", "v")), "header"),
        (err(base().header("X-Ünï", "v")), "header"),
        (err(base().header("", "v")), "header"),
        (err(base().header("Subject", "override")), "header"),
        (err(base().header("content-type", "text/evil")), "header"),
        (err(base().header("BCC", "x@example.com")), "header"),
        (err(base().message_id("<a\r\n@b>")), "message-id"),
        (err(base().message_id("no-at-sign")), "message-id"),
        (err(base().in_reply_to("<x y@z>")), "in-reply-to"),
        (
            err(base()
                .attach(Attachment::new("a\r\nb.txt", vec![]))
                .text("t")),
            "attachment filename",
        ),
        (
            err(base().attach(Attachment::new("a.txt", vec![]).with_content_type("text"))),
            "attachment content type",
        ),
        (
            err(base().attach(Attachment::new("a.png", vec![]).with_content_id("a b"))),
            "content id",
        ),
        (
            err(base().attach_file("/definitely/not/here.pdf")),
            "attachment",
        ),
        (
            err(base()
                .inline_image("a.png", vec![])
                .inline_image("a.png", vec![])),
            "content id",
        ),
        (
            err(base().one_click_unsubscribe("http://insecure.example.com")),
            "list-unsubscribe",
        ),
        (
            err(base().list_unsubscribe("javascript:alert(1)")),
            "list-unsubscribe",
        ),
        (err(base().read_receipt("nobody")), "read-receipt"),
    ];
    for (e, field) in cases {
        assert_eq!(e.field(), field, "{e}");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn first_error_wins_and_is_readable() {
    let e = err(base().to("bad").subject("x\n"));
    assert_eq!(e.to_string(), "to: invalid address \"bad\": missing '@'");
    let e = err(base().subject("x\n"));
    assert_eq!(
        e.to_string(),
        "subject: contains LF, which is not allowed in a header"
    );
}
