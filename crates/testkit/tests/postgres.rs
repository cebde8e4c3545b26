//! PostgreSQL side of the test kit, against real servers.

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use cm_testkit::{PgCluster, StopMode, TestPostgres, TestkitError, ENV_PG_URL};
use common::{pid_alive, wait_until};

type TestResult = Result<(), Box<dyn Error>>;

/// The shared server's admin URL, or a cluster started for this test.
fn shared_server() -> Result<(String, Option<PgCluster>), TestkitError> {
    match std::env::var(ENV_PG_URL) {
        Ok(url) if !url.trim().is_empty() => Ok((url, None)),
        _ => {
            let cluster = PgCluster::start()?;
            Ok((cluster.admin_url(), Some(cluster)))
        }
    }
}

#[test]
fn test_database_has_logical_wal_level() -> TestResult {
    let pg = TestPostgres::start()?;
    assert_eq!(pg.psql("SHOW wal_level")?.trim(), "logical");
    assert_eq!(pg.psql("SELECT current_database()")?.trim(), pg.dbname());
    assert!(pg.dbname().starts_with("cmt_") && pg.dbname().len() == 20);
    assert_eq!(
        pg.url(),
        format!(
            "postgres://{}@{}:{}/{}",
            pg.user(),
            pg.host(),
            pg.port(),
            pg.dbname()
        )
    );
    assert_eq!(
        pg.key_value_conninfo(),
        format!(
            "host={} port={} user={} dbname={}",
            pg.host(),
            pg.port(),
            pg.user(),
            pg.dbname()
        )
    );
    assert_eq!(
        pg.cluster().is_some(),
        std::env::var_os(ENV_PG_URL).is_none()
    );

    // Multi-statement scripts, one line per row, `|` between columns.
    let out = pg.psql("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT * FROM t ORDER BY id;")?;
    assert_eq!(out, "1|a\n2|b\n");

    // psql as a separate process with a test's own arguments.
    let out = pg
        .psql_command()
        .args(["-At", "-c", "SELECT count(*) FROM t"])
        .output()?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    Ok(())
}

#[test]
fn psql_errors_carry_stderr_and_sql() -> TestResult {
    let pg = TestPostgres::start()?;
    let err = match pg.psql("SELECT 1;\nSELECT * FROM no_such_table;\nSELECT 2;") {
        Ok(out) => return Err(format!("expected an error, got {out:?}").into()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no_such_table\" does not exist"), "{err}");
    assert!(err.contains("--- sql ---\nSELECT 1;"), "{err}");
    assert!(err.contains(pg.dbname()), "{err}");
    Ok(())
}

#[test]
fn tests_on_one_server_get_their_own_databases_and_clean_up() -> TestResult {
    let (admin_url, _cluster) = shared_server()?;
    let a = TestPostgres::on_server(&admin_url)?;
    let b = TestPostgres::on_server(&admin_url)?;
    assert_ne!(a.dbname(), b.dbname());
    assert_eq!((a.host(), a.port()), (b.host(), b.port()));
    assert!(a.cluster().is_none());

    a.psql("CREATE TABLE only_in_a (x int)")?;
    assert_eq!(
        b.psql("SELECT to_regclass('only_in_a') IS NULL")?.trim(),
        "t"
    );

    // Leave a logical slot and a busy connection behind; dropping must clear both.
    let slot = a.unique_name("slot");
    assert_eq!(slot, format!("slot_{}", &a.dbname()[4..]));
    assert_ne!(slot, b.unique_name("slot"));
    a.psql(&format!(
        "SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))?;
    let mut busy = a
        .psql_command()
        .args(["-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let a_name = a.dbname().to_string();
    assert!(wait_until(Duration::from_secs(10), || {
        b.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{a_name}' AND query LIKE '%pg_sleep%'"
        ))
        .is_ok_and(|n| n.trim() == "1")
    }));

    drop(a);
    let left = b.psql(&format!(
        "SELECT (SELECT count(*) FROM pg_database WHERE datname = '{a_name}') || ',' || \
                (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}')"
    ))?;
    assert_eq!(left.trim(), "0,0");
    assert!(
        !busy.wait()?.success(),
        "the busy session should have been terminated"
    );
    Ok(())
}

#[test]
fn cluster_settings_hba_lines_and_restart() -> TestResult {
    let mut cluster = PgCluster::builder()
        .setting("wal_sender_timeout", "2s")
        .setting("application_name", "it's quoted")
        .hba_line("host all cm_scram 127.0.0.1/32 scram-sha-256")
        .start()?;
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.psql("SHOW wal_sender_timeout")?.trim(), "2s");
    assert_eq!(cluster.psql("SHOW max_replication_slots")?.trim(), "50");
    assert_eq!(
        cluster.psql("SHOW unix_socket_directories")?.trim(),
        cluster.socket_dir().to_string_lossy()
    );
    assert!(cluster.bin_dir().join("pg_ctl").exists());

    // A password-protected role, reached through a URL with an encoded password.
    cluster.psql("CREATE ROLE cm_scram LOGIN CREATEDB PASSWORD 's@cret'")?;
    let port = cluster.port();
    {
        let pg = TestPostgres::on_server(&format!(
            "postgres://cm_scram:s%40cret@127.0.0.1:{port}/postgres"
        ))?;
        assert_eq!(pg.user(), "cm_scram");
        assert_eq!(pg.password(), Some("s@cret"));
        assert_eq!(pg.psql("SELECT current_user")?.trim(), "cm_scram");
        assert!(pg.key_value_conninfo().ends_with("password=s@cret"));
    }
    let wrong = TestPostgres::on_server(&format!(
        "postgres://cm_scram:wrong@127.0.0.1:{port}/postgres"
    ));
    let err = wrong
        .err()
        .ok_or("a wrong password should fail")?
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");

    // Stop and start again on the same port, keeping the data.
    cluster.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42);")?;
    let pid = cluster.postmaster_pid().ok_or("no postmaster.pid")?;
    cluster.stop(StopMode::Fast)?;
    assert_eq!(cluster.postmaster_pid(), None);
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)));
    cluster.start_again()?;
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.psql("SELECT x FROM kept")?.trim(), "42");

    cluster.stop(StopMode::Immediate)?;
    cluster.start_again()?;
    assert_eq!(cluster.psql("SELECT x FROM kept")?.trim(), "42");
    assert!(cluster.log_contents()?.contains("database system is ready"));
    Ok(())
}

