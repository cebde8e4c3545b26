//! [`MemoryStore`]: the [`CacheStore`] inside the process, for the embedded
//! mode (one process, no memcached) and for tests.
//!
//! It keeps memcached's semantics, so code tested against it behaves the same
//! against memcached: TTLs (rounded to whole seconds like memcached's), CAS
//! tokens that change on every write, lease placeholders that expire, atomic
//! appends, generations that start random, and least-recently-used eviction
//! of results when a configured item or byte limit is reached.
//!
//! Like a memcached metadata server (`-M`, see `docs/eviction.md`), it never
//! evicts metadata: flush lists, generations and the heartbeat stay until
//! they expire or are deleted, because an evicted flush list would lose its
//! members' invalidations. Only results (`q:` keys) are evicted to make
//! room; a write that still does not fit is refused with the error memcached
//! `-M` gives (`out of memory storing object`), so the reader does not cache
//! and the invalidator retries. One mutex guards everything and is
//! never held across an `.await`, so every call finishes without waiting on
//! I/O and needs no timeout.

mod table;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::flush_list::{decode_members, encode_member};
use crate::generation::Generation;
use crate::key::{validate_key, validate_keys, validate_value};
use crate::memcached::{DEFAULT_ITEM_SIZE_LIMIT, ITEM_OVERHEAD};
use crate::store::{CacheStore, FlushListSnapshot, Item, Lease, LeaseOutcome};
use crate::ttl::effective_ttl;
use table::{OutOfMemory, Table};

/// Limits of a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreConfig {
    /// Evict the least recently used result beyond this many items
    /// (metadata counts, but is never evicted).
    pub max_items: Option<usize>,
    /// Evict the least recently used results beyond this many bytes (keys,
    /// values and a fixed per-item overhead, metadata included).
    pub max_bytes: Option<usize>,
    /// The largest value accepted (and the largest a flush list may grow
    /// to); by default the same as memcached's default.
    pub max_value_bytes: usize,
}

impl Default for MemoryStoreConfig {
    fn default() -> MemoryStoreConfig {
        MemoryStoreConfig {
            max_items: None,
            max_bytes: None,
            max_value_bytes: DEFAULT_ITEM_SIZE_LIMIT - ITEM_OVERHEAD,
        }
    }
}

/// The in-process [`CacheStore`].
#[derive(Debug)]
pub struct MemoryStore {
    table: Mutex<Table>,
    max_value_bytes: usize,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new(MemoryStoreConfig::default())
    }
}

impl MemoryStore {
    /// An empty store with these limits.
    pub fn new(config: MemoryStoreConfig) -> MemoryStore {
        MemoryStore {
            table: Mutex::new(Table::new(config.max_items, config.max_bytes)),
            max_value_bytes: config.max_value_bytes,
        }
    }

    /// How many items are stored (including expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no item is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // No operation panics while holding the lock, so a poisoned table is
        // still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A write refused because only metadata is left to evict; worded like
/// memcached `-M`'s `SERVER_ERROR out of memory storing object`.
fn out_of_memory(key: &str) -> StoreError {
    StoreError::Server {
        message: format!(
            "out of memory storing object {key:?}: the in-process store is full \
             and holds nothing it may evict (metadata is never evicted)"
        ),
    }
}

#[async_trait]
impl CacheStore for MemoryStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>, StoreError> {
        validate_keys(keys)?;
        let now = Instant::now();
        let mut table = self.lock();
        Ok(keys
            .iter()
            .map(|key| match table.get(key, now) {
                Some(entry) if !entry.placeholder => Some(Item {
                    value: entry.value.clone(),
                    cas: entry.cas,
                }),
                _ => None,
            })
            .collect())
    }

    async fn get_with_lease(
        &self,
        key: &str,
        lease_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        validate_key(key)?;
        let now = Instant::now();
        let mut table = self.lock();
        Ok(match table.get(key, now) {
            Some(entry) if entry.placeholder => LeaseOutcome::Wait,
            Some(entry) => LeaseOutcome::Hit(entry.value.clone()),
            None => match table.put(key, Vec::new(), Some(effective_ttl(lease_ttl)), true, now) {
                Ok(cas) => LeaseOutcome::Won(Lease::new(cas)),
                // No room for the placeholder: like memcached failing to
                // vivify, this caller must not fill.
                Err(OutOfMemory) => LeaseOutcome::Wait,
            },
        })
    }

