//! The acknowledgement rule, in one place.
//!
//! PostgreSQL trusts the `flush` position we report completely: it will skip,
//! forever, every transaction whose commit lies below it (research 3.5,
//! rule 0.6). So the only positions [`AckGate`] ever lets out are:
//!
//! * a Commit's `end_lsn`, once the caller says that transaction **and every
//!   transaction received before it** is done (rule 0.4: checkpoint only at
//!   transaction boundaries, never at a mid-transaction LSN, which BEGIN and
//!   every COPY row share);
//! * a keepalive's `walEnd`, when nothing received is outstanding: no open
//!   transaction, no finished-but-unapplied transaction, no unapplied
//!   standalone logical message (rule 0.5; needed because PG15+ sends nothing
//!   for transactions on unpublished tables).
//!
//! Anything else is refused with an [`AckError`], never silently ignored.
//! The reported flush never moves backwards.

use std::collections::VecDeque;

use cm_pgoutput::{LogicalMessage, Lsn};

/// Why the gate refused an acknowledgement or a message sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The caller acknowledged a commit the stream never delivered (or one
    /// already acknowledged).
    #[error("no delivered, unacknowledged transaction ends at {end_lsn}; refusing to confirm it")]
    UnknownCommit {
        /// The position offered.
        end_lsn: Lsn,
    },
    /// The caller acknowledged a standalone message the stream never delivered.
    #[error("no delivered, unacknowledged standalone message at {lsn}")]
    UnknownMessage {
        /// The message LSN offered.
        lsn: Lsn,
    },
    /// The stream broke transaction framing (Begin inside a transaction,
    /// Commit or a change outside one).
    #[error("out-of-order replication message: {0}")]
    Framing(&'static str),
}

/// Tracks what was received and what the caller finished, and derives the
/// only safe `flush` position from that.
#[derive(Debug, Default)]
pub struct AckGate {
    in_transaction: bool,
    /// End LSNs of received transactions not yet acknowledged, in commit order.
    unapplied_commits: VecDeque<Lsn>,
    /// LSNs of received standalone (non-transactional) messages not yet acknowledged.
    unapplied_messages: VecDeque<Lsn>,
    last_received: Lsn,
    flush: Lsn,
}

impl AckGate {
    /// A gate that has received nothing and confirms nothing.
    pub fn new() -> AckGate {
        AckGate::default()
    }

    /// Records a message handed to the caller, in stream order. `wal_end` is
    /// the XLogData header's position.
    pub fn received(&mut self, message: &LogicalMessage, wal_end: Lsn) -> Result<(), AckError> {
        self.note_position(wal_end);
        match message {
            LogicalMessage::Begin(_) if self.in_transaction => {
                return Err(AckError::Framing("Begin inside an open transaction"))
            }
            LogicalMessage::Begin(_) => self.in_transaction = true,
            LogicalMessage::Commit(c) if self.in_transaction => {
                self.in_transaction = false;
                self.unapplied_commits.push_back(c.end_lsn);
                self.note_position(c.end_lsn);
            }
            LogicalMessage::Commit(_) => return Err(AckError::Framing("Commit without Begin")),
            LogicalMessage::Message(m) if !self.in_transaction => {
                self.unapplied_messages.push_back(m.lsn);
            }
            LogicalMessage::Insert(_)
            | LogicalMessage::Update(_)
            | LogicalMessage::Delete(_)
            | LogicalMessage::Truncate(_)
                if !self.in_transaction =>
            {
                return Err(AckError::Framing("row change outside a transaction"))
            }
            _ => {}
        }
        Ok(())
    }

    /// The caller finished the transaction ending at `end_lsn` and every one
    /// received before it. Returns the new flush position.
    pub fn commit_done(&mut self, end_lsn: Lsn) -> Result<Lsn, AckError> {
        let Some(index) = self.unapplied_commits.iter().position(|&l| l == end_lsn) else {
            return Err(AckError::UnknownCommit { end_lsn });
        };
        self.unapplied_commits.drain(..=index);
        // Standalone messages received before this commit are covered by
        // "every one received before it".
        while self
            .unapplied_messages
            .front()
            .is_some_and(|&l| l < end_lsn)
        {
            self.unapplied_messages.pop_front();
        }
        self.flush = self.flush.max(end_lsn);
        Ok(self.flush)
    }

    /// The caller finished the standalone message at `lsn`. It never moves
    /// flush by itself (it is no commit boundary), but it stops counting as
    /// outstanding for keepalive confirmation.
    pub fn message_done(&mut self, lsn: Lsn) -> Result<(), AckError> {
        let Some(index) = self.unapplied_messages.iter().position(|&l| l == lsn) else {
            return Err(AckError::UnknownMessage { lsn });
        };
        self.unapplied_messages.remove(index);
        Ok(())
    }

    /// A primary keepalive: confirm its `wal_end` only when nothing received
    /// is outstanding. Returns the flush position afterwards.
    pub fn keepalive(&mut self, wal_end: Lsn) -> Lsn {
        self.note_position(wal_end);
        if self.is_idle() {
            self.flush = self.flush.max(wal_end);
        }
        self.flush
    }

