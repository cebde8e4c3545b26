//! Row change -> keys, one behaviour per test, with images built from
//! pgoutput tuples as the invalidator receives them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_keys::{
    derive, derive_row_keys, images_from_pgoutput, CanonicalValue, ChangeKind, ColumnSet,
    ImageError, Invalidation, KeySpace, ReplicaIdentity, RowImage, Table, TableKeys, TableName,
    TablePolicy, Value,
};
use cm_pgoutput::OldTuple;
use common::{book, fk, relation, table, tuple};

fn space() -> KeySpace {
    KeySpace::new("t").unwrap()
}

fn int(v: i64) -> CanonicalValue {
    CanonicalValue::Int(v)
}

fn object(table: &str, id: i64) -> cm_keys::Key {
    space().object(&TableName::new("public", table), &[("id", Some(&int(id)))])
}

fn by_author(id: i64) -> cm_keys::Key {
    space().predicate(
        &TableName::new("public", "book"),
        &[("author_id", Some(&int(id)))],
    )
}

/// Builds images from pgoutput tuples, then derives.
fn change(
    table: &Table,
    kind: ChangeKind,
    old: Option<OldTuple>,
    new: Option<&[Option<&str>]>,
) -> Invalidation {
    let new = new.map(tuple);
    let images = images_from_pgoutput(&relation(table), kind, old.as_ref(), new.as_ref()).unwrap();
    let (old, new) = (images.old.as_ref(), images.new.as_ref());
    let inv = derive(&space(), table, kind, old, new);
    assert_row_keys_agree(table, kind, old, new, &inv);
    inv
}

/// `derive_row_keys` and `TableKeys` (the invalidator's path) give exactly
/// what `derive` gives, each row key once.
fn assert_row_keys_agree(
    table: &Table,
    kind: ChangeKind,
    old: Option<&RowImage>,
    new: Option<&RowImage>,
    inv: &Invalidation,
) {
    let mut keys = vec![space().epoch()];
    let bump = derive_row_keys(&space(), table, kind, old, new, &mut keys);
    assert_eq!(bump, inv.bump_table_generation);
    let appended: Vec<&cm_keys::Key> = keys[1..].iter().collect();
    let distinct: std::collections::BTreeSet<&cm_keys::Key> = appended.iter().copied().collect();
    assert_eq!(distinct.len(), appended.len(), "a row key appended twice");
    assert_eq!(distinct, inv.row_keys());
    let table_keys = TableKeys::new(&space(), table);
    assert_eq!(table_keys.table_changes, inv.table_changes);
    assert_eq!(table_keys.table_generation, inv.table_generation);
}

#[test]
fn insert_invalidates_object_parent_and_predicate() {
    let inv = change(
        &book(ReplicaIdentity::Default),
        ChangeKind::Insert,
        None,
        Some(&[Some("10"), Some("1"), Some("t")]),
    );
    assert_eq!(inv.objects, vec![object("book", 10)]);
    assert_eq!(inv.parents, vec![object("author", 1)]);
    assert_eq!(inv.predicates, vec![by_author(1)]);
    assert!(!inv.bump_table_generation);
    assert_eq!(
        inv.table_generation,
        space().table_generation(&TableName::new("public", "book"))
    );
}

#[test]
fn fk_change_without_old_tuple_bumps_table_generation() {
    // docs/pgoutput.md §3.2: `U N[10, 2, 't']`, the old author_id 1 is sent nowhere.
    let inv = change(
        &book(ReplicaIdentity::Default),
        ChangeKind::Update,
        None,
        Some(&[Some("10"), Some("2"), Some("t")]),
    );
    assert!(inv.bump_table_generation);
    // What is known is still invalidated: the key did not change.
    assert_eq!(inv.objects, vec![object("book", 10)]);
    assert_eq!(inv.parents, vec![object("author", 2)]);
    assert_eq!(inv.predicates, vec![by_author(2)]);
}

#[test]
fn fk_change_with_full_identity_invalidates_old_and_new_parent_without_bump() {
    let inv = change(
        &book(ReplicaIdentity::Full),
        ChangeKind::Update,
        Some(OldTuple::Full(tuple(&[Some("10"), Some("1"), Some("t")]))),
        Some(&[Some("10"), Some("2"), Some("t")]),
    );
    assert!(!inv.bump_table_generation);
    assert_eq!(inv.objects, vec![object("book", 10)]);
    let mut parents = vec![object("author", 1), object("author", 2)];
    parents.sort();
    assert_eq!(inv.parents, parents);
    let mut predicates = vec![by_author(1), by_author(2)];
    predicates.sort();
    assert_eq!(inv.predicates, predicates);
}

