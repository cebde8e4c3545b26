//! The consistency checker (in the manner of Uber's Cache Inspector): are
//! the results readers would serve right now what the database returns?
//!
//! 1. A fence (`inspect/fence.rs`): a logical message, and a wait until the
//!    invalidator's heartbeat has passed it, so every write committed before
//!    the check has been invalidated.
//! 2. A `REPEATABLE READ READ ONLY` transaction, whose snapshot is taken
//!    right after the fence (`inspect/session.rs`).
//! 3. The inspection registry ([`crate::ReaderOptions::inspection_registry`])
//!    lists the `q:` keys stored during the last flush-list TTL; each result
//!    still cached and that a reader would serve (epoch and generations
//!    equal the current ones: the hit path's rule) is re-run with its
//!    recorded statement and parameters and compared byte for byte.
//! 4. Each statement runs under the session state its fill recorded: the
//!    reader's `search_path`, `TimeZone`, `DateStyle`, `IntervalStyle`,
//!    `extra_float_digits`, `lc_monetary`, `lc_numeric`, `lc_time`,
//!    `default_text_search_config`, `bytea_output`, `xmloption` and
//!    `row_security` are set locally in the snapshot, and its
//!    `current_user` assumed with `SET ROLE` when it is not the checker's
//!    (so privileges and row-level security policies apply as they did). A
//!    savepoint set after the snapshot is rolled back to between results of
//!    different sessions, restoring the checker's own settings. A result
//!    filled as a role the checker's session user cannot assume is skipped
//!    (`role_not_assumable`) rather than compared as another role; results
//!    filled before readers recorded their settings run in the checker's
//!    own session.
//! 5. A result that differs is looked at again after a second fence, in a
//!    new snapshot: only if it is still cached with the same bytes, still
//!    servable and still different is it reported stale. That keeps writes
//!    made during the check (invalidated a moment later) from being reported.
//!
//! Coverage: every registered key is either checked or counted under one
//! reason in [`SkipCounts`] (`registered == checked + skipped`): not cached,
//! not servable, not a row set, unreadable, changed during the check, role
//! not assumable, or past the `sample`. `query_as` results are not row sets:
//! the cached value is what the caller's closure made of the rows, and the
//! checker has neither the closure nor the rows, so it has nothing to
//! compare (`cached`/`cached_with` values have no statement and are not
//! registered at all).
//!
//! Limits: the registry is bounded (see `ReaderOptions::inspection_registry`),
//! so a check may not see every cached result. A reader records the session
//! state of the connection that learned a statement (once per statement
//! text and namespace per process), so sessions that share a namespace must
//! share that state, as the reader requires anyway. Other session state
//! (custom settings read by `current_setting()`, temporary tables) is not
//! reproduced. Statements that are not deterministic (`now()`, `random()`,
//! `LIMIT` without a total `ORDER BY`) can be reported stale when they are
//! not.

mod compare;
mod error;
mod fence;
mod params;
mod report;
mod session;

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
use crate::settings::SessionSettings;
use params::RecordedParam;
use session::{Entered, Replay};

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

    /// The reader's session state, if its fill recorded it.
    fn settings(&self) -> Option<&SessionSettings> {
        self.source().and_then(|s| s.settings.as_ref())
    }
}

/// What comparing one result found.
enum Verdict {
    Fresh,
    Differs(String),
    Failed(String),
    /// Not compared: filled as a role the checker may not `SET ROLE` to.
    RoleNotAssumable,
}

async fn run(
    client: &Client,
    cache: &QueryCache,
    options: &InspectOptions,
) -> Result<InspectionReport, InspectError> {
    fence::check_server(client).await?;
    let mut replay = Replay::new(client).await?;
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
    replay.begin(client).await?;
    let mut suspects = first_look(client, &mut replay, cache, &keys, limit, &mut report).await?;
    client.batch_execute("ROLLBACK").await?;
    if options.confirm && !suspects.is_empty() {
        suspects = confirm(client, &mut replay, cache, options, suspects, &mut report).await?;
    }
    report.stale = suspects
        .into_iter()
        .map(|(candidate, diff)| stale(&candidate, diff))
        .collect();
    report.skipped = report.skipped_by_reason.total();
    Ok(report)
}

