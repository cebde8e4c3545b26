//! Decoding pgoutput payloads into [`LogicalMessage`]s.
//!
//! Two entry points: [`decode_message`] decodes one payload given the
//! protocol state explicitly, and [`Decoder`] keeps that state itself while it
//! is fed a stream in order. The state matters for one field: the `Xid†` of
//! Relation, Type, Insert, Update, Delete, Truncate and Message is present
//! only between Stream Start and Stream Stop (`proto.c` writes it only when
//! the xid is valid, i.e. while streaming). The decoder never guesses it from
//! the message length.

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::error::DecodeError;
use crate::message::*;
use crate::tuple::{ColumnValue, TupleData};

/// What the decoder must know about the session to decode one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeContext {
    /// The payload sits between a Stream Start and its Stream Stop, so the
    /// change messages carry a leading Xid.
    pub in_streamed_block: bool,
    /// The session negotiated `streaming 'parallel'` (protocol v4), so Stream
    /// Abort carries `abort_lsn` and `abort_ts`.
    pub parallel_streaming: bool,
}

/// Decodes one pgoutput payload (the bytes after an XLogData header, or the
/// `data` column of `pg_logical_slot_peek_binary_changes`).
///
/// Trailing bytes after the last field are an error: they mean the server
/// speaks a version or option we did not negotiate, and skipping data is
/// never safe for an invalidator.
pub fn decode_message(payload: Bytes, ctx: DecodeContext) -> Result<LogicalMessage, DecodeError> {
    let mut c = Cursor::new(payload);
    let tag = c.u8("message tag")?;
    let xid = |c: &mut Cursor, field| -> Result<Option<Xid>, DecodeError> {
        ctx.in_streamed_block.then(|| c.u32(field)).transpose()
    };
    let (message, name) = match tag {
        b'B' => (LogicalMessage::Begin(begin(&mut c)?), "Begin"),
        b'C' => (LogicalMessage::Commit(commit(&mut c)?), "Commit"),
        b'O' => (LogicalMessage::Origin(origin(&mut c)?), "Origin"),
        b'R' => {
            let xid = xid(&mut c, "Relation.xid")?;
            (LogicalMessage::Relation(relation(&mut c, xid)?), "Relation")
        }
        b'Y' => {
            let xid = xid(&mut c, "Type.xid")?;
            (LogicalMessage::Type(type_message(&mut c, xid)?), "Type")
        }
        b'I' => {
            let xid = xid(&mut c, "Insert.xid")?;
            (LogicalMessage::Insert(insert(&mut c, xid)?), "Insert")
        }
        b'U' => {
            let xid = xid(&mut c, "Update.xid")?;
            (LogicalMessage::Update(update(&mut c, xid)?), "Update")
        }
        b'D' => {
            let xid = xid(&mut c, "Delete.xid")?;
            (LogicalMessage::Delete(delete(&mut c, xid)?), "Delete")
        }
        b'T' => {
            let xid = xid(&mut c, "Truncate.xid")?;
            (LogicalMessage::Truncate(truncate(&mut c, xid)?), "Truncate")
        }
        b'M' => {
            let xid = xid(&mut c, "Message.xid")?;
            (LogicalMessage::Message(message(&mut c, xid)?), "Message")
        }
        b'S' => (
            LogicalMessage::StreamStart(stream_start(&mut c)?),
            "Stream Start",
        ),
        b'E' => (LogicalMessage::StreamStop, "Stream Stop"),
        b'c' => (
            LogicalMessage::StreamCommit(stream_commit(&mut c)?),
            "Stream Commit",
        ),
        b'A' => {
            let abort = stream_abort(&mut c, ctx.parallel_streaming)?;
            (LogicalMessage::StreamAbort(abort), "Stream Abort")
        }
        b'b' => (
            LogicalMessage::BeginPrepare(begin_prepare(&mut c)?),
            "Begin Prepare",
        ),
        b'P' => (LogicalMessage::Prepare(prepare(&mut c)?), "Prepare"),
        b'K' => (
            LogicalMessage::CommitPrepared(commit_prepared(&mut c)?),
            "Commit Prepared",
        ),
        b'r' => {
            let rollback = rollback_prepared(&mut c)?;
            (
                LogicalMessage::RollbackPrepared(rollback),
                "Rollback Prepared",
            )
        }
        b'p' => {
            let prepared = prepare(&mut c)?;
            (LogicalMessage::StreamPrepare(prepared), "Stream Prepare")
        }
        tag => {
            return Err(DecodeError::UnknownTag {
                field: "pgoutput message",
                tag,
            })
        }
    };
    c.finish(name)?;
    Ok(message)
}

