//! SMTP replies (RFC 5321 §4.2): parsing line by line, enhanced status
//! codes (RFC 3463), and the transient / permanent classification.

use std::fmt;

/// Longest reply line accepted, line ending included. RFC 5321 §4.5.3.1.5
/// allows 512 octets; 4 KiB tolerates sloppy servers while refusing a peer
/// that streams an endless line at us.
pub(super) const MAX_LINE: usize = 4096;

/// Most lines accepted in one reply. A long EHLO answer has a few dozen; the
/// cap keeps a hostile server from growing one reply without bound before the
/// phase timeout fires.
const MAX_LINES: usize = 256;

/// A server's reply to one command.
///
/// `text` holds the lines of a multi-line reply joined with `\n`, without
/// the code and without the enhanced status code when every line repeats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, 200 to 599.
    pub code: u16,
    /// The RFC 3463 enhanced status code (`"5.1.1"`) when the server sent one.
    pub enhanced: Option<String>,
    /// The human-readable text.
    pub text: String,
}

impl Reply {
    /// A 2xx reply: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// A 4xx reply: the command failed, trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// A 5xx reply: the command failed and will fail again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The lines of the text (one per reply line).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }

    /// Not API: runs the client's reply parser over `lines` (each without
    /// its line ending), returning the complete replies in order, and the
    /// error that would drop the connection, if any. For the fuzz targets.
    #[doc(hidden)]
    pub fn parse_lines<'a>(
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<Reply>, Option<String>) {
        let mut parser = ReplyParser::default();
        let mut replies = Vec::new();
        for line in lines {
            match parser.push(line) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => {}
                Err(error) => return (replies, Some(error)),
            }
        }
        (replies, None)
    }
}

/// `550 5.1.1 no such user`, lines of a multi-line reply separated by `" / "`
/// so that the result stays on one log line.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for (i, line) in self.lines().enumerate() {
            if i > 0 {
                f.write_str(" /")?;
            }
            if !line.is_empty() {
                write!(f, " {line}")?;
            }
        }
        Ok(())
    }
}

/// Collects the lines of one reply.
#[derive(Debug, Default)]
pub(super) struct ReplyParser {
    code: Option<u16>,
    enhanced: Option<String>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// Feeds one line, without its line ending. Returns the reply once its
    /// last line (`250 ...` rather than `250-...`) has been fed, or a
    /// description of what is wrong with the line.
    pub(super) fn push(&mut self, line: &[u8]) -> Result<Option<Reply>, String> {
        if line.len() > MAX_LINE {
            return Err(format!("reply line longer than {MAX_LINE} bytes"));
        }
        let code =
            parse_code(line).ok_or_else(|| format!("not an SMTP reply: {:?}", preview(line)))?;
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(format!("not an SMTP reply: {:?}", preview(line))),
        };
        if let Some(first) = self.code
            && first != code
        {
            return Err(format!(
                "reply code changed from {first} to {code} within one reply"
            ));
        }
        if self.lines.len() >= MAX_LINES {
            return Err(format!("reply longer than {MAX_LINES} lines"));
        }
        let mut text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
        if self.code.is_none() {
            self.code = Some(code);
            self.enhanced = split_enhanced(code, &text).map(|(enhanced, _)| enhanced.to_owned());
        }
        if let Some(enhanced) = &self.enhanced
            && let Some((this, rest)) = split_enhanced(code, &text)
            && this == enhanced
        {
            text = rest.to_owned();
        }
        self.lines.push(text);
        if !last {
            return Ok(None);
        }
        let reply = Reply {
            code,
            enhanced: self.enhanced.take(),
            text: self.lines.join("\n"),
        };
        *self = ReplyParser::default();
        Ok(Some(reply))
    }
}

/// The reply code of a line: three digits, the first 2 to 5 (RFC 5321
/// §4.2.1; 1yz replies are not used in SMTP).
fn parse_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

