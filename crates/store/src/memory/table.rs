//! [`Table`]: the in-process store's items, with expiry, CAS tokens and
//! least-recently-used eviction under optional item and byte limits.
//!
//! Only results (`q:` keys) are ever evicted. Metadata (flush lists,
//! generations, the heartbeat, anything else) is never evicted: an evicted
//! flush list would lose its members' invalidations. A write that cannot be
//! made room for by evicting results is refused ([`OutOfMemory`]), as
//! memcached `-M` refuses it, and the item it would have replaced is kept.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::key::is_result_key;

/// Bytes counted per item on top of its key and value, roughly what
/// memcached spends on an item header.
pub(super) const ENTRY_OVERHEAD: usize = 56;

/// One stored item.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) cas: u64,
    /// `None`: never expires (it can still be evicted).
    pub(super) expires_at: Option<Instant>,
    /// An empty item created by a lease read; its lease was handed out.
    pub(super) placeholder: bool,
    /// Position in the LRU order; `None` for metadata, which is never
    /// evicted.
    tick: Option<u64>,
}

/// A write that does not fit even after evicting every result: the store
/// is full of metadata (and items too large to evict around).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutOfMemory;

/// Items by key, plus the LRU order of the evictable ones (oldest tick
/// first).
#[derive(Debug)]
pub(super) struct Table {
    entries: HashMap<String, Entry>,
    lru: BTreeMap<u64, String>,
    next_tick: u64,
    last_cas: u64,
    bytes: usize,
    max_items: Option<usize>,
    max_bytes: Option<usize>,
}

