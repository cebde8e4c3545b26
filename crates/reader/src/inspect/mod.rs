//! The consistency checker (in the manner of Uber's Cache Inspector): are
//! the results readers would serve right now what the database returns?
//!
//! 1. A fence (`inspect/fence.rs`): a logical message, and a wait until the
//!    invalidator's heartbeat has passed it, so every write committed before
//!    the check has been invalidated.
//! 2. A `REPEATABLE READ READ ONLY` transaction, whose snapshot is taken
//!    right after the fence.
//! 3. The inspection registry ([`crate::ReaderOptions::inspection_registry`])
//!    lists the `q:` keys stored during the last flush-list TTL; each result
//!    still cached and that a reader would serve (epoch and generations
//!    equal the current ones: the hit path's rule) is re-run with its
//!    recorded statement and parameters and compared byte for byte.
//! 4. A result that differs is looked at again after a second fence, in a
//!    new snapshot: only if it is still cached with the same bytes, still
//!    servable and still different is it reported stale. That keeps writes
//!    made during the check (invalidated a moment later) from being reported.
//!
//! Limits: the registry is bounded (see `ReaderOptions::inspection_registry`),
//! so a check may not see every cached result. The namespace is reported
//! but the session state it stands for (search path, role, time zone) is
//! not reproduced: the checker's connection must match the readers'.
//! Statements that are not deterministic (`now()`, `random()`, `LIMIT`
//! without a total `ORDER BY`) can be reported stale when they are not.
//! `query_as` results and `cached`/`cached_with` values are skipped.

mod compare;
mod error;
mod fence;
mod params;
mod report;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use postgres_types::{ToSql, Type};
use serde::de::IgnoredAny;
use tokio_postgres::Client;

pub use error::InspectError;
pub use report::{FailedEntry, InspectionReport, ReportParam, SkipCounts, StaleEntry};

use crate::cache::QueryCache;
use crate::entry::{self, Entry, Source, ROWS_KIND};
use crate::fill::{generation, servable};
use crate::row::RowSet;
use params::RecordedParam;

/// Results read from the cache per multi-get.
const CHUNK: usize = 64;

/// How a check runs.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// Check at most this many servable results, chosen at random; `None`
    /// checks all of them.
    pub sample: Option<usize>,
    /// How long to wait for the invalidator to apply a fence (default 30 s).
    pub fence_timeout: Duration,
    /// Look again at differing results after a second fence before calling
    /// them stale (default on).
    pub confirm: bool,
}

impl Default for InspectOptions {
    fn default() -> InspectOptions {
        InspectOptions {
            sample: None,
            fence_timeout: Duration::from_secs(30),
            confirm: true,
        }
    }
}

/// Checks every registered result (or `sample` of them) against the
/// database; see the module docs. `client` must not be inside a
/// transaction; it is left outside one.
pub async fn inspect(
    client: &Client,
    cache: &QueryCache,
    sample: Option<usize>,
) -> Result<InspectionReport, InspectError> {
    let options = InspectOptions {
        sample,
        ..InspectOptions::default()
    };
    inspect_with(client, cache, &options).await
}

