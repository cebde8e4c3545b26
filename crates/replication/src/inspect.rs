//! Slot and publication inspection over an ordinary tokio-postgres
//! connection, and the checks that must pass before streaming.

use tokio_postgres::Client;

use cm_pgoutput::Lsn;

use crate::error::ReplicationError;
use crate::names::SlotName;

/// A row of `pg_replication_slots`, the parts that decide whether streaming
/// from the slot is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Output plugin (`pgoutput` for ours).
    pub plugin: Option<String>,
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// PID of the walsender streaming from it, if any (the leader lock).
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Sticky two-phase flag (research 4.7).
    pub two_phase: bool,
    /// PG16+: invalidated by a conflict on a standby.
    pub conflicting: Option<bool>,
    /// PG17+: why the slot was invalidated.
    pub invalidation_reason: Option<String>,
    /// Where the next START_REPLICATION at 0/0 begins.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The oldest WAL the slot pins.
    pub restart_lsn: Option<Lsn>,
}

impl SlotInfo {
    /// Why the slot can no longer deliver changes, if it cannot.
    pub fn invalidation(&self) -> Option<String> {
        if let Some(reason) = &self.invalidation_reason {
            return Some(format!("invalidation_reason = {reason}"));
        }
        if self.conflicting == Some(true) {
            return Some("conflicting = true".into());
        }
        match self.wal_status.as_deref() {
            Some("lost") => Some("wal_status = lost".into()),
            _ => None,
        }
    }
}

/// The columns of `pg_replication_slots` we read, all as text so one parser
/// serves tokio-postgres and the replication connection's simple queries.
/// Columns only newer versions have are read through `to_jsonb`, so one query
/// serves all versions.
const SLOT_COLUMNS: &str = "plugin::text, database::text, active_pid::text, wal_status, \
     two_phase::text, to_jsonb(s) ->> 'conflicting', to_jsonb(s) ->> 'invalidation_reason', \
     confirmed_flush_lsn::text, restart_lsn::text";

/// The slot query with `slot` as the parameter or literal to compare with.
pub(crate) fn slot_query(slot: &str) -> String {
    format!("SELECT {SLOT_COLUMNS} FROM pg_replication_slots s WHERE slot_name = {slot}")
}

impl SlotInfo {
    /// Builds the row from the text values of [`slot_query`].
    pub(crate) fn from_text(row: &[Option<String>]) -> Result<SlotInfo, ReplicationError> {
        let text = |i: usize| row.get(i).cloned().flatten();
        let parsed = |i: usize, what: &str| -> Result<Option<Lsn>, ReplicationError> {
            text(i)
                .map(|t| {
                    t.parse()
                        .map_err(|e| ReplicationError::Protocol(format!("slot {what}: {e}")))
                })
                .transpose()
        };
        let boolean = |i: usize| text(i).map(|t| t == "t" || t == "true");
        Ok(SlotInfo {
            plugin: text(0),
            database: text(1),
            active_pid: text(2).and_then(|t| t.parse().ok()),
            wal_status: text(3),
            two_phase: boolean(4).unwrap_or(false),
            conflicting: boolean(5),
            invalidation_reason: text(6),
            confirmed_flush_lsn: parsed(7, "confirmed_flush_lsn")?,
            restart_lsn: parsed(8, "restart_lsn")?,
        })
    }
}

/// Reads the slot's row; `None` when there is no such slot.
pub async fn slot_info(
    client: &Client,
    slot: &SlotName,
) -> Result<Option<SlotInfo>, ReplicationError> {
    let row = client
        .query_opt(&slot_query("$1"), &[&slot.as_str()])
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let values = (0..row.len())
        .map(|i| row.try_get::<_, Option<String>>(i))
        .collect::<Result<Vec<_>, _>>()?;
    SlotInfo::from_text(&values).map(Some)
}

/// Whether a publication exists in the connected database.
pub async fn publication_exists(
    client: &Client,
    publication: &str,
) -> Result<bool, ReplicationError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Creates a publication for all tables, publishing all four actions (the
/// default; research rule 0.2). Create it before the slot (rule 0.1).
pub async fn create_publication_for_all_tables(
    client: &Client,
    publication: &str,
) -> Result<(), ReplicationError> {
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(publication)
        ))
        .await?;
    Ok(())
}

/// Everything that must hold before START_REPLICATION: the slot exists, is a
/// pgoutput slot of this database, is not invalidated, has two_phase off, and
/// every publication exists. Returns the slot's row.
/// [`crate::ReplicationConnection::start_replication`] runs the same checks.
pub async fn check_before_streaming(
    client: &Client,
    slot: &SlotName,
    publications: &[String],
) -> Result<SlotInfo, ReplicationError> {
    let info = slot_info(client, slot).await?;
    let dbname: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .try_get(0)?;
    let mut missing = Vec::new();
    for publication in publications {
        if !publication_exists(client, publication).await? {
            missing.push(publication.clone());
        }
    }
    verify_slot(slot, info, &dbname, &missing)
}

/// The verdict on a slot's row, the connected database and the publications
/// found missing.
pub(crate) fn verify_slot(
    slot: &SlotName,
    info: Option<SlotInfo>,
    dbname: &str,
    missing_publications: &[String],
) -> Result<SlotInfo, ReplicationError> {
    let info = info.ok_or_else(|| ReplicationError::SlotMissing {
        slot: slot.to_string(),
    })?;
    if info.plugin.as_deref() != Some("pgoutput") || info.database.as_deref() != Some(dbname) {
        return Err(ReplicationError::SlotMismatch {
            slot: slot.to_string(),
            found: format!(
                "plugin {:?}, database {:?} (connected to {dbname:?})",
                info.plugin, info.database
            ),
        });
    }
    if let Some(reason) = info.invalidation() {
        return Err(ReplicationError::SlotLost {
            slot: slot.to_string(),
            reason,
        });
    }
    if info.two_phase {
        return Err(ReplicationError::SlotTwoPhase {
            slot: slot.to_string(),
        });
    }
    if let Some(publication) = missing_publications.first() {
        return Err(ReplicationError::PublicationMissing {
            publication: publication.clone(),
        });
    }
    Ok(info)
}

/// A SQL identifier in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
