//! `cm-test-servers --env-file PATH [--result-server]`: starts one PostgreSQL
//! cluster and one memcached (`-M`: it never evicts, as the cache's metadata
//! servers must not) for a whole test run, plus with `--result-server` a
//! second memcached that evicts, for results (`export
//! CM_TEST_MEMCACHED_RESULTS=...`); writes `export CM_TEST_PG_URL=...` and
//! `export CM_TEST_MEMCACHED=...` to PATH (atomically), prints the same
//! lines, and keeps both servers up until SIGTERM, SIGINT or SIGHUP (or until
//! its parent process goes away), then stops them and exits 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cm_testkit::{
    MemcachedOptions, MemcachedServer, PgCluster, TestkitError, ENV_MEMCACHED, ENV_PG_URL,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "usage: cm-test-servers --env-file PATH [--result-server]";

/// The variable naming the result server started by `--result-server`.
const ENV_RESULTS: &str = "CM_TEST_MEMCACHED_RESULTS";

/// What the command line asks for.
struct Args {
    env_file: PathBuf,
    result_server: bool,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("cm-test-servers: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cm-test-servers: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut env_file = None;
    let mut result_server = false;
    while let Some(arg) = args.next() {
        if arg == "--result-server" {
            result_server = true;
        } else if arg == "--env-file" {
            env_file = Some(args.next().ok_or("--env-file needs a path")?);
        } else if let Some(path) = arg.strip_prefix("--env-file=") {
            env_file = Some(path.to_string());
        } else if arg == "-h" || arg == "--help" {
            return Err("help requested".to_string());
        } else {
            return Err(format!("unexpected argument `{arg}`"));
        }
    }
    match env_file {
        Some(path) if !path.is_empty() => Ok(Args {
            env_file: PathBuf::from(path),
            result_server,
        }),
        _ => Err("--env-file is required".to_string()),
    }
}

fn run(args: &Args) -> Result<(), TestkitError> {
    let env_file = args.env_file.as_path();
    // Registered first, so a signal during start-up is not lost: it ends the wait below.
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|source| TestkitError::Io {
            context: "installing signal handlers".to_string(),
            source,
        })?;
    let parent = std::os::unix::process::parent_id();

    let pg = PgCluster::start()?;
    let memcached = MemcachedServer::start()?;
    let results = match args.result_server {
        true => Some(MemcachedServer::start_with(MemcachedOptions {
            evictions: true,
            ..MemcachedOptions::metadata()
        })?),
        false => None,
    };

    let mut text = format!(
        "export {ENV_PG_URL}='{}'\nexport {ENV_MEMCACHED}='{}'\n",
        pg.admin_url(),
        memcached.addr()
    );
    if let Some(results) = &results {
        text.push_str(&format!("export {ENV_RESULTS}='{}'\n", results.addr()));
    }
    write_atomically(env_file, &text)?;
    print!("{text}");

    loop {
        if signals.pending().next().is_some() {
            break;
        }
        if std::os::unix::process::parent_id() != parent {
            // Whoever started us is gone and can no longer stop us.
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let _ = std::fs::remove_file(env_file);
    drop(results);
    drop(memcached);
    drop(pg);
    Ok(())
}

/// Writes `text` to a temporary name beside `path`, then renames it into place.
fn write_atomically(path: &Path, text: &str) -> Result<(), TestkitError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "env".to_string());
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| TestkitError::Io {
        context: format!("writing {}", tmp.display()),
        source: e,
    })?;
    std::fs::rename(&tmp, path).map_err(|e| TestkitError::Io {
        context: format!("renaming {} to {}", tmp.display(), path.display()),
        source: e,
    })
}
