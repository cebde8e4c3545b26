//! The value stored under a `q:` key: what it was filled under, then the
//! payload, encoded with rmp-serde.
//!
//! A hit is valid only while the epoch and every generation recorded here
//! equal the ones read in the same multi-get; a generation key recorded here
//! but not read (or read as missing) fails the check.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped when the layout changes: an entry of another version is a miss.
const ENTRY_VERSION: u8 = 1;

/// Epoch and table generations at the time a fill started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The global epoch.
    pub(crate) epoch: u64,
    /// Each generation key and its value.
    pub(crate) generations: Vec<(String, u64)>,
}

/// One cached value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry<P> {
    pub(crate) version: u8,
    pub(crate) snapshot: Snapshot,
    pub(crate) payload: P,
}

/// Encodes `payload` filled under `snapshot`.
pub(crate) fn encode<P: Serialize>(
    snapshot: &Snapshot,
    payload: &P,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    #[derive(Serialize)]
    struct EntryRef<'a, P> {
        version: u8,
        snapshot: &'a Snapshot,
        payload: &'a P,
    }
    rmp_serde::to_vec(&EntryRef {
        version: ENTRY_VERSION,
        snapshot,
        payload,
    })
}

/// Decodes an entry; `None` for bytes of another version or shape.
pub(crate) fn decode<P: DeserializeOwned>(bytes: &[u8]) -> Option<Entry<P>> {
    let entry: Entry<P> = rmp_serde::from_slice(bytes).ok()?;
    (entry.version == ENTRY_VERSION).then_some(entry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_other_versions_are_refused() {
        let snapshot = Snapshot {
            epoch: 7,
            generations: vec![("p:g:1".into(), u64::MAX)],
        };
        let bytes = encode(&snapshot, &vec![1i64, 2]).unwrap();
        let entry: Entry<Vec<i64>> = decode(&bytes).unwrap();
        assert_eq!(entry.snapshot, snapshot);
        assert_eq!(entry.payload, vec![1, 2]);
        assert!(decode::<Vec<String>>(&bytes).is_none());
        let other = rmp_serde::to_vec(&Entry {
            version: 9,
            snapshot,
            payload: 1u8,
        })
        .unwrap();
        assert!(decode::<u8>(&other).is_none());
    }
}