/// A stateful decoder for one replication session: feed it every payload in
/// stream order and it tracks whether a streamed block is open.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    open_stream: Option<Xid>,
    parallel_streaming: bool,
}

impl Decoder {
    /// A decoder for a session that did not negotiate `streaming 'parallel'`.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder for a protocol v4 session with `streaming 'parallel'`.
    pub fn with_parallel_streaming() -> Decoder {
        Decoder {
            parallel_streaming: true,
            ..Decoder::default()
        }
    }

    /// The xid of the streamed block currently open, if any.
    pub fn open_stream(&self) -> Option<Xid> {
        self.open_stream
    }

    /// Decodes the next payload of the session. The block state changes only
    /// when the payload decodes; a nested Stream Start or a stray Stream Stop
    /// is a protocol error.
    pub fn decode(&mut self, payload: Bytes) -> Result<LogicalMessage, DecodeError> {
        let ctx = DecodeContext {
            in_streamed_block: self.open_stream.is_some(),
            parallel_streaming: self.parallel_streaming,
        };
        let message = decode_message(payload, ctx)?;
        match (&message, self.open_stream) {
            (LogicalMessage::StreamStart(start), Some(open_xid)) => {
                return Err(DecodeError::NestedStreamStart {
                    xid: start.xid,
                    open_xid,
                })
            }
            (LogicalMessage::StreamStart(start), None) => self.open_stream = Some(start.xid),
            (LogicalMessage::StreamStop, None) => return Err(DecodeError::StreamStopOutsideBlock),
            (LogicalMessage::StreamStop, Some(_)) => self.open_stream = None,
            _ => {}
        }
        Ok(message)
    }
}

fn begin(c: &mut Cursor) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: c.lsn("Begin.final_lsn")?,
        commit_ts: c.timestamp("Begin.commit_ts")?,
        xid: c.u32("Begin.xid")?,
    })
}

fn commit(c: &mut Cursor) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: c.u8("Commit.flags")?,
        commit_lsn: c.lsn("Commit.commit_lsn")?,
        end_lsn: c.lsn("Commit.end_lsn")?,
        commit_ts: c.timestamp("Commit.commit_ts")?,
    })
}

fn origin(c: &mut Cursor) -> Result<Origin, DecodeError> {
    Ok(Origin {
        origin_lsn: c.lsn("Origin.origin_lsn")?,
        name: c.cstr("Origin.name")?,
    })
}

