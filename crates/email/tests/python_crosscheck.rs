//! Cross-check against an independent implementation: renders a few hundred
//! varied emails and has Python's standard `email` package (`pycheck.py`)
//! read every one back, comparing subject, addresses, bodies and attachments
//! with what we meant to send.
//!
//! The emails come from a seeded PRNG, so every run renders the same bytes.
//! Needs `python3`: without it the test is skipped, unless
//! `EMAIL_TEST_REQUIRE_SERVICES=1` (as in CI), where it fails.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use email::{Address, Attachment, Email, Mailbox};

const COUNT: usize = 240;

/// Every one of these must occur in at least one generated email, so a change
/// to the generator cannot silently drop a case.
#[rustfmt::skip]
const REQUIRED_TAGS: &[&str] = &[
    "text", "html", "text+html", "no-body", "attachment", "empty-file", "big-file", "csv",
    "inline", "idn", "long-subject", "long-name", "no-subject", "several-from", "cc", "bcc",
    "dot-line", "long-line", "bare-cr",
];

/// SplitMix64: tiny, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Words for subjects, names and bodies: scripts, emoji (including ZWJ
/// sequences and flags), right-to-left text, and ASCII that looks like
/// markup or encoding.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "hello", "report", "Quarterly", "a=b", "=?utf-8?q?not_a_word?=", "?=", "100%", "x--y",
    "Grüße", "Straße", "Ärger", "naïve", "日本語", "中文测试", "한국어", "😀", "🎉", "👩‍👩‍👧", "🇩🇪", "שלום",
    "مرحبا", "עברית", "(comment)", "\"quoted\"", "back\\slash", "tab\there", "<b>", "&amp;",
    "O'Brien", "semi;colon", "comma,", "@",
];

#[rustfmt::skip]
const NAMES: &[&str] = &[
    "Ann", "Ann Smith", "Smith, Ann", "Dr. Who", "O'Brien", "\"The\" Boss", "back\\slash",
    "Jürgen Groß", "山田 太郎", "Ωmega", "שרה כהן", "محمد علي", "🦀 Ferris", "Ann  Smith",
    "=?utf-8?b?QQ==?=", "  padded  ", "a<b>c", "user@example.com", "x=y", "tab\tname",
];

#[rustfmt::skip]
const LOCALS: &[&str] = &["ann", "Bob.Smith", "x+tag", "o'neil", "first_last", "\"a b\"", "UP"];

/// Domains as given, and as they must appear on the wire (IDN in punycode,
/// UTS 46 non-transitional, so `ß` is kept rather than mapped to `ss`).
#[rustfmt::skip]
const DOMAINS: &[(&str, &str)] = &[
    ("example.com", "example.com"), ("Example.ORG", "example.org"),
    ("bücher.example", "xn--bcher-kva.example"), ("例え.jp", "xn--r8jz45g.jp"),
    ("münchen.de", "xn--mnchen-3ya.de"), ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
    ("straße.de", "xn--strae-oqa.de"), ("[192.0.2.1]", "[192.0.2.1]"),
];

#[rustfmt::skip]
const FILENAMES: &[&str] = &[
    "report.pdf", "data.bin", "Grüße aus Köln.txt", "日本語のファイル名.dat", "🎉 party.zip", "שלום.doc",
    "semi;colon=equals.bin", "quote\"d.bin", "back\\slash.bin", "100% done.txt", "it's.txt",
    "no_extension", "two  spaces.bin", "tab\there.bin",
    "a-long-ascii-name-that-goes-well-past-sixty-characters-for-sure.tar.gz",
    "a long non-ASCII name über alles, 長い名前のファイル, with emoji 🚀🚀🚀 and more.pdf",
];

const SPACED_SUBJECTS: &[&str] = &[" leading", "trailing ", "two  spaces", "\ttab"];

/// Latin-1 and stray bytes: not UTF-8, so only base64 keeps them intact.
const CSV: &[u8] = b"name;price\r\nM\xfcller;3\xa4\n\xff\xfe\x00\r";
const CSV_TYPES: &[&str] = &["text/csv", "Text/CSV; charset=iso-8859-1"];

/// Text body, HTML body, tag: cycled through so each shape is well covered.
#[rustfmt::skip]
const SHAPES: [(bool, bool, &str); 4] =
    [(true, false, "text"), (false, true, "html"), (true, true, "text+html"), (false, false, "no-body")];

/// Inline images; their derived Content-IDs are all different.
#[rustfmt::skip]
const INLINE_NAMES: &[&str] = &["logo.png", "photo é.jpg", "图片.gif", "banner-1.png", "icon 2.svg"];

