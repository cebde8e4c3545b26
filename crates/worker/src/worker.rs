//! The at-least-once loop.
//!
//! Per session: check the configuration against the server before the
//! cache is touched (wal_level, role, publication, a foreign slot: fatal),
//! make sure the slot exists, stream from `0/0` with nothing confirmable,
//! and, once the slot is held, decide whether it is the one the last run
//! left ([`crate::slot_identity`]: a new or re-created slot, another system,
//! timeline or slot bumps the epoch), persist the confirm bound and let the
//! ack gate confirm up to it ([`crate::ack_bound`] keeps it ahead). Per transaction: collect
//! invalidations from every change, apply them to the cache until that
//! succeeds, and only then acknowledge the Commit's `end_lsn`. Groups of
//! transactions are applied concurrently ([`crate::pipeline`]), but their
//! results are taken in commit order, so the acknowledged position is always
//! a prefix of finished work.
//!
//! Faults: a cache error is retried with backoff forever (the stream task
//! keeps answering keepalives; nothing is acknowledged); a lost connection
//! or PostgreSQL restart reconnects from `0/0`; a busy slot (another worker
//! holds it) is waited for. A stop request abandons the current transaction
//! unacknowledged, sends CopyDone and returns; a session that cannot end by
//! itself within [`STOP_GRACE`] (a retry against a cache that is down, a
//! server that does not answer) is dropped, which confirms nothing more.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cm_keys::{Heartbeat, KeySpace, SchemaConfig, WorkerState};
use cm_pgoutput::{LogicalMessage, Lsn, Message, PgTimestamp, Xid};
use cm_replication::preflight::{check_prerequisites, slot_info, SlotInfo};
use cm_replication::{
    ReplicationConfig, ReplicationConnection, ReplicationError, ReplicationStream, SlotName,
    StartOptions, SystemIdentity,
};
use cm_store::{read_heartbeat, CacheStore, StoreError};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::ack_bound::BoundKeeper;
use crate::apply::{apply_once, Applied};
use crate::catalog::CatalogReader;
use crate::changes::ChangeMapper;
use crate::ddl::DDL_MESSAGE_PREFIX;
use crate::error::WorkerError;
use crate::heartbeat::{heartbeat_for, heartbeat_message_prefix};
use crate::observer::{Observer, Role};
use crate::options::WorkerOptions;
use crate::pipeline::{ApplyFuture, Pipeline};
use crate::progress::{starting_record, write_record, DispatchGate, Progress};
use crate::retry::{retry_store, Backoff};
use crate::slot_identity::{flush_reason, read_state, starting_bound, write_state};
use crate::sql::connect_sql;
use crate::txn::{CommitArrival, CommitGroup, Stages, TxnInvalidations};

/// Most transactions applied as one [`CommitGroup`].
const MAX_GROUP: usize = 64;

/// How long a stopping session may take to end by itself (finish sending
/// CopyDone) before it is dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// The transaction being decoded.
struct OpenTxn {
    invalidations: TxnInvalidations,
    commit_ts: PgTimestamp,
    xid: Xid,
}

/// Everything a running worker holds.
pub struct Worker {
    options: WorkerOptions,
    space: KeySpace,
    store: Arc<dyn CacheStore>,
    /// The `[schema]` mapping the model is rebuilt with after DDL.
    mapping: SchemaConfig,
    observer: Arc<dyn Observer>,
}

impl Worker {
    /// A worker over a connected store. It reads the catalog (and builds
    /// the schema model with `mapping`) when it starts streaming, and again
    /// after every DDL and for relations the model does not know.
    pub fn new(
        options: WorkerOptions,
        space: KeySpace,
        store: Arc<dyn CacheStore>,
        mapping: SchemaConfig,
        observer: Arc<dyn Observer>,
    ) -> Worker {
        Worker {
            options,
            space,
            store,
            mapping,
            observer,
        }
    }

