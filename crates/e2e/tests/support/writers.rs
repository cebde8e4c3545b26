//! The three writer clients, each running its lane's transactions:
//! psql processes (a batch of transactions per process), one Python process
//! with psycopg, and a tokio-postgres connection.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cm_testkit::TestPostgres;

use super::ops::{Stmt, Tx};

/// What a writer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Transactions sent.
    pub transactions: usize,
    /// Of those, ended in ROLLBACK on purpose.
    pub rolled_back: usize,
    /// Statements that failed (their transaction rolled back).
    pub errors: usize,
}

/// The whole script for psql: `BEGIN; ...; COMMIT;` per transaction.
fn psql_script(txs: &[Tx]) -> String {
    let mut script = String::new();
    if std::env::var_os("CM_E2E_ASYNC_COMMIT").is_some() {
        script.push_str("SET synchronous_commit = off;\n");
    }
    for tx in txs {
        script.push_str("BEGIN;\n");
        for stmt in &tx.stmts {
            script.push_str(&stmt.psql());
        }
        script.push_str(if tx.rollback {
            "ROLLBACK;\n"
        } else {
            "COMMIT;\n"
        });
    }
    script
}

/// How to start psql for the test's database, detached from the
/// `TestPostgres` so it can move to a blocking thread.
pub struct Psql {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
}

impl Psql {
    /// The psql command of `pg`.
    pub fn new(pg: &TestPostgres) -> Psql {
        let command = pg.psql_command();
        Psql {
            program: command.get_program().to_owned(),
            args: command.get_args().map(OsStr::to_owned).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned)))
                .collect(),
        }
    }

    /// Runs one script to completion, stopping at its first error.
    pub fn script(&self, sql: &str) -> Result<(), String> {
        let out = self
            .command()
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
    }

    /// Runs `txs` in psql processes of `per_process` transactions each,
    /// without ON_ERROR_STOP (a failed statement fails its transaction only).
    pub fn run(&self, txs: &[Tx], per_process: usize) -> Result<Written, String> {
        let mut written = Written::default();
        for chunk in txs.chunks(per_process.max(1)) {
            let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
            file.write_all(psql_script(chunk).as_bytes())
                .map_err(|e| e.to_string())?;
            let out = self
                .command()
                .args(["-q", "-v", "ON_ERROR_STOP=0", "-f"])
                .arg(file.path())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("psql: {e}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            written.errors += stderr
                .lines()
                .filter(|l| l.contains("ERROR:") && !l.contains("current transaction is aborted"))
                .count();
            if !out.status.success() {
                return Err(format!("psql exited with {}: {stderr}", out.status));
            }
            written.transactions += chunk.len();
            written.rolled_back += chunk.iter().filter(|t| t.rollback).count();
        }
        Ok(written)
    }
}

/// Runs `txs` through `tests/support/writer.py` (psycopg, server-side
/// parameters). Fails when psycopg is not importable: scripts/test installs it.
pub async fn run_python(conninfo: &str, txs: &[Tx], dir: &Path) -> Result<Written, String> {
    let probe = tokio::process::Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .await
        .map_err(|e| format!("python3 not runnable: {e}; run scripts/test, which installs it"))?;
    if !probe.status.success() {
        return Err(format!(
            "python3 cannot import psycopg ({}); run scripts/test, which installs it \
             (pip install 'psycopg[binary]')",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let json: Vec<serde_json::Value> = txs
        .iter()
        .map(|tx| {
            let stmts: Vec<serde_json::Value> = tx
                .stmts
                .iter()
                .map(|s| {
                    let (sql, params) = s.psycopg();
                    let params: Vec<serde_json::Value> = params.iter().map(|v| v.json()).collect();
                    serde_json::json!([sql, params])
                })
                .collect();
            serde_json::json!({"stmts": stmts, "rollback": tx.rollback})
        })
        .collect();
    let ops = dir.join("python-ops.json");
    std::fs::write(&ops, serde_json::to_vec(&json).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/writer.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(conninfo)
        .arg(&ops)
        .output()
        .await
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "writer.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("writer.py output: {e}"))?;
    let field = |name: &str| summary[name].as_u64().unwrap_or(0) as usize;
    Ok(Written {
        transactions: field("transactions"),
        rolled_back: field("rolled_back"),
        errors: field("errors"),
    })
}

/// Runs `txs` on a tokio-postgres connection.
pub async fn run_tokio(client: &tokio_postgres::Client, txs: &[Tx]) -> Result<Written, String> {
    let mut written = Written::default();
    for tx in txs {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| e.to_string())?;
        let mut failed = false;
        for stmt in &tx.stmts {
            let Stmt::Sql(sql, params) = stmt else {
                continue;
            };
            let boxed: Vec<_> = params.iter().map(|v| v.to_sql()).collect();
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = boxed
                .iter()
                .map(|b| &**b as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            if client.execute(sql.as_str(), &refs).await.is_err() {
                written.errors += 1;
                failed = true;
                break;
            }
        }
        let end = if tx.rollback || failed {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        client.batch_execute(end).await.map_err(|e| e.to_string())?;
        written.transactions += 1;
        written.rolled_back += usize::from(tx.rollback);
    }
    Ok(written)
}
