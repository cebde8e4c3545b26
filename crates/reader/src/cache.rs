//! [`QueryCache`]: the state shared by every [`crate::CachingClient`] of one
//! deployment: key space, store, schema model, options, the in-process
//! statement cache and the counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cm_keys::{discover, CanonicalValue, Key, KeySpace, SchemaConfig, SchemaModel, TableName};
use cm_store::CacheStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::{Client, Column};
use tracing::Instrument;

use crate::dependencies::{self, ColumnOrigins, Param};
use crate::entry::{Source, SourceParam};
use crate::error::ReaderError;
use crate::fill::{CachePlan, Fetched, MissParts};
use crate::learned::{LearnedStatement, Reads, StatementCache, Uncacheable};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::options::{QueryOptions, ReaderOptions};
use crate::registry::InspectionRegistry;
use crate::telemetry::{ReadOutcome, ReadThrough, ReadTrace};

/// A row of a table named by its key values, for [`QueryCache::cached_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    table: TableName,
    key: Vec<(String, Option<CanonicalValue>)>,
}

impl ObjectRef {
    /// The row of `table` whose key columns hold these values (canonical
    /// form: [`CanonicalValue::Int`] for every integer type, and so on).
    pub fn new<S: Into<String>>(
        table: TableName,
        key: impl IntoIterator<Item = (S, CanonicalValue)>,
    ) -> ObjectRef {
        ObjectRef {
            table,
            key: key.into_iter().map(|(c, v)| (c.into(), Some(v))).collect(),
        }
    }
}

/// Discovers the tables and applies the mapping.
async fn discover_model(
    client: &Client,
    config: &SchemaConfig,
) -> Result<SchemaModel, ReaderError> {
    let tables = discover(client)
        .await
        .map_err(|e| ReaderError::Config(format!("discovering the schema: {e}")))?;
    SchemaModel::build(tables, config)
        .map_err(|e| ReaderError::Config(format!("schema mapping: {e}")))
}

/// The shared state of the reader. Build one per process (per database),
/// wrap it in an `Arc`, and hand it to every [`crate::CachingClient`].
#[derive(Debug)]
pub struct QueryCache {
    pub(crate) space: KeySpace,
    pub(crate) store: Arc<dyn CacheStore>,
    /// The schema model and the schema version it was read under.
    model: RwLock<ModelState>,
    /// The mapping the model was built with; `None` (a model handed to
    /// [`QueryCache::new`]) means the model cannot be re-read after DDL.
    mapping: Option<SchemaConfig>,
    /// One re-discovery at a time.
    refreshing: tokio::sync::Mutex<()>,
    pub(crate) options: ReaderOptions,
    pub(crate) statements: StatementCache,
    attribute_names: Mutex<HashMap<u32, Arc<HashMap<i16, String>>>>,
    pub(crate) metrics: Metrics,
    /// The queue of stored results to the inspection registry's writer.
    pub(crate) registry: InspectionRegistry,
    /// How often this cache saw the schema version move: part of the text
    /// statements are prepared by, so none prepared before a change is run
    /// after it.
    schema_changes_seen: AtomicU64,
    /// Whether a fill ever came from a hot standby: from then on every fill
    /// reads the invalidator's dispatched LSN beside its query.
    pub(crate) replica_seen: AtomicBool,
    /// The global epoch's key, read by every hit.
    pub(crate) epoch_key: Key,
    /// The invalidator heartbeat's key, read by every hit.
    pub(crate) heartbeat_key: Key,
    /// The schema version's key, read by every hit of a statement.
    pub(crate) schema_version_key: Key,
}

/// A schema model and the schema version it was read under (`None`: not
/// known, e.g. a model handed in by the caller).
#[derive(Debug, Clone)]
struct ModelState {
    model: Arc<SchemaModel>,
    version: Option<u64>,
}

impl QueryCache {
    /// A cache over `store` with keys from `space`, for the tables of
    /// `model` (the same model the invalidator loads).
    pub fn new(
        space: KeySpace,
        store: Arc<dyn CacheStore>,
        model: Arc<SchemaModel>,
        options: ReaderOptions,
    ) -> Result<QueryCache, ReaderError> {
        options.validate()?;
        let registry =
            InspectionRegistry::new(store.clone(), space.clone(), options.flush_list_ttl);
        Ok(QueryCache {
            epoch_key: space.epoch(),
            heartbeat_key: space.heartbeat(),
            schema_version_key: space.schema_version(),
            space,
            store,
            model: RwLock::new(ModelState {
                model,
                version: None,
            }),
            mapping: None,
            refreshing: tokio::sync::Mutex::new(()),
            statements: StatementCache::new(options.statement_cache_capacity),
            options,
            attribute_names: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            registry,
            replica_seen: AtomicBool::new(false),
            schema_changes_seen: AtomicU64::new(0),
        })
    }

