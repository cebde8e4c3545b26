//! [`PgReplica`]: a hot-standby streaming replica of a test's PostgreSQL server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cluster::PgCluster;
use crate::url::ConnParams;
use crate::util::{random_hex, run_output};
use crate::{psql, TestPostgres, TestkitError};

/// How long [`PgReplica::start`] waits for the replica to replay what the primary had written.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`PgReplica::pause_replay`] waits for recovery to say it paused.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the replica is asked how far it replayed, while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Settings a hot standby must have at least as high as its primary; the
/// replica takes the primary's values.
const STANDBY_MINIMUMS: [&str; 5] = [
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
];

/// A hot-standby streaming replica (`hot_standby = on`) of the server that
/// holds a [`TestPostgres`], for tests that read from a replica that may lag.
///
/// [`start`](Self::start) copies the primary with `pg_basebackup -R -X
/// stream` through a physical replication slot of its own
/// ([`slot_name`](Self::slot_name)), starts the copy in a temporary
/// directory on a free port of 127.0.0.1 (as the `postgres` user when the
/// tests run as root, like [`PgCluster`]), and waits until it has replayed
/// everything the primary had written, so the test's database and tables
/// are there. That works for an owned primary
/// ([`TestPostgres::start_owned`]) and for the shared one
/// (`$CM_TEST_PG_URL`), whose role must be a superuser (or have
/// `REPLICATION`, then [`pause_replay`](Self::pause_replay) needs `EXECUTE`
/// on `pg_wal_replay_pause`). Several replicas of one primary may run at once.
///
/// Dropping it stops the replica, removes its directory and drops its slot
/// on the primary, also when a test panics (as long as panics unwind). Drop
/// it before the primary's [`TestPostgres`]: declared after it, it is.
///
/// ```no_run
/// use std::time::Duration;
/// use cm_testkit::{PgReplica, TestPostgres};
///
/// # fn main() -> Result<(), cm_testkit::TestkitError> {
/// let pg = TestPostgres::start()?;
/// pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('old');")?;
/// let replica = PgReplica::start(&pg)?;
/// replica.pause_replay()?;
/// pg.psql("UPDATE t SET v = 'new'")?;
/// let written = replica.primary_lsn()?;
/// assert_eq!(replica.psql("SELECT v FROM t")?.trim(), "old");
/// replica.resume_replay()?;
/// replica.wait_for_replay(written, Duration::from_secs(30))?;
/// assert_eq!(replica.psql("SELECT v FROM t")?.trim(), "new");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PgReplica {
    // Dropped after `Drop::drop` stopped the server and dropped the slot.
    cluster: PgCluster,
    /// The primary's admin database, as the primary's admin role.
    primary: ConnParams,
    /// The test's database on the replica, as the test's role.
    params: ConnParams,
    psql: PathBuf,
    slot: String,
}

impl PgReplica {
    /// Copies the server that holds `primary` and starts the copy as its
    /// streaming replica; returns once the replica has replayed the
    /// primary's `pg_current_wal_lsn()` as it was when the replica came up,
    /// so that `primary`'s database and what was committed in it are there.
    pub fn start(primary: &TestPostgres) -> Result<PgReplica, TestkitError> {
        let bin_dir = primary.cluster().map(|c| c.bin_dir().to_path_buf());
        let cluster = PgCluster::unstarted(bin_dir, "pg_basebackup")?;
        let mut replica = PgReplica {
            psql: psql::psql_binary(Some(cluster.bin_dir()))?,
            primary: primary.admin_params().clone(),
            params: primary.params().clone(),
            slot: format!("cm_replica_{}", random_hex(16)),
            cluster,
        };
        // From here on, dropping `replica` drops its slot on the primary.
        replica.base_backup()?;
        let settings = replica.standby_settings()?;
        replica.cluster.include_settings_file()?;
        replica.cluster.start_on_free_port(&settings)?;
        replica.params.host = replica.cluster.host().to_string();
        replica.params.port = replica.cluster.port();
        replica.catch_up(CATCH_UP_TIMEOUT)?;
        Ok(replica)
    }

