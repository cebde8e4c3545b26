//! `cm-invalidator`: set up, check, run and inspect the cache invalidation worker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cm_invalidator::worker::connect_sql;
use tokio::signal::unix::{signal, SignalKind};
use tokio_postgres::Client;

use cm_invalidator::assemble;
use cm_invalidator::check::{cache_finding, database_findings, has_problem, render_table};
use cm_invalidator::config::{exposed_password_warning, InvalidatorConfig, LogFormat};
use cm_invalidator::error_text::render_chain;
use cm_invalidator::heartbeat::unix_micros_now;
use cm_invalidator::inspect;
use cm_invalidator::setup;
use cm_keys::KeySpace;
use cm_reader::inspect::{inspect_with, InspectOptions};
use cm_store::read_heartbeat;

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
    /// Create the publication, then the replication slot (in that order).
    Setup {
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check wal_level, publication, slot health, replica identities and memcached.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stream changes and invalidate until SIGTERM or Ctrl-C.
    Run,
    /// Show slot lag, heartbeat age and the last applied position.
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

/// `inspect`'s exit code when the check itself fails.
const INSPECT_ERROR: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let failure = match cli.command {
        Command::Inspect { .. } => ExitCode::from(INSPECT_ERROR),
        _ => ExitCode::FAILURE,
    };
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cm-invalidator: {}", render_chain(e.chain()));
            failure
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config = InvalidatorConfig::load(&cli.config)?;
    init_tracing(&config);
    if let Some(warning) = exposed_password_warning(&cli.config) {
        tracing::warn!("{warning}");
    }
    let figment = InvalidatorConfig::figment(&cli.config);
    match cli.command {
        Command::Setup { dry_run } => run_setup(&config, dry_run).await,
        Command::Check { json } => run_check(&config, &figment, json).await,
        Command::Run => run_worker(config, &figment).await,
        Command::Status { json } => run_status(&config, json).await,
        Command::Inspect {
            sample,
            json,
            fence_timeout_secs,
            registry_window_secs,
        } => {
            let options = InspectOptions {
                sample,
                fence_timeout: Duration::from_secs(fence_timeout_secs),
                ..InspectOptions::default()
            };
            let window = Duration::from_secs(registry_window_secs);
            run_inspect(&config, &figment, &options, window, json).await
        }
    }
}

