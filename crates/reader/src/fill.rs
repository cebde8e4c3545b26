//! The lookup-or-fill protocol shared by every cached read: one multi-get
//! on a hit; on a miss, three store calls around the query: the lookup; the
//! snapshot (missing generations created) with the lease and the pre-query
//! registrations; the query; the row registrations with the store, only if
//! the lease holds. With one memcached server (or every key of a fill on
//! one), each call is one round trip (`docs/memcached.md` §4). Any cache
//! failure degrades to a plain database read, counted, and never fails the
//! caller. Every read through here ends with its outcome in
//! [`ReadTrace::finish`].

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
        let token = plan
            .token
            .map(|(token, wait)| (token, Instant::now() + wait));
        let (epoch, generations, token_pending) = loop {
            match self.lookup::<P>(plan).await {
                Lookup::Hit(payload) => {
                    self.metrics.hits();
                    return (Ok(payload), ReadOutcome::Hit);
                }
                Lookup::TokenPending => {
                    // Only a read with a token finds its token pending: wait
                    // for it to be applied, then look up again.
                    if let Some((token, deadline)) = token {
                        if self.wait_applied(token, deadline).await {
                            continue;
                        }
                    }
                    self.metrics.bypasses();
                    let outcome = ReadOutcome::ReadThrough(ReadThrough::TokenNotApplied);
                    return read_through(fetch, outcome).await;
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
                Lookup::Miss {
                    epoch,
                    generations,
                    refused,
                    token_pending,
                } => {
                    // A refused value would answer the lease read as a hit
                    // and block every refill until its TTL: remove it first.
                    // Deleting a result is always safe (at worst a fresh one
                    // is refilled).
                    if refused {
                        if let Err(error) = self.store.delete_many(&[plan.result.as_str()]).await {
                            return self.degrade(error, fetch).await;
                        }
                    }
                    break (epoch, generations, token_pending);
                }
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
            let progress = self.progress().await;
            if progress.is_some_and(|record| record.applied_lsn >= token.lsn()) {
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
        self.progress().await?.dispatched_lsn
    }

    /// The invalidator's progress record (its heartbeat key); `None` when
    /// it is missing, unreadable or the store fails.
    async fn progress(&self) -> Option<Heartbeat> {
        cm_store::read_heartbeat(self.store.as_ref(), &self.space)
            .await
            .ok()
            .flatten()
    }

    /// The miss: snapshot and lease with the pre-query registrations (one
    /// round trip), `fetch`, then the row registrations with the store (one
    /// round trip where the store can pipeline them; see
    /// `docs/memcached.md` §4 for why the order holds).
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
        let key = plan.result.as_str();
        // Missing generations are created while the lease is taken: both
        // complete before the query starts, which is all the snapshot needs.
        // The lease comes with the pre-query registrations, each landing
        // after the placeholder exists (`CacheStore::lease_and_append`): from
        // then on, an invalidation of any row that can change the result
        // deletes the placeholder and voids the fill.
        let (snapshot, leased) = tokio::join!(
            self.snapshot(plan, epoch, generations),
            self.lease(key, &miss.pre_query)
        );
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => {
                if let Ok(Leased::Won(lease)) = leased {
                    self.release(key, lease).await;
                }
                return self.degrade(error, fetch).await;
            }
        };
        let lease = match leased {
            Ok(Leased::Won(lease)) => lease,
            // Filled since the lookup: valid only under our snapshot.
            // With a write token not yet applied, it may predate the
            // token's commit: not served.
            Ok(Leased::Hit(_)) if token_pending => {
                self.metrics.bypasses();
                let outcome = ReadOutcome::ReadThrough(ReadThrough::TokenNotApplied);
                return read_through(fetch, outcome).await;
            }
            Ok(Leased::Hit(bytes)) => match entry::decode::<P>(&bytes) {
                Some(found) if found.snapshot == snapshot => {
                    self.metrics.hits();
                    return (Ok(found.payload), ReadOutcome::Hit);
                }
                _ => return self.contended(fetch).await,
            },
            Ok(Leased::ReadThrough) => return self.contended(fetch).await,
            Err(error) => return self.degrade(error, fetch).await,
        };
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
        if let Some(hook) = &self.options.before_store {
            hook().await;
        }
        let filled = Filled {
            source: miss.source.as_ref(),
            lease,
            snapshot: &snapshot,
            post_query: &fetched.post_query,
        };
        let outcome = self.store_result(plan, filled, &fetched.payload).await;
        (Ok(fetched.payload), outcome)
    }

    /// Another caller holds the lease: read through without filling.
    async fn contended<P, E, F, Fut>(&self, fetch: F) -> Served<P, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched<P>, E>>,
    {
        self.metrics.bypasses();
        let outcome = ReadOutcome::ReadThrough(ReadThrough::LeaseContended);
        read_through(fetch, outcome).await
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

    /// The generations to fill under: those read, creating missing ones,
    /// all at once.
    async fn snapshot(
        &self,
        plan: &CachePlan<'_>,
        epoch: Option<u64>,
        generations: Vec<Option<u64>>,
    ) -> Result<Snapshot, StoreError> {
        let keys = std::iter::once(&self.epoch_key).chain(plan.generations.iter());
        let values = std::iter::once(epoch).chain(generations);
        let read_or_created = keys.zip(values).map(|(key, value)| async move {
            match value {
                Some(value) => Ok(value),
                None => self
                    .store
                    .create_generation_if_missing(key.as_str())
                    .await
                    .map(|created| created.get()),
            }
        });
        let mut values = futures_util::future::try_join_all(read_or_created)
            .await?
            .into_iter();
        let epoch = values.next().ok_or_else(|| StoreError::Protocol {
            message: "no epoch in the snapshot".to_string(),
        })?;
        Ok(Snapshot {
            epoch,
            generations: plan
                .generations
                .iter()
                .map(|key| key.as_str().to_owned())
                .zip(values)
                .collect(),
        })
    }

    /// The lease on `key`, with `key` joining every pre-query flush list
    /// once it is won; a caller that finds the lease taken waits a little
    /// and tries again, as configured. Every try registers again: a lease
    /// won on a later try is protected by that try's appends, which land
    /// after its placeholder.
    async fn lease(&self, key: &str, pre_query: &[Key]) -> Result<Leased, StoreError> {
        let lists: Vec<&str> = pre_query.iter().map(Key::as_str).collect();
        let (lease_ttl, list_ttl) = (self.options.lease_ttl, self.options.flush_list_ttl);
        for attempt in 0..=self.options.lease_wait_attempts {
            match self
                .store
                .lease_and_append(key, lease_ttl, &lists, list_ttl)
                .await?
            {
                LeaseOutcome::Won(lease) => return Ok(Leased::Won(lease)),
                LeaseOutcome::Hit(bytes) => return Ok(Leased::Hit(bytes)),
                LeaseOutcome::Stale(_) => return Ok(Leased::ReadThrough),
                LeaseOutcome::Wait if attempt < self.options.lease_wait_attempts => {
                    tokio::time::sleep(self.options.lease_wait).await;
                }
                LeaseOutcome::Wait => {}
            }
        }
        Ok(Leased::ReadThrough)
    }

    async fn release(&self, key: &str, lease: Lease) {
        if let Err(error) = self.store.release_lease(key, lease).await {
            self.metrics.cache_errors();
            tracing::debug!(%error, "releasing a lease failed; it expires on its own");
        }
    }

    /// Joins the rows' flush lists and stores the filled value if the lease
    /// still holds (`CacheStore::append_then_store_if_lease_valid`: the
    /// value never shows before the registrations): `Filled`, `LeaseLost`,
    /// or `NotStored` when it cannot be registered or stored. A stored
    /// statement result is then handed to the inspection registry.
    async fn store_result<P: Serialize>(
        &self,
        plan: &CachePlan<'_>,
        filled: Filled<'_>,
        payload: &P,
    ) -> ReadOutcome {
        let key = plan.result.as_str();
        let lease = filled.lease;
        let bytes = match entry::encode(filled.snapshot, filled.source, payload) {
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
        let lists: Vec<&str> = filled.post_query.iter().map(Key::as_str).collect();
        let stored = self
            .store
            .append_then_store_if_lease_valid(
                key,
                &bytes,
                plan.ttl,
                lease,
                &lists,
                self.options.flush_list_ttl,
            )
            .await;
        match stored {
            Ok(true) => {
                self.metrics.stores();
                self.register_for_inspection(filled.source, key);
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
                tracing::warn!(%error, "registering or storing a result failed; not caching it");
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

/// What taking the lease came to.
enum Leased {
    Won(Lease),
    /// A value was there: served only if filled under our snapshot.
    Hit(Vec<u8>),
    ReadThrough,
}

/// What a won fill stores besides its payload.
struct Filled<'a> {
    source: Option<&'a Source>,
    lease: Lease,
    snapshot: &'a Snapshot,
    post_query: &'a [Key],
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
