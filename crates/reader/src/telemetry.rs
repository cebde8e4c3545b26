//! Telemetry of cached reads: a tracing span per read, and counters and
//! latency histograms through the [`metrics`] facade. The reader installs
//! no recorder and no exporter: without one (the application's, e.g.
//! `metrics-exporter-prometheus`) a metric costs a no-op call, and without
//! a tracing subscriber the span costs a disabled-callsite check.
//!
//! Every read (each `CachingClient` and `CachingPool` read, through the one
//! read path, and `QueryCache::cached` and `cached_with`) has an INFO span `cached_read` with the fields `outcome`,
//! `reason` (for `read_through`), `fingerprint` (the first 16 hex digits
//! of the BLAKE3 hash of the statement text, the same in every process),
//! `tables` (`schema.name`, comma separated), `elapsed_us`, and, when a
//! statement read fails, `error`. It ends with exactly one outcome:
//!
//! | `outcome` | meaning |
//! | --- | --- |
//! | `hit` | served from the cache |
//! | `filled` | a miss: queried and stored |
//! | `not_stored` | a miss: queried, nothing stored (transaction block, too large, a registration or the store failed, the query failed) |
//! | `lease_lost` | a miss: an invalidation voided the fill first |
//! | `replica_behind` | a miss read from a hot standby that had not replayed what the invalidator already dispatched: not stored |
//! | `read_through` | the database without the cache; `reason` below |
//! | `degraded` | a cache error sent the read to the database |
//!
//! These refine the public [`Outcome`] a read returns (e.g. from
//! `query_with_outcome`): `hit` is [`Outcome::Hit`]; `filled`, `not_stored`,
//! `lease_lost` and `replica_behind` are [`Outcome::Miss`]; `read_through` and `degraded` are
//! [`Outcome::Bypass`]. Both come from the one outcome each read ends with.
//!
//! `read_through` reasons: `no_cache`, `uncacheable` (the text or the
//! catalog rules it out), `catalog_lookup_failed`, `unkeyable` (a parameter
//! or extra table the key cannot hold), `stale_heartbeat` (the cache is
//! off: the invalidator's heartbeat is older than `max_staleness` or
//! missing), `schema_changed`, `lease_contended` (another caller held the
//! fill lease), `token_not_applied` (a read-your-writes token the
//! invalidator did not apply within the token wait).
//!
//! The metric names are the constants below; [`describe_metrics`] gives
//! the recorder their help text and units.

use std::fmt;
use std::time::Instant;

use cm_keys::TableName;
use metrics::Unit;
use tracing::field::{display, Empty};
use tracing::Span;

use crate::fill::Outcome;

/// Reads, by outcome (counter, label `outcome`).
pub const READS: &str = "cm_reader_reads_total";
/// Reads that went to the database without the cache, by reason (counter,
/// label `reason`).
pub const READ_THROUGH: &str = "cm_reader_read_through_total";
/// Reads that found the cache off because the invalidator's heartbeat was
/// older than `max_staleness` or missing (counter): an outage to alert on.
pub const CACHE_OFF_STALE_HEARTBEAT: &str = "cm_reader_cache_off_stale_heartbeat_total";
/// Time from the call to the result, by outcome (histogram, seconds).
pub const READ_DURATION: &str = "cm_reader_read_duration_seconds";
/// Cache operations that failed, each degraded to a database read (counter).
pub const CACHE_ERRORS: &str = "cm_reader_cache_errors_total";
/// Cached results refused because a generation or the epoch moved (counter).
pub const STALE_REJECTIONS: &str = "cm_reader_stale_rejections_total";
/// Results not stored because they exceed `max_value_bytes` (counter).
pub const OVERSIZED: &str = "cm_reader_oversized_results_total";
/// Fills not stored because the session was inside a transaction block
/// (counter).
pub const IN_TRANSACTION_FILLS: &str = "cm_reader_in_transaction_fills_total";
/// Times the schema version moved and learned statements were dropped
/// (counter).
pub const SCHEMA_CHANGES: &str = "cm_reader_schema_changes_total";

// Every read ends in `ReadTrace::finish`, the one place that maps its
// `ReadOutcome` to span fields and metrics.

/// Why a read went to the database without using the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadThrough {
    /// The caller asked for it (`QueryOptions::no_cache`).
    NoCache,
    /// The text or the catalog makes the statement uncacheable (it reads
    /// something the invalidator cannot see, locks rows, calls a volatile
    /// function...).
    Uncacheable,
    /// Looking the statement's closure up in the catalog failed; tried again
    /// at its next use.
    CatalogLookupFailed,
    /// A parameter could not be encoded for the key, or an extra table is
    /// one the invalidator does not know.
    Unkeyable,
    /// The invalidator's heartbeat is older than `max_staleness`, or
    /// missing: the cache is off.
    StaleHeartbeat,
    /// The schema version moved since the statement was learned.
    SchemaChanged,
    /// Another caller held the fill lease, or filled it under other
    /// generations, until the reader stopped waiting.
    LeaseContended,
    /// The read's write token was not applied by the invalidator within
    /// the token wait.
    TokenNotApplied,
}

impl ReadThrough {
    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ReadThrough::NoCache => "no_cache",
            ReadThrough::Uncacheable => "uncacheable",
            ReadThrough::CatalogLookupFailed => "catalog_lookup_failed",
            ReadThrough::Unkeyable => "unkeyable",
            ReadThrough::StaleHeartbeat => "stale_heartbeat",
            ReadThrough::SchemaChanged => "schema_changed",
            ReadThrough::LeaseContended => "lease_contended",
            ReadThrough::TokenNotApplied => "token_not_applied",
        }
    }
}

