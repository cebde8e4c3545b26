//! [`Generation`]: a counter that starts at a random 64-bit value and is
//! bumped with INCR.
//!
//! A result snapshots the generations it was filled under and is served only
//! while they still match. Starting at a random value (not 0 or 1) is what
//! makes a generation that vanished (evicted, server restarted) read as a
//! mismatch: the one created in its place is another random number, equal to
//! the old snapshot with probability 2^-64.

use crate::error::StoreError;

/// The value of one generation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub u64);

impl Generation {
    /// The number itself.
    pub fn get(self) -> u64 {
        self.0
    }

    /// A fresh random generation from the operating system's random source,
    /// below 2^63. memcached (1.6.18 as Debian ships it) refuses to INCR a
    /// value of 2^63 or more now and then: its number parser, for a value
    /// that is negative as a signed number, looks for a '-' with `strchr`
    /// past the item's data into whatever the slab chunk holds next, and
    /// answers "non-numeric value" when it finds one there. 63 random bits
    /// keep every value clear of that path for any number of bumps, and
    /// still make a re-created generation match an old one with
    /// probability 2^-63.
    pub fn random() -> Result<Generation, StoreError> {
        getrandom::u64()
            .map(|bits| Generation(bits >> 1))
            .map_err(|e| StoreError::Random {
                message: e.to_string(),
            })
    }

    /// The stored form: decimal ASCII, which memcached's INCR understands.
    pub(crate) fn encode(self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }

    /// Parses the stored form. memcached's in-place INCR pads a value that
    /// got shorter (on wrap-around) with trailing spaces, so they are ignored.
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Generation, StoreError> {
        std::str::from_utf8(bytes)
            .ok()
            .map(|text| text.trim_end_matches(' '))
            .and_then(|text| text.parse::<u64>().ok())
            .map(Generation)
            .ok_or_else(|| StoreError::CorruptGeneration {
                key: key.to_string(),
                value: String::from_utf8_lossy(bytes).into_owned(),
            })
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn random_generations_stay_below_two_to_the_63() {
        for _ in 0..10_000 {
            assert!(Generation::random().unwrap().get() < 1 << 63);
        }
    }

    #[test]
    fn stored_form_round_trips_and_ignores_incr_padding() {
        let g = Generation(u64::MAX);
        assert_eq!(Generation::decode("g", &g.encode()).unwrap(), g);
        assert_eq!(Generation::decode("g", b"7   ").unwrap(), Generation(7));
        assert!(matches!(
            Generation::decode("g", b"x1"),
            Err(StoreError::CorruptGeneration { .. })
        ));
        assert!(Generation::decode("g", b"").is_err());
    }

    #[test]
    fn random_generations_differ() {
        assert_ne!(Generation::random().unwrap(), Generation::random().unwrap());
    }
}
