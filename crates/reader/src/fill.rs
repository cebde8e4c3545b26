//! The lookup-or-fill protocol shared by every cached read: one multi-get
//! on a hit; on a miss, snapshot, lease, register, query, register, store
//! only if the lease holds. Any cache failure degrades to a plain database
//! read, counted, and never fails the caller. Every read through here ends
//! with its outcome in [`ReadTrace::finish`].

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cm_keys::{Heartbeat, Key};
use cm_store::{Item, Lease, LeaseOutcome, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::QueryCache;
use crate::entry::{self, Snapshot, SnapshotRef, Source};
use crate::telemetry::{ReadOutcome, ReadThrough, ReadTrace};
use crate::token::WriteToken;

/// What to look up for one cached value. What only a miss needs is built
/// by `miss`, so a hit computes nothing it does not read.
pub(crate) struct CachePlan<'a> {
    /// The `q:` key.
    pub(crate) result: Key,
    /// Generation keys to snapshot and check.
    pub(crate) generations: Arc<[Key]>,
    /// Whether the value depends on the invalidator keeping up (everything
    /// but pure TTL caching).
    pub(crate) check_heartbeat: bool,
    /// The value's TTL.
    pub(crate) ttl: Duration,
    /// For a statement: the schema version it was learned under, checked on
    /// every lookup (a moved version drops the learned statements and reads
    /// through); `None` for values computed by the caller.
    pub(crate) schema_version: Option<u64>,
    /// Builds the flush lists to join and the source, on a miss.
    pub(crate) miss: Box<dyn Fn() -> MissParts + Send + Sync + 'a>,
    /// Read-your-writes: the token to wait for, and for how long.
    pub(crate) token: Option<(WriteToken, Duration)>,
}

/// The parts of a cache plan only a miss uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct MissParts {
    /// Flush lists to join before the value is computed.
    pub(crate) pre_query: Vec<Key>,
    /// The statement the value comes from, recorded in the entry and, with
    /// [`crate::ReaderOptions::inspection_registry`], registered for the
    /// checker; `None` for values computed by the caller.
    pub(crate) source: Option<Source>,
}

/// What the fetch closure returns: the value and the flush lists to join
/// after computing it.
pub(crate) struct Fetched<P> {
    pub(crate) payload: P,
    pub(crate) post_query: Vec<Key>,
    /// False when the value must not be stored (its registrations are
    /// incomplete).
    pub(crate) cacheable: bool,
    /// The replay position of the hot standby the value was read from,
    /// taken before its query; `None` on a primary.
    pub(crate) replayed: Option<u64>,
}

/// How one cached read was served. The telemetry (the `cached_read` span
/// and the `cm_reader_*` metrics, [`crate::telemetry`]) labels the same
/// outcome in more detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// From the cache; no database connection was used.
    Hit,
    /// No valid result was cached: read from the database to fill it (the
    /// fill may still not store, e.g. when an invalidation won the race).
    Miss,
    /// Read from the database without the cache: `no_cache`, a statement
    /// that cannot be cached, a stale or missing invalidator heartbeat,
    /// another caller filling the same result, or the cache failing.
    Bypass,
}

impl Outcome {
    /// `"hit"`, `"miss"` or `"bypass"`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How often a read with a write token looks at the progress record while
/// it waits for the token to be applied.
const TOKEN_POLL: Duration = Duration::from_millis(1);

/// What the first multi-get found.
enum Lookup<P> {
    Hit(P),
    /// No valid value; the generations read are the fill's snapshot (some
    /// may be missing and need creating).
    Miss {
        epoch: Option<u64>,
        generations: Vec<Option<u64>>,
        /// A value was there but is stale or undecodable.
        refused: bool,
        /// The read's write token is not applied yet: a value someone else
        /// fills meanwhile may predate its commit.
        token_pending: bool,
    },
    /// A valid value, but the read's write token is not applied yet: the
    /// value may predate its commit.
    TokenPending,
    /// Do not use the cache for this read; why.
    Bypass(ReadOutcome),
    /// The schema changed since the statement was learned: re-learn it,
    /// and read through this time.
    Relearn,
}

/// A read's result and what the cache did for it.
type Served<P, E> = (Result<P, E>, ReadOutcome);

impl QueryCache {
    /// Serves `plan` from the cache or computes it with `fetch`, filling the
    /// cache when that is safe, ends `trace` with the outcome and says which
    /// it did. Errors are `fetch`'s only.
    pub(crate) async fn get_or_fill<P, E, F, Fut>(
        &self,
        plan: &CachePlan<'_>,
        trace: ReadTrace,
        fetch: F,
    ) -> Result<(P, Outcome), E>
    where
        P: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<P>, E>>,
    {
        let (result, outcome) = self.serve(plan, fetch).await;
        let outcome = trace.finish(outcome);
        result.map(|payload| (payload, outcome))
    }