/// Splits `"5.1.1 no such user"` into `("5.1.1", "no such user")`. The class
/// digit must match the reply code's first digit (RFC 3463 §2), which keeps
/// a host name such as `"2.example"` from passing for a status code.
fn split_enhanced(code: u16, text: &str) -> Option<(&str, &str)> {
    let (candidate, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = candidate.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let number = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    let valid = parts.next().is_none()
        && class.len() == 1
        && class.as_bytes()[0].checked_sub(b'0').map(u16::from) == Some(code / 100)
        && number(subject, 3)
        && number(detail, 3);
    valid.then_some((candidate, rest))
}

/// The start of an offending line, for error messages.
fn preview(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Reply, String> {
        let mut parser = ReplyParser::default();
        for (i, line) in lines.iter().enumerate() {
            match parser.push(line.as_bytes())? {
                Some(reply) if i + 1 == lines.len() => return Ok(reply),
                Some(_) => return Err("reply ended early".into()),
                None => {}
            }
        }
        Err("reply not finished".into())
    }

    #[test]
    fn single_line() {
        let reply = parse(&["250 OK"]).expect("valid");
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.text, "OK");
        assert!(reply.is_positive() && !reply.is_transient() && !reply.is_permanent());
    }

    #[test]
    fn bare_code_without_text() {
        let reply = parse(&["354"]).expect("valid");
        assert_eq!((reply.code, reply.text.as_str()), (354, ""));
    }

    #[test]
    fn multi_line_with_enhanced_codes() {
        let reply = parse(&[
            "550-5.1.1 The email account that you tried to reach does not exist.",
            "550-5.1.1 Please try double-checking the recipient's email address.",
            "550 5.1.1 https://support.example/?p=NoSuchUser",
        ])
        .expect("valid");
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(
            reply.text,
            "The email account that you tried to reach does not exist.\n\
             Please try double-checking the recipient's email address.\n\
             https://support.example/?p=NoSuchUser"
        );
        assert!(reply.is_permanent());
        assert_eq!(
            reply.to_string(),
            "550 5.1.1 The email account that you tried to reach does not exist. / \
             Please try double-checking the recipient's email address. / \
             https://support.example/?p=NoSuchUser"
        );
    }

    #[test]
    fn ehlo_reply_keeps_keywords() {
        let reply = parse(&["250-mx.example Hello", "250-8BITMIME", "250 SIZE 1000"]).expect("ok");
        assert_eq!(reply.enhanced, None);
        let lines: Vec<_> = reply.lines().collect();
        assert_eq!(lines, ["mx.example Hello", "8BITMIME", "SIZE 1000"]);
    }

    #[test]
    fn enhanced_code_class_must_match() {
        assert_eq!(parse(&["250 5.1.1 odd"]).expect("ok").enhanced, None);
        assert_eq!(
            parse(&["421 4.4.2 bye"]).expect("ok").enhanced.as_deref(),
            Some("4.4.2")
        );
        assert_eq!(parse(&["250 2.0.0"]).expect("ok").text, "");
        assert_eq!(parse(&["250 2.example.com"]).expect("ok").enhanced, None);
        assert_eq!(parse(&["250 2.1.1234 x"]).expect("ok").enhanced, None);
    }

    #[test]
    fn garbage_is_rejected() {
        for line in [
            "hello", "", "25", "2500 x", "abc def", "650 x", "150 x", "250_x",
        ] {
            assert!(parse(&[line]).is_err(), "{line:?} accepted");
        }
    }

    #[test]
    fn code_must_not_change() {
        let error = parse(&["250-a", "251 b"]).expect_err("mixed codes");
        assert!(error.contains("changed"), "{error}");
    }

    #[test]
    fn absurd_lines_are_rejected() {
        let long = format!("250 {}", "x".repeat(MAX_LINE));
        assert!(parse(&[&long]).expect_err("too long").contains("longer"));
        let many: Vec<String> = std::iter::repeat_n("250-x".to_owned(), MAX_LINES + 1).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(parse(&many).expect_err("too many").contains("lines"));
    }

    #[test]
    fn non_utf8_text_is_kept_lossily() {
        let mut parser = ReplyParser::default();
        let reply = parser
            .push(b"451 caf\xe9")
            .expect("valid")
            .expect("complete");
        assert_eq!(reply.text, "caf\u{fffd}");
    }
}
