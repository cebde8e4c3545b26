//! Property tests: every message type survives encode -> decode unchanged,
//! with the Xid† field decided by the streamed-block state, and no input of
//! any shape makes the decoder panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic on what it asserts

use bytes::Bytes;
use cm_pgoutput::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn ts() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

/// Identifiers and gids: any text without NUL (PostgreSQL strings cannot hold one).
fn ident() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn blob() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn column_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        blob().prop_map(ColumnValue::Text),
        blob().prop_map(ColumnValue::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    vec(column_value(), 0..6).prop_map(|columns| TupleData { columns })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn relation_column() -> impl Strategy<Value = RelationColumn> {
    (any::<u8>(), ident(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| RelationColumn {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    )
}

/// Messages that carry the Xid† field, with `xid` present or not.
fn change_message(xid: Option<u32>) -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        (
            any::<u32>(),
            ident(),
            ident(),
            identity(),
            vec(relation_column(), 0..5)
        )
            .prop_map(
                move |(rel_id, namespace, name, replica_identity, columns)| {
                    LogicalMessage::Relation(Relation {
                        xid,
                        rel_id,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }
            ),
        (any::<u32>(), ident(), ident()).prop_map(move |(type_oid, namespace, name)| {
            LogicalMessage::Type(Type {
                xid,
                type_oid,
                namespace,
                name,
            })
        }),
        (any::<u32>(), tuple()).prop_map(move |(rel_id, new)| LogicalMessage::Insert(Insert {
            xid,
            rel_id,
            new
        })),
        (any::<u32>(), option::of(old_tuple()), tuple()).prop_map(move |(rel_id, old, new)| {
            LogicalMessage::Update(Update {
                xid,
                rel_id,
                old,
                new,
            })
        }),
        (any::<u32>(), old_tuple()).prop_map(move |(rel_id, old)| LogicalMessage::Delete(Delete {
            xid,
            rel_id,
            old
        })),
        (any::<u8>(), vec(any::<u32>(), 0..6)).prop_map(move |(flags, rel_ids)| {
            LogicalMessage::Truncate(Truncate {
                xid,
                flags,
                rel_ids,
            })
        }),
        (any::<u8>(), lsn(), ident(), blob()).prop_map(move |(flags, lsn, prefix, content)| {
            LogicalMessage::Message(Message {
                xid,
                flags,
                lsn,
                prefix,
                content,
            })
        }),
    ]
}

fn prepare() -> impl Strategy<Value = Prepare> {
    (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), ident()).prop_map(
        |(flags, prepare_lsn, end_lsn, prepare_ts, xid, gid)| Prepare {
            flags,
            prepare_lsn,
            end_lsn,
            prepare_ts,
            xid,
            gid,
        },
    )
}

/// Messages whose layout does not depend on the streamed-block state.
fn framing_message() -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        (lsn(), ts(), any::<u32>()).prop_map(|(final_lsn, commit_ts, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_ts,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), ts()).prop_map(|(flags, commit_lsn, end_lsn, commit_ts)| {
            LogicalMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts,
            })
        }),
        (lsn(), ident())
            .prop_map(|(origin_lsn, name)| LogicalMessage::Origin(Origin { origin_lsn, name })),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), ts()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_ts)| {
                LogicalMessage::StreamCommit(StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_ts,
                })
            }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(xid, subxid)| {
            LogicalMessage::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort: None,
            })
        }),
        (lsn(), lsn(), ts(), any::<u32>(), ident()).prop_map(
            |(prepare_lsn, end_lsn, prepare_ts, xid, gid)| {
                LogicalMessage::BeginPrepare(BeginPrepare {
                    prepare_lsn,
                    end_lsn,
                    prepare_ts,
                    xid,
                    gid,
                })
            }
        ),
        prepare().prop_map(LogicalMessage::Prepare),
        prepare().prop_map(LogicalMessage::StreamPrepare),
        (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), ident()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_ts, xid, gid)| {
                LogicalMessage::CommitPrepared(CommitPrepared {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_ts,
                    xid,
                    gid,
                })
            }
        ),
        (any::<u8>(), lsn(), lsn(), ts(), ts(), any::<u32>(), ident()).prop_map(
            |(flags, prepare_end_lsn, rollback_end_lsn, prepare_ts, rollback_ts, xid, gid)| {
                LogicalMessage::RollbackPrepared(RollbackPrepared {
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_ts,
                    rollback_ts,
                    xid,
                    gid,
                })
            }
        ),
    ]
}

