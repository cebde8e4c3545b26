//! Real changes on a real PostgreSQL, read back with
//! `pg_logical_slot_peek_binary_changes` and decoded with the codec: insert,
//! FK-changing updates under REPLICA IDENTITY DEFAULT and FULL, a PK change,
//! deletes, a 2-row COPY, an unchanged TOAST value, logical messages and a
//! TRUNCATE ... CASCADE. Writes go through `psql`, a client that is not ours.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic on what it asserts

use std::collections::HashMap;

use bytes::Bytes;
use cm_pgoutput::*;
use cm_testkit::TestPostgres;

const SCHEMA: &str = "
CREATE TABLE author(id int PRIMARY KEY, name text);
CREATE TABLE book_default(id int PRIMARY KEY, author_id int REFERENCES author(id), title text);
CREATE TABLE book_full(id int PRIMARY KEY, author_id int REFERENCES author(id), title text);
ALTER TABLE book_full REPLICA IDENTITY FULL;
CREATE TABLE doc(id int PRIMARY KEY, grp int, body text);
ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO author VALUES (1, 'a1'), (2, 'a2');
-- Publication before slot: docs/pgoutput.md section 1.
CREATE PUBLICATION cm_pub FOR ALL TABLES;
SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput');
";

/// Each statement runs in its own transaction (psql autocommit), in order.
const CHANGES: &str = "
INSERT INTO book_default VALUES (10, 1, 't');
INSERT INTO book_full VALUES (10, 1, 't');
UPDATE book_default SET author_id = 2 WHERE id = 10;
UPDATE book_full SET author_id = 2 WHERE id = 10;
UPDATE book_default SET id = 11 WHERE id = 10;
DELETE FROM book_default WHERE id = 11;
DELETE FROM book_full WHERE id = 10;
COPY book_default (id, author_id, title) FROM STDIN;
20\t1\tcopy one
21\t2\tcopy two
\\.
INSERT INTO doc VALUES (1, 1, repeat('x', 5000));
UPDATE doc SET grp = 2 WHERE id = 1;
SELECT 1 FROM pg_logical_emit_message(true, 'cache', 'txn-msg');
SELECT 1 FROM pg_logical_emit_message(false, 'cache', 'bare-msg');
TRUNCATE author CASCADE;
";

/// Slot names are global to a server: every test names its own.
fn with_slot(sql: &str, slot: &str) -> String {
    sql.replace("{slot}", slot)
}

const PEEK: &str = "SELECT lsn, encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes(
    '{slot}', NULL, NULL,
    'proto_version', '1', 'publication_names', 'cm_pub', 'messages', 'true')";

/// One message in a form that is easy to compare: `U book_full O[10,1,t] N[10,2,t]`.
fn render(msg: &LogicalMessage, tables: &HashMap<Oid, String>) -> String {
    let table = |rel_id: &Oid| tables.get(rel_id).cloned().unwrap_or(format!("?{rel_id}"));
    let tuple = |t: &TupleData| {
        let values: Vec<String> = t
            .columns
            .iter()
            .map(|v| match v {
                ColumnValue::Null => "n".to_owned(),
                ColumnValue::UnchangedToast => "u".to_owned(),
                ColumnValue::Text(b) if b.len() > 40 => format!("<{} bytes>", b.len()),
                ColumnValue::Text(b) => String::from_utf8_lossy(b).into_owned(),
                ColumnValue::Binary(b) => format!("b{b:?}"),
            })
            .collect();
        format!("[{}]", values.join(","))
    };
    let old = |o: &OldTuple| match o {
        OldTuple::Key(t) => format!("K{}", tuple(t)),
        OldTuple::Full(t) => format!("O{}", tuple(t)),
    };
    match msg {
        LogicalMessage::Begin(_) => "B".into(),
        LogicalMessage::Commit(_) => "C".into(),
        LogicalMessage::Relation(r) => format!("R {}", r.name),
        LogicalMessage::Insert(i) => format!("I {} N{}", table(&i.rel_id), tuple(&i.new)),
        LogicalMessage::Update(u) => match &u.old {
            Some(o) => format!("U {} {} N{}", table(&u.rel_id), old(o), tuple(&u.new)),
            None => format!("U {} N{}", table(&u.rel_id), tuple(&u.new)),
        },
        LogicalMessage::Delete(d) => format!("D {} {}", table(&d.rel_id), old(&d.old)),
        LogicalMessage::Truncate(t) => {
            let mut names: Vec<String> = t.rel_ids.iter().map(table).collect();
            names.sort();
            format!("T cascade={} {}", t.cascade(), names.join(","))
        }
        LogicalMessage::Message(m) => format!(
            "M transactional={} {} {}",
            m.transactional(),
            m.prefix,
            String::from_utf8_lossy(&m.content)
        ),
        other => format!("unexpected {other:?}"),
    }
}

