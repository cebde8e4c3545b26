//! Is the slot the one this worker left? The epoch decision at the start of
//! every session, and the worker state record it rests on.
//!
//! The worker persists a [`WorkerState`] in the cache (the `w` key): the
//! system id, timeline and slot it streams from, and an upper bound `B` of
//! every LSN it ever confirmed to PostgreSQL ([`crate::ack_bound`] keeps `B`
//! ahead of the ack gate). On start, once it holds the slot, the whole cache
//! is flushed (epoch bump) when:
//!
//! * the slot was just created, or no state is persisted (first start,
//!   memcached restarted): results cached before may miss changes;
//! * the system id, timeline or slot name changed: LSNs may repeat, or the
//!   changes come from elsewhere;
//! * the state has no bound (written by an older version);
//! * the slot's `confirmed_flush_lsn` lies above `B`: no worker confirmed
//!   that position, so the slot was dropped and re-created (a new logical
//!   slot starts past the WAL written at its creation, which lies beyond
//!   everything any earlier slot could have sent) or advanced by someone
//!   else (`pg_replication_slot_advance`), and the writes in between were
//!   never streamed.

use std::fmt;
use std::time::Duration;

use cm_keys::{Key, WorkerState};
use cm_pgoutput::Lsn;
use cm_store::{CacheStore, StoreError};

/// How long the worker state lives in the cache without a rewrite. Every
/// session start and every raise of the bound rewrites it.
pub const STATE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why every cached result must go before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushReason {
    /// The worker created the slot in this session.
    NewSlot,
    /// No worker state in the cache.
    NoState,
    /// Another system, timeline or slot than the persisted one.
    SourceChanged {
        /// What was persisted.
        previous: WorkerState,
    },
    /// The persisted state carries no confirmation bound.
    NoBound,
    /// The slot did not report a `confirmed_flush_lsn`.
    NoConfirmedFlush,
    /// The slot confirmed past every position this worker confirmed.
    SlotAhead {
        /// The slot's `confirmed_flush_lsn`.
        confirmed: Lsn,
        /// The persisted bound.
        bound: Lsn,
    },
}

impl fmt::Display for FlushReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushReason::NewSlot => {
                f.write_str("the replication slot was just created; earlier writes are not streamed")
            }
            FlushReason::NoState => f.write_str(
                "no persisted worker state (first start, or memcached lost the state)",
            ),
            FlushReason::SourceChanged { previous } => write!(
                f,
                "the system id, timeline or slot changed since the last run \
                 (it streamed system {}, timeline {}, slot {})",
                previous.system_id, previous.timeline, previous.slot
            ),
            FlushReason::NoBound => f.write_str(
                "the persisted worker state holds no confirmation bound (written by an older version)",
            ),
            FlushReason::NoConfirmedFlush => {
                f.write_str("the slot reports no confirmed_flush_lsn")
            }
            FlushReason::SlotAhead { confirmed, bound } => write!(
                f,
                "the slot's confirmed_flush_lsn {confirmed} lies beyond every position this worker \
                 confirmed (at most {bound}): the slot was re-created or advanced by someone else, \
                 and writes in between were never streamed"
            ),
        }
    }
}

/// Whether the cache must be flushed before streaming from `current`'s
/// slot, whose `confirmed_flush_lsn` is `confirmed_flush`, given the state
/// the last session persisted. `slot_created`: this session created it.
pub fn flush_reason(
    previous: Option<&WorkerState>,
    current: &WorkerState,
    slot_created: bool,
    confirmed_flush: Option<Lsn>,
) -> Option<FlushReason> {
    if slot_created {
        return Some(FlushReason::NewSlot);
    }
    let Some(previous) = previous else {
        return Some(FlushReason::NoState);
    };
    if !previous.same_source(current) {
        return Some(FlushReason::SourceChanged {
            previous: previous.clone(),
        });
    }
    let Some(bound) = previous.confirm_bound.map(Lsn) else {
        return Some(FlushReason::NoBound);
    };
    let Some(confirmed) = confirmed_flush else {
        return Some(FlushReason::NoConfirmedFlush);
    };
    // Equal is ours: the bound may be exactly the last position confirmed.
    (confirmed > bound).then_some(FlushReason::SlotAhead { confirmed, bound })
}

