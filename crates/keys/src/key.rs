//! The key scheme: `{prefix}:{kind}:{hash}`.
//!
//! Every key is built by a [`KeySpace`] (which holds the validated prefix)
//! from typed parts, and every part, whether a table name or a user value, is
//! hashed: a user value never reaches memcached unhashed, so no table name or
//! value (quotes, spaces, newlines, unicode, megabytes) can make a key longer
//! than 250 bytes or put a forbidden character on the wire.
//!
//! # Hash
//!
//! BLAKE3 (the `blake3` crate), truncated to its first 128 bits (a prefix of
//! BLAKE3's output is itself the standard shorter output), written as 32
//! lowercase hex digits. The input is a domain tag `cm-keys/v1` followed by
//! the parts, each as an 8-byte big-endian length and then its bytes, so
//! `["ab", "c"]` and `["a", "bc"]` never collide. The first part names what the
//! key is for (`object`, `predicate`, `table`, `epoch`, `heartbeat`,
//! `result`). Golden tests pin the output: changing any of this orphans every
//! deployed key and must come with a new domain tag.
//!
//! Keys name tables by schema and name (the partition root for a partition,
//! see [`crate::Table::key_identity`]), never by oid, database, host or port,
//! so every replica of a database derives the same keys. Two databases that
//! share memcached servers therefore need different prefixes.

use std::fmt;

use thiserror::Error;

use crate::schema::TableName;
use crate::value::CanonicalValue;

/// The longest prefix allowed; keeps every key well under memcached's 250 bytes.
pub const MAX_PREFIX_LEN: usize = 64;

/// Domain tag at the start of every hash input; bump it to change the scheme.
const DOMAIN: &[u8] = b"cm-keys/v1";

/// What a key stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// `q`: a cached query result.
    Result,
    /// `f`: a flush list, owned by an object or a predicate.
    FlushList,
    /// `g`: a generation: the global epoch or one table's.
    Generation,
    /// `hb`: the invalidator's heartbeat.
    Heartbeat,
    /// `w`: the invalidator's persisted identity of what it streams from.
    WorkerState,
}

impl KeyKind {
    /// The kind's tag in the key text.
    pub fn tag(self) -> &'static str {
        match self {
            KeyKind::Result => "q",
            KeyKind::FlushList => "f",
            KeyKind::Generation => "g",
            KeyKind::Heartbeat => "hb",
            KeyKind::WorkerState => "w",
        }
    }
}

/// A complete cache key: ASCII, no spaces or control characters, at most
/// `MAX_PREFIX_LEN + 36` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    kind: KeyKind,
    text: String,
}

impl Key {
    /// What the key stores.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key as sent to the cache.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// A prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrefixError {
    /// The prefix is empty.
    #[error("key prefix is empty")]
    Empty,
    /// The prefix is longer than [`MAX_PREFIX_LEN`] bytes.
    #[error("key prefix is {len} bytes long; at most {MAX_PREFIX_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The prefix has a character outside `[A-Za-z0-9_.-]`.
    #[error("key prefix {prefix:?} contains {found:?}; only ASCII letters, digits, '_', '-' and '.' are allowed")]
    BadCharacter {
        /// The prefix.
        prefix: String,
        /// The first character not allowed.
        found: char,
    },
}

