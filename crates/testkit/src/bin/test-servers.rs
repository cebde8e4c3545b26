//! `cm-test-servers --env-file PATH [--result-server] [--extra-memcached N]`:
//! starts one PostgreSQL cluster and one memcached (`-M`: it never evicts, as
//! the cache's metadata servers must not) for a whole test run, plus with
//! `--result-server` a second memcached that evicts, for results (`export
//! CM_TEST_MEMCACHED_RESULTS=...`), and with `--extra-memcached N` N more
//! `-M` memcached servers, so that a store can be configured with several
//! servers (`export CM_TEST_MEMCACHED_EXTRA=host:port,host:port`); writes
//! `export CM_TEST_PG_URL=...` and `export CM_TEST_MEMCACHED=...` to PATH
//! (atomically), prints the same lines, and keeps the servers up until
//! SIGTERM, SIGINT or SIGHUP (or until its parent process goes away), then
//! stops them and exits 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cm_testkit::{
    MemcachedOptions, MemcachedServer, PgCluster, TestkitError, ENV_MEMCACHED, ENV_PG_URL,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str =
    "usage: cm-test-servers --env-file PATH [--result-server] [--extra-memcached N]";

/// The variable naming the result server started by `--result-server`.
const ENV_RESULTS: &str = "CM_TEST_MEMCACHED_RESULTS";

/// The variable listing the servers started by `--extra-memcached N`,
/// comma-separated.
const ENV_EXTRA: &str = "CM_TEST_MEMCACHED_EXTRA";

/// The most `--extra-memcached` starts.
const MAX_EXTRA: usize = 8;

/// What the command line asks for.
struct Args {
    env_file: PathBuf,
    result_server: bool,
    extra_memcached: usize,
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
    let mut extra_memcached = 0;
    while let Some(arg) = args.next() {
        if arg == "--result-server" {
            result_server = true;
        } else if arg == "--extra-memcached" {
            extra_memcached = parse_extra(&args.next().ok_or("--extra-memcached needs a count")?)?;
        } else if let Some(count) = arg.strip_prefix("--extra-memcached=") {
            extra_memcached = parse_extra(count)?;
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
            extra_memcached,
        }),
        _ => Err("--env-file is required".to_string()),
    }
}

/// The count of `--extra-memcached`: 0 to [`MAX_EXTRA`].
fn parse_extra(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_EXTRA => Ok(n),
        _ => Err(format!(
            "--extra-memcached takes a count from 0 to {MAX_EXTRA}, not `{text}`"
        )),
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
    let extra = (0..args.extra_memcached)
        .map(|_| MemcachedServer::start())
        .collect::<Result<Vec<_>, _>>()?;

    let mut text = format!(
        "export {ENV_PG_URL}='{}'\nexport {ENV_MEMCACHED}='{}'\n",
        pg.admin_url(),
        memcached.addr()
    );
    if let Some(results) = &results {
        text.push_str(&format!("export {ENV_RESULTS}='{}'\n", results.addr()));
    }
    if !extra.is_empty() {
        let addrs: Vec<String> = extra.iter().map(MemcachedServer::addr).collect();
        text.push_str(&format!("export {ENV_EXTRA}='{}'\n", addrs.join(",")));
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
    drop(extra);
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
