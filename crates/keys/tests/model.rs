//! Building the schema model from discovered tables plus the TOML mapping:
//! what the mapping changes, and errors that name their TOML path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_keys::{
    oid, ColumnSet, ConfigError, ForeignKeySource, KeySource, ReplicaIdentity, SchemaConfig,
    SchemaModel, Table, TableName, TablePolicy,
};
use common::{book, fk, table};

fn catalog() -> Vec<Table> {
    let author = table(
        "author",
        &["id", "t_email"],
        &["id"],
        ReplicaIdentity::Default,
    );
    let mut book = book(ReplicaIdentity::Full);
    book.predicate_sets.clear(); // the model derives them
    let log = table(
        "log",
        &["seq", "t_msg", "author_ref"],
        &[],
        ReplicaIdentity::Full,
    );
    let mut note = table(
        "note",
        &["id", "t_body", "t_author_email"],
        &["id"],
        ReplicaIdentity::Full,
    );
    note.columns[2].type_oid = oid::VARCHAR;
    vec![author, book, log, note]
}

fn build(toml: &str) -> Result<SchemaModel, ConfigError> {
    SchemaModel::build(catalog(), &SchemaConfig::from_toml_str(toml)?)
}

fn name(n: &str) -> TableName {
    TableName::new("public", n)
}

fn error_path(toml: &str) -> String {
    match build(toml) {
        Ok(_) => panic!("mapping accepted: {toml}"),
        Err(
            ConfigError::Load { path, .. }
            | ConfigError::BadTableName { path, .. }
            | ConfigError::UnknownTable { path, .. }
            | ConfigError::UnknownColumn { path, .. }
            | ConfigError::EmptyColumns { path }
            | ConfigError::ColumnCountMismatch { path, .. }
            | ConfigError::TypeMismatch { path, .. }
            | ConfigError::KeyColumnsWithPrimaryKey { path, .. }
            | ConfigError::ParentWithoutKey { path, .. },
        ) => path,
        Err(other) => panic!("no path in {other:?}"),
    }
}

#[test]
fn fk_column_sets_are_predicate_sets_by_default() {
    let model = build("").unwrap();
    let book = model.table(&name("book")).unwrap();
    assert_eq!(book.predicate_sets, vec![ColumnSet::new(["author_id"])]);
    assert!(book.foreign_keys[0].references_parent_key);
    assert!(model
        .table(&name("author"))
        .unwrap()
        .predicate_sets
        .is_empty());
}

#[test]
fn mapping_adds_key_columns_fks_predicates_and_policy() {
    let model = build(
        r#"
        [tables."public.log"]
        key_columns = ["seq"]
        foreign_keys = [{ columns = ["author_ref"], references = "public.author" }]
        [tables."public.book"]
        policy = "whole_table"
        predicates = [["t_title", "author_id"]]
        "#,
    )
    .unwrap();
    let log = model.table(&name("log")).unwrap();
    assert_eq!(log.primary_key, vec!["seq"]);
    assert_eq!(log.key_source, KeySource::Configured);
    assert_eq!(log.foreign_keys[0].parent_columns, vec!["id"]);
    assert_eq!(log.foreign_keys[0].source, ForeignKeySource::Configured);
    assert!(log.foreign_keys[0].references_parent_key);
    assert_eq!(log.predicate_sets, vec![ColumnSet::new(["author_ref"])]);
    let book = model.table(&name("book")).unwrap();
    assert_eq!(book.policy, TablePolicy::WholeTable);
    assert!(book
        .predicate_sets
        .contains(&ColumnSet::new(["author_id", "t_title"])));
}

#[test]
fn fk_to_non_key_columns_becomes_a_predicate_set_of_the_parent() {
    let model = build(
        r#"
        [tables."public.note"]
        foreign_keys = [{ columns = ["t_author_email"], references = "public.author", parent_columns = ["t_email"] }]
        "#,
    )
    .unwrap();
    let note = model.table(&name("note")).unwrap();
    assert!(!note.foreign_keys[0].references_parent_key);
    let author = model.table(&name("author")).unwrap();
    assert_eq!(author.predicate_sets, vec![ColumnSet::new(["t_email"])]);
}

#[test]
fn ignored_tables_leave_the_model() {
    let model = build("[tables.\"public.log\"]\nignore = true\n").unwrap();
    assert!(model.table(&name("log")).is_none());
    assert!(model.is_ignored(&name("log")));
    assert!(!model.is_ignored(&name("book")));

    // An FK to an ignored table still names the parent's object key.
    let model = build("[tables.\"public.author\"]\nignore = true\n").unwrap();
    assert!(model.table(&name("author")).is_none());
    assert!(model.table(&name("book")).unwrap().foreign_keys[0].references_parent_key);
}

