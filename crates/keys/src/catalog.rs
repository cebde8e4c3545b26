//! Discovering tables from the PostgreSQL catalog.
//!
//! The only network IO in this crate: five read-only catalog queries over an
//! ordinary tokio-postgres connection. Every ordinary and partitioned table
//! outside the system schemas (`pg_catalog`, `information_schema`,
//! `pg_toast*`, `pg_temp*`) is returned with its columns, primary key,
//! foreign key constraints, replica identity, partition root
//! (`pg_partition_root`, which walks `pg_inherits`) and direct `pg_inherits`
//! parents. The mapping and the
//! derived parts (predicate sets, parent key resolution) are applied by
//! [`crate::SchemaModel::build`].
//!
//! Foreign keys: a constraint cloned onto a partition, or onto a referenced
//! partition (`conparentid <> 0`), is skipped; partitions inherit their
//! root's foreign keys in [`crate::SchemaModel::build`] instead, so each FK
//! appears once per table, pointing at the root.

use std::collections::BTreeMap;

use thiserror::Error;
use tokio_postgres::Client;

use crate::schema::{
    Column, ForeignKey, ForeignKeySource, KeySource, ReplicaIdentity, Table, TableName, TablePolicy,
};

/// Catalog discovery failed.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// A catalog query failed (connection lost, permission denied, ...).
    #[error("catalog query failed: {}", crate::describe_pg_error(.0))]
    Query(#[from] tokio_postgres::Error),
    /// The catalog returned something this code does not understand.
    #[error("unexpected catalog contents: {0}")]
    Unexpected(String),
}

const SYSTEM_SCHEMA_FILTER: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// Reads every user table from the catalog.
pub async fn discover(client: &Client) -> Result<Vec<Table>, CatalogError> {
    let mut tables = discover_tables(client).await?;
    add_columns(client, &mut tables).await?;
    add_primary_keys(client, &mut tables).await?;
    add_foreign_keys(client, &mut tables).await?;
    add_parents(client, &mut tables).await?;
    Ok(tables.into_values().collect())
}

/// Direct `pg_inherits` parents: partitions' parents and `INHERITS` ones.
async fn add_parents(
    client: &Client,
    tables: &mut BTreeMap<u32, Table>,
) -> Result<(), CatalogError> {
    let sql = "SELECT inhrelid, inhparent FROM pg_inherits ORDER BY inhrelid, inhseqno";
    for row in client.query(sql, &[]).await? {
        let child: u32 = row.try_get(0)?;
        let parent: u32 = row.try_get(1)?;
        let Some(parent) = tables.get(&parent).map(|t| t.name.clone()) else {
            continue;
        };
        if let Some(table) = tables.get_mut(&child) {
            table.inherits_from.push(parent);
        }
    }
    Ok(())
}

async fn discover_tables(client: &Client) -> Result<BTreeMap<u32, Table>, CatalogError> {
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text,
                c.relpersistence::text,
                rn.nspname::text, r.relname::text
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid)
         LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
         WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}"
    );
    let mut tables = BTreeMap::new();
    for row in client.query(&sql, &[]).await? {
        let oid: u32 = row.try_get(0)?;
        let identity: String = row.try_get(3)?;
        let replica_identity = identity
            .bytes()
            .next()
            .and_then(ReplicaIdentity::from_byte)
            .ok_or_else(|| CatalogError::Unexpected(format!("relreplident {identity:?}")))?;
        let root_schema: Option<String> = row.try_get(5)?;
        let root_name: Option<String> = row.try_get(6)?;
        let persistence: String = row.try_get(4)?;
        let table = Table {
            oid: Some(oid),
            name: TableName::new(row.try_get::<_, String>(1)?, row.try_get::<_, String>(2)?),
            columns: Vec::new(),
            primary_key: Vec::new(),
            key_source: KeySource::None,
            foreign_keys: Vec::new(),
            replica_identity,
            identity_index_columns: Vec::new(),
            partition_root: root_schema
                .zip(root_name)
                .map(|(s, n)| TableName::new(s, n)),
            inherits_from: Vec::new(),
            unlogged: persistence == "u",
            predicate_sets: Vec::new(),
            policy: TablePolicy::Rows,
        };
        tables.insert(oid, table);
    }
    Ok(tables)
}

async fn add_columns(
    client: &Client,
    tables: &mut BTreeMap<u32, Table>,
) -> Result<(), CatalogError> {
    // A column's collation is deterministic unless pg_collation says not.
    let sql = format!(
        "SELECT a.attrelid, a.attname::text, a.atttypid,
                COALESCE(co.collisdeterministic, true)
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_collation co ON co.oid = a.attcollation
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
           AND {SYSTEM_SCHEMA_FILTER}
         ORDER BY a.attrelid, a.attnum"
    );
    for row in client.query(&sql, &[]).await? {
        let oid: u32 = row.try_get(0)?;
        if let Some(table) = tables.get_mut(&oid) {
            table.columns.push(Column {
                name: row.try_get(1)?,
                type_oid: row.try_get(2)?,
                deterministic_collation: row.try_get(3)?,
            });
        }
    }
    Ok(())
}

/// Primary keys and replica identity indexes.
async fn add_primary_keys(
    client: &Client,
    tables: &mut BTreeMap<u32, Table>,
) -> Result<(), CatalogError> {
    let sql = "SELECT i.indrelid,
                      ARRAY(SELECT a.attname::text
                            FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                            ORDER BY k.ord)
                      , i.indisprimary, i.indisreplident
               FROM pg_index i
               WHERE i.indisprimary OR i.indisreplident";
    for row in client.query(sql, &[]).await? {
        let oid: u32 = row.try_get(0)?;
        let columns: Vec<String> = row.try_get(1)?;
        let (primary, identity): (bool, bool) = (row.try_get(2)?, row.try_get(3)?);
        if let Some(table) = tables.get_mut(&oid) {
            if identity {
                table.identity_index_columns = columns.clone();
            }
            if primary {
                table.primary_key = columns;
                table.key_source = KeySource::PrimaryKey;
            }
        }
    }
    Ok(())
}

async fn add_foreign_keys(
    client: &Client,
    tables: &mut BTreeMap<u32, Table>,
) -> Result<(), CatalogError> {
    let sql = "SELECT con.conrelid, con.confrelid,
                      ARRAY(SELECT a.attname::text
                            FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                            ORDER BY k.ord),
                      ARRAY(SELECT a.attname::text
                            FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                            ORDER BY k.ord)
               FROM pg_constraint con
               WHERE con.contype = 'f' AND con.conparentid = 0
               ORDER BY con.conrelid, con.conname";
    for row in client.query(sql, &[]).await? {
        let child: u32 = row.try_get(0)?;
        let parent: u32 = row.try_get(1)?;
        let Some(parent) = tables.get(&parent).map(|t| t.name.clone()) else {
            continue; // a parent in a system schema: nothing we cache
        };
        if let Some(table) = tables.get_mut(&child) {
            table.foreign_keys.push(ForeignKey {
                columns: row.try_get(2)?,
                parent,
                parent_columns: row.try_get(3)?,
                references_parent_key: false,
                source: ForeignKeySource::Constraint,
            });
        }
    }
    Ok(())
}
