//! Canonical values: one byte form per SQL value, whichever side saw it.
//!
//! The reader sees typed query parameters and binary result values; the
//! invalidator sees pgoutput text values. Both must derive the *same* key for
//! the *same* SQL value, so every value is first brought to a canonical form
//! ([`CanonicalValue`]) by [`canonical_from_text`] or [`canonical_from_binary`],
//! and only that form is hashed into keys.
//!
//! # Canonical form per type
//!
//! | types (oid)                          | canonical form                                             |
//! |--------------------------------------|------------------------------------------------------------|
//! | `bool` (16)                          | `Bool(bool)`                                               |
//! | `int2` (21), `int4` (23), `int8` (20), `oid` (26) | `Int(i64)`: one family, so an `int4` FK matches an `int8` PK |
//! | `text` (25), `varchar` (1043), `name` (19) | `Text(String)`: the exact characters (UTF-8)          |
//! | `uuid` (2950)                        | `Uuid([u8; 16])`                                           |
//! | `date` (1082)                        | `Date(i32)`: days since 2000-01-01; `infinity` = `i32::MAX`, `-infinity` = `i32::MIN` (PostgreSQL's binary form) |
//! | `timestamp` (1114)                   | `Timestamp(i64)`: microseconds since 2000-01-01 00:00:00; infinities `i64::MAX`/`i64::MIN` |
//! | `timestamptz` (1184)                 | `TimestampTz(i64)`: microseconds since 2000-01-01 00:00:00 UTC; infinities as above |
//! | `bytea` (17)                         | `Bytea(Vec<u8>)`: the raw bytes (text input in `hex` or `escape` output format) |
//!
//! Text input assumes the GUCs the invalidator pins on its walsender session
//! (`docs/pgoutput.md` §6): `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=postgres`, `extra_float_digits=3`, `client_encoding=UTF8`.
//! A value that does not parse under those settings is a [`CanonicalError::Malformed`],
//! never a guess: a wrong guess would be a silently missed invalidation.
//!
//! # Types that are not safe for keys
//!
//! Everything else returns [`CanonicalError::Unsupported`], and the derive step
//! falls back to bumping the table generation. In particular:
//!
//! * `numeric`: `1.0` and `1.00` are equal in SQL but differ in text and binary (scale).
//! * `float4`/`float8`: `-0 = 0`, NaN semantics, and text rounding.
//! * `bpchar` (`char(n)`): trailing-space padding is insignificant for equality.
//! * `citext` and columns with a nondeterministic collation: equal values differ in bytes
//!   (the schema model marks such columns unkeyable even though their type is `text`).
//! * `json` (whitespace, key order), `jsonb`, arrays, ranges, composite types, enums,
//!   domains (their oid is not the base type's), `interval`, `time`, `timetz`, network
//!   and geometric types: no single canonical byte form is pinned here yet.

use postgres_protocol::types as pgtypes;
use thiserror::Error;

/// PostgreSQL type oids this module knows.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8`
    pub const INT8: u32 = 20;
    /// `int2`
    pub const INT2: u32 = 21;
    /// `int4`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `oid`
    pub const OID: u32 = 26;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `uuid`
    pub const UUID: u32 = 2950;
}

