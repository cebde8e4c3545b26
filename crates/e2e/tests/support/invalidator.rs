//! The real `cm-invalidator` binary as a child process, and the fence.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cm_keys::{Heartbeat, KeySpace};
use cm_store::{read_heartbeat, CacheStore, MemcachedConfig, MemcachedStore};

/// The `cm-invalidator` binary: `$CM_E2E_INVALIDATOR_BIN`, else built with
/// cargo into the target directory this test runs from (a no-op when it is
/// up to date, e.g. after scripts/test's workspace build).
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CM_E2E_INVALIDATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test binary has no profile directory")?;
    let target = profile_dir.parent().ok_or("no target directory")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("bad profile directory")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "-q",
            "-p",
            "cm-invalidator",
            "--bin",
            "cm-invalidator",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target);
    if profile != "debug" {
        command.args(["--profile", profile]);
    }
    let out = command.output().map_err(|e| format!("cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p cm-invalidator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(profile_dir.join("cm-invalidator"))
}

/// Runs `cm-invalidator --config CONFIG ARGS` to completion.
pub fn run_cli(bin: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "cm-invalidator {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cm-invalidator run`, killed when dropped.
pub struct Worker(Child);

impl Worker {
    /// Starts `cm-invalidator --config CONFIG run`, stderr to `log`.
    pub fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<Worker, String> {
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Worker)
            .map_err(|e| format!("spawning the worker: {e}"))
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds (or finds) the binary, runs `setup` with `config`, then starts
/// `run`, its stderr going to `log`.
pub async fn set_up_and_run(config: &Path, log: &Path) -> Result<Worker, String> {
    let bin = tokio::task::spawn_blocking(binary)
        .await
        .map_err(|e| e.to_string())??;
    run_cli(&bin, config, &["setup"])?;
    Worker::spawn(&bin, config, log)
}

/// The fence from the database's side: waits until the worker has applied
/// everything committed before now (the current WAL position, read on
/// `admin`).
pub async fn fence(
    admin: &tokio_postgres::Client,
    store: &Arc<dyn CacheStore>,
    space: &KeySpace,
    timeout: Duration,
) -> Result<Duration, String> {
    let row = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| e.to_string())?;
    let text: &str = row.get(0);
    let lsn = parse_lsn(text).ok_or_else(|| format!("not an LSN: {text}"))?;
    wait_applied(store, space, lsn, timeout).await
}

/// Parses `X/Y`, PostgreSQL's LSN notation (the reader's token format).
pub fn parse_lsn(text: &str) -> Option<u64> {
    text.trim()
        .parse::<cm_reader::WriteToken>()
        .ok()
        .map(|token| token.lsn())
}

/// The heartbeat the worker last wrote.
pub async fn heartbeat(store: &Arc<dyn CacheStore>, space: &KeySpace) -> Option<Heartbeat> {
    read_heartbeat(store.as_ref(), space).await.ok().flatten()
}

/// The fence: waits until the worker's heartbeat LSN passes `lsn`, i.e.
/// every transaction committed before `lsn` is invalidated.
pub async fn wait_applied(
    store: &Arc<dyn CacheStore>,
    space: &KeySpace,
    lsn: u64,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if heartbeat(store, space).await.is_some_and(|hb| hb.lsn > lsn) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "the worker did not apply up to LSN {lsn:#x} within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cm-invalidator binary running over a test database seeded with
/// [`super::schema`], and what a test reads its cache with.
pub struct Seeded {
    /// The worker process (killed on drop).
    pub worker: Worker,
    /// A store over the test's memcached (the readers' view).
    pub store: Arc<dyn CacheStore>,
    /// The key space the worker writes.
    pub space: KeySpace,
    /// A plain connection to the test database.
    pub admin: tokio_postgres::Client,
    _dir: tempfile::TempDir,
}

impl Seeded {
    /// Creates and seeds the schema, then sets up and runs the worker with
    /// slot `slot`, its memcached at `worker_memcached` (the test's own,
    /// or a proxy in front of it), and waits until it has caught up.
    pub async fn start(env: &cm_testkit::TestEnv, worker_memcached: &str, slot: &str) -> Seeded {
        env.pg.psql(super::schema::SCHEMA).unwrap();
        env.pg.psql(&super::schema::seed_sql()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("invalidator.toml");
        let prefix = env.memcached.key_prefix().to_owned();
        let toml = super::schema::invalidator_toml(
            &env.pg.url(),
            &env.pg.unique_name(slot),
            worker_memcached,
            &prefix,
        );
        std::fs::write(&config, toml).unwrap();
        let worker = set_up_and_run(&config, &dir.path().join("worker.log"))
            .await
            .unwrap();
        let store: Arc<dyn CacheStore> = Arc::new(
            MemcachedStore::connect(MemcachedConfig::new([env.memcached.addr().to_owned()]))
                .await
                .unwrap(),
        );
        let seeded = Seeded {
            worker,
            store,
            space: KeySpace::new(prefix).unwrap(),
            admin: super::connect(&env.pg.url()).await,
            _dir: dir,
        };
        seeded.fence().await;
        seeded
    }

    /// A reader's cache over this worker's store and key space and the
    /// seeded schema's mapping, discovered through `client` (the primary
    /// or a standby), with `options` beside the `cm_pub` publication.
    pub async fn query_cache(
        &self,
        client: &tokio_postgres::Client,
        options: cm_reader::ReaderOptions,
    ) -> Arc<cm_reader::QueryCache> {
        let mapping = cm_keys::SchemaConfig::from_toml_str(super::schema::MAPPING).unwrap();
        let options = cm_reader::ReaderOptions {
            publication: Some("cm_pub".into()),
            ..options
        };
        let cache = cm_reader::QueryCache::discover(
            client,
            self.space.clone(),
            self.store.clone(),
            &mapping,
            options,
        )
        .await
        .unwrap();
        Arc::new(cache)
    }

    /// Waits until the worker has applied everything committed so far.
    pub async fn fence(&self) {
        fence(
            &self.admin,
            &self.store,
            &self.space,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
}
