//! Row change -> invalidation keys: the one function both sides trust.
//!
//! The reader registers a cached result under the keys of every row version
//! it saw: the row's object key, its FK parents' object keys (or predicate
//! keys when the FK references a non-key unique column set), and one predicate
//! key per predicate column set of the table. [`derive()`] returns those same
//! keys for the old and the new version of a changed row, so whatever the
//! reader registered for either version gets flushed.
//!
//! When a value needed for a key is not available ([`Value::Unknown`]: not in
//! a key-only old tuple, an unchanged TOAST value with no old copy, a type
//! with no canonical form, a nondeterministic collation), that key cannot be
//! derived, and [`Invalidation::bump_table_generation`] is set instead: every
//! cached result over the table then reads as stale. TRUNCATE and tables with
//! the `whole_table` policy always bump.

use std::collections::{BTreeMap, BTreeSet};

use crate::key::{Key, KeySpace};
use crate::schema::{ForeignKey, Table, TablePolicy};
use crate::value::CanonicalValue;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A new row (new image only).
    Insert,
    /// A changed row (old image if the stream carried one, new image).
    Update,
    /// A removed row (old image only).
    Delete,
    /// The whole table was emptied (no images).
    Truncate,
}

/// One column's value in a row image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// The value, canonicalised.
    Known(CanonicalValue),
    /// SQL NULL.
    Null,
    /// Not available: treat as "could be anything".
    Unknown,
}

/// The values of one version of a row, by column name; a column that is
/// not present is [`Value::Unknown`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowImage {
    values: BTreeMap<String, Value>,
}

impl RowImage {
    /// An empty image (every column unknown).
    pub fn new() -> RowImage {
        RowImage::default()
    }

    /// Sets a column's value.
    pub fn set(&mut self, column: impl Into<String>, value: Value) {
        self.values.insert(column.into(), value);
    }

    /// Builder form of [`RowImage::set`].
    pub fn with(mut self, column: impl Into<String>, value: Value) -> RowImage {
        self.set(column, value);
        self
    }

    /// A column's value ([`Value::Unknown`] when absent).
    pub fn get(&self, column: &str) -> &Value {
        self.values.get(column).unwrap_or(&Value::Unknown)
    }
}

/// The keys one row change invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Object keys of the row's old and new versions (flush lists to delete).
    pub objects: Vec<Key>,
    /// Keys of the FK parents of the old and new versions.
    pub parents: Vec<Key>,
    /// Predicate keys for each predicate column set, old and new values.
    pub predicates: Vec<Key>,
    /// The table's "any change" flush list ([`KeySpace::table_changes`]):
    /// every change flushes it. A reader never registers a row's result here
    /// from [`keys_for_row`]; only results over the whole table join it.
    pub table_changes: Key,
    /// The table generation key, to bump when `bump_table_generation`.
    pub table_generation: Key,
    /// Some key could not be derived (or the change is table-wide): bump
    /// `table_generation`.
    pub bump_table_generation: bool,
}

impl Invalidation {
    /// The row-level flush lists: objects, parents and predicates,
    /// deduplicated (what a reader may register a result under for a row).
    pub fn row_keys(&self) -> BTreeSet<&Key> {
        self.objects
            .iter()
            .chain(&self.parents)
            .chain(&self.predicates)
            .collect()
    }

    /// Every flush list a change empties: [`Invalidation::row_keys`] and the
    /// table's "any change" list.
    pub fn flush_keys(&self) -> BTreeSet<&Key> {
        let mut keys = self.row_keys();
        keys.insert(&self.table_changes);
        keys
    }
}

