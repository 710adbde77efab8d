//! The queue record, version 1: one email as it travels through a queue
//! that is not the store (the Redis stream today), in a form any language
//! can write.
//!
//! This file owns the format end to end: [`encode`] and [`decode`] sit side
//! by side, and `docs/queue-record.md` is its user guide for producers in
//! other languages. A record is one JSON object:
//!
//! ```json
//! {"v":1,"id":"01890a5d-ac96-774b-bcce-b302099a8057","created_at":1700000000000,
//!  "not_before":1700000300000,
//!  "envelope":{"from":"shop@example.com","to":["ann@example.com"]},
//!  "message":"RnJvbTogc2hvcEBleGFtcGxlLmNvbQ0K...",
//!  "idempotency_key":"order-42","priority":5,"max_fails":3,"max_time_ms":3600000,
//!  "tags":{"campaign":"spring"},"subject":"Your order","message_id":"abc@example.com"}
//! ```
//!
//! `docs/queue-record.md` gives each field's type and rules, the Redis keys,
//! the dead-letter format and a Python producer. In short: `v`, `id`
//! (UUIDv7), `created_at` and `not_before` (Unix ms), `envelope` (`from`,
//! `to`; Bcc lives only here) and `message` (base64 of the RFC 5322 bytes)
//! are required; `idempotency_key`, `priority`, `max_fails`, `max_time_ms`,
//! `tags` (any JSON), `subject` and `message_id` are optional.
//!
//! [`decode`] checks everything and names the field it rejects, because a
//! record that does not decode goes to a dead-letter stream with that
//! reason instead of into the store: the reason is what an operator reads.
//! Unknown fields are errors too (a misspelt `max_fail` must not silently
//! mean "default"); a newer format gets a new `v`.
//!
//! ```
//! use email::record;
//!
//! let json = br#"{"v":1,"id":"01890a5d-ac96-774b-bcce-b302099a8057",
//!   "created_at":1700000000000,"not_before":1700000000000,
//!   "envelope":{"from":"a@example.com","to":["bob"]},"message":"U3ViamVjdDogaGkNCg0KaGk="}"#;
//! let err = record::decode(json).unwrap_err();
//! assert_eq!(err.field(), Some("envelope.to[0]"));
//! assert_eq!(err.to_string(), r#"envelope.to[0]: invalid address "bob": missing '@'"#);
//! ```

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use crate::address::Address;
use crate::email::Email;
use crate::queue::Queued;

/// The version [`encode`] writes and [`decode`] reads.
pub const VERSION: i64 = 1;

/// The largest message, in bytes (as decoded from base64): 64 MiB, the
/// same bound as [`Email::from_reader`](crate::Email::from_reader).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest record: a maximal message in base64 plus 1 MiB for the rest.
pub const MAX_RECORD_BYTES: usize = MAX_MESSAGE_BYTES / 3 * 4 + 4 + (1 << 20);

/// The most envelope recipients one record may carry.
pub const MAX_RECIPIENTS: usize = 10_000;

/// The longest `idempotency_key`, in bytes (it becomes part of a Redis key).
pub const MAX_KEY_BYTES: usize = 512;

/// The longest `subject` or `message_id`, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 << 10;

/// The longest `tags`, as compact JSON text.
pub const MAX_TAGS_BYTES: usize = 64 << 10;

/// 9999-12-31T23:59:59.999Z: later timestamps are typos (seconds given as
/// microseconds, say), not schedules.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Why a record was rejected. [`field`](RecordError::field) names the
/// field, for the dead-letter reason and for the producer's logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is bigger than [`MAX_RECORD_BYTES`].
    #[error("the record is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a JSON object at all.
    #[error("the record is not a JSON object: {0}")]
    NotJson(String),
    /// `v` is not 1.
    #[error("v: record version {0} is not supported (this build reads version 1)")]
    Version(String),
    /// A required field is absent.
    #[error("{field}: required but missing")]
    Missing {
        /// The field, e.g. `envelope.to`.
        field: &'static str,
    },
    /// A field is present but wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `envelope.to[2]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A field this version does not define.
    #[error("{field}: unknown field (misspelt, or from a newer record version?)")]
    Unknown {
        /// The field, e.g. `max_fail`.
        field: String,
    },
}