    /// The lookup, then a fill on a miss.
    async fn serve<P, E, F, Fut>(&self, plan: &CachePlan<'_>, fetch: F) -> Served<P, E>
    where
        P: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<P>, E>>,
    {
        let deadline = plan.token.map(|(_, wait)| Instant::now() + wait);
        let mut lookup = self.lookup::<P>(plan).await;
        while let (Lookup::TokenPending, Some((token, _)), Some(deadline)) =
            (&lookup, plan.token, deadline)
        {
            if !self.wait_applied(token, deadline).await {
                self.metrics.bypasses();
                let outcome = ReadOutcome::ReadThrough(ReadThrough::TokenNotApplied);
                return read_through(fetch, outcome).await;
            }
            lookup = self.lookup::<P>(plan).await;
        }
        let (epoch, generations, token_pending) = match lookup {
            Lookup::Hit(payload) => {
                self.metrics.hits();
                return (Ok(payload), ReadOutcome::Hit);
            }
            Lookup::Bypass(outcome) => {
                self.metrics.bypasses();
                return read_through(fetch, outcome).await;
            }
            Lookup::Relearn => {
                self.schema_changed();
                self.metrics.bypasses();
                let outcome = ReadOutcome::ReadThrough(ReadThrough::SchemaChanged);
                return read_through(fetch, outcome).await;
            }
            Lookup::TokenPending => {
                // Only without a token: cannot happen; read through.
                self.metrics.bypasses();
                let outcome = ReadOutcome::ReadThrough(ReadThrough::TokenNotApplied);
                return read_through(fetch, outcome).await;
            }
            Lookup::Miss {
                epoch,
                generations,
                refused,
                token_pending,
            } => {
                // A refused value would answer the lease read as a hit and
                // block every refill until its TTL: remove it first. Deleting
                // a result is always safe (at worst a fresh one is refilled).
                if refused {
                    if let Err(error) = self.store.delete_many(&[plan.result.as_str()]).await {
                        return self.degrade(error, fetch).await;
                    }
                }
                (epoch, generations, token_pending)
            }
        };
        self.metrics.misses();
        self.fill(plan, epoch, generations, token_pending, fetch)
            .await
    }

    /// Polls the progress record until the invalidator has applied
    /// `token`; false when `deadline` passes first (or the record cannot
    /// be read).
    async fn wait_applied(&self, token: WriteToken, deadline: Instant) -> bool {
        loop {
            let applied = cm_store::get_one(self.store.as_ref(), self.heartbeat_key.as_str())
                .await
                .ok()
                .flatten()
                .and_then(|item| Heartbeat::decode(&item.value))
                .map(|heartbeat| heartbeat.applied_lsn);
            if applied.is_some_and(|applied| applied >= token.lsn()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(TOKEN_POLL.min(deadline - now)).await;
        }
    }

    /// The dispatched LSN of the progress record, read after the fill's
    /// pre-query registrations (`docs/freshness.md`); `None` when it
    /// cannot be read.
    async fn read_dispatched(&self) -> Option<u64> {
        cm_store::get_one(self.store.as_ref(), self.heartbeat_key.as_str())
            .await
            .ok()
            .flatten()
            .and_then(|item| Heartbeat::decode(&item.value))
            .and_then(|heartbeat| heartbeat.dispatched_lsn)
    }

    /// The miss: snapshot, lease, register, `fetch`, register, store.
    async fn fill<P, E, F, Fut>(
        &self,
        plan: &CachePlan<'_>,
        epoch: Option<u64>,
        generations: Vec<Option<u64>>,
        token_pending: bool,
        fetch: F,
    ) -> Served<P, E>
    where
        P: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<P>, E>>,
    {
        let miss = (plan.miss)();
        let snapshot = match self.snapshot(plan, epoch, generations).await {
            Ok(snapshot) => snapshot,
            Err(error) => return self.degrade(error, fetch).await,
        };
        let lease = match self.lease::<P>(plan, &snapshot).await {
            Ok(LeaseResult::Won(lease)) => lease,
            Ok(LeaseResult::Hit(_)) if token_pending => {
                self.metrics.bypasses();
                let outcome = ReadOutcome::ReadThrough(ReadThrough::TokenNotApplied);
                return read_through(fetch, outcome).await;
            }
            Ok(LeaseResult::Hit(payload)) => {
                self.metrics.hits();
                return (Ok(payload), ReadOutcome::Hit);
            }
            Ok(LeaseResult::ReadThrough) => {
                self.metrics.bypasses();
                let outcome = ReadOutcome::ReadThrough(ReadThrough::LeaseContended);
                return read_through(fetch, outcome).await;
            }
            Err(error) => return self.degrade(error, fetch).await,
        };
        let key = plan.result.as_str();
        // Join the pre-query flush lists while holding the lease: from here
        // on, an invalidation of any row that can change the result deletes
        // the placeholder and voids the fill.
        if let Err(error) = self.append(&miss.pre_query, key).await {
            self.release(key, lease).await;
            return self.degrade(error, fetch).await;
        }
        // On a hot standby the fill is stored only if the standby had
        // replayed every invalidation already dispatched, read only now that
        // this fill is registered (`docs/freshness.md`). Read beside the
        // query once any fill came from a standby.
        let watch_replay = self.replica_seen.load(Ordering::Relaxed);
        let (fetched, dispatched) = tokio::join!(fetch(), async {
            if watch_replay {
                self.read_dispatched().await
            } else {
                None
            }
        });
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                self.release(key, lease).await;
                return (Err(error), ReadOutcome::NotStored);
            }
        };
        if !fetched.cacheable {
            self.release(key, lease).await;
            return (Ok(fetched.payload), ReadOutcome::NotStored);
        }
        if let Some(replayed) = fetched.replayed {
            self.replica_seen.store(true, Ordering::Relaxed);
            if dispatched.is_none_or(|dispatched| replayed < dispatched) {
                self.metrics.replica_behind();
                tracing::debug!(
                    replayed,
                    ?dispatched,
                    "the standby is behind the invalidator: not stored"
                );
                self.release(key, lease).await;
                return (Ok(fetched.payload), ReadOutcome::ReplicaBehind);
            }
        }
        let (registered, _) = tokio::join!(
            self.append(&fetched.post_query, key),
            self.register_for_inspection(miss.source.as_ref(), key)
        );
        if let Err(error) = registered {
            self.metrics.cache_errors();
            tracing::warn!(%error, "registering a result's rows failed; not caching it");
            self.release(key, lease).await;
            return (Ok(fetched.payload), ReadOutcome::NotStored);
        }
        if let Some(hook) = &self.options.before_store {
            hook().await;
        }
        let outcome = self
            .store_result(
                plan,
                miss.source.as_ref(),
                lease,
                &snapshot,
                &fetched.payload,
            )
            .await;
        (Ok(fetched.payload), outcome)
    }

