//! `check`: everything that decides whether invalidation can be trusted,
//! as findings with a status, for humans (a table) or machines (JSON).
//! Exit 0 when no finding is a problem, 1 otherwise.

mod coverage;
mod tls;

use std::process::ExitCode;

use anyhow::Result;
use cm_invalidator::config::InvalidatorConfig;
use figment::Figment;
use serde::Serialize;
use tokio_postgres::Client;

use cm_replication::preflight::slot_info;
use cm_replication::SlotName;

use cm_keys::{KeySpace, SchemaModel, TableName};
use cm_store::CacheStore;
use cm_worker::{identity_verdicts, trigger_state, IdentityVerdict, Verdict};

use crate::cache;
use coverage::coverage_findings;
use tls::tls_finding;

/// Runs `check`.
pub async fn command(
    config: &InvalidatorConfig,
    figment: &Figment,
    json: bool,
) -> Result<ExitCode> {
    let client = crate::connect(config).await?;
    let mut findings = Vec::new();
    let model = match schema_model(config, figment).await {
        Ok(model) => Some(model),
        Err(error) => {
            findings.push(finding(
                Status::Problem,
                "schema mapping",
                error.to_string(),
            ));
            None
        }
    };
    findings.extend(database_findings(&client, config, model.as_ref()).await?);
    let (store, space) = cache::store_and_space(config).await?;
    findings.push(cache_finding(store.as_ref(), &space).await);
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render_table(&findings));
    }
    Ok(if has_problem(&findings) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn schema_model(
    config: &InvalidatorConfig,
    figment: &Figment,
) -> Result<SchemaModel, cache::CacheConfigError> {
    let mapping = cache::schema_mapping(figment)?;
    cache::schema_model(config, &mapping).await
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but costs cache hits or needs attention.
    Warn,
    /// Invalidation cannot be trusted or the worker cannot run.
    Problem,
}

/// One checked thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Verdict.
    pub status: Status,
    /// What was checked, e.g. `wal_level` or `replica identity public.book`.
    pub check: String,
    /// What was found and what to do.
    pub detail: String,
}

fn finding(status: Status, check: impl Into<String>, detail: impl Into<String>) -> Finding {
    Finding {
        status,
        check: check.into(),
        detail: detail.into(),
    }
}

/// Runs every database-side check. `model` is the schema model when it
/// could be built; it tells which columns feed keys.
async fn database_findings(
    client: &Client,
    config: &InvalidatorConfig,
    model: Option<&SchemaModel>,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.try_get(0)?;
    out.push(if wal_level == "logical" {
        finding(Status::Ok, "wal_level", "logical")
    } else {
        finding(
            Status::Problem,
            "wal_level",
            format!("{wal_level}: set wal_level = logical and restart PostgreSQL"),
        )
    });
    out.push(tls_finding(client, &config.postgres.url).await?);
    out.push(role_finding(client).await?);
    out.push(ddl_trigger_finding(client).await?);
    out.extend(publication_findings(client, &config.postgres.publication).await?);
    out.extend(slot_findings(client, config).await?);
    for verdict in identity_verdicts(client, Some(&config.postgres.publication)).await? {
        out.push(identity_finding(&verdict, model));
    }
    out.extend(coverage_findings(client, &config.postgres.publication, model).await?);
    Ok(out)
}

/// The verdict on one published table: broken identities are problems, and
/// so are key, FK or predicate columns outside a key-only identity (their old
/// values are lost, so every UPDATE/DELETE must invalidate the whole table).
fn identity_finding(verdict: &IdentityVerdict, model: Option<&SchemaModel>) -> Finding {
    let TableName { schema, name } = &verdict.table;
    let check = format!("replica identity {schema}.{name}");
    if verdict.verdict.is_broken() {
        return finding(Status::Problem, check, verdict.verdict.describe());
    }
    let needing: Vec<&str> = match (verdict.verdict, model.and_then(|m| m.table(&verdict.table))) {
        (Verdict::KeyOnly, Some(table)) => {
            table.columns_needing_full_identity().into_iter().collect()
        }
        _ => Vec::new(),
    };
    if needing.is_empty() {
        return finding(Status::Ok, check, verdict.verdict.describe());
    }
    finding(
        Status::Problem,
        check,
        format!(
            "column(s) {} feed cache keys (key, foreign key or predicate) but are not in the \
             replica identity: their old values are lost on UPDATE/DELETE, so every such change \
             invalidates the whole table. Run: ALTER TABLE {schema}.{name} REPLICA IDENTITY FULL",
            needing.join(", ")
        ),
    )
}

