//! Preflight: what must hold before anything depends on the slot, and
//! before streaming from it, checked over an ordinary tokio-postgres
//! connection. The slot's row in `pg_replication_slots` ([`SlotInfo`]),
//! whether publications exist (and creating one), `wal_level` and the
//! role's REPLICATION attribute ([`check_prerequisites`]), and the
//! verdict on a slot before START_REPLICATION ([`check_before_streaming`]).

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
    /// Sticky two-phase flag: once on, it stays on.
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
/// default). Create it before the slot: a slot created before its
/// publication cannot decode changes to the published tables.
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

/// What must hold before anything that depends on the slot is done:
/// `wal_level` is `logical`, the role may stream (REPLICATION or superuser),
/// every publication exists, and the slot, when it exists, is a pgoutput
/// slot of this database with two_phase off. Returns the slot's row, `None`
/// when there is no slot yet; an invalidated slot is returned as it is (the
/// caller decides whether to re-create it).
pub async fn check_prerequisites(
    client: &Client,
    slot: &SlotName,
    publications: &[String],
) -> Result<Option<SlotInfo>, ReplicationError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_user::text, current_database()::text,
                    rolreplication OR rolsuper
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let wal_level: String = row.try_get(0)?;
    if wal_level != "logical" {
        return Err(ReplicationError::WalLevelNotLogical { wal_level });
    }
    let role: String = row.try_get(1)?;
    if !row.try_get::<_, bool>(3)? {
        return Err(ReplicationError::NotReplicationRole { role });
    }
    let dbname: String = row.try_get(2)?;
    for publication in publications {
        if !publication_exists(client, publication).await? {
            return Err(ReplicationError::PublicationMissing {
                publication: publication.clone(),
            });
        }
    }
    let Some(info) = slot_info(client, slot).await? else {
        return Ok(None);
    };
    verify_slot_owner(slot, &info, &dbname)?;
    if info.two_phase {
        return Err(ReplicationError::SlotTwoPhase {
            slot: slot.to_string(),
        });
    }
    Ok(Some(info))
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
    verify_slot_owner(slot, &info, dbname)?;
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

/// Refuses a slot of another output plugin or another database: streaming
/// it would decode someone else's changes, or none of ours.
fn verify_slot_owner(
    slot: &SlotName,
    info: &SlotInfo,
    dbname: &str,
) -> Result<(), ReplicationError> {
    if info.plugin.as_deref() == Some("pgoutput") && info.database.as_deref() == Some(dbname) {
        return Ok(());
    }
    let found = format!(
        "its plugin is {}, its database {}, and this connection's database is {dbname}",
        info.plugin.as_deref().unwrap_or("(none: a physical slot)"),
        info.database
            .as_deref()
            .unwrap_or("(none: a physical slot)"),
    );
    Err(ReplicationError::SlotMismatch {
        slot: slot.to_string(),
        found,
    })
}

/// A SQL identifier in double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
