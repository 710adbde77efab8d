//! Wire encodings used by the renderer: RFC 2047 encoded words, header
//! folding, RFC 2231 parameters, quoted-printable and base64 bodies.
//!
//! Every function here writes CRLF line endings and keeps lines far below
//! the 998-octet limit of RFC 5322 whatever the input. That is what lets the
//! property tests promise "no bare CR or LF, no line over 998 octets" for any
//! email the builder accepts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Longest run of raw bytes put into one B encoded-word: 45 bytes become 60
/// base64 characters, and `=?utf-8?b?` + 60 + `?=` is 72, under the 75 of
/// RFC 2047 §2.
const WORD_BYTES: usize = 45;

/// Longest unbroken token we let through unencoded in an unstructured
/// header; longer ones are encoded so that they can be folded. A token this
/// long sits alone on its line, well under 998 octets.
const MAX_PLAIN_TOKEN: usize = 900;

/// Longest display name written as an atom or quoted string; longer names
/// are encoded words, which can be folded.
const MAX_PLAIN_PHRASE: usize = 76;

/// Writes `name: value` for an unstructured header (Subject, custom
/// headers), folding and RFC 2047-encoding as needed.
pub(crate) fn unstructured_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b":");
    if needs_encoding(value) {
        encoded_words(out, value);
    } else {
        folded_plain(out, value, name.len() + 1);
    }
    out.extend_from_slice(b"\r\n");
}

/// Plain printable ASCII that survives unfolding unchanged: no leading,
/// trailing or doubled whitespace, nothing that looks like an encoded word,
/// and no token too long to fold.
fn needs_encoding(value: &str) -> bool {
    let b = value.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b[0] == b' ' || b[b.len() - 1] == b' ' || value.contains("  ") || value.contains("=?") {
        return true;
    }
    if !b.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        return true;
    }
    value.split(' ').any(|t| t.len() > MAX_PLAIN_TOKEN)
}

/// Writes space-separated ASCII words, folding before a word when the line
/// would pass 78 characters. `col` is the current column.
fn folded_plain(out: &mut Vec<u8>, value: &str, mut col: usize) {
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 && col + 1 + word.len() > 78 {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
        out.push(b' ');
        out.extend_from_slice(word.as_bytes());
        col += 1 + word.len();
    }
}

/// Writes `value` as a run of `=?utf-8?b?...?=` words, each preceded by a
/// space, folding so that no line passes 76 characters (RFC 2047 §2): the
/// first word shares the current line if it fits. Whitespace between
/// adjacent encoded words is ignored by decoders (RFC 2047 §6.2), so the
/// text comes back exactly, spaces included.
pub(crate) fn encoded_words(out: &mut Vec<u8>, value: &str) {
    // " =?utf-8?b?" and "?=" take 13 of the 76 characters.
    const OVERHEAD: usize = 13;
    let mut rest = value;
    while !rest.is_empty() {
        let room = 76usize.saturating_sub(line_len(out) + OVERHEAD) / 4 * 3;
        let mut end = rest.len().min(room.min(WORD_BYTES));
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // Not even one character fits on this line: fold first.
            out.extend_from_slice(b"\r\n");
            continue;
        }
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        out.extend_from_slice(b" =?utf-8?b?");
        let start = out.len();
        out.resize(start + chunk.len().div_ceil(3) * 4, 0);
        let n = B64
            .encode_slice(chunk, &mut out[start..])
            .expect("buffer sized for base64");
        out.truncate(start + n);
        out.extend_from_slice(b"?=");
    }
}

/// Length of the line being written: bytes since the last line break.
pub(crate) fn line_len(out: &[u8]) -> usize {
    match out.iter().rposition(|&b| b == b'\n') {
        Some(p) => out.len() - p - 1,
        None => out.len(),
    }
}

/// A display name as a header phrase: bare atoms when that is safe, a quoted
/// string for ASCII with specials, encoded words otherwise.
pub(crate) fn phrase(out: &mut Vec<u8>, name: &str) {
    let b = name.as_bytes();
    let simple_ascii = b.iter().all(|&c| (0x20..0x7f).contains(&c))
        && !name.contains("=?")
        && name.len() <= MAX_PLAIN_PHRASE
        && !name.contains("  ");
    if simple_ascii && b.iter().all(|&c| c == b' ' || is_atext(c)) {
        out.extend_from_slice(b);
    } else if simple_ascii {
        out.push(b'"');
        for &c in b {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
    } else {
        let before = out.len();
        encoded_words(out, name);
        // encoded_words starts each word with a space; the caller already
        // wrote one after the colon or comma.
        if out.get(before) == Some(&b' ') {
            out.remove(before);
        }
    }
}

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c)
}

/// Writes a MIME parameter `; key="value"`, or with RFC 2231 encoding and
/// continuations (`key*0*=utf-8''...; key*1*=...`) when the value is not
/// short printable ASCII.
pub(crate) fn mime_param(out: &mut Vec<u8>, key: &str, value: &str) {
    let plain = value.len() <= 60
        && value
            .bytes()
            .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
    if plain {
        out.extend_from_slice(b";\r\n\t");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"=\"");
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    // Percent-encode character by character and cut only between
    // characters: decoders differ on whether continuations are joined before
    // or after charset decoding, so no character may straddle two pieces.
    let mut pieces: Vec<String> = vec![String::new()];
    let mut buf = [0u8; 4];
    for ch in value.chars() {
        let mut enc = String::with_capacity(12);
        for &c in ch.encode_utf8(&mut buf).as_bytes() {
            if c.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&c) {
                enc.push(c as char);
            } else {
                enc.push_str(&format!("%{c:02X}"));
            }
        }
        let last = pieces.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + enc.len() > 60 {
            pieces.push(enc);
        } else {
            last.push_str(&enc);
        }
    }
    for (i, piece) in pieces.iter().enumerate() {
        out.extend_from_slice(b";\r\n\t");
        out.extend_from_slice(key.as_bytes());
        if pieces.len() > 1 {
            out.extend_from_slice(format!("*{i}").as_bytes());
        }
        out.extend_from_slice(b"*=");
        if i == 0 {
            out.extend_from_slice(b"utf-8''");
        }
        out.extend_from_slice(piece.as_bytes());
    }
}

