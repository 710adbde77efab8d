//! Composes an email with every feature, renders it, and parses it back.
//!
//! ```sh
//! cargo run -p email --example compose            # prints the message and a summary
//! cargo run -p email --example compose -- out.eml # also writes it to a file
//! ```

use email::{Attachment, Email};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let logo = Attachment::inline("logo.png", tiny_png());
    let html = format!(
        "<h1>Grüße!</h1><p>Your invoice is attached.</p><img src=\"cid:{}\" alt=\"logo\">",
        logo.content_id().unwrap_or_default()
    );
    let email = Email::builder()
        .from("Zoë's Shop <shop@bücher.example>")
        .reply_to("support@example.com")
        .to("Ann <ann@example.com>, bob@example.com")
        .cc(("Carol, Finance", "carol@example.com"))
        .bcc("audit@example.com")
        .subject("Ihre Rechnung – invoice #42")
        .text("Grüße!\n\nYour invoice is attached.\n")
        .html(html)
        .attach(logo)
        .attach(Attachment::new(
            "Rechnung März.pdf",
            b"%PDF-1.4 not really".to_vec(),
        ))
        .read_receipt("shop@example.com")
        .one_click_unsubscribe("https://example.com/unsubscribe?u=42")
        .header("X-Campaign", "invoices")
        .build()?;

    let bytes = email.to_bytes();
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(&path, &bytes)?;
        eprintln!("wrote {path}");
    }
    println!("{}", String::from_utf8_lossy(&bytes));

    let parsed = Email::parse(&bytes)?;
    let envelope = email.envelope().ok_or("no envelope")?;
    println!("---- parsed back ----");
    println!(
        "from:        {:?}",
        parsed
            .from()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    println!(
        "to:          {:?}",
        parsed
            .to()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    println!("subject:     {:?}", parsed.subject());
    println!("text:        {:?}", parsed.text());
    for a in parsed.attachments() {
        println!(
            "attachment:  {:?} {} {} bytes inline={} cid={:?}",
            a.filename(),
            a.content_type(),
            a.data().len(),
            a.is_inline(),
            a.content_id()
        );
    }
    println!("MAIL FROM:   {}", envelope.mail_from);
    println!(
        "RCPT TO:     {:?}",
        envelope
            .rcpt_to
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// A 1x1 transparent PNG.
fn tiny_png() -> Vec<u8> {
    vec![
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52, 0,
        0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89, 0, 0, 0, 0x0d, 0x49, 0x44,
        0x41, 0x54, 0x78, 0x9c, 0x63, 0, 1, 0, 0, 5, 0, 1, 0x0d, 0x0a, 0x2d, 0xb4, 0, 0, 0, 0,
        0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ]
}
