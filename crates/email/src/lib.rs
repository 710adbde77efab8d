//! # email: compose, render and parse email
//!
//! A humane builder for email messages that cannot build a broken or
//! dangerous one, an RFC 5322 / MIME renderer, and a tolerant parser that
//! reads messages back into the same type.
//!
//! ```
//! use email::Email;
//!
//! let email = Email::builder()
//!     .from("Ann <ann@example.com>")
//!     .to("bob@example.com, Zoë <zoe@example.com>")
//!     .bcc("audit@example.com")
//!     .subject("Quarterly report")
//!     .text("Hi all,\nthe report is attached.")
//!     .html("<p>Hi all,</p><p>the report is attached.</p>")
//!     .attach(email::Attachment::new("report.csv", "q,revenue\n3,42\n"))
//!     .build()?;
//!
//! let bytes = email.to_bytes();                // RFC 5322, CRLF, Bcc left out
//! let back = Email::parse(&bytes).unwrap();    // and back again
//! assert_eq!(back.subject(), Some("Quarterly report"));
//! assert_eq!(back.attachments()[0].data(), b"q,revenue\n3,42\n");
//! assert!(back.bcc().is_empty());
//!
//! let envelope = email.envelope().unwrap();   // what SMTP needs
//! assert_eq!(envelope.rcpt_to.len(), 3);      // to + cc + bcc, de-duplicated
//! # Ok::<(), email::Error>(())
//! ```
//!
//! ## Features
//!
//! | Feature | How |
//! |---|---|
//! | From, To, Cc, Bcc, Reply-To, Sender | [`EmailBuilder::from`] & co., as `"Name <a@b>"` strings, lists, pairs or [`Mailbox`] |
//! | Subject, text and HTML bodies | [`EmailBuilder::subject`], [`text`](EmailBuilder::text), [`html`](EmailBuilder::html) |
//! | Attachments | [`Attachment::new`], [`from_reader`](Attachment::from_reader), [`from_path`](Attachment::from_path), [`EmailBuilder::attach_file`] |
//! | Inline images (`cid:`) | [`Attachment::inline`], [`EmailBuilder::inline_image`] |
//! | Read receipt | [`EmailBuilder::read_receipt`] (`Disposition-Notification-To`) |
//! | Threading | [`EmailBuilder::in_reply_to`], [`references`](EmailBuilder::references) |
//! | One-click unsubscribe | [`EmailBuilder::one_click_unsubscribe`] (RFC 8058), [`list_unsubscribe`](EmailBuilder::list_unsubscribe) |
//! | Custom headers | [`EmailBuilder::header`] |
//! | SMTP envelope | [`Email::envelope`] |
//! | Render | [`Email::to_bytes`] |
//! | Parse | [`Email::parse`], [`Email::from_reader`] |
//!
//! ## Safety
//!
//! Everything is validated in [`EmailBuilder::build`], and every error names
//! its field ([`Error::field`]): invalid addresses, CR/LF/NUL anywhere in a
//! header, bad header names, custom headers that would override generated
//! ones, missing From, no recipients. Internationalised domains are converted
//! to ASCII; non-ASCII headers use RFC 2047 and non-ASCII file names RFC
//! 2231. Rendered lines are CRLF-terminated, never longer than 998 octets,
//! and never a lone `.`.
//!
//! ## Layout
//!
//! - `address`: [`Address`] and [`Mailbox`]: parsing, validation, IDN.
//! - `attachment`: [`Attachment`]: files and inline images.
//! - `builder`: [`EmailBuilder`]: composition and validation.
//! - `email`: [`Email`] and [`Envelope`]: the validated message.
//! - `render`: the MIME tree and the bytes.
//! - `encode`: RFC 2047, RFC 2231, quoted-printable, base64, folding.
//! - `parse`: bytes back into an [`Email`].
//! - `error`: [`Error`] and [`ParseError`].

mod address;
mod attachment;
mod builder;
pub mod config;
#[allow(clippy::module_inception)]
mod email;
mod encode;
mod error;
mod mailer;
mod parse;
pub mod queue;
pub mod record;
mod render;

pub use address::{Address, IntoMailboxes, Mailbox};
pub use attachment::Attachment;
pub use builder::EmailBuilder;
pub use email::{Email, Envelope};
pub use error::{Error, ParseError};
pub use mailer::{FlushReport, IntoDelay, Mailer, MailerError, SendOptions};
pub use parse::DEFAULT_READ_LIMIT;
pub use queue::EmailId;
