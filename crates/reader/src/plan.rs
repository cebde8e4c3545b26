//! What one statement reads, learned once per statement text (and
//! namespace) and kept in process: its parameter types (to fingerprint parameters without a round
//! trip), the base tables of its plan, and its `WHERE` filter.
//!
//! The tables come from `EXPLAIN (FORMAT JSON, VERBOSE)` with the actual
//! parameters (PostgreSQL 15 has no `GENERIC_PLAN`): every plan node with a
//! `Relation Name` and `Schema`, which covers views (expanded by the
//! rewriter), joins, subqueries and partitions. Planning with real values can
//! remove a table from the plan (a constant-false branch, pruned partitions),
//! and the plan is reused for other values, so a plan showing any sign of
//! that (`One-Time Filter`, `Subplans Removed`) is not kept and the statement
//! is read through; every relation the text names directly is added too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use cm_keys::{Key, SchemaModel, TableName};
use postgres_types::{ToSql, Type};
use serde_json::Value as Json;
use tokio_postgres::Client;

use crate::error::ReaderError;
use crate::row::RawValue;
use crate::sql::{self, Filter, SqlShape};

/// Why a statement's results are never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Uncacheable {
    /// The text says so (locking clause, volatile function, unparsable).
    Text(&'static str),
    /// The plan reads a relation the schema model does not cover (a system
    /// catalog, a table created after discovery, an ignored or unlogged
    /// table): no invalidation would ever reach the result.
    UnknownTable(String),
    /// The plan depends on the parameter values (see the module docs).
    ValueDependentPlan,
    /// `EXPLAIN` failed.
    Explain(String),
}

/// One base table scan in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The scanned relation (a partition, not its root).
    pub(crate) relation: TableName,
    /// The model's key identity for it (its partition root for a partition).
    pub(crate) identity: TableName,
}

/// Everything the reader knows about one statement text.
#[derive(Debug, Clone)]
pub(crate) struct StatementInfo {
    /// The parameter types PostgreSQL inferred.
    pub(crate) param_types: Vec<Type>,
    /// `Ok` with the tables read, or why the statement is read through.
    pub(crate) reads: Result<Reads, Uncacheable>,
    /// The generation keys of the tables read, built at the first use
    /// (without extra tables; those are added per call).
    pub(crate) generations: OnceLock<Arc<[Key]>>,
}

/// The tables a cacheable statement reads.
#[derive(Debug, Clone)]
pub(crate) struct Reads {
    /// Every scan in the plan, in plan order.
    pub(crate) scans: Vec<Scan>,
    /// Key identities of every table read, sorted, without duplicates.
    pub(crate) tables: Vec<TableName>,
    /// The single-table `WHERE` filter, if the text has one.
    pub(crate) filter: Option<Filter>,
}

/// The in-process statement cache, keyed by statement text.
#[derive(Debug)]
pub(crate) struct StatementCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Arc<StatementInfo>>>,
}

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, sql: &str) -> Option<Arc<StatementInfo>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(sql).cloned()
    }

    fn put(&self, sql: &str, info: Arc<StatementInfo>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            // Crude but bounded: statements are re-learned on their next use.
            entries.clear();
        }
        entries.insert(sql.to_owned(), info);
    }

    /// The statement's info, learning it (prepare + EXPLAIN) on first use.
    /// `NotASelect` for anything but a read. Kept per namespace and text:
    /// the same text may read other tables under another `search_path`,
    /// which is what namespaces separate.
    pub(crate) async fn info(
        &self,
        client: &Client,
        model: &SchemaModel,
        namespace: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Arc<StatementInfo>, ReaderError> {
        let cache_key = format!("{}\0{namespace}\0{sql}", namespace.len());
        if let Some(info) = self.get(&cache_key) {
            return Ok(info);
        }
        let shape = sql::analyse(sql).map_err(|reason| ReaderError::NotASelect { reason })?;
        let statement = client.prepare(sql).await?;
        let param_types = statement.params().to_vec();
        let reads = match shape {
            SqlShape::ReadThrough(why) => Err(Uncacheable::Text(why)),
            SqlShape::Cacheable { filter } => {
                explain(client, model, sql, params)
                    .await
                    .map(|(scans, tables)| Reads {
                        scans,
                        tables,
                        filter,
                    })
            }
        };
        let keep = !matches!(
            reads,
            Err(Uncacheable::ValueDependentPlan | Uncacheable::Explain(_))
        );
        let info = Arc::new(StatementInfo {
            param_types,
            reads,
            generations: OnceLock::new(),
        });
        if keep {
            self.put(&cache_key, info.clone());
        }
        Ok(info)
    }
}

