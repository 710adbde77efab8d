//! Parses a message and prints what it contains.
//!
//! ```sh
//! cargo run -p email --example compose -- /tmp/demo.eml
//! cargo run -p email --example inspect -- /tmp/demo.eml
//! cargo run -p email --example inspect < /tmp/demo.eml
//! ```

use email::Email;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let email = match std::env::args().nth(1) {
        Some(path) => {
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            Email::from_reader(file)?
        }
        None => Email::from_reader(std::io::stdin().lock())?,
    };
    let list = |v: &[email::Mailbox]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("From:       {}", list(email.from()));
    println!("To:         {}", list(email.to()));
    println!("Cc:         {}", list(email.cc()));
    println!("Subject:    {}", email.subject().unwrap_or("(none)"));
    println!("Message-ID: {}", email.message_id().unwrap_or("(none)"));
    if let Some(date) = email.date() {
        println!("Date:       {date}");
    }
    for (name, value) in email.headers() {
        println!("{name}: {value}");
    }
    println!("\n--- text ---\n{}", email.text().unwrap_or("(none)"));
    println!("--- html ---\n{}", email.html().unwrap_or("(none)"));
    for a in email.attachments() {
        println!(
            "attachment: {} ({}, {} bytes{})",
            a.filename().unwrap_or("(unnamed)"),
            a.content_type(),
            a.data().len(),
            a.content_id()
                .map(|c| format!(", inline cid:{c}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
