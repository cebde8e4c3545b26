//! The progress record under the `hb` key ([`Heartbeat`]), which every hit
//! reads: the last heartbeat round trip, the applied LSN behind
//! read-your-writes tokens and the dispatched LSN behind replica-safe fills
//! (`docs/freshness.md`).
//!
//! One task writes the record, one write at a time, always the newest
//! values, so it never goes backwards and a burst of commits costs one
//! write per memcached round trip, not one per commit:
//!
//! * the applied LSN follows the ack gate's done position
//!   ([`cm_replication::Acker::applied`]), so it moves after every applied
//!   group and every settled keepalive;
//! * a group waits, before it deletes or bumps anything, until a record
//!   whose dispatched LSN covers its last commit is written
//!   ([`DispatchGate`]); the wait runs beside the group's first flush-list
//!   read, so it adds no round trip;
//! * a heartbeat message is acknowledged once a record carrying it is
//!   written.

use std::time::{Duration, Instant};

use cm_keys::Heartbeat;
use cm_pgoutput::Lsn;
use cm_store::CacheStore;
use std::sync::Arc;
use tokio::sync::watch;

use crate::error::WorkerError;
use crate::heartbeat::unix_micros_now;
use crate::observer::Observer;
use crate::retry::retry_store;

/// The shortest time between two writes that only move the applied LSN:
/// while commits are applied back to back (a catch-up), rewriting the
/// record after every group would cost a memcached write per round trip;
/// a token read waits at most this much longer for it.
const APPLIED_PACE: Duration = Duration::from_millis(1);

/// How long the record lives without being rewritten.
const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// The positions a session starts its record from: the record the last
/// session left, when its LSNs are comparable (same system), raised to
/// what this session knows.
pub(crate) fn starting_record(
    previous: Option<Heartbeat>,
    comparable: bool,
    confirmed: Option<Lsn>,
    server_position: Lsn,
) -> Heartbeat {
    let mut record = previous.unwrap_or(Heartbeat::of_message(0, 0, 0));
    if !comparable {
        record.applied_lsn = 0;
        record.dispatched_lsn = None;
    }
    // Everything at or below the slot's confirmed position was applied by
    // some session (or lies before a new slot, whose epoch bump voids it).
    record.applied_lsn = record.applied_lsn.max(confirmed.map_or(0, |l| l.0));
    // This session may never stream a commit below the server's position
    // (a new slot starts there), so a replica fill must have replayed at
    // least that far; and what the last session dispatched may be half
    // applied and is replayed later, so its bound stays.
    let dispatched = record.dispatched_lsn.unwrap_or(0).max(server_position.0);
    record.dispatched_lsn = Some(dispatched);
    record.applied_unix_micros = unix_micros_now();
    record
}

/// The session's handle on its progress record.
pub(crate) struct Progress {
    wanted: watch::Sender<Heartbeat>,
    written: watch::Receiver<Heartbeat>,
}

/// What a group waits for before it changes the cache: a written record
/// whose dispatched LSN covers the group's last commit.
#[derive(Clone)]
pub(crate) struct DispatchGate {
    end_lsn: u64,
    written: watch::Receiver<Heartbeat>,
}

impl DispatchGate {
    /// A gate that is already open, for tests of the apply step alone.
    #[cfg(test)]
    pub(crate) fn open() -> DispatchGate {
        let mut record = Heartbeat::of_message(0, 0, 0);
        record.dispatched_lsn = Some(u64::MAX);
        DispatchGate {
            end_lsn: 0,
            written: watch::channel(record).1,
        }
    }

    /// Returns once the record covers the group. Pending forever if the
    /// writer is gone (the session is ending: nothing may be changed
    /// without the record).
    pub(crate) async fn wait(&self) {
        let end = self.end_lsn;
        wait_written(&self.written, |record| {
            record.dispatched_lsn.is_some_and(|d| d >= end)
        })
        .await;
    }
}