    /// Like [`QueryCache::new`], with the model discovered from the
    /// database's catalog and adjusted by `config`. Such a cache re-reads
    /// its model when the invalidator reports DDL (the schema version
    /// moved), so keys follow changed keys, columns and partitions.
    pub async fn discover(
        client: &Client,
        space: KeySpace,
        store: Arc<dyn CacheStore>,
        config: &SchemaConfig,
        options: ReaderOptions,
    ) -> Result<QueryCache, ReaderError> {
        let model = discover_model(client, config).await?;
        Ok(QueryCache::new(space, store, Arc::new(model), options)?
            .with_schema_mapping(config.clone()))
    }

    /// Lets a cache built with [`QueryCache::new`] re-read its model (with
    /// `mapping`, which must be the one the model was built with) when the
    /// invalidator reports DDL, as [`QueryCache::discover`] does.
    pub fn with_schema_mapping(mut self, mapping: SchemaConfig) -> QueryCache {
        self.mapping = Some(mapping);
        self
    }

    /// The learned statement for `sql` in `namespace`, if it is known and
    /// current: no database connection needed.
    pub(crate) fn learned(&self, namespace: &str, sql: &str) -> Option<Arc<LearnedStatement>> {
        let key = StatementCache::key(namespace, sql);
        self.statements.get(&key).filter(|info| !info.expired())
    }

    /// Learns `sql` in `namespace` on `client`, under the current schema
    /// version and a model at least that current.
    pub(crate) async fn learn(
        &self,
        client: &Client,
        namespace: &str,
        sql: &str,
    ) -> Result<Arc<LearnedStatement>, ReaderError> {
        let key = StatementCache::key(namespace, sql);
        // Read before learning: DDL committed after this read bumps the
        // version again, and the hit path then drops what was learned.
        let version = self.read_schema_version().await;
        let model = self.model_for(client, version).await;
        self.statements
            .learn(
                client,
                model,
                version,
                self.options.publication.as_deref(),
                key,
                sql,
            )
            .await
    }

