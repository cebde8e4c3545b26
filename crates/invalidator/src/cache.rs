//! The cache and the schema the configuration names: the memcached store,
//! the key space and the schema model (catalog + `[schema]` mapping).

use std::sync::Arc;
use std::time::Duration;

use cm_invalidator::config::InvalidatorConfig;
use cm_keys::{discover, KeySpace, SchemaConfig, SchemaModel};
use cm_store::{CacheStore, MemcachedConfig, MemcachedStore};
use figment::Figment;

/// What the configuration's cache and schema sections got wrong, with the
/// config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum CacheConfigError {
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
    /// The database is unreachable, refused the login, or TLS failed
    /// (`postgres.url`).
    #[error("config key postgres.url: {0}")]
    Postgres(#[from] cm_tls::ConnectError),
}

/// The memcached store the configuration names: metadata on
/// `cache.servers` (checked not to evict), results on
/// `cache.result_servers` when set.
pub async fn store(config: &InvalidatorConfig) -> Result<Arc<dyn CacheStore>, CacheConfigError> {
    let mut memcached = MemcachedConfig::new(config.cache.servers.iter().cloned())
        .with_result_servers(config.cache.result_servers.iter().cloned());
    memcached.timeout = Duration::from_millis(config.cache.timeout_ms);
    Ok(Arc::new(MemcachedStore::connect(memcached).await?))
}

/// The key space of `cache.prefix`.
pub fn space(config: &InvalidatorConfig) -> Result<KeySpace, CacheConfigError> {
    Ok(KeySpace::new(config.cache.prefix.clone())?)
}

/// The store and the key space.
pub async fn store_and_space(
    config: &InvalidatorConfig,
) -> Result<(Arc<dyn CacheStore>, KeySpace), CacheConfigError> {
    let space = space(config)?;
    Ok((store(config).await?, space))
}

/// The `[schema]` mapping of the configuration.
pub fn schema_mapping(figment: &Figment) -> Result<SchemaConfig, CacheConfigError> {
    Ok(SchemaConfig::from_figment(
        &figment.clone().focus("schema"),
    )?)
}

/// The schema model: the catalog as it is now, adjusted by `[schema]`.
pub async fn schema_model(
    config: &InvalidatorConfig,
    mapping: &SchemaConfig,
) -> Result<SchemaModel, CacheConfigError> {
    let client = cm_worker::connect_sql(&config.postgres.url).await?;
    let discovered = discover(&client).await?;
    Ok(SchemaModel::build(discovered, mapping)?)
}
