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
    let mut sink = SplitSink::default();
    let bump = collect(space, table, kind, old, new, &mut sink);
    let table_keys = TableKeys::new(space, table);
    Invalidation {
        objects: sorted(sink.objects),
        parents: sorted(sink.parents),
        predicates: sorted(sink.predicates),
        table_changes: table_keys.table_changes,
        table_generation: table_keys.table_generation,
        bump_table_generation: bump,
    }
}

/// The table-level keys of [`derive()`]: the same for every change of a
/// table, so a caller deriving many changes can build them once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableKeys {
    /// [`Invalidation::table_changes`].
    pub table_changes: Key,
    /// [`Invalidation::table_generation`].
    pub table_generation: Key,
}

impl TableKeys {
    /// The table-level keys of `table`.
    pub fn new(space: &KeySpace, table: &Table) -> TableKeys {
        TableKeys {
            table_changes: space.table_changes(table.key_identity()),
            table_generation: space.table_generation(table.key_identity()),
        }
    }
}

/// The row-level part of [`derive()`], for a caller that deduplicates
/// keys itself: appends the change's object, parent and predicate keys
/// (exactly [`Invalidation::row_keys`] of [`derive()`], in no particular
/// order, each at most once) to `keys`, and returns
/// [`Invalidation::bump_table_generation`]. The table-level keys are
/// [`TableKeys`].
pub fn derive_row_keys(
    space: &KeySpace,
    table: &Table,
    kind: ChangeKind,
    old: Option<&RowImage>,
    new: Option<&RowImage>,
    keys: &mut Vec<Key>,
) -> bool {
    let mut sink = AppendSink {
        start: keys.len(),
        keys,
    };
    collect(space, table, kind, old, new, &mut sink)
}

/// Runs the collector over the images `kind` has; returns the bump flag.
fn collect(
    space: &KeySpace,
    table: &Table,
    kind: ChangeKind,
    old: Option<&RowImage>,
    new: Option<&RowImage>,
    sink: &mut dyn Sink,
) -> bool {
    let unknown = RowImage::new();
    let images: &[&RowImage] = match kind {
        ChangeKind::Truncate => return true,
        _ if table.policy == TablePolicy::WholeTable => return true,
        ChangeKind::Insert => &[new.unwrap_or(&unknown)],
        ChangeKind::Delete => &[old.unwrap_or(&unknown)],
        ChangeKind::Update => &[old.unwrap_or(&unknown), new.unwrap_or(&unknown)],
    };
    let mut out = Collector {
        space,
        table,
        sink,
        bump: false,
    };
    out.rows(images);
    out.bump
}

fn sorted(mut keys: Vec<Key>) -> Vec<Key> {
    keys.sort();
    keys.dedup();
    keys
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

/// Where the collector puts keys.
trait Sink {
    fn object(&mut self, key: Key);
    fn parent(&mut self, key: Key);
    fn predicate(&mut self, key: Key);
}

/// Keys by what they are, for [`Invalidation`].
#[derive(Default)]
struct SplitSink {
    objects: Vec<Key>,
    parents: Vec<Key>,
    predicates: Vec<Key>,
}

impl Sink for SplitSink {
    fn object(&mut self, key: Key) {
        self.objects.push(key);
    }
    fn parent(&mut self, key: Key) {
        self.parents.push(key);
    }
    fn predicate(&mut self, key: Key) {
        self.predicates.push(key);
    }
}

/// All keys in one list, each once (among those this change appended).
struct AppendSink<'k> {
    keys: &'k mut Vec<Key>,
    start: usize,
}

impl AppendSink<'_> {
    fn push(&mut self, key: Key) {
        if !self.keys[self.start..].contains(&key) {
            self.keys.push(key);
        }
    }
}

impl Sink for AppendSink<'_> {
    fn object(&mut self, key: Key) {
        self.push(key);
    }
    fn parent(&mut self, key: Key) {
        self.push(key);
    }
    fn predicate(&mut self, key: Key) {
        self.push(key);
    }
}

/// `(column, value)` pairs naming a key; `None` is NULL.
type Pairs<'a> = Vec<(&'a str, Option<&'a CanonicalValue>)>;

struct Collector<'a, 's> {
    space: &'a KeySpace,
    table: &'a Table,
    sink: &'s mut dyn Sink,
    bump: bool,
}

impl<'a> Collector<'a, '_> {
    /// The keys of every image. A key whose values are the same in the old
    /// and the new image (the usual UPDATE) is hashed once.
    fn rows(&mut self, images: &[&'a RowImage]) {
        let table = self.table;
        let identity = table.key_identity();
        if table.primary_key.is_empty() {
            // No row key: nothing can name this row, only the table can.
            self.bump = true;
        } else {
            for pairs in self.distinct(images, &table.primary_key, &table.primary_key) {
                self.sink.object(self.space.object(identity, &pairs));
            }
        }
        for fk in &table.foreign_keys {
            self.parents(images, fk);
        }
        for set in &table.predicate_sets {
            for pairs in self.distinct(images, set.columns(), set.columns()) {
                self.sink.predicate(self.space.predicate(identity, &pairs));
            }
        }
    }

    fn parents(&mut self, images: &[&'a RowImage], fk: &'a ForeignKey) {
        for pairs in self.distinct(images, &fk.columns, &fk.parent_columns) {
            // MATCH SIMPLE: a NULL in any referencing column means no parent.
            if pairs.iter().any(|(_, value)| value.is_none()) {
                continue;
            }
            let key = if fk.references_parent_key {
                self.space.object(&fk.parent, &pairs)
            } else {
                self.space.predicate(&fk.parent, &pairs)
            };
            self.sink.parent(key);
        }
    }

    /// For each image, the values of `columns` paired with `names`, leaving
    /// out an image whose values equal the previous one's, and any image
    /// where a value is unknown or not keyable (setting the bump flag).
    fn distinct(
        &mut self,
        images: &[&'a RowImage],
        columns: &'a [String],
        names: &'a [String],
    ) -> Vec<Pairs<'a>> {
        if !self.table.columns_keyable(columns.iter()) {
            self.bump = true;
            return Vec::new();
        }
        let mut out: Vec<Pairs<'a>> = Vec::with_capacity(images.len());
        for image in images {
            match pairs(image, columns, names) {
                Some(pairs) if out.last() != Some(&pairs) => out.push(pairs),
                Some(_) => {}
                None => self.bump = true,
            }
        }
        out
    }
}

/// The values of `columns` in `image`, paired with `names`; `None` when
/// any is unknown.
fn pairs<'a>(image: &'a RowImage, columns: &'a [String], names: &'a [String]) -> Option<Pairs<'a>> {
    let mut out = Vec::with_capacity(columns.len());
    for (column, name) in columns.iter().zip(names) {
        let value = match image.get(column) {
            Value::Known(v) => Some(v),
            Value::Null => None,
            Value::Unknown => return None,
        };
        out.push((name.as_str(), value));
    }
    Some(out)
}
