//! The DATA content: line endings normalised to CRLF and dot-stuffing
//! (RFC 5321 §4.5.2).
//!
//! Both matter for safety, not only for looks: a server that reads lines
//! differently from the way we wrote them can be made to see an end of data
//! where we meant none, and to read the rest of the message as new SMTP
//! commands (SMTP smuggling, CVE-2023-51764). After [`encode`], every line
//! ends with CRLF, there is no bare CR or LF left, and no line is a lone `.`,
//! so the only end of data a server can find is the one we send.

use std::borrow::Cow;

/// The end-of-data line, sent after the [`encode`]d content.
pub(super) const TERMINATOR: &[u8] = b".\r\n";

/// Encodes a message as DATA content: every line ending (CRLF, bare LF,
/// bare CR) becomes CRLF, a line starting with `.` gets another `.` in
/// front, and a missing final line ending is added. An empty message stays
/// empty. A message that needs none of this (every message `email`
/// renders) is borrowed as it is, not copied.
pub(super) fn encode(message: &[u8]) -> Cow<'_, [u8]> {
    if is_encoded(message) {
        Cow::Borrowed(message)
    } else {
        Cow::Owned(rewrite(message))
    }
}

/// Whether `message` is already valid DATA content: it ends with CRLF,
/// every CR is followed by LF and every LF preceded by CR, and no line
/// starts with `.`. Jumps from line break to line break (memchr), so a
/// clean 2 KB message costs a few dozen comparisons.
fn is_encoded(message: &[u8]) -> bool {
    if !message.ends_with(b"\r\n") || message.first() == Some(&b'.') {
        return false;
    }
    let mut at = 0;
    while let Some(found) = memchr::memchr2(b'\r', b'\n', &message[at..]) {
        let i = at + found;
        // A CR must start a CRLF that is followed by something other than
        // a dot (or by nothing: the end of the message).
        if message[i] != b'\r'
            || message.get(i + 1) != Some(&b'\n')
            || message.get(i + 2) == Some(&b'.')
        {
            return false;
        }
        at = i + 2;
    }
    true
}

fn rewrite(message: &[u8]) -> Vec<u8> {
    // Most messages need no change; the margin covers a few stuffed dots
    // and the final CRLF without reallocating.
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 2);
    let mut at_line_start = true;
    let mut bytes = message.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        match byte {
            b'\r' => {
                bytes.next_if_eq(&b'\n');
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                if at_line_start && byte == b'.' {
                    out.push(b'.');
                }
                out.push(byte);
                at_line_start = false;
            }
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a correct server does with the content: split at CRLF and remove
    /// one leading dot per line.
    fn unstuff(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in content.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    /// The message with every line ending turned into CRLF and a final CRLF,
    /// computed independently of [`encode`] (through text replacement; the
    /// lossy UTF-8 conversion is harmless because CR, LF and `.` are ASCII
    /// and always end an invalid sequence, so both sides convert alike).
    fn normalise(message: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(message)
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace('\n', "\r\n");
        if !text.is_empty() && !text.ends_with("\r\n") {
            text.push_str("\r\n");
        }
        text
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(&*encode(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(&*encode(b"a\n\n\r\r\n"), b"a\r\n\r\n\r\n\r\n");
        assert_eq!(&*encode(b"\r\n"), b"\r\n");
    }

    #[test]
    fn leading_dots_are_stuffed() {
        assert_eq!(
            &*encode(b".\n..x\n.\r\na.b\n"),
            b"..\r\n...x\r\n..\r\na.b\r\n"
        );
        assert_eq!(&*encode(b"x\r.\r\n"), b"x\r\n..\r\n");
    }

    #[test]
    fn smuggling_attempts_are_defused() {
        // A bare-LF "end of data" followed by a command must stay content.
        let hostile = b"hi\n.\nMAIL FROM:<evil@example.com>\r\n.\rRCPT TO:<x>\r\n";
        let content = encode(hostile);
        assert_eq!(
            &*content,
            b"hi\r\n..\r\nMAIL FROM:<evil@example.com>\r\n..\r\nRCPT TO:<x>\r\n"
        );
    }

    #[test]
    fn empty_and_unterminated() {
        assert_eq!(&*encode(b""), b"");
        assert_eq!(&*encode(b"."), b"..\r\n");
        assert_eq!(&*encode(b"abc"), b"abc\r\n");
    }

    proptest! {
        #[test]
        fn round_trips_through_a_server(message in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), any::<u8>()],
            0..200,
        )) {
            let content = encode(&message);
            // Only CRLF line endings, and never a lone "." line.
            for (i, &b) in content.iter().enumerate() {
                if b == b'\r' { prop_assert_eq!(content.get(i + 1), Some(&b'\n')); }
                if b == b'\n' { prop_assert!(i > 0 && content[i - 1] == b'\r'); }
            }
            prop_assert!(content.is_empty() || content.ends_with(b"\r\n"));
            prop_assert!(!content.split(|&b| b == b'\n').any(|l| l == b".\r"));
            // The server gets back the normalised message.
            let received = unstuff(&content);
            prop_assert_eq!(String::from_utf8_lossy(&received), normalise(&message));
            // The borrowed fast path changes nothing the rewrite would.
            let rewritten = rewrite(&message);
            prop_assert_eq!(&*content, rewritten.as_slice());
        }

        #[test]
        fn clean_messages_are_borrowed(lines in proptest::collection::vec("[a-z. ]{0,20}", 1..20)) {
            let message: String = lines.iter().map(|l| format!("x{l}\r\n")).collect();
            let content = encode(message.as_bytes());
            prop_assert!(matches!(content, Cow::Borrowed(_)));
        }
    }
}
