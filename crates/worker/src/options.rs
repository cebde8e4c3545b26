//! What a [`crate::Worker`] and [`crate::setup`] are told: typed values with
//! working defaults. The application maps its configuration file onto
//! these; an embedding program fills them in directly.

use std::time::Duration;

/// How the worker connects, streams and applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Connection string (URL or key=value); the role needs REPLICATION.
    pub postgres_url: String,
    /// The logical replication slot this worker streams from.
    pub slot: String,
    /// The publication the slot streams.
    pub publication: String,
    /// Keys one transaction may invalidate one by one; past it, the
    /// transaction coarsens to table generations.
    pub key_budget: usize,
    /// How often to send a status update to PostgreSQL.
    pub status_interval: Duration,
    /// Longest wait between retries (memcached or PostgreSQL down, slot busy).
    pub max_backoff: Duration,
    /// Groups of transactions whose invalidations may be applied
    /// concurrently; each is acknowledged only after it and all earlier
    /// ones are done.
    pub max_in_flight: usize,
    /// Fault injection for crash tests: abort the process right after a
    /// transaction's invalidations are applied and before it is
    /// acknowledged (a `kill -9` at the worst moment). Never set it in
    /// production.
    pub abort_after_apply: bool,
}

impl WorkerOptions {
    /// Default slot and publication name.
    pub const DEFAULT_SLOT: &'static str = "cm_invalidator";
    /// Default [`WorkerOptions::key_budget`].
    pub const DEFAULT_KEY_BUDGET: usize = 10_000;
    /// Default [`WorkerOptions::status_interval`].
    pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(1);
    /// Default [`WorkerOptions::max_backoff`].
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
    /// Default [`WorkerOptions::max_in_flight`].
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

    /// Defaults for a database: slot and publication `cm_invalidator`.
    pub fn new(postgres_url: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            postgres_url: postgres_url.into(),
            slot: Self::DEFAULT_SLOT.into(),
            publication: Self::DEFAULT_SLOT.into(),
            key_budget: Self::DEFAULT_KEY_BUDGET,
            status_interval: Self::DEFAULT_STATUS_INTERVAL,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            abort_after_apply: false,
        }
    }
}

/// What [`crate::setup`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOptions {
    /// Connection string; creating the slot needs REPLICATION, the DDL
    /// event triggers need superuser.
    pub postgres_url: String,
    /// The slot to create.
    pub slot: String,
    /// The publication to create.
    pub publication: String,
    /// Tables to publish (`schema.table`); empty: FOR ALL TABLES.
    pub publish_tables: Vec<String>,
}

impl SetupOptions {
    /// The slot and publication a worker with `options` streams, FOR ALL TABLES.
    pub fn for_worker(options: &WorkerOptions) -> SetupOptions {
        SetupOptions {
            postgres_url: options.postgres_url.clone(),
            slot: options.slot.clone(),
            publication: options.publication.clone(),
            publish_tables: Vec::new(),
        }
    }
}