    /// Drops every learned statement: the schema version moved.
    pub(crate) fn schema_changed(&self) {
        self.metrics.schema_changes();
        self.schema_changes_seen.fetch_add(1, Ordering::Relaxed);
        self.statements.clear();
        // Column names by attnum change with renames, drops and re-creates.
        self.attribute_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The current schema version, created (at a random start, like every
    /// generation) when missing; `None` when the store fails.
    async fn read_schema_version(&self) -> Option<u64> {
        let key = self.schema_version_key.as_str();
        match cm_store::get_one(self.store.as_ref(), key).await {
            Ok(item) => match item {
                Some(item) => crate::fill::generation(&item),
                None => match self.store.create_generation_if_missing(key).await {
                    Ok(value) => Some(value.get()),
                    Err(error) => {
                        self.metrics.cache_errors();
                        tracing::warn!(%error, "creating the schema version failed; reading through");
                        None
                    }
                },
            },
            Err(error) => {
                self.metrics.cache_errors();
                tracing::warn!(%error, "reading the schema version failed; reading through");
                None
            }
        }
    }

    /// The model to learn a statement with under `version`: the current
    /// one, re-discovered first when it was read under another version and
    /// the cache knows its mapping. A failed re-discovery keeps the old
    /// model and reports no version, so nothing learned with it is kept.
    async fn model_for(&self, client: &Client, version: Option<u64>) -> Arc<SchemaModel> {
        let (Some(mapping), Some(wanted)) = (&self.mapping, version) else {
            return self.model();
        };
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.model_state();
        if current.version == Some(wanted) {
            return current.model;
        }
        match discover_model(client, mapping).await {
            Ok(model) => {
                let model = Arc::new(model);
                let mut state = self.model.write().unwrap_or_else(|e| e.into_inner());
                *state = ModelState {
                    model: model.clone(),
                    version: Some(wanted),
                };
                model
            }
            Err(error) => {
                tracing::warn!(%error, "re-reading the schema model failed; keeping the old one");
                current.model
            }
        }
    }

    fn model_state(&self) -> ModelState {
        self.model.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How often this cache saw the schema version move (and dropped what
    /// it had learned).
    pub(crate) fn schema_changes_seen(&self) -> u64 {
        self.schema_changes_seen.load(Ordering::Relaxed)
    }

    /// The counters so far.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The store results and metadata live in (for inspection, such as
    /// reading the invalidator's heartbeat with `cm_store::read_heartbeat`).
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }

    /// The key space.
    pub fn key_space(&self) -> &KeySpace {
        &self.space
    }

    /// The schema model (the newest read; statements keep the one they
    /// were learned with).
    pub fn model(&self) -> Arc<SchemaModel> {
        self.model_state().model
    }

    /// The options.
    pub fn options(&self) -> &ReaderOptions {
        &self.options
    }

    /// Memoises `compute` under `key` for `ttl`. Nothing but the TTL and an
    /// epoch bump invalidates it (like django-cache-machine's `cached`), and the heartbeat is
    /// not checked: use it for values that do not come from the database, or
    /// that may be as stale as `ttl`.
    pub async fn cached<T, E, F, Fut>(&self, key: &str, ttl: Duration, compute: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let plan = CachePlan {
            result: self.space.result(&[b"cached", key.as_bytes()]),
            generations: Arc::new([]),
            check_heartbeat: false,
            ttl: ttl.min(self.options.flush_list_ttl),
            schema_version: None,
            miss: Box::new(MissParts::default),
            token: None,
        };
        let trace = ReadTrace::start();
        let span = trace.span().clone();
        self.get_or_fill(&plan, trace, || async {
            compute().await.map(|payload| Fetched {
                payload,
                post_query: Vec::new(),
                cacheable: true,
                replayed: None,
            })
        })
        .instrument(span)
        .await
        .map(|(payload, _)| payload)
    }

    /// Memoises `compute` under `key` for `ttl`, invalidated whenever
    /// `object` changes (like django-cache-machine's `cached_with`): the value joins the
    /// object's flush list before `compute` runs, and snapshots its table's
    /// generation, so a change that the invalidator cannot key still
    /// invalidates it.
    pub async fn cached_with<T, E, F, Fut>(
        &self,
        object: &ObjectRef,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let identity = self
            .model()
            .table(&object.table)
            .map(|t| t.key_identity().clone())
            .unwrap_or_else(|| object.table.clone());
        let pairs: Vec<(&str, Option<&CanonicalValue>)> = object
            .key
            .iter()
            .map(|(c, v)| (c.as_str(), v.as_ref()))
            .collect();
        let object_key = self.space.object(&identity, &pairs);
        let trace = ReadTrace::start();
        trace.tables(std::slice::from_ref(&identity));
        let plan = CachePlan {
            result: self.space.result(&[
                b"cached_with",
                object_key.as_str().as_bytes(),
                key.as_bytes(),
            ]),
            generations: Arc::new([self.space.table_generation(&identity)]),
            check_heartbeat: true,
            ttl: ttl.min(self.options.flush_list_ttl),
            schema_version: None,
            miss: Box::new(move || MissParts {
                pre_query: vec![object_key.clone()],
                source: None,
            }),
            token: None,
        };
        let span = trace.span().clone();
        self.get_or_fill(&plan, trace, || async {
            compute().await.map(|payload| Fetched {
                payload,
                post_query: Vec::new(),
                cacheable: true,
                replayed: None,
            })
        })
        .instrument(span)
        .await
        .map(|(payload, _)| payload)
    }

    /// The cache plan for one execution of a statement, or the outcome of
    /// reading it through. Only the result key is computed per call; the
    /// generation keys come with the statement, the rest waits for a miss.
    pub(crate) fn plan_for<'a>(
        &'a self,
        info: &'a LearnedStatement,
        options: &'a QueryOptions,
        kind: &'a str,
        sql: &'a str,
        params: Vec<Param>,
    ) -> Result<CachePlan<'a>, ReadOutcome> {
        let reads = info.reads.as_ref().map_err(Uncacheable::outcome)?;
        let model = &info.model;
        for extra in &options.extra_tables {
            // An extra table must be one the invalidator knows.
            model
                .table(extra)
                .ok_or(ReadOutcome::ReadThrough(ReadThrough::Unkeyable))?;
        }
        let generations = if options.extra_tables.is_empty() {
            info.generations
                .get_or_init(|| {
                    dependencies::generation_keys(&self.space, model, reads, &[]).into()
                })
                .clone()
        } else {
            dependencies::generation_keys(&self.space, model, reads, &options.extra_tables).into()
        };
        Ok(CachePlan {
            result: self.result_key(options, kind, sql, &params),
            generations,
            check_heartbeat: true,
            ttl: self.options.result_ttl(options),
            schema_version: info.schema_version,
            miss: Box::new(move || self.miss_parts(info, reads, options, kind, sql, &params)),
            token: options
                .after
                .map(|token| (token, options.token_wait.unwrap_or(self.options.token_wait))),
        })
    }

    /// What a miss of one execution registers and records: the pre-query
    /// flush lists and the source. `reads` are `info`'s.
    fn miss_parts(
        &self,
        info: &LearnedStatement,
        reads: &Reads,
        options: &QueryOptions,
        kind: &str,
        sql: &str,
        params: &[Param],
    ) -> MissParts {
        MissParts {
            pre_query: dependencies::pre_query_keys(
                &self.space,
                &info.model,
                reads,
                &options.extra_tables,
                params,
            )
            .into_iter()
            .collect(),
            source: Some(Source {
                kind: kind.to_owned(),
                namespace: options.namespace.clone(),
                sql: sql.to_owned(),
                params: params
                    .iter()
                    .map(|p| SourceParam {
                        type_oid: p.type_oid,
                        bytes: p.bytes.clone().map(serde_bytes::ByteBuf::from),
                    })
                    .collect(),
                settings: info.settings.clone(),
            }),
        }
    }

    /// The `q:` key of one execution: result kind, namespace, statement
    /// text, and each parameter's type oid and binary value.
    fn result_key(&self, options: &QueryOptions, kind: &str, sql: &str, params: &[Param]) -> Key {
        let encoded: Vec<Vec<u8>> = params
            .iter()
            .map(|param| {
                let mut part = Vec::with_capacity(5 + param.bytes.as_ref().map_or(0, Vec::len));
                part.extend_from_slice(&param.type_oid.to_be_bytes());
                match &param.bytes {
                    None => part.push(0),
                    Some(bytes) => {
                        part.push(1);
                        part.extend_from_slice(bytes);
                    }
                }
                part
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + encoded.len());
        parts.extend([
            kind.as_bytes(),
            options.namespace.as_bytes(),
            sql.as_bytes(),
        ]);
        parts.extend(encoded.iter().map(Vec::as_slice));
        self.space.result(&parts)
    }

    /// Where each result column comes from, for the neighbour links. Looks
    /// up column names by attnum once per table (until the schema changes),
    /// so a miss over known tables costs no round trip; `Err` when that
    /// fails.
    pub(crate) async fn origins(
        &self,
        client: &Client,
        model: &SchemaModel,
        columns: &[Column],
    ) -> Result<ColumnOrigins, tokio_postgres::Error> {
        let wanted: Vec<u32> = {
            let known = self
                .attribute_names
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut wanted: Vec<u32> = columns
                .iter()
                .filter_map(Column::table_oid)
                .filter(|oid| model.table_by_oid(*oid).is_some() && !known.contains_key(oid))
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            wanted
        };
        if !wanted.is_empty() {
            let rows = client
                .query(
                    "SELECT attrelid, attnum, attname::text FROM pg_attribute \
                     WHERE attrelid = ANY($1) AND attnum > 0 AND NOT attisdropped",
                    &[&wanted],
                )
                .await?;
            // A table the catalog has no columns for is remembered as such
            // too, not looked up again at every miss.
            let mut found: HashMap<u32, HashMap<i16, String>> =
                wanted.iter().map(|&oid| (oid, HashMap::new())).collect();
            for row in rows {
                found
                    .entry(row.try_get(0)?)
                    .or_default()
                    .insert(row.try_get(1)?, row.try_get(2)?);
            }
            let mut known = self
                .attribute_names
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (oid, names) in found {
                known.insert(oid, Arc::new(names));
            }
        }
        let known = self
            .attribute_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(columns
            .iter()
            .map(|column| {
                let table = model.table_by_oid(column.table_oid()?)?;
                let name = known.get(&column.table_oid()?)?.get(&column.column_id()?)?;
                Some((table.name.clone(), name.clone()))
            })
            .collect())
    }
}