    /// Nothing received is waiting for the caller.
    pub fn is_idle(&self) -> bool {
        !self.in_transaction
            && self.unapplied_commits.is_empty()
            && self.unapplied_messages.is_empty()
    }

    /// The `write` position to report: the furthest position received.
    pub fn last_received(&self) -> Lsn {
        self.last_received
    }

    /// The `flush` position to report: the furthest position whose work is done.
    pub fn flush(&self) -> Lsn {
        self.flush
    }

    fn note_position(&mut self, lsn: Lsn) {
        self.last_received = self.last_received.max(lsn);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cm_pgoutput::{Begin, Commit, Insert, Message, PgTimestamp, TupleData};

    use super::*;

    fn begin() -> LogicalMessage {
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0),
            commit_ts: PgTimestamp(0),
            xid: 1,
        })
    }

    fn commit(end: u64) -> LogicalMessage {
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(end - 0x30),
            end_lsn: Lsn(end),
            commit_ts: PgTimestamp(0),
        })
    }

    fn insert() -> LogicalMessage {
        LogicalMessage::Insert(Insert {
            xid: None,
            rel_id: 1,
            new: TupleData::default(),
        })
    }

    fn bare_message(lsn: u64) -> LogicalMessage {
        LogicalMessage::Message(Message {
            xid: None,
            flags: 0,
            lsn: Lsn(lsn),
            prefix: "hb".into(),
            content: Bytes::new(),
        })
    }

    fn deliver_txn(gate: &mut AckGate, end: u64) {
        gate.received(&begin(), Lsn(end - 0x100)).unwrap();
        gate.received(&insert(), Lsn(end - 0x80)).unwrap();
        gate.received(&commit(end), Lsn(end)).unwrap();
    }

    #[test]
    fn flush_moves_only_to_an_acknowledged_commit_end() {
        let mut gate = AckGate::new();
        deliver_txn(&mut gate, 0x1000);
        deliver_txn(&mut gate, 0x2000);
        assert_eq!(gate.flush(), Lsn(0));
        assert_eq!(gate.last_received(), Lsn(0x2000));
        assert_eq!(gate.commit_done(Lsn(0x1000)), Ok(Lsn(0x1000)));
        assert_eq!(gate.flush(), Lsn(0x1000));
    }

    #[test]
    fn acknowledging_a_later_commit_covers_the_earlier_ones() {
        let mut gate = AckGate::new();
        deliver_txn(&mut gate, 0x1000);
        deliver_txn(&mut gate, 0x2000);
        assert_eq!(gate.commit_done(Lsn(0x2000)), Ok(Lsn(0x2000)));
        assert!(gate.is_idle());
        assert_eq!(
            gate.commit_done(Lsn(0x1000)),
            Err(AckError::UnknownCommit {
                end_lsn: Lsn(0x1000)
            })
        );
    }

    #[test]
    fn positions_that_are_not_delivered_commit_ends_are_refused() {
        let mut gate = AckGate::new();
        deliver_txn(&mut gate, 0x1000);
        for bogus in [0x0f00, 0x0fd0, 0x1001, 0xdead_0000] {
            assert_eq!(
                gate.commit_done(Lsn(bogus)),
                Err(AckError::UnknownCommit {
                    end_lsn: Lsn(bogus)
                })
            );
        }
        assert_eq!(gate.flush(), Lsn(0));
    }

    #[test]
    fn keepalive_is_confirmed_only_when_nothing_is_outstanding() {
        let mut gate = AckGate::new();
        assert_eq!(
            gate.keepalive(Lsn(0x500)),
            Lsn(0x500),
            "idle from the start"
        );
        gate.received(&begin(), Lsn(0x900)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x950)), Lsn(0x500), "open transaction");
        gate.received(&commit(0x1000), Lsn(0x1000)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x1100)), Lsn(0x500), "unapplied commit");
        gate.commit_done(Lsn(0x1000)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x1100)), Lsn(0x1100));
        assert_eq!(gate.last_received(), Lsn(0x1100));
    }

    #[test]
    fn unapplied_standalone_message_blocks_keepalive_confirmation() {
        let mut gate = AckGate::new();
        gate.received(&bare_message(0x700), Lsn(0x700)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x800)), Lsn(0));
        assert_eq!(
            gate.message_done(Lsn(0x701)),
            Err(AckError::UnknownMessage { lsn: Lsn(0x701) })
        );
        gate.message_done(Lsn(0x700)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x800)), Lsn(0x800));
    }

    #[test]
    fn flush_never_moves_backwards() {
        let mut gate = AckGate::new();
        gate.keepalive(Lsn(0x5000));
        deliver_txn(&mut gate, 0x4000); // a replay after reconnect
        assert_eq!(gate.commit_done(Lsn(0x4000)), Ok(Lsn(0x5000)));
    }

    #[test]
    fn broken_framing_is_an_error() {
        let mut gate = AckGate::new();
        assert!(gate.received(&commit(0x100), Lsn(0x100)).is_err());
        assert!(gate.received(&insert(), Lsn(0x100)).is_err());
        gate.received(&begin(), Lsn(0x100)).unwrap();
        assert!(gate.received(&begin(), Lsn(0x100)).is_err());
    }
}
