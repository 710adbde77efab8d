//! Errors. Every build error names the field it is about ([`Error::field`]),
//! so a caller can point at the offending form input.

use std::io;

/// Why an email could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address that does not parse or validate.
    #[error("{field}: invalid address {value:?}: {reason}")]
    InvalidAddress {
        /// The field the address was given for (`from`, `to`, `cc`, ...).
        field: String,
        /// The text that was rejected.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// CR, LF or NUL in a value that ends up in a header: the classic header
    /// injection. Rejected, never silently stripped.
    #[error("{field}: contains {what}, which is not allowed in a header")]
    ForbiddenCharacter {
        /// The field that contained it.
        field: String,
        /// `"CR"`, `"LF"` or `"NUL"`.
        what: &'static str,
    },
    /// A custom header name that is empty, not printable ASCII, or contains `:`.
    #[error("header name {name:?}: {reason}")]
    InvalidHeaderName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A custom header that would override one the library generates or
    /// owns (From, Subject, Message-ID, Content-Type, ...). Use the builder
    /// method for that header instead.
    #[error("header {name}: set by the builder; use its method instead of a custom header")]
    ReservedHeader {
        /// The rejected name.
        name: String,
    },
    /// A value that does not have the required shape (a Message-ID without
    /// `@`, a content type without `/`, ...).
    #[error("{field}: invalid value {value:?}: {reason}")]
    InvalidValue {
        /// The field.
        field: String,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The email has no From address.
    #[error("from: an email needs a From address")]
    MissingFrom,
    /// The email has no To, Cc or Bcc recipient.
    #[error("to: an email needs at least one recipient (to, cc or bcc)")]
    NoRecipients,
    /// An attachment could not be read.
    #[error("attachment {name:?}: {source}")]
    Attachment {
        /// The file name or path.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The name of the field the error is about: `from`, `to`, `subject`,
    /// `header X-Foo`, `attachment`, ...
    pub fn field(&self) -> &str {
        match self {
            Error::InvalidAddress { field, .. }
            | Error::ForbiddenCharacter { field, .. }
            | Error::InvalidValue { field, .. } => field,
            Error::InvalidHeaderName { .. } | Error::ReservedHeader { .. } => "header",
            Error::MissingFrom => "from",
            Error::NoRecipients => "to",
            Error::Attachment { .. } => "attachment",
        }
    }
}

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input is empty (or only whitespace).
    #[error("empty message")]
    Empty,
    /// The input has no header section that could be recognised.
    #[error("not an RFC 5322 message: {0}")]
    NotAMessage(&'static str),
    /// A line of the header section is neither a header field nor the
    /// continuation of one (see [`Email::check_header_section`](crate::Email::check_header_section)).
    #[error("not an RFC 5322 message: header line {line} {reason}")]
    BadHeaderLine {
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reading the input failed.
    #[error("reading the message: {0}")]
    Io(#[from] io::Error),
    /// The message is larger than the reader limit.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
}

/// Rejects CR, LF and NUL, naming `field`.
pub(crate) fn check_no_ctl(field: &str, value: &str) -> Result<(), Error> {
    let what = value.bytes().find_map(|b| match b {
        b'\r' => Some("CR"),
        b'\n' => Some("LF"),
        0 => Some("NUL"),
        _ => None,
    });
    match what {
        Some(what) => Err(Error::ForbiddenCharacter {
            field: field.to_owned(),
            what,
        }),
        None => Ok(()),
    }
}
