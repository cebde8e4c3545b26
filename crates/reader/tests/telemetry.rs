//! The reader's telemetry: its metrics reach a `metrics` recorder (a
//! thread-local one, so parallel tests do not share counts), and each read
//! has a `cached_read` span carrying its outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cm_reader::telemetry::{
    CACHE_ERRORS, CACHE_OFF_STALE_HEARTBEAT, READS, READ_DURATION, READ_THROUGH,
};
use cm_reader::{CachingPool, Outcome, QueryOptions, ReaderOptions};
use cm_testkit::MemcachedServer;
use common::{Harness, MAPPING, SCHEMA};
use deadpool_postgres::{Config, PoolConfig, Runtime};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio_postgres::NoTls;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// What the recorder saw since the last look: counters by name and labels,
/// and the number of histogram samples.
struct Seen(HashMap<(String, Vec<(String, String)>), DebugValue>);

impl Seen {
    /// Takes (and resets) the recorder's values.
    fn take(snapshotter: &Snapshotter) -> Seen {
        let values = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                ((key.name().to_owned(), labels), value)
            });
        Seen(values.collect())
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0.get(&(name.to_owned(), labels))
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.get(name, labels) {
            Some(DebugValue::Histogram(samples)) => samples.len(),
            _ => 0,
        }
    }
}

#[tokio::test]
async fn hits_misses_and_a_stale_heartbeat_move_the_readers_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Current-thread runtime: every read of this test records on this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let h = Harness::start().await;

    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let seen = Seen::take(&snapshotter);
    assert_eq!(seen.counter(READS, &[("outcome", "filled")]), 1);
    assert_eq!(seen.counter(READS, &[("outcome", "hit")]), 1);
    assert_eq!(seen.samples(READ_DURATION, &[("outcome", "filled")]), 1);
    assert_eq!(seen.samples(READ_DURATION, &[("outcome", "hit")]), 1);
    assert_eq!(seen.counter(CACHE_OFF_STALE_HEARTBEAT, &[]), 0);

    // An old heartbeat, then none at all: the cache is off, and says why.
    h.heartbeat(Duration::from_secs(60)).await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.store
        .delete_many(&[h.space.heartbeat().as_str()])
        .await
        .unwrap();
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let seen = Seen::take(&snapshotter);
    assert_eq!(seen.counter(CACHE_OFF_STALE_HEARTBEAT, &[]), 2);
    assert_eq!(seen.counter(READS, &[("outcome", "read_through")]), 2);
    assert_eq!(
        seen.counter(READ_THROUGH, &[("reason", "stale_heartbeat")]),
        2
    );
    assert_eq!(seen.counter(READS, &[("outcome", "hit")]), 0);
    assert_eq!(h.client.metrics().stale_heartbeat, 2);

    // A benign read-through is counted under its own reason only.
    h.heartbeat(Duration::ZERO).await;
    h.client
        .with(QueryOptions::new().no_cache())
        .query(BY_AUTHOR, &[&1i32])
        .await
        .unwrap();
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let seen = Seen::take(&snapshotter);
    assert_eq!(seen.counter(READ_THROUGH, &[("reason", "no_cache")]), 1);
    assert_eq!(seen.counter(CACHE_OFF_STALE_HEARTBEAT, &[]), 0);
    assert_eq!(seen.counter(READS, &[("outcome", "hit")]), 1);
}

#[tokio::test]
async fn a_stopped_memcached_shows_as_degraded_reads_and_cache_errors() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = tokio::task::spawn_blocking(|| MemcachedServer::start().unwrap())
        .await
        .unwrap();
    let h = Harness::with(
        SCHEMA,
        MAPPING,
        Some(server.addr()),
        ReaderOptions::default(),
    )
    .await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    drop(server);
    Seen::take(&snapshotter);
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let seen = Seen::take(&snapshotter);
    assert_eq!(seen.counter(READS, &[("outcome", "degraded")]), 1);
    assert!(seen.counter(CACHE_ERRORS, &[]) >= 1);
}

/// The fields of every closed `cached_read` span, in closing order.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