/// A SQL value in the one form both sides agree on; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CanonicalValue {
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4`, `int8`, `oid`.
    Int(i64),
    /// `text`, `varchar`, `name`.
    Text(String),
    /// `uuid`.
    Uuid([u8; 16]),
    /// `date`: days since 2000-01-01.
    Date(i32),
    /// `timestamp`: microseconds since 2000-01-01 00:00:00.
    Timestamp(i64),
    /// `timestamptz`: microseconds since 2000-01-01 00:00:00 UTC.
    TimestampTz(i64),
    /// `bytea`.
    Bytea(Vec<u8>),
}

impl CanonicalValue {
    /// The bytes hashed into keys: a family tag, then the value. Stable: the
    /// golden key tests pin it, changing it invalidates every deployed key.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload) = self.encoded_parts();
        let payload = payload.as_slice();
        let mut out = Vec::with_capacity(1 + payload.len());
        out.push(tag);
        out.extend_from_slice(payload);
        out
    }
}

/// The bytes after a value's tag byte, without allocating: fixed-width
/// numbers by value, text and bytes by reference.
#[derive(Debug)]
pub(crate) enum Payload<'a> {
    /// Up to 16 bytes held inline (`len` of them are used).
    Inline([u8; 16], usize),
    /// Borrowed bytes.
    Borrowed(&'a [u8]),
}

impl Payload<'_> {
    fn fixed<const N: usize>(bytes: [u8; N]) -> Payload<'static> {
        let mut out = [0; 16];
        out[..N].copy_from_slice(&bytes);
        Payload::Inline(out, N)
    }

    /// The payload bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes, len) => &bytes[..*len],
            Payload::Borrowed(bytes) => bytes,
        }
    }
}

impl CanonicalValue {
    /// [`CanonicalValue::encode`] as its tag byte and payload, for hashing
    /// without building the encoding.
    pub(crate) fn encoded_parts(&self) -> (u8, Payload<'_>) {
        match self {
            CanonicalValue::Bool(v) => (b'b', Payload::fixed([u8::from(*v)])),
            CanonicalValue::Int(v) => (b'i', Payload::fixed(v.to_be_bytes())),
            CanonicalValue::Text(v) => (b's', Payload::Borrowed(v.as_bytes())),
            CanonicalValue::Uuid(v) => (b'u', Payload::Borrowed(v)),
            CanonicalValue::Date(v) => (b'd', Payload::fixed(v.to_be_bytes())),
            CanonicalValue::Timestamp(v) => (b't', Payload::fixed(v.to_be_bytes())),
            CanonicalValue::TimestampTz(v) => (b'z', Payload::fixed(v.to_be_bytes())),
            CanonicalValue::Bytea(v) => (b'x', Payload::Borrowed(v)),
        }
    }
}

/// Which canonical family a type belongs to; two columns can share keys
/// (an FK and its parent column) only when their families are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypeFamily {
    /// `bool`.
    Bool,
    /// `int2`, `int4`, `int8`, `oid`.
    Int,
    /// `text`, `varchar`, `name`.
    Text,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `timestamp`.
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `bytea`.
    Bytea,
    /// A type with no canonical form (see the module docs), by oid.
    Unsupported(u32),
}

impl TypeFamily {
    /// The family of a type oid.
    pub fn of(type_oid: u32) -> TypeFamily {
        match type_oid {
            oid::BOOL => TypeFamily::Bool,
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => TypeFamily::Int,
            oid::TEXT | oid::VARCHAR | oid::NAME => TypeFamily::Text,
            oid::UUID => TypeFamily::Uuid,
            oid::DATE => TypeFamily::Date,
            oid::TIMESTAMP => TypeFamily::Timestamp,
            oid::TIMESTAMPTZ => TypeFamily::TimestampTz,
            oid::BYTEA => TypeFamily::Bytea,
            other => TypeFamily::Unsupported(other),
        }
    }

    /// Whether values of this family may feed object and predicate keys.
    pub fn is_keyable(self) -> bool {
        !matches!(self, TypeFamily::Unsupported(_))
    }
}

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CanonicalError {
    /// The type is not safe for keys (see the module docs); fall back to the
    /// table generation.
    #[error("type oid {type_oid} has no canonical form and cannot feed a cache key")]
    Unsupported {
        /// The type's oid.
        type_oid: u32,
    },
    /// The value does not parse as its type (e.g. text produced under a
    /// `DateStyle` other than ISO).
    #[error("malformed value for type oid {type_oid}: {reason}")]
    Malformed {
        /// The type's oid.
        type_oid: u32,
        /// What was wrong.
        reason: String,
    },
}

fn malformed(type_oid: u32, reason: impl std::fmt::Display) -> CanonicalError {
    CanonicalError::Malformed {
        type_oid,
        reason: reason.to_string(),
    }
}

/// Canonicalises a value in PostgreSQL's text output format (as pgoutput `t`
/// values carry it, under the pinned GUCs).
pub fn canonical_from_text(type_oid: u32, text: &str) -> Result<CanonicalValue, CanonicalError> {
    let bad = |reason: &str| malformed(type_oid, format!("{reason}: {text:?}"));
    match type_oid {
        oid::BOOL => match text {
            "t" => Ok(CanonicalValue::Bool(true)),
            "f" => Ok(CanonicalValue::Bool(false)),
            _ => Err(bad("not t or f")),
        },
        oid::INT2 => parse_int::<i16>(text).map_err(|_| bad("not an int2")),
        oid::INT4 => parse_int::<i32>(text).map_err(|_| bad("not an int4")),
        oid::INT8 => parse_int::<i64>(text).map_err(|_| bad("not an int8")),
        oid::OID => parse_int::<u32>(text).map_err(|_| bad("not an oid")),
        oid::TEXT | oid::VARCHAR | oid::NAME => Ok(CanonicalValue::Text(text.to_owned())),
        oid::UUID => parse_uuid(text)
            .map(CanonicalValue::Uuid)
            .ok_or_else(|| bad("not a uuid")),
        oid::DATE => crate::datetime::parse_date(text)
            .map(CanonicalValue::Date)
            .map_err(bad),
        oid::TIMESTAMP => crate::datetime::parse_timestamp(text, false)
            .map(CanonicalValue::Timestamp)
            .map_err(bad),
        oid::TIMESTAMPTZ => crate::datetime::parse_timestamp(text, true)
            .map(CanonicalValue::TimestampTz)
            .map_err(bad),
        oid::BYTEA => parse_bytea(text)
            .map(CanonicalValue::Bytea)
            .ok_or_else(|| bad("not bytea hex or escape output")),
        other => Err(CanonicalError::Unsupported { type_oid: other }),
    }
}

/// Canonicalises a value in PostgreSQL's binary format (result columns in
/// binary, or a parameter serialised with `ToSql`). Decoding is
/// `postgres-protocol`'s, not ours.
pub fn canonical_from_binary(type_oid: u32, raw: &[u8]) -> Result<CanonicalValue, CanonicalError> {
    let bad = |e: Box<dyn std::error::Error + Sync + Send>| malformed(type_oid, e);
    match type_oid {
        oid::BOOL => pgtypes::bool_from_sql(raw)
            .map(CanonicalValue::Bool)
            .map_err(bad),
        oid::INT2 => pgtypes::int2_from_sql(raw)
            .map(|v| CanonicalValue::Int(v.into()))
            .map_err(bad),
        oid::INT4 => pgtypes::int4_from_sql(raw)
            .map(|v| CanonicalValue::Int(v.into()))
            .map_err(bad),
        oid::INT8 => pgtypes::int8_from_sql(raw)
            .map(CanonicalValue::Int)
            .map_err(bad),
        oid::OID => pgtypes::oid_from_sql(raw)
            .map(|v| CanonicalValue::Int(v.into()))
            .map_err(bad),
        oid::TEXT | oid::VARCHAR | oid::NAME => pgtypes::text_from_sql(raw)
            .map(|s| CanonicalValue::Text(s.to_owned()))
            .map_err(bad),
        oid::UUID => pgtypes::uuid_from_sql(raw)
            .map(CanonicalValue::Uuid)
            .map_err(bad),
        oid::DATE => pgtypes::date_from_sql(raw)
            .map(CanonicalValue::Date)
            .map_err(bad),
        oid::TIMESTAMP => pgtypes::timestamp_from_sql(raw)
            .map(CanonicalValue::Timestamp)
            .map_err(bad),
        oid::TIMESTAMPTZ => pgtypes::timestamp_from_sql(raw)
            .map(CanonicalValue::TimestampTz)
            .map_err(bad),
        oid::BYTEA => Ok(CanonicalValue::Bytea(pgtypes::bytea_from_sql(raw).to_vec())),
        other => Err(CanonicalError::Unsupported { type_oid: other }),
    }
}

fn parse_int<T>(text: &str) -> Result<CanonicalValue, ()>
where
    T: std::str::FromStr + Into<i64>,
{
    // PostgreSQL prints integers as plain decimal: no '+', no spaces, no
    // leading zeros. Anything else means the text is not what we expect.
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !plain {
        return Err(());
    }
    text.parse::<T>()
        .map(|v| CanonicalValue::Int(v.into()))
        .map_err(|_| ())
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some(hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?))
        .collect()
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    // uuid_out always prints 8-4-4-4-12 lowercase hex.
    let bytes = text.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'-').collect();
    parse_hex(&hex)?.try_into().ok()
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        return parse_hex(hex.as_bytes());
    }
    // bytea_output = escape: printable ASCII as is, `\\` for a backslash,
    // `\nnn` (octal) for everything else.
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes.get(i + 1..i + 4)?;
            if !octal.iter().all(|b| (b'0'..=b'7').contains(b)) {
                return None;
            }
            let v = octal
                .iter()
                .fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0'));
            out.push(u8::try_from(v).ok()?);
            i += 4;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_every_width_share_one_family() {
        assert_eq!(
            canonical_from_text(oid::INT2, "-7"),
            canonical_from_text(oid::INT8, "-7")
        );
        assert_eq!(
            canonical_from_binary(oid::INT4, &5i32.to_be_bytes()),
            canonical_from_text(oid::OID, "5")
        );
    }

    #[test]
    fn non_canonical_integer_text_is_malformed() {
        for text in ["+1", " 1", "01", "-0", "", "1.0", "99999"] {
            assert!(
                matches!(
                    canonical_from_text(oid::INT2, text),
                    Err(CanonicalError::Malformed { .. })
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn unsafe_types_are_unsupported() {
        for type_oid in [1700, 700, 701, 1042, 114, 3802, 1007] {
            assert_eq!(
                canonical_from_text(type_oid, "1"),
                Err(CanonicalError::Unsupported { type_oid })
            );
            assert_eq!(
                canonical_from_binary(type_oid, b"1"),
                Err(CanonicalError::Unsupported { type_oid })
            );
        }
    }

    #[test]
    fn bytea_hex_and_escape_agree() {
        let hex = canonical_from_text(oid::BYTEA, "\\x00ff5c41");
        let escape = canonical_from_text(oid::BYTEA, "\\000\\377\\\\A");
        assert_eq!(hex, Ok(CanonicalValue::Bytea(vec![0, 255, b'\\', b'A'])));
        assert_eq!(hex, escape);
    }

    #[test]
    fn uuid_text_matches_binary() {
        let text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let raw = parse_hex(b"a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap_or_default();
        assert_eq!(
            canonical_from_text(oid::UUID, text),
            canonical_from_binary(oid::UUID, &raw)
        );
    }

    #[test]
    fn truncated_binary_is_malformed_not_a_panic() {
        assert!(matches!(
            canonical_from_binary(oid::INT8, &[1, 2]),
            Err(CanonicalError::Malformed { .. })
        ));
    }
}
