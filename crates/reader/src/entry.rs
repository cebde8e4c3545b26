//! The value stored under a `q:` key: what it was filled under, the query it
//! came from, then the payload, encoded with rmp-serde (as an array:
//! `[version, snapshot, source, payload]`).
//!
//! Version 2 added `source` (the statement text, namespace, result kind and
//! parameters as type oid and binary bytes or NULL), so the consistency
//! checker can re-run the query; it is `None` for values that do not come
//! from one statement (`QueryCache::cached`, `cached_with`). Entries of
//! version 1 read as misses and are refilled.
//!
//! Still version 2, `source` later gained a fifth element, `settings` (the
//! session state the statement ran under, [`SessionSettings`]): a source of
//! four elements decodes with no settings, and the hit path skips the
//! source whole, so entries written before and after decode alike.
//!
//! A hit is valid only while the epoch and every generation recorded here
//! equal the ones read in the same multi-get; a generation key recorded here
//! but not read (or read as missing) fails the check.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::settings::SessionSettings;

/// Bumped when the layout changes: an entry of another version is a miss.
const ENTRY_VERSION: u8 = 2;

/// Epoch and table generations at the time a fill started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The global epoch.
    pub(crate) epoch: u64,
    /// Each generation key and its value.
    pub(crate) generations: Vec<(String, u64)>,
}

/// The payload kind of a result read as rows (`query`, `query_one`,
/// `query_opt`, `count`): a `RowSet` the checker can compare byte for byte.
pub(crate) const ROWS_KIND: &str = "rows";

/// One parameter as it was sent: type oid and binary bytes (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceParam {
    pub(crate) type_oid: u32,
    pub(crate) bytes: Option<serde_bytes::ByteBuf>,
}

/// The statement a cached result came from: enough to run it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Source {
    /// What the payload is: [`ROWS_KIND`], or `as:<type>` for `query_as`.
    pub(crate) kind: String,
    /// The query's namespace (`QueryOptions::namespace`).
    pub(crate) namespace: String,
    /// The statement as sent (for `count`, the wrapping `SELECT count(*)`).
    pub(crate) sql: String,
    /// The parameters with the types the statement was prepared with.
    pub(crate) params: Vec<SourceParam>,
    /// The session state of the reader that learned the statement; `None`
    /// in entries written before it was recorded (their source has four
    /// elements: `default` fills this one in).
    #[serde(default)]
    pub(crate) settings: Option<SessionSettings>,
}

/// One cached value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry<P> {
    pub(crate) version: u8,
    pub(crate) snapshot: Snapshot,
    pub(crate) source: Option<Source>,
    pub(crate) payload: P,
}

/// Encodes `payload` filled under `snapshot` from `source`.
pub(crate) fn encode<P: Serialize>(
    snapshot: &Snapshot,
    source: Option<&Source>,
    payload: &P,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    #[derive(Serialize)]
    struct EntryRef<'a, P> {
        version: u8,
        snapshot: &'a Snapshot,
        source: Option<&'a Source>,
        payload: &'a P,
    }
    rmp_serde::to_vec(&EntryRef {
        version: ENTRY_VERSION,
        snapshot,
        source,
        payload,
    })
}

/// An entry as the hit path reads it: generation keys borrowed from the
/// stored bytes and the source skipped, so a hit allocates only its payload.
#[derive(Debug, Deserialize)]
pub(crate) struct HitEntry<'a, P> {
    version: u8,
    #[serde(borrow)]
    pub(crate) snapshot: SnapshotRef<'a>,
    /// Read past, never kept (entries are arrays: the name is not stored).
    _source: IgnoredAny,
    pub(crate) payload: P,
}

/// A [`Snapshot`] borrowed from stored bytes.
#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotRef<'a> {
    pub(crate) epoch: u64,
    #[serde(borrow)]
    pub(crate) generations: Vec<(&'a str, u64)>,
}

