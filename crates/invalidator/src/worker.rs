//! `run`: the at-least-once loop.
//!
//! Per session: check the configuration against the server before the
//! cache is touched (wal_level, role, publication, a foreign slot: fatal),
//! make sure the slot exists, stream from `0/0` with nothing confirmable,
//! and, once the slot is held, decide whether it is the one the last run
//! left ([`crate::slot_identity`]: a new or re-created slot, another system,
//! timeline or slot bumps the epoch), persist the confirm bound and let the
//! ack gate confirm up to it ([`crate::ack_bound`] keeps it ahead). Per transaction: collect
//! invalidations from every change, apply them to the cache until that
//! succeeds, and only then acknowledge the Commit's `end_lsn`. Transactions
//! are applied one after another, so the acknowledged position is always a
//! prefix of finished work.
//!
//! Faults: a cache error is retried with backoff forever (the stream task
//! keeps answering keepalives; nothing is acknowledged); a lost connection
//! or PostgreSQL restart reconnects from `0/0`; a busy slot (another worker
//! holds it) is waited for. A stop request abandons the current transaction
//! unacknowledged, sends CopyDone and returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cm_keys::{Heartbeat, KeySpace, SchemaConfig, WorkerState};
use cm_pgoutput::{LogicalMessage, Lsn, Message, PgTimestamp};
use cm_replication::preflight::{check_prerequisites, slot_info, SlotInfo};
use cm_replication::{
    ReplicationConfig, ReplicationConnection, ReplicationError, ReplicationStream, SlotName,
    StartOptions, SystemIdentity,
};
use cm_store::{CacheStore, StoreError};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use crate::ack_bound::BoundKeeper;
use crate::apply::{apply_once, Applied, Backoff};
use crate::catalog::{CatalogReadError, CatalogReader};
use crate::changes::{ChangeError, ChangeMapper};
use crate::config::InvalidatorConfig;
use crate::ddl::DDL_MESSAGE_PREFIX;
use crate::heartbeat::{heartbeat_for, message_prefix};
use crate::metrics::Metrics;
use crate::pipeline::{ApplyFuture, Pipeline};
use crate::slot_identity::{flush_reason, read_state, starting_bound, write_state};
use crate::txn::{CommitGroup, TxnInvalidations};

/// Most transactions applied as one [`CommitGroup`].
const MAX_GROUP: usize = 64;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Replication failed (connection, server, slot state).
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// SQL on the ordinary connection failed.
    #[error("SQL: {}", cm_keys::describe_pg_error(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// The stream broke its own rules.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// The cache failed where no retry makes sense (a bad key).
    #[error("cache: {0}")]
    Store(#[from] StoreError),
    /// An acknowledgement was refused.
    #[error(transparent)]
    Ack(#[from] cm_replication::AckError),
    /// The catalog could not be read, or the mapping no longer fits it.
    #[error(transparent)]
    Catalog(#[from] CatalogReadError),
}

impl WorkerError {
    /// Errors an operator must fix; retrying cannot help. `run` exits with
    /// them, before touching the cache when they show at a session start.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WorkerError::Replication(
                ReplicationError::SlotTwoPhase { .. }
                    | ReplicationError::SlotMismatch { .. }
                    | ReplicationError::PublicationMissing { .. }
                    | ReplicationError::WalLevelNotLogical { .. }
                    | ReplicationError::NotReplicationRole { .. }
                    | ReplicationError::Config(_)
                    | ReplicationError::Auth(_)
            )
        ) || matches!(self, WorkerError::Catalog(error) if error.is_fatal())
    }

    /// PostgreSQL ended the session in an orderly way (shutdown, restart).
    fn is_ended_by_server(&self) -> bool {
        matches!(self, WorkerError::Replication(e) if e.is_ended_by_server())
    }
}

/// Everything a running worker holds.
pub struct Worker {
    config: InvalidatorConfig,
    space: KeySpace,
    store: Arc<dyn CacheStore>,
    /// The `[schema]` mapping the model is rebuilt with after DDL.
    mapping: SchemaConfig,
    metrics: Arc<Metrics>,
    crash_after_apply: bool,
}

