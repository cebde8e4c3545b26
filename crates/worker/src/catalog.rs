//! The worker's picture of the catalog: the schema model (tables, keys,
//! inheritance) plus the names of every relation and function by oid, read
//! in one snapshot whose WAL position is known.
//!
//! The position matters for DDL (`docs/ddl.md`): a transaction visible in a
//! snapshot has written its commit record before the snapshot was taken, so
//! reading `pg_current_wal_insert_lsn()` inside a REPEATABLE READ transaction
//! (after its snapshot) gives a position `lsn` such that every DDL the
//! catalog already reflects wrote its messages below `lsn`. A DDL message at
//! or above `lsn` therefore meets the catalog as it was before that DDL, the
//! state its old names and old inheritance come from.
//!
//! The converse does not hold: the walsender may send a commit before the
//! committing backend has left the proc array, so a snapshot taken the
//! moment the worker decodes a DDL commit can still miss that DDL (a
//! partition attached, and the worker maps its rows as a table of its own).
//! A re-read for a DDL commit therefore names the transaction, and the read
//! waits until its snapshot sees it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cm_keys::{discover, SchemaConfig, SchemaModel, TableName};
use cm_pgoutput::{Lsn, Xid};
use tokio_postgres::Client;

use crate::sql::connect_sql;

/// Reading the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogReadError {
    /// A query or the connection failed (retried by reconnecting).
    #[error("reading the catalog: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// The connection could not be opened.
    #[error("reading the catalog: {0}")]
    Connect(#[from] cm_tls::ConnectError),
    /// Discovery failed.
    #[error(transparent)]
    Discovery(#[from] cm_keys::CatalogError),
    /// The `[schema]` mapping no longer fits the catalog (a configured table
    /// was dropped or renamed): the operator must update it.
    #[error("config section schema no longer fits the database: {0}")]
    Mapping(#[from] cm_keys::ConfigError),
    /// `pg_current_wal_insert_lsn()` returned something that is not an LSN.
    #[error("unexpected WAL position {0:?}")]
    Lsn(String),
    /// A committed DDL transaction stayed invisible to new snapshots.
    #[error("transaction {xid} was decoded as committed but no snapshot sees it after {waited:?}")]
    NotVisible {
        /// The transaction.
        xid: Xid,
        /// How long the read waited.
        waited: Duration,
    },
}

impl CatalogReadError {
    /// Errors only the operator can fix.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CatalogReadError::Mapping(_))
    }
}

/// Schema and name of every user relation a query can name (tables,
/// partitioned tables, views, materialized views, foreign tables) and of
/// every user function, by oid: what a DDL message's oid was called before
/// the DDL (renames, `SET SCHEMA`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogNames {
    /// Relations by `pg_class.oid`.
    pub relations: HashMap<u32, TableName>,
    /// Functions, procedures and aggregates by `pg_proc.oid`.
    pub functions: HashMap<u32, TableName>,
}

/// The model and names the worker maps changes with, and where in the WAL
/// they were read.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Tables, keys and inheritance, with the `[schema]` mapping applied.
    pub model: SchemaModel,
    /// Relation and function names by oid.
    pub names: CatalogNames,
    /// `pg_current_wal_insert_lsn()` taken after the snapshot was; 0 for the
    /// empty catalog a worker starts with.
    pub lsn: Lsn,
}

const RELATION_NAMES: &str = "SELECT c.oid, n.nspname::text, c.relname::text
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relpersistence <> 't'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_toast%'";

const FUNCTION_NAMES: &str = "SELECT p.oid, n.nspname::text, p.proname::text
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')";

async fn names_by_oid(
    client: &Client,
    sql: &str,
) -> Result<HashMap<u32, TableName>, tokio_postgres::Error> {
    let mut out = HashMap::new();
    for row in client.query(sql, &[]).await? {
        let oid: u32 = row.try_get(0)?;
        out.insert(
            oid,
            TableName::new(row.try_get::<_, String>(1)?, row.try_get::<_, String>(2)?),
        );
    }
    Ok(out)
}

/// The first statement of a read: it takes the snapshot, then reads the
/// WAL position, and tells whether the snapshot sees transaction `$1` (a
/// 32-bit xid, widened to the xid8 of the snapshot's epoch; NULL: no
/// transaction to wait for).
const SNAPSHOT_SQL: &str = "
SELECT pg_current_wal_insert_lsn()::text,
       $1::bigint IS NULL OR pg_visible_in_snapshot(
           (CASE WHEN (x >> 32 << 32 | $1::bigint) <= x THEN x >> 32 << 32 | $1::bigint
                 ELSE ((x >> 32) - 1) << 32 | $1::bigint END)::text::xid8, s)
