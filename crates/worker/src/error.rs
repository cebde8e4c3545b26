//! Why a worker stopped, and which of those reasons a retry can fix.

use cm_replication::ReplicationError;
use cm_store::StoreError;

use crate::catalog::CatalogReadError;
use crate::changes::ChangeError;

/// Why a replication session ended; [`WorkerError::is_fatal`] tells the
/// errors that also end [`crate::Worker::run`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Replication failed (connection, server, slot state).
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// SQL on the ordinary connection failed.
    #[error("SQL: {}", cm_keys::describe_pg_error(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The ordinary connection could not be opened (unreachable, refused
    /// login, TLS refused or a certificate failing verification).
    #[error("SQL connection: {0}")]
    Connect(#[from] cm_tls::ConnectError),
    /// The stream broke its own rules.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// The cache failed where no retry makes sense (a bad key).
    #[error("cache: {0}")]
    Store(#[from] StoreError),
    /// An acknowledgement was refused.
    #[error(transparent)]
    Ack(#[from] cm_replication::AckError),
    /// The catalog could not be read, or the mapping no longer fits it.
    #[error(transparent)]
    Catalog(#[from] CatalogReadError),
}

impl WorkerError {
    /// Errors an operator must fix; retrying cannot help. `run` exits with
    /// them, before touching the cache when they show at a session start.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WorkerError::Replication(
                ReplicationError::SlotTwoPhase { .. }
                    | ReplicationError::SlotMismatch { .. }
                    | ReplicationError::PublicationMissing { .. }
                    | ReplicationError::WalLevelNotLogical { .. }
                    | ReplicationError::NotReplicationRole { .. }
                    | ReplicationError::Config(_)
                    | ReplicationError::Auth(_)
            )
        ) || matches!(self, WorkerError::Catalog(error) if error.is_fatal())
            || matches!(self, WorkerError::Replication(ReplicationError::Tls(error)) if error.is_misconfiguration())
            || matches!(self, WorkerError::Connect(error) if error.is_misconfiguration())
    }

    /// PostgreSQL ended the session in an orderly way (shutdown, restart).
    pub(crate) fn is_ended_by_server(&self) -> bool {
        matches!(self, WorkerError::Replication(e) if e.is_ended_by_server())
    }
}
