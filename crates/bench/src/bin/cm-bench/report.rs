//! `cm-bench report`: the results files and the criterion log to a table on
//! stdout and `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// In place of the reader figures when the reader phase did not finish.
const NOT_MEASURED: &str = "not measured: the reader phase did not finish";

type Figures = BTreeMap<String, String>;

struct Row {
    figure: String,
    value: String,
    target: String,
    ratio: String,
    verdict: String,
}

pub fn run(results: &[PathBuf], criterion: Option<&Path>, out: &Path) -> Result<()> {
    let mut figures = Figures::new();
    for path in results {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('\t') {
                figures.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    let criterion_log = match criterion {
        Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
        None => String::new(),
    };
    let micro = parse_criterion(&criterion_log);
    let rows = rows(&figures, &micro);
    let table = render_table(&rows);
    println!("{table}");
    let markdown = render_markdown(&figures, &rows, &table, &criterion_log)?;
    std::fs::write(out, markdown).with_context(|| format!("write {}", out.display()))?;
    Ok(())
}

/// `(benchmark name, middle throughput estimate with its unit)` from
/// criterion's console output.
fn parse_criterion(log: &str) -> Vec<(String, String)> {
    let mut name = String::new();
    let mut out = Vec::new();
    for line in log.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            if let Some(first) = line.split_whitespace().next() {
                if first.contains('/') {
                    name = first.to_owned();
                }
            }
        }
        if let Some(rest) = line.trim_start().strip_prefix("thrpt:") {
            let inner = rest.trim().trim_start_matches('[').trim_end_matches(']');
            let parts: Vec<&str> = inner.split_whitespace().collect();
            if parts.len() == 6 {
                out.push((name.clone(), format!("{} {}", parts[2], parts[3])));
            }
        }
    }
    out
}

fn num(figures: &Figures, key: &str) -> Option<f64> {
    figures.get(key)?.parse().ok()
}

fn get(figures: &Figures, key: &str) -> String {
    figures.get(key).cloned().unwrap_or_else(|| "-".to_owned())
}

/// Verdict for "value must be at least target".
fn at_least(value: f64, target: f64) -> (String, String) {
    let ratio = value / target;
    let verdict = if ratio >= 1.0 {
        "met".to_owned()
    } else {
        format!("MISSED by {:.0}%", (1.0 - ratio) * 100.0)
    };
    (format!("{ratio:.2}"), verdict)
}

/// Verdict for "value must be below target".
fn below(value: f64, target: f64) -> (String, String) {
    let ratio = value / target;
    let verdict = if ratio < 1.0 {
        "met".to_owned()
    } else {
        format!("MISSED: {ratio:.2}x the limit")
    };
    (format!("{ratio:.2}"), verdict)
}

fn row(figure: &str, value: String, target: &str, verdict: Option<(String, String)>) -> Row {
    let (ratio, verdict) = verdict.unwrap_or_else(|| ("-".to_owned(), "-".to_owned()));
    Row {
        figure: figure.to_owned(),
        value,
        target: target.to_owned(),
        ratio,
        verdict,
    }
}