FROM (SELECT pg_current_snapshot() AS s) snapshot,
     LATERAL (SELECT pg_snapshot_xmax(s)::text::bigint AS x) xmax";

/// The longest a read waits for a committed transaction to become visible;
/// the gap is the time between a commit record and the backend leaving
/// the proc array, normally microseconds.
const MAX_VISIBILITY_WAIT: Duration = Duration::from_secs(10);

/// Reads the catalog in one REPEATABLE READ snapshot and builds the model
/// with `mapping`. With `committed`, the snapshot is one that sees that
/// transaction (retried until one does).
pub async fn read_catalog(
    client: &Client,
    mapping: &SchemaConfig,
    committed: Option<Xid>,
) -> Result<Catalog, CatalogReadError> {
    let started = Instant::now();
    loop {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let result = read_in_snapshot(client, mapping, committed).await;
        let end = if matches!(result, Ok(Some(_))) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        client.batch_execute(end).await?;
        if let Some(catalog) = result? {
            return Ok(catalog);
        }
        let waited = started.elapsed();
        if waited > MAX_VISIBILITY_WAIT {
            let xid = committed.unwrap_or_default();
            return Err(CatalogReadError::NotVisible { xid, waited });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The catalog in the current transaction's snapshot; `None` when that
/// snapshot does not see `committed`.
async fn read_in_snapshot(
    client: &Client,
    mapping: &SchemaConfig,
    committed: Option<Xid>,
) -> Result<Option<Catalog>, CatalogReadError> {
    let row = client
        .query_one(SNAPSHOT_SQL, &[&committed.map(i64::from)])
        .await?;
    if !row.try_get::<_, bool>(1)? {
        return Ok(None);
    }
    let lsn: String = row.try_get(0)?;
    let lsn: Lsn = lsn.parse().map_err(|_| CatalogReadError::Lsn(lsn))?;
    let model = SchemaModel::build(discover(client).await?, mapping)?;
    let names = CatalogNames {
        relations: names_by_oid(client, RELATION_NAMES).await?,
        functions: names_by_oid(client, FUNCTION_NAMES).await?,
    };
    Ok(Some(Catalog { model, names, lsn }))
}

/// Reads the catalog on demand over its own connection, reconnecting after
/// a failure.
pub struct CatalogReader {
    url: String,
    mapping: SchemaConfig,
    client: Option<Client>,
}

impl CatalogReader {
    /// A reader for the database at `url`, building models with `mapping`.
    pub fn new(url: impl Into<String>, mapping: SchemaConfig) -> CatalogReader {
        CatalogReader {
            url: url.into(),
            mapping,
            client: None,
        }
    }

    /// The catalog as it is now, in a snapshot that sees `committed` when
    /// given (a DDL transaction just decoded).
    pub async fn read(&mut self, committed: Option<Xid>) -> Result<Catalog, CatalogReadError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect_sql(&self.url).await?,
        };
        let catalog = read_catalog(&client, &self.mapping, committed).await?;
        // Kept only after a clean read: a failure may leave it mid-transaction.
        self.client = Some(client);
        Ok(catalog)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use cm_testkit::TestPostgres;

    use super::*;

    async fn visible(client: &Client, xid: Option<Xid>) -> bool {
        client
            .query_one(SNAPSHOT_SQL, &[&xid.map(i64::from)])
            .await
            .unwrap()
            .get(1)
    }

    #[tokio::test]
    async fn a_snapshot_sees_a_transaction_only_once_it_committed() {
        let pg = TestPostgres::start().unwrap();
        let writer = connect_sql(&pg.url()).await.unwrap();
        let reader = connect_sql(&pg.url()).await.unwrap();
        writer.batch_execute("BEGIN").await.unwrap();
        let xid8: String = writer
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .unwrap()
            .get(0);
        let xid = (xid8.parse::<u64>().unwrap() & 0xffff_ffff) as Xid;
        assert!(!visible(&reader, Some(xid)).await, "open transaction {xid}");
        writer.batch_execute("COMMIT").await.unwrap();
        assert!(
            visible(&reader, Some(xid)).await,
            "committed transaction {xid}"
        );
        assert!(visible(&reader, None).await, "nothing to wait for");
        let catalog = read_catalog(&reader, &SchemaConfig::default(), Some(xid))
            .await
            .unwrap();
        assert!(catalog.lsn > Lsn(0));
    }
}