impl Progress {
    /// The handle and the writer task's future (run it beside the stream:
    /// it ends only with an error). `initial` must already be written.
    pub(crate) fn start(
        store: Arc<dyn CacheStore>,
        key: String,
        initial: Heartbeat,
        applied: watch::Receiver<Lsn>,
        observer: Arc<dyn Observer>,
        max_backoff: Duration,
    ) -> (Progress, impl std::future::Future<Output = WorkerError>) {
        let (wanted, wanted_rx) = watch::channel(initial);
        let (written_tx, written) = watch::channel(initial);
        let writer = Writer {
            store,
            key,
            observer,
            max_backoff,
        };
        let task = writer.run(wanted_rx, applied, written_tx, initial);
        (Progress { wanted, written }, task)
    }

    /// The gate a group ending at `end_lsn` waits at; asks for the record
    /// to cover it.
    pub(crate) fn dispatch(&self, end_lsn: Lsn) -> DispatchGate {
        self.wanted.send_if_modified(|record| {
            let raise = record.dispatched_lsn.is_none_or(|d| d < end_lsn.0);
            if raise {
                record.dispatched_lsn = Some(end_lsn.0);
            }
            raise
        });
        DispatchGate {
            end_lsn: end_lsn.0,
            written: self.written.clone(),
        }
    }

    /// Records a heartbeat round trip whose earlier transactions are all
    /// applied, and returns once it is written.
    pub(crate) async fn heartbeat(&self, heartbeat: &Heartbeat) {
        self.wanted.send_if_modified(|record| {
            let newer = heartbeat.lsn > record.lsn;
            if newer {
                record.lsn = heartbeat.lsn;
                record.emitted_unix_micros = heartbeat.emitted_unix_micros;
                record.applied_lsn = record.applied_lsn.max(heartbeat.lsn);
            }
            newer
        });
        wait_written(&self.written, |record| record.lsn >= heartbeat.lsn).await;
    }
}

/// Returns once a written record satisfies `covers`; pending forever if the
/// writer is gone (the session is ending: nothing may go on without the
/// record).
async fn wait_written(
    written: &watch::Receiver<Heartbeat>,
    covers: impl FnMut(&Heartbeat) -> bool,
) {
    let mut written = written.clone();
    let covered = written.wait_for(covers).await.is_ok();
    if !covered {
        std::future::pending::<()>().await;
    }
}

/// The one writer of a session's record.
struct Writer {
    store: Arc<dyn CacheStore>,
    key: String,
    observer: Arc<dyn Observer>,
    max_backoff: Duration,
}

impl Writer {
    /// Writes the newest wanted record whenever it differs from the last
    /// written one; retries a failing cache like every other write.
    async fn run(
        self,
        mut wanted: watch::Receiver<Heartbeat>,
        mut applied: watch::Receiver<Lsn>,
        written: watch::Sender<Heartbeat>,
        mut last: Heartbeat,
    ) -> WorkerError {
        let mut last_write = Instant::now();
        loop {
            let mut next = *wanted.borrow_and_update();
            next.applied_lsn = next.applied_lsn.max(applied.borrow_and_update().0);
            next.applied_unix_micros = last.applied_unix_micros;
            if next == last {
                let changed = tokio::select! {
                    changed = wanted.changed() => changed,
                    changed = applied.changed() => changed,
                };
                if changed.is_err() {
                    // The session dropped its handle or its stream: it is
                    // ending, and so is this task.
                    return std::future::pending().await;
                }
                continue;
            }
            let applied_only = next.lsn == last.lsn && next.dispatched_lsn == last.dispatched_lsn;
            let paced = last_write + APPLIED_PACE;
            if applied_only && Instant::now() < paced {
                // Nobody waits for this write; a dispatch or a heartbeat
                // ends the pause at once.
                tokio::select! {
                    () = tokio::time::sleep_until(paced.into()) => {}
                    _ = wanted.changed() => {}
                }
                continue;
            }
            next.applied_unix_micros = unix_micros_now();
            last_write = Instant::now();
            if let Err(error) = self.write(&next).await {
                return error;
            }
            if next.lsn > last.lsn {
                self.observer.heartbeat_written(&next);
            }
            written.send_replace(next);
            last = next;
        }
    }