#[test]
fn pk_change_invalidates_old_and_new_object() {
    // docs/pgoutput.md §3.2: `U K[10, n, n] N[11, 2, 't']`.
    let plain = table("tag", &["id", "t_label"], &["id"], ReplicaIdentity::Default);
    let inv = change(
        &plain,
        ChangeKind::Update,
        Some(OldTuple::Key(tuple(&[Some("10"), None]))),
        Some(&[Some("11"), Some("x")]),
    );
    let mut objects = vec![object("tag", 10), object("tag", 11)];
    objects.sort();
    assert_eq!(inv.objects, objects);
    assert!(!inv.bump_table_generation, "no non-key column feeds a key");
}

#[test]
fn key_only_old_tuple_nulls_are_unknown_not_null() {
    // `K[11, n, n]`: author_id is "not sent", not NULL, so the old parent
    // cannot be derived: bump.
    let inv = change(
        &book(ReplicaIdentity::Default),
        ChangeKind::Delete,
        Some(OldTuple::Key(tuple(&[Some("11"), None, None]))),
        None,
    );
    assert_eq!(inv.objects, vec![object("book", 11)]);
    assert!(inv.parents.is_empty());
    assert!(inv.bump_table_generation);
}

#[test]
fn delete_with_full_old_row_needs_no_bump() {
    let inv = change(
        &book(ReplicaIdentity::Full),
        ChangeKind::Delete,
        Some(OldTuple::Full(tuple(&[Some("10"), Some("2"), Some("t")]))),
        None,
    );
    assert_eq!(inv.objects, vec![object("book", 10)]);
    assert_eq!(inv.parents, vec![object("author", 2)]);
    assert!(!inv.bump_table_generation);
}

#[test]
fn null_fk_has_no_parent_but_keeps_its_predicate() {
    let inv = change(
        &book(ReplicaIdentity::Full),
        ChangeKind::Insert,
        None,
        Some(&[Some("10"), None, Some("t")]),
    );
    assert!(inv.parents.is_empty());
    assert_eq!(
        inv.predicates,
        vec![space().predicate(&TableName::new("public", "book"), &[("author_id", None)])]
    );
    assert!(!inv.bump_table_generation);
}

#[test]
fn truncate_bumps_table_generation_and_derives_no_row_keys() {
    let inv = derive(
        &space(),
        &book(ReplicaIdentity::Full),
        ChangeKind::Truncate,
        None,
        None,
    );
    assert!(inv.bump_table_generation);
    assert!(inv.row_keys().is_empty());
    assert_eq!(
        inv.flush_keys().into_iter().collect::<Vec<_>>(),
        vec![&inv.table_changes]
    );
}

#[test]
fn whole_table_policy_bumps_on_every_change() {
    let mut t = book(ReplicaIdentity::Full);
    t.policy = TablePolicy::WholeTable;
    let inv = change(
        &t,
        ChangeKind::Insert,
        None,
        Some(&[Some("1"), Some("1"), Some("t")]),
    );
    assert!(inv.bump_table_generation);
    assert!(inv.row_keys().is_empty());
    assert_eq!(
        inv.flush_keys().into_iter().collect::<Vec<_>>(),
        vec![&inv.table_changes]
    );
}

#[test]
fn table_without_row_key_bumps_every_change() {
    let t = table("log", &["a", "b"], &[], ReplicaIdentity::Full);
    let inv = change(&t, ChangeKind::Insert, None, Some(&[Some("1"), Some("2")]));
    assert!(inv.bump_table_generation);
    assert!(inv.objects.is_empty());
}

#[test]
fn unchanged_toast_takes_the_old_value_under_full_identity() {
    let mut t = table("doc", &["id", "t_body"], &["id"], ReplicaIdentity::Full);
    t.predicate_sets.push(ColumnSet::new(["t_body"]));
    let inv = change(
        &t,
        ChangeKind::Update,
        Some(OldTuple::Full(tuple(&[Some("1"), Some("big")]))),
        Some(&[Some("1"), Some("<u>")]),
    );
    assert!(!inv.bump_table_generation);
    let body = CanonicalValue::Text("big".into());
    assert_eq!(
        inv.predicates,
        vec![space().predicate(&t.name, &[("t_body", Some(&body))])]
    );
}

#[test]
fn unchanged_toast_without_old_value_bumps_when_it_feeds_a_key() {
    let mut t = table("doc", &["id", "t_body"], &["id"], ReplicaIdentity::Default);
    t.predicate_sets.push(ColumnSet::new(["t_body"]));
    let inv = change(
        &t,
        ChangeKind::Update,
        None,
        Some(&[Some("1"), Some("<u>")]),
    );
    assert!(inv.bump_table_generation);
    assert_eq!(inv.objects, vec![object("doc", 1)]);
}

