//! [`PgCluster`]: a throwaway PostgreSQL cluster in a temporary directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::psql;
use crate::tls;
use crate::url::ConnParams;
use crate::util::{
    display_command, file_tail, find_pg_bin_dir, find_program, free_port, is_executable, is_root,
    spawn_output, stderr_text, user_ids,
};
use crate::TestkitError;

/// The operating-system user that owns the cluster when the tests run as root.
const PG_OS_USER: &str = "postgres";
/// The database superuser `initdb` creates.
const PG_SUPERUSER: &str = "postgres";
/// The file, next to `postgresql.conf`, that holds the kit's settings.
const SETTINGS_FILE: &str = "cm_testkit.conf";
/// How many ports to try before giving up on `pg_ctl start`.
const START_ATTEMPTS: usize = 3;
/// How long to wait for the server to answer `select 1` after `pg_ctl` said it started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// How to shut a cluster down; maps to `pg_ctl stop -m <mode>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for all clients to disconnect.
    Smart,
    /// Disconnect clients, then shut down cleanly (checkpoint).
    Fast,
    /// Quit at once, like a crash: recovery runs at the next start.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Settings for a [`PgCluster`] that is about to start. Made by [`PgCluster::builder`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    hba_lines: Vec<String>,
    bin_dir: Option<PathBuf>,
    tls: bool,
}

impl PgClusterBuilder {
    /// Adds `name = 'value'` to the server configuration, after (and so
    /// overriding) the kit's own settings, e.g. `.setting("wal_sender_timeout", "2s")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Puts `line` at the top of `pg_hba.conf`, before the `trust` lines that
    /// `initdb` writes, e.g. `"host all scram_user 127.0.0.1/32 scram-sha-256"`.
    /// Lines keep the order in which they were added.
    pub fn hba_line(mut self, line: impl Into<String>) -> Self {
        self.hba_lines.push(line.into());
        self
    }

    /// Uses the PostgreSQL programs in `dir` instead of looking for them
    /// (`$CM_PG_BIN`, else the highest `/usr/lib/postgresql/*/bin`).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Starts the server with `ssl = on` and a certificate for `127.0.0.1`
    /// only (not `localhost`: see [`TLS_SERVER_NAME`]), signed by a throwaway
    /// CA whose PEM file [`PgCluster::tls_ca_file`] names. The key file is
    /// mode 0600 and owned by the server's user, as PostgreSQL demands.
    ///
    /// [`TLS_SERVER_NAME`]: crate::TLS_SERVER_NAME
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Runs `initdb`, writes the configuration and starts the server, trying
    /// up to three free ports; returns once the server answers `select 1`.
    pub fn start(self) -> Result<PgCluster, TestkitError> {
        let mut cluster = PgCluster::unstarted(self.bin_dir, "initdb")?;
        cluster.initdb()?;
        cluster.prepend_hba_lines(&self.hba_lines)?;
        cluster.include_settings_file()?;
        let mut settings = self.settings;
        if self.tls {
            cluster.tls_ca = Some(cluster.install_certificates()?);
            // Before the caller's settings, which may override it.
            settings.insert(0, ("ssl".to_string(), "on".to_string()));
        }
        cluster.start_on_free_port(&settings)?;
        Ok(cluster)
    }
}

/// Runs the server's programs as another operating-system user, through `runuser`.
#[derive(Debug)]
struct RunAs {
    runuser: PathBuf,
    user: String,
}

impl RunAs {
    /// `postgres` through `runuser` when this process is root (PostgreSQL
    /// refuses to run as root), else nothing.
    fn when_root() -> Result<Option<RunAs>, TestkitError> {
        if !is_root() {
            return Ok(None);
        }
        let runuser = find_program("runuser", &["/usr/sbin", "/sbin"]).ok_or_else(|| {
            TestkitError::NotFound {
                what: "runuser".to_string(),
                detail: "needed to run PostgreSQL as `postgres` when testing as root \
                         (package util-linux)"
                    .to_string(),
            }
        })?;
        Ok(Some(RunAs {
            runuser,
            user: PG_OS_USER.to_string(),
        }))
    }
}

/// A throwaway PostgreSQL cluster (`wal_level = logical`) listening on
/// 127.0.0.1 at a free port, with its data, socket and log in a temporary
/// directory.
///
/// Dropping it stops the server (`pg_ctl stop -m immediate`) and removes the
/// directory; that also happens when a test panics, as long as panics unwind.
/// When the tests run as root, the server runs as the `postgres` user
/// (through `runuser`), since PostgreSQL refuses to run as root.
///
/// `pg_hba.conf` trusts every local connection, replication ones included
/// (`initdb`'s default), and `max_wal_senders` is 50: enough for a few
/// [`PgReplica`](crate::PgReplica)s beside the tests' logical walsenders.
#[derive(Debug)]
pub struct PgCluster {
    // `dir` is removed when the cluster is dropped, after `Drop::drop` stopped the server.
    dir: TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    tls_ca: Option<PathBuf>,
}

