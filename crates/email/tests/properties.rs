//! Property tests: for any input the builder accepts, the rendered bytes are
//! well-formed and parse back to the same fields.

use email::{Attachment, Email};
use proptest::prelude::*;

/// Any text that may go into a header: everything but CR, LF and NUL.
fn header_text() -> impl Strategy<Value = String> {
    prop::string::string_regex("[^\r\n\0]{0,200}").expect("regex")
}

/// Any body text, line breaks of every kind included.
fn body_text() -> impl Strategy<Value = String> {
    prop::string::string_regex("(?s).{0,400}").expect("regex")
}

fn base() -> email::EmailBuilder {
    Email::builder().from("a@example.com").to("b@example.com")
}

/// The properties every rendered message must have, whatever went in.
fn assert_well_formed(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    assert!(bytes.ends_with(b"\r\n"), "does not end with CRLF");
    for line in bytes.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len());
        assert!(
            !line.starts_with(b"."),
            "line starting with '.': {:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert!(bytes.is_ascii(), "non-ASCII byte in output");
}

fn normalised(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What the dispatcher's cheap check accepts, the full parser parses.
    #[test]
    fn header_check_accepts_only_what_parse_parses(
        raw in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), Just(0u8), any::<u8>(), 97u8..123],
            0..200,
        ),
    ) {
        if Email::check_header_section(&raw).is_ok() {
            prop_assert!(Email::parse(&raw).is_ok(), "{:?}", String::from_utf8_lossy(&raw));
        }
    }

    #[test]
    fn rendered_emails_pass_the_header_check(subject in header_text(), text in body_text()) {
        let email = base().subject(subject).text(text).build().expect("build");
        prop_assert!(Email::check_header_section(&email.to_bytes()).is_ok());
    }

    #[test]
    fn subject_round_trips(subject in header_text()) {
        let email = base().subject(subject.clone()).text("x").build().expect("build");
        let bytes = email.to_bytes();
        assert_well_formed(&bytes);
        let back = Email::parse(&bytes).expect("parse");
        prop_assert_eq!(back.subject().unwrap_or(""), subject.as_str());
    }

    #[test]
    fn text_and_html_round_trip(text in body_text(), html in body_text()) {
        let email = base().text(text.clone()).html(html.clone()).build().expect("build");
        let bytes = email.to_bytes();
        assert_well_formed(&bytes);
        let back = Email::parse(&bytes).expect("parse");
        prop_assert_eq!(back.text().unwrap_or(""), normalised(&text));
        prop_assert_eq!(back.html().unwrap_or(""), normalised(&html));
    }

    #[test]
    fn display_name_round_trips(name in header_text()) {
        let email = Email::builder()
            .from(("x", "a@example.com"))
            .to((name.as_str(), "b@example.com"))
            .text("x")
            .build()
            .expect("build");
        let bytes = email.to_bytes();
        assert_well_formed(&bytes);
        let back = Email::parse(&bytes).expect("parse");
        prop_assert_eq!(back.to().len(), 1);
        prop_assert_eq!(back.to()[0].name().unwrap_or(""), name.trim());
        prop_assert_eq!(back.to()[0].address().as_str(), "b@example.com");
    }

    #[test]
    fn filename_and_bytes_round_trip(
        name in prop::string::string_regex("[^\r\n\0]{1,150}").expect("regex"),
        data in prop::collection::vec(any::<u8>(), 0..2000),
        inline in any::<bool>(),
    ) {
        let a = if inline { Attachment::inline(name.clone(), data.clone()) } else { Attachment::new(name.clone(), data.clone()) };
        let email = base().html("<p>x</p>").attach(a).build().expect("build");
        let bytes = email.to_bytes();
        assert_well_formed(&bytes);
        let back = Email::parse(&bytes).expect("parse");
        prop_assert_eq!(back.attachments().len(), 1);
        let got = &back.attachments()[0];
        prop_assert_eq!(got.filename(), Some(name.as_str()));
        prop_assert_eq!(got.data(), &data[..]);
        prop_assert_eq!(got.is_inline(), inline);
    }

    #[test]
    fn bcc_never_rendered(local in "[a-z]{1,20}", n in 1usize..4) {
        let bcc: Vec<String> = (0..n).map(|i| format!("{local}{i}@hidden.example")).collect();
        let email = base().bcc(bcc.clone()).subject("s").text("t").build().expect("build");
        let rendered = String::from_utf8(email.to_bytes()).expect("ascii");
        prop_assert!(!rendered.contains("hidden.example"));
        prop_assert!(!rendered.to_ascii_lowercase().contains("\nbcc:"));
        let rcpt = email.envelope().expect("envelope").rcpt_to;
        prop_assert_eq!(rcpt.len(), n + 1);
    }

    #[test]
    fn custom_header_round_trips(value in header_text()) {
        let email = base().header("X-Note", value.clone()).text("t").build().expect("build");
        let bytes = email.to_bytes();
        assert_well_formed(&bytes);
        let back = Email::parse(&bytes).expect("parse");
        prop_assert_eq!(back.header("X-Note").unwrap_or(""), value.as_str());
    }
}
