//! Which keys a result depends on, split by when they are known.
//!
//! Before the query (the race rule: only these protect a fill against a
//! concurrent change):
//!
//! * the epoch and the generation of every table read, snapshotted into the
//!   value and compared on every hit: TRUNCATE, schema changes and changes
//!   whose keys the invalidator cannot derive bump them;
//! * for the one table of a single-table `WHERE`: the predicate keys of each
//!   of its predicate column sets, and its object key, that the equality
//!   conjunctions pin to values; a row that can change the result has one of
//!   those values before or after the change, so the invalidator's
//!   [`cm_keys::derive`] names the same key;
//! * the object keys of the FK parents the filter pins (`author_id = $1`
//!   names author `$1`): a neighbour link, like those below;
//! * for every other table read: its "any change" flush list
//!   ([`KeySpace::table_changes`], which the invalidator flushes for every
//!   change of the table).
//!
//! After the query, the object keys of the rows returned and of their FK
//! parents ([`cm_keys::keys_for_row`]): django-cache-machine's neighbour
//! links, so a parent's change flushes queries over its children and a
//! child's change flushes queries holding the parent. They are registered before the
//! store, but nothing relies on them for the race.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::BytesMut;
use cm_keys::{
    canonical_from_binary, canonical_from_text, image_from_binary, keys_for_row, oid,
    CanonicalValue, Key, KeySpace, SchemaModel, TableName, TablePolicy, TypeFamily,
};
use postgres_types::{IsNull, ToSql, Type};

use crate::learned::Reads;
use crate::row::RowSet;
use crate::sql::{Filter, Operand};

/// More value combinations than this (from `IN` lists) and the table falls
/// back to its table-wide list.
const MAX_PREDICATE_KEYS: usize = 256;

/// One parameter, serialised as the database receives it.
pub(crate) struct Param {
    pub(crate) type_oid: u32,
    pub(crate) bytes: Option<Vec<u8>>,
}

/// Serialises the parameters with their inferred types; `None` when one does
/// not serialise (the database will report the same error).
pub(crate) fn serialise_params(
    types: &[Type],
    params: &[&(dyn ToSql + Sync)],
) -> Option<Vec<Param>> {
    if types.len() != params.len() {
        return None;
    }
    let mut out = Vec::with_capacity(params.len());
    for (ty, param) in types.iter().zip(params) {
        let mut buf = BytesMut::new();
        let bytes = match param.to_sql_checked(ty, &mut buf).ok()? {
            IsNull::Yes => None,
            IsNull::No => Some(buf.to_vec()),
        };
        out.push(Param {
            type_oid: ty.oid(),
            bytes,
        });
    }
    Some(out)
}

/// The flush lists to register before the query runs.
pub(crate) fn pre_query_keys(
    space: &KeySpace,
    model: &SchemaModel,
    reads: &Reads,
    extra_tables: &[TableName],
    params: &[Param],
) -> BTreeSet<Key> {
    let mut keys = BTreeSet::new();
    let covered = reads
        .filter
        .as_ref()
        .zip(reads.dependencies.sole_table.as_ref())
        .and_then(|(filter, table)| filter_keys(space, model, table, filter, params));
    let covered_identity = covered.as_ref().map(|(identity, _)| identity.clone());
    if let Some((_, filter_keys)) = covered {
        keys.extend(filter_keys);
    }
    for table in reads.dependencies.tables.iter().chain(extra_tables) {
        if Some(table) == covered_identity.as_ref() {
            continue;
        }
        let whole_table = model
            .table(table)
            .is_some_and(|t| t.policy == TablePolicy::WholeTable);
        if !whole_table {
            keys.insert(space.table_changes(table));
        }
    }
    keys
}

/// The generation keys to snapshot: every table read (by key identity),
/// every view, materialized view and user function read through, and every
/// extra table.
pub(crate) fn generation_keys(
    space: &KeySpace,
    model: &SchemaModel,
    reads: &Reads,
    extra_tables: &[TableName],
) -> Vec<Key> {
    // The closure's tables are key identities already; extra tables are
    // named by the caller.
    let extra_identities = extra_tables.iter().map(|t| {
        model
            .table(t)
            .map(|table| table.key_identity().clone())
            .unwrap_or_else(|| t.clone())
    });
    let identities: BTreeSet<TableName> = reads
        .dependencies
        .tables
        .iter()
        .chain(&reads.dependencies.objects)
        .cloned()
        .chain(extra_identities)
        .collect();
    identities
        .iter()
        .map(|t| space.table_generation(t))
        .collect()
}