impl PgCluster {
    /// Starts configuring a cluster; finish with [`PgClusterBuilder::start`].
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// Starts a cluster with the default settings.
    pub fn start() -> Result<PgCluster, TestkitError> {
        PgClusterBuilder::default().start()
    }

    /// A cluster with its temporary directory (owned by the server's user)
    /// but no data directory yet and no server running: the start of
    /// [`PgClusterBuilder::start`] and of a [`PgReplica`](crate::PgReplica).
    /// `maker` is the program that will fill the data directory (`initdb`,
    /// `pg_basebackup`); it and `pg_ctl` must be in the bin directory.
    pub(crate) fn unstarted(
        bin_dir: Option<PathBuf>,
        maker: &str,
    ) -> Result<PgCluster, TestkitError> {
        let bin_dir = match bin_dir {
            Some(dir) => dir,
            None => find_pg_bin_dir(maker)?,
        };
        for program in [maker, "pg_ctl"] {
            if !is_executable(&bin_dir.join(program)) {
                return Err(TestkitError::NotFound {
                    what: format!("PostgreSQL `{program}`"),
                    detail: format!("not in {}", bin_dir.display()),
                });
            }
        }
        let run_as = RunAs::when_root()?;
        let dir = tempfile::Builder::new()
            .prefix("cm-pg-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temporary directory for PostgreSQL", e))?;
        if let Some(run_as) = &run_as {
            let (uid, gid) = user_ids(&run_as.user)?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                TestkitError::io(
                    format!("chown {} to user {}", dir.path().display(), run_as.user),
                    e,
                )
            })?;
        }
        Ok(PgCluster {
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("server.log"),
            socket_dir: dir.path().to_path_buf(),
            dir,
            bin_dir,
            port: 0,
            run_as,
            tls_ca: None,
        })
    }

    /// Fills the data directory with `initdb` (superuser `postgres`, every
    /// local connection trusted, replication ones included).
    fn initdb(&self) -> Result<(), TestkitError> {
        let mut initdb = self.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg("--no-sync");
        self.run_pg(initdb)
    }

    /// Writes the kit's settings plus `settings` and starts the server,
    /// trying up to three free ports; returns once it answers `select 1`.
    pub(crate) fn start_on_free_port(
        &mut self,
        settings: &[(String, String)],
    ) -> Result<(), TestkitError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            self.write_settings(settings)?;
            match self.pg_ctl_start() {
                Ok(()) => break,
                Err(_) if attempt < START_ATTEMPTS => {
                    // Most likely another process took the port; make sure nothing
                    // half-started lingers, then try another one.
                    self.kill_quietly();
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_ready()
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The directory that holds the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The PEM file of the CA that signed the server's certificate, when the
    /// cluster was started with [`PgClusterBuilder::tls`]; pass it as
    /// `sslrootcert`.
    pub fn tls_ca_file(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// The PostgreSQL bin directory in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn admin_url(&self) -> String {
        self.admin_params().to_url()
    }

    /// The process id of the running postmaster, from `postmaster.pid`;
    /// `None` when the server is not running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server with `pg_ctl stop -m <mode>` and waits until it is down.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), TestkitError> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-m",
            mode.as_arg(),
            "-w",
            "-t",
            "60",
            "-s",
            "stop",
        ]);
        self.run_pg(cmd)
    }

    /// Starts the stopped server again, on the same port with the same data,
    /// and waits until it answers.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    /// The whole server log so far.
    pub fn log_contents(&self) -> Result<String, TestkitError> {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| TestkitError::io(format!("reading {}", self.log_path.display()), e))
    }

    /// Runs a psql script as the superuser in database `postgres`; see
    /// [`TestPostgres::psql`](crate::TestPostgres::psql).
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        let psql = psql::psql_binary(Some(&self.bin_dir))?;
        psql::run_script(&psql, &self.admin_params(), sql)
    }

    pub(crate) fn admin_params(&self) -> ConnParams {
        ConnParams {
            host: self.host().to_string(),
            port: self.port,
            user: PG_SUPERUSER.to_string(),
            password: None,
            dbname: "postgres".to_string(),
        }
    }

    /// A command running `program` from the bin dir, as `postgres` when we are root.
    pub(crate) fn pg_command(&self, program: &str) -> Command {
        let exe = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(run_as) => {
                let mut cmd = Command::new(&run_as.runuser);
                cmd.arg("-u").arg(&run_as.user).arg("--").arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        // The postgres user may not be allowed into our working directory.
        cmd.current_dir(self.dir.path());
        cmd.env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }

    /// Runs a PostgreSQL program; on failure the error carries the log tail.
    pub(crate) fn run_pg(&self, mut cmd: Command) -> Result<(), TestkitError> {
        let out = spawn_output(&mut cmd)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestkitError::Command {
                command: display_command(&cmd),
                status: out.status.to_string(),
                stderr: stderr_text(&out),
                log_tail: Some(file_tail(&self.log_path, LOG_TAIL_LINES)),
            })
        }
    }

    fn pg_ctl_start(&self) -> Result<(), TestkitError> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", "60", "-s", "start"]);
        self.run_pg(cmd)
    }

    /// Waits until `psql -c 'select 1'` answers.
    fn wait_ready(&self) -> Result<(), TestkitError> {
        let psql = psql::psql_binary(Some(&self.bin_dir))?;
        let params = self.admin_params();
        let started = Instant::now();
        loop {
            let mut cmd = psql::command(&psql, &params);
            cmd.args(["-At", "-c", "select 1"]);
            let last_error = match spawn_output(&mut cmd) {
                Ok(out)
                    if out.status.success()
                        && String::from_utf8_lossy(&out.stdout).trim() == "1" =>
                {
                    return Ok(())
                }
                Ok(out) => stderr_text(&out),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > READY_TIMEOUT {
                return Err(TestkitError::Timeout {
                    what: format!("PostgreSQL on port {} to answer `select 1`", self.port),
                    waited: READY_TIMEOUT,
                    detail: format!(
                        "last psql error: {last_error}\n--- server log (tail) ---\n{}",
                        file_tail(&self.log_path, LOG_TAIL_LINES)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Appends `include 'cm_testkit.conf'` to `postgresql.conf`, unless it
    /// is there already (in a data directory copied from a kit cluster).
    pub(crate) fn include_settings_file(&self) -> Result<(), TestkitError> {
        let path = self.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)
            .map_err(|e| TestkitError::io(format!("reading {}", path.display()), e))?;
        let include = format!("include '{SETTINGS_FILE}'");
        if text.lines().any(|line| line.trim() == include) {
            return Ok(());
        }
        text.push_str(&format!("\n# Added by cm-testkit.\n{include}\n"));
        self.write_config_file(&path, &text)
    }

    /// Writes the kit's settings (with the current port) and the caller's.
    fn write_settings(&self, extra: &[(String, String)]) -> Result<(), TestkitError> {
        let mut text = String::from("# Written by cm-testkit; rewritten on every start attempt.\n");
        let socket_dir = self.socket_dir.to_string_lossy();
        // synchronous_commit stays on: a walsender sends only flushed WAL, so
        // asynchronous commits would reach logical decoding up to
        // wal_writer_delay late and make tests (and lag numbers) wait on it.
        // fsync = off already makes the flush cheap.
        let ours: [(&str, &str); 9] = [
            ("listen_addresses", "127.0.0.1"),
            ("port", &self.port.to_string()),
            ("unix_socket_directories", &socket_dir),
            ("wal_level", "logical"),
            ("max_replication_slots", "50"),
            ("max_wal_senders", "50"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "32MB"),
        ];
        let extra = extra.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in ours.into_iter().chain(extra) {
            let _ = writeln!(text, "{name} = '{}'", value.replace('\'', "''"));
        }
        self.write_config_file(&self.data_dir.join(SETTINGS_FILE), &text)
    }

    fn prepend_hba_lines(&self, lines: &[String]) -> Result<(), TestkitError> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.data_dir.join("pg_hba.conf");
        let old = std::fs::read_to_string(&path)
            .map_err(|e| TestkitError::io(format!("reading {}", path.display()), e))?;
        let mut text = String::from("# Added by cm-testkit.\n");
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&old);
        self.write_config_file(&path, &text)
    }

    /// Writes `server.crt` and `server.key` (mode 0600) into the data
    /// directory, where `ssl = on` looks for them, and the CA's certificate
    /// next to it; returns the CA file's path.
    fn install_certificates(&self) -> Result<PathBuf, TestkitError> {
        use std::os::unix::fs::PermissionsExt;
        let certificates = tls::generate()?;
        let key = self.data_dir.join("server.key");
        self.write_config_file(&self.data_dir.join("server.crt"), &certificates.server_pem)?;
        self.write_config_file(&key, &certificates.server_key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| TestkitError::io(format!("chmod 600 {}", key.display()), e))?;
        let ca = self.dir.path().join("ca.crt");
        std::fs::write(&ca, &certificates.ca_pem)
            .map_err(|e| TestkitError::io(format!("writing {}", ca.display()), e))?;
        Ok(ca)
    }

    /// Writes a file in the data directory, owned by the server's user.
    fn write_config_file(&self, path: &Path, text: &str) -> Result<(), TestkitError> {
        std::fs::write(path, text)
            .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))?;
        if let Some(run_as) = &self.run_as {
            let (uid, gid) = user_ids(&run_as.user)?;
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| TestkitError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Best-effort immediate shutdown, for `Drop` and failed starts.
    pub(crate) fn kill_quietly(&self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "-s", "stop"]);
        let stopped = spawn_output(&mut cmd).is_ok_and(|out| out.status.success());
        if !stopped && self.postmaster_pid() == Some(pid) {
            // pg_ctl could not do it; SIGQUIT is what `-m immediate` sends.
            let _ = spawn_output(Command::new("kill").arg("-QUIT").arg(pid.to_string()));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}
