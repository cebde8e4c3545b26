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

/// The buckets of a labelled Prometheus histogram `name`, per value of
/// `label` (e.g. `stage` of `cm_invalidator_stage_seconds{stage="apply"}`):
/// `(le, cumulative count)` pairs in the order given, as
/// [`parse_histogram`] returns them for an unlabelled one. The label
/// values come in the order they first appear (the exporter's order).
/// Empty when the exposition has no such histogram.
pub fn parse_labelled_histograms(
    exposition: &str,
    name: &str,
    label: &str,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let mut group = None;
        let mut le = None;
        for pair in labels.split(',') {
            let Some((key, quoted)) = pair.split_once('=') else {
                continue;
            };
            let text = quoted.trim().trim_matches('"');
            match key.trim() {
                "le" if text == "+Inf" => le = Some(f64::INFINITY),
                "le" => le = text.parse().ok(),
                key if key == label => group = Some(text.to_owned()),
                _ => {}
            }
        }
        if let (Some(group), Some(le), Ok(count)) = (group, le, value.trim().parse::<f64>()) {
            match out.iter_mut().find(|(g, _)| *g == group) {
                Some((_, buckets)) => buckets.push((le, count)),
                None => out.push((group, vec![(le, count)])),
            }
        }
    }
    out
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

/// Parent pid (`/proc/PID/stat`, field 4) of process `pid`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) used so far by process `pid` and by its
/// children that it has waited for (`cutime`, `cstime`), in seconds.
fn cpu_seconds_with_reaped(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let mut ticks = 0.0;
    for index in 11..=14 {
        ticks += fields.get(index)?.parse::<f64>().ok()?;
    }
    Some(ticks / 100.0)
}

/// CPU seconds used so far by the processes `roots` and all their
/// descendants, including descendants that exited and were waited for by
/// a process of the tree. Each process is counted once, also when roots
/// overlap.
pub fn tree_cpu_seconds(roots: &[u32]) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    let parents: Vec<(u32, u32)> = pids
        .iter()
        .filter_map(|&pid| Some((pid, parent_pid(pid)?)))
        .collect();
    let mut tree: std::collections::BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = tree.len();
        for (pid, parent) in &parents {
            if tree.contains(parent) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.iter()
        .filter_map(|&pid| cpu_seconds_with_reaped(pid))
        .sum()
}

/// Busy CPU seconds of the whole machine since boot, from the `cpu` line
/// of a `/proc/stat` text: user, nice, system, irq, softirq and steal
/// (guest time is already inside user); idle and iowait are not busy.
pub fn busy_cpu_seconds(proc_stat: &str) -> Option<f64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0.0))
        .sum::<f64>();
    Some(busy / 100.0)
}

/// The 1-minute load average from a `/proc/loadavg` text.
pub fn load_1min(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
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
    fn labelled_histograms_parse_per_label_value() {
        let text = "s_bucket{stage=\"decode\",le=\"0.001\"} 2\n\
                    s_bucket{stage=\"decode\",le=\"+Inf\"} 3\n\
                    s_bucket{le=\"0.001\",stage=\"apply\"} 5\n\
                    s_bucket{le=\"+Inf\",stage=\"apply\"} 7\n\
                    s_sum{stage=\"apply\"} 1\n\
                    other_bucket{stage=\"x\",le=\"1\"} 9\n";
        let stages = parse_labelled_histograms(text, "s", "stage");
        assert_eq!(
            stages,
            vec![
                (
                    "decode".to_owned(),
                    vec![(0.001, 2.0), (f64::INFINITY, 3.0)]
                ),
                ("apply".to_owned(), vec![(0.001, 5.0), (f64::INFINITY, 7.0)]),
            ]
        );
        assert!(parse_labelled_histograms(text, "missing", "stage").is_empty());
    }

    #[test]
    fn machine_load_parses() {
        let stat = "cpu  100 10 50 1000 20 5 5 0 7 0\ncpu0 50 5 25 500 10 2 2 0 0 0\n";
        // user + nice + system + irq + softirq + steal, in ticks of 1/100 s.
        assert_eq!(busy_cpu_seconds(stat), Some(1.7));
        assert_eq!(busy_cpu_seconds("intr 1 2 3\n"), None);
        assert_eq!(load_1min("1.25 0.80 0.50 2/300 1234\n"), Some(1.25));
    }

    #[test]
    fn medians_take_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_process_tree_counts_its_root() {
        let me = std::process::id();
        // Burn a little CPU (bounded), so that the root has some to count.
        let mut spin = 0_u64;
        for i in 0..50_000_000_u64 {
            spin = spin.wrapping_add(i.wrapping_mul(i));
            if i % 1_000_000 == 0 && cpu_seconds(me).unwrap_or(0.0) >= 0.05 {
                break;
            }
        }
        assert_ne!(spin, 1);
        let own = cpu_seconds(me).unwrap_or(0.0);
        assert!(own > 0.0);
        let once = tree_cpu_seconds(&[me]);
        assert!(once >= own);
        // Counted once, though named twice.
        assert!(tree_cpu_seconds(&[me, me]) < once + own / 2.0);
        assert_eq!(tree_cpu_seconds(&[]), 0.0);
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
