//! The typed pgoutput messages, one struct per message of protocol v1-v4.
//!
//! Field names follow PostgreSQL's `proto.c`. Which fields exist when is
//! documented in `docs/pgoutput.md` §2.1; the short version is on each type.

use bytes::Bytes;

use crate::lsn::{Lsn, PgTimestamp};
use crate::tuple::TupleData;

/// A PostgreSQL object id (relation, type).
pub type Oid = u32;

/// A transaction id as pgoutput sends it (32 bits, no epoch).
pub type Xid = u32;

/// One decoded pgoutput message: the payload of an XLogData frame, or one row
/// of `pg_logical_slot_peek_binary_changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`: a transaction starts (sent only once it has a published change on PG15+).
    Begin(Begin),
    /// `C`: the transaction committed; `end_lsn` is the only safe flush position.
    Commit(Commit),
    /// `O`: the transaction came from a replication origin.
    Origin(Origin),
    /// `R`: the column layout of a table; tuples are positional against the latest one.
    Relation(Relation),
    /// `Y`: a non-built-in type used by a following Relation.
    Type(Type),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a `pg_logical_emit_message` (needs `messages 'true'`).
    Message(Message),
    /// `S`: a streamed block of an in-progress transaction starts (v2+).
    StreamStart(StreamStart),
    /// `E`: the current streamed block ends (v2+).
    StreamStop,
    /// `c`: a streamed transaction committed (v2+).
    StreamCommit(StreamCommit),
    /// `A`: a streamed transaction or subtransaction aborted (v2+).
    StreamAbort(StreamAbort),
    /// `b`: a two-phase transaction's PREPARE starts (v3+).
    BeginPrepare(BeginPrepare),
    /// `P`: a two-phase transaction was prepared (v3+).
    Prepare(Prepare),
    /// `K`: a prepared transaction was committed (v3+).
    CommitPrepared(CommitPrepared),
    /// `r`: a prepared transaction was rolled back (v3+).
    RollbackPrepared(RollbackPrepared),
    /// `p`: a streamed transaction was prepared (v3+); same layout as Prepare.
    StreamPrepare(Prepare),
}

impl LogicalMessage {
    /// The message's type byte on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => b'B',
            LogicalMessage::Commit(_) => b'C',
            LogicalMessage::Origin(_) => b'O',
            LogicalMessage::Relation(_) => b'R',
            LogicalMessage::Type(_) => b'Y',
            LogicalMessage::Insert(_) => b'I',
            LogicalMessage::Update(_) => b'U',
            LogicalMessage::Delete(_) => b'D',
            LogicalMessage::Truncate(_) => b'T',
            LogicalMessage::Message(_) => b'M',
            LogicalMessage::StreamStart(_) => b'S',
            LogicalMessage::StreamStop => b'E',
            LogicalMessage::StreamCommit(_) => b'c',
            LogicalMessage::StreamAbort(_) => b'A',
            LogicalMessage::BeginPrepare(_) => b'b',
            LogicalMessage::Prepare(_) => b'P',
            LogicalMessage::CommitPrepared(_) => b'K',
            LogicalMessage::RollbackPrepared(_) => b'r',
            LogicalMessage::StreamPrepare(_) => b'p',
        }
    }
}

/// `B`: start of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN where the commit record starts; equals `Commit::commit_lsn`.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
}

/// `C`: end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL so far (always 0); kept as sent.
    pub flags: u8,
    /// LSN where the commit record starts.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once the
    /// transaction (and every earlier one) is fully applied (`docs/pgoutput.md` §4.2).
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
}

/// `O`: the transaction was replayed from a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub origin_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// How much of the old row UPDATE and DELETE carry, from `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns (old tuple only when the key changed).
    Default,
    /// `n`: nothing; published UPDATE/DELETE fail on the primary.
    Nothing,
    /// `f`: the whole old row, always.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The byte PostgreSQL uses for this identity.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// The identity for a `relreplident` byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// `R`: a table's published columns, in the order tuples use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Present only inside a streamed block (the Xid† field).
    pub xid: Option<Xid>,
    /// The table's OID; changes refer to it. A re-created table gets a new one.
    pub rel_id: Oid,
    /// Schema name; the empty string means `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// The table's replica identity at this point of the stream.
    pub replica_identity: ReplicaIdentity,
    /// Published columns (dropped and generated columns left out).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 0 set: the column is part of the replica identity key.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: Oid,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column belongs to the replica identity (every column under FULL).
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// `Y`: a user-defined type referenced by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// Present only inside a streamed block.
    pub xid: Option<Xid>,
    /// Type OID.
    pub type_oid: Oid,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// `I`: an inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Present only inside a streamed block.
    pub xid: Option<Xid>,
    /// Table OID.
    pub rel_id: Oid,
    /// The new row (`N`).
    pub new: TupleData,
}

