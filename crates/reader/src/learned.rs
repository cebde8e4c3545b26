//! What one statement reads, learned once per statement text (and
//! namespace) and kept in process: its parameter types (to fingerprint
//! parameters without a round trip), the tables and objects it can read
//! (`closure.rs`), and its `WHERE` filter where the catalog proves the
//! filter's name is a plain table.
//!
//! A learned statement is only as current as the catalog it was learned
//! from: it records the schema version (`KeySpace::schema_version`, bumped by
//! the invalidator for every DDL) read before learning, and the hit path
//! drops every learned statement when that version moved (`fill.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cm_keys::{Key, SchemaModel};
use postgres_types::Type;
use tokio_postgres::Client;

use crate::closure::{self, Dependencies, NotCacheable};
use crate::error::ReaderError;
use crate::settings::{self, SessionSettings};
use crate::sql::{self, Filter, SqlShape};
use crate::telemetry::{ReadOutcome, ReadThrough};

/// The error for a text that is not one read: the database's own syntax
/// error when the text does not parse (`SELEC id` gets PostgreSQL's
/// "syntax error at or near", from a prepare, which executes nothing), else
/// [`ReaderError::NotASelect`].
pub(crate) async fn not_a_read(client: &Client, sql: &str, reason: String) -> ReaderError {
    if reason.starts_with(sql::NOT_UNDERSTOOD) {
        if let Err(error) = client.prepare(sql).await {
            return error.into();
        }
    }
    ReaderError::NotASelect { reason }
}

/// Why a statement's results are never cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Uncacheable {
    /// The text says so (locking clause, value of the moment, unparsable).
    Text(&'static str),
    /// The catalog says so (see [`NotCacheable`]).
    Catalog(NotCacheable),
    /// The closure query failed; tried again at the next use.
    Lookup(String),
    /// The schema version could not be read; tried again at the next use.
    NoSchemaVersion,
}

impl Uncacheable {
    /// What reading through for this reason is, for the telemetry.
    pub(crate) fn outcome(&self) -> ReadOutcome {
        match self {
            Uncacheable::Text(_) | Uncacheable::Catalog(_) => {
                ReadOutcome::ReadThrough(ReadThrough::Uncacheable)
            }
            Uncacheable::Lookup(_) => ReadOutcome::ReadThrough(ReadThrough::CatalogLookupFailed),
            // The store failed when the version was read.
            Uncacheable::NoSchemaVersion => ReadOutcome::Degraded,
        }
    }
}

/// Everything the reader knows about one statement text.
#[derive(Debug, Clone)]
pub(crate) struct LearnedStatement {
    /// The parameter types PostgreSQL inferred.
    pub(crate) param_types: Vec<Type>,
    /// The session state of the connection that learned it, recorded with
    /// every result (`None`: the answer could not be read).
    pub(crate) settings: Option<SessionSettings>,
    /// `Ok` with what it reads, or why the statement is read through.
    pub(crate) reads: Result<Reads, Uncacheable>,
    /// The schema model it was learned with (key derivation must use the
    /// same one).
    pub(crate) model: Arc<SchemaModel>,
    /// The schema version read before learning.
    pub(crate) schema_version: Option<u64>,
    /// The generation keys of everything read, built at the first use
    /// (without extra tables; those are added per call).
    pub(crate) generations: OnceLock<Arc<[Key]>>,
    /// When it was learned.
    pub(crate) learned_at: Instant,
}

/// How long a statement the catalog made uncacheable stays so without a
/// look at the catalog: it is read through, so no lookup ever sees the
/// schema version move (a table added to the publication, a function made
/// STABLE, a partition created after the model was read).
const CATALOG_VERDICT_LIFETIME: Duration = Duration::from_secs(30);

impl LearnedStatement {
    /// Whether it must be learned again before use.
    pub(crate) fn expired(&self) -> bool {
        matches!(self.reads, Err(Uncacheable::Catalog(_)))
            && self.learned_at.elapsed() > CATALOG_VERDICT_LIFETIME
    }
}

/// What a cacheable statement reads.
#[derive(Debug, Clone)]
pub(crate) struct Reads {
    /// Tables and objects, per the catalog.
    pub(crate) dependencies: Dependencies,
    /// The single-table `WHERE` filter, kept only when the catalog proved
    /// its name is [`Dependencies::sole_table`].
    pub(crate) filter: Option<Filter>,
}

/// The in-process cache of learned statements, keyed by namespace and
/// statement text.
#[derive(Debug)]
pub(crate) struct StatementCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Arc<LearnedStatement>>>,
}

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a statement: the same text may read other objects under
    /// another `search_path`, which is what namespaces separate.
    pub(crate) fn key(namespace: &str, sql: &str) -> String {
        format!("{}\0{namespace}\0{sql}", namespace.len())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<LearnedStatement>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).cloned()
    }

    fn put(&self, key: String, info: Arc<LearnedStatement>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            // Crude but bounded: statements are re-learned on their next use.
            entries.clear();
        }
        entries.insert(key, info);
    }

    /// Forgets every learned statement (the schema changed).
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Learns a statement (prepare, the session settings pipelined with it,
    /// and the closure query) under `model` and `schema_version`, keeping it
    /// unless the lookup failed. `NotASelect` for anything but a read.
    pub(crate) async fn learn(
        &self,
        client: &Client,
        model: Arc<SchemaModel>,
        schema_version: Option<u64>,
        publication: Option<&str>,
        key: String,
        sql: &str,
    ) -> Result<Arc<LearnedStatement>, ReaderError> {
        let shape = match sql::analyse(sql) {
            Ok(shape) => shape,
            Err(reason) => return Err(not_a_read(client, sql, reason).await),
        };
        let (statement, settings) = tokio::join!(client.prepare(sql), settings::read(client));
        let (statement, settings) = (statement?, settings?);
        let param_types = statement.params().to_vec();
        let reads = match (shape, schema_version) {
            (SqlShape::ReadThrough(why), _) => Err(Uncacheable::Text(why)),
            (SqlShape::Cacheable { .. }, None) => Err(Uncacheable::NoSchemaVersion),
            (SqlShape::Cacheable { filter, mentions }, Some(_)) => {
                // The filter names rows of its table only if that table is
                // the one relation the text mentions, once: a subquery over
                // the same table reads other rows of it.
                let single = mentions.relations.len() == 1;
                match closure::closure(client, &mentions, publication).await {
                    Err(error) => Err(Uncacheable::Lookup(error.to_string())),
                    Ok(found) => closure::decide(&model, &found)
                        .map_err(Uncacheable::Catalog)
                        .map(|dependencies| Reads {
                            filter: filter.filter(|_| single && dependencies.sole_table.is_some()),
                            dependencies,
                        }),
                }
            }
        };
        if let Err(reason) = &reads {
            tracing::debug!(sql, ?reason, "statement read through");
        }
        let keep = !matches!(
            reads,
            Err(Uncacheable::Lookup(_) | Uncacheable::NoSchemaVersion)
        );
        let info = Arc::new(LearnedStatement {
            param_types,
            settings,
            reads,
            model,
            schema_version,
            generations: OnceLock::new(),
            learned_at: Instant::now(),
        });
        if keep {
            self.put(key, info.clone());
        }
        Ok(info)
    }
}