async fn explain(
    client: &Client,
    model: &SchemaModel,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<Scan>, Vec<TableName>), Uncacheable> {
    let rows = client
        .query(&format!("EXPLAIN (FORMAT JSON, VERBOSE) {sql}"), params)
        .await
        .map_err(|e| Uncacheable::Explain(e.to_string()))?;
    let plan: Json = rows
        .first()
        .and_then(|row| row.try_get::<_, RawValue>(0).ok())
        .and_then(|RawValue(bytes)| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| Uncacheable::Explain("EXPLAIN output is not JSON".into()))?;
    let mut found = Vec::new();
    let mut value_dependent = false;
    walk(&plan, &mut found, &mut value_dependent);
    if value_dependent {
        return Err(Uncacheable::ValueDependentPlan);
    }
    let mut scans = Vec::new();
    for relation in found {
        scans.push(Scan {
            identity: identity(model, &relation)?,
            relation,
        });
    }
    let mut tables: BTreeSet<TableName> = scans.iter().map(|s| s.identity.clone()).collect();
    // Relations the text names directly, in case planning removed one.
    for (schema, name) in sql::relations(sql) {
        let candidates: Vec<&cm_keys::Table> = model
            .tables()
            .filter(|t| t.name.name == name && schema.as_ref().is_none_or(|s| *s == t.name.schema))
            .collect();
        if let [table] = candidates.as_slice() {
            tables.insert(identity(model, &table.name)?);
        }
    }
    Ok((scans, tables.into_iter().collect()))
}

/// The key identity of a relation the plan reads, or why it cannot be cached.
fn identity(model: &SchemaModel, relation: &TableName) -> Result<TableName, Uncacheable> {
    match model.table(relation) {
        Some(table) if !table.unlogged => Ok(table.key_identity().clone()),
        _ => Err(Uncacheable::UnknownTable(relation.to_string())),
    }
}

fn walk(node: &Json, found: &mut Vec<TableName>, value_dependent: &mut bool) {
    match node {
        Json::Object(map) => {
            if let (Some(Json::String(name)), Some(Json::String(schema))) =
                (map.get("Relation Name"), map.get("Schema"))
            {
                found.push(TableName::new(schema.clone(), name.clone()));
            }
            // JSON output always carries "Subplans Removed" on an Append;
            // only a non-zero count means pruning removed a partition.
            let removed = map
                .get("Subplans Removed")
                .and_then(Json::as_u64)
                .is_some_and(|n| n > 0);
            if removed || map.contains_key("One-Time Filter") {
                *value_dependent = true;
            }
            for value in map.values() {
                walk(value, found, value_dependent);
            }
        }
        Json::Array(items) => {
            for item in items {
                walk(item, found, value_dependent);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plan_walk_finds_relations_and_value_dependence() {
        let plan: Json = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "Hash Join", "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "book", "Schema": "public"},
                {"Node Type": "Hash", "Plans": [
                    {"Node Type": "Index Scan", "Relation Name": "author", "Schema": "s"}]}]}}]"#,
        )
        .unwrap();
        let (mut found, mut dependent) = (Vec::new(), false);
        walk(&plan, &mut found, &mut dependent);
        assert_eq!(
            found,
            [
                TableName::new("public", "book"),
                TableName::new("s", "author")
            ]
        );
        assert!(!dependent);
        let plan: Json = serde_json::from_str(
            r#"{"Plan": {"Node Type": "Result", "One-Time Filter": "false"}}"#,
        )
        .unwrap();
        walk(&plan, &mut found, &mut dependent);
        assert!(dependent);
    }
}
