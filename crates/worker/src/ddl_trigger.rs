//! The DDL event triggers in the database: the SQL that installs them
//! (`sql/ddl_trigger.sql`, run by `setup`) and their state (read by `setup`
//! and `check`). `docs/ddl.md` describes what they emit.

use tokio_postgres::Client;

/// The installation script: idempotent, run as one transaction.
pub const INSTALL_SQL: &str = include_str!("../sql/ddl_trigger.sql");

/// The comment the script puts on its trigger function: the installed
/// version `setup` and `check` expect.
pub const VERSION_COMMENT: &str = "cachemachine DDL trigger v2";

/// The event triggers the script creates, one per event.
pub const TRIGGER_NAMES: [&str; 2] = ["cachemachine_ddl_command_end", "cachemachine_sql_drop"];

/// The state of the DDL triggers in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerState {
    /// Both triggers exist, fire in every session, and call the function
    /// version this worker expects.
    Installed,
    /// At least one trigger does not exist.
    Missing(Vec<String>),
    /// A trigger exists but does not fire in every session
    /// (`pg_event_trigger.evtenabled` is not `A`: `D` never fires, `R` only
    /// in replica sessions, `O` in all but replica sessions).
    Disabled(Vec<String>),
    /// The triggers call another version of the function.
    Outdated {
        /// The installed function's comment, if any.
        installed: Option<String>,
    },
}

/// Reads the triggers' state.
pub async fn trigger_state(client: &Client) -> Result<TriggerState, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT evtname::text, evtenabled::text FROM pg_event_trigger
             WHERE evtname = ANY($1)",
            &[&TRIGGER_NAMES.as_slice()],
        )
        .await?;
    let mut found = Vec::new();
    let mut disabled = Vec::new();
    for row in &rows {
        let name: String = row.try_get(0)?;
        let enabled: String = row.try_get(1)?;
        // Only 'A' (always) fires for every session's DDL: 'O' skips
        // sessions with session_replication_role = replica (bulk loads,
        // restores), 'R' fires only in those, 'D' never (docs/ddl.md).
        if enabled != "A" {
            disabled.push(format!("{name} (evtenabled = '{enabled}')"));
        }
        found.push(name);
    }
    let missing: Vec<String> = TRIGGER_NAMES
        .iter()
        .filter(|name| !found.iter().any(|f| f == *name))
        .map(|name| name.to_string())
        .collect();
    if !missing.is_empty() {
        return Ok(TriggerState::Missing(missing));
    }
    if !disabled.is_empty() {
        return Ok(TriggerState::Disabled(disabled));
    }
    let installed: Option<String> = client
        .query_opt(
            "SELECT obj_description(p.oid, 'pg_proc')
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'cachemachine' AND p.proname = 'emit_ddl_message'",
            &[],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .flatten();
    if installed.as_deref() == Some(VERSION_COMMENT) {
        Ok(TriggerState::Installed)
    } else {
        Ok(TriggerState::Outdated { installed })
    }
}

/// What a cache without working DDL triggers costs.
pub const COST_WITHOUT_TRIGGERS: &str = "DDL does not invalidate: views redefined, columns \
     altered, added or dropped, partitions attached or detached, tables renamed or re-created, \
     functions replaced and materialized views refreshed stay cached until their TTL";

impl TriggerState {
    /// One line for `check`: what is wrong, what it costs, what to do.
    pub fn problem(&self) -> Option<String> {
        let fix = "run `cm-invalidator setup` as a superuser";
        match self {
            TriggerState::Installed => None,
            TriggerState::Missing(names) => Some(format!(
                "missing ({}): {COST_WITHOUT_TRIGGERS}; {fix}",
                names.join(", ")
            )),
            TriggerState::Disabled(names) => Some(format!(
                "not enabled ALWAYS, so some or all sessions' DDL is missed: {}: \
                 {COST_WITHOUT_TRIGGERS}; ALTER EVENT TRIGGER ... ENABLE ALWAYS, or {fix}",
                names.join(", ")
            )),
            TriggerState::Outdated { installed } => Some(format!(
                "installed function is {:?}, this worker expects {VERSION_COMMENT:?}: \
                 the worker may not read its messages (each then flushes the whole cache); {fix}",
                installed.as_deref().unwrap_or("uncommented")
            )),
        }
    }
}