fn relation(c: &mut Cursor, xid: Option<Xid>) -> Result<Relation, DecodeError> {
    let rel_id = c.u32("Relation.rel_id")?;
    let namespace = c.cstr("Relation.namespace")?;
    let name = c.cstr("Relation.name")?;
    let identity_byte = c.u8("Relation.replica_identity")?;
    let replica_identity =
        ReplicaIdentity::from_byte(identity_byte).ok_or(DecodeError::UnknownTag {
            field: "Relation.replica_identity",
            tag: identity_byte,
        })?;
    let ncols = c.count("Relation.ncols", false)?;
    let mut columns = Vec::with_capacity(ncols.min(c.remaining()));
    for _ in 0..ncols {
        columns.push(RelationColumn {
            flags: c.u8("Relation.column.flags")?,
            name: c.cstr("Relation.column.name")?,
            type_oid: c.u32("Relation.column.type_oid")?,
            type_modifier: c.i32("Relation.column.type_modifier")?,
        });
    }
    Ok(Relation {
        xid,
        rel_id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_message(c: &mut Cursor, xid: Option<Xid>) -> Result<Type, DecodeError> {
    Ok(Type {
        xid,
        type_oid: c.u32("Type.type_oid")?,
        namespace: c.cstr("Type.namespace")?,
        name: c.cstr("Type.name")?,
    })
}

/// Reads a marker byte and fails unless it is the one expected.
fn expect_marker(c: &mut Cursor, field: &'static str, expected: u8) -> Result<(), DecodeError> {
    match c.u8(field)? {
        tag if tag == expected => Ok(()),
        tag => Err(DecodeError::UnknownTag { field, tag }),
    }
}

fn insert(c: &mut Cursor, xid: Option<Xid>) -> Result<Insert, DecodeError> {
    let rel_id = c.u32("Insert.rel_id")?;
    expect_marker(c, "Insert.new marker", b'N')?;
    Ok(Insert {
        xid,
        rel_id,
        new: tuple_data(c)?,
    })
}

fn update(c: &mut Cursor, xid: Option<Xid>) -> Result<Update, DecodeError> {
    let rel_id = c.u32("Update.rel_id")?;
    // 'K' (old key) or 'O' (old full row) may precede the mandatory 'N'.
    let (old, marker) = match c.u8("Update.tuple marker")? {
        b'K' => (
            Some(OldTuple::Key(tuple_data(c)?)),
            c.u8("Update.new marker")?,
        ),
        b'O' => (
            Some(OldTuple::Full(tuple_data(c)?)),
            c.u8("Update.new marker")?,
        ),
        marker => (None, marker),
    };
    if marker != b'N' {
        return Err(DecodeError::UnknownTag {
            field: "Update.new marker",
            tag: marker,
        });
    }
    Ok(Update {
        xid,
        rel_id,
        old,
        new: tuple_data(c)?,
    })
}

fn delete(c: &mut Cursor, xid: Option<Xid>) -> Result<Delete, DecodeError> {
    let rel_id = c.u32("Delete.rel_id")?;
    let old = match c.u8("Delete.old marker")? {
        b'K' => OldTuple::Key(tuple_data(c)?),
        b'O' => OldTuple::Full(tuple_data(c)?),
        tag => {
            return Err(DecodeError::UnknownTag {
                field: "Delete.old marker",
                tag,
            })
        }
    };
    Ok(Delete { xid, rel_id, old })
}

fn truncate(c: &mut Cursor, xid: Option<Xid>) -> Result<Truncate, DecodeError> {
    let nrels = c.count("Truncate.nrels", true)?;
    let flags = c.u8("Truncate.flags")?;
    // Never trust a count for preallocation beyond what the buffer can hold.
    let mut rel_ids = Vec::with_capacity(nrels.min(c.remaining() / 4));
    for _ in 0..nrels {
        rel_ids.push(c.u32("Truncate.rel_id")?);
    }
    Ok(Truncate {
        xid,
        flags,
        rel_ids,
    })
}

fn message(c: &mut Cursor, xid: Option<Xid>) -> Result<Message, DecodeError> {
    let flags = c.u8("Message.flags")?;
    let lsn = c.lsn("Message.lsn")?;
    let prefix = c.cstr("Message.prefix")?;
    let len = c.count("Message.content length", true)?;
    Ok(Message {
        xid,
        flags,
        lsn,
        prefix,
        content: c.bytes(len, "Message.content")?,
    })
}

fn stream_start(c: &mut Cursor) -> Result<StreamStart, DecodeError> {
    Ok(StreamStart {
        xid: c.u32("Stream Start.xid")?,
        first_segment: c.bool("Stream Start.first_segment")?,
    })
}

fn stream_commit(c: &mut Cursor) -> Result<StreamCommit, DecodeError> {
    Ok(StreamCommit {
        xid: c.u32("Stream Commit.xid")?,
        flags: c.u8("Stream Commit.flags")?,
        commit_lsn: c.lsn("Stream Commit.commit_lsn")?,
        end_lsn: c.lsn("Stream Commit.end_lsn")?,
        commit_ts: c.timestamp("Stream Commit.commit_ts")?,
    })
}

fn stream_abort(c: &mut Cursor, parallel_streaming: bool) -> Result<StreamAbort, DecodeError> {
    let xid = c.u32("Stream Abort.xid")?;
    let subxid = c.u32("Stream Abort.subxid")?;
    // proto.c writes abort_lsn/abort_ts only when the session streams in
    // parallel mode (`write_abort_info`), so the option decides, not the length.
    let abort = if parallel_streaming {
        Some(AbortInfo {
            abort_lsn: c.lsn("Stream Abort.abort_lsn")?,
            abort_ts: c.timestamp("Stream Abort.abort_ts")?,
        })
    } else {
        None
    };
    Ok(StreamAbort { xid, subxid, abort })
}

fn begin_prepare(c: &mut Cursor) -> Result<BeginPrepare, DecodeError> {
    Ok(BeginPrepare {
        prepare_lsn: c.lsn("Begin Prepare.prepare_lsn")?,
        end_lsn: c.lsn("Begin Prepare.end_lsn")?,
        prepare_ts: c.timestamp("Begin Prepare.prepare_ts")?,
        xid: c.u32("Begin Prepare.xid")?,
        gid: c.cstr("Begin Prepare.gid")?,
    })
}

/// Prepare (`P`) and Stream Prepare (`p`) share this layout.
fn prepare(c: &mut Cursor) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: c.u8("Prepare.flags")?,
        prepare_lsn: c.lsn("Prepare.prepare_lsn")?,
        end_lsn: c.lsn("Prepare.end_lsn")?,
        prepare_ts: c.timestamp("Prepare.prepare_ts")?,
        xid: c.u32("Prepare.xid")?,
        gid: c.cstr("Prepare.gid")?,
    })
}

