//! An async client for PostgreSQL's logical walsender (`replication=database`)
//! that streams pgoutput and never confirms work the caller has not finished.
//!
//! Mainline tokio-postgres cannot open a replication connection (no
//! `replication=database`, no CopyBoth), so this crate speaks the walsender
//! protocol itself on tokio, with postgres-protocol for message framing and
//! authentication, [`cm_pgoutput`] for the payloads and `cm_tls` for TLS
//! (`sslmode`, `sslrootcert`: an SSLRequest, then rustls, on TCP only). Ordinary SQL (the
//! slot's row, publications, settings: the checks before streaming) goes
//! through tokio-postgres ([`preflight`]).
//!
//! The protocol rules that shape this crate:
//! start at `0/0`; confirm only Commit `end_lsn`s the caller finished, or a
//! keepalive's `walEnd` once everything received before it is finished
//! ([`AckGate`]); answer keepalives even while the
//! caller is busy ([`ReplicationStream`] runs its own task); never negotiate
//! streaming or two-phase, and refuse slots where two_phase got turned on.
//!
//! What it must never do: report a flush position that is not a finished
//! transaction's end (or a settled keepalive), skip or reorder a message, or
//! create a TEMPORARY slot.

mod ack;
mod auth;
mod config;
mod connection;
mod error;
mod names;
pub mod preflight;
mod stream;
mod wire;

pub use ack::{AckError, AckGate};
pub use auth::PINNED_OPTIONS;
pub use config::{ReplicationConfig, Target, DEFAULT_APPLICATION_NAME};
pub use connection::{CreatedSlot, ReplicationConnection, SystemIdentity, TextRow};
pub use error::{
    ReplicationError, ServerError, SQLSTATE_ADMIN_SHUTDOWN, SQLSTATE_OBJECT_IN_USE,
    SQLSTATE_UNDEFINED_OBJECT,
};
pub use names::SlotName;
pub use stream::{Acker, Progress, ReplicationStream, StartOptions, StreamEvent};
