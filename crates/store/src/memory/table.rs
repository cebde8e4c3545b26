//! [`Table`]: the in-process store's items, with expiry, CAS tokens and
//! least-recently-used eviction under optional item and byte limits.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

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
    /// Position in the LRU order.
    tick: u64,
}

/// Items by key, plus the LRU order (oldest tick first).
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
        self.lru.remove(&entry.tick);
        self.lru.insert(tick, key.to_string());
        entry.tick = tick;
        Some(entry)
    }

    /// Stores an item (replacing any), evicting the least recently used
    /// items if a limit requires it; returns the new CAS.
    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        placeholder: bool,
        now: Instant,
    ) -> u64 {
        self.remove(key);
        self.make_room(footprint(key, &value), now);
        let cas = self.new_cas();
        let tick = self.new_tick();
        self.bytes += footprint(key, &value);
        self.lru.insert(tick, key.to_string());
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
        cas
    }

    /// Changes a live item's value in place (append, INCR), giving it a new
    /// CAS; returns it.
    pub(super) fn rewrite(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> u64 {
        let expires_at = match ttl {
            Some(ttl) => Some(now + ttl),
            None => self.entries.get(key).and_then(|entry| entry.expires_at),
        };
        let cas = self.put(key, value, None, false, now);
        if let Some(entry) = self.entries.get_mut(key) {
            entry.expires_at = expires_at;
        }
        cas
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.lru.remove(&entry.tick);
        self.bytes -= footprint(key, &entry.value);
        Some(entry)
    }

    /// Evicts until one more item of `incoming` bytes fits: expired items
    /// first, then the least recently used.
    fn make_room(&mut self, incoming: usize, now: Instant) {
        let over = |table: &Table| {
            table
                .max_items
                .is_some_and(|max| table.entries.len() + 1 > max)
                || table
                    .max_bytes
                    .is_some_and(|max| table.bytes + incoming > max)
        };
        if !over(self) {
            return;
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires_at.is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        while over(self) {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
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
    fn least_recently_used_item_is_evicted_first() {
        let now = Instant::now();
        let mut table = Table::new(Some(2), None);
        table.put("a", b"1".to_vec(), None, false, now);
        table.put("b", b"2".to_vec(), None, false, now);
        assert!(table.get("a", now).is_some());
        table.put("c", b"3".to_vec(), None, false, now);
        assert_eq!(table.len(), 2);
        assert!(table.get("b", now).is_none());
        assert!(table.get("a", now).is_some());
        assert!(table.get("c", now).is_some());
    }

    #[test]
    fn byte_limit_evicts_and_expired_items_go_first() {
        let now = Instant::now();
        let one = footprint("a", &[0; 100]);
        let mut table = Table::new(None, Some(2 * one));
        table.put("a", vec![0; 100], None, false, now);
        table.put("b", vec![0; 100], Some(Duration::from_secs(1)), false, now);
        let later = now + Duration::from_secs(2);
        table.put("c", vec![0; 100], None, false, later);
        assert!(table.get("a", later).is_some());
        assert!(table.get("b", later).is_none());
        assert!(table.get("c", later).is_some());
    }

    #[test]
    fn expired_items_read_as_missing_and_cas_changes_on_every_write() {
        let now = Instant::now();
        let mut table = Table::new(None, None);
        let first = table.put("k", b"v".to_vec(), Some(Duration::from_secs(1)), false, now);
        let second = table.rewrite("k", b"vv".to_vec(), None, now);
        assert_ne!(first, second);
        assert_eq!(table.get("k", now).unwrap().value, b"vv");
        assert!(table.get("k", now + Duration::from_secs(1)).is_none());
        assert_eq!(table.len(), 0);
    }
}
