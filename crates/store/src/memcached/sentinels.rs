//! Sentinels: one small item per metadata server, written by the
//! invalidator, that tells whether the server still holds what was written
//! to it. memcached keeps nothing across a restart and a `flush_all` empties
//! it; either way the flush lists it held are gone, and the results
//! registered in them would never be invalidated by a change of their rows.
//! Under `-M` nothing is evicted, so a metadata server's sentinel is missing
//! exactly when the server lost its data since the sentinel was written.
//!
//! Each server's sentinel is the first of `KeySpace::sentinel(0)`,
//! `sentinel(1)`, ... that hashes to it, so every process computes the same
//! key, and it is read on that server in the same pipelined batch as the
//! flush lists, before them: a server that restarts between the two drops
//! the connection and the read fails as a whole (docs/eviction.md).

use cm_keys::{Key, KeySpace};
use memcache::exp::{Get, GetStatus, Meta, Set};

use super::flush_lists::list_snapshot;
use super::pool::Pool;
use crate::error::StoreError;
use crate::key::validate_keys;
use crate::store::CheckedFlushLists;

/// How many candidates per server are tried before giving up on finding
/// one that hashes to a server (expected: one per server).
const CANDIDATES_PER_SERVER: usize = 64;

/// What a sentinel holds; only its presence matters.
const SENTINEL_VALUE: &[u8] = b"1";

impl Pool {
    /// The sentinel key under `space` of the server at `index`.
    pub(super) fn sentinel_of(&self, space: &KeySpace, index: usize) -> Result<Key, StoreError> {
        let tries = CANDIDATES_PER_SERVER.saturating_mul(self.servers.len());
        (0..u32::try_from(tries).unwrap_or(u32::MAX))
            .map(|n| space.sentinel(n))
            .find(|key| self.server_index(key.as_str()) == index)
            .ok_or_else(|| StoreError::Config {
                message: format!(
                    "no sentinel key hashes to server {:?} in {tries} candidates",
                    self.servers.get(index)
                ),
            })
    }

    /// Every server's sentinel key under `space`, in server order.
    pub(super) fn sentinels(&self, space: &KeySpace) -> Result<Vec<Key>, StoreError> {
        (0..self.servers.len())
            .map(|index| self.sentinel_of(space, index))
            .collect()
    }

    /// The lists' reads, each server's sentinel first; see the module docs.
    pub(super) async fn read_flush_lists_checked_now(
        &self,
        space: &KeySpace,
        list_keys: &[&str],
    ) -> Result<CheckedFlushLists, StoreError> {
        validate_keys(list_keys)?;
        let mut servers: Vec<usize> = list_keys.iter().map(|k| self.server_index(k)).collect();
        servers.sort_unstable();
        servers.dedup();
        let sentinels = servers
            .iter()
            .map(|&index| self.sentinel_of(space, index))
            .collect::<Result<Vec<Key>, StoreError>>()?;
        let reads = sentinels
            .iter()
            .map(|key| Get::new(key.as_str()).without_value())
            .chain(
                list_keys
                    .iter()
                    .map(|list| Get::new(list).meta(Meta::NONE.cas())),
            )
            .collect();
        let mut reads = self.run_many("read_flush_lists", reads).await?;
        let list_reads = reads.split_off(sentinels.len().min(reads.len()));
        let lost_servers = servers
            .iter()
            .zip(&reads)
            .filter(|(_, read)| read.status == GetStatus::Miss)
            .map(|(&index, _)| self.servers.get(index).cloned().unwrap_or_default())
            .collect();
        let lists = list_keys
            .iter()
            .zip(list_reads)
            .map(|(list, read)| list_snapshot(list, read))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(CheckedFlushLists {
            lists,
            lost_servers,
        })
    }

    /// Writes `sentinels` (every server's, from [`Pool::sentinels`]),
    /// without a TTL.
    pub(super) async fn write_sentinels_now(&self, sentinels: &[Key]) -> Result<(), StoreError> {
        let writes = sentinels
            .iter()
            .map(|key| Set::new(key.as_str(), SENTINEL_VALUE))
            .collect();
        let written = self.run_many("write_sentinels", writes).await?;
        match sentinels.iter().zip(written).find(|(_, w)| !w.applied()) {
            Some((key, _)) => Err(StoreError::NotStored {
                key: key.as_str().to_owned(),
            }),
            None => Ok(()),
        }
    }
}
