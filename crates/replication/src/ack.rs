//! The acknowledgement rule, in one place.
//!
//! PostgreSQL trusts the `flush` position we report completely: it stores it
//! as the slot's `confirmed_flush_lsn` and will skip, forever, every
//! transaction whose commit lies below it. So the only positions [`AckGate`]
//! ever lets out are:
//!
//! * a Commit's `end_lsn`, once the caller says that transaction **and every
//!   transaction received before it** is done (only at transaction
//!   boundaries, never at a mid-transaction LSN, which BEGIN and every
//!   CopyData row of a transaction share);
//! * a keepalive's `walEnd`, once nothing received before that keepalive is
//!   outstanding: no unapplied transaction, no open transaction, no unapplied
//!   standalone logical message (needed because PG15+ sends nothing
//!   for transactions on unpublished tables, so a quiet database would
//!   otherwise hold its slot's WAL while the rest of the cluster writes).
//!   A keepalive that arrives while such work is outstanding is remembered
//!   and confirmed when that work is done: the walsender sends a keepalive
//!   right behind every message it sends, so a keepalive almost always
//!   overtakes the work it follows.
//!
//! Why a remembered `walEnd` is safe although later work may still be open:
//! `walEnd` is the walsender's decoding position when it sent the keepalive.
//! Everything decoded below it was sent before the keepalive; everything
//! sent after it starts at or beyond it (a later transaction's commit
//! record, a later message), and PostgreSQL skips on restart only what
//! starts *below* the confirmed position (`SnapBuildXactNeedsSkip`). So
//! `walEnd` is safe exactly when everything received before the keepalive
//! is done, which the gate checks by position.
//!
//! Anything else is refused with an [`AckError`], never silently ignored.
//! The reported flush never moves backwards.
//!
//! The ceiling: a caller that must know, after a restart, how far it could
//! have confirmed (to tell its own slot from a re-created one) gives the
//! gate a ceiling ([`AckGate::with_ceiling`]) and raises it only after
//! persisting the new value ([`AckGate::raise_ceiling`]). The reported flush
//! is the lower of the done position and the ceiling. Any position at or
//! below the done position is safe to confirm: PostgreSQL skips only the
//! transactions whose commit record starts below it, and every one of those
//! is done. [`AckGate::ceiling_request`] tells when the ceiling holds the
//! flush back, keepalive confirmations included.

use std::collections::VecDeque;

/// Keepalive positions remembered while work is outstanding. Past this many,
/// the newest replaces the last one kept: it is confirmed a little later,
/// never earlier than it is safe.
const MAX_PENDING_KEEPALIVES: usize = 64;

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
    /// The open transaction's commit position (Begin's `final_lsn`).
    open_transaction: Option<Lsn>,
    /// End LSNs of received transactions not yet acknowledged, in commit order.
    unapplied_commits: VecDeque<Lsn>,
    /// LSNs of received standalone (non-transactional) messages not yet acknowledged.
    unapplied_messages: VecDeque<Lsn>,
    /// Keepalive `walEnd`s above `done` that arrived while work received
    /// before them was outstanding, ascending.
    pending_keepalives: VecDeque<Lsn>,
    last_received: Lsn,
    /// The furthest position whose work is done (what would be confirmed
    /// without a ceiling).
    done: Lsn,
    /// The highest flush the caller allows; `None` for no limit.
    ceiling: Option<Lsn>,
}

impl AckGate {
    /// A gate that has received nothing and confirms nothing.
    pub fn new() -> AckGate {
        AckGate::default()
    }

    /// A gate that never reports a flush above `ceiling` until the caller
    /// raises it. `Lsn(0)` confirms nothing: PostgreSQL ignores a flush of
    /// `0/0` (InvalidXLogRecPtr).
    pub fn with_ceiling(ceiling: Lsn) -> AckGate {
        AckGate {
            ceiling: Some(ceiling),
            ..AckGate::default()
        }
    }

