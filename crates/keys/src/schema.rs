//! The schema model: what both sides know about each table to agree on keys.
//!
//! A [`Table`] comes from the catalog ([`crate::catalog`]) and is adjusted by
//! the user's mapping ([`crate::config`]); [`SchemaModel::build`]
//! (in `model.rs`) does that and checks the mapping. The reader and the
//! invalidator must load the same model: the reader registers only predicate
//! keys for a table's [`Table::predicate_sets`], which are exactly the ones
//! the invalidator derives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

pub use cm_pgoutput::ReplicaIdentity;

use crate::value::TypeFamily;

/// A table's schema-qualified name, as keys use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl TableName {
    /// A name from its parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses the `schema.table` form used in the TOML mapping (split at the
    /// first `.`; a schema name containing `.` cannot be configured).
    pub fn parse(text: &str) -> Option<TableName> {
        let (schema, name) = text.split_once('.')?;
        if schema.is_empty() || name.is_empty() {
            return None;
        }
        Some(TableName::new(schema, name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type oid (`atttypid`).
    pub type_oid: u32,
    /// False when the column's collation is nondeterministic (equal values
    /// may differ in bytes, so the column cannot feed keys).
    pub deterministic_collation: bool,
}

impl Column {
    /// Whether values of this column may feed object and predicate keys: a
    /// type with a canonical form and a deterministic collation.
    pub fn is_keyable(&self) -> bool {
        self.deterministic_collation && TypeFamily::of(self.type_oid).is_keyable()
    }
}

/// Where a table's row key columns come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The primary key constraint.
    PrimaryKey,
    /// `key_columns` in the mapping (a table without a primary key).
    Configured,
    /// Neither: rows have no object key, every change bumps the table generation.
    None,
}

/// Where a foreign key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignKeySource {
    /// A `FOREIGN KEY` constraint in the catalog.
    Constraint,
    /// A logical foreign key from the mapping.
    Configured,
}

/// A foreign key: `columns` of this table refer to `parent_columns` of `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The referencing columns, in constraint order.
    pub columns: Vec<String>,
    /// The referenced table (its partition root, once in a [`SchemaModel`]).
    pub parent: TableName,
    /// The referenced columns, pairwise with `columns`.
    pub parent_columns: Vec<String>,
    /// Whether `parent_columns` are exactly the parent's key columns: then a
    /// change invalidates the parent's object key, otherwise the parent's
    /// predicate key over `parent_columns`. Set by [`SchemaModel::build`].
    pub references_parent_key: bool,
    /// Constraint or mapping.
    pub source: ForeignKeySource,
}

/// How changes to a table invalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TablePolicy {
    /// Row by row: object, FK parent and predicate keys.
    #[default]
    Rows,
    /// The whole table is one dependency: any change bumps its generation.
    WholeTable,
}

/// A set of column names, sorted and without duplicates, so two spellings of
/// the same set are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnSet(Vec<String>);

impl ColumnSet {
    /// The set of `columns`.
    pub fn new<I, S>(columns: I) -> ColumnSet
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: BTreeSet<String> = columns.into_iter().map(Into::into).collect();
        ColumnSet(set.into_iter().collect())
    }

    /// The columns, sorted by name.
    pub fn columns(&self) -> &[String] {
        &self.0
    }
}

/// Everything the key contract needs to know about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table's oid in the database it was discovered from (not part of
    /// any key: oids differ between databases).
    pub oid: Option<u32>,
    /// Schema and name.
    pub name: TableName,
    /// Columns in `attnum` order (dropped columns left out).
    pub columns: Vec<Column>,
    /// The row key: primary key columns (index order), or configured ones.
    pub primary_key: Vec<String>,
    /// Where `primary_key` comes from.
    pub key_source: KeySource,
    /// Foreign keys: constraints and configured logical ones.
    pub foreign_keys: Vec<ForeignKey>,
    /// `pg_class.relreplident` at discovery.
    pub replica_identity: ReplicaIdentity,
    /// Columns of the replica identity index (`indisreplident`), for
    /// [`ReplicaIdentity::Index`]; empty otherwise.
    pub identity_index_columns: Vec<String>,
    /// For a partition, the root of its partition tree.
    pub partition_root: Option<TableName>,
    /// Direct parents in `pg_inherits` (the parent partitioned table of a
    /// partition, or the parents of a table created with `INHERITS`). A
    /// reader of a parent reads its children, so a change to a child
    /// invalidates for every ancestor too ([`SchemaModel::ancestors`]).
    pub inherits_from: Vec<TableName>,
    /// An unlogged table: its changes are never decoded, do not cache it.
    pub unlogged: bool,
    /// Column sets the reader may register predicate keys for.
    pub predicate_sets: Vec<ColumnSet>,
    /// How changes invalidate.
    pub policy: TablePolicy,
}

