//! Building the [`SchemaModel`]: discovered tables plus the mapping, checked.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{ConfigError, ForeignKeyConfig, SchemaConfig, TableConfig};
use crate::schema::{
    ColumnSet, ForeignKey, ForeignKeySource, KeySource, SchemaModel, Table, TableName, TablePolicy,
};
use crate::value::TypeFamily;

impl SchemaModel {
    /// Applies `config` to the `discovered` tables and resolves everything
    /// derive needs:
    ///
    /// * configured key columns, policies, logical FKs and predicate sets;
    /// * a partition inherits its root's mapping and foreign keys (changes
    ///   arrive for the leaf, keys are the root's);
    /// * each FK's parent becomes the parent's key identity, and an FK that
    ///   references columns other than the parent's key adds that column set
    ///   to the parent's predicate sets;
    /// * every FK's own column set is a predicate set of its table.
    ///
    /// Fails on the first mapping error, naming its TOML path.
    pub fn build(
        discovered: Vec<Table>,
        config: &SchemaConfig,
    ) -> Result<SchemaModel, ConfigError> {
        let mut tables: BTreeMap<TableName, Table> = discovered
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut ignored = BTreeSet::new();

        // Table names and key columns first: FKs below compare against keys.
        let mut configured = Vec::new();
        for (key, table_config) in &config.tables {
            let path = format!("tables.{key:?}");
            let name = TableName::parse(key).ok_or_else(|| ConfigError::BadTableName {
                path: path.clone(),
                name: key.clone(),
            })?;
            let table = tables
                .get_mut(&name)
                .ok_or_else(|| ConfigError::UnknownTable {
                    path: path.clone(),
                    table: key.clone(),
                })?;
            if table_config.ignore {
                ignored.insert(name);
                continue;
            }
            apply_key_columns(table, table_config, &path)?;
            table.policy = table_config.policy;
            configured.push((name, path, table_config));
        }
        for (name, path, table_config) in configured {
            apply_foreign_keys(&mut tables, &name, &table_config.foreign_keys, &path)?;
            apply_predicates(&mut tables, &name, &table_config.predicates, &path)?;
        }
        inherit_from_partition_roots(&mut tables);
        // Resolve before dropping ignored tables: an FK to an ignored table
        // still names the parent's key correctly.
        resolve_foreign_keys(&mut tables);
        for name in &ignored {
            tables.remove(name);
        }

        let by_oid = tables
            .values()
            .filter_map(|t| Some((t.oid?, t.name.clone())))
            .collect();
        Ok(SchemaModel {
            tables,
            by_oid,
            ignored,
        })
    }
}

fn check_columns(table: &Table, columns: &[String], path: &str) -> Result<(), ConfigError> {
    if columns.is_empty() {
        return Err(ConfigError::EmptyColumns { path: path.into() });
    }
    for (i, column) in columns.iter().enumerate() {
        if table.column(column).is_none() {
            return Err(ConfigError::UnknownColumn {
                path: format!("{path}[{i}]"),
                table: table.name.to_string(),
                column: column.clone(),
            });
        }
    }
    Ok(())
}

fn apply_key_columns(
    table: &mut Table,
    config: &TableConfig,
    path: &str,
) -> Result<(), ConfigError> {
    if config.key_columns.is_empty() {
        return Ok(());
    }
    let path = format!("{path}.key_columns");
    if table.key_source == KeySource::PrimaryKey {
        return Err(ConfigError::KeyColumnsWithPrimaryKey {
            path,
            table: table.name.to_string(),
        });
    }
    check_columns(table, &config.key_columns, &path)?;
    table.primary_key = config.key_columns.clone();
    table.key_source = KeySource::Configured;
    Ok(())
}