/// The namespace of one deployment's keys; makes every key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space with `prefix`: 1 to 64 characters from `[A-Za-z0-9_.-]`
    /// (no `:`, which separates the key's fields).
    pub fn new(prefix: impl Into<String>) -> Result<KeySpace, PrefixError> {
        let prefix = prefix.into();
        if prefix.is_empty() {
            return Err(PrefixError::Empty);
        }
        if let Some(found) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(PrefixError::BadCharacter { prefix, found });
        }
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(PrefixError::TooLong { len: prefix.len() });
        }
        Ok(KeySpace { prefix })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `q`: a cached result, identified by the caller's fingerprint parts
    /// (e.g. the statement text, then each parameter's type oid and binary
    /// value). Parts are length-prefixed, so their boundaries count.
    pub fn result(&self, fingerprint: &[&[u8]]) -> Key {
        let mut parts: Vec<&[u8]> = vec![b"result"];
        parts.extend_from_slice(fingerprint);
        self.make(KeyKind::Result, &parts)
    }

    /// `f`: the flush list of one row, by its key columns' values. Pairs are
    /// (column, value), in any order: they are sorted by column name first,
    /// so both sides agree whatever order their catalogs list columns in.
    pub fn object(&self, table: &TableName, key: &[(&str, Option<&CanonicalValue>)]) -> Key {
        self.owned(b"object", table, key)
    }

    /// `f`: the flush list of a predicate: rows of `table` whose `columns`
    /// hold these values (`None` is SQL NULL). Pairs are sorted by column
    /// name, as for [`KeySpace::object`].
    pub fn predicate(&self, table: &TableName, values: &[(&str, Option<&CanonicalValue>)]) -> Key {
        self.owned(b"predicate", table, values)
    }

    /// `f`: the flush list of *any* change to `table`: results that depend on
    /// the table as a whole (no usable filter) register here, and the
    /// invalidator flushes it for every row change of the table. It is the
    /// predicate over the empty column set.
    pub fn table_changes(&self, table: &TableName) -> Key {
        self.predicate(table, &[])
    }

    /// `f`: one time bucket of the inspection registry: the `q:` keys of
    /// results stored during that bucket (readers choose the bucket, e.g.
    /// minutes since the Unix epoch), for the consistency checker to
    /// enumerate. Nothing the invalidator derives ever names it.
    pub fn registry(&self, bucket: u64) -> Key {
        self.make(KeyKind::FlushList, &[b"registry", &bucket.to_be_bytes()])
    }

    /// `g`: the generation of one table (its partition root for a partition).
    pub fn table_generation(&self, table: &TableName) -> Key {
        self.make(
            KeyKind::Generation,
            &[b"table", table.schema.as_bytes(), table.name.as_bytes()],
        )
    }

    /// `g`: the global epoch; bumping it makes every cached result stale.
    pub fn epoch(&self) -> Key {
        self.make(KeyKind::Generation, &[b"epoch"])
    }

    /// `hb`: the invalidator's heartbeat.
    pub fn heartbeat(&self) -> Key {
        self.make(KeyKind::Heartbeat, &[b"heartbeat"])
    }

    /// `w`: the system id, timeline and slot the invalidator last streamed
    /// from; a difference on start means the cache may be stale (epoch bump).
    pub fn worker_state(&self) -> Key {
        self.make(KeyKind::WorkerState, &[b"worker-state"])
    }

    fn owned(
        &self,
        what: &'static [u8],
        table: &TableName,
        values: &[(&str, Option<&CanonicalValue>)],
    ) -> Key {
        let mut sorted: Vec<(&str, Vec<u8>)> = values
            .iter()
            .map(|(column, value)| {
                // NULL is the empty encoding; every canonical value has a tag byte.
                (
                    *column,
                    value.map(CanonicalValue::encode).unwrap_or_default(),
                )
            })
            .collect();
        sorted.sort();
        let mut parts: Vec<&[u8]> = vec![what, table.schema.as_bytes(), table.name.as_bytes()];
        for (column, value) in &sorted {
            parts.push(column.as_bytes());
            parts.push(value);
        }
        self.make(KeyKind::FlushList, &parts)
    }

    fn make(&self, kind: KeyKind, parts: &[&[u8]]) -> Key {
        let digest = hash_parts(parts);
        Key {
            kind,
            text: format!("{}:{}:{}", self.prefix, kind.tag(), digest),
        }
    }
}

/// Hashes the unambiguous encoding of `parts`: the domain tag, then each part
/// as an 8-byte big-endian length and its bytes. Streams, so a 1 MB value is
/// not copied.
fn hash_parts(parts: &[&[u8]]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN);
    for part in parts {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    digest.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
