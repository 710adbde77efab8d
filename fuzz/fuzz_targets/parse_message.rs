//! `Email::parse` on arbitrary bytes: never panics, and whatever it accepts
//! can be read through every accessor, rendered, and parsed again.

#![no_main]

use email::{Email, Mailbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(email) = Email::parse(data) else {
        return;
    };
    touch(&email);

    // What the parser accepted, the renderer must turn into a message
    // without bare CR or LF (a header value that smuggled a line break
    // would be a header injection) that parses again.
    let rendered = email.to_bytes();
    check_line_endings(&rendered);
    let again = Email::parse(&rendered).expect("a rendered parsed email parses again");
    touch(&again);
    check_line_endings(&again.to_bytes());
});

/// Every accessor, as `inspect` and `send --eml` use them.
fn touch(email: &Email) {
    for list in [
        email.from(),
        email.to(),
        email.cc(),
        email.bcc(),
        email.reply_to(),
    ] {
        list.iter().for_each(mailbox);
    }
    email.sender().into_iter().for_each(mailbox);
    email.read_receipt().into_iter().for_each(mailbox);
    let _ = (email.subject(), email.text(), email.html());
    let _ = (email.message_id(), email.date());
    let _ = (email.in_reply_to(), email.references());
    let _ = (email.list_unsubscribe(), email.list_unsubscribe_one_click());
    for (name, _) in email.headers() {
        let _ = email.header(name);
    }
    for a in email.attachments() {
        let _ = (a.filename(), a.content_type(), a.data().len());
        let _ = (a.content_id(), a.is_inline());
    }
    if let Some(envelope) = email.envelope() {
        assert!(
            !envelope.rcpt_to.is_empty(),
            "an envelope without recipients"
        );
        let _ = envelope.mail_from.to_string();
    }
}

fn mailbox(m: &Mailbox) {
    let _ = (m.name(), m.to_string());
    let address = m.address();
    let _ = (address.local_part(), address.domain(), address.to_string());
}

fn check_line_endings(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
    }
}
