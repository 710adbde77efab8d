//! The SMTP client's reply parser on arbitrary server output, split into
//! lines as the client's reader splits it (at LF, one CR before it
//! dropped). Never panics, and every reply it accepts is well-formed.

#![no_main]

use email_server::smtp::Reply;
use libfuzzer_sys::fuzz_target;

/// `smtp::reply::MAX_LINE` and `MAX_LINES`.
const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 256;

fuzz_target!(|data: &[u8]| {
    // A trailing part without LF is a line the reader would still be
    // waiting for, not one it hands to the parser.
    let complete = match data.iter().rposition(|&b| b == b'\n') {
        Some(end) => &data[..end],
        None => return,
    };
    let lines = complete
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let (replies, error) = Reply::parse_lines(lines);
    if let Some(error) = error {
        assert!(!error.is_empty());
    }
    for reply in &replies {
        assert!((200..600).contains(&reply.code), "code {}", reply.code);
        let kinds = [
            reply.is_positive(),
            reply.is_transient(),
            reply.is_permanent(),
        ];
        assert!(kinds.iter().filter(|&&k| k).count() <= 1);
        if let Some(enhanced) = &reply.enhanced {
            let class = enhanced.split('.').next().unwrap_or_default();
            assert_eq!(class, (reply.code / 100).to_string(), "{reply:?}");
        }
        let lines = reply.lines().count();
        assert!((1..=MAX_LINES).contains(&lines), "{lines} lines");
        assert!(reply.lines().all(|l| l.len() <= 3 * MAX_LINE));
        // Display keeps a reply on one log line.
        let shown = reply.to_string();
        assert!(!shown.contains('\n'), "{shown:?}");
        assert!(shown.starts_with(&reply.code.to_string()));
    }
});