    /// Runs sessions until `stop` turns true (or its sender is dropped);
    /// returns an error only for problems an operator must fix. It returns
    /// at most [`STOP_GRACE`] after the stop request, whatever the session
    /// was waiting for; nothing is confirmed that was not applied.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let max = self.options.max_backoff;
        let mut backoff = Backoff::new(max);
        let mut mapper = ChangeMapper::new(self.space.clone());
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let mut session_stop = stop.clone();
            let ended = tokio::select! {
                ended = self.session(&mut mapper, &mut session_stop) => ended,
                () = grace_after_stop(stop.clone()) => {
                    tracing::warn!("the session did not end within {STOP_GRACE:?} of the stop request; abandoning it unacknowledged");
                    return Ok(());
                }
            };
            self.observer.role_changed(Role::Standby);
            match ended {
                Ok(()) => return Ok(()),
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
    ) -> Result<(), WorkerError> {
        let replication = ReplicationConfig::parse(&self.options.postgres_url)?;
        let slot = SlotName::new(&self.options.slot)?;
        let publications = vec![self.options.publication.clone()];
        let client = connect_sql(&self.options.postgres_url).await?;
        // A misconfiguration is fatal and must leave the cache as it is.
        let found = check_prerequisites(&client, &slot, &publications).await?;
        let mut conn = ReplicationConnection::connect(&replication).await?;
        let system = conn.identify_system().await?;
        let created = self.ensure_slot(&mut conn, &slot, found).await?;
        let mut options = StartOptions::new(slot.clone(), publications);
        options.status_interval = self.options.status_interval;
        // Nothing is confirmed before the bound covering it is persisted;
        // a flush of 0/0 is ignored by PostgreSQL.
        options.ack_ceiling = Some(Lsn::INVALID);
        let mut stream = conn.start_replication(options).await?;
        // From here the walsender holds the slot: no one else moves it.
        let (state, record) = self.check_epoch(&client, &slot, &system, created).await?;
        let acker = stream.acker();
        let (progress, writing) = Progress::start(
            Arc::clone(&self.store),
            self.space.heartbeat().as_str().to_owned(),
            record,
            acker.applied(),
            Arc::clone(&self.observer),
            self.options.max_backoff,
        );
        acker.raise_ceiling(Lsn(state.confirm_bound.unwrap_or_default()));
        mapper.reset_session();
        tracing::info!(system_id = %system.system_id, timeline = system.timeline, "streaming");
        self.observer.role_changed(Role::Leader);
        let keeper = BoundKeeper::new(
            Arc::clone(&self.store),
            self.space.worker_state(),
            state,
            Arc::clone(&self.observer),
            self.options.max_backoff,
        );
        let result = tokio::select! {
            result = self.stream(mapper, &mut stream, &progress, stop) => result,
            kept = keeper.run(acker) => match kept {
                Ok(never) => match never {},
                Err(error) => Err(error),
            },
            error = writing => Err(error),
        };
        result?;
        stream.stop().await?;
        Ok(())
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
    /// persists the worker state with its starting confirm bound. Before
    /// anything changes the cache, writes the session's first progress
    /// record ([`crate::progress`]), which it returns with the state. Runs
    /// while this session holds the slot and before anything is confirmed.
    async fn check_epoch(
        &self,
        client: &Client,
        slot: &SlotName,
        system: &SystemIdentity,
        slot_created: bool,
    ) -> Result<(WorkerState, Heartbeat), WorkerError> {
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
        let record = self
            .starting_progress(previous.as_ref(), &current, confirmed, system)
            .await?;
        if let Some(reason) = flush_reason(previous.as_ref(), &current, slot_created, confirmed) {
            self.bump_epoch(&reason.to_string()).await?;
        }
        let bound = starting_bound(previous.as_ref(), &current, confirmed, system.xlogpos);
        current.confirm_bound = Some(bound.0);
        self.retry("write worker state", || write_state(store, &key, &current))
            .await?;
        Ok((current, record))
    }

    /// Writes and returns the session's first progress record: the last
    /// session's positions when they are of the same system, raised to the
    /// slot's confirmed position and the server's current one.
    async fn starting_progress(
        &self,
        previous: Option<&WorkerState>,
        current: &WorkerState,
        confirmed: Option<Lsn>,
        system: &SystemIdentity,
    ) -> Result<Heartbeat, WorkerError> {
        let store = self.store.as_ref();
        let old = self
            .retry("read progress record", || {
                read_heartbeat(store, &self.space)
            })
            .await?;
        let comparable = previous.is_some_and(|p| p.system_id == current.system_id);
        let record = starting_record(old, comparable, confirmed, system.xlogpos);
        let key = self.space.heartbeat();
        write_record(
            store,
            key.as_str(),
            &record,
            self.observer.as_ref(),
            self.options.max_backoff,
        )
        .await?;
        Ok(record)
    }

    async fn bump_epoch(&self, reason: &str) -> Result<(), WorkerError> {
        let key = self.space.epoch();
        self.retry("bump epoch", || async {
            self.store.bump_generation(key.as_str()).await
        })
        .await?;
        self.observer.epoch_bumped();
        tracing::warn!(reason, "epoch bumped: every cached result is invalid");
        Ok(())
    }

    /// Retries a cache operation until it succeeds; see [`retry_store`].
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, WorkerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        retry_store(self.options.max_backoff, self.observer.as_ref(), what, op).await
    }

