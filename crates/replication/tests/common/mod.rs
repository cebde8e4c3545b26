//! Helpers shared by the replication client's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use cm_pgoutput::{ColumnValue, LogicalMessage, Lsn, TupleData};
use cm_replication::{
    ReplicationConfig, ReplicationConnection, ReplicationStream, SlotName, StartOptions,
};
use cm_testkit::TestPostgres;
use tokio_postgres::{Client, NoTls};

pub const PUBLICATION: &str = "cm_pub";

/// An ordinary SQL connection to the test database.
pub async fn sql(pg: &TestPostgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

pub fn config(pg: &TestPostgres) -> ReplicationConfig {
    ReplicationConfig::parse(&pg.url()).unwrap()
}

/// Tables `item` and `mark`, a publication for all tables, then a slot
/// created over the replication protocol. Returns the slot name.
pub async fn setup(pg: &TestPostgres) -> SlotName {
    pg.psql(&format!(
        "CREATE TABLE item(id int PRIMARY KEY, note text);
         CREATE TABLE mark(id int PRIMARY KEY);
         CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES;"
    ))
    .unwrap();
    let slot = SlotName::new(&pg.unique_name("cm_slot")).unwrap();
    let mut conn = ReplicationConnection::connect(&config(pg)).await.unwrap();
    conn.create_slot(&slot).await.unwrap();
    conn.close().await;
    slot
}

pub async fn start(pg: &TestPostgres, slot: &SlotName) -> ReplicationStream {
    let conn = ReplicationConnection::connect(&config(pg)).await.unwrap();
    conn.start_replication(StartOptions::new(slot.clone(), [PUBLICATION]))
        .await
        .unwrap()
}

/// A transaction as received: its rendered changes and its Commit end_lsn.
#[derive(Debug, Clone)]
pub struct Txn {
    pub changes: Vec<String>,
    pub end_lsn: Lsn,
}

fn tuple(t: &TupleData) -> String {
    let values: Vec<String> = t
        .columns
        .iter()
        .map(|v| match v {
            ColumnValue::Null => "n".into(),
            ColumnValue::UnchangedToast => "u".into(),
            ColumnValue::Text(b) => String::from_utf8_lossy(b).into_owned(),
            ColumnValue::Binary(_) => "b".into(),
        })
        .collect();
    values.join(",")
}

/// Reads transactions until one that inserts `mark(id = marker)` has
/// committed; returns every transaction before it (the marker's excluded)
/// and the marker transaction's end LSN.
/// With `pace`, sleeps that long after each message (a slow consumer).
pub async fn read_until_marker(
    stream: &mut ReplicationStream,
    marker: i32,
    pace: Option<Duration>,
) -> (Vec<Txn>, Lsn) {
    let mut tables: HashMap<u32, String> = HashMap::new();
    let mut done = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut saw_marker = false;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("a message within 60 s")
            .expect("stream open")
            .expect("no stream error");
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
        let name = |rel: &u32, tables: &HashMap<u32, String>| tables[rel].clone();
        match &event.message {
            LogicalMessage::Relation(r) => {
                tables.insert(r.rel_id, r.name.clone());
            }
            LogicalMessage::Begin(_) => current.clear(),
            LogicalMessage::Insert(i) => {
                let table = name(&i.rel_id, &tables);
                if table == "mark" && tuple(&i.new) == marker.to_string() {
                    saw_marker = true;
                }
                current.push(format!("I {table} {}", tuple(&i.new)));
            }
            LogicalMessage::Update(u) => {
                current.push(format!("U {} {}", name(&u.rel_id, &tables), tuple(&u.new)))
            }
            LogicalMessage::Delete(d) => current.push(format!(
                "D {} {}",
                name(&d.rel_id, &tables),
                tuple(d.old.tuple())
            )),
            LogicalMessage::Truncate(t) => {
                let mut names: Vec<String> = t.rel_ids.iter().map(|r| name(r, &tables)).collect();
                names.sort();
                current.push(format!("T {}", names.join(",")));
            }
            LogicalMessage::Commit(c) => {
                if saw_marker {
                    return (done, c.end_lsn);
                }
                done.push(Txn {
                    changes: std::mem::take(&mut current),
                    end_lsn: c.end_lsn,
                });
            }
            _ => {}
        }
    }
}

/// The changes of each transaction, for comparing with expectations.
pub fn changes(txns: &[Txn]) -> Vec<Vec<String>> {
    txns.iter().map(|t| t.changes.clone()).collect()
}