    /// Lets the reported flush go up to `ceiling` (a lower value is
    /// ignored: the ceiling never comes down). Call it only once `ceiling`
    /// is persisted wherever the caller keeps its bound. Returns the flush
    /// position afterwards.
    pub fn raise_ceiling(&mut self, ceiling: Lsn) -> Lsn {
        if let Some(current) = self.ceiling.as_mut() {
            *current = (*current).max(ceiling);
        }
        self.flush()
    }

    /// `Some(position)` while the ceiling holds back work that is done: the
    /// position to raise it to, the furthest received (at or beyond the
    /// done position, so one raise covers everything done so far).
    pub fn ceiling_request(&self) -> Option<Lsn> {
        let ceiling = self.ceiling?;
        (self.done > ceiling).then_some(self.last_received.max(self.done))
    }

    /// Records a message handed to the caller, in stream order. `wal_end` is
    /// the XLogData header's position.
    pub fn received(&mut self, message: &LogicalMessage, wal_end: Lsn) -> Result<(), AckError> {
        self.note_position(wal_end);
        let in_transaction = self.open_transaction.is_some();
        match message {
            LogicalMessage::Begin(_) if in_transaction => {
                return Err(AckError::Framing("Begin inside an open transaction"))
            }
            LogicalMessage::Begin(b) => self.open_transaction = Some(b.final_lsn),
            LogicalMessage::Commit(c) if in_transaction => {
                self.open_transaction = None;
                self.unapplied_commits.push_back(c.end_lsn);
                self.note_position(c.end_lsn);
            }
            LogicalMessage::Commit(_) => return Err(AckError::Framing("Commit without Begin")),
            LogicalMessage::Message(m) if !in_transaction => {
                self.unapplied_messages.push_back(m.lsn);
            }
            LogicalMessage::Insert(_)
            | LogicalMessage::Update(_)
            | LogicalMessage::Delete(_)
            | LogicalMessage::Truncate(_)
                if !in_transaction =>
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
        self.done = self.done.max(end_lsn);
        self.confirm_settled_keepalives();
        Ok(self.flush())
    }

    /// The caller finished the standalone message at `lsn`. It is no commit
    /// boundary, so it never becomes flush itself, but it stops counting as
    /// outstanding, which may confirm a remembered keepalive. Returns the
    /// flush position afterwards.
    pub fn message_done(&mut self, lsn: Lsn) -> Result<Lsn, AckError> {
        let Some(index) = self.unapplied_messages.iter().position(|&l| l == lsn) else {
            return Err(AckError::UnknownMessage { lsn });
        };
        self.unapplied_messages.remove(index);
        self.confirm_settled_keepalives();
        Ok(self.flush())
    }

    /// A primary keepalive: its `wal_end` is confirmed now if nothing
    /// received before it is outstanding, else remembered until that work is
    /// done. Returns the flush position afterwards.
    pub fn keepalive(&mut self, wal_end: Lsn) -> Lsn {
        self.note_position(wal_end);
        if wal_end > self.pending_keepalives.back().copied().unwrap_or(self.done) {
            if self.pending_keepalives.len() == MAX_PENDING_KEEPALIVES {
                self.pending_keepalives.pop_back();
            }
            self.pending_keepalives.push_back(wal_end);
        }
        self.confirm_settled_keepalives();
        self.flush()
    }

    /// Nothing received is waiting for the caller.
    pub fn is_idle(&self) -> bool {
        self.open_transaction.is_none()
            && self.unapplied_commits.is_empty()
            && self.unapplied_messages.is_empty()
    }

    /// Moves flush to every remembered keepalive position that no
    /// outstanding work lies below.
    fn confirm_settled_keepalives(&mut self) {
        while let Some(&wal_end) = self.pending_keepalives.front() {
            if !self.settled_below(wal_end) {
                break;
            }
            self.done = self.done.max(wal_end);
            self.pending_keepalives.pop_front();
        }
    }

    /// Nothing outstanding could have been sent before a keepalive at
    /// `wal_end`: no unapplied commit ending at or below it, no unapplied
    /// message starting below it, no open transaction committing below it.
    fn settled_below(&self, wal_end: Lsn) -> bool {
        let commits = self
            .unapplied_commits
            .front()
            .is_none_or(|&end| end > wal_end);
        let messages = self.unapplied_messages.iter().all(|&lsn| lsn >= wal_end);
        let open = self.open_transaction.is_none_or(|commit| commit >= wal_end);
        commits && messages && open
    }

    /// The furthest position whose work is done, ceiling aside. Only rises.
    pub fn done(&self) -> Lsn {
        self.done
    }

    /// The `write` position to report: the furthest position received.
    pub fn last_received(&self) -> Lsn {
        self.last_received
    }

    /// The `flush` position to report: the furthest position whose work is
    /// done, but never above the ceiling. Both only rise, so neither does
    /// this.
    pub fn flush(&self) -> Lsn {
        match self.ceiling {
            Some(ceiling) => self.done.min(ceiling),
            None => self.done,
        }
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

    /// A Begin of the transaction whose commit record starts at `final_lsn`.
    fn begin_at(final_lsn: u64) -> LogicalMessage {
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(final_lsn),
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
        gate.received(&begin_at(end - 0x30), Lsn(end - 0x100))
            .unwrap();
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
    fn keepalive_is_confirmed_once_nothing_before_it_is_outstanding() {
        let mut gate = AckGate::new();
        assert_eq!(
            gate.keepalive(Lsn(0x500)),
            Lsn(0x500),
            "idle from the start"
        );
        gate.received(&begin_at(0x0fd0), Lsn(0x900)).unwrap();
        assert_eq!(
            gate.keepalive(Lsn(0x950)),
            Lsn(0x950),
            "the open transaction commits above it"
        );
        gate.received(&commit(0x1000), Lsn(0x1000)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x1100)), Lsn(0x950), "unapplied commit");
        assert_eq!(gate.commit_done(Lsn(0x1000)), Ok(Lsn(0x1100)));
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
    fn a_keepalive_behind_a_message_is_confirmed_when_the_message_is_done() {
        let mut gate = AckGate::new();
        gate.received(&bare_message(0x700), Lsn(0x700)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x740)), Lsn(0), "message outstanding");
        assert_eq!(gate.message_done(Lsn(0x700)), Ok(Lsn(0x740)));
    }