/// (display name, addr-spec) pairs, the addr-spec as it goes on the wire.
type Boxes = Vec<(Option<String>, String)>;

/// What Python must find in one rendered email.
#[derive(Default)]
struct Expect {
    /// What the email exercises, for the report and the coverage check.
    tags: Vec<&'static str>,
    subject: Option<String>,
    from: Boxes,
    sender: Boxes,
    reply_to: Boxes,
    to: Boxes,
    cc: Boxes,
    text: Option<String>,
    html: Option<String>,
    /// File name, Content-ID, media type and bytes, in the order the parts
    /// are rendered.
    attachments: Vec<(String, Option<String>, String, Vec<u8>)>,
}

/// One to `max` words.
fn words(rng: &mut Rng, max: usize) -> String {
    let n = 1 + rng.below(max);
    let words: Vec<_> = (0..n).map(|_| rng.pick(WORDS)).collect();
    words.join(" ")
}

/// Words until the text is longer than `min` plus up to `spread` bytes.
fn long_words(rng: &mut Rng, min: usize, spread: usize) -> String {
    let min = min + rng.below(spread);
    let mut s = rng.pick(WORDS).to_owned();
    while s.len() <= min {
        s.push(' ');
        s.push_str(rng.pick(WORDS));
    }
    s
}

/// One body line, chosen to poke at quoted-printable and SMTP corner cases.
fn line(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => format!(".{}", words(rng, 3)),
        2 => ".".into(),
        3 => "a=b == =3D =\t= =".into(),
        4 => format!("{}   ", words(rng, 4)),
        5 => format!("{}\t", words(rng, 2)),
        6 => long_words(rng, 1000, 2000),
        7 => "x".repeat(1000 + rng.below(3000)),
        8 => "From the desk of the boss".into(),
        // Looks like one of our boundaries; quoted-printable must hide it.
        9 => format!("--=_{:016x}00", rng.next()),
        10 => "ctl \x00\x01\x0b\x0c\x7f end".into(),
        _ => words(rng, 12),
    }
}

/// A body with a mix of LF, CRLF and lone CR line breaks.
fn body(rng: &mut Rng, prefix: &str, suffix: &str) -> String {
    let mut s = prefix.to_owned();
    for i in 0..rng.below(15) {
        if i > 0 || !prefix.is_empty() {
            s.push_str(rng.pick(&["\n", "\n", "\r\n", "\r"]));
        }
        s.push_str(&line(rng));
    }
    s.push_str(suffix);
    if rng.chance(50) {
        s.push_str(rng.pick(&["\n", "\r\n", "\r", "\n\n"]));
    }
    s
}

/// What the builder stores for a body: every CRLF and lone CR become LF.
fn stored(e: &mut Expect, given: &str) -> Option<String> {
    if given.replace("\r\n", "").contains('\r') {
        e.tags.push("bare-cr");
    }
    let s = given.replace("\r\n", "\n").replace('\r', "\n");
    if s.split('\n').any(|l| l.starts_with('.')) {
        e.tags.push("dot-line");
    }
    if s.split('\n').any(|l| l.len() > 1000) {
        e.tags.push("long-line");
    }
    Some(s)
}

/// `min` to `max` mailboxes, and how each must read back.
fn mailboxes(rng: &mut Rng, min: usize, max: usize) -> (Vec<Mailbox>, Boxes) {
    let (mut list, mut expected) = (Vec::new(), Vec::new());
    for _ in 0..min + rng.below(max - min + 1) {
        let (domain, ascii) = rng.pick(DOMAINS);
        let local = rng.pick(LOCALS);
        let name = match rng.below(8) {
            0 | 1 => None,
            2 => Some(long_words(rng, 80, 150)),
            _ => Some(rng.pick(NAMES).to_owned()),
        };
        let address = Address::new(&format!("{local}@{domain}")).expect("valid address");
        list.push(Mailbox::new(name.as_deref(), address).expect("valid mailbox"));
        // Names are trimmed, and a blank one is no name.
        let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        expected.push((name, format!("{local}@{ascii}")));
    }
    (list, expected)
}

/// Random bytes, sometimes none, sometimes over 100 KB; the small sizes sit
/// around base64's 3-byte groups and 57-byte lines.
fn binary(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(10) {
        0 => 0,
        1 => 100_001 + rng.below(60_000),
        _ => rng.pick(&[1, 2, 3, 56, 57, 58, 76, 1000, 4097]),
    };
    rng.bytes(n)
}

