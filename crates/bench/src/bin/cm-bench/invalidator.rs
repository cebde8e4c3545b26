//! The invalidator phases: throughput against pg_recvlogical, peak RSS
//! through one big UPDATE, commit-to-invalidated lag under a paced writer.
//! [`run`] also sets up what every phase shares ([`Bench`]) and, last, runs
//! the sibling reader phase (`crate::reader`) while the worker is still up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cm_bench::{
    cpu_seconds, histogram_quantile, parent_pid, parse_histogram, parse_labelled_histograms,
    parse_sample, percentile, pids_named, url_with_database, vm_hwm_kib, vm_rss_kib,
};
use cm_keys::{CanonicalValue, Key, KeySpace, TableName};
use cm_pgoutput::Lsn;
use cm_store::{read_heartbeat, CacheStore, LeaseOutcome, MemcachedConfig, MemcachedStore};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio_postgres::{Client, NoTls};

use crate::util::{
    env_required, env_u64, free_port, memcached_stat, pg_program, scrape, signal, start_profile,
    Hogs, PhaseLoad, Profile, Results,
};

/// Authors (and 20 books each) of the reader phase: the first
/// [`MIX_AUTHORS`] are read by the hit path and the 95/5 mix, the rest
/// once each by the misses.
pub(crate) const AUTHORS: i32 = 4000;
/// Authors whose books the hit path and the 95/5 mix read and write.
pub(crate) const MIX_AUTHORS: i32 = 1000;
/// Books per author: the rows of the reader phase's query.
pub(crate) const BOOKS_PER_AUTHOR: i32 = 20;
/// Orders per book (`book_order`), read by the heavy query's join.
pub(crate) const ORDERS_PER_BOOK: i32 = 5;

const HISTOGRAM: &str = "cm_invalidator_commit_to_invalidated_seconds";
/// Per-stage histograms of the wait between commit and invalidation, one
/// per value of the `stage` label, when the invalidator exports them.
const STAGE_HISTOGRAM: &str = "cm_invalidator_stage_seconds";
/// Rows at the end of the table that only the lag probes touch.
const PROBE_ROWS: u64 = 1000;

/// The servers, database, store and results shared by the phases (the
/// reader phase borrows it too, see `crate::reader`).
pub(crate) struct Bench {
    pub(crate) db_url: String,
    pub(crate) memcached: String,
    bin: PathBuf,
    pub(crate) work: PathBuf,
    config: PathBuf,
    metrics: String,
    slot: String,
    pub(crate) publication: String,
    pub(crate) space: KeySpace,
    pub(crate) store: Arc<dyn CacheStore>,
    pub(crate) db: Client,
    pub(crate) results: Results,
    rows: u64,
    /// Names the run's database, slots and prefixes.
    tag: String,
    /// The roots of our process trees (this bench, the test servers,
    /// PostgreSQL's postmaster): what is not under them is other load.
    pub(crate) own_roots: Vec<u32>,
    /// PostgreSQL's postmaster: its tree is the database's CPU.
    pub(crate) postmaster: Option<u32>,
}

/// A worker of its own for readers on other memcached servers than the
/// bench's: its config, slot, key space and store (see
/// [`Bench::start_sidecar`]).
pub(crate) struct Sidecar {
    worker: Worker,
    slot: String,
    /// The key space its readers use (its prefix).
    pub(crate) space: KeySpace,
    /// Its memcached servers, as a store.
    pub(crate) store: Arc<dyn CacheStore>,
}

/// One lag run's settings.
struct LagRun<'a> {
    /// `quiet` or `busy`.
    mode: &'a str,
    rate: u64,
    seconds: u64,
    writers: u64,
    /// CPU-bound processes started beside the run.
    hogs: u64,
    /// Whether perf records the worker through it.
    profile: bool,
}

/// A running `cm-invalidator run`, killed when dropped.
pub(crate) struct Worker {
    child: Child,
    pid: u32,
}