    /// The one multi-get of a hit: result, epoch, heartbeat, the schema
    /// version for a statement, generations.
    async fn lookup<P: DeserializeOwned>(&self, plan: &CachePlan<'_>) -> Lookup<P> {
        let fixed = if plan.schema_version.is_some() { 4 } else { 3 };
        let mut keys: Vec<&str> = Vec::with_capacity(fixed + plan.generations.len());
        keys.extend([
            plan.result.as_str(),
            self.epoch_key.as_str(),
            self.heartbeat_key.as_str(),
        ]);
        if plan.schema_version.is_some() {
            keys.push(self.schema_version_key.as_str());
        }
        keys.extend(plan.generations.iter().map(Key::as_str));
        let items = match self.store.get_many(&keys).await {
            Ok(items) if items.len() == keys.len() => items,
            Ok(_) => {
                self.metrics.cache_errors();
                return Lookup::Bypass(ReadOutcome::Degraded);
            }
            Err(error) => {
                self.metrics.cache_errors();
                tracing::warn!(%error, "cache lookup failed; reading from the database");
                return Lookup::Bypass(ReadOutcome::Degraded);
            }
        };
        let heartbeat = items[2]
            .as_ref()
            .and_then(|item| Heartbeat::decode(&item.value));
        if plan.check_heartbeat && !self.heartbeat_fresh(heartbeat.as_ref()) {
            self.metrics.stale_heartbeat();
            return Lookup::Bypass(ReadOutcome::ReadThrough(ReadThrough::StaleHeartbeat));
        }
        let token_pending = plan.token.is_some_and(|(token, _)| {
            heartbeat.is_none_or(|heartbeat| heartbeat.applied_lsn < token.lsn())
        });
        if let Some(learned_under) = plan.schema_version {
            // A DDL the invalidator applied since the statement was learned
            // may have changed what its text reads (a view redefined, a
            // partition attached, a name now shadowed): learn it again.
            if items[3].as_ref().and_then(generation) != Some(learned_under) {
                return Lookup::Relearn;
            }
        }
        let epoch = items[1].as_ref().and_then(generation);
        let generations: Vec<Option<u64>> = items[fixed..]
            .iter()
            .map(|item| item.as_ref().and_then(generation))
            .collect();
        let refused = items[0].is_some();
        if let Some(item) = &items[0] {
            match entry::decode_hit::<P>(&item.value) {
                Some(found) if valid(plan, &found.snapshot, epoch, &generations) => {
                    if token_pending {
                        return Lookup::TokenPending;
                    }
                    return Lookup::Hit(found.payload);
                }
                Some(_) => self.metrics.stale_rejections(),
                None => {
                    self.metrics.cache_errors();
                    tracing::warn!(key = %plan.result, "cached value does not decode; refilling");
                }
            }
        }
        Lookup::Miss {
            epoch,
            generations,
            refused,
            token_pending,
        }
    }

