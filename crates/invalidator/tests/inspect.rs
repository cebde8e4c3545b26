//! The consistency checker end to end: readers cache through the real
//! reader library, psql writes, the real worker invalidates, and
//! `cm-invalidator inspect` re-runs what is cached and compares.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_keys::{discover, SchemaConfig, SchemaModel};
use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::LeaseOutcome;
use common::*;
use tokio_postgres::{Client, NoTls};

const INSPECT_SCHEMA: &str = "
CREATE TABLE author(id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE book(id int PRIMARY KEY, author_id int REFERENCES author(id), status text, title text);
ALTER TABLE author REPLICA IDENTITY FULL;
ALTER TABLE book REPLICA IDENTITY FULL;
INSERT INTO author VALUES (1, 'a1'), (2, 'a2');
INSERT INTO book VALUES (10, 1, 'draft', 't10'), (11, 1, 'draft', 't11'), (99, 2, 'draft', 't99');
";

const AUTHOR_BY_ID: &str = "SELECT id, name FROM author WHERE id = $1";

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn reader(h: &Harness) -> CachingClient<Client> {
    let client = connect(&h.env.pg.url()).await;
    let model = SchemaModel::build(
        discover(&client).await.unwrap(),
        &SchemaConfig::from_toml_str("[tables.\"public.book\"]\npredicates = [[\"status\"]]\n")
            .unwrap(),
    )
    .unwrap();
    let cache = QueryCache::new(
        h.space.clone(),
        h.store.clone(),
        Arc::new(model),
        ReaderOptions {
            publication: Some("cm_pub".into()),
            ..ReaderOptions::default()
        },
    )
    .unwrap();
    CachingClient::new(client, Arc::new(cache))
}

/// Caches a list, a get, a count and a join (each read twice: the second
/// read must be a hit).
async fn read_everything(client: &CachingClient<Client>) {
    for _ in 0..2 {
        client
            .query(
                "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id",
                &[&1i32],
            )
            .await
            .unwrap();
        client.query_one(AUTHOR_BY_ID, &[&2i32]).await.unwrap();
        client
            .count("SELECT * FROM book WHERE status = $1", &[&"draft"])
            .await
            .unwrap();
        client
            .query(
                "SELECT b.title, a.name FROM book b JOIN author a ON a.id = b.author_id",
                &[],
            )
            .await
            .unwrap();
    }
}

/// Every registered result and its bytes, read straight from memcached.
async fn registered_values(h: &Harness) -> BTreeMap<String, Vec<u8>> {
    let minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let lists: Vec<_> = (minute - 2..=minute + 1)
        .map(|b| h.space.registry(b))
        .collect();
    let names: Vec<&str> = lists.iter().map(|k| k.as_str()).collect();
    let mut members: Vec<String> = Vec::new();
    for list in h.store.read_flush_lists(&names).await.unwrap() {
        members.extend(list.members);
    }
    members.sort();
    members.dedup();
    let keys: Vec<&str> = members.iter().map(String::as_str).collect();
    let values = h.store.get_many(&keys).await.unwrap();
    members
        .into_iter()
        .zip(values)
        .filter_map(|(key, item)| item.map(|item| (key, item.value)))
        .collect()
}

fn inspect_json(h: &Harness, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["inspect", "--json", "--fence-timeout-secs", "20"];
    args.extend_from_slice(extra);
    let out = h.run_cli(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), report, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_cache_has_no_stale_results_and_a_planted_one_is_reported() {
    let h = Harness::new(
        INSPECT_SCHEMA,
        Options {
            extra_toml: MAPPING.into(),
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let client = reader(&h).await;

    read_everything(&client).await;
    assert!(client.metrics().hits >= 4, "{:?}", client.metrics());
    h.psql("UPDATE book SET title = 'new' WHERE id = 10; INSERT INTO book VALUES (12, 1, 'draft', 't12');");
    h.wait_applied().await;
    read_everything(&client).await;

    let (code, report, stderr) = inspect_json(&h, &[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["stale"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["checked"], 4, "{report:#}");
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");

    let (code, report, stderr) = inspect_json(&h, &["--sample", "1"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["checked"], 1, "{report:#}");

    // Plant a stale result: the author's old entry, put back after the
    // worker invalidated it and a reader refilled it with the new name.
    let before = registered_values(&h).await;
    h.psql("UPDATE author SET name = 'renamed' WHERE id = 2;");
    h.wait_applied().await;
    let renamed = client.query_one(AUTHOR_BY_ID, &[&2i32]).await.unwrap();
    assert_eq!(renamed.get::<&str>("name"), "renamed");
    let after = registered_values(&h).await;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(key, bytes)| before.get(*key).is_some_and(|old| old != *bytes))
        .map(|(key, _)| key)
        .collect();
    assert_eq!(changed.len(), 1, "only the author query was refilled");
    let key = changed[0].clone();
    h.store.delete_many(&[key.as_str()]).await.unwrap();
    let LeaseOutcome::Won(lease) = h
        .store
        .get_with_lease(&key, Duration::from_secs(10))
        .await
        .unwrap()
    else {
        panic!("no lease on {key}");
    };
    assert!(h
        .store
        .set_if_lease_valid(&key, &before[&key], Duration::from_secs(300), lease)
        .await
        .unwrap());
    let served = client.query_one(AUTHOR_BY_ID, &[&2i32]).await.unwrap();
    assert_eq!(
        served.get::<&str>("name"),
        "a2",
        "the planted entry is served"
    );

    let (code, report, stderr) = inspect_json(&h, &[]);
    assert_eq!(code, 1, "{report:#}\n{stderr}");
    let stale = report["stale"].as_array().unwrap();
    assert_eq!(stale.len(), 1, "{report:#}");
    assert_eq!(stale[0]["key"], key.as_str());
    assert_eq!(stale[0]["sql"], AUTHOR_BY_ID);
    assert_eq!(
        stale[0]["params"],
        serde_json::json!([{"type_oid": 23, "hex": "00000002"}])
    );
    let diff = stale[0]["diff"].as_str().unwrap();
    assert!(
        diff.contains("\"a2\"") && diff.contains("\"renamed\""),
        "{diff}"
    );

    // The human form names the key too.
    let out = h.run_cli(&["inspect"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("STALE {key}")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_without_a_running_worker_fails_naming_the_heartbeat_age() {
    let h = Harness::new(INSPECT_SCHEMA, Options::default()).await;
    h.setup();
    let out = h.run_cli(&["inspect", "--fence-timeout-secs", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no heartbeat"), "{stderr}");

    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    worker.kill_9();
    let out = h.run_cli(&["inspect", "--fence-timeout-secs", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not apply the fence") && stderr.contains(" s old"),
        "{stderr}"
    );
}