impl RecordError {
    /// The field at fault, when one is: `"v"`, `"envelope.to[2]"`, ….
    pub fn field(&self) -> Option<&str> {
        match self {
            RecordError::TooLarge { .. } | RecordError::NotJson(_) => None,
            RecordError::Version(_) => Some("v"),
            RecordError::Missing { field } => Some(field),
            RecordError::Invalid { field, .. } | RecordError::Unknown { field } => Some(field),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RecordError {
    RecordError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Writes `q` as a v1 record (compact JSON, UTF-8).
///
/// `tags` that are valid JSON are embedded as that JSON; any other text is
/// embedded as a JSON string, so nothing is lost.
pub fn encode(q: &Queued) -> Vec<u8> {
    // Written field by field rather than through a `serde_json::Value`:
    // no map, no copy of the message, and the base64 (which never needs
    // JSON escaping) goes straight into the output.
    let mut out = Vec::with_capacity(q.raw.len().div_ceil(3) * 4 + 512);
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(VERSION.to_string().as_bytes());
    let mut id = uuid::Uuid::encode_buffer();
    json_field(&mut out, "id", &&*q.id.hyphenated().encode_lower(&mut id));
    json_field(&mut out, "created_at", &q.created_at_ms);
    json_field(&mut out, "not_before", &q.due_at_ms);
    out.extend_from_slice(b",\"envelope\":{\"from\":");
    json_value(&mut out, &q.mail_from);
    json_field(&mut out, "to", &q.rcpt_to);
    out.extend_from_slice(b"},\"message\":\"");
    let at = out.len();
    out.resize(at + q.raw.len().div_ceil(3) * 4, 0);
    let n = BASE64
        .encode_slice(&q.raw, &mut out[at..])
        .unwrap_or_default();
    out.truncate(at + n);
    out.push(b'"');
    if let Some(k) = &q.idempotency_key {
        json_field(&mut out, "idempotency_key", k);
    }
    if q.priority != 0 {
        json_field(&mut out, "priority", &q.priority);
    }
    if let Some(n) = q.max_fails {
        json_field(&mut out, "max_fails", &n);
    }
    if let Some(ms) = q.max_time_ms {
        json_field(&mut out, "max_time_ms", &ms);
    }
    if let Some(t) = &q.tags {
        let value = serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone()));
        json_field(&mut out, "tags", &value);
    }
    if let Some(s) = &q.subject {
        json_field(&mut out, "subject", s);
    }
    if let Some(id) = &q.message_id {
        json_field(&mut out, "message_id", id);
    }
    out.push(b'}');
    out
}

/// Appends `,"name":value`.
fn json_field(out: &mut Vec<u8>, name: &str, value: &impl serde::Serialize) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    json_value(out, value);
}

/// Appends `value` as JSON. Strings, numbers, lists of strings and
/// parsed JSON cannot fail to serialise.
fn json_value(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(&mut *out, value).unwrap_or_default();
}

/// The fields a v1 record may have; anything else is [`RecordError::Unknown`].
const FIELDS: [&str; 13] = [
    "v",
    "id",
    "created_at",
    "not_before",
    "envelope",
    "message",
    "idempotency_key",
    "priority",
    "max_fails",
    "max_time_ms",
    "tags",
    "subject",
    "message_id",
];

/// Reads and validates a record. Addresses come back normalised (the
/// domain in lower-case ASCII), recipients de-duplicated, and `subject` /
/// `message_id` filled in from the message when the record omits them.
pub fn decode(bytes: &[u8]) -> Result<Queued, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge {
            size: bytes.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    let mut m: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| RecordError::NotJson(e.to_string()))?;
    // The version first: a v2 record should say "version 2", not list the
    // fields v1 does not know.
    match m.get("v") {
        None => return Err(RecordError::Missing { field: "v" }),
        Some(v) if v.as_i64() == Some(VERSION) => {}
        Some(v) => return Err(RecordError::Version(v.to_string())),
    }
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(RecordError::Unknown { field: k.clone() });
    }
    let id = take_str(&mut m, "id")?;
    let id = uuid::Uuid::parse_str(&id).map_err(|e| invalid("id", e.to_string()))?;
    if id.get_version_num() != 7 {
        return Err(invalid(
            "id",
            format!("must be a UUIDv7, this is version {}", id.get_version_num()),
        ));
    }
    let created_at_ms = time(&m, "created_at")?;
    let due_at_ms = time(&m, "not_before")?;
    let (mail_from, rcpt_to) = envelope(m.remove("envelope"))?;
    let raw = message(&take_str(&mut m, "message")?)?;
    let parsed = Email::parse(&raw).map_err(|e| invalid("message", e.to_string()))?;
    let idempotency_key = opt_str(&mut m, "idempotency_key", MAX_KEY_BYTES)?;
    if idempotency_key.as_ref().is_some_and(|k| k.is_empty()) {
        return Err(invalid("idempotency_key", "must not be empty"));
    }
    // A key becomes part of a Redis key: no control characters. (Subject
    // and Message-ID may have them, a tab say, as the message's own
    // headers may, and as the Mailer writes them.)
    if idempotency_key
        .as_ref()
        .is_some_and(|k| k.chars().any(char::is_control))
    {
        return Err(invalid("idempotency_key", "contains a control character"));
    }
    let priority = match opt_int(&m, "priority")? {
        None => 0,
        Some(p) => i32::try_from(p).map_err(|_| invalid("priority", "out of range (32-bit)"))?,
    };
    let max_fails = match opt_int(&m, "max_fails")? {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| invalid("max_fails", "out of range"))?),
    };
    let max_time_ms = opt_int(&m, "max_time_ms")?;
    if max_time_ms.is_some_and(|ms| ms < 0) {
        return Err(invalid("max_time_ms", "must not be negative"));
    }
    let tags = match m.remove("tags") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let text = v.to_string();
            if text.len() > MAX_TAGS_BYTES {
                return Err(invalid(
                    "tags",
                    format!("longer than {MAX_TAGS_BYTES} bytes"),
                ));
            }
            Some(text)
        }
    };
    let subject =
        opt_str(&mut m, "subject", MAX_TEXT_BYTES)?.or_else(|| parsed.subject().map(str::to_owned));
    let message_id = opt_str(&mut m, "message_id", MAX_TEXT_BYTES)?
        .or_else(|| parsed.message_id().map(str::to_owned));
    Ok(Queued {
        id,
        created_at_ms,
        due_at_ms,
        mail_from,
        rcpt_to,
        raw,
        subject,
        message_id,
        idempotency_key,
        priority,
        max_fails,
        max_time_ms,
        tags,
    })
}

