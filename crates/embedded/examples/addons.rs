//! The demo service: lists an author's add-ons through the cache, lets
//! `psql` (a client that is not ours) change one, and shows the list
//! refreshed, the counters and the invalidation lag.
//!
//! ```text
//! addons --pg URL --memcached HOST:PORT --prefix P   # with a running cm-invalidator
//!        [--memcached-results HOST:PORT]             # results on their own servers
//! addons --pg URL --embedded                         # reader + invalidator in this process
//! ```

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cm_embedded::{EmbeddedCache, EmbeddedOptions};
use cm_keys::{Heartbeat, KeySpace, SchemaConfig};
use cm_reader::{CachedRow, CachingClient, QueryCache, ReaderOptions};
use cm_store::{read_heartbeat, CacheStore, MemcachedConfig, MemcachedStore};

/// The add-ons demo service.
#[derive(Parser)]
struct Args {
    /// PostgreSQL connection URL (the schema is created if missing); takes
    /// `sslmode` and `sslrootcert` as libpq does.
    #[arg(long)]
    pg: String,
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
    #[arg(long, default_value = "cm")]
    prefix: String,
    /// The invalidator's publication (its `postgres.publication`): tables
    /// outside it are read through.
    #[arg(long, default_value = cm_reader::DEFAULT_PUBLICATION)]
    publication: String,
    /// Run the invalidator inside this process with an in-process store.
    #[arg(long)]
    embedded: bool,
    /// The psql binary used for the outside write.
    #[arg(long, default_value = "psql")]
    psql: String,
}

const LIST: &str =
    "SELECT a.id, a.name, a.status FROM addons a WHERE a.author_id = $1 ORDER BY a.id";

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (service, store, space) = connect(&args).await?;
    let client = service.client();
    let author: i32 = 1;

    println!("== 1. the add-ons of author {author}, read twice through the cache");
    show(&client.query(LIST, &[&author]).await?);
    show(&client.query(LIST, &[&author]).await?);
    counters(client);

    let sql = "UPDATE addons SET name = name || ' (renamed from psql)' WHERE id = 1";
    println!("\n== 2. a write from psql, a client that knows nothing of the cache:\n   {sql}");
    let status = Command::new(&args.psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &args.pg,
            "-c",
            sql,
        ])
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("psql failed: {status}");
    }

    println!("\n== 3. the same list again, until the invalidation arrives");
    let started = Instant::now();
    let rows = loop {
        let rows = client.query(LIST, &[&author]).await?;
        let renamed = rows
            .iter()
            .any(|r| r.get::<String>("name").contains("renamed"));
        if renamed {
            break rows;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the cached list was not refreshed within 30 s: is the invalidator running?");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    show(&rows);
    println!(
        "   refreshed {:.0} ms after the write",
        started.elapsed().as_secs_f64() * 1000.0
    );
    counters(client);
    lag(store.as_ref(), &space).await;

    if let Service::Embedded(embedded) = service {
        embedded.shutdown().await;
    }
    Ok(())
}

/// The caching client, with the in-process invalidator when embedded.
enum Service {
    Embedded(Box<EmbeddedCache>),
    Shared(CachingClient),
}

impl Service {
    fn client(&self) -> &CachingClient {
        match self {
            Service::Embedded(embedded) => embedded.client(),
            Service::Shared(client) => client,
        }
    }
}

type Connected = (Service, Arc<dyn CacheStore>, KeySpace);

async fn connect(args: &Args) -> Result<Connected> {
    let (sql, connection) = cm_tls::connect(&args.pg).await?;
    tokio::spawn(connection);
    sql.batch_execute(include_str!("addons.sql"))
        .await
        .context("creating the demo schema")?;
    let space = KeySpace::new(args.prefix.clone())?;
    if args.embedded {
        println!("(embedded mode: reader and invalidator in this process, in-process store)");
        let mut options = EmbeddedOptions::new(args.pg.clone());
        options.prefix = args.prefix.clone();
        let embedded = EmbeddedCache::start(options).await?;
        let store: Arc<dyn CacheStore> = embedded.store().clone();
        // Wait for the first heartbeat: before it, readers (rightly) bypass.
        wait_for_heartbeat(store.as_ref(), &space).await?;
        return Ok((Service::Embedded(Box::new(embedded)), store, space));
    }
    let Some(memcached) = &args.memcached else {
        bail!("give --memcached HOST:PORT (with cm-invalidator running) or --embedded");
    };
    println!("(memcached mode: {memcached}, invalidated by cm-invalidator)");
    let config = MemcachedConfig::new([memcached.clone()])
        .with_result_servers(args.memcached_results.iter().cloned());
    let store: Arc<dyn CacheStore> = Arc::new(MemcachedStore::connect(config).await?);
    wait_for_heartbeat(store.as_ref(), &space).await?;
    let cache = QueryCache::discover(
        &sql,
        space.clone(),
        Arc::clone(&store),
        &SchemaConfig::default(),
        ReaderOptions {
            publication: Some(args.publication.clone()),
            ..ReaderOptions::default()
        },
    )
    .await?;
    Ok((
        Service::Shared(CachingClient::new(sql, Arc::new(cache))),
        store,
        space,
    ))
}

async fn heartbeat(store: &dyn CacheStore, space: &KeySpace) -> Option<Heartbeat> {
    read_heartbeat(store, space).await.ok().flatten()
}

async fn wait_for_heartbeat(store: &dyn CacheStore, space: &KeySpace) -> Result<()> {
    let started = Instant::now();
    while heartbeat(store, space).await.is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no invalidator heartbeat within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn show(rows: &[CachedRow]) {
    for row in rows {
        println!(
            "   #{:<3} {:<45} {}",
            row.get::<i32>("id"),
            row.get::<String>("name"),
            row.get::<String>("status")
        );
    }
}

fn counters(client: &CachingClient) {
    let m = client.metrics();
    println!(
        "   counters: {} hits, {} misses, {} stale rejections, {} bypasses, {} cache errors",
        m.hits, m.misses, m.stale_rejections, m.bypasses, m.cache_errors
    );
}

async fn lag(store: &dyn CacheStore, space: &KeySpace) {
    match heartbeat(store, space).await {
        Some(hb) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            let age = now.saturating_sub(hb.emitted_unix_micros) as f64 / 1000.0;
            println!(
                "   invalidator: applied through LSN {} ; last heartbeat round trip {age:.0} ms ago",
                cm_pgoutput_lsn(hb.lsn)
            );
        }
        None => println!("   invalidator: no heartbeat"),
    }
}

fn cm_pgoutput_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}
