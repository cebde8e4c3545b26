//! The reader phase: hit path against a raw memcached get of the same size
//! and against tokio-postgres, miss overhead, and a 95/5 read/write mix with
//! and without the cache. Runs while the invalidator of the other phases is
//! up (`crate::invalidator::run` calls it before stopping its worker), so
//! the heartbeat is fresh and writes invalidate.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cm_bench::percentile;
use cm_keys::SchemaConfig;
use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::{CacheStore, LeaseOutcome, MemcachedConfig, MemcachedStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};

use crate::invalidator::{Bench, AUTHORS, BOOKS_PER_AUTHOR};
use crate::util::{env_u64, start_profile};

const QUERY: &str = "SELECT id, author_id, title, price, published FROM book WHERE author_id = $1";
const WRITE: &str = "UPDATE book SET price = price + 1 WHERE id = $1";

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The reader's options: the publication the bench's worker streams.
fn reader_options(b: &Bench) -> ReaderOptions {
    ReaderOptions {
        publication: Some(b.publication.clone()),
        ..ReaderOptions::default()
    }
}

async fn caching_client(b: &Bench) -> Result<CachingClient<Client>> {
    let client = connect(&b.db_url).await?;
    let cache = QueryCache::discover(
        &client,
        b.space.clone(),
        Arc::clone(&b.store),
        &SchemaConfig::default(),
        reader_options(b),
    )
    .await?;
    Ok(CachingClient::new(client, Arc::new(cache)))
}

fn micros(sorted: &[f64], q: f64) -> String {
    percentile(sorted, q).map_or("-".to_owned(), |v| format!("{v:.0}"))
}

