//! Test support, behind the crate feature `testing`: [`InstrumentedStore`],
//! a [`CacheStore`] that forwards every call to a real store, counts the
//! calls per [`Method`], and can run a hook just before a method's next
//! call (to make another client act at a precise moment of a protocol).
//!
//! Not a mock: every call reaches the wrapped store and returns what it
//! returned. Enable it from a crate's `[dev-dependencies]`:
//!
//! ```toml
//! cm-store = { path = "../store", features = ["testing"] }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::error::StoreError;
use crate::generation::Generation;
use cm_keys::KeySpace;

use crate::store::{CacheStore, CheckedFlushLists, FlushListSnapshot, Item, Lease, LeaseOutcome};

/// A method of [`CacheStore`], as counted and hooked by
/// [`InstrumentedStore`]. The provided one-key conveniences
/// (`append_to_flush_list`, `read_flush_list`,
/// `clear_flush_list_if_unchanged`) count as their many-key method. The
/// combined fill steps (`lease_and_append`,
/// `append_then_store_if_lease_valid`) and `append_members_to_flush_list`
/// count once each and go to the wrapped store's own implementation (a
/// memcached store pipelines them), so what they do inside is not counted
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// [`CacheStore::get_many`].
    GetMany,
    /// [`CacheStore::get_with_lease`].
    GetWithLease,
    /// [`CacheStore::set_if_lease_valid`].
    SetIfLeaseValid,
    /// [`CacheStore::release_lease`].
    ReleaseLease,
    /// [`CacheStore::lease_and_append`].
    LeaseAndAppend,
    /// [`CacheStore::append_then_store_if_lease_valid`].
    AppendThenStoreIfLeaseValid,
    /// [`CacheStore::append_to_flush_lists`].
    AppendToFlushLists,
    /// [`CacheStore::append_members_to_flush_list`].
    AppendMembersToFlushList,
    /// [`CacheStore::read_flush_lists`].
    ReadFlushLists,
    /// [`CacheStore::clear_flush_lists_if_unchanged`].
    ClearFlushListsIfUnchanged,
    /// [`CacheStore::delete_many`].
    DeleteMany,
    /// [`CacheStore::create_generation_if_missing`].
    CreateGenerationIfMissing,
    /// [`CacheStore::bump_generation`].
    BumpGeneration,
    /// [`CacheStore::write_heartbeat`].
    WriteHeartbeat,
}

/// How many [`Method`]s there are (the counters' length).
const METHODS: usize = 14;
const _: () = assert!(Method::WriteHeartbeat as usize + 1 == METHODS);

/// A one-shot hook: gets the wrapped store, runs before a call.
type Hook =
    Box<dyn FnOnce(Arc<dyn CacheStore>) -> BoxFuture<'static, Result<(), StoreError>> + Send>;

/// A [`CacheStore`] that forwards every call to `inner`, counts calls per
/// [`Method`], and runs hooks registered with
/// [`before_next`](Self::before_next) just before the call they wait for.
pub struct InstrumentedStore {
    inner: Arc<dyn CacheStore>,
    calls: [AtomicUsize; METHODS],
    hooks: Mutex<Vec<(Method, Hook)>>,
}

impl InstrumentedStore {
    /// Wraps `inner`, with every count at zero and no hook.
    pub fn new(inner: Arc<dyn CacheStore>) -> InstrumentedStore {
        InstrumentedStore {
            inner,
            calls: Default::default(),
            hooks: Mutex::new(Vec::new()),
        }
    }

    /// The wrapped store: calls through it are neither counted nor hooked.
    pub fn inner(&self) -> &Arc<dyn CacheStore> {
        &self.inner
    }

    /// How many times `method` was called through this wrapper.
    pub fn calls(&self, method: Method) -> usize {
        self.calls[method as usize].load(Ordering::SeqCst)
    }

    /// How many calls of any method went through this wrapper.
    pub fn total_calls(&self) -> usize {
        self.calls
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum()
    }

    /// Runs `hook` once, just before the next call of `method` (after it is
    /// counted), with the wrapped store. An error from the hook fails that
    /// call without forwarding it. Hooks on one method run one per call, in
    /// the order they were registered.
    pub fn before_next<F, Fut>(&self, method: Method, hook: F)
    where
        F: FnOnce(Arc<dyn CacheStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let hook: Hook = Box::new(move |inner| Box::pin(hook(inner)));
        self.lock_hooks().push((method, hook));
    }

    /// Counts a call of `method` and runs its next hook, if any.
    async fn enter(&self, method: Method) -> Result<(), StoreError> {
        self.calls[method as usize].fetch_add(1, Ordering::SeqCst);
        let hook = {
            let mut hooks = self.lock_hooks();
            let position = hooks.iter().position(|(m, _)| *m == method);
            position.map(|i| hooks.remove(i).1)
        };
        match hook {
            Some(hook) => hook(Arc::clone(&self.inner)).await,
            None => Ok(()),
        }
    }

    /// The hooks; a panicking hook (a failed assertion) poisons nothing.
    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, Vec<(Method, Hook)>> {
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for InstrumentedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedStore")
            .field("inner", &self.inner)
            .field("total_calls", &self.total_calls())
            .field("pending_hooks", &self.lock_hooks().len())
            .finish()
    }
}

