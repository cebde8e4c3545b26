//! The walsender's framing inside the CopyBoth stream that START_REPLICATION
//! opens: XLogData (`w`) and primary keepalive (`k`) from the server, standby
//! status update (`r`) from us. Each is the body of one CopyData message.

use bytes::{BufMut, Bytes, BytesMut};

use crate::cursor::Cursor;
use crate::error::DecodeError;
use crate::lsn::{Lsn, PgTimestamp};

/// One CopyData body sent by a walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: a chunk of decoded WAL (one pgoutput message for logical slots).
    XLogData(XLogData),
    /// `k`: a keepalive, possibly asking for an immediate status update.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// `w`: Int64 dataStart, Int64 walEnd, Int64 sendTime, then the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// For logical slots: the record LSN of the message, 0/0 for Relation and
    /// Type, the transaction's end LSN for Commit. Not unique: Begin and every
    /// row of a COPY share one (`docs/pgoutput.md` §4.1), so never a resume position.
    pub wal_start: Lsn,
    /// Same as `wal_start` for logical walsenders.
    pub wal_end: Lsn,
    /// Server clock when sent; informational only.
    pub send_time: PgTimestamp,
    /// The pgoutput payload, for [`crate::decode_message`] or [`crate::Decoder`].
    pub data: Bytes,
}

/// `k`: Int64 walEnd, Int64 sendTime, Byte1 replyRequested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// How far the walsender has read and decoded WAL. Safe to confirm only
    /// when nothing received is still unapplied (`docs/pgoutput.md` §4.3).
    pub wal_end: Lsn,
    /// Server clock when sent.
    pub send_time: PgTimestamp,
    /// The server disconnects after `wal_sender_timeout` unless we answer.
    pub reply_requested: bool,
}

/// `r`: our progress report. Only `flush` moves a logical slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last LSN received.
    pub write: Lsn,
    /// Last LSN whose work is durably done; must only ever be a Commit's
    /// `end_lsn` or an idle keepalive's `wal_end`.
    pub flush: Lsn,
    /// Last LSN applied; we report `flush`.
    pub apply: Lsn,
    /// Our clock.
    pub send_time: PgTimestamp,
    /// Ask the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

/// Byte length of an encoded standby status update, tag included.
pub const STANDBY_STATUS_UPDATE_LEN: usize = 34;

impl ReplicationMessage {
    /// Parses one CopyData body from a walsender.
    pub fn parse(body: Bytes) -> Result<ReplicationMessage, DecodeError> {
        let mut c = Cursor::new(body);
        match c.u8("replication message tag")? {
            b'w' => Ok(ReplicationMessage::XLogData(XLogData {
                wal_start: c.lsn("XLogData.wal_start")?,
                wal_end: c.lsn("XLogData.wal_end")?,
                send_time: c.timestamp("XLogData.send_time")?,
                data: c.rest(),
            })),
            b'k' => {
                let keepalive = PrimaryKeepalive {
                    wal_end: c.lsn("Keepalive.wal_end")?,
                    send_time: c.timestamp("Keepalive.send_time")?,
                    reply_requested: c.bool("Keepalive.reply_requested")?,
                };
                c.finish("Keepalive")?;
                Ok(ReplicationMessage::PrimaryKeepalive(keepalive))
            }
            tag => Err(DecodeError::UnknownTag {
                field: "replication message",
                tag,
            }),
        }
    }

    /// Encodes the message as a walsender would (used by tests and fakes).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            ReplicationMessage::XLogData(x) => {
                buf.put_u8(b'w');
                buf.put_u64(x.wal_start.0);
                buf.put_u64(x.wal_end.0);
                buf.put_i64(x.send_time.0);
                buf.put_slice(&x.data);
            }
            ReplicationMessage::PrimaryKeepalive(k) => {
                buf.put_u8(b'k');
                buf.put_u64(k.wal_end.0);
                buf.put_i64(k.send_time.0);
                buf.put_u8(u8::from(k.reply_requested));
            }
        }
        buf.freeze()
    }
}

impl StandbyStatusUpdate {
    /// Appends the 34-byte `r` message to `buf` (the CopyData body).
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.reserve(STANDBY_STATUS_UPDATE_LEN);
        buf.put_u8(b'r');
        buf.put_u64(self.write.0);
        buf.put_u64(self.flush.0);
        buf.put_u64(self.apply.0);
        buf.put_i64(self.send_time.0);
        buf.put_u8(u8::from(self.reply_requested));
    }

    /// The 34-byte `r` message.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(STANDBY_STATUS_UPDATE_LEN);
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Parses an `r` message (what a walsender reads; used by tests and fakes).
    pub fn parse(body: Bytes) -> Result<StandbyStatusUpdate, DecodeError> {
        let mut c = Cursor::new(body);
        match c.u8("standby status update tag")? {
            b'r' => {}
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "standby status update",
                    tag,
                })
            }
        }
        let update = StandbyStatusUpdate {
            write: c.lsn("StandbyStatusUpdate.write")?,
            flush: c.lsn("StandbyStatusUpdate.flush")?,
            apply: c.lsn("StandbyStatusUpdate.apply")?,
            send_time: c.timestamp("StandbyStatusUpdate.send_time")?,
            reply_requested: c.bool("StandbyStatusUpdate.reply_requested")?,
        };
        c.finish("StandbyStatusUpdate")?;
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let clean: String = s.split_whitespace().collect();
        Bytes::from(hex::decode(clean).unwrap())
    }

    #[test]
    fn xlogdata_header_wraps_the_payload() {
        // A Commit as the walsender sends it: dataStart = walEnd = end_lsn.
        let body = hex("77 000000000d31e048 000000000d31e048 0003040979acf80d 43 00");
        let ReplicationMessage::XLogData(x) = ReplicationMessage::parse(body).unwrap() else {
            panic!("expected XLogData");
        };
        assert_eq!(x.wal_start.to_string(), "0/D31E048");
        assert_eq!(x.wal_end, x.wal_start);
        assert_eq!(x.data.as_ref(), &[0x43, 0x00]);
    }

    #[test]
    fn keepalive_carries_wal_end_and_reply_flag() {
        let body = hex("6b 00000000015a7148 0003040979acf80d 01");
        let msg = ReplicationMessage::parse(body.clone()).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: "0/15A7148".parse().unwrap(),
                send_time: PgTimestamp(0x0003_0409_79ac_f80d),
                reply_requested: true,
            })
        );
        assert_eq!(msg.encode(), body);
    }

    #[test]
    fn short_keepalive_is_truncated_not_a_panic() {
        let err = ReplicationMessage::parse(hex("6b 0000")).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
    }

    #[test]
    fn standby_status_update_is_34_bytes_in_wire_order() {
        let update = StandbyStatusUpdate {
            write: Lsn(0x15A_84A0),
            flush: Lsn(0x15A_7DC0),
            apply: Lsn(0x15A_7DC0),
            send_time: PgTimestamp(1),
            reply_requested: false,
        };
        let bytes = update.encode();
        assert_eq!(bytes.len(), STANDBY_STATUS_UPDATE_LEN);
        assert_eq!(
            bytes,
            hex("72 00000000015a84a0 00000000015a7dc0 00000000015a7dc0 0000000000000001 00")
        );
        assert_eq!(StandbyStatusUpdate::parse(bytes), Ok(update));
    }

    #[test]
    fn unknown_copydata_tag_is_rejected() {
        let err = ReplicationMessage::parse(hex("71 00")).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownTag {
                field: "replication message",
                tag: b'q'
            }
        );
    }
}