fn rows(f: &Figures, micro: &[(String, String)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, value) in micro {
        let what = match name.as_str() {
            "pgoutput/decode_stream" => "micro: pgoutput decode (bytes/s)",
            "keys/derive" => "micro: derive (keys/s)",
            "keys/decode_images_derive" => "micro: decode+images+derive (keys/s)",
            _ => name.as_str(),
        };
        rows.push(row(what, value.clone(), "none (information)", None));
    }
    if micro.is_empty() {
        rows.push(row(
            "micro: criterion",
            "not run (see log)".to_owned(),
            "-",
            None,
        ));
    }

    let recv = num(f, "throughput.recvlogical_rows_per_s");
    let inv = num(f, "throughput.invalidator_rows_per_s");
    rows.push(row(
        "throughput: pg_recvlogical (rows/s)",
        get(f, "throughput.recvlogical_rows_per_s"),
        "baseline",
        None,
    ));
    rows.push(row(
        "throughput: cm-invalidator (rows/s)",
        get(f, "throughput.invalidator_rows_per_s"),
        ">= 0.9x pg_recvlogical",
        None,
    ));
    let ratio = recv.zip(inv).map(|(r, i)| i / r);
    rows.push(row(
        "throughput: invalidator / pg_recvlogical",
        ratio.map_or("-".to_owned(), |r| format!("{r:.3}")),
        ">= 0.9",
        ratio.map(|r| at_least(r, 0.9)),
    ));

    for rate in ["1000", "5000"] {
        let key = format!("lag.{rate}");
        if !f.contains_key(&format!("{key}.achieved_tps")) {
            continue;
        }
        rows.push(row(
            &format!("lag @{rate} tx/s: achieved tx/s"),
            get(f, &format!("{key}.achieved_tps")),
            rate,
            None,
        ));
        let target = if rate == "1000" { "< 5 ms" } else { "none" };
        for q in ["p50", "p99"] {
            // ">10000" (past the largest bucket) parses as none: over any limit.
            let hist = num(f, &format!("{key}.hist_{q}_ms")).or_else(|| {
                f.get(&format!("{key}.hist_{q}_ms"))
                    .filter(|v| v.starts_with('>'))
                    .map(|_| f64::INFINITY)
            });
            let verdict = (rate == "1000" && q == "p99")
                .then(|| hist.map(|v| below(v, 5.0)))
                .flatten();
            rows.push(row(
                &format!("lag @{rate} tx/s: histogram {q} (ms)"),
                get(f, &format!("{key}.hist_{q}_ms")),
                if q == "p99" { target } else { "none" },
                verdict,
            ));
        }
        for q in ["p50", "p99"] {
            rows.push(row(
                &format!("lag @{rate} tx/s: poller {q} (ms)"),
                format!(
                    "{} ({} probes, {} timeouts)",
                    get(f, &format!("{key}.probe_{q}_ms")),
                    get(f, &format!("{key}.probes")),
                    get(f, &format!("{key}.probe_timeouts")),
                ),
                "cross-check",
                None,
            ));
        }
    }

    let hwm = num(f, "memory.vmhwm_kib").map(|k| k / 1024.0);
    rows.push(row(
        &format!(
            "memory: worker VmHWM through one {}-row UPDATE (MiB)",
            get(f, "memory.rows")
        ),
        hwm.map_or("-".to_owned(), |m| format!("{m:.1}")),
        "< 64 MiB",
        hwm.map(|m| below(m, 64.0)),
    ));
    rows.push(row(
        "memcached: evictions during the run (each would read as a miss)",
        get(f, "memcached.evictions"),
        "none (information; should be 0)",
        None,
    ));

    if f.contains_key("reader.hit_p50_us") {
        let hit = num(f, "reader.hit_p50_us");
        let raw = num(f, "reader.raw_get_p50_us");
        let pg = num(f, "reader.pg_p50_us");
        rows.push(row(
            "reader: hit p50 / p99, one pool (us)",
            format!(
                "{} / {}",
                get(f, "reader.hit_p50_us"),
                get(f, "reader.hit_p99_us")
            ),
            "-",
            None,
        ));
        if f.contains_key("reader.hit_split_p50_us") {
            // The same hits, results and metadata on two memcached pools
            // (docs/eviction.md): the before and after of the eviction design.
            rows.push(row(
                "reader: hit p50 / p99, results + metadata pools (us)",
                format!(
                    "{} / {}",
                    get(f, "reader.hit_split_p50_us"),
                    get(f, "reader.hit_split_p99_us")
                ),
                "-",
                None,
            ));
        }
        rows.push(row(
            "reader: raw memcached get p50 / p99 (us)",
            format!(
                "{} / {}",
                get(f, "reader.raw_get_p50_us"),
                get(f, "reader.raw_get_p99_us")
            ),
            "floor",
            None,
        ));
        rows.push(row(
            "reader: tokio-postgres query p50 / p99 (us)",
            format!(
                "{} / {}",
                get(f, "reader.pg_p50_us"),
                get(f, "reader.pg_p99_us")
            ),
            "-",
            None,
        ));
        let hit_vs_raw = hit.zip(raw).map(|(h, r)| h / r);
        rows.push(row(
            "reader: hit p50 / raw get p50",
            hit_vs_raw.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            "<= 1.3x",
            hit_vs_raw.map(|r| below(r, 1.3)).map(|(ratio, verdict)| {
                // At exactly the limit the target is met (<=).
                if hit_vs_raw.is_some_and(|r| r <= 1.3) {
                    (ratio, "met".to_owned())
                } else {
                    (ratio, verdict)
                }
            }),
        ));
        let speedup = hit.zip(pg).map(|(h, p)| p / h);
        rows.push(row(
            "reader: speed-up of a hit over Postgres",
            speedup.map_or("-".to_owned(), |s| format!("{s:.1}x")),
            ">= 5x",
            speedup.map(|s| at_least(s, 5.0)),
        ));
        let ceiling = raw.zip(pg).map(|(r, p)| p / r);
        rows.push(row(
            "reader: Postgres p50 / raw get p50 (the most any hit could gain)",
            ceiling.map_or("-".to_owned(), |c| format!("{c:.1}x")),
            "none (information)",
            None,
        ));
        rows.push(row(
            "reader: miss p50 vs plain query p50 (us)",
            format!(
                "{} vs {} (+{})",
                get(f, "reader.miss_p50_us"),
                get(f, "reader.pg_p50_us"),
                get(f, "reader.miss_overhead_p50_us"),
            ),
            "none (information)",
            None,
        ));
        rows.push(row(
            "reader: 95/5 mix hit rate",
            get(f, "reader.mix_hit_rate"),
            "none (information)",
            None,
        ));
        rows.push(row(
            "reader: 95/5 mix queries/s reaching Postgres, cache vs none",
            format!(
                "{} vs {}",
                get(f, "reader.mix_cache_pg_qps"),
                get(f, "reader.mix_nocache_pg_qps")
            ),
            "none (information)",
            None,
        ));
    } else {
        for figure in [
            "reader: hit p50/p99 vs raw memcached get (<= 1.3x)",
            "reader: hit vs tokio-postgres (>= 5x faster)",
            "reader: miss overhead (p50)",
            "reader: 95/5 mix hit rate and DB load",
        ] {
            rows.push(row(figure, NOT_MEASURED.to_owned(), "-", None));
        }
    }
    rows
}