/// Times `iterations` calls of `op`, returning sorted latencies in µs.
macro_rules! timed {
    ($iterations:expr, $op:expr) => {{
        let mut samples = Vec::with_capacity($iterations as usize);
        for i in 0..$iterations {
            let started = Instant::now();
            $op(i).await?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        samples.sort_by(f64::total_cmp);
        samples
    }};
}

pub async fn run(b: &Bench) -> Result<()> {
    let r = &b.results;
    let iterations = env_u64("CM_BENCH_READER_ITERS", 3000)?;
    let seconds = env_u64("CM_BENCH_READER_SECONDS", 5)?;
    eprintln!("==> reader: hit path ({iterations} queries each)");
    let reader = caching_client(b).await?;
    let plain = connect(&b.db_url).await?;
    let statement = plain.prepare(QUERY).await?;

    // Fill author 0 and check that the next read is a hit.
    let before_fill = metadump(&b.memcached).await.unwrap_or_default();
    let rows = reader.query(QUERY, &[&0_i32]).await?;
    if rows.len() != BOOKS_PER_AUTHOR as usize {
        bail!("expected {BOOKS_PER_AUTHOR} rows, got {}", rows.len());
    }
    let after_fill = metadump(&b.memcached).await.unwrap_or_default();
    let hits = reader.metrics().hits;
    reader.query(QUERY, &[&0_i32]).await?;
    if reader.metrics().hits != hits + 1 {
        bail!(
            "the second read of a cached query was not a hit: {:?}",
            reader.metrics()
        );
    }
    let hit = timed!(iterations, |_| async {
        let rows = reader.query(QUERY, &[&0_i32]).await?;
        anyhow::Ok(rows.len())
    });
    let metrics = reader.metrics();
    r.put("reader.rows", BOOKS_PER_AUTHOR)?;
    r.put("reader.hit_p50_us", micros(&hit, 0.5))?;
    r.put("reader.hit_p99_us", micros(&hit, 0.99))?;
    r.put("reader.hit_check_hits", metrics.hits)?;
    split_pool_hits(b, iterations).await?;
    profile_hits(b, &reader, iterations).await?;

    // The cached result's size: the result key the fill created.
    let result_marker = format!("{}:q:", b.space.prefix());
    let new_keys: Vec<String> = after_fill
        .difference(&before_fill)
        .filter(|k| k.starts_with(&result_marker))
        .cloned()
        .collect();
    let mut size = 0;
    for key in &new_keys {
        if let Some(Some(item)) = b.store.get_many(&[key.as_str()]).await?.pop() {
            size = size.max(item.value.len());
        }
    }
    if size == 0 {
        eprintln!("  note: result size not found through metadump; using 2048 bytes");
        size = 2048;
    }
    r.put("reader.value_bytes", size)?;
    let raw_key = format!("{}:bench-raw-get", b.space.prefix());
    let value = vec![b'x'; size];
    match b
        .store
        .get_with_lease(&raw_key, Duration::from_secs(10))
        .await?
    {
        LeaseOutcome::Won(lease) => {
            b.store
                .set_if_lease_valid(&raw_key, &value, Duration::from_secs(600), lease)
                .await?;
        }
        other => bail!("raw key: unexpected {other:?}"),
    }
    let raw = timed!(iterations, |_| async {
        match b.store.get_many(&[raw_key.as_str()]).await?.pop().flatten() {
            Some(item) => anyhow::Ok(item.value.len()),
            None => bail!("raw key vanished"),
        }
    });
    r.put("reader.raw_get_p50_us", micros(&raw, 0.5))?;
    r.put("reader.raw_get_p99_us", micros(&raw, 0.99))?;
    let pg = timed!(iterations, |_| async {
        anyhow::Ok(plain.query(&statement, &[&0_i32]).await?.len())
    });
    r.put("reader.pg_p50_us", micros(&pg, 0.5))?;
    r.put("reader.pg_p99_us", micros(&pg, 0.99))?;

    // Misses: authors never read before, each once.
    let distinct = env_u64("CM_BENCH_READER_MISSES", 300)?.min(400) as i32;
    eprintln!("==> reader: miss path ({distinct} distinct queries each)");
    let misses_before = reader.metrics().misses;
    let miss = timed!(distinct, |i: i32| {
        let reader = &reader;
        async move { anyhow::Ok(reader.query(QUERY, &[&(100 + i)]).await?.len()) }
    });
    r.put("reader.miss_count", reader.metrics().misses - misses_before)?;
    let plain_fresh = timed!(distinct, |i: i32| {
        let (plain, statement) = (&plain, &statement);
        async move { anyhow::Ok(plain.query(statement, &[&(500 + i)]).await?.len()) }
    });
    r.put("reader.miss_p50_us", micros(&miss, 0.5))?;
    r.put("reader.miss_p99_us", micros(&miss, 0.99))?;
    r.put("reader.plain_fresh_p50_us", micros(&plain_fresh, 0.5))?;
    if let (Some(m), Some(p)) = (percentile(&miss, 0.5), percentile(&plain_fresh, 0.5)) {
        r.put("reader.miss_overhead_p50_us", format!("{:.0}", m - p))?;
    }
    drop(reader);

    eprintln!("==> reader: 95/5 mix, {seconds} s with the cache and {seconds} s without");
    for cached in [true, false] {
        mix(b, cached, seconds).await?;
    }
    Ok(())
}

/// The same hits with results on their own memcached
/// (`$CM_TEST_MEMCACHED_RESULTS`, started by `cm-test-servers
/// --result-server`) and the epoch, heartbeat and generations on the `-M`
/// one: the multi-get of a hit is split over the two pools, run at once
/// (docs/eviction.md). Skipped, with a note, without that server.
///
/// The invalidator of this run knows only the metadata server, so it would
/// not delete this reader's results: they are read here only, before any
/// write of the later phases.
async fn split_pool_hits(b: &Bench, iterations: u64) -> Result<()> {
    let Ok(results) = std::env::var("CM_TEST_MEMCACHED_RESULTS") else {
        eprintln!("  note: no CM_TEST_MEMCACHED_RESULTS; no split-pool hit timing");
        return Ok(());
    };
    let mut config = MemcachedConfig::new([b.memcached.clone()]).with_result_servers([results]);
    config.timeout = Duration::from_secs(2);
    let store: Arc<dyn CacheStore> = Arc::new(MemcachedStore::connect(config).await?);
    let client = connect(&b.db_url).await?;
    let cache = QueryCache::discover(
        &client,
        b.space.clone(),
        store,
        &SchemaConfig::default(),
        reader_options(b),
    )
    .await?;
    let reader = CachingClient::new(client, Arc::new(cache));
    reader.query(QUERY, &[&0_i32]).await?;
    let hits = reader.metrics().hits;
    let split = timed!(iterations, |_| async {
        anyhow::Ok(reader.query(QUERY, &[&0_i32]).await?.len())
    });
    if reader.metrics().hits != hits + iterations {
        bail!(
            "split pools: not every timed read was a hit: {:?}",
            reader.metrics()
        );
    }
    b.results
        .put("reader.hit_split_p50_us", micros(&split, 0.5))?;
    b.results
        .put("reader.hit_split_p99_us", micros(&split, 0.99))?;
    Ok(())
}

/// Profiles this process through at least 20,000 more hits (enough samples
/// at perf's 499 Hz), after the timed ones: perf's own cost would
/// otherwise be in the figures.
async fn profile_hits(b: &Bench, reader: &CachingClient<Client>, iterations: u64) -> Result<()> {
    let Some(profile) = start_profile(std::process::id(), &b.work)? else {
        return Ok(());
    };
    // perf needs a moment to attach.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..iterations.max(20_000) {
        reader.query(QUERY, &[&0_i32]).await?;
    }
    if let Ok(text) = profile.finish() {
        b.results.put_text("reader.profile", &text)?;
    }
    Ok(())
}

