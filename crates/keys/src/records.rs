//! The records the invalidator writes and readers check, shared so both
//! sides parse the same bytes: the heartbeat (how far invalidation has
//! applied, and when) and the worker state (what the invalidator last
//! streamed from, and a bound on what it confirmed).
//!
//! Both are short ASCII records, versioned by their first field.

/// How far the invalidator has got, in one record that every hit reads: the
/// last heartbeat round trip that completed (a logical message emitted at
/// `emitted_unix_micros` came back through the stream at `lsn`, after every
/// transaction committed before it had been invalidated), and the positions
/// behind read-your-writes tokens and replica-safe fills
/// (`docs/freshness.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// LSN of the heartbeat message.
    pub lsn: u64,
    /// When it was emitted (microseconds since the Unix epoch). Everything
    /// committed before this instant is invalidated; readers compare it with
    /// their clock and `max_staleness`.
    pub emitted_unix_micros: u64,
    /// When the invalidator wrote this record.
    pub applied_unix_micros: u64,
    /// Every transaction whose commit ends at or below this LSN has had its
    /// invalidations applied. A read given a write token at or below it may
    /// be served from the cache.
    pub applied_lsn: u64,
    /// No invalidation of a transaction committed above this LSN has
    /// started: an upper bound of every commit whose invalidations may
    /// already be (partly) in the cache. A fill read from a replica is
    /// stored only if the replica had replayed this far. `None` in a record
    /// that does not carry it (`hb1`): then no replica fill is stored.
    pub dispatched_lsn: Option<u64>,
}

impl Heartbeat {
    /// A record of a heartbeat message alone: applied up to the message,
    /// nothing known about dispatched invalidations.
    pub fn of_message(lsn: u64, emitted_unix_micros: u64, applied_unix_micros: u64) -> Heartbeat {
        Heartbeat {
            lsn,
            emitted_unix_micros,
            applied_unix_micros,
            applied_lsn: lsn,
            dispatched_lsn: None,
        }
    }

    /// `hb2 <lsn> <emitted> <written> <applied_lsn> <dispatched_lsn>`, with
    /// `-` for an unknown dispatched LSN.
    pub fn encode(&self) -> Vec<u8> {
        let dispatched = self
            .dispatched_lsn
            .map_or_else(|| "-".to_owned(), |d| d.to_string());
        format!(
            "hb2 {} {} {} {} {dispatched}",
            self.lsn, self.emitted_unix_micros, self.applied_unix_micros, self.applied_lsn
        )
        .into_bytes()
    }

    /// Parses [`Heartbeat::encode`]'s output; `None` for anything else (a
    /// reader then treats the heartbeat as missing, i.e. too old). An `hb1`
    /// record reads as applied up to its heartbeat message.
    pub fn decode(bytes: &[u8]) -> Option<Heartbeat> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        let full = match fields.next()? {
            "hb1" => false,
            "hb2" => true,
            _ => return None,
        };
        let mut heartbeat = Heartbeat::of_message(
            fields.next()?.parse().ok()?,
            fields.next()?.parse().ok()?,
            fields.next()?.parse().ok()?,
        );
        if full {
            heartbeat.applied_lsn = fields.next()?.parse().ok()?;
            heartbeat.dispatched_lsn = match fields.next()? {
                "-" => None,
                dispatched => Some(dispatched.parse().ok()?),
            };
        }
        fields.next().is_none().then_some(heartbeat)
    }
}

/// What the invalidator streams from, and how far it may have confirmed.
/// Persisted in the cache; when the source differs at start (or the record
/// is missing), LSNs may repeat or changes may have been missed, so the
/// invalidator bumps the epoch. The same holds when the slot's
/// `confirmed_flush_lsn` lies beyond [`WorkerState::confirm_bound`]: no
/// worker confirmed that position, so the slot was re-created or advanced by
/// someone else and the changes in between were never streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    /// IDENTIFY_SYSTEM's system identifier.
    pub system_id: String,
    /// IDENTIFY_SYSTEM's timeline.
    pub timeline: u32,
    /// The replication slot.
    pub slot: String,
    /// An upper bound of every LSN the invalidator ever confirmed to
    /// PostgreSQL through this slot; `None` in a record written before the
    /// bound existed (`ws1`).
    pub confirm_bound: Option<u64>,
}

