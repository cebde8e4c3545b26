//! The heartbeat round trip: a non-transactional logical message emitted on
//! an ordinary connection comes back through the replication stream after
//! every transaction committed before it. When the worker has applied
//! everything before it, it writes the heartbeat key; readers bypass the
//! cache when that key is older than their `max_staleness`, so a dead or
//! lagging invalidator can never make them serve stale data for longer.
//!
//! The same holds for an invalidator that cannot see DDL: while the DDL
//! event triggers are missing, disabled or outdated, no heartbeat is
//! emitted ([`DdlTriggerPolicy::Required`]), so readers read through. When
//! they fire again, a DDL message that cannot be scoped goes through the
//! WAL before the next heartbeat: the worker bumps the epoch for whatever
//! DDL it missed (docs/ddl.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_keys::{describe_pg_error, Heartbeat};
use tokio_postgres::Client;

use crate::ddl_trigger::{trigger_state, TriggerState};
use crate::sql::connect_sql;

/// The logical message prefix for one key prefix's heartbeats.
pub fn heartbeat_message_prefix(cache_prefix: &str) -> String {
    format!("cm.heartbeat.{cache_prefix}")
}

/// Microseconds since the Unix epoch.
pub fn unix_micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Emits one heartbeat message carrying the emit time.
pub async fn emit(client: &Client, prefix: &str) -> Result<(), tokio_postgres::Error> {
    let content = unix_micros_now().to_string();
    client
        .execute(
            "SELECT pg_logical_emit_message(false, $1, $2::text)",
            &[&prefix, &content],
        )
        .await?;
    Ok(())
}

/// Whether heartbeats wait for working DDL event triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DdlTriggerPolicy {
    /// No heartbeat while the triggers do not fire in every session, and an
    /// epoch bump through the WAL once they do again: readers read through
    /// meanwhile, and never serve a result that missed DDL.
    #[default]
    Required,
    /// Heartbeats regardless: for a database where the triggers cannot be
    /// installed; results read across DDL stay cached until their TTL.
    Optional,
}

/// The DDL message that makes the worker bump the epoch: the triggers were
/// not firing, so DDL may have gone unseen. Transactional, as the
/// triggers' own messages are.
const TRIGGERS_RESTORED_SQL: &str = "SELECT pg_logical_emit_message(true, 'cm.ddl', \
     '{\"v\": 1, \"event\": \"ddl_command_end\", \"tag\": \"cachemachine triggers restored\", \
     \"objects\": [{\"kind\": \"unscoped\", \"type\": \"event trigger\", \
     \"identity\": \"DDL may have gone unseen while the triggers did not fire\"}]}')";

/// Emits heartbeats forever on its own connection, reconnecting as needed.
/// Failures only delay heartbeats (readers then bypass the cache), so they
/// are logged, never fatal. With [`DdlTriggerPolicy::Required`] each tick
/// first reads the triggers' state (see the module docs).
pub async fn emit_heartbeats(
    url: String,
    prefix: String,
    interval: Duration,
    triggers: DdlTriggerPolicy,
) {
    let mut client: Option<Client> = None;
    let mut blind = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect_sql(&url).await {
                Ok(c) => client = Some(c),
                Err(error) => {
                    tracing::warn!(%error, "heartbeat: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        let tick = async {
            if triggers == DdlTriggerPolicy::Required && !triggers_fire(c, &mut blind).await? {
                return Ok(());
            }
            emit(c, &prefix).await
        };
        if let Err(error) = tick.await {
            tracing::warn!(error = %describe_pg_error(&error), "heartbeat: emit failed");
            client = None;
        }
    }
}

/// Whether the DDL triggers fire in every session. On the way from not
/// firing (`blind`) to firing, first sends the message that bumps the
/// epoch, so it is applied before any later heartbeat.
async fn triggers_fire(client: &Client, blind: &mut bool) -> Result<bool, tokio_postgres::Error> {
    let state = trigger_state(client).await?;
    if state != TriggerState::Installed {
        if !*blind {
            tracing::error!(
                problem = state.problem().unwrap_or_default(),
                "DDL event triggers: no heartbeat until they fire again, so readers read \
                 through; the epoch is bumped then"
            );
        }
        *blind = true;
        return Ok(false);
    }
    if *blind {
        client.execute(TRIGGERS_RESTORED_SQL, &[]).await?;
        tracing::warn!("DDL event triggers fire again: epoch bump sent, heartbeats resume");
        *blind = false;
    }
    Ok(true)
}

/// The heartbeat value for a message that came back at `lsn`, emitted at
/// `content` (unix micros as text); `None` for content that is not ours.
pub fn heartbeat_for(lsn: u64, content: &[u8]) -> Option<Heartbeat> {
    let emitted: u64 = std::str::from_utf8(content).ok()?.trim().parse().ok()?;
    Some(Heartbeat::of_message(lsn, emitted, unix_micros_now()))
}