/// Attachments and inline parts, interleaved; inline ones get unique
/// Content-IDs, derived from the file name or set explicitly.
fn parts(rng: &mut Rng, i: usize, min: usize) -> Vec<Attachment> {
    let mut parts: Vec<Attachment> = Vec::new();
    let n = min.max(rng.pick(&[0, 0, 1, 1, 2, 3, 5]));
    while parts.len() < n {
        let part = match rng.below(6) {
            0 | 1 => {
                let a = Attachment::inline(rng.pick(INLINE_NAMES), binary(rng));
                match rng.chance(30) {
                    true => a.with_content_id(format!("part{}.{i}@example.com", parts.len())),
                    false => a,
                }
            }
            2 => Attachment::new("preise.csv", CSV).with_content_type(rng.pick(CSV_TYPES)),
            3 => Attachment::new("notes.txt", words(rng, 20)),
            _ => Attachment::new(rng.pick(FILENAMES), binary(rng)),
        };
        let cid = part.content_id();
        if cid.is_none() || parts.iter().all(|p| p.content_id() != cid) {
            parts.push(part);
        }
    }
    parts
}

fn generate(i: usize, rng: &mut Rng) -> (Email, Expect) {
    let mut e = Expect::default();
    let mut b = Email::builder()
        .message_id(&format!("<{i}.crosscheck@example.com>"))
        .date("2026-01-02T03:04:05Z".parse().expect("timestamp"));

    let several = usize::from(rng.chance(5));
    let (from, exp) = mailboxes(rng, 1 + several, 1 + several);
    (b, e.from) = (b.from(from), exp);
    if several == 1 {
        let (sender, exp) = mailboxes(rng, 1, 1);
        (b, e.sender) = (b.sender(sender), exp);
    }
    if rng.chance(20) {
        let (reply_to, exp) = mailboxes(rng, 1, 2);
        (b, e.reply_to) = (b.reply_to(reply_to), exp);
    }
    // Half the lists go in as Mailbox values, half as one string that the
    // builder has to split and unquote again.
    let (to, exp) = mailboxes(rng, 0, 4);
    let to_text: Vec<String> = to.iter().map(Mailbox::to_string).collect();
    b = match rng.chance(50) {
        _ if to.is_empty() => b,
        true => b.to(to),
        false => b.to(to_text.join(", ")),
    };
    e.to = exp;
    let (cc, exp) = mailboxes(rng, 0, 3);
    if !cc.is_empty() {
        (b, e.cc) = (b.cc(cc), exp);
    }
    if rng.chance(30) || (e.to.is_empty() && e.cc.is_empty()) {
        b = b.bcc(mailboxes(rng, 1, 2).0);
        e.tags.push("bcc");
    }

    e.subject = match rng.below(10) {
        0 => None,
        1 => Some(String::new()),
        2 => Some(long_words(rng, 200, 300)),
        3 => Some(rng.pick(SPACED_SUBJECTS).to_owned()),
        // A word too long to fold, after one that just fits on a line.
        4 => Some(["y".repeat(100 + rng.below(800)), "x".repeat(901)].join(" ")),
        _ => Some(words(rng, 8)),
    };
    if let Some(s) = &e.subject {
        b = b.subject(s.as_str());
    }

    let (has_text, has_html, shape) = SHAPES[i % SHAPES.len()];
    e.tags.push(shape);
    // An email without a body renders an empty text part; give it a file so
    // that "no body" stays visible.
    let parts = parts(rng, i, usize::from(!has_text && !has_html));
    if has_text {
        let text = body(rng, "", "");
        e.text = stored(&mut e, &text);
        b = b.text(text);
    }
    if has_html {
        let head = format!("<html><body>\n<h1>{}</h1>", words(rng, 3));
        let imgs: String = parts
            .iter()
            .filter_map(|a| Some(format!("<img src=\"cid:{}\">\n", a.content_id()?)))
            .collect();
        let html = body(rng, &head, &format!("\n{imgs}</body></html>"));
        e.html = stored(&mut e, &html);
        b = b.html(html);
    }
    // With HTML, inline parts are rendered next to it (multipart/related),
    // before the files; without, every part stays in order.
    let related = |a: &&Attachment| has_html && a.is_inline();
    let (first, then): (Vec<_>, Vec<_>) = parts.iter().partition(related);
    for a in first.into_iter().chain(then) {
        let name = a.filename().expect("generated parts have names").to_owned();
        let cid = a.content_id().map(str::to_owned);
        let essence = a.content_type().split(';').next().unwrap_or_default();
        let ty = essence.trim().to_ascii_lowercase();
        e.attachments.push((name, cid, ty, a.data().to_vec()));
    }
    for a in parts {
        b = b.attach(a);
    }
    e.tags.extend(e.derived_tags());
    (b.build().expect("generated email builds"), e)
}

