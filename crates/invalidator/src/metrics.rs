//! The application's [`Observer`] of the engine: it records the worker's
//! metrics through the `metrics` facade, and keeps what `/healthz` reads
//! (the facade cannot be read back). The Prometheus exporter is installed
//! here, by the application only ([`install_exporter`]).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use cm_keys::Heartbeat;
use cm_worker::{unix_micros_now, Applied, CommitInfo, Observer, Role, Stages};
use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

const TRANSACTIONS: &str = "cm_invalidator_transactions_total";
const CHANGES: &str = "cm_invalidator_changes_total";
const KEYS_INVALIDATED: &str = "cm_invalidator_keys_invalidated_total";
const GENERATION_BUMPS: &str = "cm_invalidator_generation_bumps_total";
const EPOCH_BUMPS: &str = "cm_invalidator_epoch_bumps_total";
const COARSENED: &str = "cm_invalidator_coarsened_transactions_total";
const CACHE_ERRORS: &str = "cm_invalidator_cache_errors_total";
const ACK_LSN: &str = "cm_invalidator_ack_lsn";
const LAG_BYTES: &str = "cm_invalidator_lag_bytes";
const COMMIT_TO_INVALIDATED: &str = "cm_invalidator_commit_to_invalidated_seconds";
const STAGE: &str = "cm_invalidator_stage_seconds";
const HEARTBEAT_AGE: &str = "cm_invalidator_heartbeat_age_seconds";
const LEADER: &str = "cm_invalidator_leader";

/// Buckets of [`COMMIT_TO_INVALIDATED`], in seconds.
const COMMIT_TO_INVALIDATED_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `stage` label values of [`STAGE`], in the order a commit passes them.
const STAGE_NAMES: [&str; 6] = [
    "commit_to_send",
    "send_to_read",
    "read_to_loop",
    "loop_to_group",
    "group_to_applied",
    "applied_to_published",
];

/// How often the exporter's histograms are compacted between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's global recorder and
/// returns the handle `/metrics` renders; compacts its histograms every
/// [`UPKEEP`] on a task of the current runtime.
pub fn install_exporter() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_TO_INVALIDATED.into()),
            &COMMIT_TO_INVALIDATED_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(STAGE.into()), &COMMIT_TO_INVALIDATED_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(UPKEEP);
        loop {
            ticker.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The worker's metrics (prefix `cm_invalidator_`), and the state
/// `/healthz` judges.
#[derive(Debug, Default)]
pub struct Metrics {
    last_heartbeat_emitted_micros: AtomicU64,
    lag_bytes: AtomicI64,
    is_leader: AtomicBool,
}

impl Metrics {
    /// Describes every metric to the installed recorder and sets each to
    /// zero, so a scrape lists them all before the first event. Call it
    /// after [`install_exporter`].
    pub fn new() -> Metrics {
        describe();
        for name in [
            TRANSACTIONS,
            CHANGES,
            KEYS_INVALIDATED,
            GENERATION_BUMPS,
            EPOCH_BUMPS,
            COARSENED,
            CACHE_ERRORS,
        ] {
            metrics::counter!(name).absolute(0);
        }
        for name in [ACK_LSN, LAG_BYTES, LEADER] {
            metrics::gauge!(name).set(0.0);
        }
        let _ = metrics::histogram!(COMMIT_TO_INVALIDATED);
        for stage in STAGE_NAMES {
            let _ = metrics::histogram!(STAGE, "stage" => stage);
        }
        Metrics::default()
    }

    /// Whether this worker streams from the slot.
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Relaxed)
    }

    /// Age of the last heartbeat round trip; `None` before the first.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        let emitted = self.last_heartbeat_emitted_micros.load(Ordering::Relaxed);
        (emitted > 0).then(|| Duration::from_micros(unix_micros_now().saturating_sub(emitted)))
    }

    /// WAL bytes between the server's position and the slot's confirmed
    /// flush, as last polled.
    pub fn lag_bytes(&self) -> i64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    /// Records a polled slot lag.
    pub fn set_lag_bytes(&self, bytes: i64) {
        self.lag_bytes.store(bytes, Ordering::Relaxed);
        metrics::gauge!(LAG_BYTES).set(bytes as f64);
    }

    /// Sets the heartbeat age gauge (an age is a scrape-time value).
    pub fn record_heartbeat_age(&self) {
        if let Some(age) = self.heartbeat_age() {
            metrics::gauge!(HEARTBEAT_AGE).set(age.as_secs_f64());
        }
    }
}

