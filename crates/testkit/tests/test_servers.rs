//! The `cm-test-servers` binary: start, publish, stop on a signal.

mod common;

use std::error::Error;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cm_testkit::TestPostgres;
use common::{pid_alive, wait_until};

type TestResult = Result<(), Box<dyn Error>>;

fn value_of<'a>(env: &'a str, var: &str) -> Option<&'a str> {
    let prefix = format!("export {var}='");
    env.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.strip_suffix('\''))
}

/// Kills the child if the test fails before it stopped it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn test_servers_publish_env_file_and_stop_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let env_file = dir.path().join("env");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_cm-test-servers"))
            .arg("--env-file")
            .arg(&env_file)
            .env("CM_TEST_MEMCACHED_MB", "96")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?,
    );
    if !wait_until(Duration::from_secs(120), || env_file.exists()) {
        return Err("cm-test-servers wrote no env file".into());
    }
    let env = std::fs::read_to_string(&env_file)?;
    let pg_url = value_of(&env, "CM_TEST_PG_URL").ok_or(format!("no CM_TEST_PG_URL in {env}"))?;
    let mc_addr =
        value_of(&env, "CM_TEST_MEMCACHED").ok_or(format!("no CM_TEST_MEMCACHED in {env}"))?;
    assert!(
        pg_url.starts_with("postgres://postgres@127.0.0.1:"),
        "{pg_url}"
    );
    assert!(mc_addr.starts_with("127.0.0.1:"), "{mc_addr}");

    let (postmaster_pid, mc_reachable) = {
        let pg = TestPostgres::on_server(pg_url)?;
        assert_eq!(pg.psql("SHOW wal_level")?.trim(), "logical");
        let pid: u32 = pg
            .psql("SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1)")?
            .trim()
            .parse()?;
        (pid, std::net::TcpStream::connect(mc_addr).is_ok())
    };
    assert!(mc_reachable);
    assert_eq!(
        memcached_limit_bytes(mc_addr)?,
        96 * 1024 * 1024,
        "CM_TEST_MEMCACHED_MB sets memcached's memory"
    );
    assert!(pid_alive(postmaster_pid));

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = child.0.wait()?;
    assert!(exit.success(), "cm-test-servers exited with {exit}");
    assert!(
        !pid_alive(postmaster_pid),
        "postmaster {postmaster_pid} still runs"
    );
    assert!(
        std::net::TcpStream::connect(mc_addr).is_err(),
        "memcached still runs"
    );
    assert!(
        !Path::new(&env_file).exists(),
        "the env file was left behind"
    );
    Ok(())
}

/// memcached's `limit_maxbytes` stat.
fn memcached_limit_bytes(addr: &str) -> Result<u64, Box<dyn Error>> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"stats\r\n")?;
    let mut text = String::new();
    let mut buf = [0_u8; 4096];
    while !text.ends_with("END\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("STAT limit_maxbytes "))
        .ok_or(format!("no limit_maxbytes in {text}"))?;
    Ok(value.trim().parse()?)
}

#[test]
fn a_bad_memcached_memory_setting_is_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_cm-test-servers"))
        .arg("--env-file")
        .arg(dir.path().join("env"))
        .env("CM_TEST_MEMCACHED_MB", "lots")
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CM_TEST_MEMCACHED_MB") && stderr.contains("lots"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn test_servers_rejects_bad_arguments() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_cm-test-servers"))
        .arg("--nonsense")
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: cm-test-servers"));
    Ok(())
}
