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

use std::collections::HashMap;

use cm_keys::{discover, SchemaConfig, SchemaModel, TableName};
use cm_pgoutput::Lsn;
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

/// Reads the catalog in one REPEATABLE READ snapshot and builds the model
/// with `mapping`.
pub async fn read_catalog(
    client: &Client,
    mapping: &SchemaConfig,
) -> Result<Catalog, CatalogReadError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = read_in_snapshot(client, mapping).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await?;
    result
}

async fn read_in_snapshot(
    client: &Client,
    mapping: &SchemaConfig,
) -> Result<Catalog, CatalogReadError> {
    // The first statement takes the snapshot; the position is read after it.
    let lsn: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .try_get(0)?;
    let lsn: Lsn = lsn.parse().map_err(|_| CatalogReadError::Lsn(lsn))?;
    let model = SchemaModel::build(discover(client).await?, mapping)?;
    let names = CatalogNames {
        relations: names_by_oid(client, RELATION_NAMES).await?,
        functions: names_by_oid(client, FUNCTION_NAMES).await?,
    };
    Ok(Catalog { model, names, lsn })
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

    /// The catalog as it is now.
    pub async fn read(&mut self) -> Result<Catalog, CatalogReadError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect_sql(&self.url).await?,
        };
        let catalog = read_catalog(&client, &self.mapping).await?;
        // Kept only after a clean read: a failure may leave it mid-transaction.
        self.client = Some(client);
        Ok(catalog)
    }
}