/// Fault injection for crash tests: when this environment variable is set,
/// the worker aborts the process right after applying a transaction's
/// invalidations and before acknowledging it (a `kill -9` at the worst time).
pub const CRASH_AFTER_APPLY_ENV: &str = "CM_FAULT_CRASH_AFTER_APPLY";

enum SessionEnd {
    Stopped,
}

impl Worker {
    /// A worker over a connected store. It reads the catalog (and builds
    /// the schema model with `mapping`) when it starts streaming, and again
    /// after every DDL and for relations the model does not know.
    pub fn new(
        config: InvalidatorConfig,
        space: KeySpace,
        store: Arc<dyn CacheStore>,
        mapping: SchemaConfig,
        metrics: Arc<Metrics>,
    ) -> Worker {
        Worker {
            config,
            space,
            store,
            mapping,
            metrics,
            crash_after_apply: std::env::var_os(CRASH_AFTER_APPLY_ENV).is_some(),
        }
    }

    /// Runs sessions until `stop` turns true; returns an error only for
    /// problems an operator must fix.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let max = Duration::from_millis(self.config.worker.max_backoff_ms);
        let mut backoff = Backoff::new(max);
        let mut mapper = ChangeMapper::new(self.space.clone());
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            match self.session(&mut mapper, &mut stop).await {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Err(error) if error.is_fatal() => return Err(error),
                Err(error) => {
                    if matches!(&error, WorkerError::Replication(e) if e.is_slot_busy()) {
                        tracing::info!(%error, "slot held by another worker; waiting");
                    } else if error.is_ended_by_server() {
                        tracing::warn!(%error, "PostgreSQL ended the replication session; reconnecting from 0/0");
                    } else {
                        tracing::warn!(%error, "replication session ended; reconnecting from 0/0");
                    }
                    if started.elapsed() > max {
                        backoff = Backoff::new(max);
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        mapper: &mut ChangeMapper,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, WorkerError> {
        let replication = ReplicationConfig::parse(&self.config.postgres.url)?;
        let slot = SlotName::new(&self.config.postgres.slot)?;
        let publications = vec![self.config.postgres.publication.clone()];
        let client = connect_sql(&self.config.postgres.url).await?;
        // A misconfiguration is fatal and must leave the cache as it is.
        let found = check_prerequisites(&client, &slot, &publications).await?;
        let mut conn = ReplicationConnection::connect(&replication).await?;
        let system = conn.identify_system().await?;
        let created = self.ensure_slot(&mut conn, &slot, found).await?;
        let mut options = StartOptions::new(slot.clone(), publications);
        options.status_interval = Duration::from_millis(self.config.worker.status_interval_ms);
        // Nothing is confirmed before the bound covering it is persisted;
        // a flush of 0/0 is ignored by PostgreSQL.
        options.ack_ceiling = Some(Lsn::INVALID);
        let mut stream = conn.start_replication(options).await?;
        // From here the walsender holds the slot: no one else moves it.
        let state = self.check_epoch(&client, &slot, &system, created).await?;
        let acker = stream.acker();
        acker.raise_ceiling(Lsn(state.confirm_bound.unwrap_or_default()));
        mapper.reset_session();
        tracing::info!(system_id = %system.system_id, timeline = system.timeline, "streaming");
        let keeper = BoundKeeper::new(
            Arc::clone(&self.store),
            self.space.worker_state(),
            state,
            Arc::clone(&self.metrics),
            Duration::from_millis(self.config.worker.max_backoff_ms),
        );
        let result = tokio::select! {
            result = self.stream(mapper, &mut stream, stop) => result,
            kept = keeper.run(acker) => match kept {
                Ok(never) => match never {},
                Err(error) => Err(error),
            },
        };
        match result {
            Ok(()) => {
                stream.stop().await?;
                Ok(SessionEnd::Stopped)
            }
            Err(error) => Err(error),
        }
    }

    /// Creates a missing slot, re-creates a lost one; returns whether it
    /// created one (the epoch decision then flushes the cache: the new slot
    /// never streams what was written before it).
    async fn ensure_slot(
        &self,
        conn: &mut ReplicationConnection,
        slot: &SlotName,
        found: Option<SlotInfo>,
    ) -> Result<bool, WorkerError> {
        let lost = found.as_ref().and_then(|i| i.invalidation());
        if let Some(reason) = &lost {
            tracing::error!(%slot, %reason, "slot invalidated: dropping and re-creating it; the whole cache is flushed");
            conn.drop_slot(slot, false).await?;
        }
        if found.is_some() && lost.is_none() {
            return Ok(false);
        }
        let created = conn.create_slot(slot).await?;
        tracing::warn!(%slot, consistent_point = %created.consistent_point, "created replication slot");
        Ok(true)
    }

    /// Decides whether the slot is the one the last session left (see
    /// [`crate::slot_identity`]), bumps the epoch when it is not, and
    /// persists the worker state with its starting confirm bound. Runs
    /// while this session holds the slot and before anything is confirmed.
    async fn check_epoch(
        &self,
        client: &Client,
        slot: &SlotName,
        system: &SystemIdentity,
        slot_created: bool,
    ) -> Result<WorkerState, WorkerError> {
        let key = self.space.worker_state();
        let store = self.store.as_ref();
        let previous = self
            .retry("read worker state", || read_state(store, &key))
            .await?;
        let confirmed = slot_info(client, slot)
            .await?
            .and_then(|info| info.confirmed_flush_lsn);
        let mut current = WorkerState {
            system_id: system.system_id.clone(),
            timeline: system.timeline,
            slot: slot.to_string(),
            confirm_bound: None,
        };
        if let Some(reason) = flush_reason(previous.as_ref(), &current, slot_created, confirmed) {
            self.bump_epoch(&reason.to_string()).await?;
        }
        let bound = starting_bound(previous.as_ref(), &current, confirmed, system.xlogpos);
        current.confirm_bound = Some(bound.0);
        self.retry("write worker state", || write_state(store, &key, &current))
            .await?;
        Ok(current)
    }

    async fn bump_epoch(&self, reason: &str) -> Result<(), WorkerError> {
        let key = self.space.epoch();
        self.retry("bump epoch", || async {
            self.store.bump_generation(key.as_str()).await
        })
        .await?;
        self.metrics.epoch_bumps.inc();
        tracing::warn!(reason, "epoch bumped: every cached result is invalid");
        Ok(())
    }

    /// Retries a cache operation until it succeeds; see [`retry_store`].
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, WorkerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let max_backoff = Duration::from_millis(self.config.worker.max_backoff_ms);
        retry_store(max_backoff, &self.metrics, what, op).await
    }

    /// Consumes the stream until stop (Ok) or an error.
    ///
    /// Transactions are pipelined: while earlier ones are still being
    /// applied, later ones are read and their invalidations start, up to
    /// `worker.max_in_flight` groups. Consecutive commits that arrive
    /// together (already buffered by the stream) form one [`CommitGroup`],
    /// applied with one set of cache round trips; a group starts as soon as
    /// the stream has nothing more buffered, so grouping never waits for
    /// the socket. Results come back in commit order, and each transaction
    /// is acknowledged only when it and all before it are done; a heartbeat
    /// is written only once everything received before it is.
    async fn stream(
        &self,
        mapper: &mut ChangeMapper,
        stream: &mut ReplicationStream,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let acker = stream.acker();
        let heartbeat_prefix = message_prefix(self.space.prefix());
        let mut catalog = CatalogReader::new(&self.config.postgres.url, self.mapping.clone());
        if mapper.needs_catalog() {
            self.refresh_catalog(mapper, &mut catalog, "worker start")
                .await?;
        }
        let mut txn: Option<(TxnInvalidations, PgTimestamp)> = None;
        let mut group = CommitGroup::default();
        let mut pipeline = Pipeline::default();
        loop {
            let can_read = pipeline.in_flight() < self.config.worker.max_in_flight;
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                done = pipeline.next_applied(), if pipeline.in_flight() > 0 => {
                    let (applied, done) = done?;
                    self.acknowledge(&acker, applied, &done)?;
                    for heartbeat in pipeline.heartbeats_now_due() {
                        self.complete_heartbeat(&acker, heartbeat).await?;
                    }
                }
                event = stream.next(), if can_read => {
                    let event = match event {
                        Some(event) => event?,
                        None => return Err(ReplicationError::Closed.into()),
                    };
                    match event.message {
                        LogicalMessage::Begin(begin) => {
                            txn = Some((TxnInvalidations::new(self.config.worker.key_budget), begin.commit_ts));
                        }
                        LogicalMessage::Relation(relation) => {
                            mapper.relation(relation, txn.as_mut().map(|(t, _)| t));
                        }
                        LogicalMessage::Commit(commit) => {
                            if let Some((invalidations, commit_ts)) = txn.take() {
                                let changes_schema = invalidations.changes_schema();
                                group.push(invalidations, commit.end_lsn, commit_ts);
                                if changes_schema {
                                    // Before any later change is mapped: they
                                    // must land on the new layout. Nothing of
                                    // this commit is acknowledged yet.
                                    self.refresh_catalog(mapper, &mut catalog, "DDL committed").await?;
                                }
                            }
                        }
                        LogicalMessage::Message(message)
                            if message.transactional() && message.prefix == DDL_MESSAGE_PREFIX =>
                        {
                            if let Some((invalidations, _)) = txn.as_mut() {
                                self.ddl(mapper, &message, invalidations);
                            }
                        }
                        LogicalMessage::Message(message) if !message.transactional() => {
                            // It comes after every commit received so far.
                            self.start_group(&mut pipeline, &mut group);
                            let heartbeat = (message.prefix == heartbeat_prefix)
                                .then(|| heartbeat_for(message.lsn.0, &message.content))
                                .flatten();
                            match heartbeat {
                                Some(heartbeat) if pipeline.in_flight() > 0 => {
                                    pipeline.push_heartbeat(heartbeat, message.lsn)
                                }
                                Some(heartbeat) => {
                                    self.complete_heartbeat(&acker, (heartbeat, message.lsn)).await?
                                }
                                None => {
                                    acker.message_done(message.lsn)?;
                                }
                            }
                        }
                        message @ (LogicalMessage::Insert(_)
                        | LogicalMessage::Update(_)
                        | LogicalMessage::Delete(_)
                        | LogicalMessage::Truncate(_)) => {
                            if mapper.wants_catalog_for(&message) {
                                self.refresh_catalog(mapper, &mut catalog, "change of a relation the model does not know").await?;
                            }
                            if let Some((invalidations, _)) = txn.as_mut() {
                                mapper.change(&message, invalidations)?;
                            }
                        }
                        _ => {}
                    }
                    // A group also closes at the key budget, so the keys
                    // held stay bounded by groups in flight times about
                    // twice the budget.
                    if !stream.has_buffered()
                        || group.len() >= MAX_GROUP
                        || group.keys() >= self.config.worker.key_budget
                    {
                        self.start_group(&mut pipeline, &mut group);
                    }
                }
            }
        }
    }

    /// Re-reads the catalog into `mapper`. On failure the mapper is left
    /// stale, so the next session reads it before mapping anything (the
    /// commit that asked for it is not acknowledged: it is replayed).
    async fn refresh_catalog(
        &self,
        mapper: &mut ChangeMapper,
        reader: &mut CatalogReader,
        why: &str,
    ) -> Result<(), WorkerError> {
        mapper.mark_catalog_stale();
        let catalog = reader.read().await?;
        tracing::info!(
            why,
            tables = catalog.model.tables().count(),
            lsn = %catalog.lsn,
            "catalog read"
        );
        mapper.set_catalog(catalog);
        Ok(())
    }

    /// Adds a DDL message's invalidations to its transaction. An epoch bump
    /// it calls for is one of the transaction's generation bumps, applied
    /// before the commit is acknowledged.
    fn ddl(&self, mapper: &ChangeMapper, message: &Message, txn: &mut TxnInvalidations) {
        let plan = mapper.ddl(message.lsn, &message.content, txn);
        let names: Vec<String> = plan.generations.iter().map(|n| n.to_string()).collect();
        if plan.malformed {
            tracing::error!(
                lsn = %message.lsn,
                reasons = ?plan.epoch_reasons,
                "unreadable DDL message: the whole cache is flushed (epoch bump)"
            );
        } else if !plan.epoch_reasons.is_empty() {
            tracing::warn!(
                lsn = %message.lsn,
                reasons = ?plan.epoch_reasons,
                generations = ?names,
                "DDL cannot be scoped: the whole cache is flushed (epoch bump)"
            );
        } else {
            tracing::info!(lsn = %message.lsn, generations = ?names, "DDL: generations and schema version bumped");
        }
        if !plan.epoch_reasons.is_empty() {
            self.metrics.epoch_bumps.inc();
        }
    }

    /// Starts applying the commits gathered so far, if any.
    fn start_group(&self, pipeline: &mut Pipeline, group: &mut CommitGroup) {
        if !group.is_empty() {
            pipeline.push_group(self.applying(std::mem::take(group)));
        }
    }

    /// Acknowledges every transaction of an applied group, in commit order.
    fn acknowledge(
        &self,
        acker: &cm_replication::Acker,
        applied: Applied,
        group: &CommitGroup,
    ) -> Result<(), WorkerError> {
        if self.crash_after_apply && !group.invalidations().is_empty() {
            tracing::error!("{CRASH_AFTER_APPLY_ENV} is set: aborting before the ack");
            std::process::abort();
        }
        // The group's cache work is counted once, with its first commit.
        let mut applied = Some(applied);
        for commit in group.commits() {
            acker.commit_done(commit.end_lsn)?;
            self.metrics
                .record_commit(commit, applied.take().unwrap_or_default());
        }
        Ok(())
    }

    /// A future that applies `group` (retrying cache errors) and hands it back.
    fn applying(&self, group: CommitGroup) -> ApplyFuture {
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        let max_backoff = Duration::from_millis(self.config.worker.max_backoff_ms);
        Box::pin(async move {
            let txn = group.invalidations();
            if txn.is_empty() {
                return Ok((Applied::default(), group));
            }
            let applied = retry_store(max_backoff, &metrics, "apply invalidations", || {
                apply_once(store.as_ref(), txn)
            })
            .await?;
            Ok((applied, group))
        })
    }

    /// Writes a heartbeat whose earlier transactions are all applied.
    async fn complete_heartbeat(
        &self,
        acker: &cm_replication::Acker,
        (heartbeat, lsn): (Heartbeat, cm_pgoutput::Lsn),
    ) -> Result<(), WorkerError> {
        let key = self.space.heartbeat();
        let value = heartbeat.encode();
        self.retry("write heartbeat", || async {
            self.store
                .write_heartbeat(key.as_str(), &value, Duration::from_secs(24 * 3600))
                .await
        })
        .await?;
        self.metrics.record_heartbeat(&heartbeat);
        acker.message_done(lsn)?;
        Ok(())
    }
}

/// Retries a cache operation with backoff until it succeeds. Errors that no
/// retry can fix (invalid keys, oversized values) are returned; everything
/// else (down, slow, contended) is counted, logged and retried, while the
/// stream's own task keeps answering keepalives and nothing is acknowledged.
pub(crate) async fn retry_store<T, F, Fut>(
    max_backoff: Duration,
    metrics: &Metrics,
    what: &str,
    mut op: F,
) -> Result<T, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(max_backoff);
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error @ (StoreError::InvalidKey { .. } | StoreError::ValueTooLarge { .. })) => {
                return Err(error.into())
            }
            Err(error) => {
                metrics.cache_errors.inc();
                tracing::warn!(%error, what, "cache operation failed; retrying, nothing is acknowledged");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// An ordinary SQL connection whose connection task runs in the background
/// (its end is logged at debug level; the next query reports the error).
pub async fn connect_sql(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %cm_keys::describe_pg_error(&error), "sql connection closed");
        }
    });
    Ok(client)
}
