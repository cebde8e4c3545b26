//! `inspect`: the consistency checker on the command line. Builds the
//! reader's [`QueryCache`] the way a reader of this deployment would (key
//! prefix, memcached servers and schema model from this configuration) and
//! renders [`cm_reader::inspect::InspectionReport`]s.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cm_invalidator::config::InvalidatorConfig;
use cm_reader::inspect::{inspect_with, InspectOptions, InspectionReport};
use cm_reader::{QueryCache, ReaderOptions};
use figment::Figment;

use crate::cache;

/// Runs `inspect`: exit 0 when nothing is stale, 1 when something is (the
/// caller exits 2 when the check itself fails).
pub async fn command(
    config: &InvalidatorConfig,
    figment: &Figment,
    options: &InspectOptions,
    registry_window: Duration,
    json: bool,
) -> Result<ExitCode> {
    let client = crate::connect(config).await?;
    let cache = query_cache(config, figment, registry_window).await?;
    let report = inspect_with(&client, &cache, options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_report(&report));
    }
    Ok(if report.has_stale() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The cache as readers of this deployment see it. `registry_window` is how
/// far back the inspection registry is read: the readers' flush-list TTL
/// (the reader's default is one day).
async fn query_cache(
    config: &InvalidatorConfig,
    figment: &Figment,
    registry_window: Duration,
) -> Result<QueryCache> {
    let (store, space) = cache::store_and_space(config).await?;
    let mapping = cache::schema_mapping(figment)?;
    let model = cache::schema_model(config, &mapping).await?;
    let defaults = ReaderOptions::default();
    let options = ReaderOptions {
        flush_list_ttl: registry_window,
        default_ttl: defaults.default_ttl.min(registry_window),
        publication: Some(config.postgres.publication.clone()),
        ..defaults
    };
    QueryCache::new(space, store, Arc::new(model), options).context("reader options")
}

/// The report for humans: the counts, then each stale and failed result.
fn render_report(report: &InspectionReport) -> String {
    let s = &report.skipped_by_reason;
    let mut out = String::new();
    let _ = writeln!(out, "fence LSN    {}", report.fence_lsn);
    let _ = writeln!(out, "registered   {}", report.registered);
    let _ = writeln!(out, "checked      {}", report.checked);
    let _ = writeln!(
        out,
        "skipped      {} (not cached {}, not servable {}, not row sets {}, unreadable {}, \
         changed during check {}, role not assumable {}, not sampled {})",
        report.skipped,
        s.not_cached,
        s.not_servable,
        s.not_rows,
        s.unreadable,
        s.changed_during_check,
        s.role_not_assumable,
        s.not_sampled
    );
    let _ = writeln!(out, "stale        {}", report.stale.len());
    let _ = writeln!(out, "failed       {}", report.failed.len());
    for stale in &report.stale {
        let _ = writeln!(out, "\nSTALE {}", stale.key);
        let _ = writeln!(out, "  sql        {}", one_line(&stale.sql));
        if !stale.namespace.is_empty() {
            let _ = writeln!(out, "  namespace  {:?}", stale.namespace);
        }
        if !stale.session.is_empty() {
            let _ = writeln!(out, "  session    {}", session_line(&stale.session));
        }
        for (i, param) in stale.params.iter().enumerate() {
            let _ = writeln!(
                out,
                "  ${:<9} oid {} {}",
                i + 1,
                param.type_oid,
                param
                    .hex
                    .as_deref()
                    .map_or_else(|| "NULL".to_owned(), |h| format!("\\x{h}"))
            );
        }
        let _ = writeln!(out, "  diff       {}", stale.diff);
    }
    for failed in &report.failed {
        let _ = writeln!(out, "\nFAILED {}", failed.key);
        let _ = writeln!(out, "  sql        {}", one_line(&failed.sql));
        let _ = writeln!(out, "  error      {}", failed.error);
    }
    out
}

/// `name=value` pairs, values quoted only when they hold a space, comma or
/// quote (`search_path` usually does).
fn session_line(session: &[(String, String)]) -> String {
    session
        .iter()
        .map(|(name, value)| {
            if value.is_empty() || value.contains([' ', ',', '"', '\'']) {
                format!("{name}={value:?}")
            } else {
                format!("{name}={value}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_reader::inspect::{ReportParam, StaleEntry};

    #[test]
    fn stale_entries_show_key_sql_params_session_and_diff() {
        let report = InspectionReport {
            fence_lsn: "0/16B3748".into(),
            registered: 3,
            checked: 2,
            skipped: 1,
            stale: vec![StaleEntry {
                key: "p:q:abc".into(),
                namespace: String::new(),
                sql: "SELECT *\n FROM book WHERE id = $1".into(),
                params: vec![ReportParam {
                    type_oid: 23,
                    hex: Some("0000000a".into()),
                }],
                session: vec![
                    ("role".into(), "app".into()),
                    ("search_path".into(), "shelf, public".into()),
                    ("TimeZone".into(), "Asia/Tokyo".into()),
                ],
                diff: "cached 1 rows, database 0 rows".into(),
            }],
            ..InspectionReport::default()
        };
        let text = render_report(&report);
        assert!(text.contains("stale        1"), "{text}");
        assert!(text.contains("STALE p:q:abc"), "{text}");
        assert!(
            text.contains("sql        SELECT * FROM book WHERE id = $1"),
            "{text}"
        );
        assert!(text.contains("$1         oid 23 \\x0000000a"), "{text}");
        assert!(
            text.contains("session    role=app search_path=\"shelf, public\" TimeZone=Asia/Tokyo"),
            "{text}"
        );
        assert!(text.contains("diff       cached 1 rows"), "{text}");
    }
}
