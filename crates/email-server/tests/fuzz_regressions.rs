//! Inputs found by the fuzz targets in `fuzz/` (see `fuzz/README.md`),
//! minimised, each with the property it broke.

use email_server::smtp::Reply;

/// smtp_reply: a reply whose text starts like an enhanced status code with
/// a class below `'0'` (`"550 !.1.1"`) made the class check subtract with
/// overflow: a panic in debug builds, on a line any server can send.
#[test]
fn enhanced_code_class_below_zero_digit() {
    for line in [&b"550 !.1.1 x"[..], b"550 \x15.1.1", b"250 /.0.0 ok"] {
        let (replies, error) = Reply::parse_lines([line]);
        assert_eq!(error, None, "{line:?}");
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].enhanced, None, "{line:?}");
    }
    // A real one is still recognised.
    let (replies, _) = Reply::parse_lines([&b"550 5.1.1 no such user"[..]]);
    assert_eq!(replies[0].enhanced.as_deref(), Some("5.1.1"));
    assert_eq!(replies[0].text, "no such user");
}
