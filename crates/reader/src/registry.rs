//! The inspection registry: the `q:` keys of stored statement results, for
//! the consistency checker to enumerate.
//!
//! One flush list per minute of fills ([`KeySpace::registry`]), appended to
//! with the flush-list TTL, so a list outlives every result registered in
//! it and the checker reads the buckets of the last flush-list TTL. Members
//! whose results expired or were invalidated are still listed; the checker
//! skips them. A bucket that reaches memcached's item size limit refuses
//! appends; this process then stops appending to it until the next minute,
//! so the registry stays bounded and cheap, at the price of missing some
//! fills of a very busy minute.
//!
//! Off the fill's path: a fill that stored its result only queues the key
//! ([`InspectionRegistry::register`], no I/O). A background task, started on
//! the tokio runtime of the first registration, gathers what arrives within
//! [`GATHER`] and appends it to the current bucket in one append. The queue
//! is bounded ([`QUEUE_CAPACITY`]): a key that finds it full is not
//! registered. The task ends when the [`crate::QueryCache`] is dropped (the
//! queue closes), after appending what was queued; a task whose runtime shut
//! down is replaced at the next registration. Its failures are only logged.
//!
//! [`KeySpace::registry`]: cm_keys::KeySpace::registry

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_keys::KeySpace;
use cm_store::{CacheStore, StoreError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::cache::QueryCache;
use crate::entry::Source;

/// The width of one registry bucket, in seconds.
const BUCKET_SECS: u64 = 60;

/// How long the background task gathers registrations before appending
/// them.
const GATHER: Duration = Duration::from_millis(5);

/// How many registrations may wait for the background task.
const QUEUE_CAPACITY: usize = 4096;

/// The bucket of the current minute.
fn current_bucket() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / BUCKET_SECS)
        .unwrap_or(0)
}

/// What the background task is asked to do.
enum Request {
    /// Register this `q:` key.
    Register(String),
    /// Answer once everything queued before has been appended.
    Flush(oneshot::Sender<()>),
}

/// The queue to the background task that appends registrations; see the
/// module docs.
#[derive(Debug)]
pub(crate) struct InspectionRegistry {
    /// `None` until the first registration starts the task.
    queue: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Writer,
}

impl InspectionRegistry {
    pub(crate) fn new(store: Arc<dyn CacheStore>, space: KeySpace, ttl: Duration) -> Self {
        InspectionRegistry {
            queue: Mutex::new(None),
            writer: Writer { store, space, ttl },
        }
    }

    /// Queues `member` for the registry; never waits, never fails the
    /// caller.
    pub(crate) fn register(&self, member: String) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let request = match queue.as_ref() {
            Some(sender) => match sender.try_send(Request::Register(member)) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    tracing::debug!("inspection registry queue full; a fill goes unregistered");
                    return;
                }
                // The task's runtime shut down: start another below.
                Err(TrySendError::Closed(request)) => request,
            },
            None => Request::Register(member),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        runtime.spawn(self.writer.clone().run(receiver));
        let _ = sender.try_send(request);
        *queue = Some(sender);
    }

    /// Waits until every registration queued so far has been appended (or
    /// has failed).
    pub(crate) async fn flush(&self) {
        let sender = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(sender) = sender else {
            return;
        };
        let (done, appended) = oneshot::channel();
        if sender.send(Request::Flush(done)).await.is_ok() {
            let _ = appended.await;
        }
    }
}

/// The background task's side: where and how registrations are appended.
#[derive(Debug, Clone)]
struct Writer {
    store: Arc<dyn CacheStore>,
    space: KeySpace,
    ttl: Duration,
}

impl Writer {
    /// Appends what arrives, a gathering at a time, until the queue closes.
    async fn run(self, mut requests: mpsc::Receiver<Request>) {
        let mut full_bucket = u64::MAX;
        let (mut members, mut waiting) = (Vec::new(), Vec::new());
        while let Some(request) = requests.recv().await {
            take(request, &mut members, &mut waiting);
            if waiting.is_empty() {
                tokio::time::sleep(GATHER).await;
            }
            while let Ok(request) = requests.try_recv() {
                take(request, &mut members, &mut waiting);
            }
            self.append(&members, &mut full_bucket).await;
            members.clear();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// One append of `members` to the current bucket, unless it was found
    /// full.
    async fn append(&self, members: &[String], full_bucket: &mut u64) {
        let bucket = current_bucket();
        if members.is_empty() || *full_bucket == bucket {
            return;
        }
        let key = self.space.registry(bucket);
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        match self
            .store
            .append_members_to_flush_list(key.as_str(), &members, self.ttl)
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotStored { .. }) => {
                tracing::debug!(bucket, "inspection registry bucket full");
                *full_bucket = bucket;
            }
            Err(error) => tracing::debug!(%error, "inspection registry append failed"),
        }
    }
}

/// Sorts one request into the members to append or the flushes waiting.
fn take(request: Request, members: &mut Vec<String>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match request {
        Request::Register(member) => members.push(member),
        Request::Flush(done) => waiting.push(done),
    }
}

impl QueryCache {
    /// Hands a stored result to the registry; failures are only logged (the
    /// registry is a diagnostic aid, never a reason not to cache).
    pub(crate) fn register_for_inspection(&self, source: Option<&Source>, member: &str) {
        if self.options.inspection_registry && source.is_some() {
            self.registry.register(member.to_owned());
        }
    }

    /// Waits until every stored result this process queued for the
    /// inspection registry ([`crate::ReaderOptions::inspection_registry`])
    /// has been appended to it, or its append failed. Registrations are
    /// appended in the background a few milliseconds after their fill;
    /// call this before shutting down to keep the last ones.
    pub async fn flush_inspection_registry(&self) {
        self.registry.flush().await;
    }

    /// Every `q:` key registered during the last flush-list TTL (plus a
    /// minute each side for clock skew), deduplicated, oldest bucket first;
    /// this process's queued registrations are appended first.
    pub(crate) async fn registered(&self) -> Result<Vec<String>, StoreError> {
        self.flush_inspection_registry().await;
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
