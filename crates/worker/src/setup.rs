//! `setup`: creates what streaming needs, in the only safe order: the DDL
//! event triggers (so DDL is noted in the WAL before any slot decodes it;
//! see `docs/ddl.md`), the publication, then the slot (a slot created
//! before its publication fails for good on PG <= 17, and silently skips
//! changes on PG18). A new slot never streams what was written before it,
//! so creating one flushes the cache ([`flush_cache_for_new_slot`]); `run`
//! bumps the epoch again when it finds a slot that is not the one it last
//! streamed from (see [`crate::slot_identity`]), so a slot created by hand
//! is caught too.

use cm_replication::preflight::{publication_exists, quote_ident, slot_info};
use cm_replication::{ReplicationConfig, ReplicationConnection, SlotName};
use tokio_postgres::Client;

use cm_keys::KeySpace;
use cm_store::{CacheStore, StoreError};

use crate::ddl_trigger::{trigger_state, TriggerState, INSTALL_SQL};
use crate::identity::identity_verdicts;
use crate::options::SetupOptions;

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// One change `setup` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Install (or update, or re-enable) the DDL event triggers.
    InstallDdlTriggers {
        /// Why: the state found.
        state: TriggerState,
    },
    /// Run this CREATE PUBLICATION statement.
    CreatePublication {
        /// The statement.
        sql: String,
    },
    /// Create the logical replication slot (pgoutput, permanent).
    CreateSlot {
        /// The slot.
        slot: SlotName,
    },
}

impl std::fmt::Display for SetupStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupStep::InstallDdlTriggers { state } => {
                write!(
                    f,
                    "-- DDL event triggers ({state:?}), as one transaction:\n{INSTALL_SQL}"
                )
            }
            SetupStep::CreatePublication { sql } => write!(f, "{sql}"),
            SetupStep::CreateSlot { slot } => {
                write!(f, "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput")
            }
        }
    }
}

/// Why setup cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// wal_level is not logical.
    #[error(
        "wal_level is {0:?}; set wal_level = logical in postgresql.conf and restart PostgreSQL"
    )]
    WalLevel(String),
    /// Publishing these tables would make their UPDATE/DELETE fail.
    #[error(
        "publishing would break writes: UPDATE and DELETE fail on published tables without a replica \
         identity. Give each a primary key or REPLICA IDENTITY FULL, or list the tables \
         to publish in postgres.publish_tables: {0}"
    )]
    BrokenIdentity(String),
    /// The role may not create the DDL event triggers.
    #[error(
        "creating the DDL event triggers needs superuser (PostgreSQL 15 lets only superusers \
         CREATE EVENT TRIGGER); run `cm-invalidator setup` once as a superuser: {0}"
    )]
    DdlTriggerPrivilege(String),
    /// A table to publish is not named `schema.table`.
    #[error("table to publish {0:?} is not schema.table")]
    BadTableName(String),
    /// SQL failed.
    #[error("SQL: {}", cm_keys::describe_pg_error(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] cm_replication::ReplicationError),
}

/// Works out the steps that create what is missing, without changing
/// anything.
pub async fn missing_steps(
    client: &Client,
    options: &SetupOptions,
) -> Result<Vec<SetupStep>, SetupError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.try_get(0)?;
    if wal_level != "logical" {
        return Err(SetupError::WalLevel(wal_level));
    }
    let mut steps = Vec::new();
    let state = trigger_state(client).await?;
    if state != TriggerState::Installed {
        steps.push(SetupStep::InstallDdlTriggers { state });
    }
    let publication = &options.publication;
    if !publication_exists(client, publication).await? {
        steps.push(SetupStep::CreatePublication {
            sql: create_publication_sql(publication, &options.publish_tables)?,
        });
        if options.publish_tables.is_empty() {
            refuse_broken_identities(client).await?;
        }
    }
    let slot = SlotName::new(&options.slot)?;
    if slot_info(client, &slot).await?.is_none() {
        steps.push(SetupStep::CreateSlot { slot });
    }
    Ok(steps)
}

/// FOR ALL TABLES imposes the replica identity check on every table at
/// once; refuse rather than break an application's writes.
async fn refuse_broken_identities(client: &Client) -> Result<(), SetupError> {
    let broken: Vec<String> = identity_verdicts(client, None)
        .await?
        .into_iter()
        .filter(|v| v.verdict.is_broken())
        .map(|v| {
            format!(
                "{}.{} ({})",
                v.table.schema,
                v.table.name,
                v.verdict.describe()
            )
        })
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(SetupError::BrokenIdentity(broken.join("; ")))
    }
}

fn create_publication_sql(publication: &str, tables: &[String]) -> Result<String, SetupError> {
    if tables.is_empty() {
        return Ok(format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(publication)
        ));
    }
    let names = tables
        .iter()
        .map(|t| {
            let (schema, table) = t
                .split_once('.')
                .ok_or_else(|| SetupError::BadTableName(t.clone()))?;
            Ok(format!("{}.{}", quote_ident(schema), quote_ident(table)))
        })
        .collect::<Result<Vec<_>, SetupError>>()?;
    Ok(format!(
        "CREATE PUBLICATION {} FOR TABLE {}",
        quote_ident(publication),
        names.join(", ")
    ))
}

/// Carries out the steps in order.
pub async fn run_steps(
    client: &Client,
    options: &SetupOptions,
    steps: &[SetupStep],
) -> Result<(), SetupError> {
    for step in steps {
        match step {
            SetupStep::InstallDdlTriggers { .. } => install_ddl_triggers(client).await?,
            SetupStep::CreatePublication { sql } => client.batch_execute(sql).await?,
            SetupStep::CreateSlot { slot } => {
                let replication = ReplicationConfig::parse(&options.postgres_url)?;
                let mut conn = ReplicationConnection::connect(&replication).await?;
                conn.create_slot(slot).await?;
                conn.close().await;
            }
        }
    }
    Ok(())
}

/// Runs the trigger script in one transaction (a simple-query batch is one
/// implicit transaction), naming the privilege when it is missing.
async fn install_ddl_triggers(client: &Client) -> Result<(), SetupError> {
    client
        .batch_execute(INSTALL_SQL)
        .await
        .map_err(|error| match error.as_db_error() {
            Some(db) if db.code().code() == INSUFFICIENT_PRIVILEGE => {
                SetupError::DdlTriggerPrivilege(db.message().to_owned())
            }
            _ => SetupError::Sql(error),
        })
}

/// Whether carrying out `steps` creates a replication slot (and so must
/// flush the cache).
pub fn creates_slot(steps: &[SetupStep]) -> bool {
    steps
        .iter()
        .any(|step| matches!(step, SetupStep::CreateSlot { .. }))
}

/// Bumps the epoch after a slot was created: results cached before it may
/// miss writes no slot streamed, so none of them may be served again. One
/// attempt; if it fails, `run` still flushes when it starts (the new slot's
/// position lies beyond the confirm bound it persisted).
pub async fn flush_cache_for_new_slot(
    store: &dyn CacheStore,
    space: &KeySpace,
) -> Result<(), StoreError> {
    store.bump_generation(space.epoch().as_str()).await?;
    Ok(())
}
