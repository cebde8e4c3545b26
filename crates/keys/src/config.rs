//! The user's mapping: what the catalog cannot know.
//!
//! Loaded (with the `figment` feature) from TOML, then the environment (`{PREFIX}TABLES__...`,
//! `__` between levels). A table is `[tables."schema.table"]` or, equally,
//! `[tables.schema.table]`; only the nested form can be reached from the
//! environment (figment splits env keys at dots), e.g.
//! `CM_SCHEMA_TABLES__PUBLIC__BOOK__POLICY=whole_table`. A table configured
//! in both forms is an error rather than a silent merge. Shape:
//!
//! ```toml
//! [tables."public.event_log"]
//! key_columns = ["event_id"]          # a table without a primary key
//!
//! [tables."public.book"]
//! policy = "whole_table"              # or "rows" (the default)
//! predicates = [["status"], ["author_id", "status"]]
//! foreign_keys = [
//!   # a logical FK that is not a constraint; parent_columns default to the
//!   # parent's key columns
//!   { columns = ["editor_id"], references = "public.person", parent_columns = ["id"] },
//! ]
//!
//! [tables."public.audit"]
//! ignore = true                       # changes invalidate nothing
//! ```
//!
//! Shape errors (unknown field, wrong type) name their TOML path; so do the
//! mapping errors [`crate::SchemaModel::build`] finds against the catalog,
//! e.g. `tables."public.book".foreign_keys[0].columns`.

use std::collections::BTreeMap;
use std::path::PathBuf;

#[cfg(feature = "figment")]
use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use serde::Deserialize;
use thiserror::Error;

use crate::schema::TablePolicy;

/// The mapping, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Per-table settings, by `"schema.table"` (written either
    /// `[tables."schema.table"]` or nested, `[tables.schema.table]`).
    #[serde(default, deserialize_with = "crate::config_tables::deserialize")]
    pub tables: BTreeMap<String, TableConfig>,
}

/// Settings for one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Changes to this table invalidate nothing; the reader must not cache it.
    #[serde(default)]
    pub ignore: bool,
    /// How changes invalidate.
    #[serde(default)]
    pub policy: TablePolicy,
    /// Row key columns for a table without a primary key.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// Logical foreign keys that are not constraints.
    #[serde(default)]
    pub foreign_keys: Vec<ForeignKeyConfig>,
    /// Extra predicate column sets (FK column sets are predicate sets anyway).
    #[serde(default)]
    pub predicates: Vec<Vec<String>>,
}

/// One configured logical foreign key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeyConfig {
    /// Referencing columns of this table.
    pub columns: Vec<String>,
    /// The referenced table, `"schema.table"`.
    pub references: String,
    /// Referenced columns, pairwise with `columns`; the parent's key columns
    /// when left out.
    #[serde(default)]
    pub parent_columns: Option<Vec<String>>,
}

/// A mapping that cannot be loaded or does not fit the catalog. Every variant
/// with a `path` names the offending TOML path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("mapping file {} does not exist", file.display())]
    NotFound {
        /// The file.
        file: PathBuf,
    },
    /// The TOML or environment does not parse into the mapping's shape.
    #[error("{path}: {message}")]
    Load {
        /// TOML path of the bad value (empty for a syntax error).
        path: String,
        /// What figment said.
        message: String,
    },
    /// A table key is not `schema.table`.
    #[error("{path}: {name:?} is not a schema-qualified table name (\"schema.table\")")]
    BadTableName {
        /// TOML path.
        path: String,
        /// The name given.
        name: String,
    },
    /// The table is not in the catalog.
    #[error("{path}: unknown table {table}")]
    UnknownTable {
        /// TOML path.
        path: String,
        /// The table.
        table: String,
    },
    /// The column is not a column of the table.
    #[error("{path}: table {table} has no column {column:?}")]
    UnknownColumn {
        /// TOML path.
        path: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A column list is empty.
    #[error("{path}: the column list is empty")]
    EmptyColumns {
        /// TOML path.
        path: String,
    },
    /// `columns` and `parent_columns` differ in length.
    #[error("{path}: {columns} columns refer to {parent_columns} parent columns")]
    ColumnCountMismatch {
        /// TOML path.
        path: String,
        /// Referencing column count.
        columns: usize,
        /// Referenced column count.
        parent_columns: usize,
    },
    /// A referencing column's type cannot produce the same keys as its parent column's.
    #[error("{path}: column {column:?} (type oid {column_type}) cannot refer to {parent}.{parent_column} (type oid {parent_type})")]
    TypeMismatch {
        /// TOML path.
        path: String,
        /// Referencing column.
        column: String,
        /// Its type oid.
        column_type: u32,
        /// Referenced table.
        parent: String,
        /// Referenced column.
        parent_column: String,
        /// Its type oid.
        parent_type: u32,
    },
    /// `key_columns` on a table that has a primary key.
    #[error("{path}: table {table} has a primary key; key_columns is only for tables without one")]
    KeyColumnsWithPrimaryKey {
        /// TOML path.
        path: String,
        /// The table.
        table: String,
    },
    /// A foreign key leaves out `parent_columns` but the parent has no key.
    #[error("{path}: parent table {parent} has no key columns; give parent_columns")]
    ParentWithoutKey {
        /// TOML path.
        path: String,
        /// The parent.
        parent: String,
    },
}

