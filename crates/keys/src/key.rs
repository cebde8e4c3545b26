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
    /// `s`: a metadata server's sentinel, written by the invalidator; its
    /// absence means the server lost what it held (docs/eviction.md).
    Sentinel,
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
            KeyKind::Sentinel => "s",
        }
    }

    /// The kind with this tag, as [`KeyKind::tag`] writes it.
    pub fn from_tag(tag: &str) -> Option<KeyKind> {
        [
            KeyKind::Result,
            KeyKind::FlushList,
            KeyKind::Generation,
            KeyKind::Heartbeat,
            KeyKind::WorkerState,
            KeyKind::Sentinel,
        ]
        .into_iter()
        .find(|kind| kind.tag() == tag)
    }

    /// The kind of a key's text, read from its second `:`-separated field
    /// (`{prefix}:{tag}:{hash}`; a prefix never holds `:`). `None` for text
    /// this scheme did not build. Cache stores use it to route a key by kind
    /// (results may live on servers that evict, the rest must not).
    pub fn of_key(text: &str) -> Option<KeyKind> {
        let mut fields = text.splitn(3, ':');
        let (_prefix, tag, _hash) = (fields.next()?, fields.next()?, fields.next()?);
        KeyKind::from_tag(tag)
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

    /// `g`: the schema version: the invalidator bumps it for every DDL it
    /// applies (after bumping the generations the DDL touched). Readers
    /// compare it with the value their schema model and learned statements
    /// were read under, and re-learn when it moved; it never invalidates a
    /// result by itself.
    pub fn schema_version(&self) -> Key {
        self.make(KeyKind::Generation, &[b"schema-version"])
    }

    /// `hb`: the invalidator's heartbeat.
    pub fn heartbeat(&self) -> Key {
        self.make(KeyKind::Heartbeat, &[b"heartbeat"])
    }

    /// `w`: the system id, timeline and slot the invalidator last streamed
    /// from, and an upper bound of the LSNs it confirmed ([`crate::WorkerState`]);
    /// a difference on start means the cache may be stale (epoch bump).
    pub fn worker_state(&self) -> Key {
        self.make(KeyKind::WorkerState, &[b"worker-state"])
    }

    /// `s`: the `n`th sentinel candidate. A store picks, for each metadata
    /// server, the first candidate that hashes to that server, and keeps it
    /// there while the server holds its data: a server that restarted or
    /// was flushed has lost its flush lists, and the missing sentinel says
    /// so (docs/eviction.md).
    pub fn sentinel(&self, n: u32) -> Key {
        self.make(KeyKind::Sentinel, &[b"sentinel", &n.to_be_bytes()])
    }

    fn owned(
        &self,
        what: &'static [u8],
        table: &TableName,
        values: &[(&str, Option<&CanonicalValue>)],
    ) -> Key {
        let mut input = HashInput::new();
        input.part(what);
        input.part(table.schema.as_bytes());
        input.part(table.name.as_bytes());
        // Pairs are hashed sorted by column name, then by encoded value (the
        // order of `(column, encoding)` tuples). Callers nearly always pass
        // them sorted already: no copy then.
        let sorted = values.windows(2).all(|w| w[0].0 < w[1].0);
        if sorted {
            for (column, value) in values {
                input.part(column.as_bytes());
                input.value(*value);
            }
        } else {
            let mut pairs = values.to_vec();
            pairs.sort_by(|a, b| a.0.cmp(b.0).then_with(|| encoded(a.1).cmp(&encoded(b.1))));
            for (column, value) in pairs {
                input.part(column.as_bytes());
                input.value(value);
            }
        }
        self.finish(KeyKind::FlushList, input)
    }

    fn make(&self, kind: KeyKind, parts: &[&[u8]]) -> Key {
        let mut input = HashInput::new();
        for part in parts {
            input.part(part);
        }
        self.finish(kind, input)
    }

    /// `{prefix}:{tag}:{32 hex digits}`, built in one allocation.
    fn finish(&self, kind: KeyKind, input: HashInput) -> Key {
        let digest = input.finish();
        let tag = kind.tag();
        let mut text = String::with_capacity(self.prefix.len() + tag.len() + 2 + 32);
        text.push_str(&self.prefix);
        text.push(':');
        text.push_str(tag);
        text.push(':');
        for byte in &digest.as_bytes()[..16] {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Key { kind, text }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A value's encoding as hashed; NULL is the empty encoding (every
/// canonical value has a tag byte).
fn encoded(value: Option<&CanonicalValue>) -> Vec<u8> {
    value.map(CanonicalValue::encode).unwrap_or_default()
}

/// How many input bytes are gathered before they are handed to BLAKE3.
const INPUT_BUFFER: usize = 256;

/// The unambiguous encoding of a key's parts, hashed as it is written: the
/// domain tag, then each part as an 8-byte big-endian length and its bytes.
/// Short inputs (nearly every key) are gathered on the stack and hashed in
/// one call; longer ones stream into a [`blake3::Hasher`], so a 1 MB value
/// is never copied. Either way the digest is BLAKE3 of the same bytes.
struct HashInput {
    buf: [u8; INPUT_BUFFER],
    len: usize,
    hasher: Option<Box<blake3::Hasher>>,
}

impl HashInput {
    fn new() -> HashInput {
        let mut input = HashInput {
            buf: [0; INPUT_BUFFER],
            len: 0,
            hasher: None,
        };
        input.write(DOMAIN);
        input
    }

    /// One length-prefixed part.
    fn part(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_be_bytes());
        self.write(bytes);
    }

    /// One value as a part: [`CanonicalValue::encode`], written without
    /// building it.
    fn value(&mut self, value: Option<&CanonicalValue>) {
        let Some(value) = value else {
            return self.part(&[]);
        };
        let (tag, payload) = value.encoded_parts();
        let bytes = payload.as_slice();
        self.write(&((1 + bytes.len()) as u64).to_be_bytes());
        self.write(&[tag]);
        self.write(bytes);
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        let hasher = self
            .hasher
            .get_or_insert_with(|| Box::new(blake3::Hasher::new()));
        hasher.update(&self.buf[..self.len]);
        self.len = 0;
        if bytes.len() > INPUT_BUFFER {
            hasher.update(bytes);
        } else {
            self.buf[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
        }
    }

    fn finish(self) -> blake3::Hash {
        match self.hasher {
            None => blake3::hash(&self.buf[..self.len]),
            Some(mut hasher) => {
                hasher.update(&self.buf[..self.len]);
                hasher.finalize()
            }
        }
    }
}
