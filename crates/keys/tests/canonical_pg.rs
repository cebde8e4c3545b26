//! Text and binary canonicalisation agree on a real PostgreSQL: for every
//! safe type and a range of values (extremes, negatives, unicode, dates
//! before 2000 and BC, fractional seconds, infinities), the canonical form
//! of the output-function text under the pinned GUCs equals the canonical
//! form of the binary value tokio-postgres receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cm_keys::{canonical_from_binary, canonical_from_text, oid, CanonicalError};
use cm_testkit::TestPostgres;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The GUCs the invalidator pins on its walsender session (`docs/pgoutput.md` §6).
const PINNED: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
                      SET IntervalStyle = postgres; SET client_encoding = 'UTF8';";

/// A binary value, whatever its type.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

const CASES: &[(&str, &[&str])] = &[
    ("bool", &["true", "false"]),
    ("int2", &["-32768", "32767", "0", "-1"]),
    ("int4", &["-2147483648", "2147483647", "0", "42"]),
    (
        "int8",
        &["-9223372036854775808", "9223372036854775807", "7"],
    ),
    ("oid", &["0", "4294967295", "1259"]),
    (
        "text",
        &[
            "''",
            "'hello'",
            "'it''s'",
            "E'new\\nline\\ttab'",
            "'ключ🔑日本'",
            "'  padded  '",
            "repeat('x', 100000)",
        ],
    ),
    ("varchar", &["'abc'::varchar(10)", "''", "'ü'"]),
    ("name", &["'pg_class'", "'Mixed Case'"]),
    (
        "uuid",
        &[
            "'00000000-0000-0000-0000-000000000000'",
            "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'",
            "gen_random_uuid()",
        ],
    ),
    (
        "date",
        &[
            "'2000-01-01'",
            "'1999-12-31'",
            "'1970-01-01'",
            "'1900-02-28'",
            "'2024-02-29'",
            "'0001-01-01'",
            "'0001-12-31 BC'",
            "'0001-02-29 BC'",
            "'4713-01-01 BC'",
            "'5874897-12-31'",
            "'infinity'",
            "'-infinity'",
        ],
    ),
    (
        "timestamp",
        &[
            "'2000-01-01 00:00:00'",
            "'1999-12-31 23:59:59.999999'",
            "'1969-07-20 20:17:40.123456'",
            "'1900-01-01 00:00:00.5'",
            "'2038-01-19 03:14:07.000001'",
            "'0044-03-15 12:00:00 BC'",
            "'4713-01-01 00:00:00 BC'",
            "'294276-12-31 23:59:59.999999'",
            "'infinity'",
            "'-infinity'",
        ],
    ),
    (
        "timestamptz",
        &[
            "'2000-01-01 00:00:00+00'",
            "'2024-06-01 12:00:00.25+05:30'",
            "'1850-01-01 00:00:00-03'",
            "'1999-12-31 23:59:59.999999+00'",
            "'0044-03-15 12:00:00+00 BC'",
            "now()",
            "'infinity'",
            "'-infinity'",
        ],
    ),
    (
        "bytea",
        &[
            "'\\x'",
            "'\\x00ff5c27'",
            "decode(repeat('ab', 1000), 'hex')",
            "convert_to('ключ', 'UTF8')",
        ],
    ),
];

async fn connect(pg: &TestPostgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(PINNED).await.unwrap();
    client
}