/// The bound to persist when a session starts, before anything is
/// confirmed: the server's WAL position (nothing this session receives lies
/// beyond it until the keeper raises the bound), never below the slot's
/// confirmed position or a bound persisted for the same source.
///
/// A slot created later starts past the WAL written at its creation, so it
/// still lies above this bound and is detected.
pub fn starting_bound(
    previous: Option<&WorkerState>,
    current: &WorkerState,
    confirmed_flush: Option<Lsn>,
    server_position: Lsn,
) -> Lsn {
    let persisted = previous
        .filter(|previous| previous.same_source(current))
        .and_then(|previous| previous.confirm_bound)
        .map(Lsn)
        .unwrap_or_default();
    server_position
        .max(confirmed_flush.unwrap_or_default())
        .max(persisted)
}

/// The persisted state, `None` when missing or unreadable (which the epoch
/// decision treats alike).
pub async fn read_state(
    store: &dyn CacheStore,
    key: &Key,
) -> Result<Option<WorkerState>, StoreError> {
    let item = cm_store::get_one(store, key.as_str()).await?;
    Ok(item.and_then(|item| WorkerState::decode(&item.value)))
}

/// Writes the state (one `set`; the record is small and the write
/// idempotent).
pub async fn write_state(
    store: &dyn CacheStore,
    key: &Key,
    state: &WorkerState,
) -> Result<(), StoreError> {
    store
        .write_heartbeat(key.as_str(), &state.encode(), STATE_TTL)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(slot: &str, bound: Option<u64>) -> WorkerState {
        WorkerState {
            system_id: "7441403459287381234".into(),
            timeline: 1,
            slot: slot.into(),
            confirm_bound: bound,
        }
    }

    #[test]
    fn the_same_slot_confirmed_at_or_below_the_bound_keeps_the_cache() {
        let previous = state("s", Some(0x5000));
        let current = state("s", None);
        for confirmed in [0x1000, 0x5000] {
            assert_eq!(
                flush_reason(Some(&previous), &current, false, Some(Lsn(confirmed))),
                None
            );
        }
    }

    #[test]
    fn a_slot_confirmed_beyond_the_bound_flushes() {
        let previous = state("s", Some(0x5000));
        assert_eq!(
            flush_reason(Some(&previous), &state("s", None), false, Some(Lsn(0x5001))),
            Some(FlushReason::SlotAhead {
                confirmed: Lsn(0x5001),
                bound: Lsn(0x5000)
            })
        );
    }

    #[test]
    fn missing_state_bound_or_position_and_a_new_source_flush() {
        let current = state("s", None);
        let at = Some(Lsn(0x10));
        assert_eq!(
            flush_reason(None, &current, false, at),
            Some(FlushReason::NoState)
        );
        assert_eq!(
            flush_reason(Some(&state("s", None)), &current, false, at),
            Some(FlushReason::NoBound)
        );
        assert_eq!(
            flush_reason(Some(&state("s", Some(0x20))), &current, false, None),
            Some(FlushReason::NoConfirmedFlush)
        );
        assert!(matches!(
            flush_reason(Some(&state("other", Some(0x20))), &current, false, at),
            Some(FlushReason::SourceChanged { .. })
        ));
        assert_eq!(
            flush_reason(Some(&state("s", Some(0x20))), &current, true, at),
            Some(FlushReason::NewSlot)
        );
    }

    #[test]
    fn the_starting_bound_is_the_highest_known_position_of_this_source() {
        let current = state("s", None);
        let server = Lsn(0x3000);
        assert_eq!(
            starting_bound(None, &current, Some(Lsn(0x1000)), server),
            server
        );
        assert_eq!(
            starting_bound(Some(&state("s", Some(0x4000))), &current, None, server),
            Lsn(0x4000)
        );
        assert_eq!(
            starting_bound(Some(&state("x", Some(0x4000))), &current, None, server),
            server,
            "another slot's bound says nothing about this one"
        );
        assert_eq!(
            starting_bound(None, &current, Some(Lsn(0x3500)), server),
            Lsn(0x3500)
        );
    }
}