proptest! {
    #[test]
    fn messages_outside_streams_round_trip(
        msg in prop_oneof![change_message(None), framing_message()]
    ) {
        let bytes = encode_message(&msg);
        prop_assert_eq!(decode_message(bytes, DecodeContext::default()), Ok(msg));
    }

    #[test]
    fn streamed_blocks_round_trip_with_xid_from_protocol_state(
        xid in any::<u32>(),
        first_segment in any::<bool>(),
        changes in vec(change_message(None), 0..6),
        after in framing_message(),
    ) {
        // Inside S..E every change message carries the block's xid.
        let inside: Vec<LogicalMessage> = changes.into_iter().map(|m| with_xid(m, xid)).collect();
        let mut stream = vec![LogicalMessage::StreamStart(StreamStart { xid, first_segment })];
        stream.extend(inside);
        stream.push(LogicalMessage::StreamStop);
        stream.push(after);
        let mut decoder = Decoder::new();
        for msg in stream {
            prop_assert_eq!(decoder.decode(encode_message(&msg)), Ok(msg));
        }
        prop_assert_eq!(decoder.open_stream(), None);
    }

    #[test]
    fn v4_parallel_stream_abort_round_trips(
        xid in any::<u32>(), subxid in any::<u32>(), abort_lsn in lsn(), abort_ts in ts()
    ) {
        let msg = LogicalMessage::StreamAbort(StreamAbort {
            xid,
            subxid,
            abort: Some(AbortInfo { abort_lsn, abort_ts }),
        });
        let mut decoder = Decoder::with_parallel_streaming();
        prop_assert_eq!(decoder.decode(encode_message(&msg)), Ok(msg));
    }

    #[test]
    fn replication_framing_round_trips(
        wal_start in lsn(), wal_end in lsn(), send_time in ts(), data in blob(),
        reply_requested in any::<bool>(), flush in lsn(),
    ) {
        let x = ReplicationMessage::XLogData(XLogData { wal_start, wal_end, send_time, data });
        prop_assert_eq!(ReplicationMessage::parse(x.encode()), Ok(x));
        let k = ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
            wal_end, send_time, reply_requested,
        });
        prop_assert_eq!(ReplicationMessage::parse(k.encode()), Ok(k));
        let r = StandbyStatusUpdate { write: wal_end, flush, apply: flush, send_time, reply_requested };
        prop_assert_eq!(StandbyStatusUpdate::parse(r.encode()), Ok(r));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64), streamed in any::<bool>()) {
        let ctx = DecodeContext { in_streamed_block: streamed, parallel_streaming: streamed };
        let _ = decode_message(Bytes::from(bytes.clone()), ctx);
        let _ = ReplicationMessage::parse(Bytes::from(bytes));
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error(
        msg in prop_oneof![change_message(None), framing_message()]
    ) {
        let bytes = encode_message(&msg);
        for cut in 0..bytes.len() {
            prop_assert!(decode_message(bytes.slice(..cut), DecodeContext::default()).is_err());
        }
    }
}

fn with_xid(msg: LogicalMessage, xid: u32) -> LogicalMessage {
    match msg {
        LogicalMessage::Relation(m) => LogicalMessage::Relation(Relation {
            xid: Some(xid),
            ..m
        }),
        LogicalMessage::Type(m) => LogicalMessage::Type(Type {
            xid: Some(xid),
            ..m
        }),
        LogicalMessage::Insert(m) => LogicalMessage::Insert(Insert {
            xid: Some(xid),
            ..m
        }),
        LogicalMessage::Update(m) => LogicalMessage::Update(Update {
            xid: Some(xid),
            ..m
        }),
        LogicalMessage::Delete(m) => LogicalMessage::Delete(Delete {
            xid: Some(xid),
            ..m
        }),
        LogicalMessage::Truncate(m) => LogicalMessage::Truncate(Truncate {
            xid: Some(xid),
            ..m
        }),
        LogicalMessage::Message(m) => LogicalMessage::Message(Message {
            xid: Some(xid),
            ..m
        }),
        other => other,
    }
}
