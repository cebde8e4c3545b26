//! [`TestPostgres`]: a fresh database per test, on a shared or an owned server.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::{PgCluster, PgClusterBuilder};
use crate::url::{self, ConnParams};
use crate::util::{find_pg_bin_dir, random_hex};
use crate::{psql, TestkitError};

/// Environment variable with the admin URL of a shared PostgreSQL server.
pub const ENV_PG_URL: &str = "CM_TEST_PG_URL";

/// A fresh, uniquely named database (`cmt_<16 hex digits>`) for one test.
///
/// The server is the one named by `$CM_TEST_PG_URL` when that is set (see
/// the [crate docs](crate)), else a [`PgCluster`] of its own, which it stops
/// when dropped. On a shared server, dropping it terminates the database's
/// connections, drops the replication slots that belong to it and drops the
/// database, all best-effort.
#[derive(Debug)]
pub struct TestPostgres {
    admin: ConnParams,
    params: ConnParams,
    psql: PathBuf,
    // Dropped after `Drop::drop` ran, so the server outlives the cleanup.
    cluster: Option<PgCluster>,
}

impl TestPostgres {
    /// A new database on the shared server (`$CM_TEST_PG_URL`), or on a
    /// cluster of its own when that variable is not set.
    pub fn start() -> Result<TestPostgres, TestkitError> {
        match std::env::var(ENV_PG_URL) {
            Ok(value) if !value.trim().is_empty() => {
                let admin = url::parse(value.trim()).map_err(|e| TestkitError::BadEnv {
                    var: ENV_PG_URL,
                    value: url::mask_password(&value),
                    reason: e.to_string(),
                })?;
                Self::create(admin, None)
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => Self::start_owned(),
            Err(std::env::VarError::NotUnicode(value)) => Err(TestkitError::BadEnv {
                var: ENV_PG_URL,
                value: value.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".to_string(),
            }),
        }
    }

    /// A new database on a cluster of its own with the default settings,
    /// whatever the environment says.
    pub fn start_owned() -> Result<TestPostgres, TestkitError> {
        Self::start_with(PgCluster::builder())
    }

    /// A new database on a cluster of its own started from `builder`, for
    /// tests that need particular server settings.
    pub fn start_with(builder: PgClusterBuilder) -> Result<TestPostgres, TestkitError> {
        Self::on_cluster(builder.start()?)
    }

    /// A new database on `cluster`, which it takes over and stops when dropped.
    pub fn on_cluster(cluster: PgCluster) -> Result<TestPostgres, TestkitError> {
        let admin = cluster.admin_params();
        Self::create(admin, Some(cluster))
    }

    /// A new database on the server at `admin_url`
    /// (`postgres://user[:password]@host:port/dbname`, a role that may create
    /// databases), which is left running.
    pub fn on_server(admin_url: &str) -> Result<TestPostgres, TestkitError> {
        Self::create(url::parse(admin_url)?, None)
    }

    fn create(admin: ConnParams, cluster: Option<PgCluster>) -> Result<TestPostgres, TestkitError> {
        let bin_dir = match &cluster {
            Some(c) => Some(c.bin_dir().to_path_buf()),
            None => find_pg_bin_dir("psql").ok(),
        };
        let psql = psql::psql_binary(bin_dir.as_deref())?;
        let dbname = format!("cmt_{}", random_hex(16));
        psql::run_script(&psql, &admin, &format!("CREATE DATABASE \"{dbname}\";"))?;
        Ok(TestPostgres {
            params: admin.with_dbname(&dbname),
            admin,
            psql,
            cluster,
        })
    }

    /// `postgres://USER[:PASSWORD]@HOST:PORT/DBNAME` for this test's database.
    pub fn url(&self) -> String {
        self.params.to_url()
    }

    /// The server's host name or address.
    pub fn host(&self) -> &str {
        &self.params.host
    }

    /// The server's TCP port.
    pub fn port(&self) -> u16 {
        self.params.port
    }

    /// The role tests connect as (a superuser for owned clusters).
    pub fn user(&self) -> &str {
        &self.params.user
    }

    /// The password for [`user`](Self::user), when the server needs one.
    pub fn password(&self) -> Option<&str> {
        self.params.password.as_deref()
    }

    /// The name of this test's database.
    pub fn dbname(&self) -> &str {
        &self.params.dbname
    }

    /// `<prefix>_<the database's 16 hex digits>`: a name for server-wide
    /// objects (replication slots, roles) that no other test on a shared
    /// server uses. Replication slots whose database is this one are dropped
    /// with it; roles are not.
    pub fn unique_name(&self, prefix: &str) -> String {
        let suffix = self
            .params
            .dbname
            .strip_prefix("cmt_")
            .unwrap_or(&self.params.dbname);
        format!("{prefix}_{suffix}")
    }

    /// The URL of the server's admin database (usually `postgres`).
    pub fn admin_url(&self) -> String {
        self.admin.to_url()
    }

    /// `host=.. port=.. user=.. dbname=..` (and `password=..` when there is one),
    /// values quoted as libpq requires.
    pub fn key_value_conninfo(&self) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.params.host),
            self.params.port,
            conninfo_value(&self.params.user),
            conninfo_value(&self.params.dbname)
        );
        if let Some(pw) = &self.params.password {
            s.push_str(&format!(" password={}", conninfo_value(pw)));
        }
        s
    }

    /// Runs `sql` (one or many statements) in this database with
    /// `psql -X -w -q -v ON_ERROR_STOP=1 -At`, fed on stdin, and returns what
    /// psql printed: one line per row, columns separated by `|`. Fails at the
    /// first failing statement, with psql's stderr and the script.
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        psql::run_script(&self.psql, &self.params, sql)
    }

    /// A `psql -X -w -h HOST -p PORT -U USER -d DBNAME` command for this
    /// database (with `PGPASSWORD` set when needed), to which a test adds its
    /// own arguments and I/O.
    pub fn psql_command(&self) -> Command {
        psql::command(&self.psql, &self.params)
    }

    /// The cluster, when this test owns one (`None` on a shared server).
    pub fn cluster(&self) -> Option<&PgCluster> {
        self.cluster.as_ref()
    }

    /// The CA file to pass as `sslrootcert`, when this test owns a cluster
    /// started with [`PgClusterBuilder::tls`].
    pub fn tls_ca_file(&self) -> Option<&std::path::Path> {
        self.cluster.as_ref().and_then(PgCluster::tls_ca_file)
    }

    /// The cluster, mutably (to stop and restart it), when this test owns one.
    pub fn cluster_mut(&mut self) -> Option<&mut PgCluster> {
        self.cluster.as_mut()
    }

    /// Where and as whom to reach this test's database.
    pub(crate) fn params(&self) -> &ConnParams {
        &self.params
    }

    /// Where and as whom to reach the server's admin database.
    pub(crate) fn admin_params(&self) -> &ConnParams {
        &self.admin
    }

    /// Removes the database from a shared server; retries while walsenders exit.
    fn cleanup(&self) -> Result<(), TestkitError> {
        let db = &self.params.dbname;
        // The name is ours (`cmt_` + hex), so it needs no quoting beyond this.
        let script = format!(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND pid <> pg_backend_pid();\n\
             SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                 WHERE database = '{db}';\n\
             DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE);\n"
        );
        psql::run_cleanup(&self.psql, &self.admin, &script)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // An owned cluster is thrown away whole right after this.
        if self.cluster.is_none() {
            if let Err(e) = self.cleanup() {
                eprintln!(
                    "cm-testkit: could not drop test database {}: {e}",
                    self.dbname()
                );
            }
        }
    }
}

/// A libpq keyword/value value: bare when safe, else single-quoted.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && c != '\'' && c != '\\')
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::conninfo_value;

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(conninfo_value("cmt_ab"), "cmt_ab");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's"), r"'it\'s'");
        assert_eq!(conninfo_value(""), "''");
    }
}
