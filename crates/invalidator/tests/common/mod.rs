//! A harness for the worker's integration tests: a database and memcached
//! from the test kit, a config file pointing at them, the `cm-invalidator`
//! binary as a separate process, and "readers" that register cached results
//! in flush lists the way the reader library does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cm_keys::{CanonicalValue, Heartbeat, Key, KeySpace, TableName};
use cm_store::{
    read_generation, read_heartbeat, CacheStore, Generation, LeaseOutcome, MemcachedConfig,
    MemcachedStore,
};
use cm_testkit::{PgClusterBuilder, TestEnv, TestMemcached, TestPostgres};

pub const BIN: &str = env!("CARGO_BIN_EXE_cm-invalidator");

pub struct Harness {
    pub env: TestEnv,
    /// The configuration file's text.
    pub toml: String,
    pub config_path: PathBuf,
    _config_file: tempfile::TempPath,
    pub space: KeySpace,
    pub store: Arc<dyn CacheStore>,
    pub slot: String,
}

#[derive(Default)]
pub struct Options {
    pub owned_pg: bool,
    /// A cluster of the test's own with these settings (implies owned_pg).
    pub cluster: Option<PgClusterBuilder>,
    pub owned_memcached: bool,
    /// More metadata servers, after the test kit's memcached, in the
    /// worker's configuration and the harness's store.
    pub more_servers: Vec<String>,
    pub extra_toml: String,
}

impl Harness {
    pub async fn new(schema_sql: &str, options: Options) -> Harness {
        let env = TestEnv {
            pg: if let Some(builder) = options.cluster {
                TestPostgres::start_with(builder).unwrap()
            } else if options.owned_pg {
                TestPostgres::start_owned().unwrap()
            } else {
                TestPostgres::start().unwrap()
            },
            memcached: if options.owned_memcached {
                TestMemcached::start_owned().unwrap()
            } else {
                TestMemcached::start().unwrap()
            },
        };
        env.pg.psql(schema_sql).unwrap();
        let slot = env.pg.unique_name("cm_slot");
        let prefix = env.memcached.key_prefix().to_string();
        let servers: Vec<String> = std::iter::once(env.memcached.addr().to_string())
            .chain(options.more_servers.iter().cloned())
            .collect();
        let toml = format!(
            "[postgres]\nurl = '{url}'\nslot = '{slot}'\npublication = 'cm_pub'\n\
             [cache]\nservers = [{addrs}]\nprefix = '{prefix}'\ntimeout_ms = 300\n\
             [worker]\nheartbeat_interval_ms = 100\nstatus_interval_ms = 200\nmax_backoff_ms = 500\n\
             [log]\nlevel = 'cm_invalidator=debug,info'\n{extra}\n",
            url = env.pg.url(),
            addrs = servers
                .iter()
                .map(|addr| format!("'{addr}'"))
                .collect::<Vec<_>>()
                .join(", "),
            extra = options.extra_toml,
        );
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let config_file = file.into_temp_path();
        let mut memcached = MemcachedConfig::new(servers);
        memcached.timeout = Duration::from_millis(300);
        let store: Arc<dyn CacheStore> =
            Arc::new(MemcachedStore::connect(memcached).await.unwrap());
        Harness {
            toml,
            config_path: config_file.to_path_buf(),
            _config_file: config_file,
            space: KeySpace::new(prefix).unwrap(),
            store,
            slot,
            env,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&self.config_path).args(args);
        command
    }

    /// Another configuration file: this one's text after `edit`.
    pub fn config_file(&self, edit: impl FnOnce(&str) -> String) -> tempfile::TempPath {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(edit(&self.toml).as_bytes()).unwrap();
        file.into_temp_path()
    }