/// Checks the servable results among `keys`, at most `limit` of them, in
/// the open transaction; returns those that differ. Every key ends up
/// checked or counted under a skip reason.
async fn first_look(
    client: &Client,
    replay: &mut Replay,
    cache: &QueryCache,
    keys: &[String],
    limit: usize,
    report: &mut InspectionReport,
) -> Result<Vec<(Candidate, String)>, InspectError> {
    let mut suspects = Vec::new();
    let mut chunks = keys.chunks(CHUNK);
    for chunk in chunks.by_ref() {
        let mut candidates = servable_results(cache, chunk, &mut report.skipped_by_reason).await?;
        // Results of one session in a row: fewer settings switches.
        candidates.sort_by(|a, b| a.settings().cmp(&b.settings()));
        for candidate in candidates {
            if report.checked >= limit {
                report.skipped_by_reason.not_sampled += 1;
                continue;
            }
            match check(client, replay, &candidate).await? {
                Verdict::RoleNotAssumable => {
                    report.skipped_by_reason.role_not_assumable += 1;
                    continue;
                }
                Verdict::Fresh => {}
                Verdict::Differs(diff) => suspects.push((candidate, diff)),
                Verdict::Failed(error) => report.failed.push(failed(&candidate, error)),
            }
            report.checked += 1;
        }
        if report.checked >= limit {
            break;
        }
    }
    report.skipped_by_reason.not_sampled += chunks.map(<[String]>::len).sum::<usize>();
    Ok(suspects)
}

/// The second look at differing results; returns those still stale.
async fn confirm(
    client: &Client,
    replay: &mut Replay,
    cache: &QueryCache,
    options: &InspectOptions,
    suspects: Vec<(Candidate, String)>,
    report: &mut InspectionReport,
) -> Result<Vec<(Candidate, String)>, InspectError> {
    fence_and_wait(client, cache, options).await?;
    replay.begin(client).await?;
    let mut still = Vec::new();
    for (first, _) in suspects {
        let mut skips = SkipCounts::default();
        let again = servable_results(cache, std::slice::from_ref(&first.key), &mut skips).await?;
        let Some(candidate) = again.into_iter().find(|c| c.bytes == first.bytes) else {
            report.checked -= 1;
            report.skipped_by_reason.changed_during_check += 1;
            continue;
        };
        match check(client, replay, &candidate).await? {
            Verdict::Fresh => {
                report.checked -= 1;
                report.skipped_by_reason.changed_during_check += 1;
            }
            Verdict::RoleNotAssumable => {
                report.checked -= 1;
                report.skipped_by_reason.role_not_assumable += 1;
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

/// Re-runs a result's statement in the open transaction, under the session
/// settings its fill recorded (the checker's own when it recorded none),
/// and compares. A failing statement is rolled back to the savepoint, which
/// keeps the transaction's snapshot.
async fn check(
    client: &Client,
    replay: &mut Replay,
    candidate: &Candidate,
) -> Result<Verdict, InspectError> {
    let Some(source) = candidate.source() else {
        return Ok(Verdict::Failed("no recorded statement".into()));
    };
    match replay.enter(client, candidate.settings()).await? {
        Entered::Ready => {}
        Entered::RoleNotAssumable => return Ok(Verdict::RoleNotAssumable),
        Entered::Refused(error) => return Ok(Verdict::Failed(error)),
    }
    match rerun(client, source).await {
        Ok(fresh) => Ok(
            match compare::diff(&source.sql, &candidate.entry.payload, &fresh) {
                None => Verdict::Fresh,
                Some(diff) => Verdict::Differs(diff),
            },
        ),
        Err(error) => {
            replay.recover(client).await?;
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
        session: session::describe(candidate.settings()),
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