    async fn set_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError> {
        validate_key(key)?;
        validate_value(key, value, self.max_value_bytes)?;
        let now = Instant::now();
        let mut table = self.lock();
        match table.get(key, now) {
            Some(entry) if entry.cas == lease.cas() => {
                table
                    .put(key, value.to_vec(), Some(effective_ttl(ttl)), false, now)
                    .map_err(|OutOfMemory| out_of_memory(key))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, lease: Lease) -> Result<(), StoreError> {
        validate_key(key)?;
        let mut table = self.lock();
        if table
            .get(key, Instant::now())
            .is_some_and(|entry| entry.cas == lease.cas())
        {
            table.remove(key);
        }
        Ok(())
    }

    async fn append_to_flush_lists(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_keys(list_keys)?;
        validate_key(member)?;
        let bytes = encode_member(member);
        let ttl = Some(effective_ttl(ttl));
        let now = Instant::now();
        let mut table = self.lock();
        for list in list_keys {
            let mut value = table
                .get(list, now)
                .map(|entry| entry.value.clone())
                .unwrap_or_default();
            if value.len() + bytes.len() > self.max_value_bytes {
                // memcached refuses an append past its item size limit too.
                return Err(StoreError::NotStored {
                    key: (*list).to_string(),
                });
            }
            value.extend_from_slice(&bytes);
            table
                .rewrite(list, value, ttl, now)
                .map_err(|OutOfMemory| out_of_memory(list))?;
        }
        Ok(())
    }

    async fn read_flush_lists(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<FlushListSnapshot>, StoreError> {
        validate_keys(list_keys)?;
        let now = Instant::now();
        let mut table = self.lock();
        Ok(list_keys
            .iter()
            .map(|list| match table.get(list, now) {
                Some(entry) => FlushListSnapshot {
                    members: decode_members(&entry.value),
                    cas: Some(entry.cas),
                },
                None => FlushListSnapshot::default(),
            })
            .collect())
    }

    async fn clear_flush_lists_if_unchanged(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        for &(list, _) in lists {
            validate_key(list)?;
        }
        let now = Instant::now();
        let mut table = self.lock();
        Ok(lists
            .iter()
            .map(|&(list, cas)| match table.get(list, now) {
                // Every append gives the list a new CAS: a match means
                // nothing was appended since the read.
                Some(entry) if entry.cas == cas => {
                    table.remove(list);
                    true
                }
                // Changed since the read: left in place.
                Some(_) => false,
                // Already gone (expired, evicted, cleared by someone else).
                None => true,
            })
            .collect())
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<(), StoreError> {
        validate_keys(keys)?;
        let mut table = self.lock();
        for key in keys {
            table.remove(key);
        }
        Ok(())
    }

    async fn create_generation_if_missing(&self, key: &str) -> Result<Generation, StoreError> {
        validate_key(key)?;
        let fresh = Generation::random()?;
        let now = Instant::now();
        let mut table = self.lock();
        if let Some(entry) = table.get(key, now) {
            return Generation::decode(key, &entry.value);
        }
        table
            .put(key, fresh.encode(), None, false, now)
            .map_err(|OutOfMemory| out_of_memory(key))?;
        Ok(fresh)
    }

    async fn bump_generation(&self, key: &str) -> Result<Generation, StoreError> {
        validate_key(key)?;
        let fresh = Generation::random()?;
        let now = Instant::now();
        let mut table = self.lock();
        let bumped = match table.get(key, now) {
            // memcached's INCR wraps around at 2^64 too.
            Some(entry) => Generation(Generation::decode(key, &entry.value)?.0.wrapping_add(1)),
            None => fresh,
        };
        table
            .rewrite(key, bumped.encode(), None, now)
            .map_err(|OutOfMemory| out_of_memory(key))?;
        Ok(bumped)
    }

    async fn write_heartbeat(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_key(key)?;
        validate_value(key, value, self.max_value_bytes)?;
        self.lock()
            .put(
                key,
                value.to_vec(),
                Some(effective_ttl(ttl)),
                false,
                Instant::now(),
            )
            .map_err(|OutOfMemory| out_of_memory(key))?;
        Ok(())
    }
}
