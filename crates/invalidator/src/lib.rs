//! The invalidator worker: consumes PostgreSQL logical replication (pgoutput)
//! and invalidates cached query results and their foreign-key neighbours, at
//! least once and in commit order, whatever client made the write.
//!
//! This library holds the worker's parts so integration tests can drive
//! them; `src/main.rs` is the `cm-invalidator` command line.
//!
//! What it must never do: confirm an LSN to PostgreSQL before every
//! invalidation of that transaction (and all earlier ones) is acknowledged by
//! the cache, skip a change it cannot interpret instead of bumping a
//! generation, or create a publication or slot in an order that loses changes.

pub mod ack_bound;
pub mod apply;
pub mod assemble;
pub mod catalog;
pub mod changes;
pub mod check;
pub mod config;
pub mod coverage;
pub mod ddl;
pub mod ddl_trigger;
pub mod error_text;
pub mod heartbeat;
pub mod identity;
pub mod inspect;
pub mod metrics;
pub mod pipeline;
pub mod setup;
pub mod slot_identity;
pub mod txn;
pub mod worker;
