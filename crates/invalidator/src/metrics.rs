//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use cm_keys::Heartbeat;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

use crate::apply::Applied;
use crate::heartbeat::unix_micros_now;
use crate::txn::CommitInfo;

/// Registering a metric failed.
pub use prometheus::Error as MetricsError;

/// The worker's metrics (prefix `cm_invalidator_`).
pub struct Metrics {
    registry: Registry,
    /// Transactions applied and acknowledged.
    pub transactions: IntCounter,
    /// Row changes and table-wide invalidations seen.
    pub changes: IntCounter,
    /// Cached results (flush-list members) deleted.
    pub keys_invalidated: IntCounter,
    /// Table generations bumped.
    pub generation_bumps: IntCounter,
    /// Epoch bumps (whole-cache flushes).
    pub epoch_bumps: IntCounter,
    /// Transactions that exceeded the key budget.
    pub coarsened: IntCounter,
    /// Failed cache calls (each one retried).
    pub cache_errors: IntCounter,
    /// The last acknowledged Commit end LSN.
    pub ack_lsn: IntGauge,
    /// Bytes of WAL between the server's position and the slot's confirmed flush.
    pub lag_bytes: IntGauge,
    /// Commit time to invalidations applied.
    pub commit_to_invalidated: Histogram,
    last_heartbeat_emitted_micros: AtomicU64,
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(format!("cm_invalidator_{name}"), help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(format!("cm_invalidator_{name}"), help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let commit_to_invalidated = Histogram::with_opts(
            HistogramOpts::new(
                "cm_invalidator_commit_to_invalidated_seconds",
                "Seconds from a transaction's commit to its invalidations being applied",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        registry.register(Box::new(commit_to_invalidated.clone()))?;
        Ok(Metrics {
            transactions: counter(&registry, "transactions_total", "Transactions applied")?,
            changes: counter(
                &registry,
                "changes_total",
                "Row changes and table-wide invalidations",
            )?,
            keys_invalidated: counter(
                &registry,
                "keys_invalidated_total",
                "Cached results deleted",
            )?,
            generation_bumps: counter(
                &registry,
                "generation_bumps_total",
                "Table generations bumped",
            )?,
            epoch_bumps: counter(&registry, "epoch_bumps_total", "Whole-cache flushes")?,
            coarsened: counter(
                &registry,
                "coarsened_transactions_total",
                "Transactions past the key budget",
            )?,
            cache_errors: counter(
                &registry,
                "cache_errors_total",
                "Failed cache calls (retried)",
            )?,
            ack_lsn: gauge(&registry, "ack_lsn", "Last acknowledged commit end LSN")?,
            lag_bytes: gauge(
                &registry,
                "lag_bytes",
                "WAL bytes not yet confirmed by the slot",
            )?,
            commit_to_invalidated,
            last_heartbeat_emitted_micros: AtomicU64::new(0),
            registry,
        })
    }

    /// Records one applied and acknowledged transaction; `applied` counts
    /// the cache work done for it (a group's work is counted once).
    pub fn record_commit(&self, commit: &CommitInfo, applied: Applied) {
        self.transactions.inc();
        self.changes.inc_by(commit.changes);
        self.keys_invalidated.inc_by(applied.deleted as u64);
        self.generation_bumps.inc_by(applied.bumped as u64);
        if commit.coarsened {
            self.coarsened.inc();
        }
        self.ack_lsn
            .set(i64::try_from(commit.end_lsn.0).unwrap_or(i64::MAX));
        if let Some(committed) = commit.commit_ts.to_system_time() {
            if let Ok(elapsed) = committed.elapsed() {
                self.commit_to_invalidated.observe(elapsed.as_secs_f64());
            }
        }
    }

    /// Records a heartbeat written to the cache.
    pub fn record_heartbeat(&self, heartbeat: &Heartbeat) {
        self.last_heartbeat_emitted_micros
            .store(heartbeat.emitted_unix_micros, Ordering::Relaxed);
    }

    /// Age of the last heartbeat round trip; `None` before the first.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        let emitted = self.last_heartbeat_emitted_micros.load(Ordering::Relaxed);
        (emitted > 0).then(|| Duration::from_micros(unix_micros_now().saturating_sub(emitted)))
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(age) = self.heartbeat_age() {
            text.push_str(&format!(
                "# HELP cm_invalidator_heartbeat_age_seconds Age of the last heartbeat round trip\n\
                 # TYPE cm_invalidator_heartbeat_age_seconds gauge\n\
                 cm_invalidator_heartbeat_age_seconds {}\n",
                age.as_secs_f64()
            ));
        }
        text
    }
}

/// Bounds `/healthz` checks.
#[derive(Debug, Clone, Copy)]
pub struct HealthBounds {
    /// Maximum slot lag in bytes.
    pub max_lag_bytes: u64,
    /// Maximum heartbeat age.
    pub max_heartbeat_age: Duration,
}

/// The health verdict: `Ok(())` or the reason it fails.
pub fn health(metrics: &Metrics, bounds: HealthBounds) -> Result<(), String> {
    let lag = u64::try_from(metrics.lag_bytes.get()).unwrap_or(0);
    if lag > bounds.max_lag_bytes {
        return Err(format!(
            "slot lag {lag} bytes exceeds {}",
            bounds.max_lag_bytes
        ));
    }
    match metrics.heartbeat_age() {
        None => Err("no heartbeat has completed a round trip yet".into()),
        Some(age) if age > bounds.max_heartbeat_age => Err(format!(
            "last heartbeat round trip {:.1}s ago exceeds {:?}",
            age.as_secs_f64(),
            bounds.max_heartbeat_age
        )),
        Some(_) => Ok(()),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    bounds: HealthBounds,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State((m, _)): State<(Arc<Metrics>, HealthBounds)>| async move { m.render() }),
        )
        .route(
            "/healthz",
            get(
                |State((m, b)): State<(Arc<Metrics>, HealthBounds)>| async move {
                    match health(&m, b) {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                    }
                },
            ),
        )
        .with_state((metrics, bounds));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

/// Polls the slot's lag every few seconds into the gauge.
pub async fn poll_lag(url: String, slot: String, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        ticker.tick().await;
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    client = Some(c);
                }
                Err(_) => continue,
            }
        }
        let Some(c) = &client else { continue };
        let lag = c
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        if let Ok(Some(row)) = lag {
            if let Ok(Some(bytes)) = row.try_get::<_, Option<i64>>(0) {
                metrics.lag_bytes.set(bytes);
            }
        }
    }
}