    /// `postgres://USER[:PASSWORD]@127.0.0.1:PORT/DBNAME`: the same database
    /// and role as the [`TestPostgres`] it was started from, on the replica.
    pub fn url(&self) -> String {
        self.params.to_url()
    }

    /// The replica's address: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        &self.params.host
    }

    /// The replica's TCP port.
    pub fn port(&self) -> u16 {
        self.params.port
    }

    /// The name of the database [`url`](Self::url) and [`psql`](Self::psql) use.
    pub fn dbname(&self) -> &str {
        &self.params.dbname
    }

    /// The physical replication slot on the primary that this replica
    /// streams from (`cm_replica_<16 hex digits>`); dropped with it.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// The replica's server: its data directory, log, process id.
    pub fn cluster(&self) -> &PgCluster {
        &self.cluster
    }

    /// Runs `sql` in the test's database on the replica, as
    /// [`TestPostgres::psql`] does on the primary. The replica is read-only:
    /// writes fail.
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        psql::run_script(&self.psql, &self.params, sql)
    }

    /// Stops applying WAL (`pg_wal_replay_pause()`) and returns once
    /// `pg_get_wal_replay_pause_state()` says `paused`: from then on, what
    /// the primary commits is received but not visible on the replica,
    /// until [`resume_replay`](Self::resume_replay).
    pub fn pause_replay(&self) -> Result<(), TestkitError> {
        self.psql("SELECT pg_wal_replay_pause()")?;
        let started = Instant::now();
        loop {
            let state = self.replay_pause_state()?;
            if state == "paused" {
                return Ok(());
            }
            if started.elapsed() > PAUSE_TIMEOUT {
                return Err(TestkitError::Timeout {
                    what: format!("the replica on port {} to pause replay", self.port()),
                    waited: PAUSE_TIMEOUT,
                    detail: format!("pg_get_wal_replay_pause_state() is still `{state}`"),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Applies WAL again (`pg_wal_replay_resume()`), from where it paused.
    pub fn resume_replay(&self) -> Result<(), TestkitError> {
        self.psql("SELECT pg_wal_replay_resume()").map(drop)
    }

    /// How far the replica has applied WAL (`pg_last_wal_replay_lsn()`), as
    /// a byte position: `X/Y` is `X << 32 | Y`.
    pub fn replay_lsn(&self) -> Result<u64, TestkitError> {
        let sql = "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn";
        parse_lsn_number(&self.psql(sql)?, sql)
    }

    /// How far the primary has written WAL (`pg_current_wal_lsn()`), as a
    /// byte position: the position to [`wait_for_replay`](Self::wait_for_replay)
    /// for after a write on the primary.
    pub fn primary_lsn(&self) -> Result<u64, TestkitError> {
        let sql = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn";
        parse_lsn_number(&psql::run_script(&self.psql, &self.primary, sql)?, sql)
    }

    /// Waits until the replica has applied WAL up to `lsn` (a byte position,
    /// as [`replay_lsn`](Self::replay_lsn) gives) and returns how far it got;
    /// fails with [`TestkitError::Timeout`] once `timeout` has passed, e.g.
    /// while replay is paused.
    pub fn wait_for_replay(&self, lsn: u64, timeout: Duration) -> Result<u64, TestkitError> {
        let started = Instant::now();
        loop {
            let replayed = self.replay_lsn()?;
            if replayed >= lsn {
                return Ok(replayed);
            }
            if started.elapsed() > timeout {
                let state = self
                    .replay_pause_state()
                    .unwrap_or_else(|e| format!("unknown ({e})"));
                return Err(TestkitError::Timeout {
                    what: format!(
                        "the replica on port {} to replay WAL up to {}",
                        self.port(),
                        lsn_text(lsn)
                    ),
                    waited: timeout,
                    detail: format!(
                        "replayed up to {}; replay pause state: {state}",
                        lsn_text(replayed)
                    ),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until the replica has applied everything the primary had
    /// written when this was called ([`primary_lsn`](Self::primary_lsn)).
    pub fn catch_up(&self, timeout: Duration) -> Result<u64, TestkitError> {
        let written = self.primary_lsn()?;
        self.wait_for_replay(written, timeout)
    }

    /// `not paused`, `pause requested` or `paused`.
    fn replay_pause_state(&self) -> Result<String, TestkitError> {
        Ok(self
            .psql("SELECT pg_get_wal_replay_pause_state()")?
            .trim()
            .to_string())
    }

    /// Fills the data directory with `pg_basebackup`: a fast checkpoint, WAL
    /// streamed alongside through the replica's slot, and `standby.signal`
    /// plus `primary_conninfo` and `primary_slot_name` written (`-R`).
    ///
    /// The slot is created first, reserving WAL from the primary's last
    /// checkpoint on. `pg_basebackup -C` would create it only after the
    /// backup's own checkpoint, and a checkpoint in between (another
    /// replica's, a `DROP DATABASE`'s) could remove WAL the backup needs.
    fn base_backup(&self) -> Result<(), TestkitError> {
        psql::run_script(
            &self.psql,
            &self.primary,
            &format!(
                "SELECT 1 FROM pg_create_physical_replication_slot('{}', true)",
                self.slot
            ),
        )?;
        let mut cmd = self.cluster.pg_command("pg_basebackup");
        cmd.arg("-D")
            .arg(self.cluster.data_dir())
            .args(["-h", &self.primary.host])
            .args(["-p", &self.primary.port.to_string()])
            .args(["-U", &self.primary.user])
            .args(["-w", "-X", "stream", "-R", "-S", &self.slot])
            .args(["--checkpoint=fast", "--no-sync", "--no-manifest"]);
        match &self.primary.password {
            Some(pw) => cmd.env("PGPASSWORD", pw),
            None => cmd.env_remove("PGPASSWORD"),
        };
        run_output(&mut cmd).map(drop)
    }

    /// `hot_standby = on`, and the primary's values of the settings a hot
    /// standby may not have lower than its primary (the kit's defaults would
    /// otherwise replace those copied from the primary).
    fn standby_settings(&self) -> Result<Vec<(String, String)>, TestkitError> {
        let names = STANDBY_MINIMUMS.map(|name| format!("'{name}'")).join(", ");
        let sql = format!("SELECT name, setting FROM pg_settings WHERE name IN ({names})");
        let out = psql::run_script(&self.psql, &self.primary, &sql)?;
        let mut settings: Vec<(String, String)> = out
            .lines()
            .filter_map(|line| line.split_once('|'))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        settings.push(("hot_standby".to_string(), "on".to_string()));
        Ok(settings)
    }

    /// Drops the slot on the primary, first ending the walsender that may
    /// still hold it; retries while it lets go.
    fn drop_slot(&self) -> Result<(), TestkitError> {
        // The name is ours (`cm_replica_` + hex), so it needs no quoting.
        let slot = &self.slot;
        let script = format!(
            "SELECT count(pg_terminate_backend(active_pid, 5000)) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND active_pid IS NOT NULL;\n\
             SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}';\n"
        );
        psql::run_cleanup(&self.psql, &self.primary, &script)
    }
}

impl Drop for PgReplica {
    fn drop(&mut self) {
        // Stopped first, so that its walsender lets go of the slot.
        self.cluster.kill_quietly();
        if let Err(e) = self.drop_slot() {
            eprintln!(
                "cm-testkit: could not drop replication slot {} on the primary: {e}",
                self.slot
            );
        }
    }
}

/// An LSN that SQL gave as a number of bytes (`pg_lsn - '0/0'`).
fn parse_lsn_number(out: &str, sql: &str) -> Result<u64, TestkitError> {
    out.trim().parse().map_err(|_| TestkitError::Unexpected {
        what: format!("`{sql}`"),
        got: out.trim().to_string(),
    })
}

/// `X/Y`, as PostgreSQL prints an LSN.
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_from_numbers_and_print_as_postgres_does() {
        assert_eq!(parse_lsn_number("22700768\n", "q").unwrap(), 0x15A_62E0);
        assert_eq!(lsn_text(0x1_0000_00A0), "1/A0");
        assert_eq!(lsn_text(0x15A_62E0), "0/15A62E0");
        assert!(parse_lsn_number("\n", "q").is_err());
        assert!(parse_lsn_number("-1", "q").is_err());
    }
}