#[test]
fn unknown_table_names_its_path() {
    assert_eq!(
        error_path("[tables.\"public.nope\"]\nignore = true\n"),
        r#"tables."public.nope""#
    );
    // Without a dot the key is a schema holding tables: `ignore` is then a
    // table whose settings are not a table.
    assert_eq!(
        error_path("[tables.\"nodot\"]\nignore = true\n"),
        "tables.nodot.ignore"
    );
    assert_eq!(
        error_path("[tables.\"public.\"]\nignore = true\n"),
        r#"tables."public.""#
    );
    assert_eq!(
        error_path("[tables.public.nope]\nignore = true\n"),
        r#"tables."public.nope""#
    );
}

#[test]
fn unknown_fk_column_names_its_path() {
    let toml = r#"
        [tables."public.book"]
        foreign_keys = [
          { columns = ["author_id"], references = "public.author" },
          { columns = ["nope"], references = "public.author" },
        ]
    "#;
    assert_eq!(
        error_path(toml),
        r#"tables."public.book".foreign_keys[1].columns[0]"#
    );
    let err = build(toml).unwrap_err().to_string();
    assert!(err.contains("has no column \"nope\""), "{err}");
}

#[test]
fn fk_type_mismatch_names_its_path() {
    let toml = r#"
        [tables."public.book"]
        foreign_keys = [{ columns = ["t_title"], references = "public.author" }]
    "#;
    assert_eq!(
        error_path(toml),
        r#"tables."public.book".foreign_keys[0].columns"#
    );
    assert!(matches!(
        build(toml),
        Err(ConfigError::TypeMismatch {
            column_type: oid::TEXT,
            parent_type: oid::INT4,
            ..
        })
    ));
}

#[test]
fn text_and_varchar_may_refer_to_each_other() {
    build(
        r#"
        [tables."public.note"]
        foreign_keys = [{ columns = ["t_author_email"], references = "public.author", parent_columns = ["t_email"] }]
        "#,
    )
    .unwrap();
}

#[test]
fn other_mapping_errors_name_their_paths() {
    let cases = [
        (
            "[tables.\"public.book\"]\nforeign_keys = [{ columns = [\"author_id\"], references = \"public.ghost\" }]\n",
            r#"tables."public.book".foreign_keys[0].references"#,
        ),
        (
            "[tables.\"public.book\"]\nforeign_keys = [{ columns = [\"author_id\", \"id\"], references = \"public.author\" }]\n",
            r#"tables."public.book".foreign_keys[0].columns"#,
        ),
        (
            "[tables.\"public.book\"]\nforeign_keys = [{ columns = [\"author_id\"], references = \"public.author\", parent_columns = [\"idd\"] }]\n",
            r#"tables."public.book".foreign_keys[0].parent_columns[0]"#,
        ),
        (
            "[tables.\"public.book\"]\nforeign_keys = [{ columns = [\"author_id\"], references = \"public.log\" }]\n",
            r#"tables."public.book".foreign_keys[0].parent_columns"#,
        ),
        (
            "[tables.\"public.book\"]\nkey_columns = [\"id\"]\n",
            r#"tables."public.book".key_columns"#,
        ),
        (
            "[tables.\"public.log\"]\nkey_columns = [\"seq\", \"sequence\"]\n",
            r#"tables."public.log".key_columns[1]"#,
        ),
        (
            "[tables.\"public.book\"]\npredicates = [[\"author_id\"], []]\n",
            r#"tables."public.book".predicates[1]"#,
        ),
        (
            "[tables.\"public.book\"]\npredicates = [[\"author_id\", \"x\"]]\n",
            r#"tables."public.book".predicates[0][1]"#,
        ),
        (
            "[tables.\"public.book\"]\npolicy = 3\n",
            r#"tables."public.book".policy"#,
        ),
    ];
    for (toml, path) in cases {
        assert_eq!(error_path(toml), path, "{toml}");
    }
}

#[test]
fn fk_and_predicate_columns_outside_the_key_need_full_identity() {
    let mut t = fk_table();
    assert_eq!(
        t.columns_needing_full_identity()
            .into_iter()
            .collect::<Vec<_>>(),
        vec!["author_id"]
    );
    t.replica_identity = ReplicaIdentity::Full;
    assert!(t.columns_needing_full_identity().is_empty());
}

fn fk_table() -> Table {
    let mut t = table("b", &["id", "author_id"], &["id"], ReplicaIdentity::Default);
    t.foreign_keys.push(fk(&["author_id"], "author", &["id"]));
    t
}