/// The keys a single-table filter pins, with the table's identity; `None`
/// when the filter does not pin any predicate set or the key.
///
/// `table` is the catalog's proof (`closure.rs`): the statement names one
/// relation, that name resolves under the session's `search_path` to this
/// plain table without children, and nothing else is read. The text's own
/// name is never compared: the same bare name may be a view elsewhere.
fn filter_keys(
    space: &KeySpace,
    model: &SchemaModel,
    table: &TableName,
    filter: &Filter,
    params: &[Param],
) -> Option<(TableName, Vec<Key>)> {
    let table = model.table(table)?;
    if table.policy == TablePolicy::WholeTable {
        return None;
    }
    let mut values: BTreeMap<&str, Vec<Option<CanonicalValue>>> = BTreeMap::new();
    for (column, operands) in &filter.columns {
        let Some(col) = table.column(column) else {
            continue;
        };
        if !col.is_keyable() {
            continue;
        }
        let canonical: Option<Vec<Option<CanonicalValue>>> = operands
            .iter()
            .map(|o| canonical_operand(o, col.type_oid, params))
            .collect();
        if let Some(canonical) = canonical {
            values.insert(column.as_str(), canonical);
        }
    }
    let mut keys = Vec::new();
    let mut parents = Vec::new();
    let mut sets: Vec<Vec<String>> = table
        .predicate_sets
        .iter()
        .map(|s| s.columns().to_vec())
        .collect();
    sets.push(table.primary_key.clone());
    for (i, set) in sets.iter().enumerate() {
        let is_key = i == sets.len() - 1;
        if set.is_empty() || !set.iter().all(|c| values.contains_key(c.as_str())) {
            continue;
        }
        for combination in combinations(set, &values)? {
            let pairs: Vec<(&str, Option<&CanonicalValue>)> = set
                .iter()
                .map(String::as_str)
                .zip(combination.iter().map(Option::as_ref))
                .collect();
            keys.push(if is_key {
                space.object(table.key_identity(), &pairs)
            } else {
                space.predicate(table.key_identity(), &pairs)
            });
        }
    }
    // FK parents pinned by the filter: the neighbour link for results that
    // do not select the FK column (`WHERE author_id = $1` holds author 1's
    // children whatever the select list shows).
    for fk in &table.foreign_keys {
        if !fk.columns.iter().all(|c| values.contains_key(c.as_str())) {
            continue;
        }
        for combination in combinations(&fk.columns, &values)? {
            if combination.iter().any(Option::is_none) {
                continue; // MATCH SIMPLE: a NULL has no parent
            }
            let pairs: Vec<(&str, Option<&CanonicalValue>)> = fk
                .parent_columns
                .iter()
                .map(String::as_str)
                .zip(combination.iter().map(Option::as_ref))
                .collect();
            if fk.references_parent_key {
                parents.push(space.object(&fk.parent, &pairs));
            } else {
                parents.push(space.predicate(&fk.parent, &pairs));
            }
        }
    }
    if keys.is_empty() {
        return None;
    }
    keys.extend(parents);
    Some((table.key_identity().clone(), keys))
}

/// The cross product of the values of `set`'s columns; `None` past
/// [`MAX_PREDICATE_KEYS`].
fn combinations(
    set: &[String],
    values: &BTreeMap<&str, Vec<Option<CanonicalValue>>>,
) -> Option<Vec<Vec<Option<CanonicalValue>>>> {
    let mut out: Vec<Vec<Option<CanonicalValue>>> = vec![Vec::new()];
    for column in set {
        let options = values.get(column.as_str())?;
        let mut next = Vec::new();
        for prefix in &out {
            for value in options {
                let mut row = prefix.clone();
                row.push(value.clone());
                next.push(row);
            }
        }
        if next.len() > MAX_PREDICATE_KEYS {
            return None;
        }
        out = next;
    }
    Some(out)
}

/// A filter operand as the canonical value of a column of type
/// `column_type`: `Some(None)` is NULL, `None` means "cannot tell".
///
/// Parameters arrive in binary and must be of the column's type family.
/// Literals are taken only where their text means the same to PostgreSQL's
/// input function and to `canonical_from_text` whatever the session settings:
/// integers, strings for text columns (and strictly formatted uuids and
/// `t`/`f`), booleans. Dates and times are not, so they fall back.
fn canonical_operand(
    operand: &Operand,
    column_type: u32,
    params: &[Param],
) -> Option<Option<CanonicalValue>> {
    let family = TypeFamily::of(column_type);
    match operand {
        Operand::Param(i) => {
            let param = params.get(*i)?;
            if TypeFamily::of(param.type_oid) != family {
                return None;
            }
            match &param.bytes {
                None => Some(None),
                Some(bytes) => canonical_from_binary(param.type_oid, bytes).ok().map(Some),
            }
        }
        Operand::Number(text) if family == TypeFamily::Int => {
            canonical_from_text(oid::INT8, text).ok().map(Some)
        }
        Operand::Text(text)
            if matches!(
                family,
                TypeFamily::Int | TypeFamily::Text | TypeFamily::Uuid | TypeFamily::Bool
            ) =>
        {
            canonical_from_text(column_type, text).ok().map(Some)
        }
        Operand::Bool(b) if family == TypeFamily::Bool => Some(Some(CanonicalValue::Bool(*b))),
        _ => None,
    }
}

