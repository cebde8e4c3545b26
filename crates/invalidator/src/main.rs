//! `cm-invalidator`: set up, check, run and inspect the cache invalidation
//! worker. One module per subcommand; the engine itself is `cm-worker`.

mod cache;
mod check;
mod endpoint;
mod error_text;
mod health;
mod inspect;
mod metrics;
mod run;
mod setup;
mod status;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cm_invalidator::config::{exposed_password_warning, InvalidatorConfig};
use tokio_postgres::Client;

use crate::error_text::render_chain;

/// Invalidates cached PostgreSQL query results from the WAL.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); CM_INVALIDATOR_* environment variables override it.
    #[arg(
        long,
        short,
        env = "CM_INVALIDATOR_CONFIG",
        default_value = "config/invalidator.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the DDL triggers, the publication, then the replication slot (in that order).
    Setup {
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check wal_level, the role, publication, slot health, replica identities and memcached.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stream changes and invalidate until SIGTERM or Ctrl-C.
    Run,
    /// Show slot lag, heartbeat age and the last applied position.
    /// Exit 0: healthy; 1: unhealthy (reasons printed); 2: the status could not be read.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Consistency check: fence, wait until the worker applied it, re-run the
    /// cached queries (from the readers' inspection registry) and compare.
    /// Exit 0: nothing stale; 1: stale results found; 2: the check failed.
    Inspect {
        /// Check at most this many cached results, chosen at random.
        #[arg(long)]
        sample: Option<usize>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// How long to wait for the worker to apply the fence, in seconds.
        #[arg(long, default_value_t = 30)]
        fence_timeout_secs: u64,
        /// How far back to read the inspection registry, in seconds: the
        /// readers' flush-list TTL.
        #[arg(long, default_value_t = 86_400)]
        registry_window_secs: u64,
    },
}

/// Exit code of `status` and `inspect` when they could not find out.
const UNDETERMINED: u8 = 2;

/// How long the runtime waits for blocking cache calls still in flight
/// once a command is done (a memcached call times out on its own, later).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let failure = match cli.command {
        Command::Inspect { .. } | Command::Status { .. } => ExitCode::from(UNDETERMINED),
        _ => ExitCode::FAILURE,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cm-invalidator: starting the async runtime: {error}");
            return failure;
        }
    };
    let outcome = runtime.block_on(dispatch(cli));
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cm-invalidator: {}", render_chain(e.chain()));
            failure
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config = InvalidatorConfig::load(&cli.config)?;
    telemetry::init(&config.log);
    if let Some(warning) = exposed_password_warning(&cli.config) {
        tracing::warn!("{warning}");
    }
    let figment = InvalidatorConfig::figment(&cli.config);
    match cli.command {
        Command::Setup { dry_run } => setup::command(&config, dry_run).await,
        Command::Check { json } => check::command(&config, &figment, json).await,
        Command::Run => run::command(config, &figment).await,
        Command::Status { json } => status::command(&config, json).await,
        Command::Inspect {
            sample,
            json,
            fence_timeout_secs,
            registry_window_secs,
        } => {
            let options = cm_reader::inspect::InspectOptions {
                sample,
                fence_timeout: Duration::from_secs(fence_timeout_secs),
                ..Default::default()
            };
            let window = Duration::from_secs(registry_window_secs);
            inspect::command(&config, &figment, &options, window, json).await
        }
    }
}

/// An SQL connection to `postgres.url`.
async fn connect(config: &InvalidatorConfig) -> Result<Client> {
    cm_worker::connect_sql(&config.postgres.url)
        .await
        .context("connecting to postgres.url")
}
