//! The reader phase, in rounds (3 by default; every figure is the median
//! over the rounds, with the spread recorded beside it): the hit path
//! against a raw memcached get of the same size and against tokio-postgres,
//! a heavy query (a join with an aggregate) hit against PostgreSQL, misses
//! against the plain query, and a 95/5 read/write mix with and without the
//! cache. Then the hit path and the mix with the cache on three memcached
//! servers next to one. Runs while the invalidator of the other phases is
//! up (`crate::invalidator::run` calls it before stopping its worker), so
//! the heartbeat is fresh and writes invalidate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cm_bench::{median, percentile};
use cm_keys::{KeySpace, SchemaConfig};
use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::{CacheStore, LeaseOutcome, MemcachedConfig, MemcachedStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::invalidator::{Bench, AUTHORS, BOOKS_PER_AUTHOR, MIX_AUTHORS};
use crate::util::{env_u64, start_profile, Results};

const QUERY: &str = "SELECT id, author_id, title, price, published FROM book WHERE author_id = $1";
const WRITE: &str = "UPDATE book SET price = price + 1 WHERE id = $1";
/// The heavy read: the 20 best-selling of the first `$1` authors, joining
/// their books and those books' orders and aggregating per author.
const HEAVY: &str = "SELECT a.id, a.name, count(*) AS orders, \
     sum(o.quantity) AS copies, sum(o.quantity * b.price) AS revenue \
     FROM author a JOIN book b ON b.author_id = a.id JOIN book_order o ON o.book_id = b.id \
     WHERE a.id < $1 GROUP BY a.id, a.name ORDER BY revenue DESC, a.id LIMIT 20";
/// The heavy read's parameter by default: how many authors it aggregates
/// over (their 20 books each and those books' 5 orders each, through the
/// indexes), sized so that PostgreSQL takes a few ms on the 2-CPU machines;
/// `CM_BENCH_HEAVY_AUTHORS` changes it.
const HEAVY_AUTHORS: u64 = 80;
/// How long the wait for a worker to catch up may take.
const SETTLE: Duration = Duration::from_secs(120);

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

/// Where a reader caches: a key space and the store its worker writes.
#[derive(Clone)]
struct Target {
    space: KeySpace,
    store: Arc<dyn CacheStore>,
}

async fn caching_client(b: &Bench, target: &Target) -> Result<CachingClient<Client>> {
    let client = connect(&b.db_url).await?;
    let cache = QueryCache::discover(
        &client,
        target.space.clone(),
        Arc::clone(&target.store),
        &SchemaConfig::default(),
        reader_options(b),
    )
    .await?;
    Ok(CachingClient::new(client, Arc::new(cache)))
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

/// One figure's values over the rounds, recorded as the median (`KEY`)
/// and every round's value (`KEY.runs`, in round order).
struct Rounds {
    values: BTreeMap<String, (Vec<f64>, usize)>,
}

impl Rounds {
    fn new() -> Rounds {
        Rounds {
            values: BTreeMap::new(),
        }
    }

    /// Adds one round's value of `key`, shown with `decimals` decimals.
    fn add(&mut self, key: &str, value: f64, decimals: usize) {
        self.values
            .entry(key.to_owned())
            .or_insert_with(|| (Vec::new(), decimals))
            .0
            .push(value);
    }

    /// Adds `PREFIX_p50_us` and `PREFIX_p99_us` of sorted latencies.
    fn latencies(&mut self, prefix: &str, sorted: &[f64]) {
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            if let Some(v) = percentile(sorted, q) {
                self.add(&format!("{prefix}_{name}_us"), v, 0);
            }
        }
    }

    fn put(&self, results: &Results) -> Result<()> {
        for (key, (values, decimals)) in &self.values {
            let Some(mid) = median(values) else {
                continue;
            };
            let runs: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
            results.put(key, format!("{mid:.decimals$}"))?;
            results.put(&format!("{key}.runs"), runs.join(" "))?;
        }
        Ok(())
    }
}

/// What every round times.
struct Plan {
    rounds: u64,
    iterations: u64,
    heavy_iterations: u64,
    seconds: u64,
    distinct: i32,
    heavy_authors: i32,
}

pub async fn run(b: &Bench) -> Result<()> {
    let rounds = env_u64("CM_BENCH_READER_ROUNDS", 3)?.clamp(1, 5);
    // Misses and fresh plain queries each read authors never read before.
    let room = (AUTHORS - MIX_AUTHORS) / (2 * rounds as i32);
    let plan = Plan {
        rounds,
        iterations: env_u64("CM_BENCH_READER_ITERS", 3000)?.max(10),
        heavy_iterations: env_u64("CM_BENCH_HEAVY_ITERS", 200)?.max(10),
        seconds: env_u64("CM_BENCH_READER_SECONDS", 5)?.max(1),
        distinct: i32::try_from(env_u64("CM_BENCH_READER_MISSES", 300)?)?.clamp(10, room),
        heavy_authors: i32::try_from(env_u64("CM_BENCH_HEAVY_AUTHORS", HEAVY_AUTHORS)?)?
            .clamp(1, AUTHORS),
    };
    let r = &b.results;
    r.put("reader.rounds", plan.rounds)?;
    r.put("reader.rows", BOOKS_PER_AUTHOR)?;
    r.put("reader.iterations", plan.iterations)?;
    r.put("reader.heavy_iterations", plan.heavy_iterations)?;
    r.put("reader.heavy_authors", plan.heavy_authors)?;
    r.put("reader.mix_seconds", plan.seconds)?;
    let main = Target {
        space: b.space.clone(),
        store: Arc::clone(&b.store),
    };
    let mut figures = Rounds::new();
    let outcome = one_server_rounds(b, &main, &plan, &mut figures).await;
    figures.put(r)?;
    outcome?;
    let mut figures = Rounds::new();
    let outcome = three_servers(b, &main, &plan, &mut figures).await;
    figures.put(r)?;
    outcome
}

/// The rounds on the bench's one memcached (and the split-pool hits).
async fn one_server_rounds(
    b: &Bench,
    main: &Target,
    plan: &Plan,
    figures: &mut Rounds,
) -> Result<()> {
    let r = &b.results;
    let reader = caching_client(b, main).await?;
    let plain = connect(&b.db_url).await?;
    let statement = plain.prepare(QUERY).await?;
    let heavy_statement = plain.prepare(HEAVY).await?;
    let split = split_pool_client(b).await?;

    // Fill author 0 and note the result's size: the result key the fill created.
    let before_fill = metadump(&b.memcached).await.unwrap_or_default();
    let rows = reader.query(QUERY, &[&0_i32]).await?;
    if rows.len() != BOOKS_PER_AUTHOR as usize {
        bail!("expected {BOOKS_PER_AUTHOR} rows, got {}", rows.len());
    }
    let after_fill = metadump(&b.memcached).await.unwrap_or_default();
    let size = result_size(b, &before_fill, &after_fill).await?;
    r.put("reader.value_bytes", size)?;
    let raw_key = raw_key(b, size).await?;

    let mut misses = 0;
    for round in 0..plan.rounds {
        eprintln!(
            "==> reader round {}/{}: hits ({} each), heavy ({} each), misses ({} distinct), \
             95/5 mix ({} s with the cache, {} s without)",
            round + 1,
            plan.rounds,
            plan.iterations,
            plan.heavy_iterations,
            plan.distinct,
            plan.seconds,
            plan.seconds
        );
        let phase = b.phase(&format!("reader_round{}", round + 1));
        b.settle(main.store.as_ref(), &main.space, SETTLE).await?;
        let hit = timed_hits(&reader, QUERY, &[&0_i32], plan.iterations).await?;
        figures.latencies("reader.hit", &hit);
        if let Some(split) = &split {
            let hit = timed_hits(split, QUERY, &[&0_i32], plan.iterations).await?;
            figures.latencies("reader.hit_split", &hit);
        }
        let raw = timed!(plan.iterations, |_| async {
            match b.store.get_many(&[raw_key.as_str()]).await?.pop().flatten() {
                Some(item) => anyhow::Ok(item.value.len()),
                None => bail!("raw key vanished"),
            }
        });
        figures.latencies("reader.raw_get", &raw);
        let pg = timed!(plan.iterations, |_| async {
            anyhow::Ok(plain.query(&statement, &[&0_i32]).await?.len())
        });
        figures.latencies("reader.pg", &pg);
        let authors = plan.heavy_authors;
        let heavy = timed_hits(&reader, HEAVY, &[&authors], plan.heavy_iterations).await?;
        figures.latencies("reader.heavy_hit", &heavy);
        let heavy_pg = timed!(plan.heavy_iterations, |_| async {
            anyhow::Ok(plain.query(&heavy_statement, &[&authors]).await?.len())
        });
        figures.latencies("reader.heavy_pg", &heavy_pg);
        if round == 0 {
            profile_hits(b, &reader, plan.iterations).await?;
        }

        // Misses: authors never read before, each once; then as many other
        // fresh authors through the plain statement.
        let first = MIX_AUTHORS + 2 * plan.distinct * round as i32;
        let misses_before = reader.metrics().misses;
        let miss = timed!(plan.distinct, |i: i32| {
            let reader = &reader;
            async move { anyhow::Ok(reader.query(QUERY, &[&(first + i)]).await?.len()) }
        });
        misses += reader.metrics().misses - misses_before;
        let fresh = first + plan.distinct;
        let plain_fresh = timed!(plan.distinct, |i: i32| {
            let (plain, statement) = (&plain, &statement);
            async move { anyhow::Ok(plain.query(statement, &[&(fresh + i)]).await?.len()) }
        });
        figures.latencies("reader.miss", &miss);
        figures.latencies("reader.plain_fresh", &plain_fresh);
        if let (Some(m), Some(p)) = (percentile(&miss, 0.5), percentile(&plain_fresh, 0.5)) {
            figures.add("reader.miss_overhead_p50_us", m - p, 0);
        }

        let cached = mix(b, Some(main), plan.seconds).await?;
        cached.record(figures, "reader.mix_cache");
        let uncached = mix(b, None, plan.seconds).await?;
        uncached.record(figures, "reader.mix_nocache");
        if uncached.ops_per_s > 0.0 {
            figures.add(
                "reader.mix_speedup",
                cached.ops_per_s / uncached.ops_per_s,
                2,
            );
        }
        phase.finish(r)?;
    }
    r.put("reader.miss_count", misses)?;
    r.put("reader.hit_check_hits", reader.metrics().hits)?;
    Ok(())
}

/// Fills `sql` once (until a read of it is a hit), then times
/// `iterations` reads, every one of which must be a hit.
async fn timed_hits(
    reader: &CachingClient<Client>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    iterations: u64,
) -> Result<Vec<f64>> {
    let mut warm = false;
    for _ in 0..3 {
        let hits = reader.metrics().hits;
        reader.query(sql, params).await?;
        if reader.metrics().hits == hits + 1 {
            warm = true;
            break;
        }
    }
    if !warm {
        bail!(
            "three reads of {sql:?} were not a hit: {:?}",
            reader.metrics()
        );
    }
    let hits = reader.metrics().hits;
    let sorted = timed!(iterations, |_| async {
        anyhow::Ok(reader.query(sql, params).await?.len())
    });
    if reader.metrics().hits != hits + iterations {
        bail!(
            "not every timed read of {sql:?} was a hit: {:?}",
            reader.metrics()
        );
    }
    Ok(sorted)
}

/// The size of the result the fill created (the new `q:` key in
/// memcached), or 2048 bytes when metadump does not show it.
async fn result_size(
    b: &Bench,
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
) -> Result<usize> {
    let result_marker = format!("{}:q:", b.space.prefix());
    let mut size = 0;
    for key in after
        .difference(before)
        .filter(|k| k.starts_with(&result_marker))
    {
        if let Some(Some(item)) = b.store.get_many(&[key.as_str()]).await?.pop() {
            size = size.max(item.value.len());
        }
    }
    if size == 0 {
        eprintln!("  note: result size not found through metadump; using 2048 bytes");
        size = 2048;
    }
    Ok(size)
}

/// Stores a value of `size` bytes under a key of the bench's space, for
/// the raw gets; returns the key.
async fn raw_key(b: &Bench, size: usize) -> Result<String> {
    let raw_key = format!("{}:bench-raw-get", b.space.prefix());
    let value = vec![b'x'; size];
    match b
        .store
        .get_with_lease(&raw_key, Duration::from_secs(10))
        .await?
    {
        LeaseOutcome::Won(lease) => {
            b.store
                .set_if_lease_valid(&raw_key, &value, Duration::from_secs(3600), lease)
                .await?;
        }
        other => bail!("raw key: unexpected {other:?}"),
    }
    Ok(raw_key)
}

/// A reader with results on their own memcached
/// (`$CM_TEST_MEMCACHED_RESULTS`, started by `cm-test-servers
/// --result-server`) and the epoch, heartbeat and generations on the `-M`
/// one: the multi-get of a hit is split over the two pools, run at once
/// (docs/eviction.md). `None`, with a note, without that server.
///
/// The invalidator of this run knows only the metadata server, so it does
/// not delete this reader's results: they are only timed as hits here
/// (a stale one times the same), never checked for freshness.
async fn split_pool_client(b: &Bench) -> Result<Option<CachingClient<Client>>> {
    let Ok(results) = std::env::var("CM_TEST_MEMCACHED_RESULTS") else {
        eprintln!("  note: no CM_TEST_MEMCACHED_RESULTS; no split-pool hit timing");
        return Ok(None);
    };
    let mut config = MemcachedConfig::new([b.memcached.clone()]).with_result_servers([results]);
    config.timeout = Duration::from_secs(2);
    let store: Arc<dyn CacheStore> = Arc::new(MemcachedStore::connect(config).await?);
    let target = Target {
        space: b.space.clone(),
        store,
    };
    Ok(Some(caching_client(b, &target).await?))
}

/// The hit path and the 95/5 mix with the cache on three memcached servers
/// (the bench's and two of `$CM_TEST_MEMCACHED_EXTRA`, started by
/// `cm-test-servers --extra-memcached 2`; keys spread over them by
/// rendezvous hashing), next to one server, in the same rounds. A second
/// worker, configured with the three servers, invalidates for them; both
/// workers run through these rounds, so both sides have the same
/// neighbours. Skipped, with a note, without the extra servers.
async fn three_servers(b: &Bench, main: &Target, plan: &Plan, figures: &mut Rounds) -> Result<()> {
    let extra = std::env::var("CM_TEST_MEMCACHED_EXTRA").unwrap_or_default();
    let servers: Vec<String> = std::iter::once(b.memcached.clone())
        .chain(
            extra
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .take(2)
                .map(str::to_owned),
        )
        .collect();
    if servers.len() < 3 {
        eprintln!(
            "  note: CM_TEST_MEMCACHED_EXTRA has fewer than 2 servers; no three-server timing"
        );
        return Ok(());
    }
    eprintln!(
        "==> reader: three memcached servers ({})",
        servers.join(", ")
    );
    b.results.put("reader.three.servers", servers.len())?;
    let sidecar = b.start_sidecar("three", &servers).await?;
    let three = Target {
        space: sidecar.space.clone(),
        store: Arc::clone(&sidecar.store),
    };
    let outcome = three_server_rounds(b, main, &three, plan, figures).await;
    b.stop_sidecar(sidecar).await?;
    outcome
}

async fn three_server_rounds(
    b: &Bench,
    main: &Target,
    three: &Target,
    plan: &Plan,
    figures: &mut Rounds,
) -> Result<()> {
    let one_reader = caching_client(b, main).await?;
    let three_reader = caching_client(b, three).await?;
    for round in 0..plan.rounds {
        eprintln!(
            "==> reader three servers, round {}/{}: hits on one and on three servers, \
             95/5 mix with the cache on each ({} s)",
            round + 1,
            plan.rounds,
            plan.seconds
        );
        let phase = b.phase(&format!("three_round{}", round + 1));
        b.settle(main.store.as_ref(), &main.space, SETTLE).await?;
        b.settle(three.store.as_ref(), &three.space, SETTLE).await?;
        let one = timed_hits(&one_reader, QUERY, &[&0_i32], plan.iterations).await?;
        figures.latencies("reader.three.hit_one", &one);
        let hits = timed_hits(&three_reader, QUERY, &[&0_i32], plan.iterations).await?;
        figures.latencies("reader.three.hit_three", &hits);
        mix(b, Some(main), plan.seconds)
            .await?
            .record(figures, "reader.three.mix_one");
        mix(b, Some(three), plan.seconds)
            .await?
            .record(figures, "reader.three.mix_three");
        phase.finish(&b.results)?;
    }
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

/// What one mix measured.
struct MixFigures {
    ops_per_s: f64,
    reads_per_s: f64,
    /// Statements that reached PostgreSQL, per second (counted by the client).
    pg_qps: f64,
    /// Committed transactions per second (`pg_stat_database.xact_commit`).
    pg_xact_per_s: f64,
    /// CPU seconds per second used by all of PostgreSQL's processes.
    pg_cpus: Option<f64>,
    /// With the cache: the share of lookups that were hits.
    hit_rate: Option<f64>,
    stale_rejections: u64,
    cache_errors: u64,
}

impl MixFigures {
    fn record(&self, figures: &mut Rounds, key: &str) {
        figures.add(&format!("{key}_ops_per_s"), self.ops_per_s, 0);
        figures.add(&format!("{key}_reads_per_s"), self.reads_per_s, 0);
        figures.add(&format!("{key}_pg_qps"), self.pg_qps, 0);
        figures.add(&format!("{key}_pg_xact_per_s"), self.pg_xact_per_s, 0);
        if let Some(cpus) = self.pg_cpus {
            figures.add(&format!("{key}_pg_cpus"), cpus, 2);
        }
        if let Some(rate) = self.hit_rate {
            figures.add(&format!("{key}_hit_rate"), rate, 3);
            figures.add(
                &format!("{key}_stale_rejections"),
                self.stale_rejections as f64,
                0,
            );
            figures.add(&format!("{key}_cache_errors"), self.cache_errors as f64, 0);
        }
    }
}

/// Two closed-loop clients, 95% reads of a random author's books (of the
/// first [`MIX_AUTHORS`]), 5% single-row price updates, for `seconds`;
/// through the cache at `target`, or straight to PostgreSQL (`None`).
/// Measures ops/s, hit rate, the queries that reached PostgreSQL (counted
/// by the client, and as committed transactions in pg_stat_database) and
/// PostgreSQL's CPU.
async fn mix(b: &Bench, target: Option<&Target>, seconds: u64) -> Result<MixFigures> {
    let reader = match target {
        Some(target) => Some(caching_client(b, target).await?),
        None => None,
    };
    let plain = connect(&b.db_url).await?;
    let writer = connect(&b.db_url).await?;
    let write = writer.prepare(WRITE).await?;
    let plain_statement = plain.prepare(QUERY).await?;
    if let Some(reader) = &reader {
        // Warm: every author's list once.
        for author in 0..MIX_AUTHORS {
            reader.query(QUERY, &[&author]).await?;
        }
    }
    let before = reader.as_ref().map(CachingClient::metrics);
    let xacts_before = xact_commit(b).await?;
    let pg_cpu_before = b.postgres_cpu_seconds();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let worker = |seed: u64| {
        let (reader, plain, writer, write, plain_statement) =
            (&reader, &plain, &writer, &write, &plain_statement);
        async move {
            let mut state = seed;
            let (mut reads, mut writes) = (0_u64, 0_u64);
            while Instant::now() < deadline {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let pick = (state >> 33) % 100;
                let n = i32::try_from((state >> 40) % (MIX_AUTHORS * BOOKS_PER_AUTHOR) as u64)?;
                if pick < 5 {
                    writer.execute(write, &[&n]).await?;
                    writes += 1;
                } else {
                    let author = n / BOOKS_PER_AUTHOR;
                    match reader {
                        Some(reader) => reader.query(QUERY, &[&author]).await?.len(),
                        None => plain.query(plain_statement, &[&author]).await?.len(),
                    };
                    reads += 1;
                }
            }
            anyhow::Ok((reads, writes))
        }
    };
    let started = Instant::now();
    let (a, c) = futures::try_join!(worker(1), worker(2))?;
    let elapsed = started.elapsed().as_secs_f64();
    let pg_cpu_after = b.postgres_cpu_seconds();
    let (reads, writes) = (a.0 + c.0, a.1 + c.1);
    let after = reader.as_ref().map(CachingClient::metrics);
    drop(reader);
    drop(plain);
    drop(writer);
    // Closed backends flush their statistics; give them a moment.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let xacts_after = xact_commit(b).await?;
    let mut figures = MixFigures {
        ops_per_s: (reads + writes) as f64 / elapsed,
        reads_per_s: reads as f64 / elapsed,
        pg_qps: (reads + writes) as f64 / elapsed,
        pg_xact_per_s: (xacts_after - xacts_before) as f64 / elapsed,
        pg_cpus: pg_cpu_before
            .zip(pg_cpu_after)
            .map(|(b, a)| (a - b) / elapsed),
        hit_rate: None,
        stale_rejections: 0,
        cache_errors: 0,
    };
    if let (Some(before), Some(after)) = (before, after) {
        let hits = after.hits - before.hits;
        let misses = after.misses - before.misses;
        let bypasses = after.bypasses - before.bypasses;
        figures.pg_qps = (misses + bypasses + writes) as f64 / elapsed;
        let lookups = hits + misses + bypasses;
        if lookups > 0 {
            figures.hit_rate = Some(hits as f64 / lookups as f64);
        }
        figures.stale_rejections = after.stale_rejections - before.stale_rejections;
        figures.cache_errors = after.cache_errors - before.cache_errors;
    }
    Ok(figures)
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