/// What one cached read did, in the detail the telemetry labels; a miss is
/// `Filled`, `NotStored` or `LeaseLost`. [`ReadOutcome::public`] is the
/// coarser [`Outcome`] the caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Served from the cache.
    Hit,
    /// A miss: queried, and the result stored.
    Filled,
    /// A miss: queried, nothing stored (inside a transaction block, too
    /// large, rows not keyable, a registration or the store failed, or the
    /// query failed).
    NotStored,
    /// A miss: queried, but an invalidation voided the fill lease first.
    LeaseLost,
    /// A miss read from a hot standby that had not replayed every
    /// invalidation already dispatched: not stored.
    ReplicaBehind,
    /// Went to the database without the cache, for this reason.
    ReadThrough(ReadThrough),
    /// A cache error made the read go to the database.
    Degraded,
}

impl ReadOutcome {
    /// The `outcome` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ReadOutcome::Hit => "hit",
            ReadOutcome::Filled => "filled",
            ReadOutcome::NotStored => "not_stored",
            ReadOutcome::LeaseLost => "lease_lost",
            ReadOutcome::ReplicaBehind => "replica_behind",
            ReadOutcome::ReadThrough(_) => "read_through",
            ReadOutcome::Degraded => "degraded",
        }
    }

    /// The public outcome this refines.
    pub(crate) fn public(self) -> Outcome {
        match self {
            ReadOutcome::Hit => Outcome::Hit,
            ReadOutcome::Filled
            | ReadOutcome::NotStored
            | ReadOutcome::LeaseLost
            | ReadOutcome::ReplicaBehind => Outcome::Miss,
            ReadOutcome::ReadThrough(_) | ReadOutcome::Degraded => Outcome::Bypass,
        }
    }
}

/// One read's span and start time, from its start to [`ReadTrace::finish`].
#[derive(Debug)]
pub(crate) struct ReadTrace {
    span: Span,
    started: Instant,
}

impl ReadTrace {
    /// Starts the `cached_read` span (fields filled as they become known).
    pub(crate) fn start() -> ReadTrace {
        let span = tracing::info_span!(
            "cached_read",
            outcome = Empty,
            reason = Empty,
            fingerprint = Empty,
            tables = Empty,
            elapsed_us = Empty,
            error = Empty,
        );
        ReadTrace {
            span,
            started: Instant::now(),
        }
    }

    /// The span, to instrument the read with.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Records the statement's fingerprint (computed only when the span
    /// is enabled).
    pub(crate) fn statement(&self, sql: &str) {
        if !self.span.is_disabled() {
            self.span.record("fingerprint", fingerprint(sql).as_str());
        }
    }

    /// Records the tables the read depends on.
    pub(crate) fn tables(&self, tables: &[TableName]) {
        self.span.record("tables", display(Tables(tables)));
    }

    /// Ends the read: its outcome and time on the span and in the metrics.
    /// Returns the public outcome, for the caller.
    pub(crate) fn finish(self, outcome: ReadOutcome) -> Outcome {
        let elapsed = self.started.elapsed();
        let reason = match outcome {
            ReadOutcome::ReadThrough(reason) => Some(reason.label()),
            _ => None,
        };
        self.span.record("outcome", outcome.label());
        self.span.record("reason", reason);
        self.span.record(
            "elapsed_us",
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        record_metrics(outcome, elapsed.as_secs_f64());
        outcome.public()
    }
}

/// The facade side of [`ReadTrace::finish`].
fn record_metrics(outcome: ReadOutcome, seconds: f64) {
    let label = outcome.label();
    metrics::counter!(READS, "outcome" => label).increment(1);
    metrics::histogram!(READ_DURATION, "outcome" => label).record(seconds);
    if let ReadOutcome::ReadThrough(reason) = outcome {
        metrics::counter!(READ_THROUGH, "reason" => reason.label()).increment(1);
        if reason == ReadThrough::StaleHeartbeat {
            metrics::counter!(CACHE_OFF_STALE_HEARTBEAT).increment(1);
        }
    }
}

/// A statement's fingerprint: the first 64 bits of the BLAKE3 hash of its
/// text, in hex. The same text has the same fingerprint in every process.
pub(crate) fn fingerprint(sql: &str) -> String {
    let hash = blake3::hash(sql.as_bytes());
    hash.to_hex()[..16].to_owned()
}

/// Tables as `schema.name`, comma separated, formatted only when recorded.
struct Tables<'a>(&'a [TableName]);

impl fmt::Display for Tables<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, table) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{table}")?;
        }
        Ok(())
    }
}

/// Describes every reader metric (help text and unit) to the installed
/// recorder. Optional: call it once after installing the recorder, so the
/// exporter can print `# HELP` lines.
pub fn describe_metrics() {
    let counters = [
        (READS, "Cached reads, by outcome"),
        (
            READ_THROUGH,
            "Reads sent to the database without the cache, by reason",
        ),
        (
            CACHE_OFF_STALE_HEARTBEAT,
            "Reads that found the cache off: the invalidator's heartbeat was stale or missing",
        ),
        (
            CACHE_ERRORS,
            "Cache operations that failed (degraded to database reads)",
        ),
        (
            STALE_REJECTIONS,
            "Cached results refused: a generation or the epoch moved",
        ),
        (OVERSIZED, "Results not stored: larger than max_value_bytes"),
        (
            IN_TRANSACTION_FILLS,
            "Fills not stored: inside a transaction block",
        ),
        (
            SCHEMA_CHANGES,
            "Schema version moves (learned statements dropped)",
        ),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, Unit::Count, help);
    }
    metrics::describe_histogram!(
        READ_DURATION,
        Unit::Seconds,
        "Time from a cached read's call to its result, by outcome"
    );
}