#[cfg(feature = "figment")]
impl SchemaConfig {
    /// Loads `file` (TOML), then overrides from environment variables starting
    /// with `env_prefix` (e.g. `CM_SCHEMA_`), levels separated by `__`.
    pub fn load(file: &std::path::Path, env_prefix: &str) -> Result<SchemaConfig, ConfigError> {
        if !file.is_file() {
            return Err(ConfigError::NotFound {
                file: file.to_owned(),
            });
        }
        let figment = Figment::new()
            .merge(Toml::file(file))
            .merge(Env::prefixed(env_prefix).split("__"));
        SchemaConfig::from_figment(&figment)
    }

    /// Parses a mapping from TOML text.
    pub fn from_toml_str(toml: &str) -> Result<SchemaConfig, ConfigError> {
        SchemaConfig::from_figment(&Figment::from(Toml::string(toml)))
    }

    /// Extracts the mapping from any figment (e.g. an application's whole
    /// configuration `.focus("schema")`).
    pub fn from_figment(figment: &Figment) -> Result<SchemaConfig, ConfigError> {
        figment.extract().map_err(|e| ConfigError::Load {
            path: toml_path(e.path.iter().map(String::as_str)),
            message: e.kind.to_string(),
        })
    }
}

/// Renders path segments as a TOML path: bare keys as is, other keys quoted,
/// numeric segments (sequence indices) as `[n]`.
#[cfg(feature = "figment")]
pub(crate) fn toml_path<'a>(segments: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for segment in segments {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let bare = !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            out.push_str(segment);
        } else {
            out.push_str(&format!("{segment:?}"));
        }
    }
    out
}

#[cfg(all(test, feature = "figment"))]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_error_names_its_toml_path() {
        let err = SchemaConfig::from_toml_str(
            r#"
            [tables."public.book"]
            foreign_keys = [{ columns = ["a"], references = "public.author", parnet_columns = ["id"] }]
            "#,
        )
        .err();
        let Some(ConfigError::Load { path, message }) = err else {
            panic!("expected a load error, got {err:?}");
        };
        assert_eq!(
            path,
            r#"tables."public.book".foreign_keys[0].parnet_columns"#
        );
        assert!(message.contains("parnet_columns"), "{message}");
    }

    #[test]
    fn bad_policy_error_names_its_toml_path() {
        let err = SchemaConfig::from_toml_str("[tables.\"s.t\"]\npolicy = \"sometimes\"\n").err();
        let Some(ConfigError::Load { path, .. }) = err else {
            panic!("expected a load error, got {err:?}");
        };
        assert_eq!(path, r#"tables."s.t".policy"#);
    }

    #[test]
    fn full_mapping_parses() -> Result<(), ConfigError> {
        let config = SchemaConfig::from_toml_str(
            r#"
            [tables."public.book"]
            policy = "whole_table"
            predicates = [["status"], ["author_id", "status"]]
            foreign_keys = [{ columns = ["editor_id"], references = "public.person" }]
            [tables."public.log"]
            key_columns = ["id"]
            ignore = true
            "#,
        )?;
        let book = &config.tables["public.book"];
        assert_eq!(book.policy, TablePolicy::WholeTable);
        assert_eq!(book.predicates.len(), 2);
        assert_eq!(book.foreign_keys[0].parent_columns, None);
        assert!(config.tables["public.log"].ignore);
        Ok(())
    }

    #[test]
    fn missing_file_is_its_own_error() {
        let file = std::path::Path::new("/nonexistent/cm-keys.toml");
        assert_eq!(
            SchemaConfig::load(file, "CM_KEYS_TEST_"),
            Err(ConfigError::NotFound {
                file: file.to_owned()
            })
        );
    }

    #[test]
    fn nested_and_quoted_table_forms_are_the_same() -> Result<(), ConfigError> {
        let quoted =
            SchemaConfig::from_toml_str("[tables.\"public.book\"]\npolicy = \"whole_table\"\n")?;
        let nested =
            SchemaConfig::from_toml_str("[tables.public.book]\npolicy = \"whole_table\"\n")?;
        assert_eq!(quoted, nested);
        assert_eq!(nested.tables["public.book"].policy, TablePolicy::WholeTable);
        Ok(())
    }

    #[test]
    fn a_table_configured_in_both_forms_is_an_error() {
        let err = SchemaConfig::from_toml_str(
            "[tables.\"public.book\"]\nignore = true\n[tables.public.book]\nignore = false\n",
        );
        assert!(
            matches!(&err, Err(ConfigError::Load { message, .. }) if message.contains("configured twice")),
            "{err:?}"
        );
    }

    #[test]
    fn environment_overrides_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("schema.toml");
        std::fs::write(
            &file,
            "[tables.public.book]\npredicates = [[\"status\"]]\n[tables.public.log]\nkey_columns = [\"id\"]\n",
        )?;
        // A prefix no other test uses: the environment is process-wide.
        std::env::set_var(
            "CM_KEYS_UNIT_ENV_TABLES__PUBLIC__BOOK__POLICY",
            "whole_table",
        );
        let config = SchemaConfig::load(&file, "CM_KEYS_UNIT_ENV_")?;
        std::env::remove_var("CM_KEYS_UNIT_ENV_TABLES__PUBLIC__BOOK__POLICY");
        let book = &config.tables["public.book"];
        assert_eq!(book.policy, TablePolicy::WholeTable);
        assert_eq!(book.predicates, vec![vec!["status".to_owned()]]);
        assert_eq!(
            config.tables["public.log"].key_columns,
            vec!["id".to_owned()]
        );
        Ok(())
    }
}