    #[test]
    fn a_remembered_keepalive_waits_only_for_work_received_before_it() {
        let mut gate = AckGate::new();
        deliver_txn(&mut gate, 0x1000);
        assert_eq!(gate.keepalive(Lsn(0x1100)), Lsn(0));
        // Received after the keepalive: positions at or past its walEnd.
        deliver_txn(&mut gate, 0x2000);
        gate.received(&bare_message(0x2100), Lsn(0x2100)).unwrap();
        assert_eq!(gate.commit_done(Lsn(0x1000)), Ok(Lsn(0x1100)));
        assert!(!gate.is_idle());
    }

    #[test]
    fn a_remembered_keepalive_is_not_confirmed_past_unfinished_work() {
        let mut gate = AckGate::new();
        deliver_txn(&mut gate, 0x1000);
        gate.received(&bare_message(0x1200), Lsn(0x1200)).unwrap();
        deliver_txn(&mut gate, 0x2000);
        assert_eq!(gate.keepalive(Lsn(0x2100)), Lsn(0));
        assert_eq!(gate.commit_done(Lsn(0x1000)), Ok(Lsn(0x1000)));
        assert_eq!(gate.message_done(Lsn(0x1200)), Ok(Lsn(0x1000)));
        assert_eq!(gate.commit_done(Lsn(0x2000)), Ok(Lsn(0x2100)));
    }