impl Table {
    /// The name keys use: the partition root for a partition, so a change to
    /// a leaf and a query on the root meet on the same keys.
    pub fn key_identity(&self) -> &TableName {
        self.partition_root.as_ref().unwrap_or(&self.name)
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether every column of `columns` exists and may feed keys. The reader
    /// registers a predicate or object key only when this holds; otherwise
    /// it depends on the table generation.
    pub fn columns_keyable<'a>(&self, mut columns: impl Iterator<Item = &'a String>) -> bool {
        columns.all(|c| self.column(c).is_some_and(Column::is_keyable))
    }

    /// The columns a key-only old tuple carries: the primary key under
    /// DEFAULT, the identity index under USING INDEX, every column under
    /// FULL, none under NOTHING (`docs/pgoutput.md` §3.1).
    pub fn identity_columns(&self) -> Vec<&str> {
        match self.replica_identity {
            ReplicaIdentity::Full => self.columns.iter().map(|c| c.name.as_str()).collect(),
            ReplicaIdentity::Default if self.key_source == KeySource::PrimaryKey => {
                self.primary_key.iter().map(String::as_str).collect()
            }
            ReplicaIdentity::Index => self
                .identity_index_columns
                .iter()
                .map(String::as_str)
                .collect(),
            ReplicaIdentity::Default | ReplicaIdentity::Nothing => Vec::new(),
        }
    }

    /// The columns whose old values the invalidator needs on UPDATE and
    /// DELETE but that a key-only old tuple does not carry: key, FK and
    /// predicate columns outside [`Table::identity_columns`]. When this is
    /// non-empty, such changes bump the table generation (see
    /// `docs/pgoutput.md` §3.5); the invalidator should warn at startup
    /// and recommend `REPLICA IDENTITY FULL`.
    pub fn columns_needing_full_identity(&self) -> BTreeSet<&str> {
        if self.policy == TablePolicy::WholeTable {
            return BTreeSet::new();
        }
        let identity = self.identity_columns();
        let key = self.primary_key.iter();
        let fk = self.foreign_keys.iter().flat_map(|fk| fk.columns.iter());
        let pred = self.predicate_sets.iter().flat_map(|s| s.columns().iter());
        key.chain(fk)
            .chain(pred)
            .map(String::as_str)
            .filter(|c| !identity.contains(c))
            .collect()
    }
}

/// The tables both sides agree on, by name and by oid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaModel {
    pub(crate) tables: BTreeMap<TableName, Table>,
    pub(crate) by_oid: HashMap<u32, TableName>,
    pub(crate) ignored: BTreeSet<TableName>,
}

impl SchemaModel {
    /// A table by name (ignored tables are not in the model).
    pub fn table(&self, name: &TableName) -> Option<&Table> {
        self.tables.get(name)
    }

    /// A table by the oid it had at discovery.
    pub fn table_by_oid(&self, oid: u32) -> Option<&Table> {
        self.tables.get(self.by_oid.get(&oid)?)
    }

    /// Every table in the model, by name.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.tables.values()
    }

    /// Whether the mapping says to ignore `name` (its changes invalidate nothing).
    pub fn is_ignored(&self, name: &TableName) -> bool {
        self.ignored.contains(name)
    }

    /// Every ancestor of `name` through `pg_inherits` (parents, their
    /// parents, ...), nearest first, each once; empty for a table without
    /// parents or one the model does not hold.
    pub fn ancestors(&self, name: &TableName) -> Vec<TableName> {
        let mut out: Vec<TableName> = Vec::new();
        let mut next: Vec<TableName> = self
            .tables
            .get(name)
            .map(|t| t.inherits_from.clone())
            .unwrap_or_default();
        while let Some(parent) = next.pop() {
            if parent == *name || out.contains(&parent) {
                continue;
            }
            if let Some(table) = self.tables.get(&parent) {
                next.extend(table.inherits_from.iter().cloned());
            }
            out.push(parent);
        }
        out
    }
}
