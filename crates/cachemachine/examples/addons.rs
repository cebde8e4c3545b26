//! The add-ons service, used by `scripts/demo` and `docker-compose.yml`: an
//! HTTP service over a deadpool pool whose reads go through the cache, and
//! a request log saying whether the cache served each request.
//!
//! ```text
//! addons --pg URL --memcached HOST:PORT [--memcached-results HOST:PORT]   # with cm-invalidator
//!        [--prefix P] [--publication P] [--listen ADDR]
//! addons --pg URL --embedded                 # the invalidator inside this process
//!
//! GET /authors/{id}/addons   the author's add-ons, as JSON, through the cache
//! GET /stats                 the reader's counters and the invalidator's heartbeat age
//! ```
//!
//! It creates the demo schema (`addons.sql`) when missing, waits for the
//! invalidator's first heartbeat (reads bypass the cache until then), prints
//! `listening on http://ADDR`, and stops on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cachemachine::deadpool_postgres::{Config, Pool, Runtime};
use cachemachine::embedded::{EmbeddedCache, EmbeddedOptions};
use cachemachine::tokio_postgres::NoTls;
use cachemachine::{read_heartbeat, CachingPool, QueryCache, DEFAULT_PUBLICATION};
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};

/// The add-ons demo service.
#[derive(Parser)]
struct Args {
    /// PostgreSQL connection URL (the schema is created if missing).
    #[arg(long)]
    pg: String,
    /// Address to serve HTTP on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// memcached `host:port` for metadata (run with `-M`), shared with a
    /// running `cm-invalidator` (its `cache.servers`).
    #[arg(long, conflicts_with = "embedded")]
    memcached: Option<String>,
    /// memcached `host:port` for results, which may evict (the
    /// invalidator's `cache.result_servers`); by default results share
    /// `--memcached`.
    #[arg(long, requires = "memcached")]
    memcached_results: Option<String>,
    /// Key prefix (must match the invalidator's `cache.prefix`).
    #[arg(long, default_value = cachemachine::DEFAULT_PREFIX)]
    prefix: String,
    /// The invalidator's publication (its `postgres.publication`): tables
    /// outside it are read through.
    #[arg(long, default_value = DEFAULT_PUBLICATION)]
    publication: String,
    /// Run the invalidator inside this process with an in-process store.
    #[arg(long)]
    embedded: bool,
}

const LIST: &str = "SELECT id, name, status FROM addons WHERE author_id = $1 ORDER BY id";

type Db = CachingPool<Pool>;

/// One add-on, as served.
#[derive(Serialize)]
struct Addon {
    id: i32,
    name: String,
    status: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let pool = Config { url: Some(args.pg.clone()), ..Config::default() }
        .create_pool(Some(Runtime::Tokio1), NoTls)?;
    pool.get()
        .await?
        .batch_execute(include_str!("addons.sql"))
        .await
        .context("creating the demo schema")?;
    let (cache, embedded) = build_cache(&args, &pool).await?;
    wait_for_heartbeat(&cache).await?;
    let app = Router::new()
        .route("/authors/{id}/addons", get(addons))
        .route("/stats", get(stats))
        .with_state(CachingPool::new(pool, cache));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(stop_signal()).await?;
    if let Some(embedded) = embedded {
        embedded.shutdown().await;
    }
    Ok(())
}

/// The cache over memcached (invalidated by a running `cm-invalidator`), or
/// the embedded one with its invalidator running in this process.
async fn build_cache(args: &Args, pool: &Pool) -> Result<(Arc<QueryCache>, Option<EmbeddedCache>)> {
    if args.embedded {
        println!("embedded mode: reader and invalidator in this process, in-process store");
        let mut options = EmbeddedOptions::new(args.pg.clone());
        options.prefix = args.prefix.clone();
        let embedded = EmbeddedCache::start(options).await?;
        return Ok((embedded.client().cache().clone(), Some(embedded)));
    }
    let Some(memcached) = &args.memcached else {
        bail!("give --memcached HOST:PORT (with cm-invalidator running) or --embedded");
    };
    println!("memcached mode: {memcached}, invalidated by cm-invalidator");
    let cache = QueryCache::builder()
        .prefix(args.prefix.clone())
        .servers([memcached.clone()])
        .result_servers(args.memcached_results.iter().cloned())
        .publication(args.publication.clone())
        .build(pool)
        .await?;
    Ok((cache, None))
}

/// `GET /authors/{id}/addons`: the list through the cache, and one log line.
async fn addons(
    State(db): State<Db>,
    Path(author): Path<i32>,
) -> Result<Json<Vec<Addon>>, StatusCode> {
    let started = Instant::now();
    let read = db.query_with_outcome(LIST, &[&author]).await;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    match read {
        Ok((rows, outcome)) => {
            println!(
                "GET /authors/{author}/addons  {outcome:<6}  {} add-ons  {took:.1} ms",
                rows.len()
            );
            let addons = rows.iter().map(addon).collect::<Result<_, _>>();
            addons.map(Json).map_err(|error| {
                println!("  bad row: {error}");
                StatusCode::INTERNAL_SERVER_ERROR
            })
        }
        Err(error) => {
            println!("GET /authors/{author}/addons  error   {error}");
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

fn addon(row: &cachemachine::CachedRow) -> Result<Addon, cachemachine::ColumnError> {
    Ok(Addon { id: row.try_get("id")?, name: row.try_get("name")?, status: row.try_get("status")? })
}

/// `GET /stats`: the counters, and how long ago the invalidator's last
/// heartbeat was emitted.
async fn stats(State(db): State<Db>) -> Json<Value> {
    let m = db.metrics();
    let age_ms = heartbeat_age(db.cache()).await.map(|age| age.as_millis() as u64);
    Json(json!({
        "hits": m.hits,
        "misses": m.misses,
        "bypasses": m.bypasses,
        "stale_rejections": m.stale_rejections,
        "cache_errors": m.cache_errors,
        "heartbeat_age_ms": age_ms,
    }))
}

async fn heartbeat_age(cache: &QueryCache) -> Option<Duration> {
    let heartbeat =
        read_heartbeat(cache.store().as_ref(), cache.key_space()).await.ok().flatten()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(now.saturating_sub(Duration::from_micros(heartbeat.emitted_unix_micros)))
}

/// Until the invalidator's first heartbeat every read bypasses the cache.
async fn wait_for_heartbeat(cache: &QueryCache) -> Result<()> {
    let started = Instant::now();
    while heartbeat_age(cache).await.is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no invalidator heartbeat within 30 s: is cm-invalidator running?");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