/// The value's text through its output function (simple query protocol
/// returns exactly what pgoutput's `t` values carry).
async fn text_of(client: &Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.unwrap();
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_owned()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn text_and_binary_canonical_forms_agree_for_every_safe_type() {
    let pg = TestPostgres::start().unwrap();
    let client = connect(&pg).await;
    let mut checked = 0;
    for (type_name, values) in CASES {
        for value in *values {
            // One statement for both forms: volatile values (now(), random
            // uuids) are materialised once in a temp table.
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS v; CREATE TEMP TABLE v AS SELECT ({value})::{type_name} AS v"
                ))
                .await
                .unwrap();
            let text = text_of(&client, "SELECT v FROM v").await;
            let row = client.query_one("SELECT v FROM v", &[]).await.unwrap();
            let type_oid = row.columns()[0].type_().oid();
            let Raw(raw) = row.get(0);
            let from_text = canonical_from_text(type_oid, &text);
            let from_binary = canonical_from_binary(type_oid, &raw);
            assert!(
                from_text.is_ok(),
                "{type_name} {value}: text {text:?}: {from_text:?}"
            );
            assert_eq!(from_text, from_binary, "{type_name} {value}: text {text:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, CASES.iter().map(|(_, v)| v.len()).sum::<usize>());
}

#[tokio::test]
async fn bytea_escape_output_agrees_with_binary() {
    let pg = TestPostgres::start().unwrap();
    let client = connect(&pg).await;
    client
        .batch_execute("SET bytea_output = escape")
        .await
        .unwrap();
    let sql = "SELECT '\\x00015c7f80ff41'::bytea";
    let text = text_of(&client, sql).await;
    assert!(!text.starts_with("\\x"), "{text}");
    let Raw(raw) = client.query_one(sql, &[]).await.unwrap().get(0);
    assert_eq!(
        canonical_from_text(oid::BYTEA, &text),
        canonical_from_binary(oid::BYTEA, &raw)
    );
}

/// The unsafe types really are ambiguous, which is why they are refused.
#[tokio::test]
async fn unsafe_types_are_refused_on_both_paths() {
    let pg = TestPostgres::start().unwrap();
    let client = connect(&pg).await;
    let equal = client
        .query_one(
            "SELECT 1.0::numeric = 1.00::numeric, (1.0::numeric)::text <> (1.00::numeric)::text,
                    'a'::char(3) = 'a  '::char(3)",
            &[],
        )
        .await
        .unwrap();
    assert!(equal.get::<_, bool>(0) && equal.get::<_, bool>(1) && equal.get::<_, bool>(2));
    for type_name in [
        "numeric", "float4", "float8", "bpchar", "json", "jsonb", "int4[]", "interval",
    ] {
        let sql = format!("SELECT '1'::{type_name}");
        let sql = if type_name == "int4[]" {
            "SELECT '{1}'::int4[]".to_owned()
        } else {
            sql
        };
        let row = client.query_one(&sql, &[]).await.unwrap();
        let type_oid = row.columns()[0].type_().oid();
        let Raw(raw) = row.get(0);
        let text = text_of(&client, &sql).await;
        assert_eq!(
            canonical_from_text(type_oid, &text),
            Err(CanonicalError::Unsupported { type_oid })
        );
        assert_eq!(
            canonical_from_binary(type_oid, &raw),
            Err(CanonicalError::Unsupported { type_oid })
        );
    }
}

/// Random values over each type's whole range, generated by PostgreSQL.
#[tokio::test]
async fn random_values_over_the_whole_range_agree() {
    let pg = TestPostgres::start().unwrap();
    let client = connect(&pg).await;
    client
        .batch_execute(
            "CREATE TEMP TABLE r AS
             SELECT n,
                    timestamp '2000-01-01' + interval '1 microsecond'
                      * (random() * 9.2e18 - 2.1e17)::int8 AS ts_wide,
                    timestamp '2000-01-01' + interval '1 microsecond'
                      * ((random() - 0.5) * 2e12)::int8 AS ts_near,
                    timestamptz '2000-01-01 00:00:00+00' + interval '1 microsecond'
                      * ((random() - 0.5) * 2e16)::int8 AS tz,
                    date '4713-01-01 BC' + (random() * 2000000000)::int % 5000000 AS d,
                    ((random() - 0.5) * 1.8e19)::int8 AS i8,
                    gen_random_uuid() AS u,
                    md5(random()::text) || chr(1 + (random() * 50000)::int) AS t
             FROM generate_series(1, 2000) AS n",
        )
        .await
        .unwrap();
    let columns = ["ts_wide", "ts_near", "tz", "d", "i8", "u", "t"];
    for column in columns {
        let sql = format!("SELECT {column} FROM r ORDER BY n");
        let texts: Vec<String> = client
            .simple_query(&sql)
            .await
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_owned()),
                _ => None,
            })
            .collect();
        let rows = client.query(&sql, &[]).await.unwrap();
        assert_eq!(texts.len(), 2000);
        for (text, row) in texts.iter().zip(&rows) {
            let type_oid = row.columns()[0].type_().oid();
            let Raw(raw) = row.get(0);
            let from_text = canonical_from_text(type_oid, text);
            assert!(from_text.is_ok(), "{column} {text:?}: {from_text:?}");
            assert_eq!(
                from_text,
                canonical_from_binary(type_oid, &raw),
                "{column} {text:?}"
            );
        }
    }
}