impl Observer for Metrics {
    fn commit_applied(&self, commit: &CommitInfo, applied: Applied) {
        metrics::counter!(TRANSACTIONS).increment(1);
        metrics::counter!(CHANGES).increment(commit.changes);
        metrics::counter!(KEYS_INVALIDATED).increment(applied.deleted as u64);
        metrics::counter!(GENERATION_BUMPS).increment(applied.bumped as u64);
        if commit.coarsened {
            metrics::counter!(COARSENED).increment(1);
        }
        metrics::gauge!(ACK_LSN).set(commit.end_lsn.0 as f64);
        if let Some(committed) = commit.commit_ts.to_system_time() {
            if let Ok(elapsed) = committed.elapsed() {
                metrics::histogram!(COMMIT_TO_INVALIDATED).record(elapsed.as_secs_f64());
            }
        }
    }

    fn commit_stages(&self, _commit: &CommitInfo, stages: &Stages) {
        let durations = [
            stages.commit_to_send,
            stages.send_to_read,
            stages.read_to_loop,
            stages.loop_to_group,
            stages.group_to_applied,
            stages.applied_to_published,
        ];
        for (stage, duration) in STAGE_NAMES.into_iter().zip(durations) {
            metrics::histogram!(STAGE, "stage" => stage).record(duration.as_secs_f64());
        }
    }

    fn heartbeat_written(&self, heartbeat: &Heartbeat) {
        self.last_heartbeat_emitted_micros
            .store(heartbeat.emitted_unix_micros, Ordering::Relaxed);
    }

    fn epoch_bumped(&self) {
        metrics::counter!(EPOCH_BUMPS).increment(1);
    }

    fn cache_error(&self) {
        metrics::counter!(CACHE_ERRORS).increment(1);
    }

    fn role_changed(&self, role: Role) {
        let leader = role == Role::Leader;
        self.is_leader.store(leader, Ordering::Relaxed);
        metrics::gauge!(LEADER).set(if leader { 1.0 } else { 0.0 });
    }
}

/// Help text and units for the exporter's `# HELP` lines.
fn describe() {
    let counters = [
        (TRANSACTIONS, "Transactions applied"),
        (CHANGES, "Row changes and table-wide invalidations"),
        (KEYS_INVALIDATED, "Cached results deleted"),
        (GENERATION_BUMPS, "Table generations bumped"),
        (EPOCH_BUMPS, "Whole-cache flushes"),
        (COARSENED, "Transactions past the key budget"),
        (CACHE_ERRORS, "Failed cache calls (retried)"),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, Unit::Count, help);
    }
    metrics::describe_gauge!(ACK_LSN, "Last acknowledged commit end LSN");
    metrics::describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "WAL bytes not yet confirmed by the slot"
    );
    metrics::describe_gauge!(
        LEADER,
        "1 while this worker streams from the slot, 0 while it waits for it"
    );
    metrics::describe_gauge!(
        HEARTBEAT_AGE,
        Unit::Seconds,
        "Age of the last heartbeat round trip"
    );
    metrics::describe_histogram!(
        COMMIT_TO_INVALIDATED,
        Unit::Seconds,
        "Seconds from a transaction's commit to its invalidations being applied"
    );
    metrics::describe_histogram!(
        STAGE,
        Unit::Seconds,
        "Seconds a transaction spent in each stage between its commit and its acknowledgement \
         (commit_to_send, send_to_read, read_to_loop, loop_to_group, group_to_applied, \
         applied_to_published; they add up to the commit-to-invalidated lag)"
    );
}
