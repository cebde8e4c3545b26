//! The fence: a logical message written now, and the wait until the
//! invalidator's heartbeat shows it has applied everything before it.
//!
//! `pg_logical_emit_message(true, 'cm.fence.<prefix>', <unique>)` returns
//! the LSN of the message; every transaction that committed before the call
//! has a commit record below it. The invalidator writes its heartbeat (LSN
//! and time of a heartbeat message of its own) only once every transaction
//! received before that message is applied, and pgoutput sends transactions
//! in commit order; so a heartbeat whose LSN is at or past the fence's
//! proves every earlier write invalidated. The invalidator emits heartbeats
//! every `worker.heartbeat_interval_ms`, so the wait is that interval plus
//! its lag. The fence itself is transactional and carries no change; the
//! invalidator ignores it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cm_store::read_heartbeat;
use tokio_postgres::Client;

use super::error::InspectError;
use crate::cache::QueryCache;

/// How often the heartbeat is polled while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Distinguishes fences of one process.
static FENCES: AtomicU64 = AtomicU64::new(0);

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Checks the server version (14 or newer).
pub(crate) async fn check_server(client: &Client) -> Result<(), InspectError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?;
    let version_num: i32 = row.try_get(0)?;
    if version_num < 140_000 {
        return Err(InspectError::ServerTooOld { version_num });
    }
    Ok(())
}

/// Emits a fence for `cache`'s key prefix; returns its LSN.
pub(crate) async fn emit(client: &Client, cache: &QueryCache) -> Result<u64, InspectError> {
    let prefix = format!("cm.fence.{}", cache.key_space().prefix());
    let content = format!(
        "{}-{}-{}",
        unix_micros(),
        std::process::id(),
        FENCES.fetch_add(1, Ordering::Relaxed)
    );
    let row = client
        .query_one(
            "SELECT (pg_logical_emit_message(true, $1, $2::text) - '0/0'::pg_lsn)::text",
            &[&prefix, &content],
        )
        .await?;
    let text: String = row.try_get(0)?;
    text.parse()
        .map_err(|_| InspectError::Unexpected(format!("fence LSN {text:?}")))
}

/// Waits until the heartbeat is at or past `fence`, at most `timeout`.
pub(crate) async fn wait_applied(
    cache: &QueryCache,
    fence: u64,
    timeout: Duration,
) -> Result<(), InspectError> {
    let started = Instant::now();
    loop {
        let heartbeat = read_heartbeat(cache.store.as_ref(), cache.key_space()).await?;
        if heartbeat.is_some_and(|h| h.lsn >= fence) {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(InspectError::FenceTimeout {
                fence_lsn: format_lsn(fence),
                waited: started.elapsed(),
                heartbeat_age: heartbeat.map(|h| {
                    Duration::from_micros(unix_micros().saturating_sub(h.emitted_unix_micros))
                }),
                heartbeat_lsn: heartbeat.map(|h| format_lsn(h.lsn)),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_print_as_postgres_does() {
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }
}
