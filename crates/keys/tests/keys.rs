//! The key scheme: shape under hostile inputs, golden hashes, prefixes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cm_keys::{CanonicalValue, KeyKind, KeySpace, PrefixError, TableName};
use proptest::prelude::*;

fn space() -> KeySpace {
    KeySpace::new("cm").unwrap()
}

fn assert_memcached_safe(key: &str) {
    assert!(key.len() < 250, "{} bytes", key.len());
    assert!(
        key.bytes().all(|b| b.is_ascii_graphic()),
        "unsafe byte in {key:?}"
    );
}

#[test]
fn hostile_table_names_and_values_give_short_safe_keys() {
    let space = KeySpace::new("a".repeat(64)).unwrap();
    let hostile = [
        "",
        " ",
        "'; DROP TABLE x; --",
        "\"quoted\"",
        "new\nline\r\n\t",
        "ключ🔑日本",
        "a:b:c",
        "\0",
    ];
    let megabyte = "x".repeat(1 << 20);
    for name in hostile.iter().copied().chain([megabyte.as_str()]) {
        let table = TableName::new(name, name);
        let text = CanonicalValue::Text(name.to_owned());
        let bytes = CanonicalValue::Bytea(name.as_bytes().to_vec());
        for key in [
            space.object(&table, &[(name, Some(&text))]),
            space.predicate(&table, &[(name, Some(&bytes)), ("x", None)]),
            space.table_generation(&table),
            space.result(&[name.as_bytes(), b"\xff\x00"]),
        ] {
            assert_memcached_safe(key.as_str());
            assert_eq!(key.as_str().len(), 64 + 2 + key.kind().tag().len() + 32);
        }
    }
}

#[test]
fn key_shape_is_prefix_kind_hash() {
    let space = space();
    let t = TableName::new("public", "book");
    let cases = [
        (space.result(&[b"SELECT 1"]), KeyKind::Result, "q"),
        (space.object(&t, &[]), KeyKind::FlushList, "f"),
        (space.predicate(&t, &[]), KeyKind::FlushList, "f"),
        (space.table_generation(&t), KeyKind::Generation, "g"),
        (space.epoch(), KeyKind::Generation, "g"),
        (space.heartbeat(), KeyKind::Heartbeat, "hb"),
    ];
    for (key, kind, tag) in cases {
        assert_eq!(key.kind(), kind);
        let parts: Vec<&str> = key.as_str().split(':').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "cm");
        assert_eq!(parts[1], tag);
        assert_eq!(parts[2].len(), 32);
        assert!(parts[2]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}

/// These strings pin the scheme (domain tag, part encoding, BLAKE3, 128-bit
/// truncation, value encoding). If this test fails, every deployed key has
/// changed: bump the domain tag on purpose or revert. The object, predicate
/// and epoch values were reproduced independently with Python's `blake3`
/// over the encoding documented in `key.rs`.
#[test]
fn golden_keys_never_change() {
    let space = space();
    let book = TableName::new("public", "book");
    let id = CanonicalValue::Int(42);
    let status = CanonicalValue::Text("new".into());
    let golden = [
        (space.epoch(), "cm:g:fd6670c91887a7d98b6961236b96ee74"),
        (space.heartbeat(), "cm:hb:d2ac3a5d730e447ee4535456754c36d9"),
        (
            space.table_generation(&book),
            "cm:g:8a356fcabaf74c5a117e3e37802ebc54",
        ),
        (
            space.object(&book, &[("id", Some(&id))]),
            "cm:f:40488c081ffc5f59654824632ff398bb",
        ),
        (
            space.predicate(&book, &[("status", Some(&status)), ("author_id", None)]),
            "cm:f:07bc9d9163fc87b6e399a66de1de8794",
        ),
        (
            space.result(&[b"SELECT 1", b""]),
            "cm:q:6a95ddf43fc6e42eb43245d11a2ac24f",
        ),
    ];
    for (key, expected) in golden {
        assert_eq!(key.as_str(), expected);
    }
}

#[test]
fn part_boundaries_matter() {
    let space = space();
    assert_ne!(space.result(&[b"ab", b"c"]), space.result(&[b"a", b"bc"]));
    assert_ne!(
        space.table_generation(&TableName::new("a.b", "c")),
        space.table_generation(&TableName::new("a", "b.c"))
    );
    let t = TableName::new("s", "t");
    let empty = CanonicalValue::Text(String::new());
    assert_ne!(
        space.predicate(&t, &[("c", None)]),
        space.predicate(&t, &[("c", Some(&empty))]),
        "NULL and '' must differ"
    );
    assert_ne!(
        space.object(&t, &[("c", Some(&CanonicalValue::Int(1)))]),
        space.predicate(&t, &[("c", Some(&CanonicalValue::Int(1)))]),
        "object and predicate keys live apart"
    );
}

#[test]
fn column_order_does_not_matter() {
    let space = space();
    let t = TableName::new("s", "t");
    let (one, two) = (CanonicalValue::Int(1), CanonicalValue::Int(2));
    assert_eq!(
        space.object(&t, &[("a", Some(&one)), ("b", Some(&two))]),
        space.object(&t, &[("b", Some(&two)), ("a", Some(&one))])
    );
    assert_ne!(
        space.object(&t, &[("a", Some(&one)), ("b", Some(&two))]),
        space.object(&t, &[("a", Some(&two)), ("b", Some(&one))])
    );
}

#[test]
fn prefixes_are_validated() {
    assert_eq!(KeySpace::new(""), Err(PrefixError::Empty));
    assert_eq!(
        KeySpace::new("x".repeat(65)),
        Err(PrefixError::TooLong { len: 65 })
    );
    for (prefix, found) in [("a:b", ':'), ("a b", ' '), ("é", 'é'), ("a\n", '\n')] {
        assert_eq!(
            KeySpace::new(prefix),
            Err(PrefixError::BadCharacter {
                prefix: prefix.into(),
                found
            })
        );
    }
    let err = KeySpace::new("a:b").unwrap_err().to_string();
    assert!(err.contains("only ASCII letters"), "{err}");
    assert_eq!(
        KeySpace::new("Prod-1.cache_v2").unwrap().prefix(),
        "Prod-1.cache_v2"
    );
}

proptest! {
    #[test]
    fn any_table_and_value_gives_a_safe_key(
        schema in any::<String>(),
        name in any::<String>(),
        column in any::<String>(),
        value in any::<String>(),
        raw in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let space = space();
        let t = TableName::new(schema, name);
        let v = CanonicalValue::Text(value);
        let b = CanonicalValue::Bytea(raw.clone());
        for key in [
            space.object(&t, &[(column.as_str(), Some(&v))]),
            space.predicate(&t, &[(column.as_str(), Some(&b))]),
            space.table_generation(&t),
            space.result(&[&raw]),
        ] {
            prop_assert!(key.as_str().len() <= 2 + 3 + 2 + 32);
            prop_assert!(key.as_str().bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