impl Worker {
    pub(crate) fn stop(mut self) -> Result<()> {
        signal(self.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub async fn run(bin: &Path, out: &Path, work: &Path) -> Result<()> {
    let admin_url = env_required("CM_TEST_PG_URL")?;
    let memcached = env_required("CM_TEST_MEMCACHED")?;
    let results = Results::new(out);
    let rows = env_u64("CM_BENCH_ROWS", 1_000_000)?.max(10 * PROBE_ROWS);
    let memory_rows = env_u64("CM_BENCH_MEMORY_ROWS", 1_000_000)?;
    let table_rows = rows.max(memory_rows);
    let tag = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            % 100_000
    );
    let database = format!("cm_bench_{tag}");
    let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls)
        .await
        .context("connect to CM_TEST_PG_URL")?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await?;
    let db_url = url_with_database(&admin_url, &database)
        .with_context(|| format!("cannot put a database into {admin_url:?}"))?;
    let (db, connection) = tokio_postgres::connect(&db_url, NoTls).await?;
    tokio::spawn(connection);

    eprintln!("==> loading {table_rows} rows");
    let started = Instant::now();
    db.batch_execute(&format!(
        "CREATE TABLE grp(id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE item(id int PRIMARY KEY, grp int NOT NULL REFERENCES grp(id),
                           v int NOT NULL DEFAULT 0, pad text NOT NULL);
         ALTER TABLE item REPLICA IDENTITY FULL;
         INSERT INTO grp SELECT g, 'group ' || g FROM generate_series(0, {groups}) g;
         INSERT INTO item SELECT i, i / 100, 0, 'padding-for-row-' || lpad(i::text, 8, '0')
           FROM generate_series(0, {last}) i;
         CREATE TABLE author(id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE book(id int PRIMARY KEY, author_id int NOT NULL REFERENCES author(id),
                           title text NOT NULL, price int NOT NULL, published date NOT NULL);
         ALTER TABLE book REPLICA IDENTITY FULL;
         CREATE INDEX book_author ON book(author_id);
         INSERT INTO author SELECT a, 'author ' || a FROM generate_series(0, {authors} - 1) a;
         INSERT INTO book SELECT b, b / {per_author}, 'the title of book number ' || b, b % 97,
             date '2020-01-01' + (b % 1000) FROM generate_series(0, {authors} * {per_author} - 1) b;
         CREATE TABLE book_order(id int PRIMARY KEY, book_id int NOT NULL REFERENCES book(id),
                                 quantity int NOT NULL, ordered_on date NOT NULL);
         INSERT INTO book_order SELECT o, (o::bigint * 7919) % ({authors} * {per_author}),
             1 + o % 5, date '2024-01-01' + (o % 365)
             FROM generate_series(0, {authors} * {per_author} * {per_book} - 1) o;
         CREATE INDEX book_order_book ON book_order(book_id);",
        groups = table_rows / 100,
        last = table_rows - 1,
        authors = AUTHORS,
        per_author = BOOKS_PER_AUTHOR,
        per_book = ORDERS_PER_BOOK,
    ))
    .await?;
    for table in ["item", "author", "book", "book_order"] {
        db.batch_execute(&format!("VACUUM ANALYZE {table}")).await?;
    }
    results.put("load.rows", table_rows)?;
    results.put(
        "load.seconds",
        format!("{:.1}", started.elapsed().as_secs_f64()),
    )?;

    let prefix = format!("cmb{tag}");
    let port = free_port()?;
    let slot = format!("cmb_{tag}");
    let publication = format!("cmb_{tag}");
    let config = work.join(format!("invalidator-{tag}.toml"));
    write_config(
        &config,
        &WorkerConfig {
            db_url: &db_url,
            slot: &slot,
            publication: &publication,
            servers: std::slice::from_ref(&memcached),
            prefix: &prefix,
            metrics: &format!("127.0.0.1:{port}"),
        },
    )?;
    let postmaster = match db.query_one("SELECT pg_backend_pid()", &[]).await {
        Ok(row) => u32::try_from(row.get::<_, i32>(0))
            .ok()
            .and_then(parent_pid),
        Err(_) => None,
    };
    let mut own_roots = vec![std::process::id()];
    own_roots.extend(postmaster);
    if let Ok(Ok(pid)) = std::env::var("CM_BENCH_SERVERS_PID").map(|p| p.trim().parse::<u32>()) {
        own_roots.push(pid);
    }
    let mut memcached_config = MemcachedConfig::new([memcached.clone()]);
    memcached_config.timeout = Duration::from_secs(2);
    let store: Arc<dyn CacheStore> = Arc::new(MemcachedStore::connect(memcached_config).await?);
    let bench = Bench {
        db_url,
        memcached,
        bin: bin.to_path_buf(),
        work: work.to_path_buf(),
        config,
        metrics: format!("127.0.0.1:{port}"),
        slot,
        publication,
        space: KeySpace::new(prefix)?,
        store,
        db,
        results,
        rows,
        tag,
        own_roots,
        postmaster,
    };
    bench
        .results
        .put("machine.memcached", &bench.memcached)
        .and_then(|()| bench.results.put("run.database", &database))?;

    let evictions_before = memcached_stat(&bench.memcached, "evictions").await?;
    let phase = bench.phase("throughput");
    let worker = bench.throughput().await?;
    phase.finish(&bench.results)?;
    worker.stop()?;
    let phase = bench.phase("memory");
    let worker = bench.memory(memory_rows).await?;
    phase.finish(&bench.results)?;
    let worker = bench.lag(worker).await?;
    // The reader phase runs while the lag phase's worker is still up.
    let reader_result = crate::reader::run(&bench).await;
    worker.stop()?;
    reader_result?;
    let evictions = memcached_stat(&bench.memcached, "evictions").await? - evictions_before;
    bench.results.put("memcached.evictions", evictions)?;

    drop(bench);
    // Leave nothing behind on servers someone else may reuse.
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    Ok(())
}

/// What a worker's config file names.
struct WorkerConfig<'a> {
    db_url: &'a str,
    slot: &'a str,
    publication: &'a str,
    servers: &'a [String],
    prefix: &'a str,
    metrics: &'a str,
}

