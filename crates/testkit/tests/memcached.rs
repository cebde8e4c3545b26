//! memcached side of the test kit, against real servers.

mod common;

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use cm_testkit::{memcached_stats, MemcachedServer, TestMemcached};
use common::pid_alive;

type TestResult = Result<(), Box<dyn Error>>;

/// Sends `request` and reads reply lines until one equals `last`.
fn exchange(addr: &str, request: &str, last: &str) -> Result<Vec<String>, Box<dyn Error>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(format!("connection closed after {lines:?}").into());
        }
        let line = line.trim_end().to_string();
        let done = line == last || line.starts_with(last);
        lines.push(line);
        if done {
            return Ok(lines);
        }
    }
}

#[test]
fn memcached_answers_version_and_stores_prefixed_keys() -> TestResult {
    let mc = TestMemcached::start()?;
    let version = exchange(mc.addr(), "version\r\n", "VERSION")?;
    assert!(version[0].starts_with("VERSION "), "{version:?}");

    let prefix = mc.key_prefix();
    assert!(prefix.starts_with('t') && prefix.len() == 13, "{prefix}");
    let key = format!("{prefix}:k");
    exchange(
        mc.addr(),
        &format!("set {key} 0 0 5\r\nhello\r\n"),
        "STORED",
    )?;
    let got = exchange(mc.addr(), &format!("get {key}\r\n"), "END")?;
    assert_eq!(
        got,
        vec![format!("VALUE {key} 0 5"), "hello".into(), "END".into()]
    );

    let other = TestMemcached::start()?;
    assert_ne!(other.key_prefix(), mc.key_prefix());
    Ok(())
}

#[test]
fn owned_memcached_is_killed_on_drop() -> TestResult {
    let mc = TestMemcached::start_owned()?;
    let server = mc.server().ok_or("start_owned should own its server")?;
    assert_eq!(mc.addr(), server.addr());
    assert_eq!(mc.addr(), format!("127.0.0.1:{}", server.port()));
    let pid = server.pid();
    assert!(pid_alive(pid));
    let addr = mc.addr().to_string();
    drop(mc);
    assert!(!pid_alive(pid), "memcached {pid} is still running");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "{addr} still accepts connections"
    );

    let standalone = MemcachedServer::start()?;
    exchange(&standalone.addr(), "version\r\n", "VERSION")?;
    Ok(())
}

/// The eviction setting memcached reports in `stats settings`.
fn evictions_setting(addr: &str) -> Result<String, Box<dyn Error>> {
    let lines = exchange(addr, "stats settings\r\n", "END")?;
    lines
        .iter()
        .find_map(|line| line.strip_prefix("STAT evictions "))
        .map(str::to_string)
        .ok_or_else(|| format!("no evictions setting in {lines:?}").into())
}

#[test]
fn kit_memcached_never_evicts_and_the_evicting_one_does() -> TestResult {
    let metadata = MemcachedServer::start()?;
    assert_eq!(evictions_setting(&metadata.addr())?, "off");
    let results = MemcachedServer::start_evicting(4)?;
    assert_eq!(evictions_setting(&results.addr())?, "on");
    let stats = memcached_stats(&results.addr())?;
    assert_eq!(
        stats.get("limit_maxbytes").map(String::as_str),
        Some("4194304")
    );
    assert_eq!(
        results.stats()?.get("evictions").map(String::as_str),
        Some("0")
    );
    Ok(())
}