    /// `cm-invalidator --config <config> <args>`.
    pub fn command_with(&self, config: &std::path::Path, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config).args(args);
        command
    }

    pub fn run_cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn setup(&self) {
        let out = self.run_cli(&["setup"]);
        assert!(
            out.status.success(),
            "setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `cm-invalidator run`; `crash_after_apply` sets the fault hook.
    pub fn spawn_worker(&self, crash_after_apply: bool) -> Worker {
        let mut command = self.command(&["run"]);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        if crash_after_apply {
            command.env(cm_invalidator::CRASH_AFTER_APPLY_ENV, "1");
        }
        Worker(Some(command.spawn().unwrap()))
    }

    pub fn psql(&self, sql: &str) -> String {
        self.env.pg.psql(sql).unwrap()
    }

    /// Caches `value` under a result key named `name`, registered in `lists`,
    /// as the reader does (lease, register, fill).
    pub async fn cache(&self, name: &str, lists: &[Key]) -> Key {
        let q = self.space.result(&[name.as_bytes()]);
        let lease = match self
            .store
            .get_with_lease(q.as_str(), Duration::from_secs(10))
            .await
            .unwrap()
        {
            LeaseOutcome::Won(lease) => lease,
            other => panic!("expected to win the lease for {name}: {other:?}"),
        };
        let keys: Vec<&str> = lists.iter().map(Key::as_str).collect();
        self.store
            .append_to_flush_lists(&keys, q.as_str(), Duration::from_secs(600))
            .await
            .unwrap();
        let stored = self
            .store
            .set_if_lease_valid(q.as_str(), b"cached", Duration::from_secs(600), lease)
            .await
            .unwrap();
        assert!(stored, "fill of {name}");
        q
    }

    pub async fn is_cached(&self, q: &Key) -> bool {
        self.store.get_many(&[q.as_str()]).await.unwrap()[0].is_some()
    }

    pub async fn generation(&self, key: &Key) -> Option<u64> {
        read_generation(self.store.as_ref(), key.as_str())
            .await
            .unwrap()
            .map(Generation::get)
    }

    pub async fn heartbeat(&self) -> Option<Heartbeat> {
        read_heartbeat(self.store.as_ref(), &self.space)
            .await
            .ok()
            .flatten()
    }

    /// The server's current WAL write position.
    pub fn wal_lsn(&self) -> cm_pgoutput::Lsn {
        self.psql("SELECT pg_current_wal_lsn()")
            .trim()
            .parse()
            .unwrap()
    }

    /// The fence: waits until a heartbeat emitted after every write so far
    /// has come back, i.e. every earlier commit is invalidated.
    pub async fn wait_applied(&self) {
        let lsn = self.wal_lsn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(hb) = self.heartbeat().await {
                if hb.lsn > lsn.0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "worker did not apply up to {lsn} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn confirmed_flush(&self) -> cm_pgoutput::Lsn {
        self.psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot
        ))
        .trim()
        .parse()
        .unwrap()
    }

    pub fn object(&self, table: &str, id: i64) -> Key {
        self.space.object(
            &TableName::new("public", table),
            &[("id", Some(&CanonicalValue::Int(id)))],
        )
    }

    pub fn predicate(&self, table: &str, column: &str, value: CanonicalValue) -> Key {
        self.space
            .predicate(&TableName::new("public", table), &[(column, Some(&value))])
    }

    pub fn table_generation(&self, table: &str) -> Key {
        self.space
            .table_generation(&TableName::new("public", table))
    }
}

/// A running worker process, killed (SIGKILL) when dropped.
pub struct Worker(pub Option<Child>);

impl Worker {
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits; returns the exit status and stderr.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let child = self.0.take().unwrap();
        unsafe_free_sigterm(child.id());
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits for the process to exit by itself (e.g. the crash hook).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                if let Some(mut stderr) = child.stderr.take() {
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                    eprintln!("worker stderr:\n{text}");
                }
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// Sends a signal to a process by pid with kill(1).
/// The finding named `check` in the output of `check --json`.
pub fn finding(out: &Output, check: &str) -> serde_json::Value {
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no finding {check}: {findings}"))
        .clone()
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub const SCHEMA: &str = "
CREATE TABLE author(id int PRIMARY KEY, name text);
CREATE TABLE book(id int PRIMARY KEY, author_id int REFERENCES author(id), status text, title text);
ALTER TABLE book REPLICA IDENTITY FULL;
INSERT INTO author VALUES (1, 'a1'), (2, 'a2');
INSERT INTO book VALUES (10, 1, 'draft', 't10'), (11, 1, 'draft', 't11'), (99, 2, 'draft', 't99');
";

pub const MAPPING: &str = "[schema.tables.\"public.book\"]\npredicates = [[\"status\"]]\n";

/// `GET path` on `addr`: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1)?.to_owned();
    Some((status, body))
}

/// The value of a metric line `name value` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|line| line.starts_with(&format!("{name} ")))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}
