//! The inspection registry: the `q:` keys of stored statement results, for
//! the consistency checker to enumerate.
//!
//! One flush list per minute of fills ([`KeySpace::registry`]), appended to
//! with the flush-list TTL, so a list outlives every result registered in
//! it and the checker reads the buckets of the last flush-list TTL. Members
//! whose results expired, were invalidated or never got stored are still
//! listed; the checker skips them. A bucket that reaches memcached's item
//! size limit refuses appends; this process then stops appending to it
//! until the next minute, so the registry stays bounded and cheap, at the
//! price of missing some fills of a very busy minute.
//!
//! [`KeySpace::registry`]: cm_keys::KeySpace::registry

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use cm_store::StoreError;

use crate::cache::QueryCache;
use crate::entry::Source;

/// The width of one registry bucket, in seconds.
const BUCKET_SECS: u64 = 60;

/// The bucket of the current minute.
fn current_bucket() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / BUCKET_SECS)
        .unwrap_or(0)
}

impl QueryCache {
    /// Registers a result about to be stored; failures are only logged (the
    /// registry is a diagnostic aid, never a reason not to cache).
    pub(crate) async fn register_for_inspection(&self, source: Option<&Source>, member: &str) {
        if !self.options.inspection_registry || source.is_none() {
            return;
        }
        let bucket = current_bucket();
        if self.registry_full.load(Ordering::Relaxed) == bucket {
            return;
        }
        let key = self.space.registry(bucket);
        match self
            .store
            .append_to_flush_list(key.as_str(), member, self.options.flush_list_ttl)
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotStored { .. }) => {
                tracing::debug!(bucket, "inspection registry bucket full");
                self.registry_full.store(bucket, Ordering::Relaxed);
            }
            Err(error) => tracing::debug!(%error, "inspection registry append failed"),
        }
    }

    /// Every `q:` key registered during the last flush-list TTL (plus a
    /// minute each side for clock skew), deduplicated, oldest bucket first.
    pub(crate) async fn registered(&self) -> Result<Vec<String>, StoreError> {
        let now = current_bucket();
        let span = self.options.flush_list_ttl.as_secs() / BUCKET_SECS + 1;
        let keys: Vec<_> = (now.saturating_sub(span)..=now + 1)
            .map(|bucket| self.space.registry(bucket))
            .collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for chunk in keys.chunks(256) {
            let names: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
            for list in self.store.read_flush_lists(&names).await? {
                for member in list.members {
                    if seen.insert(member.clone()) {
                        out.push(member);
                    }
                }
            }
        }
        Ok(out)
    }
}