fn take_str(m: &mut Map<String, Value>, field: &'static str) -> Result<String, RecordError> {
    match m.remove(field) {
        None | Some(Value::Null) => Err(RecordError::Missing { field }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(field, format!("expected a string, got {other}"))),
    }
}

fn opt_str(
    m: &mut Map<String, Value>,
    field: &'static str,
    limit: usize,
) -> Result<Option<String>, RecordError> {
    match m.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > limit => {
            Err(invalid(field, format!("longer than {limit} bytes")))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(field, format!("expected a string, got {other}"))),
    }
}

fn opt_int(m: &Map<String, Value>, field: &'static str) -> Result<Option<i64>, RecordError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            invalid(
                field,
                format!("expected an integer, got {v} (floats are not accepted)"),
            )
        }),
    }
}

fn time(m: &Map<String, Value>, field: &'static str) -> Result<i64, RecordError> {
    let ms = opt_int(m, field)?.ok_or(RecordError::Missing { field })?;
    if !(0..=MAX_TIME_MS).contains(&ms) {
        return Err(invalid(
            field,
            format!("{ms} is not a Unix time in milliseconds between 1970 and 9999"),
        ));
    }
    Ok(ms)
}

fn envelope(v: Option<Value>) -> Result<(String, Vec<String>), RecordError> {
    let mut env = match v {
        None | Some(Value::Null) => return Err(RecordError::Missing { field: "envelope" }),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(invalid(
                "envelope",
                format!("expected an object, got {other}"),
            ));
        }
    };
    if let Some(k) = env.keys().find(|k| *k != "from" && *k != "to") {
        return Err(RecordError::Unknown {
            field: format!("envelope.{k}"),
        });
    }
    let from = take_str(&mut env, "from").map_err(|e| rename(e, "envelope.from"))?;
    let from = address("envelope.from", &from)?;
    let list = match env.remove("to") {
        None | Some(Value::Null) => {
            return Err(RecordError::Missing {
                field: "envelope.to",
            });
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(invalid(
                "envelope.to",
                format!("expected an array, got {other}"),
            ));
        }
    };
    if list.is_empty() {
        return Err(invalid("envelope.to", "needs at least one recipient"));
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "envelope.to",
            format!(
                "{} recipients, over the limit of {MAX_RECIPIENTS}",
                list.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut to = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        let field = format!("envelope.to[{i}]");
        let Value::String(s) = r else {
            return Err(invalid(field, format!("expected a string, got {r}")));
        };
        let a = address(&field, &s)?;
        if seen.insert(a.clone()) {
            to.push(a);
        }
    }
    Ok((from, to))
}