/// The keys a change of one row of `table` invalidates.
///
/// `old` and `new` are the row images as available: for [`ChangeKind::Update`]
/// without an old image, every old value counts as unknown, so pass the
/// images from [`crate::images_from_pgoutput`], which fills in what the
/// replica identity guarantees (the identity columns did not change).
pub fn derive(
    space: &KeySpace,
    table: &Table,
    kind: ChangeKind,
    old: Option<&RowImage>,
    new: Option<&RowImage>,
) -> Invalidation {
    let mut out = Collector {
        space,
        table,
        objects: BTreeSet::new(),
        parents: BTreeSet::new(),
        predicates: BTreeSet::new(),
        bump: false,
    };
    let unknown = RowImage::new();
    let images: Vec<&RowImage> = match kind {
        ChangeKind::Truncate => {
            out.bump = true;
            Vec::new()
        }
        _ if table.policy == TablePolicy::WholeTable => {
            out.bump = true;
            Vec::new()
        }
        ChangeKind::Insert => vec![new.unwrap_or(&unknown)],
        ChangeKind::Delete => vec![old.unwrap_or(&unknown)],
        ChangeKind::Update => vec![old.unwrap_or(&unknown), new.unwrap_or(&unknown)],
    };
    for image in images {
        out.row(image);
    }
    Invalidation {
        objects: out.objects.into_iter().collect(),
        parents: out.parents.into_iter().collect(),
        predicates: out.predicates.into_iter().collect(),
        table_changes: space.table_changes(table.key_identity()),
        table_generation: space.table_generation(table.key_identity()),
        bump_table_generation: out.bump,
    }
}

/// The keys a reader registers a cached result under for having seen `row`
/// of `table`: its object key, its FK parents' keys and its predicate keys
/// (register only the predicate keys the query's filter uses). These are
/// exactly the keys [`derive()`] returns for any change that produces or
/// removes this row version. When `bump_table_generation` is set, some key
/// could not be derived (or the table is `whole_table`): the result must
/// depend on `table_generation` instead.
pub fn keys_for_row(space: &KeySpace, table: &Table, row: &RowImage) -> Invalidation {
    derive(space, table, ChangeKind::Insert, None, Some(row))
}

struct Collector<'a> {
    space: &'a KeySpace,
    table: &'a Table,
    objects: BTreeSet<Key>,
    parents: BTreeSet<Key>,
    predicates: BTreeSet<Key>,
    bump: bool,
}

impl Collector<'_> {
    fn row(&mut self, image: &RowImage) {
        let table = self.table;
        let identity = table.key_identity();
        if table.primary_key.is_empty() {
            // No row key: nothing can name this row, only the table can.
            self.bump = true;
        } else if let Some(values) = self.values(image, &table.primary_key) {
            self.objects.insert(
                self.space
                    .object(identity, &pairs(&table.primary_key, &values)),
            );
        }
        for fk in &table.foreign_keys {
            self.parent(image, fk);
        }
        for set in &table.predicate_sets {
            if let Some(values) = self.values(image, set.columns()) {
                self.predicates.insert(
                    self.space
                        .predicate(identity, &pairs(set.columns(), &values)),
                );
            }
        }
    }

    fn parent(&mut self, image: &RowImage, fk: &ForeignKey) {
        let Some(values) = self.values(image, &fk.columns) else {
            return;
        };
        // MATCH SIMPLE: a NULL in any referencing column means no parent.
        if values.iter().any(Option::is_none) {
            return;
        }
        let pairs = pairs(&fk.parent_columns, &values);
        let key = if fk.references_parent_key {
            self.space.object(&fk.parent, &pairs)
        } else {
            self.space.predicate(&fk.parent, &pairs)
        };
        self.parents.insert(key);
    }

    /// The values of `columns` (`None` = NULL), or `None` after setting the
    /// bump flag when any is unknown or not keyable.
    fn values<'i>(
        &mut self,
        image: &'i RowImage,
        columns: &[String],
    ) -> Option<Vec<Option<&'i CanonicalValue>>> {
        if !self.table.columns_keyable(columns.iter()) {
            self.bump = true;
            return None;
        }
        let mut out = Vec::with_capacity(columns.len());
        for column in columns {
            match image.get(column) {
                Value::Known(v) => out.push(Some(v)),
                Value::Null => out.push(None),
                Value::Unknown => {
                    self.bump = true;
                    return None;
                }
            }
        }
        Some(out)
    }
}

fn pairs<'a>(
    columns: &'a [String],
    values: &[Option<&'a CanonicalValue>],
) -> Vec<(&'a str, Option<&'a CanonicalValue>)> {
    columns
        .iter()
        .map(String::as_str)
        .zip(values.iter().copied())
        .collect()
}
