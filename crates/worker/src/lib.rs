//! The invalidation engine: streams PostgreSQL logical replication
//! (pgoutput) from a slot and invalidates cached query results and their
//! foreign-key neighbours, at least once and in commit order, whatever
//! client made the write.
//!
//! A [`Worker`] takes typed [`WorkerOptions`], a [`cm_store::CacheStore`],
//! the key space and the `[schema]` mapping, and reports what it does to
//! an [`Observer`]. [`setup`] creates what streaming needs (DDL event
//! triggers, publication, slot) in a safe order, and
//! [`emit_heartbeats`] sends the heartbeat messages whose round trip tells
//! readers how fresh the cache is. The `cm-invalidator` application wraps
//! all of this in a configuration file, logs, metrics and subcommands;
//! `cm-embedded` runs it next to a reader in one process.
//! Every connection it opens (the walsender, the SQL connection, the
//! catalog reader and the heartbeat emitter) takes `sslmode` and
//! `sslrootcert` from the URL as libpq does, through `cm-tls`
//! ([`connect_sql`]).
//! `docs/architecture.md` shows where the engine sits; `docs/correctness.md`
//! states the rules it keeps.
//!
//! What it must never do: confirm an LSN to PostgreSQL before every
//! invalidation of that transaction (and all earlier ones) is acknowledged by
//! the cache, skip a change it cannot interpret instead of bumping a
//! generation, create a publication or slot in an order that loses changes,
//! or depend on how it is configured, observed or served (no configuration
//! files, metrics exporters, HTTP or reader code belong here).

mod ack_bound;
mod apply;
mod catalog;
mod changes;
mod ddl;
mod ddl_trigger;
mod error;
mod heartbeat;
mod identity;
mod observer;
mod options;
mod pipeline;
mod progress;
mod retry;
pub mod setup;
mod slot_identity;
mod sql;
mod txn;
mod worker;

pub use apply::Applied;
pub use ddl_trigger::{trigger_state, TriggerState};
pub use error::WorkerError;
pub use heartbeat::{emit_heartbeats, heartbeat_message_prefix, unix_micros_now, DdlTriggerPolicy};
pub use identity::{identity_verdicts, IdentityVerdict, Verdict};
pub use observer::{NoObserver, Observer, Role};
pub use options::{SetupOptions, WorkerOptions};
pub use sql::connect_sql;
pub use txn::{CommitArrival, CommitInfo, Stages};
pub use worker::{Worker, STOP_GRACE};