/// Quoted-printable with CRLF line breaks, soft breaks before column 76, and
/// a few deliberate extra escapes: `=` always (so the `=_` of our boundaries
/// can never occur in a body), trailing whitespace, and a `.` at the start of
/// a line (so no rendered line can ever be a lone SMTP end-of-data marker).
///
/// Text is normalised first: CRLF, lone CR and lone LF all become one hard
/// line break. If the text does not end in a line break, the part ends with a
/// soft break, which decodes to nothing, so the body round-trips exactly.
pub(crate) fn quoted_printable(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = text.as_bytes();
    let mut col = 0usize;
    let mut i = 0usize;
    let esc = |out: &mut Vec<u8>, c: u8| {
        out.extend_from_slice(&[b'=', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
    };
    out.reserve(b.len() + b.len() / 24 + 8);
    while i < b.len() {
        // Fast path: the longest run of bytes that stay as they are and
        // fit on this line, copied at once. The byte that ends it (or the
        // line's end) goes through the general case below.
        let limit = b.len().min(i + 75usize.saturating_sub(col));
        let mut j = i;
        while j < limit {
            let plain = match b[j] {
                b'=' => false,
                b'.' => col + (j - i) != 0,
                b' ' | b'\t' => !matches!(b.get(j + 1), None | Some(b'\r') | Some(b'\n')),
                33..=126 => true,
                _ => false,
            };
            if !plain {
                break;
            }
            j += 1;
        }
        if j > i {
            out.extend_from_slice(&b[i..j]);
            col += j - i;
            i = j;
            continue;
        }
        let c = b[i];
        if c == b'\r' || c == b'\n' {
            out.extend_from_slice(b"\r\n");
            col = 0;
            i += if c == b'\r' && b.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            continue;
        }
        let at_eol = matches!(b.get(i + 1), None | Some(b'\r') | Some(b'\n'));
        let literal = match c {
            b'=' => false,
            b' ' | b'\t' => !at_eol,
            b'.' => col != 0,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Keep room for the soft-break `=`: 75 characters plus `=` is 76.
        if col + width > 75 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
            if c == b'.' {
                esc(out, c);
                col += 3;
                i += 1;
                continue;
            }
        }
        if literal {
            out.push(c);
        } else {
            esc(out, c);
        }
        col += width;
        i += 1;
    }
    if !matches!(b.last(), Some(b'\r') | Some(b'\n')) {
        out.extend_from_slice(b"=\r\n");
    }
}

/// Base64 in lines of 76 characters with CRLF, as MIME requires.
pub(crate) fn base64_lines(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len().div_ceil(57) * 78);
    let mut line = [0u8; 76];
    for chunk in data.chunks(57) {
        let n = B64
            .encode_slice(chunk, &mut line)
            .expect("57 bytes fit in 76 characters");
        out.extend_from_slice(&line[..n]);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).expect("ascii")
    }

    #[test]
    fn plain_subject_folds_at_spaces() {
        let mut out = Vec::new();
        let words = vec!["word"; 40].join(" ");
        unstructured_header(&mut out, "Subject", &words);
        let text = s(out);
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
        assert_eq!(
            text.replace("\r\n", "").trim_end(),
            format!("Subject: {words}")
        );
    }

    #[test]
    fn non_ascii_subject_uses_encoded_words() {
        let mut out = Vec::new();
        unstructured_header(&mut out, "Subject", "Grüße aus Köln");
        assert_eq!(s(out), "Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n");
        let mut out = Vec::new();
        unstructured_header(&mut out, "X-A-Rather-Long-Header-Name", &"ü".repeat(100));
        for line in s(out).split("\r\n") {
            assert!(line.len() <= 76, "{line}");
        }
    }

    #[test]
    fn qp_escapes_dots_equals_and_trailing_space() {
        let mut out = Vec::new();
        quoted_printable(&mut out, ".hidden\na=b \nend");
        assert_eq!(s(out), "=2Ehidden\r\na=3Db=20\r\nend=\r\n");
    }

    #[test]
    fn qp_lines_stay_short() {
        let mut out = Vec::new();
        quoted_printable(&mut out, &"é".repeat(200));
        assert!(s(out).lines().all(|l| l.len() <= 76));
    }

    #[test]
    fn rfc2231_continuations_do_not_split_escapes() {
        let mut out = Vec::new();
        mime_param(&mut out, "filename", &"ü".repeat(40));
        let text = s(out);
        assert!(text.contains("filename*0*=utf-8''%C3%BC"), "{text}");
        for line in text.split("\r\n").filter(|l| l.contains("*=")) {
            let piece = line
                .split("*=")
                .nth(1)
                .unwrap_or("")
                .trim_start_matches("utf-8''");
            let b = piece.as_bytes();
            for (i, _) in piece.match_indices('%') {
                assert!(i + 2 < b.len(), "escape cut short: {line}");
                assert!(
                    b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit(),
                    "{line}"
                );
            }
        }
    }
}
