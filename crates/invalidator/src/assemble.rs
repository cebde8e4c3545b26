//! Builds a running worker from configuration: the store, the key space,
//! the schema model (catalog + mapping), metrics, and the side tasks
//! (heartbeat emitter, lag poller, metrics endpoint).

use std::sync::Arc;
use std::time::Duration;

use cm_keys::{discover, KeySpace, SchemaConfig, SchemaModel};
use cm_store::{CacheStore, MemcachedConfig, MemcachedStore};
use figment::Figment;
use tokio_postgres::NoTls;

use crate::config::InvalidatorConfig;
use crate::heartbeat::{emit_forever, message_prefix};
use crate::metrics::{poll_lag, serve, HealthBounds, Metrics};
use crate::worker::Worker;

/// What can stop the worker from starting, with the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `cache.prefix` is not a valid key prefix.
    #[error("config key cache.prefix: {0}")]
    Prefix(#[from] cm_keys::PrefixError),
    /// The memcached client could not be built, or a metadata server may
    /// evict (`cache.servers`, `cache.result_servers`).
    #[error("config keys cache.servers / cache.result_servers: {0}")]
    Store(#[from] cm_store::StoreError),
    /// The table mapping (`[schema]`) is wrong.
    #[error("config section schema: {0}")]
    Mapping(#[from] cm_keys::ConfigError),
    /// Catalog discovery failed.
    #[error("reading the catalog: {0}")]
    Catalog(#[from] cm_keys::CatalogError),
    /// The database is unreachable (`postgres.url`).
    #[error("config key postgres.url: {}", cm_keys::describe_pg_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The memcached store the configuration names: metadata on
/// `cache.servers` (checked not to evict), results on
/// `cache.result_servers` when set.
pub async fn store(config: &InvalidatorConfig) -> Result<Arc<dyn CacheStore>, StartError> {
    let mut memcached = MemcachedConfig::new(config.cache.servers.iter().cloned())
        .with_result_servers(config.cache.result_servers.iter().cloned());
    memcached.timeout = Duration::from_millis(config.cache.timeout_ms);
    Ok(Arc::new(MemcachedStore::connect(memcached).await?))
}

/// The `[schema]` mapping of the configuration.
pub fn schema_mapping(figment: &Figment) -> Result<SchemaConfig, StartError> {
    Ok(SchemaConfig::from_figment(
        &figment.clone().focus("schema"),
    )?)
}

/// The schema model: the catalog as it is now, adjusted by `[schema]`.
pub async fn schema_model(
    config: &InvalidatorConfig,
    figment: &Figment,
) -> Result<SchemaModel, StartError> {
    let mapping = schema_mapping(figment)?;
    let (client, connection) = tokio_postgres::connect(&config.postgres.url, NoTls).await?;
    let connection = tokio::spawn(connection);
    let discovered = discover(&client).await?;
    drop(client);
    let _ = connection.await;
    Ok(SchemaModel::build(discovered, &mapping)?)
}

/// A worker ready to run, with its side tasks started.
pub async fn start(
    config: InvalidatorConfig,
    figment: &Figment,
) -> Result<(Worker, Arc<Metrics>), StartError> {
    let space = KeySpace::new(config.cache.prefix.clone())?;
    let store = store(&config).await?;
    // Built once here only to report a mapping error before anything starts;
    // the worker reads its own catalog when it streams.
    schema_model(&config, figment).await?;
    let mapping = schema_mapping(figment)?;
    let metrics = Arc::new(Metrics::new()?);
    tokio::spawn(emit_forever(
        config.postgres.url.clone(),
        message_prefix(space.prefix()),
        config.worker.heartbeat_interval(),
    ));
    tokio::spawn(poll_lag(
        config.postgres.url.clone(),
        config.postgres.slot.clone(),
        Arc::clone(&metrics),
    ));
    if let Some(addr) = config.metrics.listen {
        let bounds = HealthBounds {
            max_lag_bytes: config.metrics.max_lag_bytes,
            max_heartbeat_age: Duration::from_millis(config.metrics.max_heartbeat_age_ms),
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(error) = serve(addr, metrics, bounds).await {
                tracing::error!(%error, %addr, "metrics endpoint failed");
            }
        });
    }
    let worker = Worker::new(config, space, store, mapping, Arc::clone(&metrics));
    Ok((worker, metrics))
}
