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

/// A figure measured in rounds: its median, and the spread (min-max) of
/// the rounds' values from `KEY.runs` when there were several.
fn spread(figures: &Figures, key: &str) -> String {
    let value = get(figures, key);
    let runs: Vec<&str> = figures
        .get(&format!("{key}.runs"))
        .map(|r| r.split_whitespace().collect())
        .unwrap_or_default();
    let numbers: Vec<f64> = runs.iter().filter_map(|r| r.parse().ok()).collect();
    if numbers.len() < 2 {
        return value;
    }
    let (min, max) = numbers
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    // The rounds' values as written (same decimals as the median).
    let text = |v: f64| {
        runs.iter()
            .find(|r| r.parse::<f64>().ok() == Some(v))
            .map_or_else(|| v.to_string(), |r| (*r).to_owned())
    };
    format!("{value} ({}-{})", text(min), text(max))
}

/// `VALUE (spread)` with `unit` after the value: `0.46x (0.40-0.51)`.
fn with_unit(text: &str, unit: &str) -> String {
    match text.split_once(' ') {
        Some((value, rest)) => format!("{value}{unit} {rest}"),
        None => format!("{text}{unit}"),
    }
}

/// `P50 (spread) / P99 (spread)` of a latency figure `PREFIX_p50_us`.
fn pair(figures: &Figures, prefix: &str) -> String {
    format!(
        "{} / {}",
        spread(figures, &format!("{prefix}_p50_us")),
        spread(figures, &format!("{prefix}_p99_us"))
    )
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

/// Verdict for "value must be at most target" (met at exactly the limit).
fn at_most(value: f64, target: f64) -> (String, String) {
    let ratio = value / target;
    let verdict = if ratio <= 1.0 {
        "met".to_owned()
    } else {
        format!("MISSED: {ratio:.2}x the limit")
    };
    (format!("{ratio:.2}"), verdict)
}

/// The ratio to a limit that is reported but not judged.
fn ratio_only(value: f64, target: f64, why: &str) -> (String, String) {
    (format!("{:.2}", value / target), why.to_owned())
}

fn row(figure: &str, value: String, target: &str, verdict: Option<(String, String)>) -> Row {
    let (ratio, verdict) = verdict.unwrap_or_else(|| ("-".to_owned(), "-".to_owned()));
    Row {
        figure: figure.to_owned(),
        value: if value.is_empty() {
            "-".to_owned()
        } else {
            value
        },
        target: target.to_owned(),
        ratio,
        verdict,
    }
}

/// The phases recorded (`phase.NAME.seconds`), in the order they ran.
fn phases(f: &Figures) -> Vec<String> {
    let mut found: Vec<(f64, String)> = f
        .keys()
        .filter_map(|k| k.strip_prefix("phase.")?.strip_suffix(".seconds"))
        .map(|name| {
            let start = num(f, &format!("phase.{name}.start_unix")).unwrap_or(f64::MAX);
            (start, name.to_owned())
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    found.into_iter().map(|(_, name)| name).collect()
}

/// `start->end` of a number over phases: one value, or the range of each
/// end over several (`1.20-1.80 -> 1.50-2.10`).
fn load_text(f: &Figures, names: &[&str]) -> Option<String> {
    let values = |field: &str| -> Vec<f64> {
        names
            .iter()
            .filter_map(|n| num(f, &format!("phase.{n}.{field}")))
            .collect()
    };
    let range = |v: &[f64]| -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if (hi - lo).abs() < 0.005 {
            format!("{lo:.2}")
        } else {
            format!("{lo:.2}-{hi:.2}")
        }
    };
    let (start, end, other) = (
        values("load1_start"),
        values("load1_end"),
        values("other_cpus"),
    );
    if start.is_empty() && other.is_empty() {
        return None;
    }
    let mut text = String::new();
    if !start.is_empty() && !end.is_empty() {
        let _ = write!(text, "loadavg {} -> {}", range(&start), range(&end));
    }
    if !other.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "other processes {} CPUs", range(&other));
    }
    Some(text)
}

/// The machine-load row of a group of phases, shown with its figures.
fn load_row(rows: &mut Vec<Row>, f: &Figures, label: &str, names: &[&str]) {
    if let Some(text) = load_text(f, names) {
        rows.push(row(
            &format!("{label}: machine load (1-min loadavg start -> end; others' CPU)"),
            text,
            "information",
            None,
        ));
    }
}

