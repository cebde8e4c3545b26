//! `status`: the slot's lag, whether a worker streams from it, and the age
//! of the last heartbeat the cache holds, with an exit status a health
//! check can use: 0 healthy, 1 unhealthy (each reason printed), 2 when the
//! status could not be read (the caller's error path).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use cm_invalidator::config::InvalidatorConfig;
use cm_store::read_heartbeat;
use cm_worker::unix_micros_now;
use serde::Serialize;

use crate::cache;
use crate::health::HealthBounds;

/// What `status` found.
#[derive(Debug, Serialize)]
struct Status {
    slot: String,
    slot_exists: bool,
    lag_bytes: Option<i64>,
    confirmed_flush_lsn: Option<String>,
    streaming_pid: Option<i32>,
    heartbeat_age_seconds: Option<f64>,
    last_heartbeat_lsn: Option<String>,
    healthy: bool,
    problems: Vec<String>,
}

/// Runs `status`.
pub async fn command(config: &InvalidatorConfig, json: bool) -> Result<ExitCode> {
    let status = read(config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(if status.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn read(config: &InvalidatorConfig) -> Result<Status> {
    let client = crate::connect(config).await?;
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    confirmed_flush_lsn::text, active_pid
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.postgres.slot],
        )
        .await
        .context("reading pg_replication_slots")?;
    let (store, space) = cache::store_and_space(config).await?;
    let heartbeat = read_heartbeat(store.as_ref(), &space)
        .await
        .context("reading the heartbeat from memcached")?;
    let (lag_bytes, confirmed_flush_lsn, streaming_pid) = match &row {
        Some(row) => (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
        None => (None, None, None),
    };
    let age = heartbeat
        .map(|h| Duration::from_micros(unix_micros_now().saturating_sub(h.emitted_unix_micros)));
    let problems = problems(config, row.is_some(), streaming_pid, lag_bytes, age);
    Ok(Status {
        slot: config.postgres.slot.clone(),
        slot_exists: row.is_some(),
        lag_bytes,
        confirmed_flush_lsn,
        streaming_pid,
        heartbeat_age_seconds: age.map(|a| a.as_secs_f64()),
        last_heartbeat_lsn: heartbeat.map(|h| cm_pgoutput::Lsn(h.lsn).to_string()),
        healthy: problems.is_empty(),
        problems,
    })
}

/// Why invalidation is not working, judged with `[metrics]`'s bounds (the
/// same as `/healthz`).
fn problems(
    config: &InvalidatorConfig,
    slot_exists: bool,
    streaming_pid: Option<i32>,
    lag_bytes: Option<i64>,
    heartbeat_age: Option<Duration>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !slot_exists {
        out.push(format!(
            "slot {} is missing: run `cm-invalidator setup`",
            config.postgres.slot
        ));
    } else if streaming_pid.is_none() {
        out.push("no worker is streaming from the slot".into());
    }
    let lag = lag_bytes.and_then(|lag| u64::try_from(lag).ok());
    out.extend(HealthBounds::of(&config.metrics).violations(lag, heartbeat_age));
    out
}

fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<21}{value}\n"));
    line(
        "slot",
        format!(
            "{}{}",
            status.slot,
            if status.slot_exists { "" } else { " (missing)" }
        ),
    );
    line(
        "lag",
        status
            .lag_bytes
            .map_or("unknown".into(), |b| format!("{b} bytes")),
    );
    line(
        "confirmed flush",
        status
            .confirmed_flush_lsn
            .clone()
            .unwrap_or_else(|| "unknown".into()),
    );
    line(
        "streaming pid",
        status
            .streaming_pid
            .map_or("none".into(), |p| p.to_string()),
    );
    line(
        "heartbeat age",
        status
            .heartbeat_age_seconds
            .map_or("no heartbeat".into(), |a| format!("{a:.1} s")),
    );
    line(
        "last heartbeat LSN",
        status
            .last_heartbeat_lsn
            .clone()
            .unwrap_or_else(|| "none".into()),
    );
    if status.healthy {
        line("health", "healthy".into());
    } else {
        line(
            "health",
            format!("UNHEALTHY: {}", status.problems.join("; ")),
        );
    }
    out
}
