//! Running `psql` against a server as a child process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::url::ConnParams;
use crate::util::{display_command, find_pg_bin_dir, find_program, is_executable};
use crate::TestkitError;

/// Seconds `psql` waits for a connection before giving up.
const CONNECT_TIMEOUT_SECS: &str = "10";

/// The psql to run: `<bin_dir>/psql` when that exists, else `psql` on `PATH`.
pub(crate) fn psql_binary(bin_dir: Option<&Path>) -> Result<PathBuf, TestkitError> {
    if let Some(candidate) = bin_dir.map(|d| d.join("psql")) {
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    if let Ok(dir) = find_pg_bin_dir("psql") {
        return Ok(dir.join("psql"));
    }
    find_program("psql", &["/usr/bin"]).ok_or_else(|| TestkitError::NotFound {
        what: "psql".to_string(),
        detail: "not in a PostgreSQL bin directory nor on PATH; install postgresql-client"
            .to_string(),
    })
}

/// A `psql` command connected to `params`, with `-X` (no psqlrc), `-w` (no
/// password prompt) and nothing else.
pub(crate) fn command(psql: &Path, params: &ConnParams) -> Command {
    let mut cmd = Command::new(psql);
    // -w: never prompt for a password (a prompt would hang a test on a terminal).
    cmd.arg("-X")
        .arg("-w")
        .arg("-h")
        .arg(&params.host)
        .arg("-p")
        .arg(params.port.to_string())
        .arg("-U")
        .arg(&params.user)
        .arg("-d")
        .arg(&params.dbname)
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)
        // Settings that would redirect or alter the connection are not ours to inherit.
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSSLMODE");
    match &params.password {
        Some(pw) => cmd.env("PGPASSWORD", pw),
        None => cmd.env_remove("PGPASSWORD"),
    };
    cmd
}

/// How long a cleanup script is retried ([`run_cleanup`]).
const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs a cleanup script ([`run_script`]) until it succeeds, retrying every
/// 100 ms for up to 15 s (a server still busy with what is being dropped).
pub(crate) fn run_cleanup(psql: &Path, params: &ConnParams, sql: &str) -> Result<(), TestkitError> {
    let started = std::time::Instant::now();
    loop {
        match run_script(psql, params, sql) {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > CLEANUP_TIMEOUT => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Feeds `sql` to `psql -q -v ON_ERROR_STOP=1 -At` on stdin and returns stdout.
pub(crate) fn run_script(
    psql: &Path,
    params: &ConnParams,
    sql: &str,
) -> Result<String, TestkitError> {
    let mut cmd = command(psql, params);
    cmd.args(["-q", "-v", "ON_ERROR_STOP=1", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| TestkitError::Spawn {
        command: display_command(&cmd),
        source,
    })?;
    // Write from another thread so a large result can't deadlock against a large script.
    let writer = child.stdin.take().map(|mut stdin| {
        let script = sql.to_string();
        std::thread::spawn(move || {
            // psql may exit early on an error; a broken pipe then is expected.
            let _ = stdin.write_all(script.as_bytes());
        })
    });
    let out = child
        .wait_with_output()
        .map_err(|source| TestkitError::Spawn {
            command: display_command(&cmd),
            source,
        })?;
    if let Some(handle) = writer {
        let _ = handle.join();
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TestkitError::Psql {
            dbname: params.dbname.clone(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            sql: sql.to_string(),
        })
    }
}
