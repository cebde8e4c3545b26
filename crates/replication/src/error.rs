//! Errors of the replication client. Callers match on them to decide between
//! retrying (connection lost, slot busy), alerting (slot lost, two-phase
//! slot) and fixing configuration.

use std::fmt;

use cm_pgoutput::DecodeError;

/// An ErrorResponse from the server, with the fields an operator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Severity (`ERROR`, `FATAL`, ...).
    pub severity: String,
    /// SQLSTATE, e.g. `55006` (slot active) or `28P01` (bad password).
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The DETAIL field, when sent.
    pub detail: Option<String>,
    /// The HINT field, when sent.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// SQLSTATE of "replication slot is active for PID n": another consumer holds it.
pub const SQLSTATE_OBJECT_IN_USE: &str = "55006";
/// SQLSTATE of "replication slot does not exist" / "publication does not exist".
pub const SQLSTATE_UNDEFINED_OBJECT: &str = "42704";

/// Everything that can go wrong talking to a walsender.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The connection string or options are unusable.
    #[error("replication config: {0}")]
    Config(String),
    /// A socket error: connecting, reading or writing.
    #[error("replication connection to {target}: {source}")]
    Io {
        /// Where we were connecting or connected to.
        target: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection (EOF), e.g. after `wal_sender_timeout`
    /// or a shutdown.
    #[error("replication connection closed by the server")]
    Closed,
    /// The walsender ended the copy itself: at a shutdown it sends
    /// CommandComplete (`WalSndDone` in walsender.c) once everything it sent
    /// is confirmed; CopyDone ends it otherwise. Not a fault: reconnect.
    #[error(
        "PostgreSQL ended the replication stream (it sent {0}): the server is shutting down \
         or restarting, or its walsender was stopped"
    )]
    EndedByServer(&'static str),
    /// The stream had already ended, for the reason its consumer was given.
    #[error("the replication stream had already ended: {0}")]
    AlreadyEnded(String),
    /// The server answered with an ErrorResponse.
    #[error("server error: {0}")]
    Server(ServerError),
    /// TLS was required and refused, the server's certificate failed
    /// verification, or the handshake broke.
    #[error(transparent)]
    Tls(#[from] cm_tls::TlsError),
    /// Authentication failed or asked for a method we do not speak.
    #[error("authentication: {0}")]
    Auth(String),
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A pgoutput payload did not decode.
    #[error("pgoutput decode: {0}")]
    Decode(#[from] DecodeError),
    /// The slot has `two_phase = true`, so it would deliver PREPAREd changes
    /// before they are visible; the flag cannot be turned off again.
    #[error(
        "replication slot {slot:?} has two_phase enabled (someone started it with two_phase 'on'); \
         its changes would arrive at PREPARE time. It cannot be turned off on PostgreSQL 15-17: \
         drop the slot and create it again (the invalidator then flushes the whole cache)"
    )]
    SlotTwoPhase {
        /// The slot.
        slot: String,
    },
    /// The slot was invalidated; its changes are gone for good.
    #[error(
        "replication slot {slot:?} is invalidated ({reason}); the changes it held are lost. \
         Drop and re-create the slot and flush the whole cache; raise max_slot_wal_keep_size \
         or alert on slot lag to avoid it"
    )]
    SlotLost {
        /// The slot.
        slot: String,
        /// `wal_status` or `invalidation_reason` as the server reports it.
        reason: String,
    },
    /// The slot does not exist.
    #[error("replication slot {slot:?} does not exist; create it (after its publication)")]
    SlotMissing {
        /// The slot.
        slot: String,
    },
    /// The slot belongs to another output plugin or database.
    #[error("replication slot {slot:?} is not a pgoutput slot of this database: {found}")]
    SlotMismatch {
        /// The slot.
        slot: String,
        /// What it is instead.
        found: String,
    },
    /// A publication to stream from does not exist.
    #[error(
        "publication {publication:?} does not exist in this database; create it before the slot \
         (`cm-invalidator setup` creates both in that order, or CREATE PUBLICATION ... FOR ALL \
         TABLES / FOR TABLE ...). A slot created before its publication cannot decode changes to \
         the published tables: drop and re-create such a slot"
    )]
    PublicationMissing {
        /// The missing publication.
        publication: String,
    },
    /// `wal_level` is not `logical`: no logical slot can decode.
    #[error("wal_level is {wal_level:?}, logical decoding needs 'logical': set wal_level = logical in postgresql.conf and restart PostgreSQL")]
    WalLevelNotLogical {
        /// The server's setting.
        wal_level: String,
    },
    /// The role may not stream (neither REPLICATION nor superuser).
    #[error("role {role:?} has neither the REPLICATION attribute nor superuser: ALTER ROLE {} REPLICATION", crate::preflight::quote_ident(.role))]
    NotReplicationRole {
        /// The connected role.
        role: String,
    },
    /// An ordinary SQL query (a preflight query on the slot, publications
    /// or settings) failed.
    #[error("SQL: {}", describe_sql_error(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The acknowledgement rule refused an ack.
    #[error(transparent)]
    Ack(#[from] crate::ack::AckError),
}

impl ReplicationError {
    /// The SQLSTATE when this is a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// True when another consumer holds the slot (SQLSTATE 55006): wait and retry.
    pub fn is_slot_busy(&self) -> bool {
        self.sqlstate() == Some(SQLSTATE_OBJECT_IN_USE)
    }

    /// True when the server ended the stream in an orderly way (a shutdown
    /// or a stopped walsender), as opposed to a fault.
    pub fn is_ended_by_server(&self) -> bool {
        matches!(self, ReplicationError::EndedByServer(_))
            || matches!(self.sqlstate(), Some(SQLSTATE_ADMIN_SHUTDOWN))
    }
}

/// SQLSTATE of "terminating connection due to administrator command": a
/// shutdown or `pg_terminate_backend`.
pub const SQLSTATE_ADMIN_SHUTDOWN: &str = "57P01";

/// One line for a failed SQL call: the server's fields as [`ServerError`]
/// shows them, or the client error and its causes.
fn describe_sql_error(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        let mut text = error.to_string();
        let mut cause = std::error::Error::source(error);
        while let Some(error) = cause {
            text.push_str(&format!(": {error}"));
            cause = error.source();
        }
        return text;
    };
    ServerError {
        severity: db.severity().to_owned(),
        code: db.code().code().to_owned(),
        message: db.message().to_owned(),
        detail: db.detail().map(str::to_owned),
        hint: db.hint().map(str::to_owned),
    }
    .to_string()
}
