//! Addresses and mailboxes: parsing, validation and IDN conversion.
//!
//! A [`Mailbox`] is an optional display name plus an [`Address`]. Both are
//! validated when they are created, so a value of these types is always safe
//! to put into a header or an SMTP envelope.
//!
//! ```
//! use email::Mailbox;
//!
//! let m: Mailbox = "Ann Smith <ann@example.com>".parse()?;
//! assert_eq!(m.name(), Some("Ann Smith"));
//! assert_eq!(m.address().as_str(), "ann@example.com");
//!
//! // Internationalised domains are converted to their ASCII (punycode) form.
//! let m: Mailbox = "Jürgen <j@bücher.example>".parse()?;
//! assert_eq!(m.address().domain(), "xn--bcher-kva.example");
//! assert_eq!(m.name(), Some("Jürgen"));
//! # Ok::<(), email::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, check_no_ctl};

/// Characters allowed unquoted in an RFC 5322 atom (besides ASCII letters and digits).
const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b)
}

/// An email address (`local@domain`), validated, with the domain in ASCII form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// `local@domain`, the domain lower-cased and converted to ASCII.
    full: String,
    /// Byte offset of the `@` in `full`.
    at: usize,
}

impl Address {
    /// Parses and validates a bare address such as `user@example.com`.
    ///
    /// The local part must be a dot-atom or a quoted string of ASCII
    /// characters (non-ASCII local parts would need SMTPUTF8). The domain may
    /// be internationalised; it is converted to its ASCII form. Address
    /// literals such as `user@[192.0.2.1]` are accepted.
    pub fn new(addr: &str) -> Result<Address, Error> {
        Self::parse_for("address", addr)
    }

    pub(crate) fn parse_for(field: &str, addr: &str) -> Result<Address, Error> {
        let bad = |reason: &'static str| Error::InvalidAddress {
            field: field.to_owned(),
            value: addr.to_owned(),
            reason,
        };
        check_no_ctl(field, addr)?;
        let at = addr.rfind('@').ok_or_else(|| bad("missing '@'"))?;
        let (local, domain) = (&addr[..at], &addr[at + 1..]);
        validate_local(local).map_err(bad)?;
        let domain = normalise_domain(domain).map_err(bad)?;
        if local.len() + 1 + domain.len() > 254 {
            return Err(bad("address longer than 254 characters"));
        }
        let mut full = String::with_capacity(local.len() + 1 + domain.len());
        full.push_str(local);
        full.push('@');
        full.push_str(&domain);
        Ok(Address { full, at })
    }

    /// The whole address, `local@domain`, as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        &self.full[..self.at]
    }

    /// The domain, in ASCII form (IDN converted to punycode, lower case).
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// A key for de-duplicating envelope recipients: the local part is case
    /// sensitive by RFC 5321, the domain is not (and is already lower-cased).
    pub(crate) fn envelope_key(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::new(s)
    }
}

fn validate_local(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.len() > 64 {
        return Err("local part longer than 64 characters");
    }
    let b = local.as_bytes();
    if b[0] == b'"' {
        if b.len() < 2 || b[b.len() - 1] != b'"' {
            return Err("unterminated quoted local part");
        }
        let inner = &b[1..b.len() - 1];
        let mut i = 0;
        while i < inner.len() {
            match inner[i] {
                b'\\' => {
                    if i + 1 >= inner.len() || !(0x20..0x7f).contains(&inner[i + 1]) {
                        return Err("bad escape in quoted local part");
                    }
                    i += 2;
                    continue;
                }
                b'"' => return Err("unescaped '\"' in quoted local part"),
                0x20..=0x7e => {}
                _ => return Err("non-ASCII or control character in local part"),
            }
            i += 1;
        }
        return Ok(());
    }
    if !local.is_ascii() {
        return Err("non-ASCII local part (SMTPUTF8 is not supported)");
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err("empty atom in local part (leading, trailing or double '.')");
        }
        if !atom.bytes().all(is_atext) {
            return Err("invalid character in local part");
        }
    }
    Ok(())
}