impl WorkerState {
    /// `ws2 <system_id> <timeline> <slot> <confirm_bound>` (slot names have
    /// no spaces), or `ws1 <system_id> <timeline> <slot>` without a bound.
    pub fn encode(&self) -> Vec<u8> {
        let source = format!("{} {} {}", self.system_id, self.timeline, self.slot);
        match self.confirm_bound {
            Some(bound) => format!("ws2 {source} {bound}").into_bytes(),
            None => format!("ws1 {source}").into_bytes(),
        }
    }

    /// Parses [`WorkerState::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Option<WorkerState> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        let with_bound = match fields.next()? {
            "ws1" => false,
            "ws2" => true,
            _ => return None,
        };
        let mut state = WorkerState {
            system_id: fields.next()?.to_owned(),
            timeline: fields.next()?.parse().ok()?,
            slot: fields.next()?.to_owned(),
            confirm_bound: None,
        };
        if with_bound {
            state.confirm_bound = Some(fields.next()?.parse().ok()?);
        }
        fields.next().is_none().then_some(state)
    }

    /// Whether both records describe the same system, timeline and slot
    /// (the bound aside).
    pub fn same_source(&self, other: &WorkerState) -> bool {
        self.system_id == other.system_id
            && self.timeline == other.timeline
            && self.slot == other.slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trips_and_rejects_other_bytes() {
        let mut hb = Heartbeat {
            lsn: 0x1548E68,
            emitted_unix_micros: 1_795_548_472_727_565,
            applied_unix_micros: 1_795_548_472_730_000,
            applied_lsn: 0x1549000,
            dispatched_lsn: Some(0x1549100),
        };
        assert_eq!(Heartbeat::decode(&hb.encode()), Some(hb));
        hb.dispatched_lsn = None;
        assert_eq!(Heartbeat::decode(&hb.encode()), Some(hb));
        assert_eq!(
            Heartbeat::decode(b"hb1 7 8 9"),
            Some(Heartbeat::of_message(7, 8, 9))
        );
        for bad in [
            &b""[..],
            b"hb3 1 2 3",
            b"hb1 1 2",
            b"hb1 1 2 3 4",
            b"hb1 x 2 3",
            b"hb2 1 2 3 4",
            b"hb2 1 2 3 4 5 6",
            b"hb2 1 2 3 4 x",
        ] {
            assert_eq!(Heartbeat::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn worker_state_round_trips_with_and_without_a_bound() {
        let mut state = WorkerState {
            system_id: "7441403459287381234".into(),
            timeline: 1,
            slot: "cm_invalidator".into(),
            confirm_bound: Some(0x1548E68),
        };
        assert_eq!(WorkerState::decode(&state.encode()), Some(state.clone()));
        state.confirm_bound = None;
        assert_eq!(
            WorkerState::decode(b"ws1 7441403459287381234 1 cm_invalidator"),
            Some(state.clone())
        );
        assert_eq!(WorkerState::decode(&state.encode()), Some(state));
        for bad in [
            &b"ws1 1 x slot"[..],
            b"ws2 1 1 slot",
            b"ws2 1 1 slot x",
            b"ws2 1 1 slot 5 6",
            b"ws3 1 1 slot 5",
        ] {
            assert_eq!(WorkerState::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn same_source_ignores_the_bound_only() {
        let state = |slot: &str, bound| WorkerState {
            system_id: "1".into(),
            timeline: 1,
            slot: slot.into(),
            confirm_bound: bound,
        };
        assert!(state("a", Some(1)).same_source(&state("a", None)));
        assert!(!state("a", Some(1)).same_source(&state("b", Some(1))));
    }
}