    /// Consumes the stream until stop (Ok) or an error.
    ///
    /// Transactions are pipelined: while earlier ones are still being
    /// applied, later ones are read and their invalidations start, up to
    /// [`WorkerOptions::max_in_flight`] groups. Consecutive commits that arrive
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
        progress: &Progress,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let acker = stream.acker();
        let heartbeat_prefix = heartbeat_message_prefix(self.space.prefix());
        let mut catalog = CatalogReader::new(&self.options.postgres_url, self.mapping.clone());
        if mapper.needs_catalog() {
            self.refresh_catalog(mapper, &mut catalog, None, "worker start")
                .await?;
        }
        let mut txn: Option<OpenTxn> = None;
        let mut group = CommitGroup::default();
        let mut pipeline = Pipeline::default();
        loop {
            let can_read = pipeline.in_flight() < self.options.max_in_flight;
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                done = pipeline.next_applied(), if pipeline.in_flight() > 0 => {
                    let (applied, done) = done?;
                    self.acknowledge(&acker, applied, &done)?;
                    for heartbeat in pipeline.heartbeats_now_due() {
                        complete_heartbeat(&acker, progress, heartbeat).await?;
                    }
                }
                event = stream.next(), if can_read => {
                    let event = match event {
                        Some(event) => event?,
                        None => return Err(ReplicationError::Closed.into()),
                    };
                    match event.message {
                        LogicalMessage::Begin(begin) => {
                            txn = Some(OpenTxn {
                                invalidations: TxnInvalidations::new(self.options.key_budget),
                                commit_ts: begin.commit_ts,
                                xid: begin.xid,
                            });
                        }
                        LogicalMessage::Relation(relation) => {
                            mapper.relation(relation, txn.as_mut().map(|t| &mut t.invalidations));
                        }
                        LogicalMessage::Commit(commit) => {
                            if let Some(OpenTxn { invalidations, commit_ts, xid }) = txn.take() {
                                let changes_schema = invalidations.changes_schema();
                                let arrival = CommitArrival {
                                    sent: event.send_time,
                                    read_at: event.read_at,
                                    received_at: Instant::now(),
                                };
                                group.push(invalidations, commit.end_lsn, commit_ts, arrival);
                                if changes_schema {
                                    // Before any later change is mapped: they
                                    // must land on the new layout. Nothing of
                                    // this commit is acknowledged yet.
                                    self.refresh_catalog(mapper, &mut catalog, Some(xid), "DDL committed").await?;
                                }
                            }
                        }
                        LogicalMessage::Message(message)
                            if message.transactional() && message.prefix == DDL_MESSAGE_PREFIX =>
                        {
                            if let Some(OpenTxn { invalidations, .. }) = txn.as_mut() {
                                self.ddl(mapper, &message, invalidations);
                            }
                        }
                        LogicalMessage::Message(message) if !message.transactional() => {
                            // It comes after every commit received so far.
                            self.start_group(&mut pipeline, &mut group, progress);
                            let heartbeat = (message.prefix == heartbeat_prefix)
                                .then(|| heartbeat_for(message.lsn.0, &message.content))
                                .flatten();
                            match heartbeat {
                                Some(heartbeat) if pipeline.in_flight() > 0 => {
                                    pipeline.push_heartbeat(heartbeat, message.lsn)
                                }
                                Some(heartbeat) => {
                                    complete_heartbeat(&acker, progress, (heartbeat, message.lsn)).await?
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
                                self.refresh_catalog(mapper, &mut catalog, None, "change of a relation the model does not know").await?;
                            }
                            if let Some(OpenTxn { invalidations, .. }) = txn.as_mut() {
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
                        || group.keys() >= self.options.key_budget
                    {
                        self.start_group(&mut pipeline, &mut group, progress);
                    }
                }
            }
        }
    }

    /// Re-reads the catalog into `mapper`, in a snapshot that sees
    /// `committed` when given. On failure the mapper is left stale, so the
    /// next session reads it before mapping anything (the commit that asked
    /// for it is not acknowledged: it is replayed).
    async fn refresh_catalog(
        &self,
        mapper: &mut ChangeMapper,
        reader: &mut CatalogReader,
        committed: Option<Xid>,
        why: &str,
    ) -> Result<(), WorkerError> {
        mapper.mark_catalog_stale();
        let catalog = reader.read(committed).await?;
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
        let effects = mapper.ddl(message.lsn, &message.content, txn);
        let names: Vec<String> = effects.generations.iter().map(|n| n.to_string()).collect();
        if effects.malformed {
            tracing::error!(
                lsn = %message.lsn,
                reasons = ?effects.epoch_reasons,
                "unreadable DDL message: the whole cache is flushed (epoch bump)"
            );
        } else if !effects.epoch_reasons.is_empty() {
            tracing::warn!(
                lsn = %message.lsn,
                reasons = ?effects.epoch_reasons,
                generations = ?names,
                "DDL cannot be scoped: the whole cache is flushed (epoch bump)"
            );
        } else {
            tracing::info!(lsn = %message.lsn, generations = ?names, "DDL: generations and schema version bumped");
        }
        if !effects.epoch_reasons.is_empty() {
            self.observer.epoch_bumped();
        }
    }

    /// Starts applying the commits gathered so far, if any.
    fn start_group(&self, pipeline: &mut Pipeline, group: &mut CommitGroup, progress: &Progress) {
        if !group.is_empty() {
            let mut group = std::mem::take(group);
            group.mark_started();
            // A group with nothing to change in the cache dispatches nothing.
            let gate = group
                .last_end_lsn()
                .filter(|_| !group.invalidations().is_empty())
                .map(|end| progress.dispatch(end));
            pipeline.push_group(self.applying(group, gate));
        }
    }

    /// Acknowledges every transaction of an applied group, in commit order.
    fn acknowledge(
        &self,
        acker: &cm_replication::Acker,
        applied: Applied,
        group: &CommitGroup,
    ) -> Result<(), WorkerError> {
        if self.options.abort_after_apply && !group.invalidations().is_empty() {
            tracing::error!("abort_after_apply is set: aborting before the ack");
            std::process::abort();
        }
        // The group's cache work is counted once, with its first commit.
        let mut applied = Some(applied);
        let (acked_at, acked_wall) = (Instant::now(), SystemTime::now());
        for commit in group.commits() {
            acker.commit_done(commit.end_lsn)?;
            self.observer
                .commit_applied(commit, applied.take().unwrap_or_default());
            let stages = Stages::of(commit, group, acked_at, acked_wall);
            self.observer.commit_stages(commit, &stages);
        }
        Ok(())
    }

    /// A future that applies `group` (retrying cache errors) and hands it
    /// back; nothing changes in the cache before `gate` opens.
    fn applying(&self, mut group: CommitGroup, gate: Option<DispatchGate>) -> ApplyFuture {
        let store = Arc::clone(&self.store);
        let observer = Arc::clone(&self.observer);
        let space = self.space.clone();
        let max_backoff = self.options.max_backoff;
        Box::pin(async move {
            let Some(gate) = gate else {
                group.mark_applied();
                return Ok((Applied::default(), group));
            };
            let txn = group.invalidations();
            let applied = retry_store(
                max_backoff,
                observer.as_ref(),
                "apply invalidations",
                || apply_once(store.as_ref(), &space, txn, &gate),
            )
            .await?;
            if applied.lost_servers > 0 {
                observer.epoch_bumped();
            }
            group.mark_applied();
            Ok((applied, group))
        })
    }
}

/// Records a heartbeat whose earlier transactions are all applied, and
/// acknowledges its message once the record carrying it is written.
async fn complete_heartbeat(
    acker: &cm_replication::Acker,
    progress: &Progress,
    (heartbeat, lsn): (Heartbeat, Lsn),
) -> Result<(), WorkerError> {
    progress.heartbeat(&heartbeat).await;
    acker.message_done(lsn)?;
    Ok(())
}

/// Completes [`STOP_GRACE`] after `stop` turns true (or its sender is
/// dropped); pending until then.
async fn grace_after_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    tokio::time::sleep(STOP_GRACE).await;
}