fn normalise_domain(domain: &str) -> Result<String, &'static str> {
    if domain.is_empty() {
        return Err("empty domain");
    }
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or("unterminated address literal")?;
        let ok = match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(domain.to_owned())
        } else {
            Err("invalid address literal")
        };
    }
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(domain).map_err(|_| "invalid internationalised domain")?
    };
    if ascii.len() > 253 {
        return Err("domain longer than 253 characters");
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("empty label in domain");
        }
        if label.len() > 63 {
            return Err("domain label longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain label starts or ends with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("invalid character in domain");
        }
    }
    Ok(ascii)
}

/// A display name plus an address, as in `Ann Smith <ann@example.com>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    name: Option<String>,
    address: Address,
}

impl Mailbox {
    /// A mailbox from an optional display name and a validated address.
    ///
    /// The name may be any Unicode text without CR, LF or NUL; an empty name
    /// is the same as none.
    pub fn new(name: Option<&str>, address: Address) -> Result<Mailbox, Error> {
        Self::with_name_for("address", name, address)
    }

    fn with_name_for(field: &str, name: Option<&str>, address: Address) -> Result<Mailbox, Error> {
        let name = match name.map(str::trim) {
            Some("") | None => None,
            Some(n) => {
                check_no_ctl(field, n)?;
                Some(n.to_owned())
            }
        };
        Ok(Mailbox { name, address })
    }

    /// The display name, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Parses one mailbox, `Name <user@host>`, `"Quoted, Name" <user@host>`,
    /// `<user@host>` or `user@host`, naming `field` in any error.
    pub(crate) fn parse_for(field: &str, s: &str) -> Result<Mailbox, Error> {
        check_no_ctl(field, s)?;
        let s = s.trim();
        let bad = |reason: &'static str| Error::InvalidAddress {
            field: field.to_owned(),
            value: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty address"));
        }
        if !s.ends_with('>') {
            return Ok(Mailbox {
                name: None,
                address: Address::parse_for(field, s)?,
            });
        }
        let open = find_angle(s).ok_or_else(|| bad("'>' without '<'"))?;
        let addr = &s[open + 1..s.len() - 1];
        let address = Address::parse_for(field, addr.trim())?;
        let raw_name = s[..open].trim();
        let name = unquote_phrase(raw_name).map_err(bad)?;
        Self::with_name_for(field, Some(&name), address)
    }
}

/// Finds the `<` that opens the address, ignoring any inside a quoted name.
fn find_angle(s: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    let mut found = None;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' if !in_quote => found = Some(i),
            _ => {}
        }
    }
    found
}

fn unquote_phrase(raw: &str) -> Result<String, &'static str> {
    let Some(inner) = raw.strip_prefix('"') else {
        return Ok(raw.to_owned());
    };
    let inner = inner.strip_suffix('"').ok_or("unterminated quoted name")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("dangling '\\' in quoted name")?),
            '"' => return Err("unescaped '\"' inside quoted name"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Splits an address list at the commas that are not inside quotes or `<>`.
pub(crate) fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quote, mut escaped, mut depth, mut start) = (false, false, 0u32, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' if !in_quote => depth += 1,
            '>' if !in_quote => depth = depth.saturating_sub(1),
            ',' if !in_quote && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

impl fmt::Display for Mailbox {
    /// Formats as a human would write it; header encoding is the renderer's job.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "{}", self.address),
            Some(n)
                if n.chars()
                    .all(|c| !c.is_ascii() || is_atext(c as u8) || c == ' ') =>
            {
                write!(f, "{n} <{}>", self.address)
            }
            Some(n) => {
                f.write_str("\"")?;
                for c in n.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                write!(f, "\" <{}>", self.address)
            }
        }
    }
}

impl FromStr for Mailbox {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mailbox::parse_for("address", s)
    }
}

impl From<Address> for Mailbox {
    fn from(address: Address) -> Self {
        Mailbox {
            name: None,
            address,
        }
    }
}

/// Anything the builder accepts where an address list is expected: a string
/// (one address, or several separated by commas), a [`Mailbox`], an
/// [`Address`], a `(name, address)` pair, or a `Vec` / array of those.
pub trait IntoMailboxes {
    /// Converts into validated mailboxes, naming `field` in any error.
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error>;
}

