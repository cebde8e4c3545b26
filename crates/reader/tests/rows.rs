//! Cached rows read back exactly like tokio-postgres rows, and the other
//! read shapes (typed, namespaced, helpers) cache as they should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use cm_keys::{CanonicalValue, TableName};
use cm_reader::{ObjectRef, QueryOptions, RawValue};
use common::{connect, Harness};
use serde::{Deserialize, Serialize};

const KINDS: &str = "
CREATE TABLE kinds (id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4,
  f8 float8, n numeric, t text, v varchar(10), c char(4), ch \"char\", nm name, by bytea,
  o oid, ts timestamp, tz timestamptz, d date, tm time, iv interval, u uuid, j json,
  jb jsonb, ip inet, ai int4[], at text[], e text);
INSERT INTO kinds VALUES
 (1, true, -32768, 2147483647, -9223372036854775808, 1.5, -0.1, 12345.6789, 'it''s ü',
  'vc', 'ab', 'x', 'nm', '\\x00ff', 4294967295, '2024-06-01 12:00:00.25',
  '2024-06-01 12:00:00+05:30', '1999-12-31', '23:59:59', '1 day 2 hours', gen_random_uuid(),
  '{\"a\": [1, 2]}', '{\"b\": null}', '192.168.0.1', '{1,NULL,3}', '{\"x\",\"y z\"}', NULL),
 (2, NULL, NULL, NULL, NULL, 'NaN', 'Infinity', NULL, '', NULL, NULL, NULL, NULL, '\\x',
  NULL, 'infinity', '-infinity', NULL, NULL, NULL, NULL, NULL, NULL, '::1', '{}', NULL, NULL);
";

#[tokio::test]
async fn cached_rows_decode_like_tokio_postgres_rows_for_built_in_types() {
    let h = Harness::with(KINDS, "", None, Default::default()).await;
    let sql = "SELECT * FROM kinds ORDER BY id";
    let live = connect(&h.pg.url()).await.query(sql, &[]).await.unwrap();
    h.client.query(sql, &[]).await.unwrap();
    let cached = h.client.query(sql, &[]).await.unwrap();
    assert_eq!(h.hits(), 1);
    assert_eq!(cached.len(), live.len());
    for (c, l) in cached.iter().zip(&live) {
        assert_eq!(c.len(), l.len());
        for i in 0..l.len() {
            assert_eq!(c.columns()[i].name(), l.columns()[i].name());
            assert_eq!(c.columns()[i].type_(), *l.columns()[i].type_());
            let raw: Option<RawValue> = l.get(i);
            assert_eq!(c.get::<Option<RawValue>>(i), raw, "column {i}");
        }
        macro_rules! same {
            ($($col:literal: $ty:ty),*) => {$(
                assert_eq!(c.get::<Option<$ty>>($col), l.get::<_, Option<$ty>>($col), $col);
            )*};
        }
        same!("id": i32, "b": bool, "i2": i16, "i4": i32, "i8": i64, "t": String, "v": String,
              "c": String, "ch": i8, "nm": String, "by": Vec<u8>, "o": u32, "ts": SystemTime,
              "tz": SystemTime, "ip": IpAddr, "ai": Vec<Option<i32>>, "at": Vec<String>,
              "e": String);
        // Floats: NaN is not equal to itself, compare the bits.
        let f4 = |v: Option<f32>| v.map(f32::to_bits);
        assert_eq!(f4(c.get("f4")), f4(l.get("f4")));
        let f8 = |v: Option<f64>| v.map(f64::to_bits);
        assert_eq!(f8(c.get("f8")), f8(l.get("f8")));
        let s: Option<&str> = c.get("t");
        assert_eq!(s, l.get::<_, Option<&str>>("t"));
    }
    // Errors as tokio-postgres reports them: wrong type, missing column.
    assert!(cached[0].try_get::<String>("i4").is_err());
    assert!(cached[0].try_get::<i32>("missing").is_err());
    assert!(
        cached[1].try_get::<i32>("i4").is_err(),
        "NULL into a non-Option"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    id: i32,
    title: String,
}

#[tokio::test]
async fn typed_results_cache_the_mapped_values() {
    let h = Harness::start().await;
    let sql = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";
    let map = |row: &tokio_postgres::Row| {
        Ok(Book {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
        })
    };
    let first = h.client.query_as(sql, &[&1i32], map).await.unwrap();
    let second = h.client.query_as(sql, &[&1i32], map).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(second[1].title, "A2");
    assert_eq!(h.hits(), 1);
    h.write("UPDATE book SET title = 'A2!' WHERE id = 11").await;
    let third = h.client.query_as(sql, &[&1i32], map).await.unwrap();
    assert_eq!(third[1].title, "A2!");
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn namespaces_and_query_one_keep_results_apart() {
    let h = Harness::start().await;
    let sql = "SELECT title FROM book WHERE id = $1";
    let fr = h.client.with(QueryOptions::new().namespace("fr"));
    let row = h.client.query_one(sql, &[&10i32]).await.unwrap();
    assert_eq!(row.get::<&str>(0), "A1");
    fr.query_one(sql, &[&10i32]).await.unwrap();
    assert_eq!(h.hits(), 0);
    fr.query_one(sql, &[&10i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
    assert!(h.client.query_opt(sql, &[&99i32]).await.unwrap().is_none());
    assert!(h.client.query_one(sql, &[&99i32]).await.is_err());
    // Looked up by primary key: the object key alone covers it.
    h.write("UPDATE book SET title = 'A1*' WHERE id = 10").await;
    let row = fr.query_one(sql, &[&10i32]).await.unwrap();
    assert_eq!(row.get::<&str>("title"), "A1*");
}

#[tokio::test]
async fn cached_helpers_compute_once_and_cached_with_follows_its_object() {
    let h = Harness::start().await;
    let calls = AtomicUsize::new(0);
    let compute = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(vec!["x".to_owned()])
    };
    let ttl = Duration::from_secs(60);
    for _ in 0..2 {
        let v = h.cache.cached("menu", ttl, compute).await.unwrap();
        assert_eq!(v, ["x"]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let book = ObjectRef::new(
        TableName::new("public", "book"),
        [("id", CanonicalValue::Int(10))],
    );
    let other = ObjectRef::new(
        TableName::new("public", "book"),
        [("id", CanonicalValue::Int(11))],
    );
    calls.store(0, Ordering::SeqCst);
    for object in [&book, &book, &other] {
        h.cache
            .cached_with(object, "summary", ttl, compute)
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    h.write("UPDATE book SET title = 'changed' WHERE id = 10")
        .await;
    h.cache
        .cached_with(&book, "summary", ttl, compute)
        .await
        .unwrap();
    h.cache
        .cached_with(&other, "summary", ttl, compute)
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