/// Whether the role may stream: REPLICATION (or superuser) is needed to
/// create and read a replication slot; `run` refuses to start without it.
async fn role_finding(client: &Client) -> Result<Finding, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication, rolsuper
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let role: String = row.try_get(0)?;
    let replication: bool = row.try_get(1)?;
    let superuser: bool = row.try_get(2)?;
    let check = format!("role {role}");
    Ok(match (replication, superuser) {
        (true, _) => finding(Status::Ok, check, "has REPLICATION"),
        (false, true) => finding(Status::Ok, check, "superuser (may replicate)"),
        (false, false) => finding(
            Status::Problem,
            check,
            format!(
                "lacks the REPLICATION attribute: `run` cannot stream. \
                 Run as a superuser: ALTER ROLE {} REPLICATION",
                cm_replication::preflight::quote_ident(&role)
            ),
        ),
    })
}

/// Whether DDL reaches the worker: both event triggers installed, enabled
/// and of the expected version.
async fn ddl_trigger_finding(client: &Client) -> Result<Finding, tokio_postgres::Error> {
    let state = trigger_state(client).await?;
    Ok(match state.problem() {
        None => finding(
            Status::Ok,
            "ddl event triggers",
            "installed and enabled: DDL invalidates through the WAL",
        ),
        Some(problem) => finding(Status::Problem, "ddl event triggers", problem),
    })
}

/// Whether the cache answers: one read of the heartbeat key.
async fn cache_finding(store: &dyn CacheStore, space: &KeySpace) -> Finding {
    let key = space.heartbeat();
    match store.get_many(&[key.as_str()]).await {
        Ok(_) => finding(Status::Ok, "memcached", "reachable"),
        Err(error) => finding(Status::Problem, "memcached", error.to_string()),
    }
}

async fn publication_findings(
    client: &Client,
    publication: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let check = format!("publication {publication}");
    let row = client
        .query_opt(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, pubviaroot
             FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let Some(row) = row else {
        return Ok(vec![finding(
            Status::Problem,
            check,
            "missing: run `cm-invalidator setup` (it creates the publication before the slot)",
        )]);
    };
    let all_actions: bool = row.try_get(0)?;
    let via_root: bool = row.try_get(1)?;
    let mut out = vec![if all_actions {
        finding(
            Status::Ok,
            check.clone(),
            "publishes insert, update, delete, truncate",
        )
    } else {
        finding(
            Status::Problem,
            check.clone(),
            "does not publish all of insert, update, delete, truncate: changes would be missed; \
             ALTER PUBLICATION ... SET (publish = 'insert, update, delete, truncate')",
        )
    }];
    if via_root {
        out.push(finding(
            Status::Warn,
            check,
            "publish_via_partition_root = true: a TRUNCATE of a single partition is not published",
        ));
    }
    Ok(out)
}

async fn slot_findings(
    client: &Client,
    config: &InvalidatorConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let Ok(slot) = SlotName::new(&config.postgres.slot) else {
        return Ok(vec![finding(
            Status::Problem,
            "slot",
            format!(
                "postgres.slot {:?} is not a valid slot name",
                config.postgres.slot
            ),
        )]);
    };
    let check = format!("slot {slot}");
    let info = match slot_info(client, &slot).await {
        Ok(info) => info,
        Err(e) => return Ok(vec![finding(Status::Problem, check, e.to_string())]),
    };
    let Some(info) = info else {
        return Ok(vec![finding(
            Status::Problem,
            check,
            "missing: run `cm-invalidator setup`",
        )]);
    };
    let mut out = Vec::new();
    if info.plugin.as_deref() != Some("pgoutput") {
        out.push(finding(
            Status::Problem,
            check.clone(),
            format!(
                "plugin {}, expected pgoutput",
                info.plugin.as_deref().unwrap_or("(none: a physical slot)")
            ),
        ));
    }
    if info.two_phase {
        out.push(finding(
            Status::Problem,
            check.clone(),
            "two_phase = true: changes would arrive at PREPARE time; drop and re-create the slot",
        ));
    }
    if let Some(reason) = info.invalidation() {
        out.push(finding(
            Status::Problem,
            check.clone(),
            format!("invalidated ({reason}): drop and re-create it; the cache will be flushed"),
        ));
    }
    let lag: Option<i64> = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await?
        .try_get(0)?;
    if out.is_empty() {
        out.push(finding(
            Status::Ok,
            check,
            format!(
                "wal_status {}, lag {} bytes, {}",
                info.wal_status.as_deref().unwrap_or("unknown"),
                lag.unwrap_or(0),
                match info.active_pid {
                    Some(pid) => format!("streaming (pid {pid})"),
                    None => "not streaming".into(),
                }
            ),
        ));
    }
    Ok(out)
}

/// The findings as an aligned table.
fn render_table(findings: &[Finding]) -> String {
    let width = findings
        .iter()
        .map(|f| f.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<7}  {:<width$}  DETAIL\n", "STATUS", "CHECK");
    for f in findings {
        let status = match f.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Problem => "PROBLEM",
        };
        out.push_str(&format!("{status:<7}  {:<width$}  {}\n", f.check, f.detail));
    }
    out
}

/// True when any finding is a problem (the command then exits non-zero).
fn has_problem(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.status == Status::Problem)
}