fn footprint(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Table {
    pub(super) fn new(max_items: Option<usize>, max_bytes: Option<usize>) -> Table {
        Table {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            last_cas: 0,
            bytes: 0,
            max_items,
            max_bytes,
        }
    }

    /// A fresh CAS token, never reused.
    fn new_cas(&mut self) -> u64 {
        self.last_cas += 1;
        self.last_cas
    }

    fn new_tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// The live item at `key`, marked as just used; an expired one is
    /// removed and reads as missing.
    pub(super) fn get(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(entry) => entry.expires_at.is_some_and(|at| at <= now),
        };
        if expired {
            self.remove(key);
            return None;
        }
        let tick = self.new_tick();
        let entry = self.entries.get_mut(key)?;
        if let Some(old) = entry.tick.replace(tick) {
            self.lru.remove(&old);
            self.lru.insert(tick, key.to_string());
        }
        Some(entry)
    }

    /// Stores an item (replacing any), evicting the least recently used
    /// results if a limit requires it; returns the new CAS. When no room can
    /// be made, nothing is stored and the item at `key` is left as it was.
    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        placeholder: bool,
        now: Instant,
    ) -> Result<u64, OutOfMemory> {
        self.make_room(key, footprint(key, &value), now)?;
        self.remove(key);
        let cas = self.new_cas();
        let tick = is_result_key(key).then(|| self.new_tick());
        if let Some(tick) = tick {
            self.lru.insert(tick, key.to_string());
        }
        self.bytes += footprint(key, &value);
        self.entries.insert(
            key.to_string(),
            Entry {
                value,
                cas,
                expires_at: ttl.map(|ttl| now + ttl),
                placeholder,
                tick,
            },
        );
        Ok(cas)
    }

    /// Changes a live item's value in place (append, INCR), giving it a new
    /// CAS; returns it.
    pub(super) fn rewrite(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<u64, OutOfMemory> {
        let expires_at = match ttl {
            Some(ttl) => Some(now + ttl),
            None => self.entries.get(key).and_then(|entry| entry.expires_at),
        };
        let cas = self.put(key, value, None, false, now)?;
        if let Some(entry) = self.entries.get_mut(key) {
            entry.expires_at = expires_at;
        }
        Ok(cas)
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(tick) = entry.tick {
            self.lru.remove(&tick);
        }
        self.bytes -= footprint(key, &entry.value);
        Some(entry)
    }

    /// Evicts until an item of `incoming` bytes fits at `key` (replacing
    /// what is there): expired items first, then the least recently used
    /// results; never metadata, never `key` itself.
    fn make_room(&mut self, key: &str, incoming: usize, now: Instant) -> Result<(), OutOfMemory> {
        if self.fits(key, incoming) {
            return Ok(());
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, entry)| *k != key && entry.expires_at.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for expired_key in expired {
            self.remove(&expired_key);
        }
        while !self.fits(key, incoming) {
            let oldest = self
                .lru
                .values()
                .find(|candidate| *candidate != key)
                .cloned()
                .ok_or(OutOfMemory)?;
            self.remove(&oldest);
        }
        Ok(())
    }

    /// Whether an item of `incoming` bytes at `key` (replacing what is
    /// there) stays within the limits.
    fn fits(&self, key: &str, incoming: usize) -> bool {
        let replaced = self.entries.get(key);
        let items = self.entries.len() + usize::from(replaced.is_none());
        let bytes =
            self.bytes - replaced.map_or(0, |entry| footprint(key, &entry.value)) + incoming;
        self.max_items.is_none_or(|max| items <= max)
            && self.max_bytes.is_none_or(|max| bytes <= max)
    }

    /// How many items are stored (expired ones not yet removed included).
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_result_is_evicted_first() {
        let now = Instant::now();
        let mut table = Table::new(Some(2), None);
        table
            .put("cm:q:a", b"1".to_vec(), None, false, now)
            .unwrap();
        table
            .put("cm:q:b", b"2".to_vec(), None, false, now)
            .unwrap();
        assert!(table.get("cm:q:a", now).is_some());
        table
            .put("cm:q:c", b"3".to_vec(), None, false, now)
            .unwrap();
        assert_eq!(table.len(), 2);
        assert!(table.get("cm:q:b", now).is_none());
        assert!(table.get("cm:q:a", now).is_some());
        assert!(table.get("cm:q:c", now).is_some());
    }

    #[test]
    fn byte_limit_evicts_and_expired_items_go_first() {
        let now = Instant::now();
        let one = footprint("cm:q:a", &[0; 100]);
        let mut table = Table::new(None, Some(2 * one));
        table.put("cm:q:a", vec![0; 100], None, false, now).unwrap();
        let ttl = Some(Duration::from_secs(1));
        table.put("cm:f:b", vec![0; 100], ttl, false, now).unwrap();
        let later = now + Duration::from_secs(2);
        table
            .put("cm:q:c", vec![0; 100], None, false, later)
            .unwrap();
        assert!(table.get("cm:q:a", later).is_some());
        assert!(table.get("cm:f:b", later).is_none());
        assert!(table.get("cm:q:c", later).is_some());
    }

    #[test]
    fn metadata_is_never_evicted_and_a_write_that_does_not_fit_is_refused() {
        let now = Instant::now();
        let mut table = Table::new(Some(2), None);
        table
            .put("cm:f:list", b"m1 ".to_vec(), None, false, now)
            .unwrap();
        table
            .put("cm:q:r", b"rows".to_vec(), None, false, now)
            .unwrap();
        // Room for the generation is made by evicting the result, even
        // though the flush list is older.
        table
            .put("cm:g:t", b"7".to_vec(), None, false, now)
            .unwrap();
        assert!(table.get("cm:q:r", now).is_none());
        assert_eq!(table.get("cm:f:list", now).unwrap().value, b"m1 ");
        // Nothing left to evict: refused, and neither item is touched.
        assert_eq!(
            table.put("cm:hb:h", b"v".to_vec(), None, false, now),
            Err(OutOfMemory)
        );
        assert_eq!(
            table.put("cm:q:r", b"rows".to_vec(), None, false, now),
            Err(OutOfMemory)
        );
        // Replacing an item in place needs no extra room.
        table
            .rewrite("cm:f:list", b"m1 m2 ".to_vec(), None, now)
            .unwrap();
        assert_eq!(table.get("cm:f:list", now).unwrap().value, b"m1 m2 ");
        assert!(table.get("cm:g:t", now).is_some());
    }

    #[test]
    fn refused_rewrite_keeps_the_old_value() {
        let now = Instant::now();
        let mut table = Table::new(None, Some(footprint("cm:f:l", &[0; 10])));
        table.put("cm:f:l", vec![0; 10], None, false, now).unwrap();
        assert_eq!(
            table.rewrite("cm:f:l", vec![0; 11], None, now),
            Err(OutOfMemory)
        );
        assert_eq!(table.get("cm:f:l", now).unwrap().value, [0; 10]);
    }

    #[test]
    fn expired_items_read_as_missing_and_cas_changes_on_every_write() {
        let now = Instant::now();
        let mut table = Table::new(None, None);
        let first = table
            .put("k", b"v".to_vec(), Some(Duration::from_secs(1)), false, now)
            .unwrap();
        let second = table.rewrite("k", b"vv".to_vec(), None, now).unwrap();
        assert_ne!(first, second);
        assert_eq!(table.get("k", now).unwrap().value, b"vv");
        assert!(table.get("k", now + Duration::from_secs(1)).is_none());
        assert_eq!(table.len(), 0);
    }
}