    async fn write(&self, record: &Heartbeat) -> Result<(), WorkerError> {
        write_record(
            self.store.as_ref(),
            &self.key,
            record,
            self.observer.as_ref(),
            self.max_backoff,
        )
        .await
    }
}

/// Writes a record, retrying a failing cache like every other write; a
/// session's first record is written with it too, before anything else may
/// change the cache (an epoch bump included).
pub(crate) async fn write_record(
    store: &dyn CacheStore,
    key: &str,
    record: &Heartbeat,
    observer: &dyn Observer,
    max_backoff: Duration,
) -> Result<(), WorkerError> {
    let value = record.encode();
    retry_store(max_backoff, observer, "write progress record", || async {
        store.write_heartbeat(key, &value, RECORD_TTL).await
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use cm_store::MemoryStore;

    use super::*;
    use crate::observer::NoObserver;

    fn record(lsn: u64, applied: u64, dispatched: Option<u64>) -> Heartbeat {
        Heartbeat {
            lsn,
            emitted_unix_micros: 5,
            applied_unix_micros: 6,
            applied_lsn: applied,
            dispatched_lsn: dispatched,
        }
    }

    #[test]
    fn a_session_keeps_comparable_positions_and_raises_them_to_what_it_knows() {
        let old = record(10, 40, Some(90));
        let same = starting_record(Some(old), true, Some(Lsn(30)), Lsn(60));
        assert_eq!(
            (same.lsn, same.applied_lsn, same.dispatched_lsn),
            (10, 40, Some(90))
        );
        let raised = starting_record(Some(old), true, Some(Lsn(50)), Lsn(120));
        assert_eq!((raised.applied_lsn, raised.dispatched_lsn), (50, Some(120)));
        // Another system's LSNs mean nothing here.
        let other = starting_record(Some(old), false, Some(Lsn(3)), Lsn(7));
        assert_eq!((other.applied_lsn, other.dispatched_lsn), (3, Some(7)));
        let first = starting_record(None, false, None, Lsn(7));
        assert_eq!((first.applied_lsn, first.dispatched_lsn), (0, Some(7)));
    }

    #[tokio::test]
    async fn the_record_follows_applied_dispatched_and_heartbeats_and_never_regresses() {
        let store: Arc<dyn CacheStore> = Arc::new(MemoryStore::default());
        let key = "t:hb:x".to_owned();
        let initial = record(0, 0, Some(0));
        let (applied_tx, applied_rx) = watch::channel(Lsn(0));
        let (progress, task) = Progress::start(
            Arc::clone(&store),
            key.clone(),
            initial,
            applied_rx,
            Arc::new(NoObserver),
            Duration::from_millis(100),
        );
        let task = tokio::spawn(task);
        let read = || async {
            let item = cm_store::get_one(store.as_ref(), "t:hb:x").await.unwrap();
            Heartbeat::decode(&item.unwrap().value).unwrap()
        };
        progress.dispatch(Lsn(200)).wait().await;
        assert_eq!(read().await.dispatched_lsn, Some(200));
        // A lower dispatch is covered already: no wait, no regression.
        progress.dispatch(Lsn(100)).wait().await;
        assert_eq!(read().await.dispatched_lsn, Some(200));
        applied_tx.send_replace(Lsn(150));
        let mut written = progress.written.clone();
        written.wait_for(|r| r.applied_lsn == 150).await.unwrap();
        assert_eq!(read().await.applied_lsn, 150);
        progress
            .heartbeat(&Heartbeat::of_message(180, 77, 78))
            .await;
        let now = read().await;
        assert_eq!(
            (now.lsn, now.emitted_unix_micros, now.applied_lsn),
            (180, 77, 180)
        );
        applied_tx.send_replace(Lsn(170));
        progress.dispatch(Lsn(210)).wait().await;
        assert_eq!(read().await.applied_lsn, 180, "applied went backwards");
        task.abort();
    }
}
