//! The heartbeat round trip: a non-transactional logical message emitted on
//! an ordinary connection comes back through the replication stream after
//! every transaction committed before it. When the worker has applied
//! everything before it, it writes the heartbeat key; readers bypass the
//! cache when that key is older than their `max_staleness`, so a dead or
//! lagging invalidator can never make them serve stale data for longer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_keys::{describe_pg_error, Heartbeat};
use tokio_postgres::Client;

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

/// Emits heartbeats forever on its own connection, reconnecting as needed.
/// Failures only delay heartbeats (readers then bypass the cache), so they
/// are logged, never fatal.
pub async fn emit_heartbeats(url: String, prefix: String, interval: Duration) {
    let mut client: Option<Client> = None;
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
        if let Some(c) = &client {
            if let Err(error) = emit(c, &prefix).await {
                tracing::warn!(error = %describe_pg_error(&error), "heartbeat: emit failed");
                client = None;
            }
        }
    }
}

/// The heartbeat value for a message that came back at `lsn`, emitted at
/// `content` (unix micros as text); `None` for content that is not ours.
pub fn heartbeat_for(lsn: u64, content: &[u8]) -> Option<Heartbeat> {
    let emitted: u64 = std::str::from_utf8(content).ok()?.trim().parse().ok()?;
    Some(Heartbeat::of_message(lsn, emitted, unix_micros_now()))
}
