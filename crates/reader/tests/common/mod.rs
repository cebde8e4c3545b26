//! The harness every reader test runs on: a real PostgreSQL with a logical
//! slot, a real memcached, a [`CachingClient`], and [`Harness::invalidate`],
//! which applies the slot's changes the way the invalidator will.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cm_keys::{
    derive, discover, images_from_pgoutput, ChangeKind, Heartbeat, Key, KeySpace, SchemaConfig,
    SchemaModel, TableName,
};
use cm_pgoutput::{Decoder, LogicalMessage, Relation};
use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::{CacheStore, MemcachedConfig, MemcachedStore};
use cm_testkit::{TestMemcached, TestPostgres};
use tokio_postgres::Client;

pub mod pause;

/// Authors and books; `book.status` is a predicate set, `book.author_id`
/// one through its FK; a view joins them. Replica identity FULL so that
/// old row images carry every column (what the deployment guide asks for).
pub const SCHEMA: &str = "
CREATE TABLE author (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE book (id int PRIMARY KEY, author_id int REFERENCES author(id),
                   title text NOT NULL, status text NOT NULL DEFAULT 'draft');
ALTER TABLE author REPLICA IDENTITY FULL;
ALTER TABLE book REPLICA IDENTITY FULL;
CREATE VIEW book_with_author AS
  SELECT b.id, b.title, b.status, b.author_id, a.name AS author
  FROM book b JOIN author a ON a.id = b.author_id;
INSERT INTO author VALUES (1, 'Ann'), (2, 'Bob'), (3, 'Cy');
INSERT INTO book VALUES (10, 1, 'A1', 'published'), (11, 1, 'A2', 'draft'),
                        (20, 2, 'B1', 'published');
";

pub const MAPPING: &str = "[tables.\"public.book\"]\npredicates = [[\"status\"]]\n";

/// What the invalidator would do after commit: GUCs it pins on its session.
const PINNED: &str = "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
                      SET IntervalStyle = postgres; SET client_encoding = 'UTF8';";

pub struct Harness {
    pub pg: TestPostgres,
    pub memcached: Option<TestMemcached>,
    pub space: KeySpace,
    pub store: Arc<dyn CacheStore>,
    pub model: Arc<SchemaModel>,
    pub cache: Arc<QueryCache>,
    pub client: CachingClient<Client>,
    /// The invalidator's own connection (slot reads).
    admin: Client,
    slot: String,
}

/// Counts of what one [`Harness::invalidate`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub changes: usize,
    pub deleted: BTreeSet<String>,
    pub bumped: BTreeSet<Key>,
}

/// A connection to `url`, with TLS as its `sslmode` says (`cm_tls`).
pub async fn connect(url: &str) -> Client {
    let (client, connection) = cm_tls::connect(url).await.unwrap();
    tokio::spawn(connection);
    client
}

impl Harness {
    /// The default schema, a shared-or-own memcached, default options.
    pub async fn start() -> Harness {
        Harness::with(SCHEMA, MAPPING, None, ReaderOptions::default()).await
    }

    /// `schema` and `mapping`; `memcached_addr` overrides the test kit's.
    pub async fn with(
        schema: &str,
        mapping: &str,
        memcached_addr: Option<String>,
        options: ReaderOptions,
    ) -> Harness {
        let store_config = move |kit: &TestMemcached| {
            MemcachedConfig::new([memcached_addr.unwrap_or_else(|| kit.addr().to_owned())])
        };
        Harness::with_store(schema, mapping, store_config, options).await
    }

    /// `schema` and `mapping`, with the store `store_config` builds from the
    /// test kit's memcached (whose key prefix the harness uses).
    pub async fn with_store(
        schema: &str,
        mapping: &str,
        store_config: impl FnOnce(&TestMemcached) -> MemcachedConfig,
        options: ReaderOptions,
    ) -> Harness {
        // The slot below streams `cm_pub`.
        let options = ReaderOptions {
            publication: Some("cm_pub".into()),
            ..options
        };
        let (pg, memcached) = tokio::task::spawn_blocking(|| {
            (
                TestPostgres::start().unwrap(),
                TestMemcached::start().unwrap(),
            )
        })
        .await
        .unwrap();
        let url = pg.url();
        Harness::on(pg, memcached, &url, schema, mapping, store_config, options).await
    }

    /// The default schema, mapping and options on `pg`, every connection
    /// opened with `url` (its URL with TLS parameters, say).
    pub async fn on_server(pg: TestPostgres, url: &str) -> Harness {
        let memcached = tokio::task::spawn_blocking(TestMemcached::start)
            .await
            .unwrap()
            .unwrap();
        let store_config = |kit: &TestMemcached| MemcachedConfig::new([kit.addr().to_owned()]);
        let options = ReaderOptions {
            publication: Some("cm_pub".into()),
            ..ReaderOptions::default()
        };
        Harness::on(pg, memcached, url, SCHEMA, MAPPING, store_config, options).await
    }