    fn heartbeat_fresh(&self, heartbeat: Option<&Heartbeat>) -> bool {
        let Some(heartbeat) = heartbeat else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let age = now.saturating_sub(u128::from(heartbeat.emitted_unix_micros));
        age <= self.options.max_staleness.as_micros()
    }

    /// The generations to fill under: those read, creating missing ones.
    async fn snapshot(
        &self,
        plan: &CachePlan<'_>,
        epoch: Option<u64>,
        generations: Vec<Option<u64>>,
    ) -> Result<Snapshot, StoreError> {
        let epoch = match epoch {
            Some(epoch) => epoch,
            None => self
                .store
                .create_generation_if_missing(self.epoch_key.as_str())
                .await?
                .get(),
        };
        let mut out = Vec::with_capacity(generations.len());
        for (key, value) in plan.generations.iter().zip(generations) {
            let value = match value {
                Some(value) => value,
                None => self
                    .store
                    .create_generation_if_missing(key.as_str())
                    .await?
                    .get(),
            };
            out.push((key.as_str().to_owned(), value));
        }
        Ok(Snapshot {
            epoch,
            generations: out,
        })
    }

    async fn lease<P: DeserializeOwned>(
        &self,
        plan: &CachePlan<'_>,
        snapshot: &Snapshot,
    ) -> Result<LeaseResult<P>, StoreError> {
        let key = plan.result.as_str();
        for attempt in 0..=self.options.lease_wait_attempts {
            match self
                .store
                .get_with_lease(key, self.options.lease_ttl)
                .await?
            {
                LeaseOutcome::Won(lease) => return Ok(LeaseResult::Won(lease)),
                LeaseOutcome::Hit(bytes) => {
                    // Filled since the lookup: valid only under our snapshot.
                    return Ok(match entry::decode::<P>(&bytes) {
                        Some(found) if found.snapshot == *snapshot => {
                            LeaseResult::Hit(found.payload)
                        }
                        _ => LeaseResult::ReadThrough,
                    });
                }
                LeaseOutcome::Stale(_) => return Ok(LeaseResult::ReadThrough),
                LeaseOutcome::Wait if attempt < self.options.lease_wait_attempts => {
                    tokio::time::sleep(self.options.lease_wait).await;
                }
                LeaseOutcome::Wait => {}
            }
        }
        Ok(LeaseResult::ReadThrough)
    }

    async fn append(&self, lists: &[Key], member: &str) -> Result<(), StoreError> {
        if lists.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = lists.iter().map(Key::as_str).collect();
        self.store
            .append_to_flush_lists(&keys, member, self.options.flush_list_ttl)
            .await
    }

    async fn release(&self, key: &str, lease: Lease) {
        if let Err(error) = self.store.release_lease(key, lease).await {
            self.metrics.cache_errors();
            tracing::debug!(%error, "releasing a lease failed; it expires on its own");
        }
    }

