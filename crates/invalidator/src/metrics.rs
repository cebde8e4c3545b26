//! Prometheus metrics and the `/metrics` + `/healthz` endpoint: the
//! application's [`Observer`] of the engine.
//!
//! A hot standby (a second `run` waiting for the slot another worker holds)
//! serves both too: `/healthz` answers 200 `standby: ...` and
//! `cm_invalidator_leader` is 0. When two instances share a listen address
//! (one host, one configuration), the standby cannot bind it while the
//! leader does; it retries the bind every few seconds and takes the
//! address over once the leader is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use cm_keys::Heartbeat;
use cm_worker::{unix_micros_now, Applied, CommitInfo, Observer, Role};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

/// How often a standby retries binding an address the leader holds.
const BIND_RETRY: Duration = Duration::from_secs(2);

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
    /// 1 while this worker streams from the slot, 0 while it waits.
    pub leader: IntGauge,
    last_heartbeat_emitted_micros: AtomicU64,
    is_leader: AtomicBool,
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
            leader: gauge(
                &registry,
                "leader",
                "1 while this worker streams from the slot, 0 while it waits for it",
            )?,
            last_heartbeat_emitted_micros: AtomicU64::new(0),
            is_leader: AtomicBool::new(false),
            registry,
        })
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
}

impl Observer for Metrics {
    fn commit_applied(&self, commit: &CommitInfo, applied: Applied) {
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

    fn heartbeat_written(&self, heartbeat: &Heartbeat) {
        self.last_heartbeat_emitted_micros
            .store(heartbeat.emitted_unix_micros, Ordering::Relaxed);
    }

    fn epoch_bumped(&self) {
        self.epoch_bumps.inc();
    }

    fn cache_error(&self) {
        self.cache_errors.inc();
    }

    fn role_changed(&self, role: Role) {
        let leader = role == Role::Leader;
        self.is_leader.store(leader, Ordering::Relaxed);
        self.leader.set(i64::from(leader));
    }
}

impl Metrics {
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

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Streaming, with a fresh heartbeat and the lag within bounds.
    Healthy,
    /// Waiting for the slot (another worker holds it): healthy as a
    /// standby, not invalidating.
    Standby,
    /// The reason this leader is not doing its job.
    Unhealthy(String),
}

/// The health verdict.
pub fn health(metrics: &Metrics, bounds: HealthBounds) -> Health {
    if !metrics.is_leader() {
        return Health::Standby;
    }
    let lag = u64::try_from(metrics.lag_bytes.get()).unwrap_or(0);
    if lag > bounds.max_lag_bytes {
        return Health::Unhealthy(format!(
            "slot lag {lag} bytes exceeds {}",
            bounds.max_lag_bytes
        ));
    }
    match metrics.heartbeat_age() {
        None => Health::Unhealthy("no heartbeat has completed a round trip yet".into()),
        Some(age) if age > bounds.max_heartbeat_age => Health::Unhealthy(format!(
            "last heartbeat round trip {:.1}s ago exceeds {:?}",
            age.as_secs_f64(),
            bounds.max_heartbeat_age
        )),
        Some(_) => Health::Healthy,
    }
}

/// `/healthz`: 200 `ok` for a healthy leader, 200 `standby: ...` for a
/// worker waiting for the slot, 503 with the reason otherwise.
fn healthz_response(metrics: &Metrics, bounds: HealthBounds) -> (StatusCode, String) {
    match health(metrics, bounds) {
        Health::Healthy => (StatusCode::OK, "ok\n".into()),
        Health::Standby => (
            StatusCode::OK,
            "standby: not streaming; waiting for the replication slot\n".into(),
        ),
        Health::Unhealthy(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
/// An address in use (the leader's, on the same host) is retried every
/// [`BIND_RETRY`]; other bind errors are logged and end the endpoint.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, bounds: HealthBounds) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State((m, _)): State<(Arc<Metrics>, HealthBounds)>| async move { m.render() }),
        )
        .route(
            "/healthz",
            get(
                |State((m, b)): State<(Arc<Metrics>, HealthBounds)>| async move {
                    healthz_response(&m, b)
                },
            ),
        )
        .with_state((metrics, bounds));
    let Some(listener) = bind(addr).await else {
        return;
    };
    tracing::info!(%addr, "serving /metrics and /healthz");
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, %addr, "metrics endpoint failed");
    }
}

/// Binds `addr`, waiting while another process holds it.
async fn bind(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Some(listener),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                if !warned {
                    tracing::warn!(%addr, "metrics address in use (by the leader?); retrying the bind every {BIND_RETRY:?}");
                    warned = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(error) => {
                tracing::error!(%error, %addr, "cannot serve /metrics and /healthz (config key metrics.listen)");
                return None;
            }
        }
    }
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
            match cm_worker::connect_sql(&url).await {
                Ok(c) => client = Some(c),
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
