//! End to end on a real PostgreSQL: rows written by psql, read back twice:
//! as the invalidator sees them (pgoutput text tuples from a logical slot,
//! decoded by cm-pgoutput, under the pinned GUCs) and as the reader sees
//! them (binary values from tokio-postgres). Both must derive the same keys
//! for every row, for every safe type, without a generation bump.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use cm_keys::{
    derive, discover, image_from_binary, images_from_pgoutput, keys_for_row, ChangeKind,
    Invalidation, KeySpace, SchemaConfig, SchemaModel, TableName, Value,
};
use cm_pgoutput::{Decoder, LogicalMessage, Relation};
use cm_testkit::TestPostgres;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::NoTls;

const PINNED: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
                      SET IntervalStyle = postgres; SET client_encoding = 'UTF8';";

const SCHEMA: &str = "
CREATE TABLE kinds(id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, t text, v varchar(20),
                   u uuid, d date, ts timestamp, tz timestamptz, by bytea, o oid);
ALTER TABLE kinds REPLICA IDENTITY FULL;
CREATE PUBLICATION p FOR TABLE kinds;
SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput');
";

/// Written by psql with a non-UTC time zone and another DateStyle: the
/// stored values do not depend on the writer's settings, the text does.
const ROWS: &str = "
SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY';
INSERT INTO kinds VALUES
 (1, true, -32768, 2147483647, 'it''s', 'ü', '00000000-0000-0000-0000-000000000001',
  '1999-12-31', '1969-07-20 20:17:40.123456', '2024-06-01 12:00:00.25+05:30', '\\x00ff', 4294967295),
 (-9223372036854775808, false, 0, -1, E'line\\nbreak 🔑', '', gen_random_uuid(),
  '0044-03-15 BC', '0001-01-01 00:00:00 BC', '1850-01-01 00:00:00-03', '\\x', 0),
 (9223372036854775807, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity', '-infinity', 'infinity', NULL, NULL);
UPDATE kinds SET t = 'changed' WHERE id = 1;
";

struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

#[tokio::test]
async fn reader_and_invalidator_derive_identical_keys_for_every_safe_type() {
    let pg = TestPostgres::start().unwrap();
    let slot = pg.unique_name("keys_slot");
    pg.psql(&SCHEMA.replace("{slot}", &slot)).unwrap();
    pg.psql(ROWS).unwrap();

    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(PINNED).await.unwrap();

    // Every column is one predicate set, so every value feeds a key.
    let columns = ["b", "i2", "i4", "t", "v", "u", "d", "ts", "tz", "by", "o"];
    let predicates: Vec<String> = columns.iter().map(|c| format!("[\"{c}\"]")).collect();
    let config = SchemaConfig::from_toml_str(&format!(
        "[tables.\"public.kinds\"]\npredicates = [{}]\n",
        predicates.join(", ")
    ))
    .unwrap();
    let model = SchemaModel::build(discover(&client).await.unwrap(), &config).unwrap();
    let table = model.table(&TableName::new("public", "kinds")).unwrap();
    let space = KeySpace::new("e2e").unwrap();

    // The invalidator's view: the final row versions, by id.
    let changes = client
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL,
                 'proto_version', '1', 'publication_names', 'p')"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new();
    let mut relation: Option<Relation> = None;
    let mut invalidator: BTreeMap<String, Invalidation> = BTreeMap::new();
    let mut updates = 0;
    for row in changes {
        let payload: Vec<u8> = row.get(0);
        let (kind, old, new) = match decoder.decode(Bytes::from(payload)).unwrap() {
            LogicalMessage::Relation(r) => {
                relation = Some(r);
                continue;
            }
            LogicalMessage::Insert(i) => (ChangeKind::Insert, None, i.new),
            LogicalMessage::Update(u) => {
                updates += 1;
                (ChangeKind::Update, u.old, u.new)
            }
            _ => continue,
        };
        let rel = relation.as_ref().unwrap();
        let images = images_from_pgoutput(rel, kind, old.as_ref(), Some(&new)).unwrap();
        let new_image = images.new.unwrap();
        let Value::Known(id) = new_image.get("id").clone() else {
            panic!("no id");
        };
        let inv = derive(&space, table, ChangeKind::Insert, None, Some(&new_image));
        invalidator.insert(format!("{id:?}"), inv);
    }
    assert_eq!(updates, 1);
    assert_eq!(invalidator.len(), 3);

    // The reader's view: binary values of the same rows.
    let rows = client.query("SELECT * FROM kinds", &[]).await.unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let raws: Vec<Option<Raw>> = (0..row.len()).map(|i| row.get(i)).collect();
        let image = image_from_binary(row.columns().iter().zip(&raws).map(|(c, raw)| {
            (
                c.name(),
                c.type_().oid(),
                raw.as_ref().map(|Raw(r)| r.as_slice()),
            )
        }))
        .unwrap();
        let Value::Known(id) = image.get("id").clone() else {
            panic!("no id");
        };
        let reader = keys_for_row(&space, table, &image);
        let from_wal = &invalidator[&format!("{id:?}")];
        assert!(!reader.bump_table_generation, "{id:?}");
        assert_eq!(reader.objects, from_wal.objects, "{id:?}");
        assert_eq!(reader.predicates, from_wal.predicates, "{id:?}");
        assert_eq!(reader.predicates.len(), columns.len());
        assert_eq!(&reader, from_wal);
    }
}