fn commit_prepared(c: &mut Cursor) -> Result<CommitPrepared, DecodeError> {
    Ok(CommitPrepared {
        flags: c.u8("Commit Prepared.flags")?,
        commit_lsn: c.lsn("Commit Prepared.commit_lsn")?,
        end_lsn: c.lsn("Commit Prepared.end_lsn")?,
        commit_ts: c.timestamp("Commit Prepared.commit_ts")?,
        xid: c.u32("Commit Prepared.xid")?,
        gid: c.cstr("Commit Prepared.gid")?,
    })
}

fn rollback_prepared(c: &mut Cursor) -> Result<RollbackPrepared, DecodeError> {
    Ok(RollbackPrepared {
        flags: c.u8("Rollback Prepared.flags")?,
        prepare_end_lsn: c.lsn("Rollback Prepared.prepare_end_lsn")?,
        rollback_end_lsn: c.lsn("Rollback Prepared.rollback_end_lsn")?,
        prepare_ts: c.timestamp("Rollback Prepared.prepare_ts")?,
        rollback_ts: c.timestamp("Rollback Prepared.rollback_ts")?,
        xid: c.u32("Rollback Prepared.xid")?,
        gid: c.cstr("Rollback Prepared.gid")?,
    })
}

/// TupleData: Int16 ncols, then per column a kind byte and, for `t`/`b`, an
/// Int32 length and the bytes.
fn tuple_data(c: &mut Cursor) -> Result<TupleData, DecodeError> {
    let ncols = c.count("TupleData.ncols", false)?;
    // Each column needs at least its kind byte.
    let mut columns = Vec::with_capacity(ncols.min(c.remaining()));
    for _ in 0..ncols {
        let value = match c.u8("TupleData.kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => {
                let len = c.count("TupleData.text length", true)?;
                ColumnValue::Text(c.bytes(len, "TupleData.text")?)
            }
            b'b' => {
                let len = c.count("TupleData.binary length", true)?;
                ColumnValue::Binary(c.bytes(len, "TupleData.binary")?)
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "TupleData.kind",
                    tag,
                })
            }
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let clean: String = s.split_whitespace().collect();
        Bytes::from(hex::decode(clean).unwrap())
    }

    fn plain(s: &str) -> Result<LogicalMessage, DecodeError> {
        decode_message(hex(s), DecodeContext::default())
    }

    #[test]
    fn xid_presence_follows_the_streamed_block_not_the_length() {
        // Insert relid=0x4034 N [t:'1']; inside a block the same message has
        // a leading xid 0x322.
        let outside = "49 00004034 4e 0001 74 00000001 31";
        let inside = "49 00000322 00004034 4e 0001 74 00000001 31";
        let mut decoder = Decoder::new();
        let LogicalMessage::Insert(i) = decoder.decode(hex(outside)).unwrap() else {
            panic!("expected Insert");
        };
        assert_eq!((i.xid, i.rel_id), (None, 0x4034));
        decoder.decode(hex("53 00000322 01")).unwrap();
        assert_eq!(decoder.open_stream(), Some(0x322));
        let LogicalMessage::Insert(i) = decoder.decode(hex(inside)).unwrap() else {
            panic!("expected Insert");
        };
        assert_eq!((i.xid, i.rel_id), (Some(0x322), 0x4034));
        // The unstreamed bytes inside a block are misaligned and must fail,
        // not be reinterpreted.
        assert!(decoder.decode(hex(outside)).is_err());
        decoder.decode(hex("45")).unwrap();
        assert_eq!(decoder.open_stream(), None);
        assert!(decoder.decode(hex(inside)).is_err());
    }

    #[test]
    fn stream_blocks_must_nest_properly() {
        let mut decoder = Decoder::new();
        assert_eq!(
            decoder.decode(hex("45")),
            Err(DecodeError::StreamStopOutsideBlock)
        );
        decoder.decode(hex("53 00000001 01")).unwrap();
        assert_eq!(
            decoder.decode(hex("53 00000002 00")),
            Err(DecodeError::NestedStreamStart {
                xid: 2,
                open_xid: 1
            })
        );
        assert_eq!(decoder.open_stream(), Some(1));
    }

    #[test]
    fn stream_abort_v4_fields_depend_on_the_negotiated_option() {
        let v2 = "41 00000322 00000323";
        let v4 = "41 00000322 00000323 0000000001600510 000304095507f076";
        assert!(plain(v2).is_ok());
        assert!(matches!(
            plain(v4),
            Err(DecodeError::TrailingBytes { count: 16, .. })
        ));
        let parallel = DecodeContext {
            parallel_streaming: true,
            ..DecodeContext::default()
        };
        let LogicalMessage::StreamAbort(a) = decode_message(hex(v4), parallel).unwrap() else {
            panic!("expected Stream Abort");
        };
        let info = a.abort.unwrap();
        assert_eq!(info.abort_lsn.to_string(), "0/1600510");
        assert!(decode_message(hex(v2), parallel).is_err());
    }

    #[test]
    fn unknown_message_tag_is_an_error_not_a_skip() {
        assert_eq!(
            plain("5a 00"),
            Err(DecodeError::UnknownTag {
                field: "pgoutput message",
                tag: b'Z'
            })
        );
        assert!(matches!(plain(""), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn unknown_tuple_kind_and_markers_are_errors() {
        assert!(matches!(
            plain("49 00004034 4e 0001 78"),
            Err(DecodeError::UnknownTag {
                field: "TupleData.kind",
                tag: b'x'
            })
        ));
        assert!(matches!(
            plain("49 00004034 4b 0000"),
            Err(DecodeError::UnknownTag {
                field: "Insert.new marker",
                ..
            })
        ));
        assert!(matches!(
            plain("55 00004034 4b 0000 4f 0000"),
            Err(DecodeError::UnknownTag {
                field: "Update.new marker",
                ..
            })
        ));
        assert!(matches!(
            plain("44 00004034 4e 0000"),
            Err(DecodeError::UnknownTag {
                field: "Delete.old marker",
                ..
            })
        ));
        assert!(matches!(
            plain("52 00000001 00 7400 78 0000"),
            Err(DecodeError::UnknownTag {
                field: "Relation.replica_identity",
                tag: b'x'
            })
        ));
    }

    #[test]
    fn negative_and_oversized_lengths_are_rejected() {
        assert_eq!(
            plain("49 00004034 4e ffff"),
            Err(DecodeError::BadLength {
                field: "TupleData.ncols",
                length: -1
            })
        );
        assert_eq!(
            plain("49 00004034 4e 0001 74 ffffffff"),
            Err(DecodeError::BadLength {
                field: "TupleData.text length",
                length: -1
            })
        );
        assert!(matches!(
            plain("49 00004034 4e 0001 74 7fffffff 31"),
            Err(DecodeError::Truncated {
                field: "TupleData.text",
                ..
            })
        ));
        assert!(matches!(
            plain("54 7fffffff 00 00000001"),
            Err(DecodeError::Truncated {
                field: "Truncate.rel_id",
                ..
            })
        ));
        assert_eq!(
            plain("54 80000000 00"),
            Err(DecodeError::BadLength {
                field: "Truncate.nrels",
                length: i64::from(i32::MIN)
            })
        );
    }

    #[test]
    fn identifiers_must_be_utf8_and_terminated() {
        assert_eq!(
            plain("52 00000001 ff00 7400 64 0000"),
            Err(DecodeError::BadUtf8 {
                field: "Relation.namespace"
            })
        );
        assert_eq!(
            plain("4f 0000000000abcdef 7570"),
            Err(DecodeError::MissingNul {
                field: "Origin.name"
            })
        );
    }

    #[test]
    fn trailing_bytes_are_reported_with_the_message_name() {
        assert_eq!(
            plain("45 00"),
            Err(DecodeError::TrailingBytes {
                message: "Stream Stop",
                count: 1
            })
        );
    }

    #[test]
    fn stream_start_first_segment_must_be_boolean() {
        assert_eq!(
            plain("53 00000001 02"),
            Err(DecodeError::BadBool {
                field: "Stream Start.first_segment",
                value: 2
            })
        );
    }
}