fn init_tracing(config: &InvalidatorConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn connect(config: &InvalidatorConfig) -> Result<Client> {
    connect_sql(&config.postgres.url)
        .await
        .context("connecting to postgres.url")
}

async fn run_setup(config: &InvalidatorConfig, dry_run: bool) -> Result<ExitCode> {
    let client = connect(config).await?;
    let steps = setup::plan(&client, config).await?;
    if steps.is_empty() {
        println!("nothing to do: DDL triggers, publication and slot exist");
        return Ok(ExitCode::SUCCESS);
    }
    for step in &steps {
        println!(
            "{}{step}",
            if dry_run { "would run: " } else { "running: " }
        );
    }
    let creates_slot = setup::creates_slot(&steps);
    if dry_run {
        if creates_slot {
            println!("would flush the cache (epoch bump): a new slot never streams earlier writes");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The cache configuration is checked before anything is created.
    let cache = if creates_slot {
        Some(cache_of(config).await?)
    } else {
        None
    };
    setup::apply(&client, config, &steps).await?;
    if let Some((store, space)) = cache {
        setup::flush_cache_for_new_slot(store.as_ref(), &space)
            .await
            .context(
                "the slot was created, but flushing the cache (epoch bump) failed; \
                 `cm-invalidator run` flushes it when it starts, as it finds a slot it did not confirm",
            )?;
        println!("flushed the cache (epoch bump): nothing cached before the new slot is served");
    }
    println!("done");
    Ok(ExitCode::SUCCESS)
}

/// The memcached store and key space the configuration names.
async fn cache_of(
    config: &InvalidatorConfig,
) -> Result<(std::sync::Arc<dyn cm_store::CacheStore>, KeySpace)> {
    let space = KeySpace::new(config.cache.prefix.clone()).context("config key cache.prefix")?;
    let store = assemble::store(config).await?;
    Ok((store, space))
}

async fn run_check(
    config: &InvalidatorConfig,
    figment: &figment::Figment,
    json: bool,
) -> Result<ExitCode> {
    let client = connect(config).await?;
    let mut findings = Vec::new();
    let model = match assemble::schema_model(config, figment).await {
        Ok(model) => Some(model),
        Err(error) => {
            findings.push(cm_invalidator::check::Finding {
                status: cm_invalidator::check::Status::Problem,
                check: "schema mapping".into(),
                detail: error.to_string(),
            });
            None
        }
    };
    findings.extend(database_findings(&client, config, model.as_ref()).await?);
    let space = KeySpace::new(config.cache.prefix.clone()).context("config key cache.prefix")?;
    let store = assemble::store(config).await?;
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

async fn run_worker(config: InvalidatorConfig, figment: &figment::Figment) -> Result<ExitCode> {
    let (worker, _metrics) = assemble::start(config, figment).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested: abandoning the current transaction unacknowledged");
        let _ = stop_tx.send(true);
    });
    worker.run(stop_rx).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn run_inspect(
    config: &InvalidatorConfig,
    figment: &figment::Figment,
    options: &InspectOptions,
    registry_window: Duration,
    json: bool,
) -> Result<ExitCode> {
    let client = connect(config).await?;
    let cache = inspect::query_cache(config, figment, registry_window).await?;
    let report = inspect_with(&client, &cache, options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspect::render_report(&report));
    }
    Ok(if report.has_stale() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_status(config: &InvalidatorConfig, json: bool) -> Result<ExitCode> {
    let client = connect(config).await?;
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    confirmed_flush_lsn::text, active_pid
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.postgres.slot],
        )
        .await?;
    let space = KeySpace::new(config.cache.prefix.clone()).context("config key cache.prefix")?;
    let store = assemble::store(config).await?;
    let heartbeat = read_heartbeat(store.as_ref(), &space)
        .await
        .context("reading the heartbeat from memcached")?;
    let age = heartbeat.map(|h| {
        Duration::from_micros(unix_micros_now().saturating_sub(h.emitted_unix_micros)).as_secs_f64()
    });
    let (lag, confirmed, pid) = match &row {
        Some(row) => (
            row.try_get::<_, Option<i64>>(0)?,
            row.try_get::<_, Option<String>>(1)?,
            row.try_get::<_, Option<i32>>(2)?,
        ),
        None => (None, None, None),
    };
    let applied = heartbeat.map(|h| cm_pgoutput::Lsn(h.lsn).to_string());
    if json {
        let value = serde_json::json!({
            "slot": config.postgres.slot,
            "slot_exists": row.is_some(),
            "lag_bytes": lag,
            "confirmed_flush_lsn": confirmed,
            "streaming_pid": pid,
            "heartbeat_age_seconds": age,
            "last_heartbeat_lsn": applied,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "slot                 {}{}",
            config.postgres.slot,
            if row.is_some() { "" } else { " (missing)" }
        );
        println!(
            "lag                  {}",
            lag.map_or("unknown".into(), |b| format!("{b} bytes"))
        );
        println!(
            "confirmed flush      {}",
            confirmed.as_deref().unwrap_or("unknown")
        );
        println!(
            "streaming pid        {}",
            pid.map_or("none".into(), |p| p.to_string())
        );
        println!(
            "heartbeat age        {}",
            age.map_or("no heartbeat".into(), |a| format!("{a:.1} s"))
        );
        println!(
            "last heartbeat LSN   {}",
            applied.as_deref().unwrap_or("none")
        );
    }
    Ok(ExitCode::SUCCESS)
}