/// Writes a `cm-invalidator` config file: the bench's tables, fast
/// heartbeats and status, warnings only.
fn write_config(path: &Path, c: &WorkerConfig<'_>) -> Result<()> {
    let servers: Vec<String> = c.servers.iter().map(|s| format!("'{s}'")).collect();
    std::fs::write(
        path,
        format!(
            "[postgres]\nurl = '{}'\nslot = '{}'\npublication = '{}'\n\
             publish_tables = ['public.item', 'public.grp', 'public.author', 'public.book', \
             'public.book_order']\n\
             [cache]\nservers = [{}]\nprefix = '{}'\ntimeout_ms = 1000\n\
             [worker]\nheartbeat_interval_ms = 100\nstatus_interval_ms = 100\n\
             [metrics]\nlisten = '{}'\n[log]\nlevel = 'warn'\n",
            c.db_url,
            c.slot,
            c.publication,
            servers.join(", "),
            c.prefix,
            c.metrics,
        ),
    )?;
    Ok(())
}

impl Bench {
    /// Starts taking the machine's load over phase `name`.
    pub(crate) fn phase(&self, name: &str) -> PhaseLoad {
        PhaseLoad::start(name, &self.own_roots)
    }

    /// CPU seconds used so far by PostgreSQL (every process of the test
    /// cluster, and the backends it has reaped); `None` when the
    /// postmaster is not known.
    pub(crate) fn postgres_cpu_seconds(&self) -> Option<f64> {
        self.postmaster
            .map(|pid| cm_bench::tree_cpu_seconds(&[pid]))
    }