    /// Stores the filled value if the lease still holds: `Filled`,
    /// `LeaseLost`, or `NotStored` when it cannot be stored.
    async fn store_result<P: Serialize>(
        &self,
        plan: &CachePlan<'_>,
        source: Option<&Source>,
        lease: Lease,
        snapshot: &Snapshot,
        payload: &P,
    ) -> ReadOutcome {
        let key = plan.result.as_str();
        let bytes = match entry::encode(snapshot, source, payload) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.metrics.cache_errors();
                tracing::warn!(%error, "result does not encode; not caching it");
                self.release(key, lease).await;
                return ReadOutcome::NotStored;
            }
        };
        if bytes.len() > self.options.max_value_bytes {
            self.metrics.oversized();
            self.release(key, lease).await;
            return ReadOutcome::NotStored;
        }
        match self
            .store
            .set_if_lease_valid(key, &bytes, plan.ttl, lease)
            .await
        {
            Ok(true) => {
                self.metrics.stores();
                ReadOutcome::Filled
            }
            // An invalidation deleted the placeholder while we filled: the
            // value may be stale, and is dropped (the stale-set race).
            Ok(false) => {
                self.metrics.lease_lost();
                ReadOutcome::LeaseLost
            }
            Err(StoreError::ValueTooLarge { .. }) => {
                self.metrics.oversized();
                self.release(key, lease).await;
                ReadOutcome::NotStored
            }
            Err(error) => {
                self.metrics.cache_errors();
                tracing::warn!(%error, "storing a result failed");
                self.release(key, lease).await;
                ReadOutcome::NotStored
            }
        }
    }

    /// A cache failure on the way: count it and read through.
    async fn degrade<P, E, F, Fut>(&self, error: StoreError, fetch: F) -> Served<P, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<P>, E>>,
    {
        self.metrics.cache_errors();
        tracing::warn!(%error, "cache unavailable; reading from the database");
        read_through(fetch, ReadOutcome::Degraded).await
    }
}

/// The value from `fetch`, not stored, and `outcome`.
async fn read_through<P, E, F, Fut>(fetch: F, outcome: ReadOutcome) -> Served<P, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Fetched<P>, E>>,
{
    (fetch().await.map(|f| f.payload), outcome)
}

enum LeaseResult<P> {
    Won(Lease),
    Hit(P),
    ReadThrough,
}

/// A generation's stored form: decimal ASCII, maybe padded by INCR.
pub(crate) fn generation(item: &Item) -> Option<u64> {
    std::str::from_utf8(&item.value)
        .ok()?
        .trim_end_matches(' ')
        .parse()
        .ok()
}

/// Whether a value filled under `snapshot` is still valid given the epoch
/// and generations just read. A missing one never matches.
fn valid(
    plan: &CachePlan<'_>,
    snapshot: &SnapshotRef<'_>,
    epoch: Option<u64>,
    generations: &[Option<u64>],
) -> bool {
    servable_parts(
        &plan.generations,
        snapshot.epoch,
        &snapshot.generations,
        epoch,
        generations,
    )
}

/// The hit-path validity rule: the epoch read equals the snapshot's, the
/// snapshot covers exactly `keys`, and each generation read (in `keys`'
/// order) equals the snapshot's value for that key. A missing epoch or
/// generation never matches. The checker applies the same rule with the
/// snapshot's own keys.
pub(crate) fn servable(
    keys: &[&str],
    snapshot: &Snapshot,
    epoch: Option<u64>,
    generations: &[Option<u64>],
) -> bool {
    servable_parts(
        keys,
        snapshot.epoch,
        &snapshot.generations,
        epoch,
        generations,
    )
}

/// [`servable`] over a snapshot's parts, owned or borrowed.
fn servable_parts(
    keys: &[impl AsRef<str>],
    snapshot_epoch: u64,
    snapshot_generations: &[(impl AsRef<str>, u64)],
    epoch: Option<u64>,
    generations: &[Option<u64>],
) -> bool {
    if epoch != Some(snapshot_epoch)
        || snapshot_generations.len() != keys.len()
        || generations.len() != keys.len()
    {
        return false;
    }
    keys.iter().zip(generations).all(|(key, current)| {
        current.is_some_and(|current| {
            snapshot_generations
                .iter()
                .any(|(k, v)| k.as_ref() == key.as_ref() && *v == current)
        })
    })
}
