//! Catalog discovery on a real PostgreSQL: primary keys (plain and
//! composite), foreign keys (to a PK, to a unique column, composite, to and
//! from partitioned tables), a table without a PK keyed by the mapping,
//! partitions, replica identities, unlogged tables, nondeterministic
//! collations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cm_keys::{
    discover, oid, ColumnSet, KeySource, ReplicaIdentity, SchemaConfig, SchemaModel, Table,
    TableName,
};
use cm_testkit::TestPostgres;
use tokio_postgres::NoTls;

const SCHEMA: &str = "
CREATE SCHEMA shop;
CREATE TABLE shop.author(id int PRIMARY KEY, email text UNIQUE, name text);
CREATE TABLE shop.book(id int PRIMARY KEY, author_id int REFERENCES shop.author(id), title text);
ALTER TABLE shop.book REPLICA IDENTITY FULL;
CREATE TABLE shop.line(order_id bigint, n int, sku text, PRIMARY KEY (n, order_id));
CREATE TABLE shop.line_note(order_id bigint, n int, note text,
    FOREIGN KEY (order_id, n) REFERENCES shop.line(order_id, n));
CREATE TABLE shop.review(id int PRIMARY KEY, author_email text REFERENCES shop.author(email));
CREATE TABLE shop.event_log(seq bigint, msg text, dropped int);
ALTER TABLE shop.event_log DROP COLUMN dropped;
CREATE TABLE shop.measure(id int, at date, book_id int REFERENCES shop.book(id), PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE shop.measure_2024 PARTITION OF shop.measure FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE shop.measure_2025 PARTITION OF shop.measure FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE shop.reading(id int PRIMARY KEY, measure_id int, measure_at date,
    FOREIGN KEY (measure_id, measure_at) REFERENCES shop.measure(id, at));
CREATE TABLE shop.coded(id int NOT NULL, code int NOT NULL);
CREATE UNIQUE INDEX coded_code ON shop.coded(code);
ALTER TABLE shop.coded REPLICA IDENTITY USING INDEX coded_code;
CREATE UNLOGGED TABLE shop.scratch(id int PRIMARY KEY);
";

async fn discovered(pg: &TestPostgres) -> Vec<Table> {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    discover(&client).await.unwrap()
}

fn find<'a>(tables: &'a [Table], name: &str) -> &'a Table {
    tables
        .iter()
        .find(|t| t.name == TableName::new("shop", name))
        .unwrap_or_else(|| panic!("shop.{name} not discovered"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn discovers_keys_foreign_keys_partitions_and_identity() {
    let pg = TestPostgres::start().unwrap();
    pg.psql(SCHEMA).unwrap();
    let tables = discovered(&pg).await;
    assert!(
        tables.iter().all(|t| t.name.schema == "shop"),
        "system tables leaked"
    );

    let author = find(&tables, "author");
    assert_eq!(author.primary_key, strings(&["id"]));
    assert_eq!(author.key_source, KeySource::PrimaryKey);
    assert_eq!(author.replica_identity, ReplicaIdentity::Default);
    assert_eq!(author.column("email").unwrap().type_oid, oid::TEXT);
    assert!(author.oid.is_some());

    let book = find(&tables, "book");
    assert_eq!(book.replica_identity, ReplicaIdentity::Full);
    assert_eq!(book.foreign_keys.len(), 1);
    assert_eq!(book.foreign_keys[0].columns, strings(&["author_id"]));
    assert_eq!(
        book.foreign_keys[0].parent,
        TableName::new("shop", "author")
    );
    assert_eq!(book.foreign_keys[0].parent_columns, strings(&["id"]));

    // Composite key in index order, not column order.
    assert_eq!(
        find(&tables, "line").primary_key,
        strings(&["n", "order_id"])
    );
    let note = find(&tables, "line_note");
    assert_eq!(note.key_source, KeySource::None);
    assert_eq!(note.foreign_keys[0].columns, strings(&["order_id", "n"]));
    assert_eq!(
        note.foreign_keys[0].parent_columns,
        strings(&["order_id", "n"])
    );

    let log = find(&tables, "event_log");
    assert!(log.primary_key.is_empty());
    let names: Vec<&str> = log.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["seq", "msg"], "dropped columns are left out");

    let root = find(&tables, "measure");
    assert_eq!(root.partition_root, None);
    assert_eq!(root.primary_key, strings(&["id", "at"]));
    let leaf = find(&tables, "measure_2024");
    assert_eq!(leaf.partition_root, Some(TableName::new("shop", "measure")));
    assert_eq!(leaf.key_identity(), &TableName::new("shop", "measure"));
    assert_eq!(leaf.primary_key, strings(&["id", "at"]));

    // An FK to a partitioned table is one constraint, pointing at the root.
    let reading = find(&tables, "reading");
    assert_eq!(reading.foreign_keys.len(), 1);
    assert_eq!(
        reading.foreign_keys[0].parent,
        TableName::new("shop", "measure")
    );

    let coded = find(&tables, "coded");
    assert_eq!(coded.replica_identity, ReplicaIdentity::Index);
    assert_eq!(coded.identity_index_columns, strings(&["code"]));
    assert_eq!(coded.identity_columns(), ["code"]);
    assert_eq!(author.identity_columns(), ["id"]);
    assert_eq!(book.identity_columns(), ["id", "author_id", "title"]);
    assert!(book.columns_needing_full_identity().is_empty());
    assert!(find(&tables, "scratch").unlogged);
    assert!(!author.unlogged);
}

#[tokio::test]
async fn model_from_catalog_and_mapping() {
    let pg = TestPostgres::start().unwrap();
    pg.psql(SCHEMA).unwrap();
    let config = SchemaConfig::from_toml_str(
        r#"
        [tables."shop.event_log"]
        key_columns = ["seq"]
        [tables."shop.measure"]
        predicates = [["book_id", "at"]]
        [tables."shop.scratch"]
        ignore = true
        "#,
    )
    .unwrap();
    let model = SchemaModel::build(discovered(&pg).await, &config).unwrap();
    let table = |n: &str| model.table(&TableName::new("shop", n)).unwrap();

    let log = table("event_log");
    assert_eq!(log.primary_key, strings(&["seq"]));
    assert_eq!(log.key_source, KeySource::Configured);

    // A partition inherits its root's FKs and mapping; keys are the root's.
    let leaf = table("measure_2025");
    assert_eq!(leaf.foreign_keys.len(), 1);
    assert_eq!(leaf.foreign_keys[0].parent, TableName::new("shop", "book"));
    assert!(leaf
        .predicate_sets
        .contains(&ColumnSet::new(["at", "book_id"])));
    assert!(leaf.predicate_sets.contains(&ColumnSet::new(["book_id"])));
    assert_eq!(
        model.table_by_oid(leaf.oid.unwrap()).unwrap().name,
        leaf.name
    );

    // A composite FK to the whole PK, in another order, is the parent's object key.
    assert!(table("line_note").foreign_keys[0].references_parent_key);
    // An FK to a unique non-key column is a predicate key of the parent.
    assert!(!table("review").foreign_keys[0].references_parent_key);
    assert!(table("author")
        .predicate_sets
        .contains(&ColumnSet::new(["email"])));
    assert_eq!(
        table("review")
            .columns_needing_full_identity()
            .into_iter()
            .collect::<Vec<_>>(),
        ["author_email"]
    );
    // A configured key on a DEFAULT table without a PK is in no old tuple.
    assert!(log.columns_needing_full_identity().contains("seq"));

    assert!(model.is_ignored(&TableName::new("shop", "scratch")));
    assert!(model.table(&TableName::new("shop", "scratch")).is_none());

    // A mapping naming a column the catalog does not have.
    let bad =
        SchemaConfig::from_toml_str("[tables.\"shop.event_log\"]\nkey_columns = [\"dropped\"]\n")
            .unwrap();
    let err = SchemaModel::build(discovered(&pg).await, &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tables.\"shop.event_log\".key_columns[0]: table shop.event_log has no column \"dropped\""
    );
}

#[tokio::test]
async fn nondeterministic_collation_makes_a_column_unkeyable() {
    let pg = TestPostgres::start().unwrap();
    let icu = pg.psql(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE person(id int PRIMARY KEY, email text COLLATE ci, name text);",
    );
    if icu.is_err() {
        eprintln!("skipped: this PostgreSQL has no ICU support: {icu:?}");
        return;
    }
    let tables = discovered(&pg).await;
    let person = tables.iter().find(|t| t.name.name == "person").unwrap();
    assert!(!person.column("email").unwrap().is_keyable());
    assert!(person.column("name").unwrap().is_keyable());
    assert!(person.column("id").unwrap().is_keyable());
}