#[async_trait]
impl CacheStore for InstrumentedStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>, StoreError> {
        self.enter(Method::GetMany).await?;
        self.inner.get_many(keys).await
    }

    async fn get_with_lease(&self, key: &str, ttl: Duration) -> Result<LeaseOutcome, StoreError> {
        self.enter(Method::GetWithLease).await?;
        self.inner.get_with_lease(key, ttl).await
    }

    async fn set_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError> {
        self.enter(Method::SetIfLeaseValid).await?;
        self.inner.set_if_lease_valid(key, value, ttl, lease).await
    }

    async fn release_lease(&self, key: &str, lease: Lease) -> Result<(), StoreError> {
        self.enter(Method::ReleaseLease).await?;
        self.inner.release_lease(key, lease).await
    }

    async fn lease_and_append(
        &self,
        key: &str,
        lease_ttl: Duration,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        self.enter(Method::LeaseAndAppend).await?;
        self.inner
            .lease_and_append(key, lease_ttl, list_keys, list_ttl)
            .await
    }

    async fn append_then_store_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.enter(Method::AppendThenStoreIfLeaseValid).await?;
        self.inner
            .append_then_store_if_lease_valid(key, value, ttl, lease, list_keys, list_ttl)
            .await
    }

    async fn append_members_to_flush_list(
        &self,
        list_key: &str,
        members: &[&str],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.enter(Method::AppendMembersToFlushList).await?;
        self.inner
            .append_members_to_flush_list(list_key, members, ttl)
            .await
    }

    async fn append_to_flush_lists(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.enter(Method::AppendToFlushLists).await?;
        self.inner
            .append_to_flush_lists(list_keys, member, ttl)
            .await
    }

    async fn read_flush_lists(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<FlushListSnapshot>, StoreError> {
        self.enter(Method::ReadFlushLists).await?;
        self.inner.read_flush_lists(list_keys).await
    }

    async fn read_flush_lists_checked(
        &self,
        space: &KeySpace,
        list_keys: &[&str],
    ) -> Result<CheckedFlushLists, StoreError> {
        self.enter(Method::ReadFlushLists).await?;
        self.inner.read_flush_lists_checked(space, list_keys).await
    }

    async fn write_sentinels(&self, space: &KeySpace) -> Result<(), StoreError> {
        self.inner.write_sentinels(space).await
    }

    async fn clear_flush_lists_if_unchanged(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        self.enter(Method::ClearFlushListsIfUnchanged).await?;
        self.inner.clear_flush_lists_if_unchanged(lists).await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<(), StoreError> {
        self.enter(Method::DeleteMany).await?;
        self.inner.delete_many(keys).await
    }

    async fn create_generation_if_missing(&self, key: &str) -> Result<Generation, StoreError> {
        self.enter(Method::CreateGenerationIfMissing).await?;
        self.inner.create_generation_if_missing(key).await
    }

    async fn bump_generation(&self, key: &str) -> Result<Generation, StoreError> {
        self.enter(Method::BumpGeneration).await?;
        self.inner.bump_generation(key).await
    }

    async fn write_heartbeat(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.enter(Method::WriteHeartbeat).await?;
        self.inner.write_heartbeat(key, value, ttl).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn forwards_and_counts_every_call() {
        let store = InstrumentedStore::new(Arc::new(MemoryStore::default()));
        store.write_heartbeat("t:h", b"v", TTL).await.unwrap();
        store
            .append_to_flush_list("t:f:a", "t:q:a", TTL)
            .await
            .unwrap();
        let items = store.get_many(&["t:h", "t:nothing"]).await.unwrap();
        assert_eq!(items[0].as_ref().map(|i| &i.value[..]), Some(&b"v"[..]));
        assert_eq!(items[1], None);
        assert_eq!(store.calls(Method::WriteHeartbeat), 1);
        assert_eq!(store.calls(Method::AppendToFlushLists), 1);
        assert_eq!(store.calls(Method::GetMany), 1);
        assert_eq!(store.calls(Method::DeleteMany), 0);
        assert_eq!(store.total_calls(), 3);
        // Calls through the inner store are not counted.
        store.inner().delete_many(&["t:h"]).await.unwrap();
        assert_eq!(store.total_calls(), 3);
    }

    #[tokio::test]
    async fn a_hook_runs_once_before_the_next_call_of_its_method() {
        let store = InstrumentedStore::new(Arc::new(MemoryStore::default()));
        store.before_next(Method::DeleteMany, |inner| async move {
            inner.write_heartbeat("t:marker", b"1", TTL).await
        });
        let marked = || async { store.inner().get_many(&["t:marker"]).await.unwrap()[0].is_some() };
        store.get_many(&["t:a"]).await.unwrap();
        assert!(!marked().await, "a hook waits for its own method");
        store.delete_many(&["t:a"]).await.unwrap();
        assert!(marked().await);
        store.inner().delete_many(&["t:marker"]).await.unwrap();
        store.delete_many(&["t:a"]).await.unwrap();
        assert!(!marked().await, "a hook runs once");
    }

    #[tokio::test]
    async fn a_failing_hook_fails_the_call_without_forwarding_it() {
        let store = InstrumentedStore::new(Arc::new(MemoryStore::default()));
        store.write_heartbeat("t:h", b"v", TTL).await.unwrap();
        store.before_next(Method::DeleteMany, |_| async {
            Err(StoreError::Protocol {
                message: "injected".into(),
            })
        });
        assert!(store.delete_many(&["t:h"]).await.is_err());
        assert!(store.get_many(&["t:h"]).await.unwrap()[0].is_some());
        assert_eq!(store.calls(Method::DeleteMany), 1);
    }
}