/// Decodes an entry for a hit; `None` for bytes of another version or shape.
pub(crate) fn decode_hit<'a, P: Deserialize<'a>>(bytes: &'a [u8]) -> Option<HitEntry<'a, P>> {
    let entry: HitEntry<'a, P> = rmp_serde::from_slice(bytes).ok()?;
    (entry.version == ENTRY_VERSION).then_some(entry)
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

    fn tokyo() -> SessionSettings {
        SessionSettings {
            role: "reader".into(),
            search_path: "shelf, public".into(),
            time_zone: "Asia/Tokyo".into(),
            date_style: "ISO, MDY".into(),
            interval_style: "postgres".into(),
            extra_float_digits: "1".into(),
            lc_monetary: "C".into(),
            lc_numeric: "C".into(),
            lc_time: "C".into(),
            default_text_search_config: "pg_catalog.simple".into(),
            bytea_output: "hex".into(),
            xmloption: "content".into(),
            row_security: "on".into(),
        }
    }

    #[test]
    fn entry_round_trips_and_other_versions_are_refused() {
        let snapshot = Snapshot {
            epoch: 7,
            generations: vec![("p:g:1".into(), u64::MAX)],
        };
        let source = Source {
            kind: ROWS_KIND.into(),
            namespace: "fr".into(),
            sql: "SELECT $1::int".into(),
            params: vec![
                SourceParam {
                    type_oid: 23,
                    bytes: Some(serde_bytes::ByteBuf::from(vec![0, 0, 0, 7])),
                },
                SourceParam {
                    type_oid: 25,
                    bytes: None,
                },
            ],
            settings: Some(tokyo()),
        };
        let bytes = encode(&snapshot, Some(&source), &vec![1i64, 2]).unwrap();
        let entry: Entry<Vec<i64>> = decode(&bytes).unwrap();
        assert_eq!(entry.snapshot, snapshot);
        assert_eq!(entry.source, Some(source));
        assert_eq!(entry.payload, vec![1, 2]);
        assert!(decode::<Vec<String>>(&bytes).is_none());
        // The checker reads the head without knowing the payload type.
        let head: Entry<serde::de::IgnoredAny> = decode(&bytes).unwrap();
        assert_eq!(head.snapshot, snapshot);
        let other = rmp_serde::to_vec(&Entry {
            version: 9,
            snapshot: snapshot.clone(),
            source: None,
            payload: 1u8,
        })
        .unwrap();
        assert!(decode::<u8>(&other).is_none());
        // Version 1 entries (no source) are misses.
        let v1 = rmp_serde::to_vec(&(1u8, &snapshot, 1u8)).unwrap();
        assert!(decode::<u8>(&v1).is_none());
        assert!(decode_hit::<u8>(&v1).is_none());
        assert!(decode_hit::<u8>(&other).is_none());
    }

    #[test]
    fn the_hit_decoding_borrows_the_snapshot_and_skips_the_source() {
        let snapshot = Snapshot {
            epoch: 3,
            generations: vec![("p:g:a".into(), 1), ("p:g:b".into(), 2)],
        };
        let source = Source {
            kind: ROWS_KIND.into(),
            namespace: String::new(),
            sql: "SELECT 1".into(),
            params: Vec::new(),
            settings: Some(tokyo()),
        };
        for source in [None, Some(&source)] {
            let bytes = encode(&snapshot, source, &vec![5u32, 6]).unwrap();
            let hit: HitEntry<'_, Vec<u32>> = decode_hit(&bytes).unwrap();
            assert_eq!(hit.snapshot.epoch, 3);
            assert_eq!(hit.snapshot.generations, vec![("p:g:a", 1), ("p:g:b", 2)]);
            assert_eq!(hit.payload, vec![5, 6]);
        }
    }

    #[test]
    fn a_source_stored_before_settings_were_recorded_decodes_without_them() {
        let snapshot = Snapshot {
            epoch: 1,
            generations: vec![("p:g:1".into(), 2)],
        };
        // The version 2 layout as it was written before `settings`: the
        // source an array of four elements.
        let params: Vec<SourceParam> = Vec::new();
        let old_source = (ROWS_KIND, "fr", "SELECT 1", &params);
        let old = rmp_serde::to_vec(&(ENTRY_VERSION, &snapshot, Some(old_source), 5u8)).unwrap();
        let entry: Entry<u8> = decode(&old).unwrap();
        let source = entry.source.unwrap();
        assert_eq!(
            (source.namespace.as_str(), source.sql.as_str()),
            ("fr", "SELECT 1")
        );
        assert_eq!(source.settings, None);
        assert_eq!(entry.payload, 5);
        assert_eq!(decode_hit::<u8>(&old).unwrap().payload, 5);
    }

    #[test]
    fn settings_are_the_fifth_element_of_the_stored_source() {
        let source = Source {
            kind: ROWS_KIND.into(),
            namespace: String::new(),
            sql: "SELECT 1".into(),
            params: Vec::new(),
            settings: Some(tokyo()),
        };
        let bytes = rmp_serde::to_vec(&source).unwrap();
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        let elements = value.as_array().unwrap();
        assert_eq!(elements.len(), 5);
        let settings = elements[4].as_array().unwrap();
        assert_eq!(settings.len(), 13);
        assert_eq!(settings[0].as_str(), Some("reader"));
        assert_eq!(settings[2].as_str(), Some("Asia/Tokyo"));
    }
}