/// Two closed-loop clients, 95% reads of a random author's books, 5%
/// single-row price updates, for `seconds`. Records ops/s, hit rate and the
/// queries that reached PostgreSQL (counted by the client, and as committed
/// transactions in pg_stat_database).
async fn mix(b: &Bench, cached: bool, seconds: u64) -> Result<()> {
    let r = &b.results;
    let mode = if cached { "cache" } else { "nocache" };
    let reader = caching_client(b).await?;
    let writer = connect(&b.db_url).await?;
    let write = writer.prepare(WRITE).await?;
    let plain_statement = reader.client().prepare(QUERY).await?;
    if cached {
        // Warm: every author's list once.
        for author in 0..AUTHORS {
            reader.query(QUERY, &[&author]).await?;
        }
    }
    let before = reader.metrics();
    let xacts_before = xact_commit(b).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let worker = |seed: u64| {
        let (reader, writer, write, plain_statement) = (&reader, &writer, &write, &plain_statement);
        async move {
            let mut state = seed;
            let (mut reads, mut writes) = (0_u64, 0_u64);
            while Instant::now() < deadline {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let pick = (state >> 33) % 100;
                let n = i32::try_from((state >> 40) % (AUTHORS * BOOKS_PER_AUTHOR) as u64)?;
                if pick < 5 {
                    writer.execute(write, &[&n]).await?;
                    writes += 1;
                } else {
                    let author = n / BOOKS_PER_AUTHOR;
                    if cached {
                        reader.query(QUERY, &[&author]).await?;
                    } else {
                        reader.client().query(plain_statement, &[&author]).await?;
                    }
                    reads += 1;
                }
            }
            anyhow::Ok((reads, writes))
        }
    };
    let started = Instant::now();
    let (a, c) = futures::try_join!(worker(1), worker(2))?;
    let elapsed = started.elapsed().as_secs_f64();
    let (reads, writes) = (a.0 + c.0, a.1 + c.1);
    let after = reader.metrics();
    drop(reader);
    drop(writer);
    // Closed backends flush their statistics; give them a moment.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let xacts_after = xact_commit(b).await?;
    let key = format!("reader.mix_{mode}");
    r.put(
        &format!("{key}_ops_per_s"),
        format!("{:.0}", (reads + writes) as f64 / elapsed),
    )?;
    r.put(
        &format!("{key}_reads_per_s"),
        format!("{:.0}", reads as f64 / elapsed),
    )?;
    let to_pg = if cached {
        (after.misses - before.misses) + (after.bypasses - before.bypasses) + writes
    } else {
        reads + writes
    };
    r.put(
        &format!("{key}_pg_qps"),
        format!("{:.0}", to_pg as f64 / elapsed),
    )?;
    r.put(
        &format!("{key}_pg_xact_per_s"),
        format!("{:.0}", (xacts_after - xacts_before) as f64 / elapsed),
    )?;
    if cached {
        let hits = after.hits - before.hits;
        let lookups = hits + (after.misses - before.misses) + (after.bypasses - before.bypasses);
        if lookups > 0 {
            r.put(
                "reader.mix_hit_rate",
                format!("{:.3}", hits as f64 / lookups as f64),
            )?;
        }
        r.put(
            "reader.mix_stale_rejections",
            after.stale_rejections - before.stale_rejections,
        )?;
        r.put(
            "reader.mix_cache_errors",
            after.cache_errors - before.cache_errors,
        )?;
    }
    Ok(())
}

async fn xact_commit(b: &Bench) -> Result<i64> {
    Ok(b.db
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0))
}

/// Every key in memcached (`lru_crawler metadump all`), URL-decoded.
async fn metadump(addr: &str) -> Result<BTreeSet<String>> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"lru_crawler metadump all\r\n").await?;
        let mut text = Vec::new();
        let mut buf = vec![0_u8; 1 << 16];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if text.ends_with(b"END\r\n") || text.starts_with(b"ERROR") {
                break;
            }
        }
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("metadump timed out")??;
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("key="))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(url_decode)
        .collect())
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
