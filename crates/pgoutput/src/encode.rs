//! The inverse of the decoder: writes [`LogicalMessage`]s as pgoutput bytes.
//!
//! Only tests, the fuzz target and fake servers need this (feature `encode`).
//! The Xid† field is written when the message carries `Some(xid)`; decode the
//! result with `in_streamed_block` set accordingly.

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::{Lsn, PgTimestamp};
use crate::message::*;
use crate::tuple::{ColumnValue, TupleData};

/// Encodes one message as the pgoutput payload PostgreSQL would send.
pub fn encode_message(message: &LogicalMessage) -> Bytes {
    let mut w = Writer(BytesMut::new());
    w.0.put_u8(message.tag());
    match message {
        LogicalMessage::Begin(m) => {
            w.lsn(m.final_lsn).ts(m.commit_ts).0.put_u32(m.xid);
        }
        LogicalMessage::Commit(m) => {
            w.0.put_u8(m.flags);
            w.lsn(m.commit_lsn).lsn(m.end_lsn).ts(m.commit_ts);
        }
        LogicalMessage::Origin(m) => {
            w.lsn(m.origin_lsn).cstr(&m.name);
        }
        LogicalMessage::Relation(m) => {
            w.xid(m.xid).0.put_u32(m.rel_id);
            w.cstr(&m.namespace).cstr(&m.name);
            w.0.put_u8(m.replica_identity.as_byte());
            w.0.put_i16(len_i16(m.columns.len()));
            for col in &m.columns {
                w.0.put_u8(col.flags);
                w.cstr(&col.name).0.put_u32(col.type_oid);
                w.0.put_i32(col.type_modifier);
            }
        }
        LogicalMessage::Type(m) => {
            w.xid(m.xid).0.put_u32(m.type_oid);
            w.cstr(&m.namespace).cstr(&m.name);
        }
        LogicalMessage::Insert(m) => {
            w.xid(m.xid).0.put_u32(m.rel_id);
            w.0.put_u8(b'N');
            w.tuple(&m.new);
        }
        LogicalMessage::Update(m) => {
            w.xid(m.xid).0.put_u32(m.rel_id);
            if let Some(old) = &m.old {
                w.old_tuple(old);
            }
            w.0.put_u8(b'N');
            w.tuple(&m.new);
        }
        LogicalMessage::Delete(m) => {
            w.xid(m.xid).0.put_u32(m.rel_id);
            w.old_tuple(&m.old);
        }
        LogicalMessage::Truncate(m) => {
            w.xid(m.xid).0.put_i32(len_i32(m.rel_ids.len()));
            w.0.put_u8(m.flags);
            for rel_id in &m.rel_ids {
                w.0.put_u32(*rel_id);
            }
        }
        LogicalMessage::Message(m) => {
            w.xid(m.xid).0.put_u8(m.flags);
            w.lsn(m.lsn).cstr(&m.prefix);
            w.0.put_i32(len_i32(m.content.len()));
            w.0.put_slice(&m.content);
        }
        LogicalMessage::StreamStart(m) => {
            w.0.put_u32(m.xid);
            w.0.put_u8(u8::from(m.first_segment));
        }
        LogicalMessage::StreamStop => {}
        LogicalMessage::StreamCommit(m) => {
            w.0.put_u32(m.xid);
            w.0.put_u8(m.flags);
            w.lsn(m.commit_lsn).lsn(m.end_lsn).ts(m.commit_ts);
        }
        LogicalMessage::StreamAbort(m) => {
            w.0.put_u32(m.xid);
            w.0.put_u32(m.subxid);
            if let Some(abort) = &m.abort {
                w.lsn(abort.abort_lsn).ts(abort.abort_ts);
            }
        }
        LogicalMessage::BeginPrepare(m) => {
            w.lsn(m.prepare_lsn).lsn(m.end_lsn).ts(m.prepare_ts);
            w.0.put_u32(m.xid);
            w.cstr(&m.gid);
        }
        LogicalMessage::Prepare(m) | LogicalMessage::StreamPrepare(m) => {
            w.0.put_u8(m.flags);
            w.lsn(m.prepare_lsn).lsn(m.end_lsn).ts(m.prepare_ts);
            w.0.put_u32(m.xid);
            w.cstr(&m.gid);
        }
        LogicalMessage::CommitPrepared(m) => {
            w.0.put_u8(m.flags);
            w.lsn(m.commit_lsn).lsn(m.end_lsn).ts(m.commit_ts);
            w.0.put_u32(m.xid);
            w.cstr(&m.gid);
        }
        LogicalMessage::RollbackPrepared(m) => {
            w.0.put_u8(m.flags);
            w.lsn(m.prepare_end_lsn).lsn(m.rollback_end_lsn);
            w.ts(m.prepare_ts).ts(m.rollback_ts);
            w.0.put_u32(m.xid);
            w.cstr(&m.gid);
        }
    }
    w.0.freeze()
}

/// Counts beyond the wire's integer range cannot be encoded; saturate so a
/// test that builds such a message sees a decode mismatch, not a panic.
fn len_i16(n: usize) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

struct Writer(BytesMut);

impl Writer {
    fn lsn(&mut self, lsn: Lsn) -> &mut Self {
        self.0.put_u64(lsn.0);
        self
    }

    fn ts(&mut self, ts: PgTimestamp) -> &mut Self {
        self.0.put_i64(ts.0);
        self
    }

    fn xid(&mut self, xid: Option<Xid>) -> &mut Self {
        if let Some(xid) = xid {
            self.0.put_u32(xid);
        }
        self
    }

    fn cstr(&mut self, s: &str) -> &mut Self {
        self.0.put_slice(s.as_bytes());
        self.0.put_u8(0);
        self
    }

    fn old_tuple(&mut self, old: &OldTuple) {
        let marker = match old {
            OldTuple::Key(_) => b'K',
            OldTuple::Full(_) => b'O',
        };
        self.0.put_u8(marker);
        self.tuple(old.tuple());
    }

    fn tuple(&mut self, tuple: &TupleData) {
        self.0.put_i16(len_i16(tuple.columns.len()));
        for value in &tuple.columns {
            match value {
                ColumnValue::Null => self.0.put_u8(b'n'),
                ColumnValue::UnchangedToast => self.0.put_u8(b'u'),
                ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => {
                    let kind = if matches!(value, ColumnValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    };
                    self.0.put_u8(kind);
                    self.0.put_i32(len_i32(bytes.len()));
                    self.0.put_slice(bytes);
                }
            }
        }
    }
}
