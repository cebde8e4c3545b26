//! Builders shared by the integration tests: tables, relations, tuples.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use cm_keys::{
    oid, Column, ColumnSet, ForeignKey, ForeignKeySource, KeySource, ReplicaIdentity, Table,
    TableName, TablePolicy,
};
use cm_pgoutput::{ColumnValue, Relation, RelationColumn, TupleData};

/// A table `public.{name}` with int4 columns (text for names starting with
/// `t_`), `pk` as primary key.
pub fn table(name: &str, columns: &[&str], pk: &[&str], identity: ReplicaIdentity) -> Table {
    Table {
        oid: None,
        name: TableName::new("public", name),
        columns: columns
            .iter()
            .map(|c| Column {
                name: (*c).to_owned(),
                type_oid: if c.starts_with("t_") {
                    oid::TEXT
                } else {
                    oid::INT4
                },
                deterministic_collation: true,
            })
            .collect(),
        primary_key: pk.iter().map(|c| (*c).to_owned()).collect(),
        key_source: if pk.is_empty() {
            KeySource::None
        } else {
            KeySource::PrimaryKey
        },
        foreign_keys: Vec::new(),
        replica_identity: identity,
        identity_index_columns: Vec::new(),
        partition_root: None,
        inherits_from: Vec::new(),
        unlogged: false,
        predicate_sets: Vec::new(),
        policy: TablePolicy::Rows,
    }
}

/// `book(id pk, author_id -> author(id), t_title)`, FK column set as predicate set.
pub fn book(identity: ReplicaIdentity) -> Table {
    let mut t = table("book", &["id", "author_id", "t_title"], &["id"], identity);
    t.foreign_keys.push(fk(&["author_id"], "author", &["id"]));
    t.predicate_sets.push(ColumnSet::new(["author_id"]));
    t
}

/// A foreign key to the primary key `parent_columns` of `public.{parent}`.
pub fn fk(columns: &[&str], parent: &str, parent_columns: &[&str]) -> ForeignKey {
    ForeignKey {
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        parent: TableName::new("public", parent),
        parent_columns: parent_columns.iter().map(|c| (*c).to_owned()).collect(),
        references_parent_key: true,
        source: ForeignKeySource::Constraint,
    }
}

/// The pgoutput Relation for `table`: key flags on identity columns (all
/// under FULL, the primary key under DEFAULT).
pub fn relation(table: &Table) -> Relation {
    Relation {
        xid: None,
        rel_id: 1,
        namespace: table.name.schema.clone(),
        name: table.name.name.clone(),
        replica_identity: table.replica_identity,
        columns: table
            .columns
            .iter()
            .map(|c| RelationColumn {
                flags: u8::from(
                    table.replica_identity == ReplicaIdentity::Full
                        || table.primary_key.contains(&c.name),
                ),
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// A tuple from text values; `None` is `n`, `Some("<u>")` is `u`.
pub fn tuple(values: &[Option<&str>]) -> TupleData {
    TupleData {
        columns: values
            .iter()
            .map(|v| match v {
                None => ColumnValue::Null,
                Some("<u>") => ColumnValue::UnchangedToast,
                Some(text) => ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes())),
            })
            .collect(),
    }
}