/// [`inspect`] with every option.
pub async fn inspect_with(
    client: &Client,
    cache: &QueryCache,
    options: &InspectOptions,
) -> Result<InspectionReport, InspectError> {
    let result = run(client, cache, options).await;
    if result.is_err() {
        // Never leave the caller's connection inside our transaction.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// A result a reader would serve now.
struct Candidate {
    key: String,
    bytes: Vec<u8>,
    entry: Entry<RowSet>,
}

impl Candidate {
    fn source(&self) -> Option<&Source> {
        self.entry.source.as_ref()
    }
}

/// What comparing one result found.
enum Verdict {
    Fresh,
    Differs(String),
    Failed(String),
}

async fn run(
    client: &Client,
    cache: &QueryCache,
    options: &InspectOptions,
) -> Result<InspectionReport, InspectError> {
    fence::check_server(client).await?;
    let fence_lsn = fence_and_wait(client, cache, options).await?;
    let mut keys = cache.registered().await?;
    let mut report = InspectionReport {
        fence_lsn,
        registered: keys.len(),
        ..InspectionReport::default()
    };
    if options.sample.is_some() {
        shuffle(&mut keys);
    }
    let limit = options.sample.unwrap_or(usize::MAX);
    let mut suspects = Vec::new();
    begin(client).await?;
    'chunks: for chunk in keys.chunks(CHUNK) {
        for candidate in servable_results(cache, chunk, &mut report.skipped_by_reason).await? {
            if report.checked >= limit {
                break 'chunks;
            }
            report.checked += 1;
            match check(client, &candidate).await? {
                Verdict::Fresh => {}
                Verdict::Differs(diff) => suspects.push((candidate, diff)),
                Verdict::Failed(error) => report.failed.push(failed(&candidate, error)),
            }
        }
        if report.checked >= limit {
            break;
        }
    }
    client.batch_execute("ROLLBACK").await?;
    if options.confirm && !suspects.is_empty() {
        suspects = confirm(client, cache, options, suspects, &mut report).await?;
    }
    report.stale = suspects
        .into_iter()
        .map(|(candidate, diff)| stale(&candidate, diff))
        .collect();
    report.skipped = report.skipped_by_reason.total();
    Ok(report)
}

/// The second look at differing results; returns those still stale.
async fn confirm(
    client: &Client,
    cache: &QueryCache,
    options: &InspectOptions,
    suspects: Vec<(Candidate, String)>,
    report: &mut InspectionReport,
) -> Result<Vec<(Candidate, String)>, InspectError> {
    fence_and_wait(client, cache, options).await?;
    begin(client).await?;
    let mut still = Vec::new();
    for (first, _) in suspects {
        let mut skips = SkipCounts::default();
        let again = servable_results(cache, std::slice::from_ref(&first.key), &mut skips).await?;
        let Some(candidate) = again.into_iter().find(|c| c.bytes == first.bytes) else {
            report.checked -= 1;
            report.skipped_by_reason.changed_during_check += 1;
            continue;
        };
        match check(client, &candidate).await? {
            Verdict::Fresh => {
                report.checked -= 1;
                report.skipped_by_reason.changed_during_check += 1;
            }
            Verdict::Differs(diff) => still.push((candidate, diff)),
            Verdict::Failed(error) => report.failed.push(failed(&candidate, error)),
        }
    }
    client.batch_execute("ROLLBACK").await?;
    Ok(still)
}

async fn fence_and_wait(
    client: &Client,
    cache: &QueryCache,
    options: &InspectOptions,
) -> Result<String, InspectError> {
    let lsn = fence::emit(client, cache).await?;
    fence::wait_applied(cache, lsn, options.fence_timeout).await?;
    Ok(fence::format_lsn(lsn))
}

/// Opens the read-only repeatable-read transaction and takes its snapshot.
async fn begin(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
        .await
}

/// The results among `keys` that a reader would serve now, counting the
/// others in `skips`.
async fn servable_results(
    cache: &QueryCache,
    keys: &[String],
    skips: &mut SkipCounts,
) -> Result<Vec<Candidate>, InspectError> {
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let items = cache.store.get_many(&names).await?;
    let mut heads = Vec::new();
    for (key, item) in keys.iter().zip(items) {
        let Some(item) = item else {
            skips.not_cached += 1;
            continue;
        };
        let Some(head) = entry::decode::<IgnoredAny>(&item.value) else {
            skips.unreadable += 1;
            continue;
        };
        if head.source.as_ref().is_none_or(|s| s.kind != ROWS_KIND) {
            skips.not_rows += 1;
            continue;
        }
        heads.push((key, item.value, head));
    }
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    let epoch_key = cache.key_space().epoch();
    let generation_keys: BTreeSet<String> = heads
        .iter()
        .flat_map(|(_, _, head)| head.snapshot.generations.iter().map(|(k, _)| k.clone()))
        .collect();
    let mut wanted = vec![epoch_key.as_str()];
    wanted.extend(generation_keys.iter().map(String::as_str));
    let values = cache.store.get_many(&wanted).await?;
    let current: HashMap<&str, Option<u64>> = wanted
        .iter()
        .zip(&values)
        .map(|(key, item)| (*key, item.as_ref().and_then(generation)))
        .collect();
    let epoch = current.get(epoch_key.as_str()).copied().flatten();
    let mut out = Vec::new();
    for (key, bytes, head) in heads {
        let keys: Vec<&str> = head
            .snapshot
            .generations
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        let now: Vec<Option<u64>> = keys
            .iter()
            .map(|k| current.get(k).copied().flatten())
            .collect();
        if !servable(&keys, &head.snapshot, epoch, &now) {
            skips.not_servable += 1;
            continue;
        }
        let Some(entry) = entry::decode::<RowSet>(&bytes) else {
            skips.unreadable += 1;
            continue;
        };
        out.push(Candidate {
            key: key.clone(),
            bytes,
            entry,
        });
    }
    Ok(out)
}

/// Re-runs a result's statement in the open transaction and compares. A
/// failing statement aborts the transaction: it is rolled back and a new
/// one begun (its snapshot is still after the fence).
async fn check(client: &Client, candidate: &Candidate) -> Result<Verdict, InspectError> {
    let Some(source) = candidate.source() else {
        return Ok(Verdict::Failed("no recorded statement".into()));
    };
    match rerun(client, source).await {
        Ok(fresh) => Ok(
            match compare::diff(&source.sql, &candidate.entry.payload, &fresh) {
                None => Verdict::Fresh,
                Some(diff) => Verdict::Differs(diff),
            },
        ),
        Err(error) => {
            client.batch_execute("ROLLBACK").await?;
            begin(client).await?;
            Ok(Verdict::Failed(error.to_string()))
        }
    }
}

/// Runs `source` with its recorded parameter types and bytes.
async fn rerun(client: &Client, source: &Source) -> Result<RowSet, tokio_postgres::Error> {
    let recorded: Vec<RecordedParam<'_>> = source.params.iter().map(RecordedParam::new).collect();
    let types: Vec<Type> = recorded.iter().map(RecordedParam::type_).collect();
    let statement = client.prepare_typed(&source.sql, &types).await?;
    let params: Vec<&(dyn ToSql + Sync)> =
        recorded.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&statement, &params).await?;
    RowSet::capture(statement.columns(), &rows)
}

fn stale(candidate: &Candidate, diff: String) -> StaleEntry {
    let (namespace, sql, params) = match candidate.source() {
        Some(source) => (
            source.namespace.clone(),
            source.sql.clone(),
            source
                .params
                .iter()
                .map(|p| ReportParam {
                    type_oid: p.type_oid,
                    hex: params::hex(p),
                })
                .collect(),
        ),
        None => Default::default(),
    };
    StaleEntry {
        key: candidate.key.clone(),
        namespace,
        sql,
        params,
        diff,
    }
}

fn failed(candidate: &Candidate, error: String) -> FailedEntry {
    FailedEntry {
        key: candidate.key.clone(),
        sql: candidate
            .source()
            .map(|s| s.sql.clone())
            .unwrap_or_default(),
        error,
    }
}

/// Fisher-Yates with a splitmix64 stream seeded from the clock: a sample
/// needs to be unbiased, not unpredictable.
fn shuffle<T>(items: &mut [T]) {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
