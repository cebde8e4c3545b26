//! Cache backends for the query cache: the [`CacheStore`] trait and its two
//! implementations, [`MemcachedStore`] (one or many memcached servers) and
//! [`MemoryStore`] (in-process, for the embedded mode and tests).
//!
//! The reader and the invalidator both hold a store (as
//! `Arc<dyn CacheStore>`). The reader's hit is one [`CacheStore::get_many`]
//! of the result, the epoch, the heartbeat and the table generations; its
//! miss takes a lease ([`CacheStore::get_with_lease`]), registers the result
//! in flush lists ([`CacheStore::append_to_flush_lists`]) and fills it only if
//! the lease still holds ([`CacheStore::set_if_lease_valid`]). The invalidator
//! reads flush lists ([`CacheStore::read_flush_lists`]), deletes their members
//! ([`CacheStore::delete_many`]), then clears each list only if it is
//! unchanged since the read ([`CacheStore::clear_flush_lists_if_unchanged`]),
//! bumps generations ([`CacheStore::bump_generation`]) and writes its
//! heartbeat.
//!
//! Keys are plain `&str` built by the key scheme; this crate only checks that
//! memcached can take them ([`validate_key`]) and never sends one it cannot.
//!
//! # What this crate must never do
//!
//! * Treat a failed delete, append or bump as success. `NOT_FOUND` on a delete
//!   is success (the key is gone); a timeout or a lost connection is an error
//!   the caller must retry, because the invalidator must not acknowledge a
//!   change it has not applied (`docs/memcached.md` §2).
//! * Route a key to a different server than another process with the same
//!   server list would: routing is [`StableRendezvous`], a documented hash of
//!   the key and the configured server strings, with no ejection of failed
//!   servers and no rehashing (`docs/memcached.md` §3).
//! * Lose a flush-list member: appends are atomic server-side appends, and a
//!   list is cleared only if it is unchanged since it was read (its CAS).
//! * Clear a flush list before its members are deleted: there is no
//!   read-and-clear call. The caller deletes the members between the read
//!   and the clear, so a worker that dies in between leaves the list, with
//!   every member, for the replayed transaction to find again.
//! * Let a vanished generation read as a match: generations start at a random
//!   value below 2^63 (`generation.rs` says why not 64 bits).
//! * Hang: every call is bounded by the configured timeout.
//!
//! # Features
//!
//! * `testing` (off by default): the module `cm_store::testing`, with
//!   `InstrumentedStore`, a store wrapper for tests that forwards every call,
//!   counts calls per method and runs a hook before a chosen call. Enable it
//!   in `[dev-dependencies]` only.

mod error;
mod flush_list;
mod generation;
mod key;
mod memcached;
mod memory;
mod read;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod ttl;

pub use error::{KeyProblem, StoreError};
pub use flush_list::MEMBER_DELIMITER;
pub use generation::Generation;
pub use key::{validate_key, MAX_KEY_LEN};
pub use memcached::{
    fnv1a64, MemcachedConfig, MemcachedStore, StableRendezvous, DEFAULT_ITEM_SIZE_LIMIT,
    DEFAULT_MAX_CAS_ATTEMPTS, DEFAULT_TIMEOUT, ITEM_OVERHEAD,
};
pub use memory::{MemoryStore, MemoryStoreConfig};
pub use read::{get_one, read_generation, read_heartbeat};
pub use store::{CacheStore, CheckedFlushLists, FlushListSnapshot, Item, Lease, LeaseOutcome};
pub use ttl::MAX_TTL;