    /// Waits until the worker writing the heartbeat of `space` in `store`
    /// has applied everything committed so far (its heartbeat LSN passes
    /// the current WAL position), so that no invalidation of an earlier
    /// write lands in what is timed next.
    pub(crate) async fn settle(
        &self,
        store: &dyn CacheStore,
        space: &KeySpace,
        timeout: Duration,
    ) -> Result<()> {
        let lsn = self.current_lsn().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let heartbeat = read_heartbeat(store, space).await?;
            if heartbeat.is_some_and(|h| h.lsn > lsn.0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the worker of {} did not pass {lsn} within {timeout:?}",
                    space.prefix()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts a second worker, with its own slot and prefix, on `servers`
    /// (every key hashed over them, as the store routes them), and waits
    /// until its heartbeat is fresh: what a reader on those servers needs.
    pub(crate) async fn start_sidecar(&self, name: &str, servers: &[String]) -> Result<Sidecar> {
        let slot = format!("cmb_{}_{name}", self.tag);
        let prefix = format!("cmb{}{name}", self.tag);
        let config = self
            .work
            .join(format!("invalidator-{}-{name}.toml", self.tag));
        write_config(
            &config,
            &WorkerConfig {
                db_url: &self.db_url,
                slot: &slot,
                publication: &self.publication,
                servers,
                prefix: &prefix,
                metrics: &format!("127.0.0.1:{}", free_port()?),
            },
        )?;
        self.setup(&config)?;
        let mut memcached_config = MemcachedConfig::new(servers.iter().cloned());
        memcached_config.timeout = Duration::from_secs(2);
        let store: Arc<dyn CacheStore> = Arc::new(MemcachedStore::connect(memcached_config).await?);
        let worker = self.spawn_worker_with(&config, &format!("worker-{name}.log"))?;
        let sidecar = Sidecar {
            worker,
            slot,
            space: KeySpace::new(prefix)?,
            store,
        };
        self.settle(
            sidecar.store.as_ref(),
            &sidecar.space,
            Duration::from_secs(60),
        )
        .await?;
        Ok(sidecar)
    }

    /// Stops a sidecar worker and drops its slot.
    pub(crate) async fn stop_sidecar(&self, sidecar: Sidecar) -> Result<()> {
        sidecar.worker.stop()?;
        // The slot may stay active for a moment after its walsender's client went away.
        for _ in 0..50 {
            let dropped = self
                .db
                .execute("SELECT pg_drop_replication_slot($1)", &[&sidecar.slot])
                .await;
            if dropped.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("  note: slot {} not dropped", sidecar.slot);
        Ok(())
    }

    /// `cm-invalidator --config CONFIG setup`.
    fn setup(&self, config: &Path) -> Result<()> {
        let setup = Command::new(&self.bin)
            .arg("--config")
            .arg(config)
            .arg("setup")
            .output()?;
        if !setup.status.success() {
            bail!(
                "cm-invalidator setup: {}",
                String::from_utf8_lossy(&setup.stderr)
            );
        }
        Ok(())
    }

    fn object(&self, id: u64) -> Key {
        self.space.object(
            &TableName::new("public", "item"),
            &[("id", Some(&CanonicalValue::Int(id as i64)))],
        )
    }

    fn group_list(&self, group: u64) -> Key {
        self.space.predicate(
            &TableName::new("public", "item"),
            &[("grp", Some(&CanonicalValue::Int(group as i64)))],
        )
    }

    /// Caches a result `name` registered in `lists`, as the reader does.
    async fn cache(&self, name: &str, lists: &[Key]) -> Result<Key> {
        let q = self.space.result(&[name.as_bytes()]);
        let lease = match self
            .store
            .get_with_lease(q.as_str(), Duration::from_secs(30))
            .await?
        {
            LeaseOutcome::Won(lease) => lease,
            other => bail!("expected to win the lease for {name}: {other:?}"),
        };
        let keys: Vec<&str> = lists.iter().map(Key::as_str).collect();
        self.store
            .append_to_flush_lists(&keys, q.as_str(), Duration::from_secs(3600))
            .await?;
        let value = vec![b'r'; 2048];
        if !self
            .store
            .set_if_lease_valid(q.as_str(), &value, Duration::from_secs(3600), lease)
            .await?
        {
            bail!("fill of {name} lost its lease");
        }
        Ok(q)
    }

    /// Caches one result per sampled row (every `every`-th row below
    /// `limit`) and one list per sampled group; returns the result keys.
    async fn cache_sample(&self, run: &str, limit: u64, every: u64) -> Result<Vec<Key>> {
        let ids: Vec<u64> = (0..limit).step_by(every as usize).collect();
        let rows = stream::iter(ids.iter().copied())
            .map(|id| async move {
                self.cache(&format!("{run} item {id}"), &[self.object(id)])
                    .await
            })
            .buffer_unordered(64)
            .try_collect::<Vec<Key>>();
        let groups: Vec<u64> = (0..limit / 100).step_by(every as usize).collect();
        let lists = stream::iter(groups.iter().copied())
            .map(|g| async move {
                self.cache(&format!("{run} group {g}"), &[self.group_list(g)])
                    .await
            })
            .buffer_unordered(64)
            .try_collect::<Vec<Key>>();
        let (mut rows, lists) = futures::try_join!(rows, lists)?;
        rows.extend(lists);
        Ok(rows)
    }

    async fn still_cached(&self, keys: &[Key]) -> Result<usize> {
        let mut cached = 0;
        for chunk in keys.chunks(200) {
            let names: Vec<&str> = chunk.iter().map(Key::as_str).collect();
            cached += self
                .store
                .get_many(&names)
                .await?
                .iter()
                .filter(|i| i.is_some())
                .count();
        }
        Ok(cached)
    }

    async fn current_lsn(&self) -> Result<Lsn> {
        let text: String = self
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        Ok(text.parse()?)
    }

    async fn slot_state(&self, slot: &str) -> Result<(Option<Lsn>, Option<u32>)> {
        let row = self
            .db
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        let Some(row) = row else {
            return Ok((None, None));
        };
        let lsn: Option<String> = row.get(0);
        let pid: Option<i32> = row.get(1);
        Ok((
            lsn.and_then(|l| l.parse().ok()),
            pid.and_then(|p| u32::try_from(p).ok()),
        ))
    }

    async fn heartbeat_lsn(&self) -> Result<Option<u64>> {
        let heartbeat = read_heartbeat(self.store.as_ref(), &self.space).await?;
        Ok(heartbeat.map(|h| h.lsn))
    }

    fn spawn_worker(&self, log_name: &str) -> Result<Worker> {
        self.spawn_worker_with(&self.config, log_name)
    }

    fn spawn_worker_with(&self, config: &Path, log_name: &str) -> Result<Worker> {
        let log = std::fs::File::create(self.work.join(log_name))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let pid = child.id();
        Ok(Worker { child, pid })
    }

    /// Waits until the worker has applied everything up to `lsn` (its slot's
    /// confirmed_flush_lsn reaches it, or a heartbeat emitted after it comes
    /// back); returns when that was first seen.
    async fn wait_applied(&self, worker: &mut Worker, lsn: Lsn, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut polls = 0_u64;
        loop {
            if self.heartbeat_lsn().await?.is_some_and(|hb| hb > lsn.0) {
                return Ok(());
            }
            if polls % 5 == 0 {
                let (confirmed, _) = self.slot_state(&self.slot).await?;
                if confirmed.is_some_and(|c| c >= lsn) {
                    return Ok(());
                }
            }
            if let Some(status) = worker.child.try_wait()? {
                bail!(
                    "cm-invalidator exited ({status}); see {}",
                    self.work.display()
                );
            }
            if Instant::now() > deadline {
                bail!("cm-invalidator did not apply up to {lsn} within {timeout:?}");
            }
            polls += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn throughput(&self) -> Result<Worker> {
        let transactions = env_u64("CM_BENCH_TXNS", self.rows / 100)?.max(1);
        let per_txn = (self.rows / transactions).max(1);
        let updates = per_txn * transactions;
        let r = &self.results;
        r.put("throughput.rows", updates)?;
        r.put("throughput.transactions", transactions)?;

        eprintln!("==> throughput: slots, cached sample");
        self.setup(&self.config)?;
        let second = format!("{}_recv", self.slot);
        self.db
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&second],
            )
            .await?;
        let sample_every = env_u64("CM_BENCH_SAMPLE_EVERY", 100)?.max(1);
        let started = Instant::now();
        let sample = self.cache_sample("tp", updates, sample_every).await?;
        r.put("throughput.cached_results", sample.len())?;
        r.put(
            "throughput.cache_fill_seconds",
            format!("{:.1}", started.elapsed().as_secs_f64()),
        )?;

        eprintln!("==> throughput: writing {updates} row updates in {transactions} transactions");
        let started = Instant::now();
        self.db
            .batch_execute(&format!(
                "DO $$ BEGIN FOR t IN 0..{last} LOOP
                   UPDATE item SET v = v + 1 WHERE id >= t * {per_txn} AND id < (t + 1) * {per_txn};
                   COMMIT;
                 END LOOP; END $$;",
                last = transactions - 1,
            ))
            .await?;
        let end = self.current_lsn().await?;
        // One more commit past `end`, so pg_recvlogical sees a record at or
        // past --endpos and stops.
        self.db
            .batch_execute(&format!(
                "UPDATE item SET v = v + 1 WHERE id = {}",
                self.rows - 1
            ))
            .await?;
        let write_seconds = started.elapsed().as_secs_f64();
        r.put("throughput.write_seconds", format!("{write_seconds:.2}"))?;
        r.put("throughput.end_lsn", end)?;

        eprintln!("==> throughput: pg_recvlogical catching up");
        let recvlogical = pg_program("pg_recvlogical");
        let started = Instant::now();
        let mut child = Command::new(&recvlogical)
            .arg("-d")
            .arg(&self.db_url)
            .args(["--slot", &second, "--start", "--no-loop"])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={}", self.publication))
            .args(["-f", "/dev/null", "--endpos"])
            .arg(end.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", recvlogical.display()))?;
        let mut walsender_cpu = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let (_, Some(pid)) = self.slot_state(&second).await? {
                walsender_cpu = cpu_seconds(pid).or(walsender_cpu);
            }
            if started.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                bail!("pg_recvlogical did not reach {end} in 600 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let recv_seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            bail!("pg_recvlogical failed ({status}): {stderr}");
        }
        self.db
            .execute("SELECT pg_drop_replication_slot($1)", &[&second])
            .await?;
        let recv_rate = updates as f64 / recv_seconds;
        r.put(
            "throughput.recvlogical_seconds",
            format!("{recv_seconds:.2}"),
        )?;
        r.put(
            "throughput.recvlogical_rows_per_s",
            format!("{recv_rate:.0}"),
        )?;
        if let Some(cpu) = walsender_cpu {
            r.put(
                "throughput.recvlogical_walsender_cpu_s",
                format!("{cpu:.2}"),
            )?;
        }

        eprintln!("==> throughput: cm-invalidator catching up");
        let memcached_cpu = |pids: &[u32]| pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
        let memcached_pids = pids_named("memcached");
        let memcached_before = memcached_cpu(&memcached_pids);
        let started = Instant::now();
        let mut worker = self.spawn_worker("worker-throughput.log")?;
        let mut walsender_cpu = None;
        let deadline = started + Duration::from_secs(900);
        loop {
            if self.heartbeat_lsn().await?.is_some_and(|hb| hb > end.0) {
                break;
            }
            let (confirmed, pid) = self.slot_state(&self.slot).await?;
            if let Some(pid) = pid {
                walsender_cpu = cpu_seconds(pid).or(walsender_cpu);
            }
            if confirmed.is_some_and(|c| c >= end) {
                break;
            }
            if let Some(status) = worker.child.try_wait()? {
                bail!("cm-invalidator exited during catch-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("cm-invalidator did not reach {end} in 900 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let worker_seconds = started.elapsed().as_secs_f64();
        let worker_cpu = cpu_seconds(worker.pid);
        let worker_rate = updates as f64 / worker_seconds;
        r.put(
            "throughput.invalidator_seconds",
            format!("{worker_seconds:.2}"),
        )?;
        r.put(
            "throughput.invalidator_rows_per_s",
            format!("{worker_rate:.0}"),
        )?;
        r.put(
            "throughput.ratio",
            format!("{:.3}", worker_rate / recv_rate),
        )?;
        if let Some(cpu) = worker_cpu {
            r.put("throughput.invalidator_cpu_s", format!("{cpu:.2}"))?;
        }
        if let Some(cpu) = walsender_cpu {
            r.put(
                "throughput.invalidator_walsender_cpu_s",
                format!("{cpu:.2}"),
            )?;
        }
        r.put(
            "throughput.memcached_cpu_s",
            format!("{:.2}", memcached_cpu(&memcached_pids) - memcached_before),
        )?;
        if let Some(kib) = vm_hwm_kib(worker.pid) {
            r.put("throughput.invalidator_vmhwm_kib", kib)?;
        }
        let metrics = scrape(&self.metrics).await?;
        for name in [
            "cm_invalidator_transactions_total",
            "cm_invalidator_changes_total",
            "cm_invalidator_keys_invalidated_total",
            "cm_invalidator_generation_bumps_total",
            "cm_invalidator_epoch_bumps_total",
            "cm_invalidator_coarsened_transactions_total",
        ] {
            if let Some(v) = parse_sample(&metrics, name) {
                r.put(&format!("throughput.{name}"), v)?;
            }
        }
        r.put("throughput.cached_left", self.still_cached(&sample).await?)?;
        Ok(worker)
    }

    async fn memory(&self, memory_rows: u64) -> Result<Worker> {
        let r = &self.results;
        eprintln!("==> memory: one {memory_rows}-row UPDATE");
        let mut worker = self.spawn_worker("worker-memory.log")?;
        let now = self.current_lsn().await?;
        self.wait_applied(&mut worker, now, Duration::from_secs(120))
            .await?;
        if let Some(kib) = vm_hwm_kib(worker.pid) {
            r.put("memory.idle_vmhwm_kib", kib)?;
        }
        let sample = self
            .cache_sample("mem", memory_rows.min(self.rows), 1000)
            .await?;
        let started = Instant::now();
        self.db
            .batch_execute(&format!(
                "UPDATE item SET v = v + 1 WHERE id < {memory_rows}"
            ))
            .await?;
        let write_seconds = started.elapsed().as_secs_f64();
        let end = self.current_lsn().await?;
        let mut peak_rss = 0;
        let pid = worker.pid;
        let applied = {
            let wait = self.wait_applied(&mut worker, end, Duration::from_secs(600));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    result = &mut wait => break result,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {
                        peak_rss = peak_rss.max(vm_rss_kib(pid).unwrap_or(0));
                    }
                }
            }
        };
        applied?;
        let total_seconds = started.elapsed().as_secs_f64();
        r.put("memory.rows", memory_rows)?;
        r.put("memory.write_seconds", format!("{write_seconds:.2}"))?;
        r.put("memory.apply_seconds", format!("{total_seconds:.2}"))?;
        if let Some(kib) = vm_hwm_kib(worker.pid) {
            r.put("memory.vmhwm_kib", kib)?;
        }
        r.put("memory.sampled_peak_rss_kib", peak_rss)?;
        let metrics = scrape(&self.metrics).await?;
        if let Some(v) = parse_sample(&metrics, "cm_invalidator_coarsened_transactions_total") {
            r.put("memory.coarsened_transactions", v)?;
        }
        r.put("memory.cached_left", self.still_cached(&sample).await?)?;
        // The lag phase reuses this worker.
        Ok(worker)
    }

    async fn lag(&self, mut worker: Worker) -> Result<Worker> {
        let seconds = env_u64("CM_BENCH_LAG_SECONDS", 15)?;
        let writers = env_u64("CM_BENCH_WRITERS", 4)?.max(1);
        let hogs = env_u64("CM_BENCH_LAG_HOGS", 2)?;
        let rates: Vec<u64> = std::env::var("CM_BENCH_LAG_RATES")
            .unwrap_or_else(|_| "1000,5000".to_owned())
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .context("CM_BENCH_LAG_RATES: comma-separated tx/s")?;
        let r = &self.results;
        r.put("lag.seconds", seconds)?;
        r.put("lag.writers", writers)?;
        r.put(
            "lag.rates",
            rates
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )?;
        r.put("lag.hogs", hogs)?;
        let modes: &[(&str, u64)] = if hogs > 0 {
            &[("quiet", 0), ("busy", hogs)]
        } else {
            &[("quiet", 0)]
        };
        // The worker is profiled in one run only, the last mode's highest
        // rate (busy when there is one: its figures have no target):
        // perf's own cost grows with the worker's thread switches, so it
        // is never attached while the throughput or a quiet lag with a
        // target is measured.
        let profiled = modes
            .last()
            .map(|(mode, _)| *mode)
            .zip(rates.iter().copied().max());
        for &(mode, hogs) in modes {
            for &rate in &rates {
                let profile = profiled == Some((mode, rate));
                let run = LagRun {
                    mode,
                    rate,
                    seconds,
                    writers,
                    hogs,
                    profile,
                };
                let phase = self.phase(&format!("lag_{mode}_{rate}"));
                self.lag_run(&mut worker, &run).await?;
                phase.finish(r)?;
            }
        }
        Ok(worker)
    }

    /// One lag run: the paced writers and the poller at one rate, with
    /// `hogs` CPU-bound processes beside them (busy) or none (quiet).
    /// Records `lag.MODE.RATE.*`.
    async fn lag_run(&self, worker: &mut Worker, run: &LagRun<'_>) -> Result<()> {
        let r = &self.results;
        let (mode, rate) = (run.mode, run.rate);
        eprintln!(
            "==> lag ({mode}, {} CPU hogs): {rate} tx/s for {} s",
            run.hogs, run.seconds
        );
        // Rows that sit in cached results, so writes really delete.
        self.cache_sample(&format!("lag{mode}{rate}"), self.rows - PROBE_ROWS, 100)
            .await?;
        let before = scrape(&self.metrics).await?;
        let cpu_before = cpu_seconds(worker.pid);
        let profile = if run.profile {
            start_profile(worker.pid, &self.work)?
        } else {
            None
        };
        let hogs = Hogs::start(run.hogs)?;
        let (achieved, probes) = self.paced_load(rate, run.seconds, run.writers).await?;
        let end = self.current_lsn().await?;
        self.wait_applied(worker, end, Duration::from_secs(300))
            .await?;
        let hogs_share = hogs.cpu_share();
        drop(hogs);
        if let Some(Ok(text)) = profile.map(Profile::finish) {
            r.put("lag.profile_rate", rate)?;
            r.put("lag.profile_mode", mode)?;
            r.put_text("lag.profile", &text)?;
        }
        let after = scrape(&self.metrics).await?;
        let cpu_after = cpu_seconds(worker.pid);
        let key = format!("lag.{mode}.{rate}");
        r.put(&format!("{key}.achieved_tps"), format!("{achieved:.0}"))?;
        let (b, a) = (
            parse_histogram(&before, HISTOGRAM),
            parse_histogram(&after, HISTOGRAM),
        );
        let count = a.last().map_or(0.0, |x| x.1) - b.last().map_or(0.0, |x| x.1);
        r.put(&format!("{key}.hist_count"), count)?;
        self.put_quantiles(&format!("{key}.hist"), &b, &a)?;
        self.put_stages(&key, &before, &after)?;
        let mut sorted: Vec<f64> = probes.iter().filter_map(|p| *p).collect();
        sorted.sort_by(f64::total_cmp);
        r.put(&format!("{key}.probes"), probes.len())?;
        r.put(
            &format!("{key}.probe_timeouts"),
            probes.iter().filter(|p| p.is_none()).count(),
        )?;
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            if let Some(v) = percentile(&sorted, q) {
                r.put(&format!("{key}.probe_{name}_ms"), format!("{v:.3}"))?;
            }
        }
        if let Some(max) = sorted.last() {
            r.put(&format!("{key}.probe_max_ms"), format!("{max:.3}"))?;
        }
        let seconds = run.seconds.max(1) as f64;
        if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
            r.put(
                &format!("{key}.invalidator_cpu_pct"),
                format!("{:.0}", (a - b) / seconds * 100.0),
            )?;
        }
        if run.hogs > 0 {
            r.put(
                &format!("{key}.hogs_cpu_pct"),
                format!("{:.0}", hogs_share * 100.0),
            )?;
        }
        Ok(())
    }

    /// Records `KEY_p50_ms` and `KEY_p99_ms` of the observations of one
    /// histogram between two scrapes (`>N` past its largest finite bucket).
    fn put_quantiles(&self, key: &str, before: &[(f64, f64)], after: &[(f64, f64)]) -> Result<()> {
        let largest = after
            .iter()
            .map(|(le, _)| *le)
            .filter(|le| le.is_finite())
            .fold(0.0, f64::max);
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            if let Some(v) = histogram_quantile(before, after, q) {
                // Past the largest finite bucket the histogram only says "more".
                let text = if v >= largest {
                    format!(">{:.0}", largest * 1e3)
                } else {
                    format!("{:.3}", v * 1e3)
                };
                self.results.put(&format!("{key}_{name}_ms"), text)?;
            }
        }
        Ok(())
    }

    /// The lag stage timestamps: p50/p99 per `stage` of
    /// `cm_invalidator_stage_seconds` between the two scrapes, as
    /// `KEY.stage.STAGE_p50_ms`; `KEY.stages = not measured` when the
    /// invalidator does not export it.
    fn put_stages(&self, key: &str, before: &str, after: &str) -> Result<()> {
        let stages_after = parse_labelled_histograms(after, STAGE_HISTOGRAM, "stage");
        if stages_after.is_empty() {
            return self.results.put(
                &format!("{key}.stages"),
                format!("not measured (no {STAGE_HISTOGRAM} in /metrics)"),
            );
        }
        let stages_before = parse_labelled_histograms(before, STAGE_HISTOGRAM, "stage");
        let names: Vec<&str> = stages_after.iter().map(|(s, _)| s.as_str()).collect();
        self.results
            .put(&format!("{key}.stages"), names.join(","))?;
        for (stage, a) in &stages_after {
            let b = stages_before
                .iter()
                .find(|(s, _)| s == stage)
                .map(|(_, b)| b.as_slice())
                .unwrap_or_default();
            self.put_quantiles(&format!("{key}.stage.{stage}"), b, a)?;
        }
        Ok(())
    }

    /// `writers` connections run `rate` single-row UPDATE transactions per
    /// second for `seconds`, while a probe caches a result every 100 ms,
    /// updates its row and polls until the result is gone. Returns the
    /// achieved rate and each probe's latency in ms (None: not gone in 5 s).
    async fn paced_load(
        &self,
        rate: u64,
        seconds: u64,
        writers: u64,
    ) -> Result<(f64, Vec<Option<f64>>)> {
        let total = rate * seconds;
        let next = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let span = self.rows - PROBE_ROWS;
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (client, connection) = tokio_postgres::connect(&self.db_url, NoTls).await?;
            tokio::spawn(connection);
            let next = Arc::clone(&next);
            tasks.push(tokio::spawn(async move {
                let statement = client
                    .prepare("UPDATE item SET v = v + 1 WHERE id = $1")
                    .await?;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        return anyhow::Ok(());
                    }
                    let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                    let id = i32::try_from((k * 7919) % span)?;
                    client.execute(&statement, &[&id]).await?;
                }
            }));
        }
        let (probe_client, connection) = tokio_postgres::connect(&self.db_url, NoTls).await?;
        tokio::spawn(connection);
        let probe_statement = probe_client
            .prepare("UPDATE item SET v = v + 1 WHERE id = $1")
            .await?;
        tokio::time::sleep_until(start).await;
        let began = Instant::now();
        let mut probes = Vec::new();
        let mut i = 0_u64;
        while began.elapsed() < Duration::from_secs(seconds) {
            let id = self.rows - PROBE_ROWS + i % PROBE_ROWS;
            let q = self
                .cache(&format!("probe {rate} {i}"), &[self.object(id)])
                .await?;
            let id = i32::try_from(id)?;
            probe_client.execute(&probe_statement, &[&id]).await?;
            let committed = Instant::now();
            let gone = loop {
                if self.store.get_many(&[q.as_str()]).await?[0].is_none() {
                    break Some(committed.elapsed().as_secs_f64() * 1e3);
                }
                if committed.elapsed() > Duration::from_secs(5) {
                    break None;
                }
                tokio::task::yield_now().await;
            };
            probes.push(gone);
            i += 1;
            let pause = Duration::from_millis(100).saturating_sub(committed.elapsed());
            tokio::time::sleep(pause).await;
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = (tokio::time::Instant::now() - start).as_secs_f64();
        Ok((total as f64 / elapsed, probes))
    }
}
