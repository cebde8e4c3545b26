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
        (space.sentinel(0), KeyKind::Sentinel, "s"),
    ];
    for (key, kind, tag) in cases {
        assert_eq!(key.kind(), kind);
        assert_eq!(KeyKind::of_key(key.as_str()), Some(kind));
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

#[test]
fn kind_of_text_not_built_by_the_scheme_is_unknown() {
    for text in ["", "cm", "cm:q", "q:1", "cm:x:00", "cm::00", "hb"] {
        assert_eq!(KeyKind::of_key(text), None, "{text:?}");
    }
    assert_eq!(KeyKind::of_key("cm:q:"), Some(KeyKind::Result));
    assert_eq!(
        KeyKind::of_key(space().worker_state().as_str()),
        Some(KeyKind::WorkerState)
    );
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

/// More pins, taken from the scheme as it stood before the allocation-free
/// key builder: every canonical value family, several columns in any order,
/// a repeated column name (ordered by its encoded value), the "any change"
/// list, the registry, a 64-byte prefix, and inputs longer than any
/// internal buffer (a 1 MB text value, a long table name).
#[test]
fn golden_keys_of_every_value_family_and_shape() {
    let space = space();
    let long_prefix = KeySpace::new("P".repeat(64)).unwrap();
    let book = TableName::new("public", "book");
    let long_table = TableName::new("s".repeat(300), "t".repeat(300));
    let uuid: [u8; 16] = *b"0123456789abcdef";
    let megabyte = CanonicalValue::Text("é".repeat(1 << 19));
    let values = [
        CanonicalValue::Bool(true),
        CanonicalValue::Bool(false),
        CanonicalValue::Int(-7),
        CanonicalValue::Int(i64::MAX),
        CanonicalValue::Text("ключ 🔑".into()),
        CanonicalValue::Text(String::new()),
        CanonicalValue::Uuid(uuid),
        CanonicalValue::Date(-1),
        CanonicalValue::Timestamp(i64::MIN),
        CanonicalValue::TimestampTz(1_234_567_890),
        CanonicalValue::Bytea(vec![0, 255, 10]),
        CanonicalValue::Bytea((0..=255).cycle().take(700).collect()),
    ];
    let mut keys: Vec<String> = values
        .iter()
        .map(|v| space.object(&book, &[("id", Some(v))]).as_str().to_owned())
        .collect();
    let (one, two, three) = (
        CanonicalValue::Int(1),
        CanonicalValue::Text("two".into()),
        CanonicalValue::Int(3),
    );
    keys.extend(
        [
            space.predicate(
                &book,
                &[("c", Some(&three)), ("a", Some(&one)), ("b", Some(&two))],
            ),
            space.predicate(&book, &[("a", Some(&three)), ("a", Some(&one))]),
            space.predicate(&book, &[("a", Some(&one)), ("a", None), ("b", None)]),
            space.object(&book, &[("id", Some(&megabyte))]),
            space.object(&long_table, &[(&"k".repeat(400), Some(&two))]),
            space.table_changes(&book),
            space.table_generation(&long_table),
            space.registry(29_000_000),
            space.worker_state(),
            long_prefix.object(&book, &[("id", Some(&one))]),
            long_prefix.result(&[b"SELECT $1", &23u32.to_be_bytes(), &[0; 300]]),
        ]
        .iter()
        .map(|k| k.as_str().to_owned()),
    );
    let golden = [
        "cm:f:02bf8b81caf2dfdc72538beb4a913bf4",
        "cm:f:c20c7ae697394f0af8280bf61d2024f8",
        "cm:f:424d6693f5b44a3624f64b061909146f",
        "cm:f:c82cf66fec5508943a8979912f19bcc5",
        "cm:f:6811aa9d11d9ba8a647f374966ebb3d8",
        "cm:f:fcd6cb67aeee1ebce400081975f11e17",
        "cm:f:24df4ab13da8bef7f31a221b347b576d",
        "cm:f:1d44e2e5b4bddb3d6a1436eef0d8b043",
        "cm:f:4c9f6d500486a8e6bade3d1c1ae1c33f",
        "cm:f:f72081897c11a78834770b1b1102aa86",
        "cm:f:d5a2b996a5ffaefa23b7fe729fde6205",
        "cm:f:74178111a60acd38f6a17133e3752fba",
        "cm:f:063ecb48901ea3284450ceba03e6575b",
        "cm:f:6efa68fb2f55f0cb9d72fb9ac6588a73",
        "cm:f:76d7dd970d060e0babd57d9de780832f",
        "cm:f:081cbd4b3dc05867a589acfb49b81657",
        "cm:f:4b41ed3bd7aaad86a95ad532dd144831",
        "cm:f:9c5aad3abf908231ddd2d1e93f5b8147",
        "cm:g:485da8adaac7032a4db588d9c67e8d4b",
        "cm:f:e220a1d3948ce335bc0a1a57da9b11bb",
        "cm:w:9e56f1303acf69fca0eb6bb94530e917",
        "PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP:f:980abbd4d8fe6902c1a3dda356b04a56",
        "PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP:q:889de014d601bad54f7b9778e505ab59",
    ];
    assert_eq!(keys, golden);
}
