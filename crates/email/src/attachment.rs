//! Attachments and inline images.
//!
//! ```
//! use email::{Attachment, Email};
//!
//! // An inline image: the HTML refers to it by `cid:`, and the Content-ID is
//! // made for you from the file name.
//! let logo = Attachment::inline("logo.png", vec![0x89, b'P', b'N', b'G']);
//! let html = format!(r#"<p>Hello</p><img src="cid:{}">"#, logo.content_id().unwrap());
//!
//! let email = Email::builder()
//!     .from("shop@example.com")
//!     .to("ann@example.com")
//!     .html(html)
//!     .attach(logo)
//!     .attach(Attachment::new("report.csv", "a,b\n1,2\n").with_content_type("text/csv"))
//!     .build()?;
//! assert_eq!(email.attachments()[0].content_type(), "image/png");
//! # Ok::<(), email::Error>(())
//! ```

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, check_no_ctl};

/// A file carried by an email: an attachment, or an inline part (usually an
/// image the HTML shows by `cid:`).
///
/// The bytes are shared (`Arc`), so cloning an email with a large attachment
/// is cheap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    filename: Option<String>,
    content_type: String,
    // `Arc<Vec<u8>>` rather than `Arc<[u8]>`: wrapping a Vec moves it,
    // converting it to a slice would copy a possibly huge attachment.
    data: Arc<Vec<u8>>,
    content_id: Option<String>,
    inline: bool,
}

impl Attachment {
    /// An attachment from bytes. The content type is guessed from the file
    /// name's extension (`application/octet-stream` when unknown); override
    /// it with [`with_content_type`](Self::with_content_type).
    pub fn new(filename: impl Into<String>, data: impl Into<Vec<u8>>) -> Attachment {
        let filename = filename.into();
        let content_type = guess_type(&filename);
        Attachment {
            filename: Some(filename),
            content_type,
            data: Arc::new(data.into()),
            content_id: None,
            inline: false,
        }
    }

    /// An attachment read to the end from any reader.
    pub fn from_reader(
        filename: impl Into<String>,
        mut reader: impl Read,
    ) -> Result<Attachment, Error> {
        let filename = filename.into();
        let mut data = Vec::new();
        reader
            .read_to_end(&mut data)
            .map_err(|source| Error::Attachment {
                name: filename.clone(),
                source,
            })?;
        Ok(Attachment::new(filename, data))
    }

    /// An attachment read from a file; its name is the file's name.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Attachment, Error> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| Error::Attachment {
            name: path.display().to_string(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".to_owned());
        Ok(Attachment::new(name, data))
    }

    /// An inline part, for an image the HTML body shows with
    /// `<img src="cid:...">`. Its Content-ID is derived from the file name
    /// (see [`content_id`](Self::content_id)); set another with
    /// [`with_content_id`](Self::with_content_id).
    pub fn inline(filename: impl Into<String>, data: impl Into<Vec<u8>>) -> Attachment {
        let mut a = Attachment::new(filename, data);
        let cid = cid_from_name(a.filename.as_deref().unwrap_or("inline"));
        a.content_id = Some(cid);
        a.inline = true;
        a
    }

    /// Overrides the content type, e.g. `"text/csv"` or
    /// `"text/plain; charset=iso-8859-1"`. Validated when the email is built.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Attachment {
        self.content_type = content_type.into();
        self
    }

    /// Sets the Content-ID (without `<>`), for `cid:` references. Validated
    /// when the email is built.
    pub fn with_content_id(mut self, cid: impl Into<String>) -> Attachment {
        self.content_id = Some(cid.into());
        self
    }

    /// The file name, if it has one (a parsed part may not).
    pub fn filename(&self) -> Option<&str> {
        self.filename.as_deref()
    }

    /// The MIME content type, e.g. `image/png`.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The Content-ID without angle brackets: what follows `cid:` in HTML.
    pub fn content_id(&self) -> Option<&str> {
        self.content_id.as_deref()
    }

    /// Whether the part is shown inline rather than offered as a download.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    pub(crate) fn from_parts(
        filename: Option<String>,
        content_type: String,
        data: Vec<u8>,
        content_id: Option<String>,
        inline: bool,
    ) -> Attachment {
        Attachment {
            filename,
            content_type,
            data: Arc::new(data),
            content_id,
            inline,
        }
    }

    /// Checks everything that ends up in a part header.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(name) = &self.filename {
            check_no_ctl("attachment filename", name)?;
        }
        let ct = &self.content_type;
        check_no_ctl("attachment content type", ct)?;
        let essence = ct.split(';').next().unwrap_or("").trim();
        let valid_token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        match essence.split_once('/') {
            Some((t, s))
                if valid_token(t)
                    && valid_token(s)
                    && ct.bytes().all(|b| (0x20..0x7f).contains(&b)) => {}
            _ => {
                return Err(Error::InvalidValue {
                    field: "attachment content type".into(),
                    value: ct.clone(),
                    reason: "expected type/subtype, e.g. application/pdf",
                });
            }
        }
        if essence.eq_ignore_ascii_case("multipart")
            || essence.to_ascii_lowercase().starts_with("multipart/")
        {
            return Err(Error::InvalidValue {
                field: "attachment content type".into(),
                value: ct.clone(),
                reason: "an attachment cannot be multipart",
            });
        }
        if let Some(cid) = &self.content_id {
            check_no_ctl("content id", cid)?;
            if cid.is_empty()
                || !cid
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'<' && b != b'>')
            {
                return Err(Error::InvalidValue {
                    field: "content id".into(),
                    value: cid.clone(),
                    reason: "must be printable ASCII without spaces or <>",
                });
            }
        }
        Ok(())
    }
}

fn guess_type(filename: &str) -> String {
    mime_guess::from_path(filename)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// A Content-ID from a file name: ASCII letters, digits, `.`, `-` and `_`
/// are kept, anything else becomes `_`, so `cid:` URLs need no escaping.
fn cid_from_name(name: &str) -> String {
    let cid: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cid.is_empty() { "inline".into() } else { cid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_and_overrides_types() {
        assert_eq!(
            Attachment::new("a.pdf", b"x".to_vec()).content_type(),
            "application/pdf"
        );
        assert_eq!(
            Attachment::new("a.unknownext", b"x".to_vec()).content_type(),
            "application/octet-stream"
        );
        assert_eq!(
            Attachment::new("a.pdf", b"x".to_vec())
                .with_content_type("text/plain")
                .content_type(),
            "text/plain"
        );
    }

    #[test]
    fn inline_content_ids_are_url_safe() {
        assert_eq!(
            Attachment::inline("my logo é.png", b"x".to_vec()).content_id(),
            Some("my_logo__.png")
        );
    }

    #[test]
    fn rejects_bad_content_types_and_names() {
        for bad in [
            "",
            "image",
            "image/",
            "a b/c",
            "multipart/mixed",
            "text/plain\r\nBcc: x",
        ] {
            let a = Attachment::new("x", b"".to_vec()).with_content_type(bad);
            assert!(a.validate().is_err(), "{bad:?}");
        }
        let e = Attachment::new("evil\r\n.txt", b"".to_vec())
            .validate()
            .expect_err("CRLF");
        assert_eq!(e.field(), "attachment filename");
    }

    #[test]
    fn reader_and_path_errors_name_the_file() {
        let e = Attachment::from_path("/nonexistent/report.pdf").expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/report.pdf"), "{e}");
        let a = Attachment::from_reader("r.txt", &b"hello"[..]).expect("reader");
        assert_eq!(a.data(), b"hello");
        assert_eq!(a.content_type(), "text/plain");
    }
}
