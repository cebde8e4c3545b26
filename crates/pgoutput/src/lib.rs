//! A sans-IO codec for PostgreSQL logical replication with the `pgoutput`
//! plugin: every message of protocol versions 1-4, TupleData, and the
//! walsender framing (XLogData `w`, keepalive `k`, standby status update `r`).
//!
//! This crate is to logical replication what `postgres-protocol` is to the
//! ordinary protocol: bytes in, typed values out, typed errors for anything
//! malformed. It must never do IO, never depend on an async runtime, never
//! panic on any input, and never silently skip a message it does not
//! understand: unknown tags, trailing bytes and impossible lengths are errors,
//! because a skipped change is a missed cache invalidation.
//!
//! ```
//! use bytes::Bytes;
//! use cm_pgoutput::{Decoder, LogicalMessage};
//!
//! // A Begin message, as captured from PostgreSQL 15.
//! let payload = Bytes::from_static(&[
//!     0x42, 0, 0, 0, 0, 0x0d, 0x31, 0xe0, 0x18, 0, 3, 4, 9, 0x79, 0xac, 0xf8, 0x0d, 0, 0, 3, 0x74,
//! ]);
//! let mut decoder = Decoder::new();
//! let LogicalMessage::Begin(begin) = decoder.decode(payload)? else { unreachable!() };
//! assert_eq!(begin.final_lsn.to_string(), "0/D31E018");
//! assert_eq!(begin.xid, 884);
//! # Ok::<(), cm_pgoutput::DecodeError>(())
//! ```

mod cursor;
mod decode;
#[cfg(any(test, feature = "encode"))]
mod encode;
mod error;
mod framing;
mod lsn;
mod message;
mod tuple;

pub use decode::{decode_message, DecodeContext, Decoder};
#[cfg(any(test, feature = "encode"))]
pub use encode::encode_message;
pub use error::DecodeError;
pub use framing::{
    PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData, STANDBY_STATUS_UPDATE_LEN,
};
pub use lsn::{Lsn, ParseLsnError, PgTimestamp};
pub use message::*;
pub use tuple::{ColumnValue, TupleData};