fn rows(f: &Figures, micro: &[(String, String)]) -> Vec<Row> {
    let mut rows = Vec::new();
    micro_rows(&mut rows, micro);
    invalidator_rows(&mut rows, f);
    lag_rows(&mut rows, f);
    if f.contains_key("reader.hit_p50_us") {
        reader_rows(&mut rows, f);
        heavy_rows(&mut rows, f);
        miss_rows(&mut rows, f);
        mix_rows(&mut rows, f);
    } else {
        for figure in [
            "reader: hit p50/p99 vs raw memcached get (<= 1.3x)",
            "reader: hit vs tokio-postgres (>= 5x faster)",
            "reader: heavy query hit vs PostgreSQL",
            "reader: miss p50 vs plain query + 3 raw gets (<= 1x)",
            "reader: 95/5 mix ops/s, cache / none (>= 1.2x)",
        ] {
            rows.push(row(figure, NOT_MEASURED.to_owned(), "-", None));
        }
    }
    three_server_rows(&mut rows, f);
    rows
}

fn micro_rows(rows: &mut Vec<Row>, micro: &[(String, String)]) {
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
}

fn invalidator_rows(rows: &mut Vec<Row>, f: &Figures) {
    let recv = num(f, "throughput.recvlogical_rows_per_s");
    let inv = num(f, "throughput.invalidator_rows_per_s");
    load_row(rows, f, "throughput", &["throughput"]);
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

    load_row(rows, f, "memory", &["memory"]);
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
}