/// Where each result column comes from: `(table, column name)`.
pub(crate) type ColumnOrigins = Vec<Option<(TableName, String)>>;

/// The object keys of every returned row's tables and their FK parents.
pub(crate) fn row_keys(
    space: &KeySpace,
    model: &SchemaModel,
    origins: &ColumnOrigins,
    rows: &RowSet,
) -> BTreeSet<Key> {
    // Group result columns by their table.
    let mut by_table: HashMap<&TableName, Vec<(usize, &str)>> = HashMap::new();
    for (i, origin) in origins.iter().enumerate() {
        if let Some((table, column)) = origin {
            by_table
                .entry(table)
                .or_default()
                .push((i, column.as_str()));
        }
    }
    let mut keys = BTreeSet::new();
    for (name, columns) in by_table {
        let Some(table) = model.table(name) else {
            continue;
        };
        for row in &rows.rows {
            let image = image_from_binary(columns.iter().map(|(i, column)| {
                let type_oid = rows.columns[*i].type_oid();
                (*column, type_oid, row[*i].as_deref().map(|b| &b[..]))
            }));
            let Ok(image) = image else { continue };
            let found = keys_for_row(space, table, &image);
            keys.extend(found.objects);
            keys.extend(found.parents);
        }
    }
    keys
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn int4(v: i32) -> Param {
        Param {
            type_oid: oid::INT4,
            bytes: Some(v.to_be_bytes().to_vec()),
        }
    }

    #[test]
    fn operands_become_keys_only_when_their_meaning_is_certain() {
        let params = [
            int4(7),
            Param {
                type_oid: oid::TEXT,
                bytes: None,
            },
        ];
        let canonical = |o: Operand, column: u32| canonical_operand(&o, column, &params);
        // Any integer width shares one family.
        assert_eq!(
            canonical(Operand::Param(0), oid::INT8),
            Some(Some(CanonicalValue::Int(7)))
        );
        assert_eq!(canonical(Operand::Param(1), oid::TEXT), Some(None));
        // A parameter of another family, or a missing one: cannot tell.
        assert_eq!(canonical(Operand::Param(0), oid::TEXT), None);
        assert_eq!(canonical(Operand::Param(5), oid::INT4), None);
        assert_eq!(
            canonical(Operand::Number("-12".into()), oid::INT2),
            Some(Some(CanonicalValue::Int(-12)))
        );
        // Literals PostgreSQL reads differently than their text.
        for (literal, column) in [
            (Operand::Number("1.0".into()), oid::INT4),
            (Operand::Text(" 1".into()), oid::INT4),
            (Operand::Text("yes".into()), oid::BOOL),
            (Operand::Text("2024-01-01".into()), oid::DATE),
            (Operand::Text("1".into()), 1700),
        ] {
            assert_eq!(canonical(literal.clone(), column), None, "{literal:?}");
        }
        assert_eq!(
            canonical(Operand::Text("Ann".into()), oid::VARCHAR),
            Some(Some(CanonicalValue::Text("Ann".into())))
        );
    }

    #[test]
    fn in_lists_multiply_up_to_a_bound() {
        let values: BTreeMap<&str, Vec<Option<CanonicalValue>>> = [
            ("a", (0..3).map(|i| Some(CanonicalValue::Int(i))).collect()),
            ("b", vec![None, Some(CanonicalValue::Bool(true))]),
        ]
        .into_iter()
        .collect();
        let set = ["a".to_owned(), "b".to_owned()];
        assert_eq!(combinations(&set, &values).unwrap().len(), 6);
        let many: BTreeMap<&str, Vec<Option<CanonicalValue>>> = [
            ("a", (0..20).map(|i| Some(CanonicalValue::Int(i))).collect()),
            ("b", (0..20).map(|i| Some(CanonicalValue::Int(i))).collect()),
        ]
        .into_iter()
        .collect();
        assert!(combinations(&set, &many).is_none());
    }
}
