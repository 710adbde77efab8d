//! [`Secret`]: a string that never prints, and the redaction of URLs.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What every secret prints as, in `Debug`, `Display` and the effective
/// configuration.
pub const REDACTED: &str = "***";

/// A password, or a URL that may carry one.
///
/// `Debug`, `Display` and `Serialize` all print `"***"`, so a secret cannot
/// reach a log line, a panic message or `email-server check-config` by
/// accident; [`expose`](Secret::expose) is the one way to read it, and is
/// easy to search for.
///
/// ```
/// use email::config::Secret;
///
/// let pw = Secret::new("hunter2");
/// assert_eq!(format!("{pw} {pw:?}"), "*** ***");
/// assert_eq!(pw.expose(), "hunter2");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself. Call this only where the value leaves for its
    /// destination (the SMTP AUTH command, a connection string).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The configuration is serialised only to show it, so a secret serialises
/// as `"***"`; there is deliberately no way to write one back out.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// `serialize_with` for URL fields: shows the URL with its password (in
/// the user-info part or a `password=` query parameter) replaced by `***`,
/// so `check-config` still tells which host and database are used.
pub(super) fn serialize_url<S: Serializer>(
    url: &Option<Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&redact_url(url.expose())),
        None => serializer.serialize_none(),
    }
}

/// `postgres://user:pw@host/db?password=pw` → `postgres://user:***@host/db?password=***`.
///
/// Anything that does not look like `scheme://…` (a key=value connection
/// string, a typo) is redacted whole: when in doubt, show nothing.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return REDACTED.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);

    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    // The last `@` ends the user-info: a password may itself contain `@`
    // when its author forgot to percent-encode it.
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                // `redis://secret@host` is read as a password by some Redis
                // clients, as a user name by others: hide it there. Elsewhere
                // (`postgres://user@host`) it is only a user name.
                None if !userinfo.is_empty()
                    && url[..scheme_end].to_ascii_lowercase().starts_with("redis") =>
                {
                    out.push_str(REDACTED)
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(&redact_query(tail));
    out
}

/// Replaces the value of every query parameter whose name mentions
/// "password" (libpq's `password`, `sslpassword`).
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                format!("{name}={REDACTED}")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}

/// Percent-encodes a user name or password for the user-info part of a
/// URL: everything but RFC 3986 "unreserved" characters.
pub(super) fn encode_userinfo(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_only() {
        let cases = [
            ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:pw@host", "redis://user:***@host"),
            ("redis://pw@host", "redis://***@host"),
            ("rediss://pw@host", "rediss://***@host"),
            ("postgres://user@host/db", "postgres://user@host/db"),
            ("redis://host:6379", "redis://host:6379"),
            (
                "postgres://user:p@ss@db.example/mail?sslmode=require",
                "postgres://user:***@db.example/mail?sslmode=require",
            ),
            (
                "postgres://db/mail?user=u&password=pw#x",
                "postgres://db/mail?user=u&password=***#x",
            ),
            ("host=db password=pw", "***"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn userinfo_is_percent_encoded() {
        assert_eq!(encode_userinfo("a@b:c/d é"), "a%40b%3Ac%2Fd%20%C3%A9");
    }
}
