//! The embedded mode: a service's reader cache and its invalidator in one
//! process, over the in-process [`MemoryStore`], with no memcached.
//!
//! When to use which:
//!
//! * **Embedded** (this crate): one instance of one service, or a demo. The
//!   cache lives in the process's memory and dies with it; the invalidator
//!   task streams the database's changes into it. Two instances would each
//!   need their own replication slot, and their caches would not be shared.
//! * **memcached + `cm-invalidator`** (the default for production): any
//!   number of service instances, in any language, share one cache; one
//!   invalidator per database keeps it correct and exposes metrics.
//!
//! Invalidation is the same code either way (the `cm-worker` engine),
//! with the same guarantees: a change is applied before its position is
//! confirmed, a restart replays what was not, and readers bypass the cache
//! while the invalidator's heartbeat is older than `max_staleness`.
//!
//! The reader's telemetry (a `cached_read` span per read, counters and a
//! latency histogram through the `metrics` facade) goes to whatever tracing
//! subscriber and `metrics` recorder the service installed; this crate
//! installs neither. The in-process invalidator reports to no observer.
//!
//! What this crate must never do: share its slot with another process, or
//! serve from the cache before the invalidator has started streaming (the
//! heartbeat check guarantees that).

use std::sync::Arc;
use std::time::Duration;

use cm_keys::{discover, KeySpace, SchemaConfig, SchemaModel};
use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::{CacheStore, MemoryStore, MemoryStoreConfig};
use cm_worker::setup::{missing_steps, run_steps};
use cm_worker::{
    connect_sql, emit_heartbeats, heartbeat_message_prefix, DdlTriggerPolicy, NoObserver,
    SetupOptions, Worker, WorkerError, WorkerOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What an embedded cache needs.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Connection string; the role needs REPLICATION for the stream. Its
    /// `sslmode` and `sslrootcert` apply to every connection (see `cm_tls`).
    pub postgres_url: String,
    /// This process's own replication slot.
    pub slot: String,
    /// The publication streamed (created FOR ALL TABLES when missing).
    pub publication: String,
    /// Key prefix inside the in-process store.
    pub prefix: String,
    /// The table mapping (the `[schema]` section of a configuration).
    pub schema: SchemaConfig,
    /// Reader behaviour (TTLs, max_staleness...).
    pub reader: ReaderOptions,
    /// Limits of the in-process store.
    pub store: MemoryStoreConfig,
    /// Heartbeat interval of the in-process invalidator.
    pub heartbeat_interval: Duration,
    /// Longest wait between the invalidator's retries.
    pub max_backoff: Duration,
    /// What heartbeats do while the DDL event triggers do not fire
    /// (`cm_worker::DdlTriggerPolicy`; docs/ddl.md).
    pub ddl_triggers: DdlTriggerPolicy,
}

impl EmbeddedOptions {
    /// Defaults for a database: slot and publication `cm_embedded`, prefix
    /// `cm`, a 64 MiB store, heartbeats every 200 ms.
    pub fn new(postgres_url: impl Into<String>) -> EmbeddedOptions {
        EmbeddedOptions {
            postgres_url: postgres_url.into(),
            slot: "cm_embedded".into(),
            publication: "cm_embedded".into(),
            prefix: "cm".into(),
            schema: SchemaConfig::default(),
            reader: ReaderOptions::default(),
            store: MemoryStoreConfig {
                max_bytes: Some(64 * 1024 * 1024),
                ..MemoryStoreConfig::default()
            },
            heartbeat_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            ddl_triggers: DdlTriggerPolicy::Required,
        }
    }
}

/// Why the embedded cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Creating the publication or slot failed.
    #[error("setting up replication: {0}")]
    Setup(#[from] cm_worker::setup::SetupError),
    /// A query failed.
    #[error("postgres: {}", cm_keys::describe_pg_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The database is unreachable, refused the login, or TLS failed
    /// (`sslmode`, `sslrootcert` in `postgres_url`).
    #[error("postgres: {0}")]
    Connect(#[from] cm_tls::ConnectError),
    /// Discovering the schema failed.
    #[error("schema: {0}")]
    Catalog(#[from] cm_keys::CatalogError),
    /// The mapping does not fit the schema.
    #[error("schema mapping: {0}")]
    Mapping(#[from] cm_keys::ConfigError),
    /// The key prefix is invalid.
    #[error("prefix: {0}")]
    Prefix(#[from] cm_keys::PrefixError),
    /// The reader refused its options.
    #[error("reader: {0}")]
    Reader(#[from] cm_reader::ReaderError),
}

/// A caching client and the invalidator feeding its store.
pub struct EmbeddedCache {
    client: CachingClient,
    store: Arc<MemoryStore>,
    space: KeySpace,
    stop: watch::Sender<bool>,
    worker: JoinHandle<Result<(), WorkerError>>,
    heartbeat: JoinHandle<()>,
}

impl EmbeddedCache {
    /// Creates the publication and slot when missing, starts the
    /// invalidator task and the heartbeat, and returns the caching client.
    pub async fn start(options: EmbeddedOptions) -> Result<EmbeddedCache, EmbeddedError> {
        let worker_options = worker_options(&options);
        let setup = SetupOptions::for_worker(&worker_options);
        let sql = connect_sql(&options.postgres_url).await?;
        let steps = missing_steps(&sql, &setup).await?;
        run_steps(&sql, &setup, &steps).await?;
        let model = Arc::new(SchemaModel::build(discover(&sql).await?, &options.schema)?);
        let space = KeySpace::new(options.prefix.clone())?;
        let store = Arc::new(MemoryStore::new(options.store.clone()));
        let shared: Arc<dyn CacheStore> = store.clone();
        let worker = Worker::new(
            worker_options,
            space.clone(),
            Arc::clone(&shared),
            options.schema.clone(),
            Arc::new(NoObserver),
        );
        let (stop, stop_rx) = watch::channel(false);
        let worker = tokio::spawn(worker.run(stop_rx));
        let heartbeat = tokio::spawn(emit_heartbeats(
            options.postgres_url.clone(),
            heartbeat_message_prefix(space.prefix()),
            options.heartbeat_interval,
            options.ddl_triggers,
        ));
        // The reader checks statements against the publication this worker
        // streams, whatever the reader options said.
        let reader = ReaderOptions {
            publication: Some(options.publication.clone()),
            ..options.reader.clone()
        };
        let cache = QueryCache::new(space.clone(), shared, model, reader)?
            .with_schema_mapping(options.schema.clone());
        Ok(EmbeddedCache {
            client: CachingClient::new(sql, Arc::new(cache)),
            store,
            space,
            stop,
            worker,
            heartbeat,
        })
    }

    /// The caching client: query through it as with tokio-postgres.
    pub fn client(&self) -> &CachingClient {
        &self.client
    }

    /// The in-process store (for inspection and tests).
    pub fn store(&self) -> &Arc<MemoryStore> {
        &self.store
    }

    /// The key space.
    pub fn key_space(&self) -> &KeySpace {
        &self.space
    }

    /// Stops the invalidator (its current transaction stays unconfirmed and
    /// is replayed next time) and the heartbeat.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.heartbeat.abort();
        if let Ok(Err(error)) = self.worker.await {
            tracing::warn!(%error, "embedded invalidator ended with an error");
        }
    }
}

/// The engine's options for these.
fn worker_options(options: &EmbeddedOptions) -> WorkerOptions {
    WorkerOptions {
        slot: options.slot.clone(),
        publication: options.publication.clone(),
        max_backoff: options.max_backoff,
        ..WorkerOptions::new(options.postgres_url.clone())
    }
}