impl Expect {
    /// The tags that can be read off the expectations.
    fn derived_tags(&self) -> Vec<&'static str> {
        let lists = [&self.from, &self.sender, &self.reply_to, &self.to, &self.cc];
        let boxes: Vec<_> = lists.into_iter().flatten().collect();
        let subject = self.subject.as_deref();
        let files = &self.attachments;
        let long_name = boxes
            .iter()
            .any(|(n, _)| n.as_ref().map_or(0, String::len) > 76);
        let checks = [
            ("no-subject", subject.is_none()),
            ("long-subject", subject.is_some_and(|s| s.len() > 200)),
            ("several-from", self.from.len() > 1),
            ("cc", !self.cc.is_empty()),
            ("idn", boxes.iter().any(|(_, a)| a.contains("xn--"))),
            ("long-name", long_name),
            ("attachment", files.iter().any(|f| f.1.is_none())),
            ("inline", files.iter().any(|f| f.1.is_some())),
            ("csv", files.iter().any(|f| f.0.ends_with(".csv"))),
            ("empty-file", files.iter().any(|f| f.3.is_empty())),
            ("big-file", files.iter().any(|f| f.3.len() > 100_000)),
        ];
        checks.iter().filter(|c| c.1).map(|c| c.0).collect()
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' => write!(out, "\\u{:04x}", c as u32).expect("write to String"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".into(), json_str)
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

impl Expect {
    fn to_json(&self) -> String {
        let mailbox =
            |(n, a): &(Option<String>, String)| json_list([json_opt(n.as_deref()), json_str(a)]);
        let boxes = |l: &Boxes| json_list(l.iter().map(mailbox));
        let files = json_list(self.attachments.iter().map(|(name, cid, ty, data)| {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            let (name, cid, ty) = (json_str(name), json_opt(cid.as_deref()), json_str(ty));
            format!("{{\"filename\": {name}, \"cid\": {cid}, \"type\": {ty}, \"hex\": \"{hex}\"}}")
        }));
        let mut tags = self.tags.clone();
        tags.sort_unstable();
        tags.dedup();
        let fields = [
            ("label", json_str(&tags.join(" "))),
            ("subject", json_opt(self.subject.as_deref())),
            ("from", boxes(&self.from)),
            ("sender", boxes(&self.sender)),
            ("reply-to", boxes(&self.reply_to)),
            ("to", boxes(&self.to)),
            ("cc", boxes(&self.cc)),
            ("text", json_opt(self.text.as_deref())),
            ("html", json_opt(self.html.as_deref())),
            ("attachments", files),
        ];
        let fields: Vec<_> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}\n", fields.join(", "))
    }
}

/// A scratch directory, removed again even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("email-pycheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn python_reads_what_we_render() {
    let python = Command::new("python3").arg("--version").output();
    if !python.is_ok_and(|o| o.status.success()) {
        if std::env::var("EMAIL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("python3 is required (EMAIL_TEST_REQUIRE_SERVICES=1) but could not be run");
        }
        // Straight to stderr: the test harness would swallow eprintln!.
        let notice = b"skipping python_crosscheck: python3 not found\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), notice);
        return;
    }
    let dir = TempDir::new();
    let mut rng = Rng(0x00c0_ffee_5eed);
    let mut seen = BTreeSet::new();
    for i in 0..COUNT {
        let (email, expect) = generate(i, &mut rng);
        seen.extend(expect.tags.iter().copied());
        let path = |ext| dir.0.join(format!("{i:04}.{ext}"));
        std::fs::write(path("eml"), email.to_bytes()).expect("write eml");
        std::fs::write(path("json"), expect.to_json()).expect("write json");
    }
    let missing: Vec<_> = REQUIRED_TAGS
        .iter()
        .filter(|t| !seen.contains(*t))
        .collect();
    assert!(missing.is_empty(), "generator never produced {missing:?}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pycheck.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir.0)
        .output()
        .expect("run pycheck.py");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let report = format!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "Python reads our emails differently:\n{report}"
    );
    assert!(
        report.contains(&format!("{COUNT} passed, 0 failed")),
        "unexpected pycheck output:\n{report}"
    );
}