fn render_table(rows: &[Row]) -> String {
    let headers = ["figure", "value", "target", "ratio", "verdict"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.as_str(),
                r.value.as_str(),
                r.target.as_str(),
                r.ratio.as_str(),
                r.verdict.as_str(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: [&str; 5]| {
        let mut text = String::new();
        for (c, w) in row.iter().zip(widths) {
            let _ = write!(text, "{c:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, headers);
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, std::array::from_fn(|i| dashes[i].as_str()));
    for row in cells {
        line(&mut out, row);
    }
    out
}

fn machine() -> (String, String, String) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".to_owned(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    (cpus.to_string(), model, ram)
}

fn render_markdown(f: &Figures, rows: &[Row], table: &str, criterion_log: &str) -> Result<String> {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| "unknown".to_owned());
    let (cpus, model, ram) = machine();
    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# Benchmarks\n")?;
    writeln!(
        w,
        "Written by `scripts/bench`. Every figure below comes from one run on one \
         machine, side by side; the machines are shared and noisy, so read the ratios, not the \
         absolute numbers. Nothing here is asserted by the tests.\n"
    )?;
    writeln!(w, "| | |\n|---|---|")?;
    writeln!(w, "| date (UTC) | {} |", env("CM_BENCH_DATE"))?;
    writeln!(
        w,
        "| machine | {cpus} CPUs (nproc), {model}, {ram} RAM, {} |",
        env("CM_BENCH_KERNEL")
    )?;
    writeln!(
        w,
        "| other load on the machine | {} (other sessions build and test on it) |",
        env("CM_BENCH_LOAD")
    )?;
    writeln!(w, "| git commit | `{}` |", env("CM_BENCH_COMMIT"))?;
    writeln!(w, "| command | `{}` |", env("CM_BENCH_COMMAND"))?;
    writeln!(w, "| sizes | {} |", env("CM_BENCH_SIZES"))?;
    writeln!(
        w,
        "| PostgreSQL | {} (test kit settings: fsync=off, shared_buffers=32MB, synchronous_commit=on) |",
        env("CM_BENCH_PG_VERSION")
    )?;
    writeln!(w, "| wall time | {} |", env("CM_BENCH_PHASE_TIMES"))?;
    writeln!(w)?;

    writeln!(w, "## Results\n")?;
    writeln!(w, "| figure | value | target | ratio to target | verdict |")?;
    writeln!(w, "|---|---|---|---|---|")?;
    for r in rows {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            r.figure, r.value, r.target, r.ratio, r.verdict
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## How each figure is measured\n")?;
    writeln!(
        w,
        "- **Micro (criterion, `crates/bench/benches/codec.rs`)**: a synthetic but \
         wire-exact stream built with `cm_pgoutput::encode_message`: one Relation for \
         `public.item(id int4 pk, grp int4 fk, v int4, pad text)`, REPLICA IDENTITY FULL, then \
         100 transactions of Begin, 100 changes (90 Updates with a full old tuple, 10 Inserts), \
         Commit. `pgoutput/decode_stream` decodes the whole stream with `Decoder::decode`; \
         `keys/derive` runs `cm_keys::derive` over the pre-built images of every change \
         (3 flush keys per change: object, FK parent, predicate); \
         `keys/decode_images_derive` is the worker's whole CPU path per change (decode, \
         `images_from_pgoutput`, `derive`). Throughput is criterion's middle estimate."
    )?;
    writeln!(
        w,
        "- **Throughput**: table `item` ({} rows, REPLICA IDENTITY FULL, FK to `grp`). \
         `cm-invalidator setup` creates the publication and the worker's slot, then a second \
         pgoutput slot is created at once, before any write. One cached result per sampled row \
         and per sampled group ({} results, registered in the object and predicate flush lists \
         the way the reader does) so that the worker really deletes. Then {} row updates in {} \
         transactions (one `DO` block with a `COMMIT` per transaction), `pg_current_wal_lsn()` \
         taken as the end, and one more single-row commit past it. `pg_recvlogical -d <db> --slot <s2> \
         --start -o proto_version=1 -o publication_names=<pub> -f /dev/null --endpos <end>` is \
         timed from spawn to exit; then `cm-invalidator run` is timed from spawn until its \
         heartbeat LSN passes the end or its slot's `confirmed_flush_lsn` reaches it (polled \
         every 5 ms; the worker's start-up, including its first-start epoch bump, is inside the \
         time). The consumers run one after the other on the same WAL, so each has the machine \
         to itself.",
        get(f, "load.rows"),
        get(f, "throughput.cached_results"),
        get(f, "throughput.rows"),
        get(f, "throughput.transactions"),
    )?;
    writeln!(
        w,
        "- **Lag**: {} connections run single-row `UPDATE ... WHERE id = $1` transactions \
         (autocommit) paced to the target rate for {} s, over rows of which 1% sit in cached \
         results. `/metrics` is scraped before and after; p50/p99 of \
         `cm_invalidator_commit_to_invalidated_seconds` are interpolated from the bucket deltas \
         (buckets 0.5, 1, 2, 5, 10, 25 ms...: a p99 inside a bucket is an interpolation, \
         not an observation). The poller is a separate check: every 100 ms it caches a result \
         under a row only it updates, commits the update, and polls memcached without pause until \
         the result is gone, timing from the commit's acknowledgement to the client.",
        get(f, "lag.writers"),
        get(f, "lag.seconds"),
    )?;
    writeln!(
        w,
        "- **Memory**: a fresh `cm-invalidator run`, caught up and idle (VmHWM {} KiB), then one \
         `UPDATE item SET v = v + 1 WHERE id < {}` transaction; VmHWM (`/proc/<pid>/status`) \
         after the worker has applied it. Beyond `worker.key_budget` (10,000 keys) the worker \
         coarsens such a transaction to a table generation bump ({} coarsened), which is what \
         bounds its memory; its cached results are then stale by generation rather than deleted.",
        get(f, "memory.idle_vmhwm_kib"),
        get(f, "memory.rows"),
        get(f, "memory.coarsened_transactions"),
    )?;
    writeln!(w)?;

    writeln!(w, "## Where the time goes\n")?;
    writeln!(
        w,
        "Throughput catch-up: pg_recvlogical took {} s (its walsender used {} s of CPU); \
         cm-invalidator took {} s, using {} s of CPU itself while its walsender used {} s and \
         memcached {} s. The worker applied {} transactions and {} changes, deleted {} cached \
         keys ({} of the sampled results left afterwards). Worker peak RSS in this phase: {} KiB.",
        get(f, "throughput.recvlogical_seconds"),
        get(f, "throughput.recvlogical_walsender_cpu_s"),
        get(f, "throughput.invalidator_seconds"),
        get(f, "throughput.invalidator_cpu_s"),
        get(f, "throughput.invalidator_walsender_cpu_s"),
        get(f, "throughput.memcached_cpu_s"),
        get(f, "throughput.cm_invalidator_transactions_total"),
        get(f, "throughput.cm_invalidator_changes_total"),
        get(f, "throughput.cm_invalidator_keys_invalidated_total"),
        get(f, "throughput.cached_left"),
        get(f, "throughput.invalidator_vmhwm_kib"),
    )?;
    writeln!(w)?;
    if let Some(path) = f.get("lag.profile") {
        if let Ok(profile) = std::fs::read_to_string(path) {
            writeln!(
                w,
                "`perf record -F 499 -e cpu-clock -g -p <worker>` during the lag phase at {} tx/s \
                 (not during the timed catch-up: perf's cost grows with the worker's thread \
                 switches and would slow what is timed; the lag figures at this rate, which has \
                 no target, are taken with perf attached), `perf report --no-children --sort \
                 dso,symbol`, entries above 1.5%:\n",
                get(f, "lag.profile_rate"),
            )?;
            writeln!(w, "```text\n{}\n```\n", profile.trim_end())?;
        }
    }
    if let Some(path) = f.get("reader.profile") {
        if let Ok(profile) = std::fs::read_to_string(path) {
            writeln!(
                w,
                "Reader hit path: `perf record -F 499 -e cpu-clock -g -p <cm-bench>` through \
                 20,000 more hits after the timed ones (nothing else runs in the process then), \
                 same report, entries above 1.5%:\n"
            )?;
            writeln!(w, "```text\n{}\n```\n", profile.trim_end())?;
        }
    }
    for rate in ["1000", "5000"] {
        if let Some(cpu) = f.get(&format!("lag.{rate}.invalidator_cpu_pct")) {
            writeln!(
                w,
                "Lag @{rate} tx/s: the worker used {cpu}% of one CPU (achieved {} tx/s; poller max {} ms).\n",
                get(f, &format!("lag.{rate}.achieved_tps")),
                get(f, &format!("lag.{rate}.probe_max_ms")),
            )?;
        }
    }

    writeln!(w, "## Raw figures\n")?;
    writeln!(w, "```text")?;
    for (k, v) in f {
        writeln!(w, "{k}\t{v}")?;
    }
    writeln!(w, "```\n")?;
    let thrpt: Vec<&str> = criterion_log
        .lines()
        .filter(|l| {
            l.contains("time:")
                || l.contains("thrpt:")
                || l.starts_with("keys/")
                || l.starts_with("pgoutput/")
        })
        .collect();
    if !thrpt.is_empty() {
        writeln!(w, "Criterion:\n\n```text\n{}\n```\n", thrpt.join("\n"))?;
    }
    writeln!(w, "## Output of the run\n")?;
    writeln!(w, "```text\n{}```", table)?;
    Ok(md)
}
