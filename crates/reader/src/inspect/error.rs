//! [`InspectError`]: why a consistency check could not run.

use std::time::Duration;

use thiserror::Error;

/// Why [`crate::inspect::inspect`] could not produce a report. Problems with
/// single entries (a query that no longer runs) are not errors: they are
/// listed in the report.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The server is older than PostgreSQL 14, whose pgoutput first carries
    /// logical messages (the fence and the heartbeat need them).
    #[error(
        "the consistency check needs PostgreSQL 14 or newer; the server is version {version_num}"
    )]
    ServerTooOld {
        /// `server_version_num`.
        version_num: i32,
    },
    /// The invalidator did not apply the fence in time: it is not running,
    /// is lagging, or streams from another database or key prefix.
    #[error(
        "the invalidator did not apply the fence at {fence_lsn} within {waited:?}: {}; \
         is `cm-invalidator run` running for this database and key prefix?",
        describe_heartbeat(*.heartbeat_age, .heartbeat_lsn.as_deref())
    )]
    FenceTimeout {
        /// The fence's LSN.
        fence_lsn: String,
        /// How long the check waited.
        waited: Duration,
        /// The age of the last heartbeat (since it was emitted), if any.
        heartbeat_age: Option<Duration>,
        /// The LSN of the last heartbeat, if any.
        heartbeat_lsn: Option<String>,
    },
    /// The database failed a statement of the check itself (the fence, the
    /// transaction), not of a checked query.
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The cache could not be read.
    #[error("cache: {0}")]
    Store(#[from] cm_store::StoreError),
    /// The database returned something the check did not expect.
    #[error("unexpected answer from the database: {0}")]
    Unexpected(String),
}

fn describe_heartbeat(age: Option<Duration>, lsn: Option<&str>) -> String {
    match (age, lsn) {
        (Some(age), Some(lsn)) => format!(
            "the last heartbeat is {:.1} s old (applied up to {lsn})",
            age.as_secs_f64()
        ),
        _ => "there is no heartbeat in the cache".to_owned(),
    }
}