    async fn on(
        pg: TestPostgres,
        memcached: TestMemcached,
        url: &str,
        schema: &str,
        mapping: &str,
        store_config: impl FnOnce(&TestMemcached) -> MemcachedConfig,
        options: ReaderOptions,
    ) -> Harness {
        let slot = pg.unique_name("reader");
        pg.psql(schema).unwrap();
        pg.psql(&format!(
            "CREATE PUBLICATION cm_pub FOR ALL TABLES;
             SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput');"
        ))
        .unwrap();
        let admin = connect(url).await;
        admin.batch_execute(PINNED).await.unwrap();
        let config = SchemaConfig::from_toml_str(mapping).unwrap();
        let model = Arc::new(SchemaModel::build(discover(&admin).await.unwrap(), &config).unwrap());
        let space = KeySpace::new(memcached.key_prefix()).unwrap();
        let mut store_config = store_config(&memcached);
        store_config.timeout = Duration::from_secs(2);
        let store: Arc<dyn CacheStore> =
            Arc::new(MemcachedStore::connect(store_config).await.unwrap());
        let cache = Arc::new(
            QueryCache::new(space.clone(), store.clone(), model.clone(), options).unwrap(),
        );
        let client = CachingClient::new(connect(url).await, cache.clone());
        let harness = Harness {
            pg,
            memcached: Some(memcached),
            space,
            store,
            model,
            cache,
            client,
            admin,
            slot,
        };
        harness.heartbeat(Duration::ZERO).await;
        harness
    }

    /// Writes a heartbeat emitted `age` ago.
    pub async fn heartbeat(&self, age: Duration) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let emitted = (now - age).as_micros() as u64;
        let hb = Heartbeat::of_message(1, emitted, now.as_micros() as u64);
        let key = self.space.heartbeat();
        let _ = self
            .store
            .write_heartbeat(key.as_str(), &hb.encode(), Duration::from_secs(600))
            .await;
    }

    /// Runs `sql` in psql, a separate process, as any other writer would.
    pub fn psql(&self, sql: &str) {
        self.pg.psql(sql).unwrap();
    }

    /// Applies every change in the slot as the invalidator does: for each
    /// row change, `derive` the keys from the old and new images (built from
    /// pgoutput by `images_from_pgoutput`), read those flush lists, delete
    /// their members, clear the lists if unchanged, and bump the generations
    /// `derive` asks for (its flush keys include each changed table's "any
    /// change" list). Then it writes a fresh heartbeat.
    pub async fn invalidate(&self) -> Applied {
        let changes = self
            .admin
            .query(
                "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
                 'proto_version', '1', 'publication_names', 'cm_pub')",
                &[&self.slot],
            )
            .await
            .unwrap();
        let mut decoder = Decoder::new();
        let mut relations: BTreeMap<u32, Relation> = BTreeMap::new();
        let mut flush: BTreeSet<Key> = BTreeSet::new();
        let mut bump: BTreeSet<Key> = BTreeSet::new();
        let mut applied = Applied::default();
        for row in changes {
            let payload: Vec<u8> = row.get(0);
            let message = decoder.decode(Bytes::from(payload)).unwrap();
            let (rel_ids, kind, old, new) = match message {
                LogicalMessage::Relation(r) => {
                    relations.insert(r.rel_id, r);
                    continue;
                }
                LogicalMessage::Insert(i) => {
                    (vec![i.rel_id], ChangeKind::Insert, None, Some(i.new))
                }
                LogicalMessage::Update(u) => {
                    (vec![u.rel_id], ChangeKind::Update, u.old, Some(u.new))
                }
                LogicalMessage::Delete(d) => {
                    (vec![d.rel_id], ChangeKind::Delete, Some(d.old), None)
                }
                LogicalMessage::Truncate(t) => (t.rel_ids, ChangeKind::Truncate, None, None),
                _ => continue,
            };
            for rel_id in rel_ids {
                let relation = &relations[&rel_id];
                let name = TableName::new(relation.namespace.clone(), relation.name.clone());
                let table = self.model.table(&name).expect("a table of the model");
                let images =
                    images_from_pgoutput(relation, kind, old.as_ref(), new.as_ref()).unwrap();
                let inv = derive(
                    &self.space,
                    table,
                    kind,
                    images.old.as_ref(),
                    images.new.as_ref(),
                );
                flush.extend(inv.flush_keys().into_iter().cloned());
                if inv.bump_table_generation {
                    bump.insert(inv.table_generation.clone());
                }
                applied.changes += 1;
            }
        }
        let keys: Vec<&str> = flush.iter().map(Key::as_str).collect();
        let lists = self.store.read_flush_lists(&keys).await.unwrap();
        let members: Vec<&str> = lists
            .iter()
            .flat_map(|l| l.members.iter().map(String::as_str))
            .collect();
        self.store.delete_many(&members).await.unwrap();
        applied.deleted = members.iter().map(|m| (*m).to_owned()).collect();
        let clear: Vec<(&str, u64)> = keys
            .iter()
            .zip(&lists)
            .filter_map(|(k, l)| Some((*k, l.cas?)))
            .collect();
        self.store
            .clear_flush_lists_if_unchanged(&clear)
            .await
            .unwrap();
        for key in &bump {
            self.store.bump_generation(key.as_str()).await.unwrap();
        }
        applied.bumped = bump;
        self.heartbeat(Duration::ZERO).await;
        applied
    }

    /// `psql(sql)` then [`Harness::invalidate`].
    pub async fn write(&self, sql: &str) -> Applied {
        self.psql(sql);
        self.invalidate().await
    }

    pub fn hits(&self) -> u64 {
        self.client.metrics().hits
    }
}

/// The `i32`s of column `column`.
pub fn ints(rows: &[cm_reader::CachedRow], column: &str) -> Vec<i32> {
    rows.iter().map(|r| r.get::<i32>(column)).collect()
}

/// The strings of column `column`.
pub fn texts(rows: &[cm_reader::CachedRow], column: &str) -> Vec<String> {
    rows.iter().map(|r| r.get::<String>(column)).collect()
}