fn apply_foreign_keys(
    tables: &mut BTreeMap<TableName, Table>,
    name: &TableName,
    foreign_keys: &[ForeignKeyConfig],
    path: &str,
) -> Result<(), ConfigError> {
    let mut resolved = Vec::new();
    let Some(table) = tables.get(name) else {
        return Ok(());
    };
    for (i, fk) in foreign_keys.iter().enumerate() {
        let path = format!("{path}.foreign_keys[{i}]");
        check_columns(table, &fk.columns, &format!("{path}.columns"))?;
        let references = format!("{path}.references");
        let parent_name =
            TableName::parse(&fk.references).ok_or_else(|| ConfigError::BadTableName {
                path: references.clone(),
                name: fk.references.clone(),
            })?;
        let parent = tables
            .get(&parent_name)
            .ok_or_else(|| ConfigError::UnknownTable {
                path: references,
                table: fk.references.clone(),
            })?;
        let parent_columns = match &fk.parent_columns {
            Some(columns) => {
                check_columns(parent, columns, &format!("{path}.parent_columns"))?;
                columns.clone()
            }
            None if parent.primary_key.is_empty() => {
                return Err(ConfigError::ParentWithoutKey {
                    path: format!("{path}.parent_columns"),
                    parent: parent_name.to_string(),
                })
            }
            None => parent.primary_key.clone(),
        };
        let columns_path = format!("{path}.columns");
        if parent_columns.len() != fk.columns.len() {
            return Err(ConfigError::ColumnCountMismatch {
                path: columns_path,
                columns: fk.columns.len(),
                parent_columns: parent_columns.len(),
            });
        }
        for (column, parent_column) in fk.columns.iter().zip(&parent_columns) {
            let (Some(child), Some(parent_col)) =
                (table.column(column), parent.column(parent_column))
            else {
                continue; // checked above
            };
            let (a, b) = (
                TypeFamily::of(child.type_oid),
                TypeFamily::of(parent_col.type_oid),
            );
            if a != b {
                return Err(ConfigError::TypeMismatch {
                    path: columns_path,
                    column: column.clone(),
                    column_type: child.type_oid,
                    parent: parent_name.to_string(),
                    parent_column: parent_column.clone(),
                    parent_type: parent_col.type_oid,
                });
            }
        }
        resolved.push(ForeignKey {
            columns: fk.columns.clone(),
            parent: parent_name,
            parent_columns,
            references_parent_key: false,
            source: ForeignKeySource::Configured,
        });
    }
    if let Some(table) = tables.get_mut(name) {
        table.foreign_keys.extend(resolved);
    }
    Ok(())
}

fn apply_predicates(
    tables: &mut BTreeMap<TableName, Table>,
    name: &TableName,
    predicates: &[Vec<String>],
    path: &str,
) -> Result<(), ConfigError> {
    let Some(table) = tables.get_mut(name) else {
        return Ok(());
    };
    for (i, columns) in predicates.iter().enumerate() {
        check_columns(table, columns, &format!("{path}.predicates[{i}]"))?;
        table
            .predicate_sets
            .push(ColumnSet::new(columns.iter().cloned()));
    }
    Ok(())
}

/// A partition takes its root's configured key, policy, FKs and predicate
/// sets: the mapping names the root, changes name the leaf.
fn inherit_from_partition_roots(tables: &mut BTreeMap<TableName, Table>) {
    let roots: BTreeMap<TableName, Table> = tables
        .values()
        .filter(|t| t.partition_root.is_none())
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for table in tables.values_mut() {
        let Some(root) = table.partition_root.as_ref().and_then(|r| roots.get(r)) else {
            continue;
        };
        if table.key_source == KeySource::None && root.key_source == KeySource::Configured {
            table.primary_key = root.primary_key.clone();
            table.key_source = KeySource::Configured;
        }
        if table.policy == TablePolicy::Rows {
            table.policy = root.policy;
        }
        for fk in &root.foreign_keys {
            let same = |own: &ForeignKey| own.columns == fk.columns && own.parent == fk.parent;
            if !table.foreign_keys.iter().any(same) {
                table.foreign_keys.push(fk.clone());
            }
        }
        table
            .predicate_sets
            .extend(root.predicate_sets.iter().cloned());
    }
}

/// Points every FK at its parent's key identity, decides object vs predicate
/// key for the parent, and adds the predicate sets FKs imply.
fn resolve_foreign_keys(tables: &mut BTreeMap<TableName, Table>) {
    let keys: BTreeMap<TableName, (TableName, ColumnSet)> = tables
        .values()
        .map(|t| {
            let key = ColumnSet::new(t.primary_key.iter().cloned());
            (t.name.clone(), (t.key_identity().clone(), key))
        })
        .collect();
    let mut parent_sets: Vec<(TableName, ColumnSet)> = Vec::new();
    for table in tables.values_mut() {
        for fk in &mut table.foreign_keys {
            if let Some((identity, key)) = keys.get(&fk.parent) {
                let referenced = ColumnSet::new(fk.parent_columns.iter().cloned());
                fk.references_parent_key = !key.columns().is_empty() && *key == referenced;
                if !fk.references_parent_key {
                    parent_sets.push((fk.parent.clone(), referenced));
                }
                fk.parent = identity.clone();
            }
            table
                .predicate_sets
                .push(ColumnSet::new(fk.columns.iter().cloned()));
        }
    }
    for (parent, set) in parent_sets {
        let identity = keys.get(&parent).map(|(i, _)| i.clone());
        // The parent and, for a partitioned parent, its partitions.
        for table in tables.values_mut() {
            if table.name == parent || Some(table.key_identity()) == identity.as_ref() {
                table.predicate_sets.push(set.clone());
            }
        }
    }
    for table in tables.values_mut() {
        let unique: BTreeSet<ColumnSet> = table.predicate_sets.drain(..).collect();
        table.predicate_sets = unique.into_iter().collect();
    }
}