#[test]
fn owned_test_database_can_restart_its_cluster() -> TestResult {
    let mut pg = TestPostgres::start_owned()?;
    pg.psql("CREATE TABLE t (x int)")?;
    let cluster = pg
        .cluster_mut()
        .ok_or("start_owned should own its cluster")?;
    cluster.stop(StopMode::Fast)?;
    cluster.start_again()?;
    assert_eq!(pg.psql("SELECT count(*) FROM t")?.trim(), "0");
    Ok(())
}

#[test]
fn a_panicking_test_still_stops_its_cluster() -> TestResult {
    let (tx, rx) = mpsc::channel::<Result<(PathBuf, u32), String>>();
    let handle = std::thread::spawn(move || {
        let cluster = match PgCluster::start() {
            Ok(cluster) => cluster,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let pid = cluster.postmaster_pid().unwrap_or(0);
        let _ = tx.send(Ok((cluster.data_dir().to_path_buf(), pid)));
        panic!("deliberate panic: the cluster must still be stopped");
    });
    assert!(handle.join().is_err(), "the thread should have panicked");
    let (data_dir, pid) = rx.recv()??;
    assert_ne!(pid, 0, "the cluster had no postmaster.pid");
    assert!(!pid_alive(pid), "postmaster {pid} is still running");
    assert!(!data_dir.exists(), "{} was not removed", data_dir.display());
    Ok(())
}

#[test]
fn a_failed_start_reports_command_stderr_and_server_log() -> TestResult {
    let err = match PgCluster::builder()
        .setting("shared_buffers", "banana")
        .start()
    {
        Ok(_) => return Err("a cluster with shared_buffers = banana should not start".into()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("pg_ctl"), "{err}");
    assert!(err.contains("--- stderr ---"), "{err}");
    assert!(err.contains("--- server log (tail) ---"), "{err}");
    assert!(err.contains("shared_buffers"), "{err}");
    Ok(())
}

#[test]
fn a_tls_cluster_serves_tls_with_a_certificate_for_127_0_0_1() -> TestResult {
    let pg = TestPostgres::start_with(PgCluster::builder().tls())?;
    let ca = pg.tls_ca_file().ok_or("a TLS cluster names its CA")?;
    assert!(std::fs::read_to_string(ca)?.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pg.psql("SHOW ssl")?.trim(), "on");
    // psql verifies the chain and the name with the kit's CA.
    let out = pg
        .psql_command()
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", ca)
        .args([
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "{out:?}");
    // The certificate names 127.0.0.1 only.
    let out = pg
        .psql_command()
        .args(["-h", "localhost"])
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", ca)
        .args(["-At", "-c", "SELECT 1"])
        .output()?;
    assert!(!out.status.success(), "localhost is not in the certificate");
    assert_eq!(PgCluster::start()?.tls_ca_file(), None);
    Ok(())
}