#[test]
fn unchanged_toast_in_a_column_no_key_uses_does_not_bump() {
    let t = table("doc", &["id", "t_body"], &["id"], ReplicaIdentity::Default);
    let inv = change(
        &t,
        ChangeKind::Update,
        None,
        Some(&[Some("1"), Some("<u>")]),
    );
    assert!(!inv.bump_table_generation);
    assert_eq!(inv.objects, vec![object("doc", 1)]);
}

#[test]
fn fk_column_of_an_unsafe_type_bumps() {
    let mut t = book(ReplicaIdentity::Full);
    t.columns[1].type_oid = 1700; // numeric: 1.0 vs 1.00
    let inv = change(
        &t,
        ChangeKind::Insert,
        None,
        Some(&[Some("10"), Some("1.0"), Some("t")]),
    );
    assert!(inv.bump_table_generation);
    assert!(inv.parents.is_empty());
    assert_eq!(inv.objects, vec![object("book", 10)]);
}

#[test]
fn nondeterministic_collation_column_bumps() {
    let mut t = table("person", &["id", "t_email"], &["id"], ReplicaIdentity::Full);
    t.columns[1].deterministic_collation = false;
    t.predicate_sets.push(ColumnSet::new(["t_email"]));
    let inv = change(
        &t,
        ChangeKind::Insert,
        None,
        Some(&[Some("1"), Some("A@x")]),
    );
    assert!(inv.bump_table_generation);
    assert!(inv.predicates.is_empty());
}

#[test]
fn update_without_old_tuple_under_index_identity_cannot_trust_the_pk() {
    // docs/pgoutput.md §3.4: with USING INDEX, a PK change that does not touch the
    // identity index carries no old tuple.
    let t = table("item", &["id", "code"], &["id"], ReplicaIdentity::Index);
    let mut rel = relation(&t);
    rel.columns[0].flags = 0; // id: not in the identity index
    rel.columns[1].flags = 1; // code: the identity index
    let new = tuple(&[Some("2"), Some("7")]);
    let images = images_from_pgoutput(&rel, ChangeKind::Update, None, Some(&new)).unwrap();
    let inv = derive(
        &space(),
        &t,
        ChangeKind::Update,
        images.old.as_ref(),
        images.new.as_ref(),
    );
    assert!(inv.bump_table_generation);
    assert_eq!(inv.objects, vec![object("item", 2)]);
}

#[test]
fn partition_leaf_derives_its_roots_keys() {
    let mut leaf = table("m_2024", &["id"], &["id"], ReplicaIdentity::Full);
    leaf.partition_root = Some(TableName::new("public", "m"));
    let inv = change(&leaf, ChangeKind::Insert, None, Some(&[Some("5")]));
    assert_eq!(inv.objects, vec![object("m", 5)]);
    assert_eq!(
        inv.table_generation,
        space().table_generation(&TableName::new("public", "m"))
    );
}

#[test]
fn composite_keys_do_not_depend_on_column_order() {
    let mut t = table(
        "line",
        &["order_id", "n", "sku"],
        &["order_id", "n"],
        ReplicaIdentity::Full,
    );
    t.foreign_keys.push(fk(&["order_id"], "order", &["id"]));
    let row = RowImage::new()
        .with("order_id", Value::Known(int(1)))
        .with("n", Value::Known(int(2)))
        .with("sku", Value::Known(int(3)));
    let inv = derive(&space(), &t, ChangeKind::Insert, None, Some(&row));
    let expected = space().object(
        &t.name,
        &[("n", Some(&int(2))), ("order_id", Some(&int(1)))],
    );
    assert_eq!(inv.objects, vec![expected]);
    assert_eq!(inv.parents, vec![object("order", 1)]);
}

#[test]
fn missing_images_count_as_unknown() {
    let inv = derive(
        &space(),
        &book(ReplicaIdentity::Full),
        ChangeKind::Delete,
        None,
        None,
    );
    assert!(inv.bump_table_generation);
    assert!(inv.row_keys().is_empty());
    assert_eq!(
        inv.flush_keys().into_iter().collect::<Vec<_>>(),
        vec![&inv.table_changes]
    );
}

#[test]
fn tuple_not_matching_its_relation_is_an_error() {
    let t = book(ReplicaIdentity::Full);
    let short = tuple(&[Some("1")]);
    assert!(matches!(
        images_from_pgoutput(&relation(&t), ChangeKind::Insert, None, Some(&short)),
        Err(ImageError::ColumnCount {
            expected: 3,
            tuple: 1,
            ..
        })
    ));
}

#[test]
fn malformed_text_of_a_safe_type_is_an_error_not_a_guess() {
    let t = book(ReplicaIdentity::Full);
    let bad = tuple(&[Some("1"), Some("one"), Some("t")]);
    let err = images_from_pgoutput(&relation(&t), ChangeKind::Insert, None, Some(&bad));
    assert!(
        matches!(&err, Err(ImageError::Value { column, .. }) if column == "author_id"),
        "{err:?}"
    );
}
