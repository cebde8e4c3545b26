//! `cm-bench`: the system benchmarks behind `scripts/bench`.
//!
//! * `cm-bench invalidator --bin PATH --out FILE`: invalidator throughput
//!   against `pg_recvlogical` on the same WAL, peak RSS through one big
//!   UPDATE, and commit-to-invalidated lag under a paced writer (quiet, and
//!   busy beside CPU-bound processes); then, while that worker is still up,
//!   the reader phase in rounds (hit path, heavy join, misses, 95/5 mix,
//!   three memcached servers). Each phase records the machine's load.
//! * `cm-bench report ...`: turns the result files and the criterion log into
//!   the table on stdout and `BENCHMARKS.md`.
//!
//! Servers come from the environment, as for the tests: `CM_TEST_PG_URL`
//! (admin URL of a PostgreSQL with `wal_level=logical`) and
//! `CM_TEST_MEMCACHED` (`host:port`); optionally `CM_TEST_MEMCACHED_RESULTS`,
//! `CM_TEST_MEMCACHED_EXTRA` and `CM_BENCH_SERVERS_PID` (the servers'
//! starter, whose processes count as ours in the machine load). Results are appended to the output file
//! as `key<TAB>value` lines as soon as they are known, so a phase that fails
//! leaves the earlier ones.

mod invalidator;
mod reader;
mod report;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage:
  cm-bench invalidator --bin PATH --out FILE [--work DIR]
  cm-bench report --results FILE [--results FILE...] [--criterion LOG] --out FILE";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cm-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let mut options: Vec<(String, String)> = Vec::new();
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {flag:?}\n{USAGE}"))?;
        let value = args
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        options.push((name.to_owned(), value));
    }
    let one = |name: &str| -> Option<PathBuf> {
        options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| PathBuf::from(v))
    };
    let all = |name: &str| -> Vec<PathBuf> {
        options
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| PathBuf::from(v))
            .collect()
    };
    match command.as_str() {
        "invalidator" => {
            let bin = one("bin").context("--bin PATH (cm-invalidator) is required")?;
            let out = one("out").context("--out FILE is required")?;
            let work = one("work").unwrap_or_else(std::env::temp_dir);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(invalidator::run(&bin, &out, &work))
        }
        "report" => {
            let out = one("out").context("--out FILE is required")?;
            report::run(&all("results"), one("criterion").as_deref(), &out)
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