fn rename(e: RecordError, field: &'static str) -> RecordError {
    match e {
        RecordError::Missing { .. } => RecordError::Missing { field },
        RecordError::Invalid { reason, .. } => invalid(field, reason),
        other => other,
    }
}

fn address(field: &str, s: &str) -> Result<String, RecordError> {
    Address::parse_for(field, s)
        .map(|a| a.as_str().to_owned())
        .map_err(|e| {
            // The address error already starts with the field's name.
            let text = e.to_string();
            let reason = text.strip_prefix(&format!("{field}: ")).unwrap_or(&text);
            invalid(field, reason)
        })
}

fn message(b64: &str) -> Result<Vec<u8>, RecordError> {
    if b64.len() / 4 * 3 > MAX_MESSAGE_BYTES {
        return Err(invalid(
            "message",
            format!("longer than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let raw = BASE64
        .decode(b64)
        .map_err(|e| invalid("message", format!("not standard base64: {e}")))?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("message", "is empty"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn queued() -> Queued {
        let e = Email::builder()
            .from("shop@example.com")
            .to("ann@example.com")
            .subject("Order")
            .text("Thanks\n.dot line")
            .build()
            .expect("build");
        Queued {
            id: uuid::Uuid::now_v7(),
            created_at_ms: 1_700_000_000_000,
            due_at_ms: 1_700_000_300_000,
            mail_from: "shop@example.com".into(),
            rcpt_to: vec!["ann@example.com".into(), "bcc@example.com".into()],
            raw: e.to_bytes(),
            subject: e.subject().map(str::to_owned),
            message_id: e.message_id().map(str::to_owned),
            idempotency_key: Some("order-42".into()),
            priority: -3,
            max_fails: Some(5),
            max_time_ms: Some(60_000),
            tags: Some(r#"{"campaign":"spring","n":[1,2]}"#.into()),
        }
    }

    /// The record of `queued()` with the value at each JSON pointer
    /// replaced (`null`: removed).
    fn patched(changes: &[(&str, Value)]) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&encode(&queued())).expect("json");
        for (pointer, new) in changes {
            let (parent, key) = pointer.rsplit_once('/').expect("pointer");
            let parent = v.pointer_mut(parent).expect("parent");
            let obj = parent.as_object_mut().expect("object");
            match new {
                Value::Null => drop(obj.remove(key)),
                new => drop(obj.insert(key.to_owned(), new.clone())),
            }
        }
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let q = queued();
        let back = decode(&encode(&q)).expect("decode");
        assert_eq!(format!("{back:?}"), format!("{q:?}"));
    }

    #[test]
    fn minimal_record_gets_defaults_and_headers_from_the_message() {
        let optional = [
            "/idempotency_key",
            "/priority",
            "/max_fails",
            "/max_time_ms",
        ];
        let more = ["/tags", "/subject", "/message_id"];
        let changes: Vec<_> = optional
            .iter()
            .chain(&more)
            .map(|p| (*p, Value::Null))
            .collect();
        let d = decode(&patched(&changes)).expect("decode");
        assert_eq!((d.priority, d.max_fails, d.tags), (0, None, None));
        assert_eq!(d.subject.as_deref(), Some("Order"));
        let parsed = Email::parse(&d.raw).expect("parse");
        assert_eq!(d.message_id.as_deref(), parsed.message_id());
        assert!(d.message_id.is_some());
    }

    #[test]
    fn addresses_are_normalised_and_recipients_deduplicated() {
        let to = json!(["a@EXAMPLE.com", "a@example.com", "b@bücher.de"]);
        let d = decode(&patched(&[("/envelope/to", to)])).expect("decode");
        assert_eq!(d.rcpt_to, ["a@example.com", "b@xn--bcher-kva.de"]);
    }

    #[test]
    fn non_json_tags_survive_as_a_json_string() {
        let q = Queued {
            tags: Some("not json".into()),
            ..queued()
        };
        let back = decode(&encode(&q)).expect("decode");
        assert_eq!(back.tags.as_deref(), Some(r#""not json""#));
    }

    #[test]
    fn each_bad_field_is_named() {
        let v4 = uuid::Uuid::new_v4().to_string();
        let cases = [
            ("v", "/v", Value::Null),
            ("v", "/v", json!(2)),
            ("v", "/v", json!("1")),
            ("id", "/id", json!("nope")),
            ("id", "/id", json!(v4)),
            ("created_at", "/created_at", json!(1.5e12)),
            ("not_before", "/not_before", json!(-1)),
            ("not_before", "/not_before", Value::Null),
            ("envelope", "/envelope", json!("x")),
            ("envelope.from", "/envelope/from", json!("no-at-sign")),
            ("envelope.to", "/envelope/to", json!([])),
            ("envelope.to[1]", "/envelope/to", json!(["a@b.c", 7])),
            (
                "envelope.to[0]",
                "/envelope/to",
                json!(["a\r\nRCPT TO:<x@y.z>@b.c"]),
            ),
            ("envelope.cc", "/envelope/cc", json!([])),
            ("message", "/message", json!("@@@")),
            ("message", "/message", json!("")),
            ("message", "/message", json!("AAAA")),
            ("idempotency_key", "/idempotency_key", json!("")),
            ("idempotency_key", "/idempotency_key", json!("a\nb")),
            ("priority", "/priority", json!(1_i64 << 40)),
            ("max_fails", "/max_fails", json!(-1)),
            ("max_time_ms", "/max_time_ms", json!(-5)),
            ("subject", "/subject", json!(3)),
            ("max_fail", "/max_fail", json!(3)),
        ];
        for (field, pointer, value) in cases {
            let err = decode(&patched(&[(pointer, value)])).expect_err(field);
            assert_eq!(err.field(), Some(field), "{err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn not_an_object_or_too_large() {
        assert!(matches!(decode(b"[1]"), Err(RecordError::NotJson(_))));
        assert!(matches!(decode(b"{"), Err(RecordError::NotJson(_))));
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(decode(&huge), Err(RecordError::TooLarge { .. })));
    }

    prop_compose! {
        fn arb_queued()(
            (bits, created, due) in (any::<u128>(), 0..MAX_TIME_MS, 0..MAX_TIME_MS),
            locals in proptest::collection::vec("[a-z0-9]{1,8}(\\.[a-z0-9]{1,4})?", 1..5),
            (subject, body) in ("[ -~]{0,30}", "[ -~\n]{0,200}"),
            key in proptest::option::of("[a-zA-Z0-9:_-]{1,40}"),
            (priority, max_fails) in (any::<i32>(), proptest::option::of(any::<u32>())),
            max_time_ms in proptest::option::of(0..i64::MAX),
            tags in proptest::option::of(prop_oneof![
                Just(r#"{"a":1}"#.to_owned()),
                Just(r#"[true,null,"x"]"#.to_owned()),
                "[a-z]{0,10}".prop_map(|s| format!("{s:?}")),
            ]),
        ) -> Queued {
            let mut seen = HashSet::new();
            let rcpt_to = locals
                .iter()
                .map(|l| format!("{l}@example.org"))
                .filter(|a| seen.insert(a.clone()))
                .collect();
            let e = Email::builder()
                .from("from@example.com")
                .to("x@example.com")
                .subject(subject)
                .text(body)
                .build()
                .expect("build");
            let millis = u64::try_from(created).unwrap_or(0);
            let random: [u8; 10] = bits.to_le_bytes()[..10].try_into().unwrap_or([0; 10]);
            Queued {
                id: uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid(),
                created_at_ms: created,
                due_at_ms: due,
                mail_from: "from@example.com".into(),
                rcpt_to,
                raw: e.to_bytes(),
                subject: e.subject().map(str::to_owned),
                message_id: e.message_id().map(str::to_owned),
                idempotency_key: key,
                priority,
                max_fails,
                max_time_ms,
                tags,
            }
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(q in arb_queued()) {
            let back = decode(&encode(&q)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(format!("{back:?}"), format!("{q:?}"));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