/// The lag runs recorded, `(mode, rate)` in the order they ran.
fn lag_runs(f: &Figures) -> Vec<(String, String)> {
    let rates: Vec<String> = f
        .get("lag.rates")
        .map(|r| r.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut runs = Vec::new();
    for mode in ["quiet", "busy"] {
        for rate in &rates {
            if f.contains_key(&format!("lag.{mode}.{rate}.achieved_tps")) {
                runs.push((mode.to_owned(), rate.clone()));
            }
        }
    }
    runs
}

fn lag_rows(rows: &mut Vec<Row>, f: &Figures) {
    for (mode, rate) in lag_runs(f) {
        let key = format!("lag.{mode}.{rate}");
        let label = if mode == "busy" {
            format!("lag @{rate} tx/s busy ({} CPU hogs)", get(f, "lag.hogs"))
        } else {
            format!("lag @{rate} tx/s quiet")
        };
        load_row(rows, f, &label, &[&format!("lag_{mode}_{rate}")]);
        rows.push(row(
            &format!("{label}: achieved tx/s"),
            get(f, &format!("{key}.achieved_tps")),
            &rate,
            None,
        ));
        for q in ["p50", "p99"] {
            // ">10000" (past the largest bucket) parses as none: over any limit.
            let hist = num(f, &format!("{key}.hist_{q}_ms")).or_else(|| {
                f.get(&format!("{key}.hist_{q}_ms"))
                    .filter(|v| v.starts_with('>'))
                    .map(|_| f64::INFINITY)
            });
            let (target, verdict) = match (q, mode.as_str()) {
                ("p99", "quiet") => ("< 5 ms", hist.map(|v| below(v, 5.0))),
                ("p99", _) => (
                    "< 5 ms applies to quiet",
                    hist.map(|v| ratio_only(v, 5.0, "information (busy)")),
                ),
                _ => ("none", None),
            };
            rows.push(row(
                &format!("{label}: histogram {q} (ms)"),
                get(f, &format!("{key}.hist_{q}_ms")),
                target,
                verdict,
            ));
        }
        for q in ["p50", "p99"] {
            rows.push(row(
                &format!("{label}: poller {q} (ms)"),
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
}

/// The reader rounds' phase names.
fn round_phases<'a>(prefix: &str, all: &'a [String]) -> Vec<&'a str> {
    all.iter()
        .filter(|n| n.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

fn reader_rows(rows: &mut Vec<Row>, f: &Figures) {
    let all = phases(f);
    load_row(
        rows,
        f,
        "reader rounds",
        &round_phases("reader_round", &all),
    );
    let hit = num(f, "reader.hit_p50_us");
    let raw = num(f, "reader.raw_get_p50_us");
    let pg = num(f, "reader.pg_p50_us");
    rows.push(row(
        "reader: hit p50 / p99, one pool (us)",
        pair(f, "reader.hit"),
        "-",
        None,
    ));
    if f.contains_key("reader.hit_split_p50_us") {
        // The same hits, results and metadata on two memcached pools
        // (docs/eviction.md): the before and after of the eviction design.
        rows.push(row(
            "reader: hit p50 / p99, results + metadata pools (us)",
            pair(f, "reader.hit_split"),
            "-",
            None,
        ));
    }
    rows.push(row(
        "reader: raw memcached get p50 / p99 (us)",
        pair(f, "reader.raw_get"),
        "floor",
        None,
    ));
    rows.push(row(
        "reader: tokio-postgres query p50 / p99 (us)",
        pair(f, "reader.pg"),
        "-",
        None,
    ));
    let hit_vs_raw = hit.zip(raw).map(|(h, r)| h / r);
    rows.push(row(
        "reader: hit p50 / raw get p50",
        hit_vs_raw.map_or("-".to_owned(), |r| format!("{r:.2}x")),
        "<= 1.3x",
        hit_vs_raw.map(|r| at_most(r, 1.3)),
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
}

fn heavy_rows(rows: &mut Vec<Row>, f: &Figures) {
    if !f.contains_key("reader.heavy_pg_p50_us") {
        return;
    }
    let ms = |key: &str| num(f, key).map(|v| v / 1000.0);
    let pg50 = ms("reader.heavy_pg_p50_us");
    rows.push(row(
        "reader heavy: PostgreSQL p50 / p99 (us)",
        pair(f, "reader.heavy_pg"),
        "3-20 ms (sizing; ratio to 20 ms)",
        pg50.map(|v| {
            let verdict = if (3.0..=20.0).contains(&v) {
                "in range".to_owned()
            } else {
                "OUTSIDE the sizing range".to_owned()
            };
            (format!("{:.2}", v / 20.0), verdict)
        }),
    ));
    rows.push(row(
        "reader heavy: hit p50 / p99 (us)",
        pair(f, "reader.heavy_hit"),
        "-",
        None,
    ));
    let speedup = |q: &str| {
        num(f, &format!("reader.heavy_pg_{q}_us"))
            .zip(num(f, &format!("reader.heavy_hit_{q}_us")))
            .map(|(p, h)| p / h)
    };
    rows.push(row(
        "reader heavy: speed-up of a hit, p50 / p99",
        format!(
            "{} / {}",
            speedup("p50").map_or("-".to_owned(), |s| format!("{s:.0}x")),
            speedup("p99").map_or("-".to_owned(), |s| format!("{s:.0}x"))
        ),
        "none (information; orders of magnitude expected)",
        None,
    ));
}

fn miss_rows(rows: &mut Vec<Row>, f: &Figures) {
    rows.push(row(
        "reader: miss p50 / p99 (us)",
        pair(f, "reader.miss"),
        "-",
        None,
    ));
    let miss = num(f, "reader.miss_p50_us");
    let plain = num(f, "reader.plain_fresh_p50_us");
    let raw = num(f, "reader.raw_get_p50_us");
    let limit = plain.zip(raw).map(|(p, r)| p + 3.0 * r);
    rows.push(row(
        "reader: miss p50 vs plain query p50 + 3 x raw get p50 (us)",
        format!(
            "{} vs {} + 3 x {} = {}",
            spread(f, "reader.miss_p50_us"),
            spread(f, "reader.plain_fresh_p50_us"),
            get(f, "reader.raw_get_p50_us"),
            limit.map_or("-".to_owned(), |l| format!("{l:.0}")),
        ),
        "<= plain + 3 raw gets",
        miss.zip(limit).map(|(m, l)| at_most(m, l)),
    ));
}

fn mix_rows(rows: &mut Vec<Row>, f: &Figures) {
    rows.push(row(
        "reader: 95/5 mix ops/s, cache vs none",
        format!(
            "{} vs {}",
            spread(f, "reader.mix_cache_ops_per_s"),
            spread(f, "reader.mix_nocache_ops_per_s")
        ),
        "-",
        None,
    ));
    let speedup = num(f, "reader.mix_speedup");
    rows.push(row(
        "reader: 95/5 mix ops/s, cache / none",
        with_unit(&spread(f, "reader.mix_speedup"), "x"),
        ">= 1.2x",
        speedup.map(|s| at_least(s, 1.2)),
    ));
    rows.push(row(
        "reader: 95/5 mix hit rate",
        spread(f, "reader.mix_cache_hit_rate"),
        "none (information)",
        None,
    ));
    let fewer = |cache: &str, none: &str| {
        num(f, cache)
            .zip(num(f, none))
            .filter(|(_, n)| *n > 0.0)
            .map_or(String::new(), |(c, n)| {
                format!(" ({:.0}% less)", (1.0 - c / n) * 100.0)
            })
    };
    for (what, field) in [
        ("queries/s reaching PostgreSQL", "pg_qps"),
        ("committed transactions/s (xact_commit)", "pg_xact_per_s"),
        ("PostgreSQL CPU (CPUs, all its processes)", "pg_cpus"),
    ] {
        let (cache, none) = (
            format!("reader.mix_cache_{field}"),
            format!("reader.mix_nocache_{field}"),
        );
        if !f.contains_key(&cache) {
            continue;
        }
        rows.push(row(
            &format!("reader: 95/5 mix {what}, cache vs none"),
            format!(
                "{} vs {}{}",
                spread(f, &cache),
                spread(f, &none),
                fewer(&cache, &none)
            ),
            "none (information: the load removed)",
            None,
        ));
    }
}

fn three_server_rows(rows: &mut Vec<Row>, f: &Figures) {
    if !f.contains_key("reader.three.hit_three_p50_us") {
        rows.push(row(
            "reader: three memcached servers",
            "not measured (no CM_TEST_MEMCACHED_EXTRA, or the phase failed)".to_owned(),
            "-",
            None,
        ));
        return;
    }
    let all = phases(f);
    load_row(
        rows,
        f,
        "reader three servers",
        &round_phases("three_round", &all),
    );
    rows.push(row(
        "reader 3 servers: hit p50 / p99, one server (us)",
        pair(f, "reader.three.hit_one"),
        "-",
        None,
    ));
    rows.push(row(
        "reader 3 servers: hit p50 / p99, three servers (us)",
        pair(f, "reader.three.hit_three"),
        "-",
        None,
    ));
    let ratio = num(f, "reader.three.hit_three_p50_us")
        .zip(num(f, "reader.three.hit_one_p50_us"))
        .map(|(t, o)| t / o);
    rows.push(row(
        "reader 3 servers: hit p50, three / one",
        ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
        "<= 1.1x (no regression beyond noise)",
        ratio.map(|r| at_most(r, 1.1)),
    ));
    rows.push(row(
        "reader 3 servers: 95/5 mix ops/s with the cache, one vs three",
        format!(
            "{} vs {}",
            spread(f, "reader.three.mix_one_ops_per_s"),
            spread(f, "reader.three.mix_three_ops_per_s")
        ),
        "none (information)",
        None,
    ));
    rows.push(row(
        "reader 3 servers: 95/5 mix hit rate, one vs three",
        format!(
            "{} vs {}",
            spread(f, "reader.three.mix_one_hit_rate"),
            spread(f, "reader.three.mix_three_hit_rate")
        ),
        "none (information)",
        None,
    ));
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
         the result is gone, timing from the commit's acknowledgement to the client. Each rate \
         runs twice: *quiet* (nothing of ours beside the writers, the worker and the servers) \
         and *busy*, with {} CPU-bound processes (`sh -c 'while :; do :; done'`, started before \
         the writers and killed after the worker caught up) competing for the 2 CPUs with the \
         worker, its walsender, PostgreSQL's backends and memcached. The 5 ms goal applies to \
         quiet; busy shows what the commit-to-invalidated time becomes when the machine is \
         saturated (the worker then waits for a CPU: a scheduling delay, not work), and has no \
         target.",
        get(f, "lag.writers"),
        get(f, "lag.seconds"),
        get(f, "lag.hogs"),
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
    write_reader_method(w, f)?;
    write_load_method(w)?;
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
                "`perf record -F 499 -e cpu-clock -g -p <worker>` during the lag run at {} tx/s \
                 {} (not during the timed catch-up nor a quiet run with a target: perf's cost \
                 grows with the worker's thread switches and would slow what is timed; the lag \
                 figures of this run are taken with perf attached), `perf report --no-children \
                 --sort dso,symbol`, entries above 1.5%:\n",
                get(f, "lag.profile_rate"),
                get(f, "lag.profile_mode"),
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
    for (mode, rate) in lag_runs(f) {
        let key = format!("lag.{mode}.{rate}");
        if let Some(cpu) = f.get(&format!("{key}.invalidator_cpu_pct")) {
            let hogs = f
                .get(&format!("{key}.hogs_cpu_pct"))
                .map_or(String::new(), |h| {
                    format!("; the CPU hogs used {h}% of one CPU together")
                });
            writeln!(
                w,
                "Lag @{rate} tx/s {mode}: the worker used {cpu}% of one CPU (achieved {} tx/s; \
                 poller max {} ms{hogs}).\n",
                get(f, &format!("{key}.achieved_tps")),
                get(f, &format!("{key}.probe_max_ms")),
            )?;
        }
    }
    write_stages(w, f)?;
    write_machine_load(w, f)?;

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

/// The reader's paragraphs of "How each figure is measured".
fn write_reader_method(w: &mut String, f: &Figures) -> Result<()> {
    writeln!(
        w,
        "- **Reader, rounds**: the reader phase runs in {rounds} rounds, one after the other, \
         each timing every reader figure below once; the table shows the median of the rounds \
         and, in brackets, the spread (lowest-highest round). A ratio (hit / raw get, speed-ups, \
         miss / limit) is the ratio of the medians, except the mix's cache / none, which is the \
         median of each round's ratio. Before each round the worker is let catch up (its \
         heartbeat passes the current WAL position), so no invalidation of an earlier write \
         lands in a timed hit; every timed hit is checked to have been a hit.",
        rounds = get(f, "reader.rounds"),
    )?;
    writeln!(
        w,
        "- **Reader, hit path**: `CachingClient::query` of `SELECT id, author_id, title, price, \
         published FROM book WHERE author_id = $1` ({} rows, a {}-byte cached result), {} times \
         in a row on one connection, against a raw memcached get of a value of the same size \
         through the same store client and the same statement through tokio-postgres (prepared \
         once). \"Results + metadata pools\" is the same hit with results on the evicting \
         result server (docs/eviction.md).",
        get(f, "reader.rows"),
        get(f, "reader.value_bytes"),
        get(f, "reader.iterations"),
    )?;
    writeln!(
        w,
        "- **Reader, heavy query**: `SELECT a.id, a.name, count(*), sum(o.quantity), \
         sum(o.quantity * b.price) AS revenue FROM author a JOIN book b ON b.author_id = a.id \
         JOIN book_order o ON o.book_id = b.id WHERE a.id < $1 GROUP BY a.id, a.name ORDER BY \
         revenue DESC, a.id LIMIT 20` with $1 = {} (tables: 4,000 authors, 80,000 books, \
         400,000 orders; the query joins {} authors' books and orders through the indexes and \
         aggregates them), {} hits, then {} executions of the prepared statement in \
         PostgreSQL. A join reads every table \"as a whole\" (docs/correctness.md): any write \
         to `book` invalidates it, so each round fills it again before its timed hits.",
        get(f, "reader.heavy_authors"),
        get(f, "reader.heavy_authors"),
        get(f, "reader.heavy_iterations"),
        get(f, "reader.heavy_iterations"),
    )?;
    writeln!(
        w,
        "- **Reader, misses**: in each round, the 20-row query for authors never read before, \
         each once (a miss: lease, registrations, the query, the store), then as many other \
         never-read authors through the plain prepared statement (\"plain query\"). The goal is \
         a miss p50 of at most the plain query's p50 plus three raw memcached gets' p50 (the \
         round trips a miss cannot avoid beside the query); the ratio is miss p50 / that sum."
    )?;
    writeln!(
        w,
        "- **Reader, 95/5 mix**: two closed-loop clients in one process for {} s: 95% reads of \
         a random author's books (of the first 1,000 authors), 5% single-row price updates on \
         a random book of theirs, through the cache (warmed with every author once) or straight \
         to PostgreSQL. Ops/s counts reads and writes; the goal is the cache at >= 1.2x the \
         ops/s without it. PostgreSQL's load: statements that reached it (misses, bypasses and \
         writes, counted by the client), `pg_stat_database.xact_commit` per second (it also \
         counts the workers' heartbeats and the reader's own statements), and the CPU time of \
         every process of the test cluster (the postmaster's tree from /proc, backends reaped \
         included) per second.",
        get(f, "reader.mix_seconds"),
    )?;
    writeln!(
        w,
        "- **Reader, three memcached servers**: `cm-test-servers --extra-memcached 2` starts two \
         more `-M` memcached servers; a reader configured with the bench's server and those two \
         (every key hashed over the three by rendezvous hashing, \
         `crates/store/src/memcached/router.rs`) times the same hits, and the mix with the cache, \
         in rounds that also time them on the one server. A second `cm-invalidator run` with \
         the three servers, its own slot and key prefix invalidates for that reader; both \
         workers run through these rounds, so both sides share the machine with both. The \
         \"no regression\" bound is 1.1x, a margin for noise, not a measured tolerance."
    )?;
    Ok(())
}

/// The machine-load paragraph of "How each figure is measured".
fn write_load_method(w: &mut String) -> Result<()> {
    writeln!(
        w,
        "- **Machine load per phase**: at the start and end of each phase, the 1-minute load \
         average (`/proc/loadavg`), and the machine's busy CPU time (`/proc/stat`: user, nice, \
         system, irq, softirq, steal). \"Other processes\" is the busy CPU time over the phase \
         minus that of our own process trees (this bench with its workers and CPU hogs, the \
         test servers' memcached, PostgreSQL's postmaster and its children), divided by the \
         phase's wall time: how many CPUs of the 2 went to other sessions' builds and tests. \
         The load average lags by about a minute and counts our own processes too."
    )?;
    Ok(())
}

/// The "Lag stage timestamps" section: where a commit waits between its
/// commit and its invalidation, per stage, when the invalidator exports
/// `cm_invalidator_stage_seconds{stage="..."}`.
fn write_stages(w: &mut String, f: &Figures) -> Result<()> {
    writeln!(w, "## Lag stage timestamps\n")?;
    writeln!(
        w,
        "Where a commit waits between its commit and its invalidation: p50/p99 per stage of \
         the histogram `cm_invalidator_stage_seconds{{stage=\"...\"}}`, from the bucket deltas \
         between the scrapes before and after each lag run (interpolated, like the lag \
         histogram). Raw figures: `lag.MODE.RATE.stage.STAGE_p50_ms` and `_p99_ms`.\n"
    )?;
    let runs = lag_runs(f);
    if runs.is_empty() {
        writeln!(w, "not measured (no lag run finished)\n")?;
        return Ok(());
    }
    for (mode, rate) in runs {
        let key = format!("lag.{mode}.{rate}");
        let stages = get(f, &format!("{key}.stages"));
        if stages == "-" || stages.starts_with("not measured") {
            let why = if stages == "-" {
                "not measured".to_owned()
            } else {
                stages
            };
            writeln!(w, "- @{rate} tx/s {mode}: {why}")?;
            continue;
        }
        writeln!(w, "- @{rate} tx/s {mode}:\n")?;
        writeln!(w, "  | stage | p50 (ms) | p99 (ms) |\n  |---|---|---|")?;
        for stage in stages.split(',') {
            writeln!(
                w,
                "  | {stage} | {} | {} |",
                get(f, &format!("{key}.stage.{stage}_p50_ms")),
                get(f, &format!("{key}.stage.{stage}_p99_ms")),
            )?;
        }
    }
    writeln!(w)?;
    Ok(())
}

/// The "Machine load per phase" section.
fn write_machine_load(w: &mut String, f: &Figures) -> Result<()> {
    let names = phases(f);
    if names.is_empty() {
        return Ok(());
    }
    writeln!(w, "## Machine load per phase\n")?;
    writeln!(
        w,
        "| phase | seconds | 1-min loadavg start -> end | other processes (CPUs) | ours (CPUs) |"
    )?;
    writeln!(w, "|---|---|---|---|---|")?;
    for name in names {
        let key = format!("phase.{name}");
        writeln!(
            w,
            "| {name} | {} | {} -> {} | {} | {} |",
            get(f, &format!("{key}.seconds")),
            get(f, &format!("{key}.load1_start")),
            get(f, &format!("{key}.load1_end")),
            get(f, &format!("{key}.other_cpus")),
            get(f, &format!("{key}.own_cpus")),
        )?;
    }
    writeln!(w)?;
    Ok(())
}
