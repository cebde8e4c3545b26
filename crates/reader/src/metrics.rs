//! Counters of what the reader did, readable at any time as a
//! [`MetricsSnapshot`]. The events no read outcome shows (cache errors,
//! refused results...) also go to the `metrics` facade from here; the
//! outcomes themselves go there from [`crate::telemetry`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry;

/// Live counters; [`Metrics::snapshot`] reads them.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stale_heartbeat: AtomicU64,
    cache_errors: AtomicU64,
    stale_rejections: AtomicU64,
    stores: AtomicU64,
    lease_lost: AtomicU64,
    replica_behind: AtomicU64,
    oversized: AtomicU64,
    in_transaction_fills: AtomicU64,
    schema_changes: AtomicU64,
}

/// What the reader did since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Results served from the cache.
    pub hits: u64,
    /// Lookups that found no valid result and went to the database to fill it.
    pub misses: u64,
    /// Reads that went to the database without using the cache: `no_cache`,
    /// a heartbeat older than `max_staleness` or missing (also counted in
    /// `stale_heartbeat`), a statement that cannot be cached, another caller
    /// holding the fill lease, the cache being unreachable (also counted in
    /// `cache_errors`).
    pub bypasses: u64,
    /// Reads that found the cache off because the invalidator's heartbeat
    /// was older than `max_staleness`, or missing: not benign, the
    /// invalidator is down or lagging.
    pub stale_heartbeat: u64,
    /// Cache operations that failed (each degraded to a database read).
    pub cache_errors: u64,
    /// Cached results found but refused: their epoch or a table generation
    /// changed since they were filled.
    pub stale_rejections: u64,
    /// Results stored.
    pub stores: u64,
    /// Fills that did not store because their lease was voided in between
    /// (an invalidation won the race).
    pub lease_lost: u64,
    /// Fills read from a hot standby that had not replayed every
    /// invalidation already dispatched, so not stored (`docs/freshness.md`).
    pub replica_behind: u64,
    /// Results not stored because they exceed `max_value_bytes`.
    pub oversized: u64,
    /// Fills not stored because the session was inside a transaction block.
    pub in_transaction_fills: u64,
    /// Times the schema version moved and the learned statements were
    /// dropped (DDL applied by the invalidator).
    pub schema_changes: u64,
}

/// `snapshot_only` counters are read outcomes, which the facade gets from
/// [`telemetry::ReadTrace::finish`]; `with_facade` ones also increment the
/// named facade counter.
macro_rules! counters {
    (
        snapshot_only: $($name:ident),*;
        with_facade: $($event:ident => $metric:expr),* $(,)?
    ) => {
        impl Metrics {
            $(
                pub(crate) fn $name(&self) {
                    self.$name.fetch_add(1, Ordering::Relaxed);
                }
            )*
            $(
                pub(crate) fn $event(&self) {
                    self.$event.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!($metric).increment(1);
                }
            )*

            pub(crate) fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    $($event: self.$event.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    snapshot_only: hits, misses, bypasses, stale_heartbeat, stores, lease_lost, replica_behind;
    with_facade:
        cache_errors => telemetry::CACHE_ERRORS,
        stale_rejections => telemetry::STALE_REJECTIONS,
        oversized => telemetry::OVERSIZED,
        in_transaction_fills => telemetry::IN_TRANSACTION_FILLS,
        schema_changes => telemetry::SCHEMA_CHANGES,
);
