//! [`MemcachedServer`] (an owned memcached process) and [`TestMemcached`]
//! (what a test uses: a server plus a key prefix of its own).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{display_command, find_program, free_port, is_root, random_hex};
use crate::TestkitError;

/// Environment variable with the `host:port` of a shared memcached.
pub const ENV_MEMCACHED: &str = "CM_TEST_MEMCACHED";

/// Environment variable with the memory (MiB, memcached `-m`) of a memcached
/// this crate starts; 64 by default. The benchmarks raise it so that
/// evictions do not stand in for invalidations.
pub const ENV_MEMCACHED_MB: &str = "CM_TEST_MEMCACHED_MB";

/// memcached's memory in MiB: `$CM_TEST_MEMCACHED_MB`, else 64.
fn memory_mb() -> Result<u32, TestkitError> {
    match std::env::var(ENV_MEMCACHED_MB) {
        Err(_) => Ok(64),
        Ok(text) => text.trim().parse().map_err(|_| TestkitError::BadEnv {
            var: ENV_MEMCACHED_MB,
            value: text.clone(),
            reason: "not a whole number of MiB".to_owned(),
        }),
    }
}

/// How long to wait for memcached to answer `version`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports to try before giving up.
const START_ATTEMPTS: usize = 3;

/// How to start a [`MemcachedServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemcachedOptions {
    /// Item memory in MiB (`-m`); `None`: [`ENV_MEMCACHED_MB`], else 64.
    pub memory_mb: Option<u32>,
    /// Whether it may evict items when full. `false` adds `-M`
    /// (`--disable-evictions`: a write that finds no memory is answered
    /// `SERVER_ERROR out of memory`), which a metadata server (flush lists,
    /// generations) must have; `true` makes a result server.
    pub evictions: bool,
    /// The port to listen on; `None`: a free one (retried on a clash).
    pub port: Option<u16>,
}

impl MemcachedOptions {
    /// A metadata server: `-M`, the default memory.
    pub fn metadata() -> MemcachedOptions {
        MemcachedOptions {
            memory_mb: None,
            evictions: false,
            port: None,
        }
    }

    /// A result server that evicts, with `memory_mb` MiB (e.g. 4, to see
    /// evictions early).
    pub fn evicting(memory_mb: u32) -> MemcachedOptions {
        MemcachedOptions {
            memory_mb: Some(memory_mb),
            evictions: true,
            port: None,
        }
    }
}

/// A memcached process of our own on 127.0.0.1 at a free port
/// (`memcached -l 127.0.0.1 -p PORT -U 0 -m 64 -t 2 -M`; `-m` from
/// [`ENV_MEMCACHED_MB`], `-M` unless [`MemcachedOptions::evictions`]).
/// Dropping it kills it.
#[derive(Debug)]
pub struct MemcachedServer {
    child: Child,
    port: u16,
}

impl MemcachedServer {
    /// Starts a memcached that never evicts (`-M`): what the cache's
    /// metadata servers must be. See [`MemcachedServer::start_with`].
    pub fn start() -> Result<MemcachedServer, TestkitError> {
        Self::start_with(MemcachedOptions::metadata())
    }

    /// Starts a memcached of `memory_mb` MiB that evicts when full: a
    /// result server.
    pub fn start_evicting(memory_mb: u32) -> Result<MemcachedServer, TestkitError> {
        Self::start_with(MemcachedOptions::evicting(memory_mb))
    }

