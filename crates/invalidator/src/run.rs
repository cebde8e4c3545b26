//! `run`: the worker with its side tasks (heartbeat emitter, slot lag
//! poller, `/metrics` and `/healthz`), until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use cm_invalidator::config::InvalidatorConfig;
use cm_invalidator::CRASH_AFTER_APPLY_ENV;
use cm_worker::{emit_heartbeats, heartbeat_message_prefix, Worker};
use figment::Figment;
use tokio::signal::unix::{signal, SignalKind};

use crate::cache;
use crate::endpoint::{poll_lag, serve};
use crate::health::HealthBounds;
use crate::metrics::{install_exporter, Metrics};

/// Runs the worker until a stop signal; errors are the fatal ones (an
/// operator must fix them, a retry cannot).
pub async fn command(config: InvalidatorConfig, figment: &Figment) -> Result<ExitCode> {
    let (worker, _metrics) = start(&config, figment).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested: abandoning the current transaction unacknowledged");
        let _ = stop_tx.send(true);
    });
    worker.run(stop_rx).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A worker ready to run, with its side tasks started.
async fn start(config: &InvalidatorConfig, figment: &Figment) -> Result<(Worker, Arc<Metrics>)> {
    let (store, space) = cache::store_and_space(config).await?;
    let mapping = cache::schema_mapping(figment)?;
    // Built once here only to report a mapping error before anything starts;
    // the worker reads its own catalog when it streams.
    cache::schema_model(config, &mapping).await?;
    // The exporter first: the metrics below are registered with it.
    let exporter = match config.metrics.listen {
        Some(_) => Some(install_exporter().context("installing the Prometheus exporter")?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(emit_heartbeats(
        config.postgres.url.clone(),
        heartbeat_message_prefix(space.prefix()),
        config.worker.heartbeat_interval(),
        config.worker.ddl_trigger_policy(),
    ));
    tokio::spawn(poll_lag(
        config.postgres.url.clone(),
        config.postgres.slot.clone(),
        Arc::clone(&metrics),
    ));
    if let (Some(addr), Some(exporter)) = (config.metrics.listen, exporter) {
        let bounds = HealthBounds::of(&config.metrics);
        tokio::spawn(serve(addr, Arc::clone(&metrics), exporter, bounds));
    }
    let mut options = config.worker_options();
    options.abort_after_apply = std::env::var_os(CRASH_AFTER_APPLY_ENV).is_some();
    let observer: Arc<dyn cm_worker::Observer> = metrics.clone();
    let worker = Worker::new(options, space, store, mapping, observer);
    Ok((worker, metrics))
}
