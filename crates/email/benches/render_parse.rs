//! Render and parse benchmarks for the `email` crate.
//!
//! Targets (see BENCHMARKS.md at the workspace root):
//!
//! - render and parse a typical ~3 KB text + HTML email in ≤ 20 µs each;
//! - render an email with a 10 MB attachment in ≤ 100 ms (its peak memory
//!   is measured by `examples/peak_memory.rs`, not here).
//!
//! ```sh
//! cargo bench -p email --bench render_parse
//! scripts/bench-email.sh   # the same, pinned to one core, plus peak memory
//! DUMP_EMAIL=1 cargo bench -p email --bench render_parse   # also print the 3 KB message
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use email::{Attachment, Email};

/// About 1 KB of plain text, mostly ASCII with a few non-ASCII characters,
/// as a newsletter's text alternative would be.
const TEXT: &str = "\
Hello Zoë,

here is what happened in the project this week.

* Release 2.4 is out. It brings faster rendering, a tolerant parser and
  internationalised addresses (jürgen@bücher.example works now).
* The café meetup moves to Thursday, 18:00, at the usual place in Köln.
* We are looking for reviewers for the new SMTP client: if you have an
  hour to spare, please have a look at the open pull requests.

Top discussions
---------------

1. \"Should Bcc ever be rendered?\" (42 replies): no, and now the builder
   makes it impossible.
2. \"Line length limits in headers\" (17 replies): 998 octets is the hard
   limit, 78 the polite one; we fold at 78.
3. \"Naïve quoted-printable\" (9 replies): why we escape a leading dot.

Thanks to everyone who sent patches – you know who you are.

Cheers,
Ann, for the newsletter team

--
You receive this because you subscribed at https://example.com/news.
Unsubscribe: https://example.com/unsubscribe?u=42
";

/// About 2 KB of HTML with the same content and some markup.
const HTML: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Project news</title>
<style>body{font-family:sans-serif;max-width:40em;margin:auto}h2{color:#345}</style>
</head><body>
<p>Hello Zoë,</p>
<p>here is what happened in the project this week.</p>
<ul>
<li><b>Release 2.4 is out.</b> It brings faster rendering, a tolerant parser and
internationalised addresses (<code>jürgen@bücher.example</code> works now).</li>
<li>The café meetup moves to <em>Thursday, 18:00</em>, at the usual place in Köln.</li>
<li>We are looking for reviewers for the new SMTP client: if you have an hour to
spare, please have a look at the <a href="https://example.com/pulls">open pull requests</a>.</li>
</ul>
<h2>Top discussions</h2>
<ol>
<li><a href="https://example.com/t/1">“Should Bcc ever be rendered?”</a> (42 replies):
no, and now the builder makes it impossible.</li>
<li><a href="https://example.com/t/2">“Line length limits in headers”</a> (17 replies):
998 octets is the hard limit, 78 the polite one; we fold at 78.</li>
<li><a href="https://example.com/t/3">“Naïve quoted-printable”</a> (9 replies):
why we escape a leading dot.</li>
</ol>
<p>Thanks to everyone who sent patches – you know who you are.</p>
<p>Cheers,<br>Ann, for the newsletter team</p>
<hr>
<p style="font-size:small;color:#666">You receive this because you subscribed at
<a href="https://example.com/news">example.com/news</a>.
<a href="https://example.com/unsubscribe?u=42">Unsubscribe</a> in one click.</p>
<table role="presentation" width="100%"><tr>
<td><a href="https://example.com/blog">Blog</a></td>
<td><a href="https://example.com/docs">Documentation</a></td>
<td><a href="https://example.com/chat">Chat</a></td>
</tr></table>
</body></html>
"#;

/// The typical newsletter-ish message: From, To, Cc, a subject, text and
/// HTML alternatives, nothing attached.
fn newsletter() -> Email {
    Email::builder()
        .from("Project News <news@example.com>")
        .to("Zoë Martin <zoe@example.com>, bob@example.org")
        .cc(("Carol, Finance", "carol@example.net"))
        .subject("Project news: release 2.4, café meetup, top discussions")
        .text(TEXT)
        .html(HTML)
        .build()
        .expect("valid newsletter")
}

fn typical(c: &mut Criterion) {
    let email = newsletter();
    let bytes = email.to_bytes();
    // The issue's "typical ~3 KB" message: check we really measure that.
    eprintln!(
        "typical email: text {} B, html {} B, rendered {} B",
        TEXT.len(),
        HTML.len(),
        bytes.len()
    );
    if std::env::var_os("DUMP_EMAIL").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&bytes));
    }
    assert!(
        (900..=1200).contains(&TEXT.len()) && (1600..=2400).contains(&HTML.len()),
        "bodies drifted from ~1 KB text + ~2 KB HTML"
    );
    // Headers, MIME framing and quoted-printable escapes add ~35% to the
    // bodies: ~3.6 KB on the wire. Erring large is the conservative side
    // for a time target, as the cost is linear in the size.
    assert!(
        (3000..=4000).contains(&bytes.len()),
        "rendered message is {} bytes, not ~3 KB",
        bytes.len()
    );
    // And that parsing gives the same message back, so parse_3kb does the
    // whole job and not an early error.
    let back = Email::parse(&bytes).expect("parses");
    assert_eq!(back.text(), email.text());
    assert_eq!(back.html(), email.html());
    assert_eq!(back.subject(), email.subject());
    assert_eq!(back.cc().len(), 1);

    c.bench_function("render_3kb", |b| b.iter(|| black_box(&email).to_bytes()));
    c.bench_function("parse_3kb", |b| {
        b.iter(|| Email::parse(black_box(&bytes)).expect("parses"))
    });
    c.bench_function("build_and_render_3kb", |b| {
        b.iter(|| newsletter().to_bytes())
    });
}

/// 10 MB of incompressible-looking bytes (xorshift), so base64 has no
/// shortcut and nothing is accidentally all zeros.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// 10 MB, as in the issue (10 × 10^6 bytes; 10 MiB would be 5% more).
const ATTACHMENT_SIZE: usize = 10_000_000;

fn large_attachment(c: &mut Criterion) {
    let email = Email::builder()
        .from("Reports <reports@example.com>")
        .to("ann@example.com")
        .subject("Monthly export")
        .text("The export is attached.\n")
        .attach(Attachment::new("export.bin", random_bytes(ATTACHMENT_SIZE)))
        .build()
        .expect("valid email");
    let rendered = email.to_bytes().len();
    eprintln!("10 MB attachment: rendered {rendered} B");
    assert!(
        rendered > ATTACHMENT_SIZE * 4 / 3,
        "attachment not rendered"
    );

    c.bench_function("render_10mb_attachment", |b| {
        b.iter(|| black_box(&email).to_bytes())
    });
}

criterion_group!(typical_benches, typical);
criterion_group! {
    name = large_benches;
    // Each iteration takes tens of milliseconds: ten samples are plenty.
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = large_attachment
}
criterion_main!(typical_benches, large_benches);