    /// Starts memcached (from `PATH`, else `/usr/bin`) with these options
    /// and waits until it answers `version`; tries up to three ports.
    pub fn start_with(options: MemcachedOptions) -> Result<MemcachedServer, TestkitError> {
        let binary =
            find_program("memcached", &["/usr/bin", "/usr/local/bin"]).ok_or_else(|| {
                TestkitError::NotFound {
                    what: "memcached".to_string(),
                    detail: format!(
                        "not on PATH nor in /usr/bin; install it (apt-get install memcached) \
                     or set {ENV_MEMCACHED} to a running one"
                    ),
                }
            })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&binary, options) {
                Ok(server) => return Ok(server),
                Err(_) if attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(
        binary: &PathBuf,
        options: MemcachedOptions,
    ) -> Result<MemcachedServer, TestkitError> {
        let memory = match options.memory_mb {
            Some(mb) => mb,
            None => memory_mb()?,
        }
        .to_string();
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut cmd = Command::new(binary);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            &memory,
            "-t",
            "2",
        ]);
        if !options.evictions {
            cmd.arg("-M");
        }
        if is_root() {
            // memcached refuses to run as root unless told which user to be.
            cmd.args(["-u", "root"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| TestkitError::Spawn {
            command: display_command(&cmd),
            source,
        })?;
        let mut server = MemcachedServer { child, port };
        let addr = server.addr();
        let started = Instant::now();
        loop {
            match server.child.try_wait() {
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(pipe) = server.child.stderr.as_mut() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    return Err(TestkitError::Command {
                        command: display_command(&cmd),
                        status: status.to_string(),
                        stderr,
                        log_tail: None,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(TestkitError::io("waiting for memcached", e)),
            }
            let last_error = match version(&addr) {
                Ok(_) => return Ok(server),
                Err(e) => e,
            };
            if started.elapsed() > READY_TIMEOUT {
                // `server` is dropped here, which kills the process.
                return Err(TestkitError::Timeout {
                    what: format!("memcached at {addr} to answer `version`"),
                    waited: READY_TIMEOUT,
                    detail: format!(
                        "command: {}\nlast error: {last_error}",
                        display_command(&cmd)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The memcached process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its general statistics (`stats`); see [`stats`].
    pub fn stats(&self) -> Result<HashMap<String, String>, TestkitError> {
        stats(&self.addr())
    }
}

/// The `STAT <name> <value>` lines memcached at `addr` answers to `stats`,
/// e.g. `evictions` (items evicted to make room) and `limit_maxbytes`.
pub fn stats(addr: &str) -> Result<HashMap<String, String>, TestkitError> {
    let lines = exchange_lines(addr, b"stats\r\n", "END")
        .map_err(|e| TestkitError::io(format!("stats of memcached at {addr}"), e))?;
    Ok(lines
        .iter()
        .filter_map(|line| line.strip_prefix("STAT "))
        .filter_map(|stat| stat.split_once(' '))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// Empties memcached at `addr` (`flush_all`): what a restart does to its
/// data, without dropping its connections.
pub fn flush_all(addr: &str) -> Result<(), TestkitError> {
    exchange_lines(addr, b"flush_all\r\n", "OK")
        .map(drop)
        .map_err(|e| TestkitError::io(format!("flush_all of memcached at {addr}"), e))
}

/// Sends `request` and reads lines up to (without) the one equal to `last`.
fn exchange_lines(addr: &str, request: &[u8], last: &str) -> std::io::Result<Vec<String>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(request)?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let line = line.trim_end();
        if line == last {
            return Ok(lines);
        }
        lines.push(line.to_string());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the connection closed before {last}"),
    ))
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memcached for one test: the shared one named by `$CM_TEST_MEMCACHED`
/// when that is set, else a [`MemcachedServer`] of its own; plus a key prefix
/// (`t<12 hex digits>`) that no other test uses, so tests sharing a server
/// need not flush it.
#[derive(Debug)]
pub struct TestMemcached {
    addr: String,
    key_prefix: String,
    server: Option<MemcachedServer>,
}

impl TestMemcached {
    /// The shared memcached (`$CM_TEST_MEMCACHED`, checked with `version`),
    /// or one of its own when that variable is not set.
    pub fn start() -> Result<TestMemcached, TestkitError> {
        match std::env::var(ENV_MEMCACHED) {
            Ok(value) if !value.trim().is_empty() => {
                let addr = value.trim().to_string();
                let bad = |reason: String| TestkitError::BadEnv {
                    var: ENV_MEMCACHED,
                    value: value.clone(),
                    reason,
                };
                check_host_port(&addr).map_err(&bad)?;
                wait_for_version(&addr, READY_TIMEOUT)
                    .map_err(|e| bad(format!("memcached there does not answer `version`: {e}")))?;
                Ok(TestMemcached {
                    addr,
                    key_prefix: new_prefix(),
                    server: None,
                })
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => Self::start_owned(),
            Err(std::env::VarError::NotUnicode(value)) => Err(TestkitError::BadEnv {
                var: ENV_MEMCACHED,
                value: value.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".to_string(),
            }),
        }
    }

    /// A memcached of its own, whatever the environment says.
    pub fn start_owned() -> Result<TestMemcached, TestkitError> {
        let server = MemcachedServer::start()?;
        Ok(TestMemcached {
            addr: server.addr(),
            key_prefix: new_prefix(),
            server: Some(server),
        })
    }

    /// `host:port` to connect to, e.g. `"127.0.0.1:11311"`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A prefix for every key this test writes, e.g. `"t0123456789ab"`.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The server, when this test owns one.
    pub fn server(&self) -> Option<&MemcachedServer> {
        self.server.as_ref()
    }
}

fn new_prefix() -> String {
    format!("t{}", random_hex(12))
}

fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    if host.is_empty() {
        return Err("expected host:port, the host is empty".to_string());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err("expected host:port, the port is not a number from 1 to 65535".to_string()),
    }
}

fn wait_for_version(addr: &str, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    loop {
        match version(addr) {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() > timeout => return Err(format!("after {timeout:?}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends `version\r\n` and returns the `VERSION ...` line.
fn version(addr: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(2);
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    stream
        .write_all(b"version\r\n")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    if line.starts_with("VERSION") {
        Ok(line.trim_end().to_string())
    } else {
        Err(format!("unexpected reply {line:?}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_checked() {
        assert!(check_host_port("127.0.0.1:11211").is_ok());
        assert!(check_host_port("localhost:1").is_ok());
        assert!(check_host_port("127.0.0.1").is_err());
        assert!(check_host_port(":11211").is_err());
        assert!(check_host_port("h:0").is_err());
        assert!(check_host_port("h:x").is_err());
    }

    #[test]
    fn prefixes_differ() {
        let a = new_prefix();
        assert_eq!(a.len(), 13);
        assert!(a.starts_with('t'));
        assert_ne!(a, new_prefix());
    }
}
