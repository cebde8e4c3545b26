//! The `/metrics` and `/healthz` endpoint, and the slot lag poller that
//! feeds both.
//!
//! A hot standby (a second `run` waiting for the slot another worker holds)
//! serves both too: `/healthz` answers 200 `standby: ...` and
//! `cm_invalidator_leader` is 0. When two instances share a listen address
//! (one host, one configuration), the standby cannot bind it while the
//! leader does; it retries the bind every few seconds and takes the
//! address over once the leader is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::health::HealthBounds;
use crate::metrics::Metrics;

/// How often a standby retries binding an address the leader holds.
const BIND_RETRY: Duration = Duration::from_secs(2);

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
    let lag = u64::try_from(metrics.lag_bytes()).ok();
    let violations = bounds.violations(lag, metrics.heartbeat_age());
    if violations.is_empty() {
        Health::Healthy
    } else {
        Health::Unhealthy(violations.join("; "))
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

/// What the endpoint's handlers share.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    exporter: PrometheusHandle,
    bounds: HealthBounds,
}

/// `/metrics`: the exporter's text format, with the heartbeat age as of now.
fn metrics_response(shared: &Shared) -> String {
    shared.metrics.record_heartbeat_age();
    shared.exporter.render()
}

/// Serves `/metrics` (rendered from `exporter`) and `/healthz` on `addr`
/// until the task is dropped. An address in use (the leader's, on the same
/// host) is retried every [`BIND_RETRY`]; other bind errors are logged and
/// end the endpoint.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    exporter: PrometheusHandle,
    bounds: HealthBounds,
) {
    let shared = Shared {
        metrics,
        exporter,
        bounds,
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move { metrics_response(&s) }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Shared>| async move { healthz_response(&s.metrics, s.bounds) }),
        )
        .with_state(shared);
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
                metrics.set_lag_bytes(bytes);
            }
        }
    }
}