    #[test]
    fn an_open_transaction_committing_below_a_keepalive_holds_it() {
        let mut gate = AckGate::new();
        gate.received(&begin_at(0x0fd0), Lsn(0x0f00)).unwrap();
        assert_eq!(gate.keepalive(Lsn(0x0f80)), Lsn(0x0f80), "commits above");
        assert_eq!(gate.keepalive(Lsn(0x1000)), Lsn(0x0f80), "commits below");
        gate.received(&commit(0x1000), Lsn(0x1000)).unwrap();
        assert_eq!(gate.commit_done(Lsn(0x1000)), Ok(Lsn(0x1000)));
    }

    #[test]
    fn many_remembered_keepalives_stay_bounded_and_safe() {
        let mut gate = AckGate::new();
        gate.received(&bare_message(0x10), Lsn(0x10)).unwrap();
        for step in 1..=1000u64 {
            gate.keepalive(Lsn(0x100 * step));
        }
        assert!(gate.pending_keepalives.len() <= MAX_PENDING_KEEPALIVES);
        assert_eq!(gate.flush(), Lsn(0));
        assert_eq!(gate.message_done(Lsn(0x10)), Ok(Lsn(0x100 * 1000)));
    }

    #[test]
    fn flush_never_moves_backwards() {
        let mut gate = AckGate::new();
        gate.keepalive(Lsn(0x5000));
        deliver_txn(&mut gate, 0x4000); // a replay after reconnect
        assert_eq!(gate.commit_done(Lsn(0x4000)), Ok(Lsn(0x5000)));
    }

    #[test]
    fn the_ceiling_caps_commit_and_keepalive_confirmations_until_raised() {
        let mut gate = AckGate::with_ceiling(Lsn(0));
        deliver_txn(&mut gate, 0x1000);
        assert_eq!(gate.ceiling_request(), None, "nothing done yet");
        assert_eq!(gate.commit_done(Lsn(0x1000)), Ok(Lsn(0)));
        assert_eq!(gate.ceiling_request(), Some(Lsn(0x1000)));
        assert_eq!(
            gate.keepalive(Lsn(0x1800)),
            Lsn(0),
            "idle keepalive, capped"
        );
        assert_eq!(gate.ceiling_request(), Some(Lsn(0x1800)));
        assert_eq!(gate.raise_ceiling(Lsn(0x1400)), Lsn(0x1400));
        assert_eq!(gate.ceiling_request(), Some(Lsn(0x1800)));
        assert_eq!(gate.raise_ceiling(Lsn(0x1800)), Lsn(0x1800));
        assert_eq!(gate.ceiling_request(), None);
        assert_eq!(
            gate.raise_ceiling(Lsn(0x100)),
            Lsn(0x1800),
            "never comes down"
        );
    }

    #[test]
    fn a_ceiling_request_asks_for_everything_received() {
        let mut gate = AckGate::with_ceiling(Lsn(0x500));
        deliver_txn(&mut gate, 0x1000);
        deliver_txn(&mut gate, 0x2000);
        gate.commit_done(Lsn(0x1000)).unwrap();
        assert_eq!(gate.flush(), Lsn(0x500));
        assert_eq!(gate.ceiling_request(), Some(Lsn(0x2000)));
        gate.raise_ceiling(Lsn(0x2000));
        assert_eq!(gate.flush(), Lsn(0x1000), "still only what is done");
        assert_eq!(gate.commit_done(Lsn(0x2000)), Ok(Lsn(0x2000)));
        assert_eq!(gate.ceiling_request(), None);
    }

    #[test]
    fn a_gate_without_ceiling_never_requests_one() {
        let mut gate = AckGate::new();
        gate.raise_ceiling(Lsn(0x10));
        assert_eq!(gate.keepalive(Lsn(0x900)), Lsn(0x900));
        assert_eq!(gate.ceiling_request(), None);
    }

    #[test]
    fn broken_framing_is_an_error() {
        let mut gate = AckGate::new();
        assert!(gate.received(&commit(0x100), Lsn(0x100)).is_err());
        assert!(gate.received(&insert(), Lsn(0x100)).is_err());
        gate.received(&begin_at(0x100), Lsn(0x100)).unwrap();
        assert!(gate.received(&begin_at(0x100), Lsn(0x100)).is_err());
    }
}
