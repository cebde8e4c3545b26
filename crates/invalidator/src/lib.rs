//! The `cm-invalidator` application's configuration: the TOML file and
//! `CM_INVALIDATOR_*` environment variables it reads, validated with
//! errors that name the key, and mapped onto the engine's typed options
//! (`cm-worker`), and the fault-injection variable crash tests set. It is a
//! library so tests can load files; the subcommands
//! live in the binary (`src/main.rs`).
//!
//! What it must never do: accept a key it does not know, or a value it
//! cannot use, silently.

pub mod config;

/// Fault injection for crash tests: when this environment variable is set,
/// `run` aborts the process right after applying a transaction's
/// invalidations and before acknowledging it (a `kill -9` at the worst time).
pub const CRASH_AFTER_APPLY_ENV: &str = "CM_FAULT_CRASH_AFTER_APPLY";