#[test]
fn real_changes_decode_to_the_values_written() {
    let pg = TestPostgres::start().expect("test postgres starts");
    let slot = pg.unique_name("cm_slot");
    pg.psql(&with_slot(SCHEMA, &slot)).expect("schema");
    pg.psql(CHANGES).expect("changes");
    let rows = pg.psql(&with_slot(PEEK, &slot)).expect("peek");

    let mut decoder = Decoder::new();
    let mut tables = HashMap::new();
    let mut rendered = Vec::new();
    let mut open_begin: Option<Begin> = None;
    for row in rows.lines() {
        let (lsn, hex_payload) = row.split_once('|').expect("psql row has two columns");
        let _: Lsn = lsn.parse().expect("peek lsn parses");
        let payload = Bytes::from(hex::decode(hex_payload).expect("hex payload"));
        let msg = decoder.decode(payload).expect("real pgoutput decodes");
        match &msg {
            LogicalMessage::Relation(r) => {
                tables.insert(r.rel_id, r.name.clone());
            }
            LogicalMessage::Begin(b) => open_begin = Some(b.clone()),
            LogicalMessage::Commit(c) => {
                let begin = open_begin.take().expect("Commit follows a Begin");
                assert_eq!(
                    begin.final_lsn, c.commit_lsn,
                    "Begin.final_lsn == Commit.commit_lsn"
                );
                assert!(c.end_lsn > c.commit_lsn);
            }
            _ => {}
        }
        rendered.push(render(&msg, &tables));
    }

    let expected = [
        "B",
        "R book_default",
        "I book_default N[10,1,t]",
        "C",
        "B",
        "R book_full",
        "I book_full N[10,1,t]",
        "C",
        // FK change under DEFAULT: no old tuple, the old author_id is gone.
        "B",
        "U book_default N[10,2,t]",
        "C",
        // Under FULL the whole old row comes along.
        "B",
        "U book_full O[10,1,t] N[10,2,t]",
        "C",
        // PK change: old key only, other columns 'n'.
        "B",
        "U book_default K[10,n,n] N[11,2,t]",
        "C",
        "B",
        "D book_default K[11,n,n]",
        "C",
        "B",
        "D book_full O[10,2,t]",
        "C",
        // COPY: one transaction, two rows.
        "B",
        "I book_default N[20,1,copy one]",
        "I book_default N[21,2,copy two]",
        "C",
        "B",
        "R doc",
        "I doc N[1,1,<5000 bytes>]",
        "C",
        // The untouched TOASTed body is not sent.
        "B",
        "U doc N[1,2,u]",
        "C",
        "B",
        "M transactional=true cache txn-msg",
        "C",
        "M transactional=false cache bare-msg",
        "B",
        "R author",
        "R book_default",
        "R book_full",
        "T cascade=true author,book_default,book_full",
        "C",
    ];
    assert_eq!(
        first_relations_only(&rendered),
        first_relations_only(&expected)
    );
}

/// pgoutput sends a Relation again whenever its cache entry for the table
/// is invalidated, which on a shared cluster can happen at any moment
/// (`docs/pgoutput.md` §5: a Relation may be re-sent at any time). Keeps each table's
/// first Relation, so the order in which tables first appear and every
/// change stay pinned.
fn first_relations_only<S: AsRef<str>>(events: &[S]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .map(AsRef::as_ref)
        .filter(|event| !event.starts_with("R ") || seen.insert(event.to_string()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn real_streamed_transaction_carries_xids_inside_blocks() {
    let pg = TestPostgres::start().expect("test postgres starts");
    let slot = pg.unique_name("cm_slot");
    pg.psql(&with_slot(
        "CREATE TABLE big(id int PRIMARY KEY, pad text);
         CREATE PUBLICATION cm_pub FOR ALL TABLES;
         SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput');
         INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 2000) g;",
        &slot,
    ))
    .expect("setup");
    // logical_decoding_work_mem is read by the decoding session: set it there.
    let rows = pg
        .psql(&with_slot(
            "SET logical_decoding_work_mem = '64kB';
             SELECT lsn, encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes(
               '{slot}', NULL, NULL, 'proto_version', '2', 'publication_names', 'cm_pub',
               'streaming', 'on')",
            &slot,
        ))
        .expect("peek streamed");
    let mut decoder = Decoder::new();
    let (mut blocks, mut inserts, mut commits) = (0, 0, 0);
    let mut stream_xid = None;
    for row in rows.lines() {
        let (_, hex_payload) = row.split_once('|').expect("two columns");
        let msg = decoder
            .decode(Bytes::from(hex::decode(hex_payload).expect("hex")))
            .expect("streamed pgoutput decodes");
        match msg {
            LogicalMessage::StreamStart(s) => {
                blocks += 1;
                assert_eq!(*stream_xid.get_or_insert(s.xid), s.xid);
            }
            LogicalMessage::Insert(i) => {
                assert_eq!(i.xid, stream_xid, "Xid† present exactly inside blocks");
                inserts += 1;
            }
            LogicalMessage::Relation(r) => assert_eq!(r.xid, stream_xid),
            LogicalMessage::StreamCommit(c) => {
                assert_eq!(Some(c.xid), stream_xid);
                commits += 1;
            }
            LogicalMessage::StreamStop => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        blocks >= 2,
        "the transaction was streamed in {blocks} blocks"
    );
    assert_eq!((inserts, commits), (2000, 1));
}
