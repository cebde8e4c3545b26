//! The property the key scheme exists for: for random rows and changes (insert,
//! update with and without old tuple, delete with a key-only old tuple, PK
//! change, FK change, unchanged TOAST), every key the reader would register
//! for the old or the new row version is among the keys the invalidator
//! derives for that change, or the change bumps the table generation the
//! reader snapshotted.
//!
//! The tuples are what pgoutput sends for the table's replica identity
//! (`docs/pgoutput.md` §3.1); the reader's keys are computed here straight
//! from the row values with `KeySpace`, not through `derive`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use cm_keys::{
    derive, images_from_pgoutput, keys_for_row, CanonicalValue, ChangeKind, ColumnSet, Key,
    KeySpace, ReplicaIdentity, RowImage, Table, TableName, Value,
};
use cm_pgoutput::{OldTuple, TupleData};
use common::{book, relation, tuple};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    author_id: Option<i64>,
    title: String,
}

#[derive(Debug, Clone)]
enum Change {
    Insert(Row),
    Update {
        old: Row,
        new: Row,
        toast_title: bool,
    },
    Delete(Row),
}

fn row() -> impl Strategy<Value = Row> {
    (
        0i64..3,
        proptest::option::of(0i64..3),
        prop::sample::select(vec!["a", "b", "ü 'x'"]),
    )
        .prop_map(|(id, author_id, title)| Row {
            id,
            author_id,
            title: title.to_owned(),
        })
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        row().prop_map(Change::Insert),
        (row(), row(), any::<bool>()).prop_map(|(old, new, toast_title)| Change::Update {
            old,
            new,
            toast_title
        }),
        row().prop_map(Change::Delete),
    ]
}

fn model(identity: ReplicaIdentity) -> Table {
    let mut t = book(identity);
    t.predicate_sets = vec![
        ColumnSet::new(["author_id"]),
        ColumnSet::new(["t_title"]),
        ColumnSet::new(["author_id", "t_title"]),
    ];
    t
}

fn text(row: &Row) -> [Option<String>; 3] {
    [
        Some(row.id.to_string()),
        row.author_id.map(|a| a.to_string()),
        Some(row.title.clone()),
    ]
}

fn tuple_of(values: &[Option<String>]) -> TupleData {
    let refs: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
    tuple(&refs)
}

/// What pgoutput sends for this change under `identity` (`docs/pgoutput.md` §3.1).
fn wire(
    change: &Change,
    identity: ReplicaIdentity,
) -> (ChangeKind, Option<OldTuple>, Option<TupleData>) {
    let full = identity == ReplicaIdentity::Full;
    let key_only = |row: &Row| OldTuple::Key(tuple_of(&[Some(row.id.to_string()), None, None]));
    match change {
        Change::Insert(new) => (ChangeKind::Insert, None, Some(tuple_of(&text(new)))),
        Change::Delete(old) => {
            let old = if full {
                OldTuple::Full(tuple_of(&text(old)))
            } else {
                key_only(old)
            };
            (ChangeKind::Delete, Some(old), None)
        }
        Change::Update {
            old,
            new,
            toast_title,
        } => {
            let mut new_text = text(new);
            // An unchanged out-of-line value is sent as `u` (`docs/pgoutput.md` §3.3).
            if *toast_title && old.title == new.title {
                new_text[2] = Some("<u>".into());
            }
            let old_tuple = if full {
                Some(OldTuple::Full(tuple_of(&text(old))))
            } else if old.id != new.id {
                Some(key_only(old))
            } else {
                None
            };
            (ChangeKind::Update, old_tuple, Some(tuple_of(&new_text)))
        }
    }
}

/// Every key a reader registers a result under for having seen `row`.
fn reader_keys(space: &KeySpace, row: &Row) -> BTreeSet<Key> {
    let book = TableName::new("public", "book");
    let author = TableName::new("public", "author");
    let id = CanonicalValue::Int(row.id);
    let author_id = row.author_id.map(CanonicalValue::Int);
    let title = CanonicalValue::Text(row.title.clone());
    let mut keys = BTreeSet::from([
        space.object(&book, &[("id", Some(&id))]),
        space.predicate(&book, &[("author_id", author_id.as_ref())]),
        space.predicate(&book, &[("t_title", Some(&title))]),
        space.predicate(
            &book,
            &[("author_id", author_id.as_ref()), ("t_title", Some(&title))],
        ),
    ]);
    if let Some(a) = &author_id {
        keys.insert(space.object(&author, &[("id", Some(a))]));
    }
    keys
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_registered_key_is_derived_or_the_generation_bumps(
        change in change(),
        full in any::<bool>(),
    ) {
        let identity = if full { ReplicaIdentity::Full } else { ReplicaIdentity::Default };
        let table = model(identity);
        let space = KeySpace::new("p").unwrap();
        let (kind, old, new) = wire(&change, identity);
        let images = images_from_pgoutput(&relation(&table), kind, old.as_ref(), new.as_ref()).unwrap();
        let inv = derive(&space, &table, kind, images.old.as_ref(), images.new.as_ref());

        let versions: Vec<&Row> = match &change {
            Change::Insert(r) | Change::Delete(r) => vec![r],
            Change::Update { old, new, .. } => vec![old, new],
        };
        let derived: BTreeSet<&Key> = inv.flush_keys();
        // Every change empties the table's "any change" list, where results
        // over the whole table are registered.
        let table_changes = space.table_changes(&TableName::new("public", "book"));
        prop_assert!(derived.contains(&table_changes));
        if !inv.bump_table_generation {
            for version in &versions {
                for key in reader_keys(&space, version) {
                    prop_assert!(derived.contains(&key), "{change:?}: {key} not derived");
                }
            }
        }
        // The fallback is not taken when everything is known.
        if full || matches!(change, Change::Insert(_)) {
            prop_assert!(!inv.bump_table_generation, "{change:?} bumped under {identity:?}");
        }
        // The library's reader side agrees with the keys computed here.
        for version in &versions {
            let image = RowImage::new()
                .with("id", Value::Known(CanonicalValue::Int(version.id)))
                .with("author_id", version.author_id.map_or(Value::Null, |a| Value::Known(CanonicalValue::Int(a))))
                .with("t_title", Value::Known(CanonicalValue::Text(version.title.clone())));
            let registered = keys_for_row(&space, &table, &image);
            prop_assert!(!registered.bump_table_generation);
            let registered: BTreeSet<Key> = registered.row_keys().into_iter().cloned().collect();
            prop_assert_eq!(registered, reader_keys(&space, version));
        }
        // The object key of every version is always derived: the row key is
        // in every old tuple kind.
        for version in &versions {
            let id = CanonicalValue::Int(version.id);
            let key = space.object(&TableName::new("public", "book"), &[("id", Some(&id))]);
            prop_assert!(derived.contains(&key));
        }
    }
}