impl IntoMailboxes for &str {
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error> {
        let parts = split_list(self);
        if parts.is_empty() {
            return Err(Error::InvalidAddress {
                field: field.to_owned(),
                value: self.to_owned(),
                reason: "empty address",
            });
        }
        parts
            .into_iter()
            .map(|p| Mailbox::parse_for(field, p))
            .collect()
    }
}

impl IntoMailboxes for String {
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error> {
        self.as_str().into_mailboxes(field)
    }
}

impl IntoMailboxes for &String {
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error> {
        self.as_str().into_mailboxes(field)
    }
}

impl IntoMailboxes for Mailbox {
    fn into_mailboxes(self, _field: &str) -> Result<Vec<Mailbox>, Error> {
        Ok(vec![self])
    }
}

impl IntoMailboxes for &Mailbox {
    fn into_mailboxes(self, _field: &str) -> Result<Vec<Mailbox>, Error> {
        Ok(vec![self.clone()])
    }
}

impl IntoMailboxes for Address {
    fn into_mailboxes(self, _field: &str) -> Result<Vec<Mailbox>, Error> {
        Ok(vec![self.into()])
    }
}

impl IntoMailboxes for (&str, &str) {
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error> {
        let address = Address::parse_for(field, self.1.trim())?;
        Ok(vec![Mailbox::with_name_for(field, Some(self.0), address)?])
    }
}

impl<T: IntoMailboxes> IntoMailboxes for Vec<T> {
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error> {
        let mut out = Vec::new();
        for item in self {
            out.extend(item.into_mailboxes(field)?);
        }
        Ok(out)
    }
}

impl<T: IntoMailboxes, const N: usize> IntoMailboxes for [T; N] {
    fn into_mailboxes(self, field: &str) -> Result<Vec<Mailbox>, Error> {
        Vec::from(self).into_mailboxes(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        s.parse().expect(s)
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(mb("a@example.com").to_string(), "a@example.com");
        assert_eq!(mb("<a@example.com>").name(), None);
        assert_eq!(mb("Ann <a@Example.COM>").to_string(), "Ann <a@example.com>");
        let q = mb(r#""Smith, Ann \"A\"" <a@example.com>"#);
        assert_eq!(q.name(), Some(r#"Smith, Ann "A""#));
        assert_eq!(q.to_string(), r#""Smith, Ann \"A\"" <a@example.com>"#);
        assert_eq!(mb("x@[192.0.2.1]").address().domain(), "[192.0.2.1]");
        assert_eq!(mb("x@localhost").address().domain(), "localhost");
        assert_eq!(
            mb(r#""a b"@example.com"#).address().local_part(),
            r#""a b""#
        );
    }

    #[test]
    fn converts_idn_domains() {
        let m = mb("Zoë <zoe@例え.jp>");
        assert_eq!(m.address().domain(), "xn--r8jz45g.jp");
        assert_eq!(m.name(), Some("Zoë"));
    }

    #[test]
    fn rejects_invalid_addresses() {
        for bad in [
            "",
            "plain",
            "a@",
            "@b.com",
            "a..b@c.com",
            ".a@c.com",
            "a b@c.com",
            "a@b..com",
            "a@-b.com",
            "a@b_c!.com",
            "ü@example.com",
            "Ann <a@b.com",
            "a@[300.1.1.1]",
            "x\r\nBcc: evil@example.com <a@b.com>",
        ] {
            let err = bad.parse::<Mailbox>().expect_err(bad);
            assert_eq!(err.field(), "address", "{bad}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(long_local.parse::<Mailbox>().is_err());
    }

    #[test]
    fn lists_split_outside_quotes() {
        let v = r#""Doe, John" <j@x.org>, b@y.org"#.into_mailboxes("to").expect("list");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name(), Some("Doe, John"));
        let err = "a@x.org, nope".into_mailboxes("cc").expect_err("bad");
        assert_eq!(err.field(), "cc");
    }
}
