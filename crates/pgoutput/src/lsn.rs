//! Log sequence numbers and PostgreSQL timestamps, the two scalar types every
//! replication message carries.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A position in the write-ahead log: a byte offset, printed by PostgreSQL as
/// two hex halves, `X/Y` (for example `0/1548E68`).
///
/// `Lsn(0)` is `InvalidXLogRecPtr`; the walsender uses it in XLogData headers
/// of Relation and Type messages, and a standby status update with flush 0 is
/// ignored by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`, printed as `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    /// True for `0/0`.
    pub fn is_invalid(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

/// Why a string is not an LSN in `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hex numbers of at most 8 digits separated by '/', like 0/1548E68")]
pub struct ParseLsnError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| -> Result<u64, ParseLsnError> {
            let valid =
                !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(err());
            }
            u64::from_str_radix(part, 16).map_err(|_| err())
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

/// Seconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A PostgreSQL `TimestampTz` on the wire: microseconds since 2000-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The wall-clock time this timestamp names, or `None` when it lies
    /// outside what `SystemTime` can hold.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let pg_epoch = UNIX_EPOCH.checked_add(Duration::from_secs(PG_EPOCH_UNIX_SECS))?;
        let offset = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            pg_epoch.checked_add(offset)
        } else {
            pg_epoch.checked_sub(offset)
        }
    }

    /// The timestamp for a wall-clock time, saturating at the `i64` range.
    pub fn from_system_time(time: SystemTime) -> PgTimestamp {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        match time.duration_since(pg_epoch) {
            Ok(after) => PgTimestamp(micros(after)),
            Err(before) => PgTimestamp(-micros(before.duration())),
        }
    }

    /// The current wall-clock time.
    pub fn now() -> PgTimestamp {
        PgTimestamp::from_system_time(SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_prints_as_two_uppercase_hex_halves() {
        assert_eq!(Lsn(0x0000_0000_0154_8E68).to_string(), "0/1548E68");
        assert_eq!(Lsn(0x0000_0001_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn::INVALID.to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn lsn_parses_what_postgres_prints() {
        assert_eq!("0/1548E68".parse::<Lsn>(), Ok(Lsn(0x1548E68)));
        assert_eq!("0/d31e018".parse::<Lsn>(), Ok(Lsn(0xD31E018)));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>(), Ok(Lsn(u64::MAX)));
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "g/0",
            "0/-1",
            "+0/1",
            "123456789/0",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn timestamp_round_trips_through_system_time() {
        // 2026-11-24T19:27:52.727565Z, from the Begin of xid 884 in
        // tests/data/evidence_old_tuple.txt (docs/pgoutput.md §3.2).
        let ts = PgTimestamp(0x0003_0409_79ac_f80d);
        let back = PgTimestamp::from_system_time(ts.to_system_time().unwrap());
        assert_eq!(back, ts);
        let unix = ts
            .to_system_time()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap();
        assert_eq!(unix.as_secs(), 1_795_548_472);
    }
}