/// The old row an UPDATE or DELETE carries, by the marker byte before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns hold values; every other
    /// column is `n`, which means "not sent", not SQL NULL.
    Key(TupleData),
    /// `O`: the whole old row (replica identity FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `U`: an updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Present only inside a streamed block.
    pub xid: Option<Xid>,
    /// Table OID.
    pub rel_id: Oid,
    /// Absent under DEFAULT/INDEX identity when the key did not change: the
    /// old values of other columns are then gone (`docs/pgoutput.md` §3.1).
    pub old: Option<OldTuple>,
    /// The new row (`N`); unchanged TOASTed values come as `u`.
    pub new: TupleData,
}

/// `D`: a deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Present only inside a streamed block.
    pub xid: Option<Xid>,
    /// Table OID.
    pub rel_id: Oid,
    /// The old key (`K`) or the whole old row (`O`).
    pub old: OldTuple,
}

/// `T`: tables truncated by one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Present only inside a streamed block.
    pub xid: Option<Xid>,
    /// Bit 0: CASCADE; bit 1: RESTART IDENTITY.
    pub flags: u8,
    /// Every published table the statement truncated, cascaded ones included.
    pub rel_ids: Vec<Oid>,
}

impl Truncate {
    /// The statement used CASCADE.
    pub fn cascade(&self) -> bool {
        self.flags & 1 != 0
    }

    /// The statement used RESTART IDENTITY.
    pub fn restart_identity(&self) -> bool {
        self.flags & 2 != 0
    }
}

/// `M`: a logical decoding message from `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Present only inside a streamed block.
    pub xid: Option<Xid>,
    /// Bit 0: transactional (arrives inside its transaction's Begin/Commit).
    pub flags: u8,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// The prefix given by the emitter.
    pub prefix: String,
    /// The content, as raw bytes.
    pub content: Bytes,
}

impl Message {
    /// Whether the message belongs to a transaction (else it arrives on its own).
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `S`: start of a streamed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction the block belongs to.
    pub xid: Xid,
    /// True for the transaction's first block.
    pub first_segment: bool,
}

/// `c`: a streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Transaction id.
    pub xid: Xid,
    /// Unused so far (0).
    pub flags: u8,
    /// LSN where the commit record starts.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
}

/// `A`: a streamed transaction (`subxid == xid`) or subtransaction aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Aborted (sub)transaction id.
    pub subxid: Xid,
    /// Sent only on protocol v4 with `streaming 'parallel'`.
    pub abort: Option<AbortInfo>,
}

/// The v4 `streaming = parallel` extension of Stream Abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortInfo {
    /// LSN of the abort record.
    pub abort_lsn: Lsn,
    /// Abort time.
    pub abort_ts: PgTimestamp,
}

/// `b`: start of a prepared transaction's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the PREPARE record.
    pub prepare_lsn: Lsn,
    /// LSN just past the PREPARE record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// The global transaction identifier given to PREPARE TRANSACTION.
    pub gid: String,
}

/// `P` (and `p`): a transaction was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Unused so far (0).
    pub flags: u8,
    /// LSN of the PREPARE record.
    pub prepare_lsn: Lsn,
    /// LSN just past the PREPARE record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}

/// `K`: a prepared transaction was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Unused so far (0).
    pub flags: u8,
    /// LSN of the COMMIT PREPARED record.
    pub commit_lsn: Lsn,
    /// LSN just past it.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}

/// `r`: a prepared transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Unused so far (0).
    pub flags: u8,
    /// LSN just past the PREPARE record.
    pub prepare_end_lsn: Lsn,
    /// LSN just past the ROLLBACK PREPARED record.
    pub rollback_end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Rollback time.
    pub rollback_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: String,
}