/// A layer recording `cached_read` spans' fields into [`Spans`].
#[derive(Default)]
struct Capture {
    open: Mutex<HashMap<Id, BTreeMap<String, String>>>,
    closed: Spans,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "cached_read" {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.open.lock().unwrap().insert(id.clone(), fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().get_mut(id) {
            values.record(&mut Fields(fields));
        }
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().remove(&id) {
            self.closed.0.lock().unwrap().push(fields);
        }
    }
}

#[tokio::test]
async fn each_read_has_a_span_with_its_outcome_fingerprint_tables_and_time() {
    let capture = Capture::default();
    let spans = capture.closed.clone();
    let subscriber = tracing_subscriber::registry().with(capture);
    let _default = tracing::subscriber::set_default(subscriber);
    let h = Harness::start().await;

    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.client
        .with(QueryOptions::new().no_cache())
        .query(BY_AUTHOR, &[&1i32])
        .await
        .unwrap();
    h.client
        .query("SELECT no_such_column FROM book", &[])
        .await
        .unwrap_err();

    let spans = spans.0.lock().unwrap().clone();
    let field = |i: usize, name: &str| spans[i].get(name).map(String::as_str);
    let outcomes: Vec<_> = (0..4)
        .map(|i| (field(i, "outcome"), field(i, "reason")))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("filled"), None),
            (Some("hit"), None),
            (Some("read_through"), Some("no_cache")),
            (None, None),
        ],
        "{spans:#?}"
    );
    let fingerprint = field(0, "fingerprint").unwrap();
    assert_eq!(fingerprint.len(), 16, "{spans:#?}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(field(1, "fingerprint"), Some(fingerprint));
    assert_eq!(field(2, "fingerprint"), Some(fingerprint));
    assert_eq!(field(0, "tables"), Some("public.book"));
    assert_eq!(field(1, "tables"), Some("public.book"));
    for i in 0..3 {
        assert!(field(i, "elapsed_us").is_some(), "{spans:#?}");
    }
    assert!(
        field(3, "error").is_some_and(|e| e.contains("no_such_column")),
        "{spans:#?}"
    );
}

#[tokio::test]
async fn pooled_reads_have_the_same_span_and_metrics_and_the_coarse_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let capture = Capture::default();
    let spans = capture.closed.clone();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture));
    let h = Harness::start().await;
    let config = Config {
        url: Some(h.pg.url()),
        pool: Some(PoolConfig::new(1)),
        ..Config::default()
    };
    let pool = config.create_pool(Some(Runtime::Tokio1), NoTls).unwrap();
    let db = CachingPool::new(pool, h.cache.clone());

    let mut outcomes = Vec::new();
    for options in [
        QueryOptions::new(),
        QueryOptions::new(),
        QueryOptions::new().no_cache(),
    ] {
        let (_, outcome) = db
            .with(options)
            .query_with_outcome(BY_AUTHOR, &[&1i32])
            .await
            .unwrap();
        outcomes.push(outcome);
    }
    assert_eq!(outcomes, [Outcome::Miss, Outcome::Hit, Outcome::Bypass]);

    let seen = Seen::take(&snapshotter);
    for outcome in ["filled", "hit", "read_through"] {
        assert_eq!(seen.counter(READS, &[("outcome", outcome)]), 1, "{outcome}");
        assert_eq!(seen.samples(READ_DURATION, &[("outcome", outcome)]), 1);
    }
    assert_eq!(seen.counter(READ_THROUGH, &[("reason", "no_cache")]), 1);

    let spans = spans.0.lock().unwrap().clone();
    let fields: Vec<_> = spans
        .iter()
        .map(|span| {
            let field = |name: &str| span.get(name).map(String::as_str);
            (field("outcome"), field("reason"), field("tables"))
        })
        .collect();
    assert_eq!(
        fields,
        [
            (Some("filled"), None, Some("public.book")),
            (Some("hit"), None, Some("public.book")),
            (Some("read_through"), Some("no_cache"), None),
        ],
        "{spans:#?}"
    );
}
