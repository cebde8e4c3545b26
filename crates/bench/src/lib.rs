//! Support code for the benchmarks (`scripts/bench`): the synthetic pgoutput
//! stream and schema of the micro benchmarks, Prometheus histogram quantiles,
//! percentiles, and small process and URL helpers for the `cm-bench` binary.
//!
//! Nothing here asserts a target: machines are shared and noisy, so the
//! report gives figures and their ratios to the targets it lists (the
//! `target` column of `BENCHMARKS.md`).

use bytes::Bytes;
use cm_keys::{
    oid, Column, ColumnSet, ForeignKey, ForeignKeySource, KeySource, ReplicaIdentity, Table,
    TableName, TablePolicy,
};
use cm_pgoutput::{
    encode_message, Begin, ColumnValue, Commit, Insert, LogicalMessage, Lsn, OldTuple, PgTimestamp,
    Relation, RelationColumn, TupleData, Update,
};

/// The relation id the synthetic stream uses for `public.item`.
pub const ITEM_REL_ID: u32 = 16_384;

/// `public.item(id int4 pk, grp int4 -> public.grp(id), v int4, pad text)`,
/// REPLICA IDENTITY FULL, `grp` a predicate set: every update yields an
/// object key, a parent key and a predicate key.
pub fn item_table() -> Table {
    let column = |name: &str, type_oid| Column {
        name: name.to_owned(),
        type_oid,
        deterministic_collation: true,
    };
    Table {
        oid: Some(ITEM_REL_ID),
        name: TableName::new("public", "item"),
        columns: vec![
            column("id", oid::INT4),
            column("grp", oid::INT4),
            column("v", oid::INT4),
            column("pad", oid::TEXT),
        ],
        primary_key: vec!["id".to_owned()],
        key_source: KeySource::PrimaryKey,
        foreign_keys: vec![ForeignKey {
            columns: vec!["grp".to_owned()],
            parent: TableName::new("public", "grp"),
            parent_columns: vec!["id".to_owned()],
            references_parent_key: true,
            source: ForeignKeySource::Constraint,
        }],
        replica_identity: ReplicaIdentity::Full,
        identity_index_columns: Vec::new(),
        partition_root: None,
        inherits_from: Vec::new(),
        unlogged: false,
        predicate_sets: vec![ColumnSet::new(["grp"])],
        policy: TablePolicy::Rows,
    }
}

/// The pgoutput Relation message PostgreSQL sends for [`item_table`].
pub fn item_relation() -> Relation {
    let table = item_table();
    Relation {
        xid: None,
        rel_id: ITEM_REL_ID,
        namespace: table.name.schema.clone(),
        name: table.name.name.clone(),
        replica_identity: table.replica_identity,
        columns: table
            .columns
            .iter()
            .map(|c| RelationColumn {
                flags: 1,
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// The text-format tuple of row `id` of `public.item` with value `v`.
pub fn item_tuple(id: u64, v: u64) -> TupleData {
    let text = |s: String| ColumnValue::Text(Bytes::from(s));
    TupleData {
        columns: vec![
            text(id.to_string()),
            text((id / 100).to_string()),
            text(v.to_string()),
            text(format!("padding-for-row-{id:08}-abcdefghijklmnop")),
        ],
    }
}

/// A realistic pgoutput stream as the walsender sends it for `transactions`
/// transactions of `rows_per_txn` changes each (one Relation first; every
/// tenth change an Insert, the rest Updates with a full old tuple):
/// Begin, Insert/Update..., Commit. Returns the payloads in order.
pub fn synthetic_stream(transactions: u64, rows_per_txn: u64) -> Vec<Bytes> {
    let mut out = vec![encode_message(&LogicalMessage::Relation(item_relation()))];
    let mut lsn = 0x0100_0000_u64;
    let ts = PgTimestamp(800_000_000_000_000);
    for txn in 0..transactions {
        let xid = u32::try_from(1000 + txn).unwrap_or(u32::MAX);
        let changes_end = lsn + rows_per_txn * 120;
        out.push(encode_message(&LogicalMessage::Begin(Begin {
            final_lsn: Lsn(changes_end),
            commit_ts: ts,
            xid,
        })));
        for row in 0..rows_per_txn {
            let id = txn * rows_per_txn + row;
            let message = if row % 10 == 9 {
                LogicalMessage::Insert(Insert {
                    xid: None,
                    rel_id: ITEM_REL_ID,
                    new: item_tuple(id, 0),
                })
            } else {
                LogicalMessage::Update(Update {
                    xid: None,
                    rel_id: ITEM_REL_ID,
                    old: Some(OldTuple::Full(item_tuple(id, 1))),
                    new: item_tuple(id, 2),
                })
            };
            out.push(encode_message(&message));
        }
        out.push(encode_message(&LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(changes_end),
            end_lsn: Lsn(changes_end + 48),
            commit_ts: ts,
        })));
        lsn = changes_end + 48;
    }
    out
}

/// Linear-interpolated quantile `q` (0..=1) of the observations between two
/// scrapes of a Prometheus histogram, from the per-bucket count deltas, the
/// way `histogram_quantile` computes it. `before` and `after` are
/// `(upper bound, cumulative count)` pairs in bucket order, `+Inf` last.
/// Returns `None` when nothing was observed in between; a quantile that
/// falls into the `+Inf` bucket returns the largest finite bound.
pub fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - earlier)
        })
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (le, count) in &deltas {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(*le);
            }
            return Some(lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = *le;
        lower_count = *count;
    }
    Some(lower_bound)
}

/// The `(le, cumulative count)` buckets of histogram `name` in a Prometheus
/// text exposition, in the order given.
pub fn parse_histogram(exposition: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = rest.trim().parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The value of an unlabelled sample `name` in a Prometheus exposition.
pub fn parse_sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Nearest-rank percentile `q` (0..=1) of `sorted` (ascending).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Replaces the database of a `postgres://` URL (keeping any `?query`).
pub fn url_with_database(url: &str, database: &str) -> Option<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://")? + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

/// Peak resident set size (`VmHWM`) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "VmHWM:")
}

/// Current resident set size (`VmRSS`) of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "VmRSS:")
}

fn status_field_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// CPU time (user + system) used so far by process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after it.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Pids of processes whose command name (`/proc/PID/comm`) is `comm`.
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == comm)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let before = [(0.001, 0.0), (0.002, 0.0), (f64::INFINITY, 0.0)];
        let after = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        let p50 = histogram_quantile(&before, &after, 0.5).unwrap_or(f64::NAN);
        assert!((p50 - 0.001).abs() < 1e-9);
        let p75 = histogram_quantile(&before, &after, 0.75).unwrap_or(f64::NAN);
        assert!((p75 - 0.0015).abs() < 1e-9);
    }

    #[test]
    fn urls_get_their_database_replaced() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5433/postgres", "b").as_deref(),
            Some("postgres://postgres@127.0.0.1:5433/b")
        );
        assert_eq!(
            url_with_database("postgres://u@h:1?sslmode=disable", "b").as_deref(),
            Some("postgres://u@h:1/b?sslmode=disable")
        );
    }

    #[test]
    fn histograms_parse() {
        let text = "x_bucket{le=\"0.5\"} 3\nx_bucket{le=\"+Inf\"} 4\nx_sum 1\nx_count 4\n";
        assert_eq!(
            parse_histogram(text, "x"),
            vec![(0.5, 3.0), (f64::INFINITY, 4.0)]
        );
        assert_eq!(parse_sample(text, "x_count"), Some(4.0));
    }
}
